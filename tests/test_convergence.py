"""Convergence at the expected order, with the exact mixture score (float64).

Deterministic samplers: mean ‖x_K - x_ref‖ of the map x_T ↦ x_eps against adaptive dopri5 at
rtol = atol = 1e-10. SDE samplers, started from exact p_T draws: weak order from |mean error| + |variance error| at
eps, computed exactly on Gaussian targets (by Monte Carlo on a mixture where a Gaussian hides the order); strong order
from E‖x_K - x_ref‖ against a fine run driven by the same Brownian path per sample (sgm.samplers.convergence). The
order is the least-squares slope of log error against log steps; measured slopes (benchmarks) sit within 0.2 of
theory, the tests allow 0.3 (deterministic) and 0.25.
"""
import functools
import pathlib
import sys
import zlib

import pytest
import torch

import sgm
from sgm.samplers import euler_maruyama, ode, sde, time_grid
from sgm.samplers.convergence import moment_gap, path_errors, slope
from conftest import SDES, gen, mixture

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from stochastic_exponential import exact_moments  # noqa: E402

D = torch.float64


STEPS = [16, 32, 64, 128, 256]
# (sampler, options[, grid]): the order each must show is the one its solver declares. ``grid`` (default uniform
# in t, STEPS) names a spacing (and rho) and step counts where a method's order is already asymptotic. The
# exponential integrators and the multistep methods step in λ or extrapolate ε̂ over unequal steps: on a grid
# uniform in t the VP grid's λ-steps near eps vary by factors and stay too long for the asymptotic regime at
# these step counts (measured local slopes of DEIS-3 in λ on VP reach 2.5 only beyond 512 steps), so they are
# tested on grids uniform in λ (logsnr), some of higher order with more steps (LOGSNR_FINE; the local slopes of
# DEIS-3 climb 2.5 → 2.97 from 64 to 1024 steps). DPM-Solver++-3 singlestep (2.56–2.69 at 64–512 steps) is slower
# still and left to benchmarks/convergence.py (docs/samplers.md has every measured slope).
LOGSNR = {"spacing": "logsnr"}
LOGSNR_FINE = {"spacing": "logsnr", "steps": [64, 128, 256, 512]}
EXP = {"lower_order_final": False}  # lower_order_final=False: no first-order last step (there is no denoising here)
DETERMINISTIC = [
    ("ode", {"method": "euler"}),
    ("ode", {"method": "midpoint"}),
    ("ode", {"method": "heun2"}),
    ("ode", {"method": "rk4"}),
    ("ddim", {}),
    ("dpm_solver", {"order": 2, **EXP}, LOGSNR),
    ("dpm_solver", {"order": 2, "prediction": "eps", **EXP}, LOGSNR),
    ("dpm_solver", {"order": 3, **EXP}, LOGSNR),  # declares 2: the published 3M (docs/samplers.md)
    ("dpm_solver", {"order": 3, "prediction": "eps", **EXP}, LOGSNR),
    ("dpm_solver", {"order": 2, "method": "singlestep", **EXP}, LOGSNR),
    ("dpm_solver", {"order": 3, "method": "singlestep", "prediction": "eps", **EXP}, LOGSNR_FINE),
    ("dpm_solver_v3", {"order": 2, "use_corrector": False, **EXP}, LOGSNR),
    ("dpm_solver_v3", {"order": 3, "use_corrector": False, **EXP}, LOGSNR_FINE),
    ("dpm_solver_v3", {**EXP}, LOGSNR_FINE),  # the pseudo-order corrector: declares 2 (docs/samplers.md)
    ("unipc", {"order": 1, **EXP}, LOGSNR),
    ("unipc", {"order": 2, **EXP}, LOGSNR_FINE),
    ("unipc", {"order": 2, "variant": "bh1", **EXP}, LOGSNR),
    ("unipc", {"order": 3, **EXP}, LOGSNR_FINE),
    ("heun", {}),
    ("heun", {}, {"spacing": "karras", "rho": 7.0}),
    ("deis", {"order": 1}),
    ("deis", {"order": 2}, {**LOGSNR, "steps": [32, 64, 128, 256, 512]}),
    ("deis", {"order": 3}, {**LOGSNR, "steps": [64, 128, 256, 512, 1024]}),
    ("deis", {"order": 3, "variable": "rho"}, {**LOGSNR, "steps": [64, 128, 256, 512, 1024]}),
    ("ipndm", {}, LOGSNR),
]


PATHS = {**SDES, "rf": sgm.RectifiedFlow}


