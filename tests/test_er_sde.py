"""ER-SDE-Solver: the published algorithm (Cui et al., 2023; its official code's VP form, ``ρ = σ/α``) written out
here with its scalar coefficients in 40-digit arithmetic, element by element for the same noise; the first order as
DDIM (``φ = x``) and DDPM's ancestral step (``φ = x²``); the quadrature of ``∫ dρ/φ`` against closed forms; options and
invalid noise scales refused by name."""
import math

import mpmath
import pytest
import torch

import sgm
from sgm.samplers import integrate, time_grid
from sgm.samplers.er_sde import NOISE_SCALES, noise_scale_integrals
from conftest import SDES, RecordedNoise, gen, mixture

D = torch.float64
mp = mpmath.mpf
# the paper's noise-scale functions (its official code's customized_func), in mpmath
PHI = {"ode": lambda x: x, "reverse_sde": lambda x: x**2, "er_sde_1": lambda x: x * (mpmath.exp(-1 / x) + 10),
       "er_sde_2": lambda x: x ** mp(1.5), "er_sde_3": lambda x: x ** mp(2.5),
       "er_sde_4": lambda x: x ** mp(0.9) * mpmath.log10(1 + 100 * x ** mp(1.5)),
       "er_sde_5": lambda x: x * (mpmath.exp(x ** mp(0.3)) + 10)}


def published(gm, sde, x, grid, order, phi, draws):
    """ER-SDE-Solver-``order`` (``vp_{1,2,3}_order(_taylor)`` of the official code) on the grid's noisy nodes: with
    ``λ_i = σ_i/α_i`` and ``r = φ(λ_{i+1})/φ(λ_i)``,
    ``x ← (α_{i+1}/α_i) r x + α_{i+1}(1 - r) x̂_0 + α_{i+1}(λ_{i+1} - λ_i + φ(λ_{i+1}) ∫1/φ) d
    + α_{i+1}((λ_{i+1} - λ_i)²/2 + φ(λ_{i+1}) ∫(λ - λ_i)/φ) dd + α_{i+1} √(λ_{i+1}² - λ_i² r²) z``,
    ``d = (x̂_0 - x̂_0')/(λ_i - λ_{i-1})``, ``dd = 2(d - d')/(λ_i - λ_{i-2})``; the integrals over ``[λ_{i+1}, λ_i]`` by
    mpmath's quadrature (the official code: a 100-point Riemann sum)."""
    mpmath.mp.dps = 40
    nodes, draws = grid.noisy, list(draws)
    alpha, lam = [n.scale for n in nodes], [mp(n.std) / mp(n.scale) for n in nodes]
    old_x0 = old_d = None
    for i in range(len(nodes) - 1):
        x0 = gm.denoise(x, torch.full((x.shape[0],), nodes[i].t, dtype=D), sde)
        r = phi(lam[i + 1]) / phi(lam[i])
        new = float(alpha[i + 1] / alpha[i] * r) * x + float(alpha[i + 1] * (1 - r)) * x0
        if order >= 2 and old_x0 is not None:
            s_int = mpmath.quad(lambda u: 1 / phi(u), [lam[i + 1], lam[i]])
            d = (x0 - old_x0) / float(lam[i] - lam[i - 1])
            new = new + float(alpha[i + 1] * (lam[i + 1] - lam[i] + s_int * phi(lam[i + 1]))) * d
            if order == 3 and old_d is not None:
                s_u = mpmath.quad(lambda u: (u - lam[i]) / phi(u), [lam[i + 1], lam[i]])
                dd = 2 * (d - old_d) / float(lam[i] - lam[i - 2])
                new = new + float(alpha[i + 1] * ((lam[i + 1] - lam[i]) ** 2 / 2 + s_u * phi(lam[i + 1]))) * dd
            old_d = d
        z = draws.pop(0) if phi is not PHI["ode"] else torch.zeros_like(x)
        # max(·, 0): ± 1e-40 rounding
        x = new + float(mpmath.sqrt(max(lam[i + 1] ** 2 - lam[i] ** 2 * r**2, 0)) * alpha[i + 1]) * z
        old_x0 = x0
    return x


# every noise scale on VP, the default and the one whose variance cancels on sub-VP and VE; every order
CASES = [("vp", ns) for ns in ("er_sde_5", "er_sde_1", "reverse_sde", "er_sde_4", "ode")] + [
    (sde, ns) for sde in ("subvp", "ve") for ns in ("er_sde_5", "er_sde_1")]


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("sde_name, noise_scale", CASES)
def test_er_sde_is_the_published_algorithm(sde_name, order, noise_scale):
    """Element by element on 12 λ-uniform noisy nodes (no denoising), the same draws: float64 against coefficients
    exact to 40 digits, so the difference is float64 rounding of the update (≤ 1e-13 relative; measured ≤ 3e-15).
    sgm's noise variance is ``ρ_t²(1 - q²)``, ``1 - q = (ψ(ρ_s) - ψ(ρ_t))/ψ(ρ_s)`` (``φ = ρψ``), free of the
    cancellation of the published ``ρ_t² - ρ_s² r²`` (up to 1e-10 relative for ``er_sde_1`` in float64)."""
    forward, gm = SDES[sde_name](), mixture()
    grid = time_grid(forward, 12, spacing="logsnr", denoise=False)
    x_T = forward.prior_sample((64, 2), generator=gen(0), dtype=D)
    noise = RecordedNoise(gen(1), x_T)
    solver = sgm.samplers.solver("er_sde", order=order, noise_scale=noise_scale)
    out = integrate(solver, gm.score_fn(forward), forward, x_T, grid, noise=noise)
    assert all((t0, t1) == (a.t, b.t) for (t0, t1, _), a, b in zip(noise.draws, grid.noisy, grid.noisy[1:]))
    assert len(noise.draws) == (0 if noise_scale == "ode" else 11) and out.nfe == 11
    expected = published(gm, forward, x_T, grid, order, PHI[noise_scale], [z for _, _, z in noise.draws])
    assert float((out.x - expected).norm() / expected.norm()) < 1e-13


