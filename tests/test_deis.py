"""DEIS and iPNDM (sgm/samplers/deis.py) against DDIM, each other and the polynomials their weights integrate.

Tolerances: the compared computations are the same arithmetic in a different order (float64), so they agree to
rounding; 1e-10 leaves room for the exact score's softmax over components and σ ↔ t round trips (~1e-14).
"""
import math

import pytest
import torch

import sgm
from sgm.samplers import time_grid
from sgm.samplers.deis import deis_coefficients
from conftest import SDES, gen, mixture

D = torch.float64


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



@pytest.mark.parametrize("name, options, match", [
    ("deis", {"order": 0}, "order"), ("deis", {"order": 4}, "order"), ("deis", {"order": 2.0}, "order"),
    ("deis", {"variable": "t"}, "variable"), ("ipndm", {"max_order": 5}, "max_order"),
])
def test_bad_options_are_named(name, options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sgm.samplers.solver(name, **options)