def exact_model(sde_name, forward):
    """The exact score, or on rectified flow the exact velocity (a score gives no velocity at its top, α = 0)."""
    gm = mixture()
    return gm.prediction_fn(forward, "velocity") if sde_name == "rf" else gm.score_fn(forward)


@functools.lru_cache(maxsize=None)
def reference_map(sde_name, t_max=None):
    """``x_T`` and its image under the exact flow map from ``t_max`` (``T``; dopri5, 1e-10), computed once per path
    (≈3 s each)."""
    forward = PATHS[sde_name]()
    x = forward.prior_sample((300, 2), generator=gen(1), dtype=D)
    return x, ode(exact_model(sde_name, forward), forward, x, time_grid(forward, 2, denoise=False, t_max=t_max),
                  rtol=1e-10, atol=1e-10).x


def measured_order(name, options, grid, sde_name, t_max=None):
    """The solver and the slope of its map error against the steps (``grid``: spacing options and ``steps``)."""
    forward = PATHS[sde_name]()
    model = exact_model(sde_name, forward)
    x, ref = reference_map(sde_name, t_max)
    solver = sgm.samplers.solver(name, **options)
    grid = dict(grid)
    steps = grid.pop("steps", STEPS)
    errors = [float((sgm.samplers.integrate(solver, model, forward, x,
                                            time_grid(forward, k + 1, denoise=False, t_max=t_max, **grid)).x
                     - ref).norm(dim=1).mean()) for k in steps]
    return solver, slope(steps, errors), errors


def _id(v):
    if v is None or isinstance(v, float):
        return f"t_max={v or 'T'}"
    return v if isinstance(v, str) else ",".join(f"{k}={o}" for k, o in v.items() if k != "steps")


# One path per family of default grids (sgm.samplers.grid.path_family): VP and VE, each with its own reference map.
# Sub-VP, of VP's family, ran the same solvers' code (none branches on the path) on another σ: its 25 cases, and a
# third 3-s reference, repeated VP's. Rectified flow: below.
@pytest.mark.parametrize("name, options, grid", [(*case, {})[:3] for case in DETERMINISTIC], ids=_id)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_deterministic_map_order(name, options, grid, sde_name):
    solver, order, errors = measured_order(name, options, grid, sde_name)
    assert not solver.stochastic
    assert abs(order - solver.ode_order) < 0.3, errors


# Rectified flow (α(1) = 0), with the exact velocity. From the exact top, t = 1: the Runge–Kutta methods (which
# integrate the velocity, smooth there) and the methods of order ≤ 2; measured heun2 1.89, rk4 3.87, ddim 1.02
# (Euler in t on RectifiedFlow() is DDIM: x is linear in σ = t; the same errors), dpm_solver-2 1.80, EDM's heun 1.77.
# The exponential integrators' first step from pure noise is first order (``from_noise``: its local error is O(h²),
# tests/test_rectified_flow.py), which caps a method of order ≥ 3 at 2 from there (measured 2.4-2.6 at 16-256
# steps); so they are measured from t_max = 0.99, as on VP/VE (unipc bh2 order 2 + corrector, declared 3: 2.87;
# dpm_solver-3 singlestep 3.00; unipc order 3, declared 4: 3.88; DEIS-3, 2.81, left out for time). The stochastic
# samplers' weak order on rectified flow (their VP/VE steps on other (α, σ)) is left out too, four 10-s runs; the
# SW₂ test of tests/test_rectified_flow.py covers them there.
RF_FROM_THE_TOP = [("ode", {"method": "heun2"}), ("ode", {"method": "rk4"}), ("ddim", {}),
                   ("dpm_solver", {"order": 2, **EXP}, LOGSNR), ("heun", {})]
RF_BELOW_THE_TOP = [("unipc", {"order": 2, **EXP}, LOGSNR_FINE),
                    ("dpm_solver", {"order": 3, "method": "singlestep", "prediction": "eps", **EXP}, LOGSNR_FINE),
                    ("unipc", {"order": 3, **EXP}, LOGSNR_FINE)]


@pytest.mark.parametrize("name, options, grid, t_max", [(*case, {})[:3] + (None,) for case in RF_FROM_THE_TOP]
                         + [(*case, 0.99) for case in RF_BELOW_THE_TOP], ids=_id)
def test_map_order_on_rectified_flow(name, options, grid, t_max):
    solver, order, errors = measured_order(name, options, grid, "rf", t_max)
    assert abs(order - solver.ode_order) < 0.3, errors


