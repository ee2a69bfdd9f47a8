"""Rectified flow and EDM's path with exact predictions: diffusers' flow-matching schedulers reproduced element by
element, EDM's Algorithm 2, every sampler within 3× the SW₂ Monte-Carlo floor, the local order of the step from pure
noise. (Orders on rectified flow: tests/test_convergence.py; its likelihood and bound: tests/test_likelihood.py,
tests/test_bounds.py; the flow-matching loss: tests/test_losses.py.)

Which sgm run is which diffusers configuration (``N = num_train_timesteps``; FlowMatch sigmas are already shifted):

- ``FlowMatchEulerDiscreteScheduler(shift=s)`` steps ``x ← x + (σ_{k+1} - σ_k) u`` in ``σ``, the time of
  ``RectifiedFlow()``: it is ``ode`` ``euler`` on ``RectifiedFlow()`` at the times ``t_k = σ_k`` (its last step, into
  ``σ = 0``, is Tweedie's ``x̂_0``: sgm's final denoising). Since ``x = (1 - σ) x̂_0 + σ ε̂`` is linear in ``σ``, an
  Euler step in ``σ`` is exactly DDIM's ``x' = α' x̂_0 + σ' ε̂``: so it is also ``ddim`` on ``RectifiedFlow(shift=s)``
  with the uniform grid from ``t = 1`` to ``eps = s/(N + s - 1)`` (diffusers shifts its grid's lowest σ twice), whose
  noise levels are exactly the scheduler's. ``ode euler`` on ``RectifiedFlow(shift=s)`` steps in the shifted time ``t``
  and is a different (equally first-order) method for ``s ≠ 1``.
- ``FlowMatchHeunDiscreteScheduler(shift=s)`` is ``ode`` ``heun2`` on ``RectifiedFlow()`` at ``t_k = σ_k``
  (Heun in ``σ``; its last step, Euler into 0, is the final denoising).
- ``DPMSolverMultistepScheduler`` / ``DPMSolverSinglestepScheduler`` / ``UniPCMultistepScheduler`` with
  ``use_flow_sigmas=True, prediction_type="flow_prediction"`` depend on the nodes' ``(α, σ)`` only: ``dpm_solver`` /
  ``unipc`` on the grid of the scheduler's sigmas (any shift of ``RectifiedFlow``). Their flow sigmas do not start at
  the exact top: DPM-Solver's at ``σ = s'(1 - 1/N)`` (the uniform grid from ``t_max = 1 - 1/N`` to ``(1 - 1/N)/n`` on
  ``RectifiedFlow(shift=s)``), UniPC's at ``1 - 10⁻⁶`` (sgm's ``flow`` spacing). With ``final_sigmas_type="zero"`` their
  last step is first order into ``σ = 0``, i.e. ``x̂_0`` at the last noisy node (for UniPC at the uncorrected state):
  sgm's final denoising. UniPC bh1 into ``σ = 0`` is NaN in diffusers (``B(h) = -∞`` times 0), and its ``"sigma_min"``
  repeats the last sigma (a step of ``h = 0``): it is compared on a last step to the training table's lowest sigma,
  without denoising.

diffusers rounds the state to float32 in every step; its module's ``torch`` is given ``float32 = float64``
(``Float64Torch``), and its sigmas are kept in float64, so both sides are the same float64 arithmetic in another
order and agree to rounding: 1e-12 relative (measured ≤ 4e-15).
"""
import functools
import math
import statistics
import warnings

import pytest
import torch

import sgm
from sgm.samplers import TimeGrid, time_grid
from conftest import gen, mixture
from test_edm_heun import edm_algorithm_2, karras_sigmas
from test_exponential import Float64Torch

D = torch.float64
N_TRAIN, STEPS = 1000, 10  # STEPS < 15: diffusers' lower_order_final applies below 15 steps only, as sgm's always
RTOL = 1e-12


def relative(a, b):
    return float((a - b).norm() / b.norm())


