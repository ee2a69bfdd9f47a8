"""Declared orders measured where the other order tests do not reach, each corrected here from a measurement.

**SRK.** torchsde's SRK (``sde`` with ``method="srk"``) draws
space-time Lévy areas from its own torchsde path, so neither the exact-moment tests (which drive a solver by unit
draws) nor the Monte-Carlo weak test of test_convergence.py (weak order 1 only) reach it.

Its weak error is measured on shared Brownian paths (``convergence.path_errors``: one ``BrownianNoise`` source, whose
torchsde path is the same at every step count): ``‖m_K - m_ref‖ + ‖C_K - C_ref‖_F`` against the same solver at 8×
the finest steps. The common path cancels the Monte-Carlo error of the moments to first order (what is left is about
the strong error over √n, below the weak error here), so n = 100 shows the slope. Measured (n = 200, two random
mixtures each): 2.02, 2.02 on VP at 16–64 steps; 2.11, 2.16 on VE; 2.01, 2.04 on VP at 8–32. VE's steps start at 16
(at 8, VE's first steps over its large noise levels are far from asymptotic: slope 1.2 from 8 to 16).

**SA-Solver with a first-order corrector, EDM's churn.** Exact weak errors on Gaussian data
(``stochastic_samplers.gaussian_weak_error``, as test_stochastic_orders.py), 64–256 λ-uniform steps: SA-Solver (p, 1)
for p = 2–4 measures 0.94–0.99 (the corrector's order, not the predictor's: it was declared 2); Heun with churn 1
measures 2.02 on VP and VE (churn's noising is exact in law, so the Heun step's second-order error is all there is:
it was declared 1)."""
import pathlib
import sys
import zlib

import pytest
import torch

import sgm
from sgm.samplers.convergence import path_errors, slope

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from stochastic_samplers import gaussian_weak_error  # noqa: E402

D = torch.float64
STEPS = [64, 128, 256]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchsde: the float32 ends of its Brownian interval
@pytest.mark.parametrize("sde_name, steps", [("vp", [8, 16, 32]), ("ve", [16, 32, 64])])
def test_srk_weak_order_on_additive_noise(sde_name, steps):
    """The weak slope of ``sde`` with ``srk`` is its declared 2 (within 0.3), on a 2-D mixture of three overlapping
    components drawn per case (one basin: no path ends in another mode than its reference)."""
    sde = {"vp": sgm.VPSDE, "ve": sgm.VESDE}[sde_name]()
    gm = sgm.random_mixture(2, k=3, spread=0.4, seed=zlib.crc32(sde_name.encode()) % 1000, dtype=D)
    g, n = torch.Generator().manual_seed(0), 100
    x_T = sde.perturb(gm.sample(n, generator=g), torch.full((n,), sde.T, dtype=D), generator=g)
    solver = sgm.samplers.solver("sde", method="srk")
    _, weak, _ = path_errors(solver, gm.score_fn(sde), sde, x_T, steps, 8 * steps[-1], sgm.samplers.BrownianNoise(g))
    assert solver.weak_order == 2.0 and abs(slope(steps, weak) - solver.weak_order) < 0.3, weak


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("name, options, declared", [
    ("sa_solver", {"predictor_order": 2, "corrector_order": 1}, 1.0),
    ("sa_solver", {"predictor_order": 4, "corrector_order": 1}, 1.0),
    ("sa_solver", {"predictor_order": 1, "corrector_order": 2}, 2.0),
    ("heun", {"churn": 1.0}, 2.0)], ids=lambda v: v if isinstance(v, str) else str(v))
def test_exact_weak_order(name, options, declared, sde_name):
    """The declared weak order (the one written here, so a changed declaration fails) is the measured slope within
    0.3 (test_stochastic_orders.py's tolerance)."""
    sde = {"vp": sgm.VPSDE, "ve": sgm.VESDE}[sde_name]()
    errors = [gaussian_weak_error(name, options, sde, k) for k in STEPS]
    assert sgm.samplers.solver(name, **options).weak_order == declared
    assert abs(slope(STEPS, errors) - declared) < 0.3, errors
