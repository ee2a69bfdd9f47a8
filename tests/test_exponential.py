"""The exponential integrators (DPM-Solver, DPM-Solver++, UniPC): DDIM as their first order, element by element,
and diffusers' schedulers (independent implementations) reproduced on the same DDPM chain in float64."""
import math

import pytest
import torch

import sgm
from sgm.bench.problems import eps_at
from sgm.samplers import TimeGrid, ddim, dpm_solver, time_grid
from sgm.samplers.dpm import singlestep_orders
from sgm.samplers.exponential import phi
from conftest import SDES, gen, mixture

D = torch.float64


def test_phi_functions():
    """φ_k(z) = ∫_0^1 e^{(1-θ)z} θ^{k-1}/(k-1)! dθ against the closed forms, on both sides of the series switch."""
    for z in (-30.0, -2.0, -0.999, -1e-3, 1e-6, 0.5, 1.5):
        assert phi(1, z) == pytest.approx(math.expm1(z) / z, rel=1e-13)
        assert phi(2, z) == pytest.approx((math.expm1(z) - z) / z**2, rel=1e-9 if abs(z) > 1e-3 else 1e-5)
    assert phi(3, -1e-8) == pytest.approx(1 / 6, rel=1e-7)
    assert phi(3, -3.0) == pytest.approx((math.exp(-3) - 1 + 3 - 4.5) / -27, rel=1e-13)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("method", ["multistep", "singlestep"])
@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "trailing", "leading"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_first_order_is_ddim(sde_name, spacing, method, prediction):
    """DPM-Solver-1 is DDIM (η = 0): the exponential integrator exact for a constant prediction, in either form."""
    forward, gm = SDES[sde_name](), mixture()
    grid = time_grid(forward, 12, spacing=spacing)
    x = forward.prior_sample((64, 2), generator=gen(0), dtype=D)
    a = dpm_solver(gm.score_fn(forward), forward, x, grid, order=1, method=method, prediction=prediction)
    b = ddim(gm.score_fn(forward), forward, x, grid)
    assert a.nfe == b.nfe == 12
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)


def test_singlestep_orders_are_diffusers():
    """The per-transition orders are diffusers' ``DPMSolverSinglestepScheduler.get_order_list`` (its last entry,
    the step into σ = 0, is sgm's final denoising)."""
    assert singlestep_orders(3, 9, True) == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert singlestep_orders(3, 10, True) == [1, 2, 3] * 3 + [1]
    assert singlestep_orders(3, 11, True) == [1, 2, 3] * 3 + [1, 2]
    assert singlestep_orders(2, 6, True) == [1, 2, 1, 2, 1, 1]
    assert singlestep_orders(2, 7, False) == [1, 2, 1, 2, 1, 2, 1]
    assert singlestep_orders(3, 9, False) == [1, 2, 3] * 3


# --- diffusers, the same algorithm on the same chain ----------------------------------------------------------
# Configuration shared by every scheduler: the chain of sgm.VPSDE().discretize(1000) (linear β from 1e-4 to 0.02,
# 1000 steps), ε-prediction models, trailing timesteps (sgm's spacing="trailing" picks the same indices).
CHAIN = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
             prediction_type="epsilon", timestep_spacing="trailing")
STEPS = 10  # < 15, so that diffusers' lower_order_final (applied below 15 steps only) is sgm's
TRAILING = [round(1000 - k * 1000 / STEPS) - 1 for k in range(STEPS)]


def run_diffusers(scheduler, eps, chain, x):
    """Drive a diffusers scheduler with the exact chain noise predictor. diffusers stores its σ_i = std_i/scale_i
    in float32; they are replaced by the chain's float64 values at its own timesteps (its last σ, 0 or σ_0, kept
    in kind), so that both sides are the same float64 algorithm and can agree to 1e-6 relative."""
    if "timestep_spacing" in scheduler.config:
        scheduler.set_timesteps(STEPS)
    else:  # DPMSolverSinglestepScheduler has no trailing spacing: given the same timesteps
        scheduler.set_timesteps(timesteps=TRAILING)
    sigmas = (chain.std / chain.scale).to(D)
    last = torch.zeros(1, dtype=D) if float(scheduler.sigmas[-1]) == 0 else sigmas[:1]
    scheduler.sigmas = torch.cat([sigmas[scheduler.timesteps], last])
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, int(t)), t, x).prev_sample
    return x


