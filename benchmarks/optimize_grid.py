"""Every step optimiser of ``sgm.samplers.optimize_grid`` against the best fixed spacing, on exact-score targets
(float64): held-out map error and calibration cost.

For each path (VP, VE: the mixture's exact score; rectified flow: its exact velocity, sampled from ``t = 1``), target
(the sweep's 2-D ring and 16-D mixture), deterministic sampler (ddim, dpm_solver, unipc, ipndm, ode heun2 by default)
and budget (5/10/20 evaluations: ``steps = solver.steps_for_nfe(nfe)``): the held-out map error
``mean ‖x̂_0 - Φ(x_T)‖`` on ``n_test`` prior draws (seed 1; ``Φ``: dopri5 at 1e-9 to eps, then Tweedie) of each fixed
spacing and of each optimiser's grid calibrated on ``n`` other draws (seed 0), the ratio to the best fixed spacing,
and the calibration's cost (``grid.info["cost"]``: evaluations of a batch of ``n``, and seconds).

    python benchmarks/optimize_grid.py [--n 128] [--n-test 1000] [--nfe 5 10 20] [--paths vp ve rf]
        [--targets ring 16d] [--samplers ddim dpm_solver unipc ipndm heun2] [--optimizers descent gits dmn ays ld3]
        [--variants] [--json out.json] [--markdown out.md]

``--variants [NAME ...]`` adds the measured alternatives to the defaults (all of them when no name is given): each
optimiser with its first node free and pinned, with its last noisy node free and pinned, GITS with the code's ``dev``
metric, LD3 started uniformly in ``u`` (the paper's start) and from the best fixed spacing on its calibration draws.
The fixed spacings are ``start_spacings(sde)`` (``flow`` too on rectified flow).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from calibration_common import add_arguments, cells
from sgm.samplers import SamplerDiverged, integrate, optimize_grid, solver, time_grid
from sgm.samplers.optimize import map_error, start_spacings

SAMPLERS = {"ddim": ("ddim", {}), "dpm_solver": ("dpm_solver", {}), "unipc": ("unipc", {}), "ipndm": ("ipndm", {}),
            "heun2": ("ode", {"method": "heun2"}), "deis": ("deis", {}), "rk4": ("ode", {"method": "rk4"})}
VARIANTS = {  # explicit settings, whatever the defaults
    "descent free": ("descent", {"free_start": True}), "descent pinned": ("descent", {"free_start": False}),
    "gits free": ("gits", {"free_start": True}), "gits pinned": ("gits", {"free_start": False}),
    "gits dev": ("gits", {"free_start": False, "free_end": False, "optimizer_options": {"metric": "dev"}}),
    "ld3 uniform pinned": ("ld3", {"free_start": False, "optimizer_options": {"init": "uniform"}}),
    "ld3 uniform free": ("ld3", {"free_start": True, "optimizer_options": {"init": "uniform"}}),
    "ld3 best pinned": ("ld3", {"free_start": False, "optimizer_options": {"init": "best"}}),
    "ld3 best free": ("ld3", {"free_start": True, "optimizer_options": {"init": "best"}}),
    **{f"{o} {e} end": (o, {"free_end": e == "free"}) for o in ("descent", "gits", "ld3") for e in ("free", "pinned")},
}


def run(method, model, sde, x, grid, reference) -> float:
    try:
        return map_error(integrate(method, model, sde, x, grid).x, reference)
    except SamplerDiverged:
        return math.inf


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, n=128, n_test=1000, samplers=SAMPLERS,
                  default_samplers=["ddim", "dpm_solver", "unipc", "ipndm", "heun2"])
    parser.add_argument("--optimizers", nargs="+", default=["descent", "gits", "dmn", "ays", "ld3"])
    parser.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS),
                        help="add these measured alternatives (all with no name; see above)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args(argv)
    runs = {name: (name, {}) for name in args.optimizers}
    if args.variants is not None:
        runs.update({k: v for k, v in VARIANTS.items() if v[0] in args.optimizers and k in (args.variants or VARIANTS)})
    rows = []
    for target_name, target, path, sde, model, x, reference in cells(args, flow_prediction="velocity"):
        for sampler in args.samplers:
            name, opts = SAMPLERS[sampler]
            method = solver(name, **opts)
            for nfe in args.nfe:
                steps = method.steps_for_nfe(nfe)
                if steps is None:
                    continue
                fixed = {s: run(method, model, sde, x, time_grid(sde, steps, s), reference)
                         for s in start_spacings(sde)}
                best = min(fixed, key=fixed.get)
                row = {"target": target_name, "path": path, "sampler": sampler, "nfe": method.nfe(steps),
                       "steps": steps, "fixed": fixed, "best_fixed": best, "optimisers": {}}
                for label, (optimizer, kwargs) in runs.items():
                    t0 = time.perf_counter()
                    try:
                        grid = optimize_grid(model, sde, steps, name, shape=(args.n, target.dim),
                                             generator=torch.Generator().manual_seed(0), optimizer=optimizer,
                                             **kwargs, **opts)
                    except (ValueError, RuntimeError) as e:
                        row["optimisers"][label] = {"failed": f"{type(e).__name__}: {e}"}
                        print(f"  {label}: failed ({e})", flush=True)
                        continue
                    error = run(method, model, sde, x, grid, reference)
                    row["optimisers"][label] = {
                        "error": error, "ratio": error / fixed[best], "cost": grid.info["cost"]["evaluations"],
                        "seconds": time.perf_counter() - t0, "times": [n.t for n in grid.noisy]}
                rows.append(row)
                print(f"{target_name:<12}{path:<4}{sampler:<11}{row['nfe']:>3}  {best:<9}{fixed[best]:>10.3e}  "
                      + "  ".join(f"{k} {v['ratio']:.2f} ({v['cost']:.0f}, {v['seconds']:.1f}s)"
                                  for k, v in row["optimisers"].items() if "ratio" in v), flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=1)
    table = markdown(rows, list(runs))
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return rows


def markdown(rows: list[dict], labels: list[str]) -> str:
    """Held-out error of the best fixed spacing and, per optimiser, the ratio to it with the cost in evaluations of
    the calibration batch; the last rows: the median ratio and the cells each optimiser wins."""
    head = "| target | path | sampler | NFE | best fixed | its error | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (6 + len(labels))]
    for r in rows:
        cells = []
        for label in labels:
            v = r["optimisers"].get(label, {})
            cells.append("failed" if "ratio" not in v else f"{v['ratio']:.2f} ({v['cost']:.0f})")
        lines.append(f"| {r['target']} | {r['path']} | {r['sampler']} | {r['nfe']} | {r['best_fixed']} | "
                     f"{r['fixed'][r['best_fixed']]:.3g} | " + " | ".join(cells) + " |")
    medians, wins, below = [], [], []
    for label in labels:
        ratios = sorted(r["optimisers"][label]["ratio"] for r in rows if "ratio" in r["optimisers"].get(label, {}))
        medians.append(f"{ratios[len(ratios) // 2]:.2f}" if ratios else "—")
        below.append(f"{sum(x < 1 for x in ratios)}/{len(ratios)}")
        wins.append(str(sum(1 for r in rows if label == min(
            (k for k, v in r["optimisers"].items() if "ratio" in v), key=lambda k: r["optimisers"][k]["ratio"],
            default=None))))
    lines.append("| median ratio | | | | | | " + " | ".join(medians) + " |")
    lines.append("| below the best fixed | | | | | | " + " | ".join(below) + " |")
    lines.append("| best of the optimisers | | | | | | " + " | ".join(wins) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
