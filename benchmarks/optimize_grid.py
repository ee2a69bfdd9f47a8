"""Optimised time grids against the fixed spacings, on the sweep's exact-score targets (float64).

For each deterministic fixed-step sampler (ddim, ode heun2, ode rk4, and every other registered sampler whose
default options make it deterministic and fixed-step), each budget of 5/10/20 evaluations, the 2-D ring and the
16-D mixture of ``sgm bench`` and VP and VE: the held-out map error ``mean ‖x̂_0 - Φ(x_T)‖`` (``n_test`` prior
draws, another seed than the calibration batch; ``Φ`` is dopri5 at 1e-9 to eps, then Tweedie) of each fixed
spacing and of the grid ``optimize_grid`` finds on ``n`` calibration draws, their ratio (optimised / best fixed),
and the optimisation's cost in evaluations (of a batch of ``n``) and seconds.

    python benchmarks/optimize_grid.py [--n 256] [--n-test 2000] [--nfe 5 10 20] [--dp] [--json out.json]

``--dp`` adds the second descent from the dynamic-programming surrogate (``optimize_grid(..., dp=True)``).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import sgm
from sgm.bench import _targets
from sgm.samplers import available, integrate, optimize_grid, solver, time_grid
from sgm.samplers.optimize import FIXED_SPACINGS, flow_map, map_error

D = torch.float64
BASE = [("ddim", {}), ("ode", {"method": "heun2"}), ("ode", {"method": "rk4"})]


def configurations() -> list[tuple[str, dict]]:
    """ddim, heun2, rk4, and every other registered sampler that is deterministic and fixed-step by default."""
    extra = []
    for name in available():
        if name in ("ddim", "ode"):
            continue
        try:
            method = solver(name)
        except (TypeError, ValueError):  # a sampler whose options have no defaults
            continue
        if not method.stochastic and method.evals_per_step is not None:
            extra.append((name, {}))
    return BASE + extra


def label(name: str, opts: dict) -> str:
    return " ".join([name, *map(str, opts.values())])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="calibration draws")
    parser.add_argument("--n-test", type=int, default=2000, help="held-out draws")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--dp", action="store_true", help="optimize_grid(..., dp=True)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    header = (f"{'target':<12}{'sde':<4}{'sampler':<16}{'nfe':>4}{'steps':>6}"
              + "".join(f"{s:>11}" for s in FIXED_SPACINGS) + f"{'optimised':>11}{'ratio':>7}{'cost nfe':>9}{'s':>6}")
    print(header)
    for target_name, target in _targets(quick=False).items():
        for sde_name, sde in (("vp", sgm.VPSDE()), ("ve", sgm.VESDE())):
            score = target.score_fn(sde)
            x = sde.prior_sample((args.n_test, target.dim), generator=torch.Generator().manual_seed(1), dtype=D)
            reference, _ = flow_map(score, sde, x, tol=1e-9)
            for name, opts in configurations():
                method = solver(name, **opts)
                for nfe in args.nfe:
                    steps = method.steps_for_nfe(nfe)
                    if steps is None:
                        continue
                    fixed = {s: map_error(integrate(method, score, sde, x, time_grid(sde, steps, s)).x, reference)
                             for s in FIXED_SPACINGS}
                    t0 = time.perf_counter()
                    grid = optimize_grid(score, sde, steps, name, shape=(target.dim,), n=args.n,
                                         generator=torch.Generator().manual_seed(0), dp=args.dp, **opts)
                    seconds = time.perf_counter() - t0
                    optimised = map_error(integrate(method, score, sde, x, grid).x, reference)
                    row = {"target": target_name, "sde": sde_name, "sampler": label(name, opts), "nfe": method.nfe(steps),
                           "steps": steps, **fixed, "optimised": optimised, "ratio": optimised / min(fixed.values()),
                           "cost_nfe": grid.info["nfe"], "seconds": seconds, "lam": [n.lam for n in grid.noisy]}
                    rows.append(row)
                    print(f"{target_name:<12}{sde_name:<4}{row['sampler']:<16}{row['nfe']:>4}{steps:>6}"
                          + "".join(f"{fixed[s]:>11.3e}" for s in FIXED_SPACINGS)
                          + f"{optimised:>11.3e}{row['ratio']:>7.2f}{row['cost_nfe']:>9}{seconds:>6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