def flow_setup():
    """The exact velocity ``u = ε̂ - x̂_0`` on ``RectifiedFlow()`` (diffusers' flow prediction at ``σ = t``) and x_T."""
    rf = sgm.RectifiedFlow()
    return rf, mixture().prediction_fn(rf, "velocity"), torch.randn(64, 2, generator=gen(0), dtype=D)


def run_diffusers(scheduler, velocity, x, **set_timesteps):
    """diffusers' sampling loop with the exact velocity at the σ its step uses (``scheduler.sigmas[k]``, float64).
    Returns the result and the scheduler's sigmas."""
    scheduler.set_timesteps(STEPS, **set_timesteps)
    sigmas = scheduler.sigmas.to(D)
    scheduler.sigmas = sigmas
    for k, t in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, sigmas[k].expand(x.shape[0])), t, x).prev_sample
    return x, sigmas


def float64_diffusers(monkeypatch, module):
    diffusers = pytest.importorskip("diffusers")
    monkeypatch.setattr(getattr(diffusers.schedulers, module), "torch", Float64Torch())
    return diffusers


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler_is_euler_in_sigma_and_ddim(shift, monkeypatch):
    diffusers = float64_diffusers(monkeypatch, "scheduling_flow_match_euler_discrete")
    rf, velocity, x_T = flow_setup()
    expected, sigmas = run_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(N_TRAIN, shift=shift), velocity, x_T)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0  # from the exact top (α = 0) into σ = 0
    grid = TimeGrid.from_times(rf, sigmas[:-1].tolist())
    out = sgm.samplers.ode(velocity, rf, x_T, grid, method="euler")
    assert out.nfe == STEPS
    assert relative(out.x, expected) < RTOL
    # RectifiedFlow(shift): its uniform grid to eps = s/(N + s - 1) has the scheduler's noise levels, and DDIM on it
    # is the same map; Euler in its own (shifted) time is another method unless s = 1
    shifted = sgm.RectifiedFlow(shift)
    uniform = time_grid(shifted, STEPS, eps=shift / (N_TRAIN + shift - 1))
    torch.testing.assert_close(torch.tensor([n.std for n in uniform.noisy], dtype=D), sigmas[:-1], rtol=1e-14, atol=0)
    exact = mixture().prediction_fn(shifted, "velocity")
    assert relative(sgm.samplers.ddim(exact, shifted, x_T, uniform).x, expected) < RTOL
    euler_in_t = relative(sgm.samplers.ode(exact, shifted, x_T, uniform, method="euler").x, expected)
    assert (euler_in_t < RTOL) == (shift == 1.0), euler_in_t  # measured 0.14 at shift 3


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_heun_is_heun2_in_sigma(shift, monkeypatch):
    diffusers = float64_diffusers(monkeypatch, "scheduling_flow_match_heun_discrete")
    rf, velocity, x_T = flow_setup()
    expected, sigmas = run_diffusers(diffusers.FlowMatchHeunDiscreteScheduler(N_TRAIN, shift=shift), velocity, x_T)
    levels = torch.cat([sigmas[:1], sigmas[1:-1:2]])  # diffusers repeats each inner σ for Heun's second stage
    grid = TimeGrid.from_times(rf, levels.tolist())
    out = sgm.samplers.ode(velocity, rf, x_T, grid, method="heun2")
    assert out.nfe == 2 * STEPS - 1 == len(sigmas) - 1  # the last level: Euler into σ = 0 = the final denoising
    assert relative(out.x, expected) < RTOL


