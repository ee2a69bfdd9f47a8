"""The fast stochastic samplers (SA-Solver, ER-SDE-Solver, Restart) and annealed Langevin, measured on exact-score
targets; docs/samplers.md quotes these runs.

- ``strong``: mean ‖x_N - x_ref‖ at ``eps`` over ``--n`` (1000) paths of one Brownian path per sample (torchsde's
  Brownian interval, ``stochastic_exponential.Brownian``), against ``--fine`` (4096) λ-uniform steps of the same
  sampler, on the tests' 2-D mixture; the slope over ``--steps`` (16–256).
- ``weak``: ``|E x - m| + |Var x - v|`` at ``eps`` on a 1-D Gaussian target, where every sampler here is affine in
  ``(x_T, draws)``: the law of the output is computed exactly (``stochastic_exponential.exact_moments``), so the weak
  error carries no Monte-Carlo error; the slope over 16–256 λ-uniform steps (``gaussian_weak_error``, also used by
  tests/test_stochastic_orders.py).
- ``mixtures``: SW₂ / floor (median of 3 floor pairs) at n = 10⁴ on ``random_mixture(3, seed=s)``, VP, sub-VP and VE, at
  each sampler's registry steps and options (``--langevin u`` for annealed Langevin at 400 levels with
  ``δ_i = u·std_i²``).

(Default grids: ``benchmarks/default_spacing.py``.)

    PYTHONPATH=. python benchmarks/stochastic_samplers.py --only strong|weak|mixtures [--samplers ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import sgm
from sgm import metrics
from sgm.samplers import integrate, time_grid
from stochastic_exponential import Brownian, BrownianUnitDraws, exact_moments, slope

D = torch.float64
SDES = {"vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE}
CASES = {  # (sampler, options): what is measured for each sampler
    "sa_solver": [{}, {"tau_window": None}, {"tau_window": None, "predictor_order": 1, "corrector_order": 0},
                  {"tau_window": None, "predictor_order": 2, "corrector_order": 2}],
    "er_sde": [{}, {"order": 1}, {"order": 2}, {"noise_scale": "reverse_sde"}],
    "restart": [{}],
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_weak_error(name: str, options: dict, sde, steps: int, spacing: str = "logsnr", mu: float = 1.5,
                        s: float = 0.5, eps: float = 1e-3) -> float:
    """``|E x - m| + |Var x - v|`` at ``eps`` for the target ``N(mu, s²)``, exactly (``exact_moments``)."""
    grid = time_grid(sde, steps + 1, spacing, eps=eps, denoise=False)
    mean, var = exact_moments(sgm.samplers.solver(name, **options), sde, mu, s, grid, 2 * steps + 64)
    a, sd = grid.noisy[-1].scale, grid.noisy[-1].std
    return abs(mean - a * mu) + abs(var - a**2 * s**2 - sd**2)


def gaussian_strong_error(name: str, options: dict, sde, steps, fine: int, spacing: str = "logsnr", mu: float = 1.5,
                          s: float = 0.5) -> list[float]:
    """``√E|x_k - x_fine|²`` at ``eps`` for each ``k`` in ``steps`` on the target ``N(mu, s²)``, exactly: both runs are
    affine in ``x_T`` and the unit normals of one Brownian path (``BrownianUnitDraws``, shared, so a time both grids
    visit is the same point of the path), so the error's second moment is a sum of squared coefficients."""
    gm = sgm.GaussianMixture([[mu]], [s], dtype=D)
    x = torch.zeros(4 + 2 * fine + 2 * max(steps), 1, dtype=D)
    x[1] = 1.0
    noise, solver = BrownianUnitDraws(x, sde.T), sgm.samplers.solver(name, **options)
    run = lambda k: integrate(solver, gm.score_fn(sde), sde, x,  # noqa: E731
                              time_grid(sde, k + 1, spacing, denoise=False), noise=noise).x[:, 0]
    ref = run(fine)
    top = time_grid(sde, 2, spacing, denoise=False).noisy[0]
    mean_T, var_T = top.scale * mu, top.scale**2 * s**2 + top.std**2
    errors = []
    for k in steps:
        d = run(k) - ref
        c, a, b = d[0], d[1] - d[0], d[2:2 + noise.calls] - d[0]
        errors.append(math.sqrt(float((c + a * mean_T) ** 2 + a**2 * var_T + (b**2).sum())))
    return errors