def sgm_on_chain(eps, chain, x, sampler, final_sigma_zero, **options):
    """sgm on the same nodes: trailing timesteps, then Tweedie's step into σ = 0 (``final_sigmas_type="zero"``) or a
    last transition to the chain's first node, without denoising (``"sigma_min"``)."""
    sde = sgm.VPSDE()
    score = sgm.ScoreModel(lambda y, i: eps(y, int(i[0])), sde, "eps", chain=chain)
    grid = TimeGrid.from_chain(chain, TRAILING if final_sigma_zero else TRAILING + [0], denoise=final_sigma_zero)
    out = sgm.samplers.get(sampler)(score, sde, x, grid, **options)
    assert out.nfe == STEPS == sgm.samplers.solver(sampler, **options).nfe(len(grid.noisy), grid.denoise)
    return out.x


class Float64Torch:
    """torch, except that ``float32`` is ``float64``: diffusers' multistep DPM-Solver rounds its state to float32 before
    each update (``sample.to(torch.float32)``); given this as its module's ``torch`` it runs in float64 throughout."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def chain_setup():
    """The exact noise predictor at the chain's timestep ``i`` (``ε`` at its ``σ_i``), the chain and ``x_T``."""
    gm, chain = mixture(), sgm.VPSDE().discretize(1000)
    sigmas = chain.sigmas.tolist()
    return (lambda x, i: eps_at(gm, x, sigmas[i])), chain, torch.randn(64, 2, generator=gen(0), dtype=D)


def assert_relative(a, b, rtol=1e-6):
    err = float((a - b).norm() / b.norm())
    assert err < rtol, err


DPM_CASES = [  # (method, prediction, order)
    ("multistep", "x0", 2), ("multistep", "x0", 3), ("multistep", "eps", 2), ("multistep", "eps", 3),
    ("singlestep", "x0", 2), ("singlestep", "x0", 3), ("singlestep", "eps", 2), ("singlestep", "eps", 3),
]


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("method, prediction, order", DPM_CASES)
def test_dpm_solver_is_diffusers(method, prediction, order, lower_order_final, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    monkeypatch.setattr(diffusers.schedulers.scheduling_dpmsolver_multistep, "torch", Float64Torch())
    eps, chain, x_T = chain_setup()
    cls = diffusers.DPMSolverMultistepScheduler if method == "multistep" else diffusers.DPMSolverSinglestepScheduler
    # algorithm_type: "dpmsolver++" is the data prediction, "dpmsolver" the noise prediction.
    # solver_type="midpoint": the published second-order formulas (2M: h φ_1 D_1/2; singlestep's
    #   DPM-Solver-2 and -3), sgm's.
    # final_sigmas_type: "zero" (the last step into σ = 0, first order: Tweedie's x̂_0, sgm's final denoising);
    #   diffusers allows it only for dpmsolver++, the noise prediction ends at σ_0 of the chain ("sigma_min").
    # thresholding off (default), no Karras / λ-uniform sigmas: the trailing chain timesteps themselves.
    final_zero = prediction == "x0"
    chain_options = {k: v for k, v in CHAIN.items() if k != "timestep_spacing" or method == "multistep"}
    scheduler = cls(**chain_options, solver_order=order,
                    algorithm_type="dpmsolver++" if prediction == "x0" else "dpmsolver",
                    solver_type="midpoint", lower_order_final=lower_order_final,
                    final_sigmas_type="zero" if final_zero else "sigma_min")
    expected = run_diffusers(scheduler, eps, chain, x_T)
    ours = sgm_on_chain(eps, chain, x_T, "dpm_solver", final_zero, order=order, method=method,
                        prediction=prediction, lower_order_final=lower_order_final)
    assert_relative(ours, expected)


@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_is_diffusers(order, variant, corrector):
    diffusers = pytest.importorskip("diffusers")
    eps, chain, x_T = chain_setup()
    # solver_type: the B(h) variant; predict_x0: UniPC's data prediction; disable_corrector lists the steps whose
    # UniC is skipped (all of them for corrector=False); final_sigmas_type="zero": the last step into σ = 0 (first
    # order: x̂_0 at the last node, sgm's final denoising) for bh2; bh1 ends at the chain's σ_0 ("sigma_min": into
    # σ = 0 diffusers multiplies B(h) = -∞ by 0 and returns NaN); lower_order_final (default, no step-count condition).
    final_zero = variant == "bh2"
    scheduler = diffusers.UniPCMultistepScheduler(**CHAIN, solver_order=order, solver_type=variant, predict_x0=True,
                                                  disable_corrector=[] if corrector else list(range(STEPS)),
                                                  lower_order_final=True,
                                                  final_sigmas_type="zero" if final_zero else "sigma_min")
    expected = run_diffusers(scheduler, eps, chain, x_T)
    ours = sgm_on_chain(eps, chain, x_T, "unipc", final_zero, order=order, variant=variant, corrector=corrector)
    assert_relative(ours, expected)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_noise_prediction_is_diffusers(order):
    diffusers = pytest.importorskip("diffusers")
    eps, chain, x_T = chain_setup()
    # predict_x0=False: UniPC on ε̂; it ends at the chain's σ_0 ("sigma_min": h φ_1(h) is infinite into σ = 0).
    scheduler = diffusers.UniPCMultistepScheduler(**CHAIN, solver_order=order, solver_type="bh1", predict_x0=False,
                                                  lower_order_final=True, final_sigmas_type="sigma_min")
    expected = run_diffusers(scheduler, eps, chain, x_T)
    ours = sgm_on_chain(eps, chain, x_T, "unipc", False, order=order, variant="bh1", prediction="eps")
    assert_relative(ours, expected)


# --- options, counts, dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options, error", [
    ("dpm_solver", {"order": 0}, ValueError), ("dpm_solver", {"order": 4}, ValueError),
    ("dpm_solver", {"order": 2.0}, TypeError), ("dpm_solver", {"method": "adams"}, ValueError),
    ("dpm_solver", {"prediction": "v"}, ValueError), ("dpm_solver", {"lower_order_final": 1}, TypeError),
    ("unipc", {"order": 4}, ValueError), ("unipc", {"variant": "bh3"}, ValueError),
    ("unipc", {"corrector": "yes"}, TypeError), ("unipc", {"prediction": "score"}, ValueError),
])
def test_bad_options_name_the_argument(name, options, error):
    with pytest.raises(error, match=next(iter(options))):
        sgm.samplers.solver(name, **options)