@pytest.mark.parametrize("sde_name", list(SDES))
def test_first_order_is_ddim_and_ancestral(sde_name):
    """ER-SDE-Solver-1 with ``φ = x`` is DDIM; with ``φ = x²``,
    ``x_t = (α_t ρ_t²/α_s ρ_s²) x_s + α_t(1 - ρ_t²/ρ_s²) x̂_0 + α_t ρ_t √(1 - ρ_t²/ρ_s²) z`` is the ancestral step with
    DDPM's posterior variance."""
    forward, gm = SDES[sde_name](), mixture()
    grid = time_grid(forward, 15, spacing="logsnr")
    x = forward.prior_sample((64, 2), generator=gen(0), dtype=D)
    run = sgm.samplers.get("er_sde")
    torch.testing.assert_close(run(gm.score_fn(forward), forward, x, grid, order=1, noise_scale="ode").x,
                               sgm.samplers.get("ddim")(gm.score_fn(forward), forward, x, grid).x,
                               rtol=1e-12, atol=1e-12)
    a = run(gm.score_fn(forward), forward, x, grid, order=1, noise_scale="reverse_sde", generator=gen(3))
    b = sgm.samplers.get("ancestral")(gm.score_fn(forward), forward, x, grid, variance="posterior", generator=gen(3))
    torch.testing.assert_close(a.x, b.x, rtol=1e-11, atol=1e-11)


def test_quadrature_of_the_noise_scale_integrals():
    """``(∫ dρ/φ, ∫ (ρ - ρ_s)/φ dρ)`` over ``[ρ_t, ρ_s]`` against closed forms (``φ = x``, ``x²``, ``x^1.5``) and
    40-digit quadrature (the others), from small steps to a step across 4 decades."""
    closed = {"ode": (lambda lo, hi: math.log(hi / lo), lambda lo, hi: hi - lo - hi * math.log(hi / lo)),
              "reverse_sde": (lambda lo, hi: 1 / lo - 1 / hi, lambda lo, hi: math.log(hi / lo) + hi / hi - hi / lo),
              "er_sde_2": (lambda lo, hi: 2 * (lo**-0.5 - hi**-0.5),
                           lambda lo, hi: 2 * (hi**0.5 - lo**0.5) - 2 * hi * (lo**-0.5 - hi**-0.5))}
    mpmath.mp.dps = 40
    for lo, hi in [(0.5, 0.52), (0.01, 0.05), (0.002, 80.0), (3.0, 150.0)]:
        for name, scale in NOISE_SCALES.items():
            i0, i1 = noise_scale_integrals(scale.psi, lo, hi)
            if name in closed:
                e0, e1 = (f(lo, hi) for f in closed[name])
            else:
                e0 = float(mpmath.quad(lambda u: 1 / PHI[name](u), [lo, hi]))
                e1 = float(mpmath.quad(lambda u: (u - hi) / PHI[name](u), [lo, hi]))
            assert i0 == pytest.approx(e0, rel=1e-12) and i1 == pytest.approx(e1, rel=1e-12), (name, lo, hi)


def test_a_noise_scale_invalid_on_the_grid_is_refused_before_any_work():
    """``er_sde_4``'s ``φ/ρ`` decreases beyond ρ ≈ 1000 (a negative variance there): refused on a VE path reaching
    5000, accepted on the default one; and at the exact top of rectified flow (``ρ/φ → ∞``) by its need."""
    calls = []
    gm = mixture()

    def score(x, t):
        calls.append(t)
        return gm.score(x, t, sgm.VESDE(sigma_max=5000.0))

    with pytest.raises(ValueError, match="noise_scale='er_sde_4' gives a negative noise variance"):
        sgm.sample(score, sgm.VESDE(sigma_max=5000.0), (4, 2), "er_sde", steps=10, noise_scale="er_sde_4")
    assert calls == []
    assert "positive_alpha" in sgm.samplers.solver("er_sde", noise_scale="er_sde_4").needs
    sgm.sample(gm.score_fn(sgm.VESDE()), sgm.VESDE(), (4, 2), "er_sde", steps=10, noise_scale="er_sde_4")


@pytest.mark.parametrize("options, error, match", [
    ({"order": 0}, ValueError, "order"), ({"order": 4}, ValueError, "order"), ({"order": 2.0}, TypeError, "order"),
    ({"noise_scale": "er_sde_6"}, ValueError, "noise_scale"), ({"noise_scale": None}, ValueError, "noise_scale"),
])
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        sgm.samplers.solver("er_sde", **options)