def strong(names, n: int = 1000, fine: int = 4096, steps=(16, 32, 64, 128, 256), spacing: str = "logsnr"):
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    for name in names:
        for options in CASES[name]:
            for sde_name in ("vp", "ve"):
                sde, t0 = SDES[sde_name](), time.perf_counter()
                x = sde.prior_sample((n, 2), generator=gen(0), dtype=D)
                solver = sgm.samplers.solver(name, **options)
                run = lambda k: integrate(solver, gm.score_fn(sde), sde, x,  # noqa: E731
                                          time_grid(sde, k + 1, spacing, denoise=False),
                                          noise=Brownian(x, 7, sde.T)).x
                ref = run(fine)
                errors = [float((run(k) - ref).norm(dim=1).mean()) for k in steps]
                print(f"strong {name} {options} {spacing} {sde_name}: slope {slope(steps, errors):.2f} "
                      f"(declared {solver.strong_order}) {[f'{e:.3g}' for e in errors]} "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)


def weak(names):
    steps = [16, 32, 64, 128, 256]
    for name in names:
        for options in CASES[name]:
            for sde_name, cls in SDES.items():
                errors = [gaussian_weak_error(name, options, cls(), k) for k in steps]
                solver = sgm.samplers.solver(name, **options)
                print(f"weak {name} {options} logsnr {sde_name}: slope {slope(steps, errors):.2f}, "
                      f"64–256 {slope(steps[2:], errors[2:]):.2f} (declared {solver.weak_order}) "
                      f"{[f'{e:.2g}' for e in errors]}", flush=True)


def floor(gm, n: int) -> float:
    return statistics.median(metrics.sliced_wasserstein(gm.sample(n, generator=gen(10 + i)),
                                                        gm.sample(n, generator=gen(20 + i)), n_projections=100,
                                                        generator=gen(3)) for i in range(3))


def mixtures(names, seeds, n: int = 10_000, u=None):
    """SW₂/floor of each sampler at its entry's steps, options and default grid; ``u``: annealed Langevin with
    ``δ_i = u·std_i²`` (NCSN's rule ``step_size = ε = 2u·std_L²``) instead of its default."""
    for name in names:
        entry = sgm.samplers.entry(name)
        ratios = []
        for seed in seeds:
            gm = sgm.random_mixture(3, seed=seed)
            fl, row = floor(gm, n), []
            for sde_name, cls in SDES.items():
                sde, options = cls(), dict(entry.options)
                if name == "langevin" and u is not None:
                    last = time_grid(sde, entry.steps, entry.default_spacing(sde)).noisy[-1]
                    options["step_size"] = 2 * u * last.std**2
                x = sgm.sample(gm.score_fn(sde), sde, (n, gm.dim), name, steps=entry.steps, generator=gen(1), dtype=D,
                               **options).x
                row.append(metrics.sliced_wasserstein(x, gm.sample(n, generator=gen(2)), n_projections=100,
                                                      generator=gen(3)) / fl)
            ratios += row
            print(f"mixtures {name} u={u} seed {seed}: " + ", ".join(f"{s} {r:.2f}" for s, r in zip(SDES, row)),
                  flush=True)
        print(f"mixtures {name} u={u}: mean {sum(ratios) / len(ratios):.2f}, max {max(ratios):.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("strong", "weak", "mixtures"), required=True)
    parser.add_argument("--samplers", nargs="*", default=list(CASES))
    parser.add_argument("--seeds", default="1,2,3,4")
    parser.add_argument("--n", type=int, default=None, help="samples (strong: 1000 paths; mixtures: 10⁴)")
    parser.add_argument("--fine", type=int, default=4096, help="strong: the reference's steps")
    parser.add_argument("--steps", default="16,32,64,128,256", help="strong: the step counts")
    parser.add_argument("--langevin", type=float, default=None, help="u: annealed Langevin's δ_i = u·std_i²")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only == "strong":
        strong(args.samplers, args.n or 1000, args.fine, [int(k) for k in args.steps.split(",")])
    elif args.only == "weak":
        weak(args.samplers)
    else:
        mixtures(args.samplers, [int(s) for s in args.seeds.split(",")], args.n or 10_000, args.langevin)


if __name__ == "__main__":
    main()
