"""EDM's Heun sampler, DEIS and iPNDM against independently written published algorithms and closed forms.

Tolerances: the compared computations are the same arithmetic in a different order (float64), so they agree to
rounding; 1e-10 leaves room for the exact score's softmax over components and σ ↔ t round trips (~1e-14).
"""
import math

import pytest
import torch

import sgm
from sgm.samplers import TimeGrid, time_grid
from sgm.samplers.deis import deis_coefficients
from conftest import SDES, gen, mixture

D = torch.float64


def karras_sigmas(sigma_min, sigma_max, n, rho=7.0):
    """EDM's eq. (5): ``σ_i = (σ_max^{1/ρ} + i/(n-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``, then ``σ_n = 0``."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)] + [0.0]


def edm_algorithm_2(denoiser, x, sigmas, churn, s_tmin, s_tmax, s_noise, generator):
    """Karras et al. (2022), Algorithm 2, in σ (``σ(t) = t``, ``s(t) = 1``), written out from the paper.

    One deliberate difference, stated in sgm.samplers.edm: no churn at the last level ``i = N-1`` (sgm's
    integrate owns that step into σ = 0, Tweedie's ``D(x; σ_{N-1})``)."""
    n = len(sigmas) - 1
    for i in range(n):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= t_cur <= s_tmax and i < n - 1 else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            eps = s_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + math.sqrt(t_hat**2 - t_cur**2) * eps
        d = (x - denoiser(x, t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d
        if t_next != 0:
            d_prime = (x_next - denoiser(x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def sigma_denoiser(gm, sde):
    """``D(y; σ)`` of the σ-parameterised (VE) process ``y = x/scale``: at ``t = t(σ)``, ``x = scale·y`` and
    ``D = (x + std² s(x, t))/scale`` with the exact mixture score."""
    def denoiser(y, sigma):
        t = sde.time_at_noise_level(torch.tensor(sigma, dtype=D))
        scale, std = (float(v) for v in sde.marginal(t))
        x = scale * y
        return (x + std**2 * gm.score(x, torch.full((y.shape[0],), float(t), dtype=D), sde)) / scale
    return denoiser


@pytest.mark.parametrize("churn, s_tmin, s_tmax", [(0.0, 0.0, math.inf), (3.0, 0.0, math.inf), (3.0, 0.05, 10.0),
                                                   (40.0, 0.0, math.inf)])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_heun_is_edm_algorithm_2(sde_name, churn, s_tmin, s_tmax):
    """Same grid (EDM's ρ = 7 σ's), same x_T and noise: element by element; NFE = 2N - 1. churn = 40 with N = 12
    saturates γ at √2 - 1; [0.05, 10] leaves the first and last levels unchurned. On VP and sub-VP the σ̂'s of
    the churn are times off the grid (sde.time_at_noise_level) with the state rescaled there."""
    sde, gm, n = SDES[sde_name](), mixture(), 12
    grid = time_grid(sde, n, spacing="karras", rho=7)
    lo, hi = (float(v) for v in sde.noise_level(torch.tensor([1e-3, sde.T], dtype=D)))
    sigmas = karras_sigmas(lo, hi, n)
    torch.testing.assert_close(torch.tensor([v.noise_level for v in grid.nodes], dtype=D), torch.tensor(sigmas, dtype=D),
                               rtol=1e-12, atol=0)
    options = dict(churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.007)
    out = sgm.sample(gm.score_fn(sde), sde, (64, 2), sampler="heun", grid=grid, generator=gen(0), dtype=D, **options)
    g = gen(0)
    x_T = sde.prior_std * torch.randn((64, 2), generator=g, dtype=D)  # σ_0 = prior std: y_0 = x_T/scale_0
    expected = edm_algorithm_2(sigma_denoiser(gm, sde), x_T / grid.nodes[0].scale, sigmas, generator=g, **options)
    solver = sgm.samplers.solver("heun", **options)
    assert out.nfe == 2 * n - 1 == solver.nfe(n)
    assert solver.stochastic == (churn > 0)
    torch.testing.assert_close(out.x, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variable", ["lambda", "rho"])
@pytest.mark.parametrize("spacing", ["logsnr", "trailing"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_deis_order_1_is_ddim(sde_name, spacing, variable):
    sde, gm = SDES[sde_name](), mixture()
    grid = time_grid(sde, 15, spacing=spacing)
    x = sde.prior_sample((64, 2), generator=gen(0), dtype=D)
    a = sgm.samplers.deis(gm.score_fn(sde), sde, x, grid, order=1, variable=variable)
    b = sgm.samplers.ddim(gm.score_fn(sde), sde, x, grid)
    assert a.nfe == b.nfe == 15
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_in_rho_on_equal_steps_is_ipndm(order):
    """On equal ρ steps (Karras' grid with ρ = 1 on VE) the exact integral of the ρ-polynomial has the fixed
    Adams–Bashforth weights iPNDM uses: the two agree to rounding, warm-up included."""
    sde, gm = sgm.VESDE(sigma_max=5.0), mixture()
    grid = time_grid(sde, 20, spacing="karras", rho=1.0)
    x = sde.prior_sample((64, 2), generator=gen(0), dtype=D)
    a = sgm.samplers.deis(gm.score_fn(sde), sde, x, grid, order=order, variable="rho")
    b = sgm.samplers.ipndm(gm.score_fn(sde), sde, x, grid, max_order=order)
    torch.testing.assert_close(a.x, b.x, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("variable", ["lambda", "rho"])
def test_deis_coefficients_integrate_polynomials_exactly(variable, k):
    """``Σ_j c_j p(v_j) = ∫_{ρ_a}^{ρ_b} p(v(ρ)) dρ`` for every polynomial ``p`` of degree < k in ``v``; checked
    on ``1, v, v²`` against closed forms (``∫ λ dρ`` with ``λ = -log ρ``: ``ρ - ρ log ρ``;
    ``∫ λ² dρ = ρ(log² ρ - 2 log ρ + 2)``), over unequal steps with the history of a real grid."""
    sde = sgm.VPSDE()
    nodes = time_grid(sde, 9, spacing="quadratic").noisy
    history, b = tuple(reversed(nodes[4 - k + 1:5])), nodes[5]  # a = nodes[4], then older
    c = deis_coefficients(history, b, variable)
    if variable == "rho":
        antiderivatives = [lambda r: r, lambda r: r**2 / 2, lambda r: r**3 / 3]
        value = [lambda n: 1.0, lambda n: n.noise_level, lambda n: n.noise_level**2]
    else:
        antiderivatives = [lambda r: r, lambda r: r - r * math.log(r),
                           lambda r: r * (math.log(r) ** 2 - 2 * math.log(r) + 2)]
        value = [lambda n: 1.0, lambda n: n.lam, lambda n: n.lam**2]
    for p in range(k):
        exact = antiderivatives[p](b.noise_level) - antiderivatives[p](history[0].noise_level)
        got = sum(cj * value[p](n) for cj, n in zip(c, history))
        assert got == pytest.approx(exact, rel=1e-12, abs=1e-14), (p, got, exact)


@pytest.mark.parametrize("name, options", [("deis", {"order": 3}), ("deis", {"order": 2, "variable": "rho"}),
                                           ("ipndm", {}), ("heun", {"churn": 2.0})])
def test_runs_are_independent_and_counted(name, options):
    """One solver object serves several runs (its memory lives in the run's state), in float32 too."""
    sde, gm = sgm.VPSDE(), mixture(torch.float32)
    solver = sgm.samplers.solver(name, **options)
    x = sde.prior_sample((32, 2), generator=gen(0))
    runs = [sgm.samplers.integrate(solver, gm.score_fn(sde), sde, x, time_grid(sde, 10), generator=gen(1))
            for _ in range(2)]
    assert runs[0].x.dtype == torch.float32 and bool(torch.isfinite(runs[0].x).all())
    assert runs[0].nfe == runs[1].nfe == solver.nfe(10)
    torch.testing.assert_close(runs[0].x, runs[1].x, rtol=0, atol=0)


@pytest.mark.parametrize("name, options, match", [
    ("deis", {"order": 0}, "order"), ("deis", {"order": 4}, "order"), ("deis", {"order": 2.0}, "order"),
    ("deis", {"variable": "t"}, "variable"), ("ipndm", {"max_order": 5}, "max_order"),
    ("heun", {"churn": -1.0}, "churn"), ("heun", {"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax"),
    ("heun", {"s_noise": 0.0}, "s_noise"), ("heun", {"s_tmax": "inf"}, "s_tmax"),
])
def test_bad_options_are_named(name, options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sgm.samplers.solver(name, **options)


# --- annealed Langevin's step size ------------------------------------------------------------------------
def test_ncsnv2_step_minimises_the_variance_recursion():
    """``u`` minimises ``f(u) = (1-u)^{2T}(γ² - c) + c``, ``c = 2/(2-u)``: checked against a brute-force grid."""
    from sgm.samplers.langevin import ncsnv2_step

    for gamma, n_steps in [(5000 ** (1 / 399), 5), (1.09, 5), (2.5, 1), (1.01, 30)]:
        def f(u):
            c = 2 / (2 - u)
            return (1 - u) ** (2 * n_steps) * (gamma**2 - c) + c
        brute = min((k / 100_000 for k in range(1, 100_001)), key=f)
        assert ncsnv2_step(gamma, n_steps) == pytest.approx(brute, abs=2e-5)


def test_langevin_step_rules():
    """Default ``δ_i = 0.2 std_i²``; ``"ncsnv2"``: ``u`` of the grid's mean level ratio; a number: NCSN's rule."""
    from sgm.samplers.langevin import AnnealedLangevin, ncsnv2_step

    grid = time_grid(sgm.VESDE(), 400)
    u = ncsnv2_step((grid.noisy[0].noise_level / grid.noisy[-1].noise_level) ** (1 / 399), 5)
    assert u == pytest.approx(0.0385, abs=1e-3)
    for options, expected in [({}, 0.2), ({"step_size": "ncsnv2"}, u), ({"step_size": 2e-5}, 1e-5 / grid.noisy[-1].std ** 2)]:
        deltas = AnnealedLangevin(**options).init(None, grid)
        assert all(deltas[n] == pytest.approx(expected * n.std**2, rel=1e-9) for n in grid.noisy), options
    with pytest.raises(ValueError, match="step_size"):
        AnnealedLangevin(step_size="ncsn3")