SOLVERS = [("dpm_solver", {"order": k, "method": m, "prediction": p}) for k in (1, 2, 3)
           for m in ("multistep", "singlestep") for p in ("x0", "eps")] + \
          [("unipc", {"order": k, "variant": v}) for k in (1, 2, 3) for v in ("bh1", "bh2")]


@pytest.mark.parametrize("name, options", SOLVERS, ids=str)
def test_every_step_count_spends_the_declared_evaluations(name, options):
    """From one noisy node (only the final denoising) up: one evaluation per transition, as ``nfe(steps)`` says;
    the warm-up and the singlestep order list adapt to any number of steps; float32 stays float32."""
    forward, gm = sgm.VESDE(), mixture(torch.float32)
    solver = sgm.samplers.solver(name, **options)
    for steps in (1, 2, 3, 4, 5, 7):
        for denoise in (True, False):
            if steps == 1 and not denoise:
                continue
            grid = time_grid(forward, steps, spacing="logsnr", denoise=denoise)
            x = forward.prior_sample((8, 2), generator=gen(steps), dtype=torch.float32)
            out = sgm.samplers.integrate(solver, gm.score_fn(forward), forward, x, grid)
            assert out.nfe == solver.nfe(steps, denoise) == steps - (not denoise)
            assert out.x.dtype == torch.float32 and bool(out.x.isfinite().all())


@pytest.mark.parametrize("name, options", [("dpm_solver", {"order": 3, "method": "singlestep"}),
                                           ("unipc", {"order": 3})])
def test_a_solver_is_reusable_and_accurate(name, options):
    """A solver keeps per-run memory only in its state: two runs give the same result; and at 20 evaluations the
    third-order methods are far closer to the exact flow map than DDIM."""
    forward, gm = sgm.VPSDE(), mixture()
    score, solver = gm.score_fn(forward), sgm.samplers.solver(name, **options)
    x = forward.prior_sample((200, 2), generator=gen(0), dtype=D)
    ref = sgm.samplers.ode(score, forward, x, time_grid(forward, 2), rtol=1e-10, atol=1e-10).x
    grid = time_grid(forward, 20, spacing="logsnr")
    a, b = (sgm.samplers.integrate(solver, score, forward, x, grid).x for _ in range(2))
    assert torch.equal(a, b)
    err = float((a - ref).norm(dim=1).mean())
    err_ddim = float((ddim(score, forward, x, grid).x - ref).norm(dim=1).mean())
    assert err < err_ddim / 5, (err, err_ddim)
