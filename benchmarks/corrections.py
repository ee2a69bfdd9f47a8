"""Learned solver corrections against their uncorrected solvers, on the sweep's exact-score targets (float64).

For each target (the 2-D ring and the 16-D mixture of ``sgm bench``), path (VP, VE, rectified flow — with the exact
x̂_0 model there, from its top t = 1), base sampler (ddim, dpm_solver, unipc, ipndm) and budget (5/10/20
evaluations), on the sampler's default fixed spacing and on ``optimize_grid``'s grid for it: the held-out map error
``mean ‖x̂_0 - Φ(x_T)‖`` (``--n-test`` prior draws of seed 1; ``Φ`` dopri5 at 1e-9, then Tweedie) of

- the uncorrected sampler;
- ``afs``: the analytical first step (Zhou et al.) and ``afs_m``: with the model's moments — on the budget's grid,
  which has one more node (fixed spacings only);
- ``pas``: PAS (guarded, no AFS) on the same grid;
- ``amed``: AMED-Plugin without AFS on the same grid, and ``amed_m``: with the moments AFS on the budget's grid
  (fixed spacings only);
- ``s4s``: S4S (learned coefficients of the last ``--s4s-window`` directions, 3, fitted on all the draws) on the same
  grid, and
  ``s4s_v``: the same with half the draws held out to choose the iterate (``validation=0.5``);
- ``v3`` (the dpm_solver rows): DPM-Solver-v3 with EMS (120 intervals) on dpm_solver_v3's grid for the budget
  (``logsnr``, or ``optimize_grid``'s for it with those EMS);

each calibrated on ``--n`` prior draws of seed 0, with its calibration cost (evaluations of a batch × draws, seconds).

    python benchmarks/corrections.py [--n 256] [--n-test 2000] [--nfe 5 10 20] [--paths vp ve rf]
                                     [--targets ring 16d] [--no-optimised] [--s4s-window 3] [--json out.json]
                                     [--markdown out.md]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import sgm
from calibration_common import add_arguments, cells
from sgm.samplers import budget_grid, entry, integrate, optimize_grid, solver
from sgm.samplers.corrections import AFS, afs, amed, ems, pas, s4s
from sgm.samplers.optimize import map_error

SAMPLERS = ("ddim", "dpm_solver", "unipc", "ipndm")
COLUMNS = ("uncorrected", "afs", "afs_m", "pas", "amed", "amed_m", "s4s", "s4s_v", "v3")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, n=256, n_test=2000, samplers=SAMPLERS)
    parser.add_argument("--no-optimised", action="store_true", help="fixed spacings only")
    parser.add_argument("--s4s-window", type=int, default=3, help="S4S's window (its default 3)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the tables (docs/samplers.md's) here")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'target':<12}{'path':<5}{'sampler':<11}{'nfe':>4} {'grid':<10}" + "".join(f"{c:>12}" for c in COLUMNS),
          flush=True)
    for target_name, target, path_name, sde, score, x, reference in cells(args, flow_prediction="x0"):
        dim = target.dim
        cal = lambda: {"shape": (args.n, dim), "generator": torch.Generator().manual_seed(0)}  # noqa: E731
        statistics, v3_seconds = timed(lambda: ems(score, sde, steps=120, **cal()))
        moments_afs, afs_seconds = timed(lambda: afs("ddim", score, sde, **cal()))

        def error(method, grid):
            out = integrate(method, score, sde, x, grid)
            return map_error(out.x, reference), out.nfe

        for name in args.samplers:
            base = solver(name)
            spacing = entry(name).default_spacing(sde)
            for nfe in args.nfe:
                kinds = ["fixed"] + ([] if args.no_optimised else ["optimised"])
                for kind in kinds:
                    if kind == "fixed":
                        grid = budget_grid(base, sde, nfe, spacing)
                        v3_grid = budget_grid(solver("dpm_solver_v3"), sde, nfe,
                                              entry("dpm_solver_v3").default_spacing(sde))
                        grid_name = spacing
                    else:
                        steps = base.steps_for_nfe(nfe)
                        grid = optimize_grid(score, sde, steps, name, shape=(args.n, dim),
                                             generator=torch.Generator().manual_seed(0))
                        v3_grid = None if name != "dpm_solver" else optimize_grid(
                            score, sde, steps, "dpm_solver_v3", shape=(args.n, dim),
                            generator=torch.Generator().manual_seed(0), ems=statistics.solver().ems)
                        grid_name = "optimised"
                    row = {"target": target_name, "path": path_name, "sampler": name, "nfe": nfe,
                           "grid": grid_name, "errors": {}, "nfes": {}, "cost": {}, "seconds": {}}

                    def record(column, value, spent, cost=0, seconds=0.0):
                        row["errors"][column], row["nfes"][column] = value, spent
                        row["cost"][column], row["seconds"][column] = cost, seconds

                    record("uncorrected", *error(base, grid))
                    if kind == "fixed":
                        first = budget_grid(AFS(base), sde, nfe, spacing)
                        record("afs", *error(afs(name).solver(), first))
                        step = sgm.samplers.Correction("afs", name, {}, moments_afs.params, None, True,
                                                       moments_afs.sde, moments_afs.model)
                        record("afs_m", *error(step.solver(), first), moments_afs.info["evaluations"], afs_seconds)
                    corrected, seconds = timed(lambda: pas(score, sde, name, grid=grid, **cal()))
                    record("pas", *error(corrected.solver(), corrected.grid), corrected.info["evaluations"],
                           seconds)
                    corrected, seconds = timed(lambda: amed(score, sde, name, grid=grid, afs=False, **cal()))
                    record("amed", *error(corrected.solver(), corrected.grid), corrected.info["evaluations"],
                           seconds)
                    if kind == "fixed":
                        corrected, seconds = timed(lambda: amed(score, sde, name, nfe=nfe, **cal()))
                        record("amed_m", *error(corrected.solver(), corrected.grid),
                               corrected.info["evaluations"], seconds)
                    for column, validation in (("s4s", 0.0), ("s4s_v", 0.5)):
                        corrected, seconds = timed(lambda: s4s(score, sde, name, grid=grid, validation=validation,
                                                               window=args.s4s_window, **cal()))
                        record(column, *error(corrected.solver(), grid), corrected.info["evaluations"], seconds)
                    if name == "dpm_solver":
                        record("v3", *error(statistics.solver(), v3_grid), statistics.info["evaluations"],
                               v3_seconds)
                    rows.append(row)
                    print(f"{target_name:<12}{path_name:<5}{name:<11}{nfe:>4} {grid_name:<10}"
                          + "".join(f"{row['errors'][c]:>12.4g}" if c in row["errors"] else f"{'':>12}"
                                    for c in COLUMNS), flush=True)
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump(rows, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows))
    return rows


def markdown(rows: list[dict]) -> str:
    """The error table (each column's held-out map error, its ratio to the uncorrected sampler's in brackets, the best
    in bold) and the calibration costs (median over the rows of evaluations × draws and seconds, per method)."""
    lines = ["| target | path | sampler | NFE | grid | uncorrected | " + " | ".join(COLUMNS[1:]) + " |",
             "|---|---|---|---|---|---|" + "---|" * (len(COLUMNS) - 1)]
    for row in rows:
        errors, base = row["errors"], row["errors"]["uncorrected"]
        best = min(errors.values())
        cells = []
        for c in COLUMNS:
            if c not in errors:
                cells.append("")
                continue
            text = f"{errors[c]:.3g}" + ("" if c == "uncorrected" else f" ({errors[c] / base:.2f})")
            cells.append(f"**{text}**" if errors[c] == best else text)
        lines.append(f"| {row['target']} | {row['path']} | {row['sampler']} | {row['nfe']} | {row['grid']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| method | NFE | median calibration cost (evaluations × draws) | median seconds | rows |",
              "|---|---|---|---|---|"]
    for c in COLUMNS[1:]:
        for nfe in sorted({r["nfe"] for r in rows}):
            costs = sorted(r["cost"][c] for r in rows if c in r["cost"] and r["nfe"] == nfe)
            seconds = sorted(r["seconds"][c] for r in rows if c in r["seconds"] and r["nfe"] == nfe)
            if costs:
                lines.append(f"| {c} | {nfe} | {costs[len(costs) // 2]:.3g} | {seconds[len(seconds) // 2]:.2g} | "
                             f"{len(costs)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
