"""SA-Solver's second order condition: the exact ``h·φ₂(-κh)`` (sgm's default) against diffusers' ``h/2``
(``few_step_modification``), on every fixed spacing at NFE 5/10/20, on exact-score mixtures no test uses, under VP and VE.

Each row runs SA-Solver (predictor/corrector orders 2/0, 2/2, 3/3, 2/1, 3/2, 4/4) both ways from the same ``x_T`` and
noise: as the ODE (``tau=0``), scored by the map error against the exact probability-flow map; with the published
``τ = 1`` window, by the Fréchet distance of the sample moments to the mixture's exact ones. Printed: per spacing
and ``τ``, the median of exact/modified over rows and how many rows the exact condition wins; per cell, each side's
best over the spacings and orders.

    OMP_NUM_THREADS=1 python benchmarks/sa_solver_condition.py [--n 2000] [--nfe 5 10 20]
"""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections import defaultdict

import torch

import sgm
from sgm.bench.judge import judge_stochastic
from sgm.bench.problems import exact_model, make_problem
from sgm.samplers import SamplerDiverged
from sgm.samplers.optimize import map_error

SPACINGS = ("leading", "uniform", "quadratic", "logsnr", "karras", "trailing", "flow")
ORDERS = ((2, 0), (2, 2), (3, 3), (2, 1), (3, 2), (4, 4))


def targets():
    """The ring and random mixtures of seeds 11–13 (no test uses them)."""
    return {"ring 2-D": sgm.ring_mixture(), "mixture 4-D": sgm.random_mixture(4, seed=11),
            "mixture 8-D": sgm.random_mixture(8, seed=12), "mixture 16-D": sgm.random_mixture(16, seed=13)}


def rows(n: int, nfes) -> list[dict]:
    out = []
    for (name, target), path in itertools.product(targets().items(), ("vp", "ve")):
        problem = make_problem(name, target, path, n, 3)
        model, reference = exact_model(target, problem.sde), target.sample(n, generator=torch.Generator().manual_seed(9))
        for spacing, nfe, (p, c), tau in itertools.product(SPACINGS, nfes, ORDERS, (0.0, 1.0)):
            row = {"target": name, "path": path, "spacing": spacing, "nfe": nfe, "orders": f"{p}/{c}", "tau": tau}
            for side, modified in (("exact", False), ("modified", True)):
                try:
                    x = sgm.sample(model, problem.sde, problem.x_T.shape, "sa_solver", nfe=nfe, spacing=spacing,
                                   x_init=problem.x_T, generator=torch.Generator().manual_seed(4), predictor_order=p,
                                   corrector_order=c, tau=tau, few_step_modification=modified, dtype=torch.float64).x
                    row[side] = (map_error(x, problem.x_ref) if tau == 0
                                 else judge_stochastic(x, reference, target, 5)["frechet_moments"])
                except SamplerDiverged:
                    row[side] = math.inf
            out.append(row)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="draws per problem (default 2000)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20], help="budgets (default 5 10 20)")
    args = parser.parse_args(argv)
    if args.n < 16 or any(k < 2 for k in args.nfe):
        parser.error("--n must be at least 16 and each --nfe at least 2")
    table = rows(args.n, args.nfe)
    ratios, best = defaultdict(list), defaultdict(lambda: {"exact": math.inf, "modified": math.inf})
    for r in table:
        if math.isfinite(r["exact"]) and math.isfinite(r["modified"]):
            ratios[(r["spacing"], r["tau"])].append(r["exact"] / r["modified"])
        cell = best[(r["target"], r["path"], r["nfe"], r["tau"])]
        for side in cell:
            cell[side] = min(cell[side], r[side])
    print("| spacing | τ | median exact / modified | exact wins |\n|---|---|---|---|")
    for (spacing, tau), v in sorted(ratios.items()):
        print(f"| {spacing} | {tau:g} | {statistics.median(v):.3f} | {sum(x < 1 for x in v)} of {len(v)} |")
    print("\n| target | path | NFE | τ | best exact | best modified | ratio |\n|---|---|---|---|---|---|---|")
    for (name, path, nfe, tau), cell in sorted(best.items()):
        print(f"| {name} | {path} | {nfe} | {tau:g} | {cell['exact']:.4g} | {cell['modified']:.4g} | "
              f"{cell['exact'] / cell['modified']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
