"""Annealed Langevin's step-size rules (sgm/samplers/langevin.py) against their defining equations."""
import pytest

import sgm
from sgm.samplers import time_grid


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
    for options, expected in [({}, 0.2), ({"step_size": "ncsnv2"}, u),
                              ({"step_size": 2e-5}, 1e-5 / grid.noisy[-1].std ** 2)]:
        deltas = AnnealedLangevin(**options).init(None, grid)
        assert all(deltas[n] == pytest.approx(expected * n.std**2, rel=1e-9) for n in grid.noisy), options
    with pytest.raises(ValueError, match="step_size"):
        AnnealedLangevin(step_size="ncsn3")

