"""sgm.bench.report: the goal table picks each side's best run within the budget, the tables print as markdown,
and the report's files are named with single underscores."""
import csv
import json

import pytest

from sgm.bench import report


def _row(side, name, nfe, err, spent=None, diverged=False, sde="vp"):
    """A comparison row whose SW₂ is 10 × its map error, on a problem whose SW₂ floor is 0.003."""
    return {"target": "t", "sde": sde, "side": side, "sampler": name, "nfe_budget": nfe, "nfe": spent or nfe,
            "map_error": err, "sw2": 10 * err, "sw2_floor": 0.003, "diverged": diverged}


def test_goal_table_picks_each_sides_best_within_budget():
    rows = [_row("diffusers", "a", 10, 0.2), _row("diffusers", "b", 10, 0.1), _row("diffusers", "c", 10, 0.01, 11),
            _row("diffusers", "d", 10, float("nan"), diverged=True), _row("sgm", "x", 10, 0.04),
            _row("sgm", "y", 10, 0.06), _row("sgm", "x", 20, 0.01)]
    table = report.goal_table(rows, (10, 20))
    assert table[0] == {"target": "t", "sde": "vp", "nfe": 10, "peer": "b", "peer_error": 0.1, "sgm": "x",
                        "sgm_error": 0.04, "ratio": pytest.approx(0.4), "met": True, "peer_sw2": 1.0,
                        "sgm_sw2": 0.4, "sw2_floor": 0.003}
    assert table[1]["peer"] is None and not table[1]["met"]
    md = report.goal_markdown(table).splitlines()
    assert md[0].startswith("| target | SDE | NFE | best diffusers configuration |")
    assert md[0].endswith("| ≤ 0.5 | SW₂ diffusers / sgm / floor |")
    assert md[2] == "| t | VP | 10 | b | 0.1 | x | 0.04 | 0.4 | yes | 1 / 0.4 / 0.003 |"
    assert md[3] == "| t | VP | 20 | — | — | x | 0.01 | — | no | — / 0.1 / 0.003 |"
    assert report.goal_table(rows, (10, 50)) == table[:1]  # a budget the rows do not have is left out


def test_goal_table_against_another_peer():
    rows = [_row("diffusers", "a", 10, 0.1), _row("k-diffusion", "k", 10, 0.05), _row("sgm", "x", 10, 0.04)]
    (row,) = report.goal_table(rows, (10,), peer="k-diffusion")
    assert row["peer"] == "k" and row["ratio"] == pytest.approx(0.8) and not row["met"]
    assert "best k-diffusion configuration" in report.goal_markdown([row], peer="k-diffusion")


def test_path_table_picks_each_paths_best_sgm_run_within_budget():
    rows = [_row("sgm", "a", 10, 0.2, sde="vp"), _row("sgm", "b", 10, 0.1, sde="vp"),
            _row("sgm", "c", 10, 0.01, 11, sde="vp"), _row("sgm", "d", 10, 0.05, sde="rf"),
            _row("sgm", "e", 10, float("nan"), diverged=True, sde="edm"), _row("diffusers", "p", 10, 0.001, sde="rf"),
            _row("sgm", "f", 20, 0.3, sde="vp")]
    table = report.path_table(rows, (10, 20, 50))
    assert [r["nfe"] for r in table] == [10, 20]  # 50: no row has it
    assert table[0]["paths"] == {"vp": {"sampler": "b", "map_error": 0.1, "sw2": 1.0},
                                 "rf": {"sampler": "d", "map_error": 0.05, "sw2": 0.5}, "edm": None}
    assert table[0]["best"] == "rf"  # the peer's 0.001 is no path's sgm run
    assert table[1]["paths"] == {"vp": {"sampler": "f", "map_error": 0.3, "sw2": pytest.approx(3.0)},
                                 "rf": None, "edm": None} and table[1]["best"] == "vp"
    md = report.path_markdown(table).splitlines()
    assert md[0] == "**t**" and md[2] == "| NFE | VP | RF | EDM | lowest |"
    assert md[4] == "| 10 | 0.1 (SW₂ 1; b) | **0.05 (SW₂ 0.5; d)** | — | RF |"
    assert md[5] == "| 20 | **0.3 (SW₂ 3; f)** | — | — | VP |"


def test_summary_table():
    rows = [{"target": "t", "sde": "vp", "sampler": "ddim", "nfe_budget": b, "sw2": 0.1 * b, "map_error": 1e-3 / b}
            for b in (10, 20)] + [{"target": "t", "sde": "vp", "sampler": "ddpm", "nfe_budget": 10, "sw2": 0.5,
                                   "map_error": float("nan")}]
    table = report.summary_table(rows, (10, 20)).splitlines()
    assert table[0] == "| target | SDE | sampler | sw2 @ 10 | sw2 @ 20 | map_error @ 10 | map_error @ 20 |"
    assert table[2:] == ["| t | vp | ddim | 1 | 2 | 0.0001 | 5e-05 |", "| t | vp | ddpm | 0.5 | — | — | — |"]


