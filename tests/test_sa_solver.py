"""SA-Solver: diffusers' ``SASolverScheduler`` (an independent implementation of Xue et al.'s algorithm) reproduced on
DDPM's chain for the same injected noise, its first order without corrector as DDIM and DDPM's ancestral step, and
its options checked by name."""
import math

import pytest
import torch

import sgm
from sgm.samplers import TimeGrid, integrate, time_grid
from sgm.samplers.exponential import phi
from sgm.samplers.sa_solver import sa_weights
from conftest import SDES, RecordedNoise, gen, mixture
from test_exponential import CHAIN, STEPS, TRAILING, assert_relative, chain_setup

D = torch.float64

# (predictor_order, corrector_order, tau, tau_window, lower_order_final): every order, the published τ window, a
# constant τ, the ODE (τ = 0), and the orders without lowering at the end
CASES = [(1, 1, 0.0, None, True), (2, 2, 1.0, (0.2, 0.8), True), (3, 4, 1.0, (0.2, 0.8), True),
         (4, 4, 0.7, None, True), (2, 1, 1.0, None, True), (3, 3, 1.0, None, False), (4, 2, 0.5, None, False),
         (1, 3, 1.3, (0.3, 0.9), True)]


@pytest.mark.parametrize("p, c, tau, window, lower_order_final", CASES)
def test_sa_solver_is_diffusers(p, c, tau, window, lower_order_final, monkeypatch):
    """sgm with diffusers' ``few_step_modification`` (where an order is 2 or more; it has no two-node weights
    otherwise) on the chain's trailing timesteps ending at its first node (diffusers' last σ, no denoising) equals the
    scheduler driven by the exact noise prediction, with its σ_i replaced by the chain's float64 values (as for
    DPM-Solver) and its per-step ``randn_tensor`` answered with the draw sgm made for the same step (zeros where
    ``τ = 0``, which the scheduler multiplies by 0). ``tau_func`` is sgm's τ at the chain's time ``t_i = (i+1)/1000``.
    Both sides are float64 and the same algorithm; they differ in rounding only (diffusers expands the Lagrange
    basis in monomials of λ, |λ| ≤ 5: a condition number below 1e4), so 1e-11 relative is the bound;
    measured ≤ 5e-15."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_sasolver

    eps, chain, x_T = chain_setup()
    sde = sgm.VPSDE()
    score = sgm.ScoreModel(lambda y, i: eps(y, int(i[0])), sde, "eps", chain=chain)
    grid = TimeGrid.from_chain(chain, TRAILING + [0], denoise=False)
    solver = sgm.samplers.solver("sa_solver", predictor_order=p, corrector_order=c, tau=tau, tau_window=window,
                                 lower_order_final=lower_order_final, few_step_modification=max(p, c) > 1)
    noise = RecordedNoise(gen(5), x_T)
    ours = integrate(solver, score, sde, x_T, grid, noise=noise)
    assert ours.nfe == STEPS

    drawn = {(t0, t1): z for t0, t1, z in noise.draws}
    steps = iter(zip(grid.nodes, grid.nodes[1:]))

    def randn_tensor(shape, generator=None, device=None, dtype=None, **kw):
        a, b = next(steps)
        return drawn.get((a.t, b.t), torch.zeros(shape, dtype=D))

    monkeypatch.setattr(scheduling_sasolver, "randn_tensor", randn_tensor)
    tau_func = lambda i: solver.tau_at(grid.nodes[0]._replace(t=float(chain.t[int(i)])), sde.T)  # noqa: E731
    scheduler = diffusers.SASolverScheduler(**CHAIN, predictor_order=p, corrector_order=c, tau_func=tau_func,
                                            algorithm_type="data_prediction", lower_order_final=lower_order_final)
    scheduler.set_timesteps(STEPS)
    sigmas = (chain.std / chain.scale).to(D)
    scheduler.sigmas = torch.cat([sigmas[scheduler.timesteps], sigmas[:1]])  # the last σ: the chain's σ_0
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, int(t)), t, x).prev_sample
    assert_relative(ours.x, x, rtol=1e-11)


@pytest.mark.parametrize("kappa, h", [(1.0, 0.3), (2.0, 2.1), (1.49, 0.05)])
@pytest.mark.parametrize("v", [[0.0], [0.0, -0.8], [1.0, 0.0], [0.0, -1.3, -2.1], [1.0, 0.0, -0.9, -2.2]])
def test_weights_are_the_integrals_of_the_lagrange_basis(kappa, h, v):
    """``w_j = ∫_0^h e^{-κ(h-u)} ℓ_j(u) du`` for the Lagrange basis on ``u_j = h v_j``, written out and integrated by
    scipy's adaptive quadrature (tolerance 1e-12): the default weights are exact; ``few_step_modification`` changes
    the two-node weights only, by ``±(h/2 - h·φ₂(-κh))/(v_0 - v_1)``, what makes its second condition ``h/2``."""
    from scipy.integrate import quad

    def basis(j, u):
        return math.prod((u - h * vk) / (h * v[j] - h * vk) for k, vk in enumerate(v) if k != j)

    exact = [quad(lambda u: math.exp(-kappa * (h - u)) * basis(j, u), 0, h, epsabs=1e-13, epsrel=1e-12)[0]
             for j in range(len(v))]
    assert sa_weights(h, kappa, v) == pytest.approx(exact, rel=1e-9, abs=1e-12)
    modified = sa_weights(h, kappa, v, few_step_modification=True)
    if len(v) != 2:
        assert modified == sa_weights(h, kappa, v)
    else:
        shift = (h / 2 - h * phi(2, -kappa * h)) / (v[0] - v[1])
        assert modified == pytest.approx([exact[0] + shift, exact[1] - shift], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_the_exact_condition_does_not_overshoot_a_large_last_step(seed):
    """SA-Solver 2/0 as the ODE on the uniform VP grid of 10 NFE, whose last noisy step spans Δλ ≈ 2: on random
    mixtures no test was tuned on, the exact second condition's map error against the exact flow map is at most
    0.6× that of ``few_step_modification`` (measured 0.33–0.35 on these three and five more seeds, 0.33–0.38 on the
    mixtures of ``benchmarks/sa_solver_condition.py``)."""
    from sgm.bench.problems import exact_model, make_problem
    from sgm.samplers.optimize import map_error

    target = sgm.random_mixture(3 + seed % 4, seed=seed)
    problem = make_problem("random", target, "vp", 256, seed)
    errors = [map_error(sgm.sample(exact_model(target, problem.sde), problem.sde, problem.x_T.shape, "sa_solver",
                                   nfe=10, spacing="uniform", x_init=problem.x_T, predictor_order=2, corrector_order=0,
                                   tau=0.0, few_step_modification=modified).x, problem.x_ref)
              for modified in (False, True)]
    assert errors[0] <= 0.6 * errors[1], errors


def test_the_published_tau_window():
    """τ(t) = η on 0.2 ≤ t/T ≤ 0.8 (Xue et al.'s ``tau_t``; diffusers' 200 ≤ timestep ≤ 800), 0 outside, evaluated at a
    step's first node; ``tau_window=None``: η everywhere."""
    solver, node = sgm.samplers.solver("sa_solver", tau=0.6), time_grid(sgm.VPSDE(), 2).nodes[0]
    assert [solver.tau_at(node._replace(t=t), 1.0) for t in (0.1, 0.2, 0.5, 0.8, 0.81)] == [0, 0.6, 0.6, 0.6, 0]
    assert solver.tau_at(node._replace(t=0.5), 10.0) == 0  # a fraction of T
    assert sgm.samplers.solver("sa_solver", tau=0.6, tau_window=None).tau_at(node._replace(t=0.01), 1.0) == 0.6