FLOW = dict(num_train_timesteps=N_TRAIN, use_flow_sigmas=True, prediction_type="flow_prediction")
DPM_CASES = [(method, order, final) for method in ("multistep", "singlestep") for order in (1, 2, 3)
             for final in (True, False)]


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("method, order, lower_order_final", DPM_CASES)
def test_dpm_solver_equals_diffusers_with_flow_sigmas(method, order, lower_order_final, shift, monkeypatch):
    """DPM-Solver++ (diffusers has no flow prediction for the noise-prediction form); solver_type="midpoint": the
    published second-order formulas, sgm's. diffusers' singlestep with final σ = 0 sets lower_order_final itself (it
    warns): sgm's lower_order_final=False differs from True only in the last full segment, which diffusers splits."""
    module = "scheduling_dpmsolver_" + method
    diffusers = float64_diffusers(monkeypatch, module)
    rf, velocity, x_T = flow_setup()
    cls = diffusers.DPMSolverMultistepScheduler if method == "multistep" else diffusers.DPMSolverSinglestepScheduler
    scheduler = cls(**FLOW, flow_shift=shift, solver_order=order, algorithm_type="dpmsolver++", solver_type="midpoint",
                    lower_order_final=lower_order_final, final_sigmas_type="zero")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, sigmas = run_diffusers(scheduler, velocity, x_T)
    # diffusers' flow sigmas (float32) start below the exact top, at s(1 - 1/N), and end at 0: the uniform grid of
    # RectifiedFlow(shift) from t_max = 1 - 1/N to (1 - 1/N)/n, to float32 rounding
    top = 1 - 1 / N_TRAIN
    assert float(sigmas[-1]) == 0.0
    uniform = time_grid(sgm.RectifiedFlow(shift), STEPS, t_max=top, eps=top / STEPS)
    torch.testing.assert_close(torch.tensor([n.std for n in uniform.noisy], dtype=D), sigmas[:-1], rtol=6e-8, atol=0)
    final = lower_order_final or method == "singlestep"
    out = sgm.samplers.dpm_solver(velocity, rf, x_T, TimeGrid.from_times(rf, sigmas[:-1].tolist()), order=order,
                                  method=method, lower_order_final=final)
    assert out.nfe == STEPS
    assert relative(out.x, expected) < RTOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_equals_diffusers_with_flow_sigmas(order, variant, corrector, shift, monkeypatch):
    """UniPC on the data prediction (diffusers' only form for flow prediction), its flow sigmas from 1 - 10⁻⁶;
    bh2 ends at σ = 0 (sgm's final denoising), bh1 at the training table's lowest σ (no denoising: see the module
    docstring)."""
    diffusers = float64_diffusers(monkeypatch, "scheduling_unipc_multistep")
    rf, velocity, x_T = flow_setup()
    final_zero = variant == "bh2"
    scheduler = diffusers.UniPCMultistepScheduler(**FLOW, flow_shift=shift, solver_order=order, solver_type=variant,
                                                  predict_x0=True, lower_order_final=True,
                                                  disable_corrector=[] if corrector else list(range(STEPS)),
                                                  final_sigmas_type="zero" if final_zero else "sigma_min")
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas.to(D)
    assert float(sigmas[0]) == pytest.approx(1 - 1e-6, rel=6e-8)  # float32
    # sgm's "flow" spacing is these levels (diffusers rounds each to float32: within half an ulp at 1, 6e-8)
    flow = time_grid(sgm.RectifiedFlow(shift), STEPS, "flow")
    torch.testing.assert_close(torch.tensor([n.std for n in flow.noisy], dtype=D), sigmas[:-1], rtol=0, atol=6e-8)
    if not final_zero:
        assert float(sigmas[-1]) == float(sigmas[-2])  # "sigma_min" repeats the last level
        sigmas[-1] = shift / (N_TRAIN + shift - 1)
    scheduler.sigmas = sigmas
    x = x_T
    for k, t in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, sigmas[k].expand(x.shape[0])), t, x).prev_sample
    grid = TimeGrid.from_times(rf, (sigmas[:-1] if final_zero else sigmas).tolist(), denoise=final_zero)
    out = sgm.samplers.unipc(velocity, rf, x_T, grid, order=order, variant=variant, corrector=corrector)
    assert out.nfe == STEPS
    assert relative(out.x, x) < RTOL


