"""Measured convergence orders with the exact mixture score (float64): the numbers behind tests/test_convergence.py.

Deterministic samplers: mean ‖x_K - x_ref‖ of the map x_T ↦ x_eps against dopri5 at rtol = atol = 1e-10.
Stochastic samplers (every registered configuration declaring a strong or weak order, ``sgm.samplers.declaring``),
from exact p_T draws of a 2-D unimodal non-Gaussian mixture (on a multimodal one a path near a basin boundary can
end in another mode than its reference, and those O(1) jumps swamp a mean error), on λ-uniform grids, every run
driven by the same Brownian path per sample (``BrownianNoise``), against the same solver at 2048 steps on those
paths: strong E‖x_K - x_ref‖, weak ‖m_K - m_ref‖ + ‖C_K - C_ref‖_F. The common paths cancel the Monte-Carlo error
of the moments (what is left is of the size of the strong error over √n), so weak orders above 1 are measurable
with n = 2000; the reference's moments are compared with the mixture's exact ones (in standard errors).
The order is the least-squares slope of log error against log steps.

    python benchmarks/convergence.py [--n 2000] [--only deterministic|exponential|stochastic]
"""
from __future__ import annotations

import argparse
import math

import torch

import sgm
from sgm.samplers import BrownianNoise, ddim, ode, time_grid
from sgm.samplers.convergence import moment_gap, path_errors, slope

D = torch.float64
SDES = {"vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE}


def deterministic(steps=(16, 32, 64, 128, 256)):
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    solvers = {m: (lambda m: lambda s, f, x, g: ode(s, f, x, g, method=m))(m)
               for m in ("euler", "midpoint", "heun2", "rk4")}
    solvers["ddim"] = lambda s, f, x, g: ddim(s, f, x, g)
    for name, forward in ((n, c()) for n, c in SDES.items()):
        score = gm.score_fn(forward)
        x = forward.prior_sample((300, 2), generator=torch.Generator().manual_seed(1), dtype=D)
        ref = ode(score, forward, x, time_grid(forward, 2, denoise=False), rtol=1e-10, atol=1e-10).x
        for solver, solve in solvers.items():
            errors = [float((solve(score, forward, x, time_grid(forward, k + 1, denoise=False)).x - ref)
                            .norm(dim=1).mean())
                      for k in steps]
            print(f"{name:<6}{solver:<20}{slope(steps, errors):>7.2f}   " + " ".join(f"{e:.2e}" for e in errors),
                  flush=True)


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


UNIMODAL = ([[-0.5, 0.0], [0.5, 0.3]], [0.7, 0.5], [0.4, 0.6])  # 2 overlapping modes: one basin, a non-linear score


def ladder(solver, forward, n=2000, steps=(16, 32, 64, 128, 256), reference=2048, seed=0):
    """Strong and weak errors of ``solver`` at ``steps`` against ``reference`` steps on shared Brownian paths
    (``sgm.samplers.convergence.path_errors``) from ``n`` exact draws of ``p_T``, and the reference's distance from the
    mixture's exact moments at eps in standard errors."""
    gm = sgm.GaussianMixture(*UNIMODAL, dtype=D)
    g = torch.Generator().manual_seed(seed)
    x_T = forward.perturb(gm.sample(n, generator=g), torch.full((n,), forward.T, dtype=D), generator=g)
    strong, weak, ref = path_errors(solver, gm.score_fn(forward), forward, x_T, steps, reference, BrownianNoise(g))
    return strong, weak, moment_gap(ref, *gm.moments(time_grid(forward, 2).noisy[-1].t, forward))


def stochastic(n=2000, steps=(16, 32, 64, 128, 256), reference=2048):
    for name, forward in ((n_, c()) for n_, c in SDES.items()):
        seen = set()
        for sampler, options in sgm.samplers.declaring("strong") + sgm.samplers.declaring("weak"):
            solver = sgm.samplers.solver(sampler, **options)
            if repr(solver) in seen:
                continue
            seen.add(repr(solver))
            strong, weak, off = ladder(solver, forward, n, steps, reference)
            label = " ".join([sampler] + [f"{k}={v}" for k, v in options.items()])
            row = f"{name:<6}{label:<26}"
            for declared, errors in ((solver.strong_order, strong), (solver.weak_order, weak)):
                local = " ".join(f"{math.log2(a / b):.2f}" for a, b in zip(errors, errors[1:]))
                row += f"{'—' if declared is None else f'{declared:g}':>5}{slope(steps, errors):>6.2f} ({local})"
            print(row + f"  ref {off:.1f} se", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="exact p_T draws for the stochastic ladders")
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
        print(f"\n{'sde':<6}{'sampler':<26}{'strong: declared, measured (local)':>36}"
              f"{'weak: declared, measured (local)':>36}   at 16 … 256 steps against 2048 on the same Brownian "
              f"paths, λ-uniform grids, n = {args.n}; ref: the 2048-step moments' distance to the exact ones")
        stochastic(args.n)


if __name__ == "__main__":
    main()
