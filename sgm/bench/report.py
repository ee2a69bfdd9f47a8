"""The sweep's report: the goal table, the summary table, and the files written to the output folder.

- ``goal_table``: per target, SDE and budget, each side's configuration with the least map error (among finite
  runs that spent at most the budget) and the ratio sgm / peer; the goal (issue 9) is a ratio of at most
  ``GOAL_RATIO`` at every budget of ``GOAL_NFE``. The stochastic leg's goal (issue 17) is the same table of the
  distribution error ``STOCHASTIC_GOAL_METRIC`` at ``STOCHASTIC_GOAL_NFE`` of the confirmed rows
  (``bench.stochastic``), the best peer of all libraries, with each best row's strong error and its reference's
  steps (``bench.strong``; "n/a" for diffusers, which shares no path).
- ``path_table``: per target and budget, each path's best sgm configuration (least map error against that path's
  own exact map, finite, within the budget) and which path's is lowest.
- ``method_table``: per target, SDE and budget, the best run of sgm's fixed grids and of each calibrated method
  (step optimiser, learned correction) over the best peer's map error.
- ``write``: ``results.csv`` (the curve rows), ``compare.csv`` (the comparison rows), ``goal.md``, ``methods.md``
  (``method_table``, when the comparison has calibrated rows), ``paths.csv``
  and ``paths.md`` (the cross-path rows and table, when run), ``results.json`` (rows, comparison, goal, cross-path
  rows and table, stochastic rows and goal, floors, the exact flow map's metrics, seeds, versions) and the
  figures ``{metric}_{target}_{sde}.png`` (SW₂, Fréchet distance, map error against NFE; the floor dotted, the
  exact flow map dash-dotted, the comparison's best curves on the map-error figure), ``compare_map_error_{target}_
  {sde}.png`` (the comparison's best run per budget of each peer and of each of sgm's families: fixed grids,
  optimised grids, learned corrections, ``compare_best_curves``; and the goal, ``GOAL_RATIO`` × each peer's),
  ``scatter_{target}_{sde}.png`` (``scatter_figure``) and ``digits_frechet.png`` — names from ``figure_name``;
  with a stochastic leg, ``stochastic.csv`` (the screening rows), ``stochastic_confirmed.csv`` (the finalists on
  fresh draws, ``bench.stochastic``) and ``stochastic_goal.md`` (read from the confirmed rows).
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

__all__ = ["GOAL_NFE", "GOAL_RATIO", "STOCHASTIC_GOAL_NFE", "STOCHASTIC_GOAL_METRIC", "SCATTER_NFE", "PATH_NAMES",
           "goal_table", "goal_markdown", "method_table", "method_markdown", "stochastic_markdown", "path_table",
           "path_markdown", "summary_table", "figure_name", "scatter_figure", "versions", "write_csv", "write",
           "FAMILIES", "compare_best_curves"]

GOAL_NFE = (5, 10, 20)
GOAL_RATIO = 0.5
STOCHASTIC_GOAL_NFE = (10, 20)
STOCHASTIC_GOAL_METRIC = "frechet_moments"
SCATTER_NFE = (10, 50, 200)  # the budgets of a 2-D target's scatter figure
CURVE_METRICS = ("sw2", "frechet", "map_error")  # one figure each
RESULT_COLUMNS = ["target", "sde", "sampler", "nfe_budget", "steps", "tolerance", "nfe", "seconds", "sw2", "mmd2",
                  "energy", "frechet", "nll", "mode_error", "map_error", "diverged", "frechet_classifier", "confident"]
COMPARE_COLUMNS = ["target", "sde", "side", "sampler", "family", "method", "nfe_budget", "steps", "nfe", "map_error",
                   "sw2", "sw2_floor", "diverged", "seconds", "calibration", "start_sigma", "start_error", "same_as",
                   "error"]
STOCHASTIC_COLUMNS = ["target", "sde", "side", "sampler", "nfe_budget", "steps", "nfe", "frechet_moments",
                      "mode_error", "sw2", "strong_error", "strong_reference_steps", "diverged", "seconds", "same_as",
                      "error"]
PATH_NAMES = {"vp": "VP", "ve": "VE", "edm": "EDM", "rf": "RF"}  # the cross-path table's column heads


def _best(rows: list[dict], nfe: int, metric: str = "map_error") -> dict | None:
    """The finite row of least ``metric`` that spent at most ``nfe``, or None."""
    hits = [r for r in rows if not r["diverged"] and r.get("nfe") is not None and r["nfe"] <= nfe]
    return min(hits, key=lambda r: r[metric]) if hits else None


def goal_table(rows: list[dict], budgets=GOAL_NFE, peer: str | tuple = "diffusers",
               metric: str = "map_error") -> list[dict]:
    """Per target, SDE and budget (of ``budgets``, those the rows have): the best (least ``metric``, finite, within
    the budget) configuration of sgm's side and of the ``peer`` side (or sides, a tuple: the best of them all),
    ``ratio = sgm / peer``, and each one's SW₂ with the problem's floor (the exact map's SW₂) where the rows have
    them."""
    table, budgets = [], [b for b in budgets if any(r["nfe_budget"] == b for r in rows)]
    sides = {"peer": (peer,) if isinstance(peer, str) else tuple(peer), "sgm": ("sgm",)}
    for target, sde in dict.fromkeys((r["target"], r["sde"]) for r in rows):
        for nfe in budgets:
            theirs, ours = (_best([r for r in rows if (r["target"], r["sde"], r["nfe_budget"]) == (target, sde, nfe)
                                   and r["side"] in names], nfe, metric) for names in sides.values())
            ratio = ours[metric] / theirs[metric] if theirs and ours else float("nan")
            table.append({"target": target, "sde": sde, "nfe": nfe,
                          "peer": theirs["sampler"] if theirs else None,
                          "peer_error": theirs[metric] if theirs else None,
                          "sgm": _with_calibration(ours) if ours else None,
                          "sgm_error": ours[metric] if ours else None,
                          "ratio": ratio, "met": bool(ratio <= GOAL_RATIO),
                          "peer_sw2": theirs.get("sw2") if theirs else None,
                          "sgm_sw2": ours.get("sw2") if ours else None,
                          "sw2_floor": (ours or theirs or {}).get("sw2_floor"),
                          **{f"{side}_strong": _strong(row) for side, row in (("peer", theirs), ("sgm", ours))
                             if row and "strong_error" in row}})
    return table


def _strong(row: dict | None) -> str | None:
    """A stochastic row's strong error with its reference's steps, ``"0.012 (ref 500)"``; ``"n/a"`` where it has
    none (diffusers: no shared Brownian path); None off the stochastic leg."""
    if row is None or "strong_error" not in row:
        return None
    value = row["strong_error"]
    return "n/a" if value is None or math.isnan(value) else f"{_number(value)} (ref {row['strong_reference_steps']})"


def _with_calibration(row: dict) -> str:
    """A run's configuration, with what its calibration cost when it has one (an optimised grid, a learned
    correction: evaluations of the calibration batch × its draws and seconds, spent once before sampling and not in
    the NFE)."""
    cost = row.get("calibration")
    if not cost or cost.get("nfe") is None:
        return row["sampler"]
    return (f"{row['sampler']} (calibration: {cost['nfe']:.0f} evaluations × {cost['draws']} draws, "
            f"{cost['seconds']:.0f} s)")


def path_table(rows: list[dict], budgets) -> list[dict]:
    """Per target and budget (of ``budgets``, those the rows have): each path's (``sde``'s) best sgm run within the
    budget (``"paths": {sde: {"sampler", "map_error"} or None}``) and the ``best`` path, the one of least map error."""
    table, rows = [], [r for r in rows if r.get("side", "sgm") == "sgm"]
    budgets = [b for b in budgets if any(r["nfe_budget"] == b for r in rows)]
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        for nfe in budgets:
            cells = {}
            for sde in dict.fromkeys(r["sde"] for r in mine):
                best = _best([r for r in mine if r["sde"] == sde and r["nfe_budget"] == nfe], nfe)
                cells[sde] = ({"sampler": best["sampler"], "map_error": best["map_error"], "sw2": best.get("sw2")}
                             if best else None)
            found = {k: v for k, v in cells.items() if v is not None}
            table.append({"target": target, "nfe": nfe, "paths": cells,
                          "best": min(found, key=lambda k: found[k]["map_error"]) if found else None})
    return table


def path_markdown(table: list[dict]) -> str:
    """``path_table`` as markdown: one table per target, a line per budget, each path's best map error, its SW₂ and
    its configuration, the lowest map error in bold."""
    out = []
    for target in dict.fromkeys(r["target"] for r in table):
        mine = [r for r in table if r["target"] == target]
        sdes = list(dict.fromkeys(sde for r in mine for sde in r["paths"]))
        heads = [PATH_NAMES.get(sde, sde) for sde in sdes]
        lines = [f"**{target}**", "", "| NFE | " + " | ".join(heads) + " | lowest |",
                 "|---|" + "---|" * (len(sdes) + 1)]
        for r in mine:
            cells = []
            for sde in sdes:
                cell = r["paths"].get(sde)
                text = f"{_number(cell['map_error'])} (SW₂ {_number(cell['sw2'])}; {cell['sampler']})" if cell else "—"
                cells.append(f"**{text}**" if sde == r["best"] else text)
            lines.append(f"| {r['nfe']} | " + " | ".join(cells) + f" | {PATH_NAMES.get(r['best'], r['best'] or '—')} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _number(value) -> str:
    """Three significant digits, or — for a missing or non-finite value."""
    return f"{value:.3g}" if value is not None and math.isfinite(value) else "—"


def method_table(rows: list[dict], budgets=GOAL_NFE, peer: str = "diffusers") -> list[dict]:
    """Per target, SDE and budget: the best ``peer`` map error and, for sgm's fixed grids (``"fixed"``) and each
    calibrated ``method`` of the rows (a step optimiser's grid, a learned correction alone or on an optimised grid),
    its best run's map error over the peer's (``ratios``: ``{method: ratio}``; finite runs within the budget)."""
    sgm = [r for r in rows if r["side"] == "sgm"]
    methods = ["fixed"] + list(dict.fromkeys(r["method"] for r in sgm if r.get("method")))
    table = []
    for target, sde in dict.fromkeys((r["target"], r["sde"]) for r in rows):
        for nfe in [b for b in budgets if any(r["nfe_budget"] == b for r in rows)]:
            cell = [r for r in rows if (r["target"], r["sde"], r["nfe_budget"]) == (target, sde, nfe)]
            theirs = _best([r for r in cell if r["side"] == peer], nfe)
            ratios = {}
            for method in methods:
                ours = _best([r for r in cell if r["side"] == "sgm" and r.get("method", "fixed") == method], nfe)
                ratios[method] = ours["map_error"] / theirs["map_error"] if ours and theirs else float("nan")
            table.append({"target": target, "sde": sde, "nfe": nfe,
                          "peer_error": theirs["map_error"] if theirs else None, "ratios": ratios})
    return table


def method_markdown(table: list[dict]) -> str:
    """``method_table`` as markdown: one column per method, the least ratio of each line in bold."""
    methods = list(dict.fromkeys(m for r in table for m in r["ratios"]))
    lines = ["| target | SDE | NFE | best peer | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for r in table:
        found = [v for v in r["ratios"].values() if math.isfinite(v)]
        cells = [(f"**{_number(v)}**" if found and v == min(found) else _number(v))
                 for v in (r["ratios"].get(m, float("nan")) for m in methods)]
        lines.append(f"| {r['target']} | {r['sde'].upper()} | {r['nfe']} | {_number(r['peer_error'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_markdown(table: list[dict], peer: str = "diffusers", metric: str = "map error",
                  floors: dict | None = None) -> str:
    """``goal_table`` as markdown (``metric`` names the error column; with ``floors``, ``{"target / sde": value}``,
    a column of each problem's Monte-Carlo floor of it); the last column each side's SW₂ and the exact map's."""
    floor_head, floor_rule = (" floor |", "---|") if floors is not None else ("", "")
    strong = any(r.get("sgm_strong") or r.get("peer_strong") for r in table)  # the stochastic leg's strong errors
    strong_head, strong_rule = (f" strong error {peer} / sgm |", "---|") if strong else ("", "")
    lines = [f"| target | SDE | NFE | best {peer} configuration | {metric} | best sgm configuration | {metric} "
             f"|{floor_head} sgm / peer | ≤ {GOAL_RATIO} | SW₂ {peer} / sgm / floor |{strong_head}",
             "|---|---|---|---|---|---|---|" + floor_rule + "---|---|---|" + strong_rule]
    for r in table:
        floor = "" if floors is None else f" {_number(floors.get(r['target'] + ' / ' + r['sde']))} |"
        sw2 = " / ".join(_number(r.get(k)) for k in ("peer_sw2", "sgm_sw2", "sw2_floor"))
        errors = f" {r.get('peer_strong') or '—'} / {r.get('sgm_strong') or '—'} |" if strong else ""
        lines.append(f"| {r['target']} | {r['sde'].upper()} | {r['nfe']} | {r['peer'] or '—'} | "
                     f"{_number(r['peer_error'])} | {r['sgm'] or '—'} | {_number(r['sgm_error'])} |{floor} "
                     f"{_number(r['ratio'])} | {'yes' if r['met'] else 'no'} | {sw2} |{errors}")
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
                hit = [r.get(m) for r in rows
                       if (r["target"], r["sde"], r["sampler"]) == key and r.get("nfe_budget") == b]
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


def stochastic_markdown(goal: list[dict], floors: dict) -> str:
    """The stochastic leg's goal table as markdown, with the floors (``{"target / sde": {metric: value}}``) of
    ``STOCHASTIC_GOAL_METRIC`` in its column and of SW₂ in the SW₂ column."""
    goal = [{**g, "sw2_floor": floors.get(f"{g['target']} / {g['sde']}", {}).get("sw2")} for g in goal]
    return goal_markdown(goal, "peer", "Fréchet (moments)",
                         {key: f.get(STOCHASTIC_GOAL_METRIC) for key, f in floors.items()})


def write(out_dir: str, rows: list[dict], meta: dict, compared: list[dict] = (), goal: list[dict] = (),
          across: list[dict] = (), paths: list[dict] = (), stochastic: list[dict] = (),
          confirmed: list[dict] = (), stochastic_goal: list[dict] = ()) -> None:
    """Every file of the report (see the module docstring) to ``out_dir``; ``meta`` holds the floors and the flow
    map's metrics per ``"target / sde"`` (and the stochastic leg's floors, ``stochastic_floors``); ``across`` and
    ``paths`` are the cross-path rows and ``path_table``, ``stochastic``, ``confirmed`` and ``stochastic_goal`` the
    stochastic leg's screening rows, confirmed rows and goal table."""
    write_csv(os.path.join(out_dir, "results.csv"), RESULT_COLUMNS, rows)
    write_csv(os.path.join(out_dir, "compare.csv"), COMPARE_COLUMNS, compared)
    with open(os.path.join(out_dir, "goal.md"), "w") as f:
        f.write(goal_markdown(goal) + "\n")
    if any(r.get("method") for r in compared):
        with open(os.path.join(out_dir, "methods.md"), "w") as f:
            f.write(method_markdown(method_table(compared)) + "\n")
    if across:
        write_csv(os.path.join(out_dir, "paths.csv"), COMPARE_COLUMNS, across)
        with open(os.path.join(out_dir, "paths.md"), "w") as f:
            f.write(path_markdown(paths) + "\n")
    if stochastic:
        write_csv(os.path.join(out_dir, "stochastic.csv"), STOCHASTIC_COLUMNS, stochastic)
        write_csv(os.path.join(out_dir, "stochastic_confirmed.csv"),
                  STOCHASTIC_COLUMNS + [f"screen_{STOCHASTIC_GOAL_METRIC}"], confirmed)
        with open(os.path.join(out_dir, "stochastic_goal.md"), "w") as f:
            f.write(stochastic_markdown(stochastic_goal, meta.get("stochastic_floors", {})) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "compare": list(compared), "goal": list(goal), "paths": list(across),
                   "path_table": list(paths), "stochastic": list(stochastic),
                   "stochastic_confirmed": list(confirmed),
                   "stochastic_goal": list(stochastic_goal)}, f, indent=1, default=float)
    groups = sorted({(r["target"], r["sde"].split(" ")[0]) for r in rows if "sw2" in r})
    for target_name, sde_name in groups:
        group = [r for r in rows if r["target"] == target_name and r["sde"].split(" ")[0] == sde_name and "sw2" in r]
        floor = meta["floors"].get(f"{target_name} / {sde_name}", {})
        flow_map = meta["flow_map"].get(f"{target_name} / {sde_name}", {})
        best = compare_best_curves([r for r in compared if (r["target"], r["sde"]) == (target_name, sde_name)])
        for metric in CURVE_METRICS:
            nfe_curves(group + (best if metric == "map_error" else []), metric,
                       os.path.join(out_dir, figure_name(metric, target_name, sde_name)),
                       title=f"{target_name}, {sde_name.upper()}: {metric} against NFE", floor=floor.get(metric),
                       limit=flow_map.get(metric))
    for target_name, sde_name in dict.fromkeys((r["target"], r["sde"]) for r in compared):
        best = compare_best_curves([r for r in compared if (r["target"], r["sde"]) == (target_name, sde_name)])
        best += [{**r, "sampler": f"{r['sampler']} × {GOAL_RATIO} (the goal)", "map_error": GOAL_RATIO * r["map_error"]}
                 for r in best if not r["sampler"].startswith("sgm")]
        nfe_curves(best, "map_error", os.path.join(out_dir, figure_name("compare_map_error", target_name, sde_name)),
                   title=f"{target_name}, {sde_name.upper()}: the comparison's best map error against NFE")
    digits = [r for r in rows if "frechet_classifier" in r]
    if digits:
        nfe_curves(digits, "frechet_classifier", os.path.join(out_dir, "digits_frechet.png"),
                   title="digits model: Fréchet (classifier features)")


FAMILIES = {"fixed": "sgm, best on a fixed grid", "optimised": "sgm, best on an optimised grid",
            "corrected": "sgm, best with a learned correction"}  # compare_best_curves' sgm curves


def compare_best_curves(compared: list[dict]) -> list[dict]:
    """For the map-error figures: at each budget the best comparison run of each peer side and of each family of
    sgm's (``FAMILIES``: a fixed spacing, a step optimiser's grid, a learned correction), one curve each."""
    out = []
    for key in dict.fromkeys(_family(r) for r in compared):
        for nfe in sorted({r["nfe_budget"] for r in compared}):
            hits = [r for r in compared if _family(r) == key and r["nfe_budget"] == nfe and not r["diverged"]]
            if hits:
                out.append({"sampler": key, "nfe": nfe, "map_error": min(r["map_error"] for r in hits)})
    return out


def _family(row: dict) -> str:
    if row["side"] != "sgm":
        return f"{row['side']}, best configuration"
    return FAMILIES[row.get("family", "fixed")]
