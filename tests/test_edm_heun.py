"""EDM's Heun sampler (sgm/samplers/edm.py) against EDM's Algorithm 2 written out here, with and without churn.

Tolerances: the compared computations are the same arithmetic in a different order (float64), so they agree to
rounding; 1e-10 leaves room for the exact score's softmax over components and σ ↔ t round trips (~1e-14).
"""
import math

import pytest
import torch

import sgm
from sgm.samplers import time_grid
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
    torch.testing.assert_close(torch.tensor([v.noise_level for v in grid.nodes], dtype=D),
                               torch.tensor(sigmas, dtype=D), rtol=1e-12, atol=0)
    options = dict(churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.007)
    out = sgm.sample(gm.score_fn(sde), sde, (64, 2), sampler="heun", grid=grid, generator=gen(0), dtype=D, **options)
    g = gen(0)
    x_T = sde.prior_std * torch.randn((64, 2), generator=g, dtype=D)  # σ_0 = prior std: y_0 = x_T/scale_0
    expected = edm_algorithm_2(sigma_denoiser(gm, sde), x_T / grid.nodes[0].scale, sigmas, generator=g, **options)
    solver = sgm.samplers.solver("heun", **options)
    assert out.nfe == 2 * n - 1 == solver.nfe(n)
    assert solver.stochastic == (churn > 0)
    torch.testing.assert_close(out.x, expected, rtol=1e-10, atol=1e-10)



@pytest.mark.parametrize("options, match", [
    ({"churn": -1.0}, "churn"), ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax"), ({"s_noise": 0.0}, "s_noise"),
    ({"s_tmax": "inf"}, "s_tmax"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sgm.samplers.solver("heun", **options)


@pytest.mark.parametrize("ratio, euler", [(0.99e-4, True), (1.01e-4, False)])
def test_a_step_over_four_decades_of_noise_level_is_eulers(ratio, euler):
    """``σ_b < 10⁻⁴ σ_a``: Euler's step ``x_b = scale_b x̂_0 + std_b ε̂`` (one evaluation); just above, Heun's
    trapezoid (two), written out here on VP's ``y = x/scale``."""
    sde, gm = sgm.VPSDE(), mixture()
    score = gm.score_fn(sde)
    sigma_a = float(sde.noise_level(torch.tensor([0.9], dtype=D)))
    t_b = float(sde.time_at_noise_level(torch.tensor([ratio * sigma_a], dtype=D)))
    grid = sgm.samplers.TimeGrid.from_times(sde, [0.9, t_b], denoise=False)
    a, b = grid.nodes
    x = torch.randn(16, 2, generator=gen(0), dtype=D)
    out = sgm.sample(score, sde, (16, 2), "heun", grid=grid, x_init=x, dtype=D)

    def eps_hat(x, node):
        return -node.std * score(x, torch.full((x.shape[0],), node.t, dtype=D))

    d = eps_hat(x, a)
    y = x / a.scale + (b.noise_level - a.noise_level) * d
    if not euler:
        y = x / a.scale + (b.noise_level - a.noise_level) * (d + eps_hat(b.scale * y, b)) / 2
    assert out.nfe == (1 if euler else 2) == sgm.samplers.solver("heun").grid_nfe(grid)
    torch.testing.assert_close(out.x, b.scale * y, rtol=1e-10, atol=1e-10)


def test_heun_on_the_flow_grid_of_rectified_flow():
    """The flow grid's first step (``σ = 10⁶`` to ``σ ≈ N - 1``) is Euler's, so ``N`` levels cost ``2N - 2``; the map
    error on flow is then within 1.5× the uniform grid's at 20 NFE on random mixtures (it was 4e4× worse: the
    trapezoid from σ = 10⁶; measured ratios 0.78–0.95 here)."""
    path = sgm.RectifiedFlow()
    for seed in (41, 42, 43):
        model = sgm.random_mixture(2, k=4, seed=seed).prediction_fn(path, "velocity")
        x = path.prior_sample((200, 2), generator=gen(1), dtype=D)
        reference, _ = sgm.samplers.optimize.flow_map(model, path, x)
        errors = {}
        for spacing in ("flow", "uniform"):
            out = sgm.sample(model, path, x.shape, "heun", nfe=20, spacing=spacing, x_init=x, dtype=D)
            errors[spacing] = float((out.x - reference).norm(dim=1).mean())
            assert out.nfe <= 20
        grid = time_grid(path, 10, "flow")
        assert grid.nodes[1].noise_level < 1e-4 * grid.nodes[0].noise_level
        assert sgm.samplers.solver("heun").grid_nfe(grid) == 18
        assert errors["flow"] < 1.5 * errors["uniform"], errors
