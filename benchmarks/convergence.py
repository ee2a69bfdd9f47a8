"""Measured convergence orders with the exact mixture score (float64): the numbers behind tests/test_convergence.py.

Deterministic samplers: mean ‖x_K - x_ref‖ of the map x_T ↦ x_eps against dopri5 at rtol = atol = 1e-10.
Stochastic samplers, from exact p_T samples of a 1-D mixture: |E x - m| + |Var x - v| at eps. The order is
the least-squares slope of log error against log steps.

    python benchmarks/convergence.py [--n 1000000] [--only exponential]
"""
from __future__ import annotations

import argparse
import math

import torch

import sgm
from sgm.samplers import ancestral, ddim, euler_maruyama, ode, reverse_diffusion, sde, time_grid

D = torch.float64
SDES = {"vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE}


def slope(steps, errors):
    xs, ys = [math.log(s) for s in steps], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def deterministic(steps=(16, 32, 64, 128, 256)):
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    solvers = {m: (lambda m: lambda s, f, x, g: ode(s, f, x, g, method=m))(m) for m in ("euler", "midpoint", "heun2", "rk4")}
    solvers["ddim"] = lambda s, f, x, g: ddim(s, f, x, g)
    for name, forward in ((n, c()) for n, c in SDES.items()):
        score = gm.score_fn(forward)
        x = forward.prior_sample((300, 2), generator=torch.Generator().manual_seed(1), dtype=D)
        ref = ode(score, forward, x, time_grid(forward, 2, denoise=False), rtol=1e-10, atol=1e-10).x
        for solver, solve in solvers.items():
            errors = [float((solve(score, forward, x, time_grid(forward, k + 1, denoise=False)).x - ref).norm(dim=1).mean())
                      for k in steps]
            print(f"{name:<6}{solver:<20}{slope(steps, errors):>7.2f}   " + " ".join(f"{e:.2e}" for e in errors), flush=True)


EXPONENTIAL = [  # (label, sampler, options); lower_order_final off: these grids end without denoising
    ("dpm++ 2M", "dpm_solver", {"order": 2}), ("dpm 2M (eps)", "dpm_solver", {"order": 2, "prediction": "eps"}),
    ("dpm++ 3M", "dpm_solver", {"order": 3}), ("dpm 3M (eps)", "dpm_solver", {"order": 3, "prediction": "eps"}),
    ("dpm++ 2S", "dpm_solver", {"order": 2, "method": "singlestep"}),
    ("dpm++ 3S", "dpm_solver", {"order": 3, "method": "singlestep"}),
    ("dpm 3S (eps)", "dpm_solver", {"order": 3, "method": "singlestep", "prediction": "eps"}),
    ("unipc 1", "unipc", {"order": 1}), ("unipc 2 bh1", "unipc", {"order": 2, "variant": "bh1"}),
    ("unipc 2 bh2", "unipc", {"order": 2}), ("unip 3 (no UniC)", "unipc", {"order": 3, "corrector": False}),
    ("unipc 3", "unipc", {"order": 3}),
]


def exponential(steps=(16, 32, 64, 128, 256), fine=(64, 128, 256, 512)):
    """The exponential integrators on λ-uniform grids, at ``steps`` and at the finer ``fine`` transitions."""
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    for name, forward in ((n, c()) for n, c in SDES.items()):
        score = gm.score_fn(forward)
        x = forward.prior_sample((300, 2), generator=torch.Generator().manual_seed(1), dtype=D)
        ref = ode(score, forward, x, time_grid(forward, 2, denoise=False), rtol=1e-10, atol=1e-10).x
        for label, sampler, options in EXPONENTIAL:
            solver = sgm.samplers.solver(sampler, lower_order_final=False, **options)
            errors = [float((sgm.samplers.integrate(solver, score, forward, x, time_grid(forward, k + 1, "logsnr",
                                                                                          denoise=False)).x
                             - ref).norm(dim=1).mean()) for k in steps + fine]
            print(f"{name:<6}{label:<20}{solver.ode_order:>9}{slope(steps, errors[:len(steps)]):>7.2f}"
                  f"{slope(fine, errors[len(steps):]):>7.2f}   " + " ".join(f"{e:.2e}" for e in errors), flush=True)


def stochastic(n, steps=(16, 32, 64)):
    gm = sgm.GaussianMixture([[-2.0], [1.5]], [0.4, 0.6], [0.3, 0.7], dtype=D)
    samplers = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
                "sde": sde}
    for name, forward in ((n_, c()) for n_, c in SDES.items()):
        g = torch.Generator().manual_seed(3)
        x_T = forward.perturb(gm.sample(n, generator=g), torch.full((n,), forward.T, dtype=D), generator=g)
        mean, cov = gm.moments(1e-3, forward)
        for sampler, fn in samplers.items():
            errors = []
            for k in steps:
                x = fn(gm.score_fn(forward), forward, x_T, time_grid(forward, k + 1, denoise=False),
                       generator=torch.Generator().manual_seed(k)).x
                errors.append(float((x.mean() - mean[0]).abs() + (x.var() - cov[0, 0]).abs()))
            print(f"{name:<6}{sampler:<20}{slope(steps, errors):>7.2f}   " + " ".join(f"{e:.2e}" for e in errors), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples for the weak-order runs")
    parser.add_argument("--only", choices=("deterministic", "exponential", "stochastic"), default=None)
    args = parser.parse_args()
    if args.only in (None, "deterministic"):
        print(f"{'sde':<6}{'solver':<20}{'order':>7}   errors at 16, 32, 64, 128, 256 steps (map error)")
        deterministic()
    if args.only in (None, "exponential"):
        print(f"\n{'sde':<6}{'solver':<20}{'declared':>9}{'16-256':>7}{'64-512':>7}   map errors on λ-uniform grids "
              "at 16 … 256, 64 … 512 steps")
        exponential()
    if args.only in (None, "stochastic"):
        print(f"\n{'sde':<6}{'sampler':<20}{'order':>7}   weak errors at 16, 32, 64 steps (n = {args.n})")
        stochastic(args.n)


if __name__ == "__main__":
    main()