# --- EDM's path -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("churn, s_tmin, s_tmax", [(0.0, 0.0, math.inf), (3.0, 0.05, 10.0), (40.0, 0.0, math.inf)])
def test_heun_on_edm_path_is_algorithm_2(churn, s_tmin, s_tmax):
    """On ``EDMPath`` time is the noise level and ``α = 1``: Algorithm 2 on ``x`` itself with the exact denoiser
    ``D(x; σ) = x̂_0(x, t = σ)`` — no ``x/scale``, no σ ↔ t conversion — element by element, churn included."""
    path, gm, n = sgm.EDMPath(), mixture(), 12
    sigmas = karras_sigmas(path.sigma_min, path.sigma_max, n)
    grid = time_grid(path, n, spacing="karras", rho=7)
    assert [node.t for node in grid.noisy] == pytest.approx(sigmas[:-1], rel=1e-14)
    options = dict(churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.007)
    out = sgm.sample(gm.prediction_fn(path, "x0"), path, (64, 2), sampler="heun", steps=n, spacing="karras",
                     generator=gen(0), dtype=D, **options)
    g = gen(0)
    x_T = path.sigma_max * torch.randn((64, 2), generator=g, dtype=D)
    denoiser = lambda x, sigma: gm.denoise(x, torch.full((x.shape[0],), sigma, dtype=D), path)  # noqa: E731
    expected = edm_algorithm_2(denoiser, x_T, [node.t for node in grid.noisy] + [0.0], generator=g, **options)
    assert out.nfe == 2 * n - 1
    torch.testing.assert_close(out.x, expected, rtol=1e-12, atol=1e-12)


# --- every sampler draws the mixture -------------------------------------------------------------------------
N_SAMPLES, N_MIXTURES, FLOOR_DRAWS = 2000, 3, 21


@functools.lru_cache(maxsize=None)
def random_mixtures():
    """Three 3-mode mixtures in 2-D drawn from one seeded generator: means 2·N(0, I), stds U(0.2, 0.7), weights
    ∝ U(0.5, 1.5); each with a reference sample and its Monte-Carlo floor, the median SW₂ between 7 fresh target
    samples of the same size and the reference (a perfect sampler's ratio to it spread over 0.6–2.2 in trials:
    SW₂ here is dominated by the binomial scatter of mass between modes)."""
    g, out = gen(2024), []
    for _ in range(N_MIXTURES):
        means = 2.0 * torch.randn(3, 2, generator=g, dtype=D)
        stds = 0.2 + 0.5 * torch.rand(3, generator=g, dtype=D)
        weights = 0.5 + torch.rand(3, generator=g, dtype=D)
        gm = sgm.GaussianMixture(means, stds, weights / weights.sum(), dtype=D)
        ref = gm.sample(N_SAMPLES, generator=g)
        floor = statistics.median(sw2(gm.sample(N_SAMPLES, generator=g), ref) for _ in range(FLOOR_DRAWS))
        out.append((gm, ref, floor))
    return tuple(out)


def sw2(x, y):
    return sgm.metrics.sliced_wasserstein(x, y, n_projections=100, generator=gen(3))