# Every registered sampler that is stochastic with its smoke options and declares weak order 1 (a higher declared weak
# order: test_stochastic_exponential.py::test_weak_order_from_exact_moments).
STOCHASTIC = [name for name in sgm.samplers.available()
              if (s := sgm.samplers.solver(name, **sgm.samplers.entry(name).smoke)).stochastic
              and s.weak_order == 1]
# On VE the Gaussian target hides Euler–Maruyama's first order: VE has no drift, so its mean is exact, and its variance
# error is second order (measured 1.89 and 1.97 on the cases' Gaussians, 1.4–2.1 on four others, at 128–1024 steps);
# there a non-Gaussian target is needed (test_weak_order_on_a_mixture). ``sde`` (torchsde's Euler) is that same
# scheme, element by element (test_torchsde_euler_is_euler_maruyama), so its weak order is EM's.
SUPERCONVERGENT_ON_GAUSSIANS = {("euler_maruyama", "ve"), ("sde", "ve")}
WEAK_ON_GAUSSIANS = [(name, sde_name) for sde_name in ("vp", "ve") for name in STOCHASTIC
                     if (name, sde_name) not in SUPERCONVERGENT_ON_GAUSSIANS]


@pytest.mark.parametrize("name, sde_name", WEAK_ON_GAUSSIANS)
def test_weak_order(name, sde_name):
    """Weak error |E x - m| + |Var x - v| at eps, from x_T ~ p_T exactly, falls at the declared weak order at 128, 256,
    512, 1024 steps on grids uniform in t, with no Monte-Carlo error: on a Gaussian target N(μ, s²) the score is
    affine in x, so every update is affine in x_T and the draws, and the output's mean and variance are computed
    exactly from one run on basis inputs (benchmarks/stochastic_exponential.exact_moments).

    μ ∈ [-1.5, 1.5] and s ∈ [0.3, 1.2] are drawn per case (seeded by its name: a Gaussian per case, none tuned on).
    Measured on these ten Gaussians 0.94–1.02, on four others 0.90–1.04 (ancestral on VP is the slowest to reach
    order 1: 0.72–0.86 at 16–256 steps, hence the finer steps); 0.25 allowed, as before. About 1 s a case, against
    10–28 s for the Monte-Carlo measurement on 4e5 samples it replaces.
    """
    forward, solver = SDES[sde_name](), sgm.samplers.solver(name, **sgm.samplers.entry(name).smoke)
    u = torch.rand(2, generator=gen(zlib.crc32(f"{name}{sde_name}".encode())), dtype=D).tolist()
    mu, s = -1.5 + 3 * u[0], 0.3 + 0.9 * u[1]
    steps, errors = [128, 256, 512, 1024], []
    for k in steps:
        grid = time_grid(forward, k + 1, denoise=False)
        mean, var = exact_moments(solver, forward, mu, s, grid, 2 * k + 4)
        a, sd = grid.noisy[-1].scale, grid.noisy[-1].std
        errors.append(abs(mean - a * mu) + abs(var - (a**2 * s**2 + sd**2)))
    assert abs(slope(steps, errors) - solver.weak_order) < 0.25, (mu, s, errors)


def test_weak_order_on_a_mixture():
    """VE's Euler–Maruyama, whose first weak order a Gaussian target hides (above): the weak error |E x - m| +
    |Var x - v| against the exact moments of a 1-D two-mode mixture at eps, from 4e5 exact p_T samples, falls at
    order 1 over 16, 32, 64 uniform steps. n = 4e5 puts the Monte-Carlo error of the statistic near 0.006 (sd of the
    sample variance √2·Var/√n with Var ≈ 3), against weak errors of 0.03–0.2 here; measured at n = 1e6
    (benchmarks/convergence.py) 0.90–1.07; 0.25 allowed."""
    forward, n = sgm.VESDE(), 400_000
    gm = sgm.GaussianMixture([[-2.0], [1.5]], [0.4, 0.6], [0.3, 0.7], dtype=D)
    g = gen(3)
    x_T = forward.perturb(gm.sample(n, generator=g), torch.full((n,), forward.T, dtype=D), generator=g)
    mean, cov = gm.moments(1e-3, forward)
    steps, errors = [16, 32, 64], []
    solver = sgm.samplers.solver("euler_maruyama")
    for k in steps:
        x = sgm.samplers.integrate(solver, gm.score_fn(forward), forward, x_T,
                                   time_grid(forward, k + 1, denoise=False), generator=gen(k)).x
        errors.append(float((x.mean() - mean[0]).abs() + (x.var() - cov[0, 0]).abs()))
    assert abs(slope(steps, errors) - solver.weak_order) < 0.25, errors