def test_figure_names_have_single_underscores():
    assert report.figure_name("scatter", "2d ring", "vp") == "scatter_2d_ring_vp.png"
    assert report.figure_name("map_error", "16d mixture / ve") == "map_error_16d_mixture_ve.png"


def test_write_names_every_file_with_single_underscores(tmp_path):
    curves = [{"target": "2d ring", "sde": "vp", "sampler": s, "nfe_budget": b, "nfe": b, "sw2": 1 / b,
               "frechet": 2 / b, "map_error": 3 / b, "diverged": False, "seconds": 0.1} for s in ("a", "b")
              for b in (5, 10)]
    compared = [{**_row(side, "c", 5, 0.1), "target": "2d ring", "steps": 5, "seconds": 0.0}
                for side in ("sgm", "diffusers")]
    meta = {"floors": {"2d ring / vp": {"sw2": 0.01, "frechet": 0.001}}, "flow_map": {"2d ring / vp": {"sw2": 0.02}}}
    goal = report.goal_table(compared, (5,))
    report.write(str(tmp_path), curves, meta, compared, goal)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"results.csv", "compare.csv", "goal.md", "results.json", "sw2_2d_ring_vp.png",
                     "frechet_2d_ring_vp.png", "map_error_2d_ring_vp.png", "compare_map_error_2d_ring_vp.png"}
    with open(tmp_path / "results.csv") as f:
        assert [r["sampler"] for r in csv.DictReader(f)] == [r["sampler"] for r in curves]
    with open(tmp_path / "compare.csv") as f:
        assert [r["side"] for r in csv.DictReader(f)] == ["sgm", "diffusers"]
    assert (tmp_path / "goal.md").read_text() == report.goal_markdown(goal) + "\n"
    assert json.loads((tmp_path / "results.json").read_text())["goal"] == goal
    across = [{**r, "side": "sgm", "sde": sde} for r in compared for sde in ("vp", "rf")]
    paths = report.path_table(across, (5,))
    report.write(str(tmp_path), curves, meta, compared, goal, across, paths)
    assert {p.name for p in tmp_path.iterdir()} == names | {"paths.csv", "paths.md"}
    assert (tmp_path / "paths.md").read_text() == report.path_markdown(paths) + "\n"
    assert json.loads((tmp_path / "results.json").read_text())["path_table"] == paths
    calibrated = compared + [{**compared[0], "sampler": "c, quadratic + pas", "method": "pas", "map_error": 0.05}]
    report.write(str(tmp_path), curves, meta, calibrated, goal)
    assert (tmp_path / "methods.md").read_text() == report.method_markdown(report.method_table(calibrated)) + "\n"


def test_the_comparison_figure_has_the_best_of_each_family_and_peer():
    """One curve per peer side and per family of sgm's rows (a row without a family is on a fixed grid), each the
    least finite map error at each budget."""
    compared = [{**_row("sgm", "a", 5, 0.4), "target": "t"}, {**_row("sgm", "b", 5, 0.3), "target": "t"},
                {**_row("sgm", "c", 5, 0.2), "target": "t", "family": "optimised"},
                {**_row("sgm", "d", 5, 0.01), "target": "t", "family": "corrected", "diverged": True},
                {**_row("sgm", "e", 5, 0.15), "target": "t", "family": "corrected"},
                {**_row("diffusers", "f", 5, 0.5), "target": "t"}, {**_row("diffusers", "g", 10, 0.05), "target": "t"}]
    curves = report.compare_best_curves(compared)
    assert [(c["sampler"], c["nfe"], c["map_error"]) for c in curves] == [
        (report.FAMILIES["fixed"], 5, 0.3), (report.FAMILIES["optimised"], 5, 0.2),
        (report.FAMILIES["corrected"], 5, 0.15), ("diffusers, best configuration", 5, 0.5),
        ("diffusers, best configuration", 10, 0.05)]


def test_the_method_table_is_each_methods_best_over_the_best_peer():
    """Each calibrated method's best finite run within the budget over the best peer's map error, fixed grids as
    one column; the least ratio in bold."""
    compared = [_row("sgm", "a", 5, 0.4), _row("sgm", "b", 5, 0.3),
                {**_row("sgm", "c", 5, 0.1), "method": "descent"}, {**_row("sgm", "c2", 5, 0.01, spent=6),
                                                                    "method": "descent"},
                {**_row("sgm", "d", 5, 0.2), "method": "pas"}, {**_row("sgm", "e", 5, 0.05, diverged=True),
                                                                "method": "pas"},
                _row("diffusers", "f", 5, 0.5), _row("diffusers", "g", 5, 0.8)]
    (entry,) = report.method_table(compared)
    assert entry["peer_error"] == 0.5
    assert entry["ratios"] == pytest.approx({"fixed": 0.6, "descent": 0.2, "pas": 0.4}, rel=1e-12)
    lines = report.method_markdown([entry]).splitlines()
    assert lines[0] == "| target | SDE | NFE | best peer | fixed | descent | pas |"
    assert lines[2] == "| t | VP | 5 | 0.5 | 0.6 | **0.2** | 0.4 |"