@pytest.mark.parametrize("sde_name", list(SDES))
def test_first_order_without_corrector_is_ddim_and_ancestral(sde_name):
    """SA-Predictor 1 without corrector: ``τ = 0`` is DDIM; ``τ = 1`` everywhere,
    ``x_t = (σ_t²α_s/σ_s²α_t) x_s + α_t(1 - e^{-2h}) x̂_0 + σ_t √(1 - e^{-2h}) ξ``, is the ancestral step with DDPM's
    posterior variance — element by element for the same noise (one draw per step, named by the step)."""
    forward, gm = SDES[sde_name](), mixture()
    grid = time_grid(forward, 15, spacing="logsnr")
    x = forward.prior_sample((64, 2), generator=gen(0), dtype=D)
    a = sgm.samplers.get("sa_solver")(gm.score_fn(forward), forward, x, grid, predictor_order=1, corrector_order=0,
                                      tau=0.0)
    b = sgm.samplers.get("ddim")(gm.score_fn(forward), forward, x, grid)
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)
    a = sgm.samplers.get("sa_solver")(gm.score_fn(forward), forward, x, grid, predictor_order=1, corrector_order=0,
                                      tau=1.0, tau_window=None, generator=gen(3))
    b = sgm.samplers.get("ancestral")(gm.score_fn(forward), forward, x, grid, variance="posterior", generator=gen(3))
    assert a.nfe == b.nfe == 15
    torch.testing.assert_close(a.x, b.x, rtol=1e-11, atol=1e-11)


def test_draws_name_their_steps_and_none_where_tau_is_zero():
    """One draw per step with ``τ(s) > 0``, named by the step ``(s, t)``; the ODE (``tau=0``) draws nothing."""
    forward, gm = sgm.VPSDE(), mixture()
    grid = time_grid(forward, 12)
    x = forward.prior_sample((8, 2), generator=gen(0), dtype=D)
    noise = RecordedNoise(gen(1), x)
    integrate(sgm.samplers.solver("sa_solver"), gm.score_fn(forward), forward, x, grid, noise=noise)
    expected = [(a.t, b.t) for a, b in zip(grid.noisy, grid.noisy[1:]) if 0.2 <= a.t <= 0.8]
    assert [(t0, t1) for t0, t1, _ in noise.draws] == expected and expected
    noise = RecordedNoise(gen(1), x)
    integrate(sgm.samplers.solver("sa_solver", tau=0.0), gm.score_fn(forward), forward, x, grid, noise=noise)
    assert noise.draws == [] and not sgm.samplers.solver("sa_solver", tau=0.0).stochastic


@pytest.mark.parametrize("options, error, match", [
    ({"predictor_order": 0}, ValueError, "predictor_order"), ({"predictor_order": 5}, ValueError, "predictor_order"),
    ({"predictor_order": 2.0}, TypeError, "predictor_order"), ({"corrector_order": 5}, ValueError, "corrector_order"),
    ({"corrector_order": -1}, ValueError, "corrector_order"), ({"tau": -0.1}, ValueError, "tau"),
    ({"tau": "1"}, TypeError, "tau"), ({"tau_window": (0.8, 0.2)}, ValueError, "tau_window"),
    ({"tau_window": (0.2, 1.5)}, ValueError, "tau_window"), ({"tau_window": 0.5}, TypeError, "tau_window"),
    ({"lower_order_final": 1}, TypeError, "lower_order_final"),
    ({"few_step_modification": "yes"}, TypeError, "few_step_modification"),
    ({"few_step_modification": True, "predictor_order": 1, "corrector_order": 1}, ValueError, "few_step_modification"),
])
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        sgm.samplers.solver("sa_solver", **options)