# sampler: (steps, options) per path; the stochastic samplers' step counts are what their first order needs here,
# annealed Langevin takes NCSNv2's step size on the geometric levels. On EDMPath (t ∈ [0.002, 80]) the samplers
# step on Karras' grid, except torchsde's fixed steps (uniform in t by construction) and the λ-uniform ones.
KARRAS = {"spacing": "karras"}
LOGSNR = {"spacing": "logsnr"}
LANGEVIN = (200, {"n_steps_each": 5, "step_size": "ncsnv2", **LOGSNR})
SAMPLING = {
    "rf": {"euler_maruyama": (100, {}), "reverse_diffusion": (100, {}), "ancestral": (100, {}), "ddim": (40, {}),
           "ode": (12, {"method": "heun2"}), "sde": (100, {}), "langevin": LANGEVIN, "pc": (100, {}),
           "dpm_solver": (12, LOGSNR), "unipc": (12, LOGSNR), "heun": (12, {}), "deis": (12, LOGSNR),
           "ipndm": (12, LOGSNR), "dpm_solver_sde": (50, {}), "euler_ancestral": (100, {}),
           "dpmpp_2s_ancestral": (50, {}), "sa_solver": (50, {}), "er_sde": (50, {}), "restart": (50, {}),
           "dpm_solver_v3": (12, LOGSNR)},
    "edm": {"euler_maruyama": (100, KARRAS), "reverse_diffusion": (100, KARRAS), "ancestral": (100, KARRAS),
            "ddim": (40, KARRAS), "ode": (18, {"method": "heun2", **KARRAS}), "sde": (500, {}), "langevin": LANGEVIN,
            "pc": (100, KARRAS), "dpm_solver": (12, LOGSNR), "unipc": (12, LOGSNR), "heun": (18, KARRAS),
            "deis": (12, LOGSNR), "ipndm": (12, LOGSNR), "dpm_solver_sde": (50, LOGSNR),
            "euler_ancestral": (100, KARRAS), "dpmpp_2s_ancestral": (50, KARRAS), "dpm_solver_v3": (12, LOGSNR),
            "sa_solver": (50, {}),
            "er_sde": (50, {}), "restart": (50, {})},
}
PATHS = {"rf": sgm.RectifiedFlow, "edm": sgm.EDMPath}
T_MAX_BELOW = 0.99  # where a sampler that needs α > 0 starts on rectified flow


def test_sampling_settings_cover_every_sampler():
    assert all(sorted(settings) == sgm.samplers.available() for settings in SAMPLING.values())


@pytest.mark.parametrize("name", sgm.samplers.available())
@pytest.mark.parametrize("path_name", list(PATHS))
def test_every_sampler_draws_the_mixture(path_name, name):
    """SW₂ to a reference sample under 3× its Monte-Carlo floor on each mixture, from the exact top (``T``) where the
    sampler can start there; a sampler that declares ``needs={"positive_alpha"}`` is refused at the top of rectified
    flow (``α(1) = 0``) before any work and starts at ``t_max = 0.99``. The model is the exact velocity where a run
    starts at ``α = 0`` (a score gives no x̂_0 there), else the exact score (half the cost of the mixture's velocity).
    Measured ratios: 0.3–2.2 (annealed Langevin needs 200 levels × 5: at 100 × 5 it reached 3.5 on one of 6 mixtures
    tried)."""
    path = PATHS[path_name]()
    steps, options = SAMPLING[path_name][name]
    solver_options = {k: v for k, v in options.items() if k != "spacing"}
    needs_alpha = "positive_alpha" in sgm.samplers.solver(name, **solver_options).needs
    t_max = None
    if needs_alpha and path_name == "rf":
        calls = []
        with pytest.raises(ValueError, match=r"α > 0"):
            sgm.sample(lambda x, t: calls.append(t) or x, path, (4, 2), sampler=name, steps=steps, **options)
        assert not calls
        t_max = T_MAX_BELOW
    from_pure_noise = path_name == "rf" and t_max is None
    for k, (gm, ref, floor) in enumerate(random_mixtures()):
        model = gm.prediction_fn(path, "velocity") if from_pure_noise else gm.score_fn(path)
        out = sgm.sample(model, path, (N_SAMPLES, 2), sampler=name, steps=steps, t_max=t_max, generator=gen(100 + k),
                         dtype=D, **options)
        ratio = sw2(out.x, ref) / floor
        assert ratio < 3, (k, ratio, floor)