def _options_id(case):
    name, options = case
    return "-".join([name] + [f"{k}={v}" for k, v in options.items()])


# Every registered configuration declaring a strong order (sgm.samplers.declaring), once each; but torchsde's SRK:
# its order-1.5 error term carries second derivatives of the drift, small on these near-Gaussian targets, so it
# shows its deterministic order 2 pre-asymptotically (1.72 on VP, 2.23 on VE at 8–64 steps, n = 500), at 30 s a run;
# and SA-Solver, whose default τ window jumps between nodes, so its error against a fixed reference stalls
# (tests/test_stochastic_orders.py proves its strong orders with and without the window on exact Gaussian paths).
STRONG = [(n, o) for n, o in sgm.samplers.declaring("strong") if (n, o) != ("sde", {"method": "srk"})
          and n != "sa_solver"]


@pytest.mark.parametrize("name, options", STRONG, ids=[_options_id(c) for c in STRONG])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_strong_order(name, options, sde_name):
    """From 200 exact draws of p_T, every run driven by one Brownian path per sample (``BrownianNoise``: the same
    paths at every K), the strong error E‖x_K - x_ref‖ against the same solver at 512 steps on those paths falls at
    the declared strong order (within 0.25) at 32, 64, 128 steps on λ-uniform grids; the reference's moments are the
    exact ones at eps (within 5 standard errors: its own weak error, ~1/512, is far below the 1/√200 of the test).

    The target is a 2-D mixture of 3 overlapping components drawn at random per case (``random_mixture`` with spread
    0.4, seeded by the case's name): one basin, a non-linear score. On separated modes a path near a basin boundary
    can end in another mode than its reference, an O(1) jump that no order describes. Below 32 steps the
    exponential integrators' second-order deterministic error still dominates (2M/3M: local slopes 1.4–1.5 at
    16 → 32 steps) and VE's Euler–Maruyama is unstable at 8 steps. A reference 4× the finest run leans the last
    local slope up by about 0.1. Measured slopes here: 0.84 (DPM-Solver++(2S) SDE on VE) to 1.22 (2M heun on VP),
    table in docs/samplers.md; to 256 steps against 2048 the local slopes of 2M, 3M, 2S and 2S-ancestral tend to 1.
    """
    forward, n = SDES[sde_name](), 200
    gm = sgm.random_mixture(2, k=3, spread=0.4, seed=zlib.crc32(f"{name}{options}{sde_name}".encode()) % 1000)
    solver = sgm.samplers.solver(name, **options)
    steps = [32, 64, 128]
    g = gen(0)
    x_T = forward.perturb(gm.sample(n, generator=g), torch.full((n,), forward.T, dtype=D), generator=g)
    strong, _, ref = path_errors(solver, gm.score_fn(forward), forward, x_T, steps, 512, sgm.samplers.BrownianNoise(g))
    assert abs(slope(steps, strong) - solver.strong_order) < 0.25, strong
    assert moment_gap(ref, *gm.moments(forward.default_eps, forward)) < 5


@pytest.mark.parametrize("method", sgm.samplers.probability_flow.FIXED_METHODS)
def test_fixed_step_methods_are_torchdiffeqs(method):
    """sgm's Runge–Kutta loop takes the same steps as torchdiffeq's solver of the same name, to rounding."""
    from torchdiffeq import odeint

    forward, gm = sgm.SubVPSDE(), mixture()
    score = gm.score_fn(forward)
    x = forward.prior_sample((50, 2), generator=gen(0), dtype=D)
    grid = time_grid(forward, 13, spacing="quadratic", denoise=False)
    times = torch.tensor([n.t for n in grid.noisy], dtype=D)

    def velocity(t, y):
        tt = t.expand(y.shape[0])
        return forward.ode_drift(y, tt, score(y, tt))

    expected = odeint(velocity, x, times, method=method)[-1]
    torch.testing.assert_close(ode(score, forward, x, grid, method=method).x, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_torchsde_euler_is_euler_maruyama(sde_name):
    """On a uniform grid, torchsde's Euler step with the generator's increments is sgm's Euler–Maruyama step."""
    forward, gm = SDES[sde_name](), mixture()
    x = forward.prior_sample((50, 2), generator=gen(0), dtype=D)
    grid = time_grid(forward, 30)
    a = sde(gm.score_fn(forward), forward, x, grid, generator=gen(1))
    b = euler_maruyama(gm.score_fn(forward), forward, x, grid, generator=gen(1))
    assert a.nfe == b.nfe == 30
    torch.testing.assert_close(a.x, b.x, rtol=1e-8, atol=1e-8)
