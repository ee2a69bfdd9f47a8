"""The sweep's report: the goal table, the summary table, and the files written to the output folder.

- ``goal_table``: per target, SDE and budget, each side's configuration with the least map error (among finite
  runs that spent at most the budget) and the ratio sgm / peer; the goal (issue 9) is a ratio of at most
  ``GOAL_RATIO`` at every budget of ``GOAL_NFE``.
- ``write``: ``results.csv`` (the curve rows), ``compare.csv`` (the comparison rows), ``goal.md``,
  ``results.json`` (rows, comparison, goal, floors, the exact flow map's metrics, seeds, versions) and the
  figures ``{metric}_{target}_{sde}.png`` (SW₂, Fréchet distance, map error against NFE; the floor dotted, the
  exact flow map dash-dotted, the best comparison configuration of each side on the map-error figure),
  ``scatter_{target}_{sde}.png`` (``scatter_figure``) and ``digits_frechet.png`` — names from ``figure_name``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform

import numpy as np
import torch
from torch import Tensor

from .. import GaussianMixture, __version__
from ..plotting import nfe_curves, scatter_panels

__all__ = ["GOAL_NFE", "GOAL_RATIO", "SCATTER_NFE", "goal_table", "goal_markdown", "summary_table", "figure_name",
           "scatter_figure", "versions", "write_csv", "write"]

GOAL_NFE = (5, 10, 20)
GOAL_RATIO = 0.5
SCATTER_NFE = (10, 50, 200)  # the budgets of a 2-D target's scatter figure
CURVE_METRICS = ("sw2", "frechet", "map_error")  # one figure each
RESULT_COLUMNS = ["target", "sde", "sampler", "nfe_budget", "steps", "tolerance", "nfe", "seconds", "sw2", "mmd2",
                  "energy", "frechet", "nll", "mode_error", "map_error", "diverged", "frechet_classifier", "confident"]
COMPARE_COLUMNS = ["target", "sde", "side", "sampler", "nfe_budget", "steps", "nfe", "map_error", "diverged",
                   "seconds", "error"]


def goal_table(rows: list[dict], budgets=GOAL_NFE, peer: str = "diffusers") -> list[dict]:
    """Per target, SDE and budget (of ``budgets``, those the rows have): the best (least map error, finite, within
    the budget) configuration of sgm's side and of ``peer``'s, and ``ratio = sgm / peer``."""
    table, budgets = [], [b for b in budgets if any(r["nfe_budget"] == b for r in rows)]
    for target, sde in dict.fromkeys((r["target"], r["sde"]) for r in rows):
        for nfe in budgets:
            best = {}
            for side in (peer, "sgm"):
                hits = [r for r in rows if (r["target"], r["sde"], r["side"], r["nfe_budget"]) == (target, sde, side, nfe)
                        and not r["diverged"] and r["nfe"] is not None and r["nfe"] <= nfe]
                best[side] = min(hits, key=lambda r: r["map_error"]) if hits else None
            theirs, ours = best[peer], best["sgm"]
            ratio = ours["map_error"] / theirs["map_error"] if theirs and ours else float("nan")
            table.append({"target": target, "sde": sde, "nfe": nfe,
                          "peer": theirs["sampler"] if theirs else None,
                          "peer_error": theirs["map_error"] if theirs else None,
                          "sgm": ours["sampler"] if ours else None, "sgm_error": ours["map_error"] if ours else None,
                          "ratio": ratio, "met": bool(ratio <= GOAL_RATIO)})
    return table


def _number(value) -> str:
    """Three significant digits, or — for a missing or non-finite value."""
    return f"{value:.3g}" if value is not None and math.isfinite(value) else "—"


def goal_markdown(table: list[dict], peer: str = "diffusers") -> str:
    """``goal_table`` as markdown."""
    lines = [f"| target | SDE | NFE | best {peer} configuration | map error | best sgm configuration | map error "
             f"| sgm / peer | ≤ {GOAL_RATIO} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['target']} | {r['sde'].upper()} | {r['nfe']} | {r['peer'] or '—'} | {_number(r['peer_error'])} "
                     f"| {r['sgm'] or '—'} | {_number(r['sgm_error'])} | {_number(r['ratio'])} | "
                     f"{'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def summary_table(rows: list[dict], budgets, metrics_shown=("sw2", "map_error")) -> str:
    """A markdown table of the given metrics at the given NFE budgets, one line per target, SDE and sampler
    (— where a sampler cannot spend that budget or has no such metric, e.g. a stochastic sampler's map error)."""
    head = [f"{m} @ {b}" for m in metrics_shown for b in budgets]
    lines = ["| target | SDE | sampler | " + " | ".join(head) + " |", "|---|---|---|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["target"], r["sde"], r["sampler"]) for r in rows if r.get("nfe_budget")))
    for key in keys:
        values = []
        for m in metrics_shown:
            for b in budgets:
                hit = [r.get(m) for r in rows if (r["target"], r["sde"], r["sampler"]) == key and r.get("nfe_budget") == b]
                values.append(_number(hit[0] if hit else None))
        lines.append("| " + " | ".join(key) + " | " + " | ".join(values) + " |")
    return "\n".join(lines)


def figure_name(kind: str, *parts: str) -> str:
    """``figure_name("scatter", "2d ring", "vp")`` -> ``"scatter_2d_ring_vp.png"``: the words of each part joined
    by single underscores (runs of other characters become one)."""
    words = "".join(c if c.isalnum() else " " for c in " ".join(parts)).split()
    return "_".join([kind, *words]) + ".png"


def scatter_figure(out_dir: str, target_name: str, sde_name: str, target: GaussianMixture,
                   panels: list[tuple[str, Tensor]]) -> None:
    """The samples of each run in ``panels`` over the 2-D target's density contours, six to a row."""
    scatter_panels(panels, os.path.join(out_dir, figure_name("scatter", target_name, sde_name)), target.log_prob,
                   limits=6.0, columns=6)


def versions() -> dict:
    """The versions of sgm, its numerical dependencies, Python, the machine and torch's thread count."""
    import torchdiffeq
    import torchsde

    out = {"sgm": __version__, "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
           "torchsde": torchsde.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": torch.get_num_threads()}
    try:
        import diffusers

        out["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return out


def write_csv(path: str, columns: list[str], rows) -> None:
    """``rows`` (dicts) as a CSV file with ``columns`` (other keys left out)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write(out_dir: str, rows: list[dict], meta: dict, compared: list[dict] = (), goal: list[dict] = ()) -> None:
    """Every file of the report (see the module docstring) to ``out_dir``; ``meta`` holds the floors and the flow
    map's metrics per ``"target / sde"``."""
    write_csv(os.path.join(out_dir, "results.csv"), RESULT_COLUMNS, rows)
    write_csv(os.path.join(out_dir, "compare.csv"), COMPARE_COLUMNS, compared)
    with open(os.path.join(out_dir, "goal.md"), "w") as f:
        f.write(goal_markdown(goal) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "compare": list(compared), "goal": list(goal)}, f, indent=1,
                  default=float)
    groups = sorted({(r["target"], r["sde"].split(" ")[0]) for r in rows if "sw2" in r})
    for target_name, sde_name in groups:
        group = [r for r in rows if r["target"] == target_name and r["sde"].split(" ")[0] == sde_name and "sw2" in r]
        floor = meta["floors"].get(f"{target_name} / {sde_name}", {})
        flow_map = meta["flow_map"].get(f"{target_name} / {sde_name}", {})
        best = _best_per_budget([r for r in compared if (r["target"], r["sde"]) == (target_name, sde_name)])
        for metric in CURVE_METRICS:
            nfe_curves(group + (best if metric == "map_error" else []), metric,
                       os.path.join(out_dir, figure_name(metric, target_name, sde_name)),
                       title=f"{target_name}, {sde_name.upper()}: {metric} against NFE", floor=floor.get(metric),
                       limit=flow_map.get(metric))
    digits = [r for r in rows if "frechet_classifier" in r]
    if digits:
        nfe_curves(digits, "frechet_classifier", os.path.join(out_dir, "digits_frechet.png"),
                   title="digits model: Fréchet (classifier features)")


def _best_per_budget(compared: list[dict]) -> list[dict]:
    """For the map-error figure: the best comparison configuration of each side at each budget, as one curve each."""
    out = []
    for side in dict.fromkeys(r["side"] for r in compared):
        for nfe in sorted({r["nfe_budget"] for r in compared}):
            hits = [r for r in compared if r["side"] == side and r["nfe_budget"] == nfe and not r["diverged"]]
            if hits:
                out.append({"sampler": f"{side}, best configuration", "nfe": nfe,
                            "map_error": min(r["map_error"] for r in hits)})
    return out