def test_the_first_step_from_pure_noise_is_first_order():
    """From ``t = 1`` (``α = 0``) the exponential integrators' step is ``x = α_b x̂_0 + σ_b ε̂`` (``from_noise``, DDIM):
    ``x̂_0`` moves by O(α) = O(h) over the step, so its local error is O(h²) (measured slope 2.07), and a method of
    order ≥ 3 started there is of order 2 (tests/test_convergence.py); the Runge–Kutta steps keep theirs
    (heun2 O(h³): 2.96; rk4 O(h⁵): 5.05)."""
    from test_convergence import slope

    rf, velocity, _ = flow_setup()
    x = rf.prior_sample((300, 2), generator=gen(1), dtype=D)
    hs = [0.1, 0.05, 0.025, 0.0125]
    grids = [TimeGrid.from_times(rf, [1.0, 1.0 - h], denoise=False) for h in hs]
    exact = [sgm.samplers.ode(velocity, rf, x, grid, rtol=1e-12, atol=1e-12).x for grid in grids]  # once per step
    for sampler, options, local in [("dpm_solver", {"order": 3}, 2), ("ddim", {}, 2), ("ode", {"method": "heun2"}, 3),
                                    ("ode", {"method": "rk4"}, 5)]:
        errors = [float((sgm.samplers.get(sampler)(velocity, rf, x, grid, **options).x - ref).norm(dim=1).mean())
                  for grid, ref in zip(grids, exact)]
        assert abs(slope([1 / h for h in hs], errors) - local) < 0.3, (sampler, errors)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_trailing_grid_from_the_exact_top_carries_the_paths_derivatives(shift):
    """On ``RectifiedFlow`` the chain is the path at ``t_i = (i+1)/N``, and the trailing grid of ``n`` steps is the
    uniform grid ``1, 1 - 1/n, …, 1/n``: its top node (``α = 0``) must carry the path's ``α', σ'`` (the chain's
    moment formula ``f·scale`` is ``-∞·0`` there), so the velocity ODE on it is the same map as on
    ``TimeGrid.from_times`` at those times."""
    rf, gm, n = sgm.RectifiedFlow(shift), mixture(), 10
    trailing = time_grid(rf, n, spacing="trailing", train_steps=N_TRAIN)
    same = TimeGrid.from_times(rf, [1 - k / n for k in range(n)])
    assert [node.t for node in trailing.nodes] == pytest.approx([node.t for node in same.nodes], rel=1e-14)
    top = trailing.nodes[0]
    # τ'(1) = 1/s
    assert (top.scale, top.d_scale, top.d_std) == (0.0, pytest.approx(-1 / shift), pytest.approx(1 / shift))
    x_T = torch.randn(64, 2, generator=gen(0), dtype=D)
    velocity = gm.prediction_fn(rf, "velocity")
    for method in ("euler", "heun2"):
        expected = sgm.samplers.ode(velocity, rf, x_T, same, method=method).x
        assert relative(sgm.samplers.ode(velocity, rf, x_T, trailing, method=method).x, expected) < RTOL


@pytest.mark.parametrize("path", [sgm.RectifiedFlow(), sgm.RectifiedFlow(3.0), sgm.VPSDE(), sgm.VESDE()],
                         ids=["rf", "rf shift 3", "vp", "ve"])
def test_the_flow_grid_is_the_uniform_grid_of_one_more_level_without_its_last(path):
    """``spacing="flow"``: ``t_k = t_max - (t_max - eps)·k/n`` for ``k < n``; where ``α(t_max) = 0`` (rectified flow's
    exact top) the first node is the noise level of ``σ = 1 - 10⁻⁶`` instead (diffusers' UniPC nudge; its exact
    equality with diffusers' flow sigmas is in test_unipc_equals_diffusers_with_flow_sigmas)."""
    n, eps = 7, 2e-3
    grid = time_grid(path, n, spacing="flow", eps=eps)
    longer = [node.t for node in time_grid(path, n + 1, spacing="uniform", eps=eps).noisy[:-1]]
    times = [node.t for node in grid.noisy]
    if path.alpha(torch.tensor([path.T], dtype=D)) > 0:
        assert times == pytest.approx(longer, rel=1e-14, abs=1e-15)
    else:
        assert times[1:] == pytest.approx(longer[1:], rel=1e-14)
        assert grid.noisy[0].std == pytest.approx(1 - 1e-6, rel=1e-12) and 0 < grid.noisy[0].scale
    assert grid.nodes[-1].std == 0 and len(grid.noisy) == n
