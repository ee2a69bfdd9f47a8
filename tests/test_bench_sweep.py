"""sgm.bench.sweep: the quick sweep writes every run, the comparison, the goal table and every figure; the
harness is not part of ``import sgm``, and ``sgm bench`` reaches it."""
import json
import subprocess
import sys

import pytest

from sgm.bench import report, runs, sweep
from sgm.bench.peers import diffusers as peer
from sgm.bench.peers import diffusers_flow as flow_peer


def test_import_sgm_does_not_load_the_bench():
    code = ("import sys, sgm; sgm.samplers.optimize_grid; "
            "print(sorted(m for m in sys.modules if m.startswith('sgm.bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sgm_bench_is_the_sweeps_command():
    from sgm.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--only", "compare", "--targets", "16d mixture"])
    assert args.func is sweep.run_from_args and args.quick and args.only == ["compare"]
    assert args.targets == ["16d mixture"] and args.out == "benchmarks/results" and args.peers is None
    assert args.stochastic_nfe is None
    args = build_parser().parse_args(["bench", "--only", "compare", "paths", "--peers", "diffusers_flow"])
    assert args.only == ["compare", "paths"] and args.peers == ["diffusers_flow"]
    args = build_parser().parse_args(["bench", "--only", "stochastic", "--stochastic-nfe", "10", "20"])
    assert args.only == ["stochastic"] and args.stochastic_nfe == [10, 20]
    with pytest.raises(ValueError, match="--stochastic-nfe"):
        sweep.run_from_args(build_parser().parse_args(["bench", "--stochastic-nfe", "0"]))


def test_quick_sweep_writes_every_run_and_figure(tmp_path, monkeypatch):
    """The quick sweep with every job: the curves on VP and VE, the comparison on VP, VE and rectified flow (each
    against its peers: the VP chain's schedulers there, the flow schedulers on RF), the cross-path table on all four
    paths. A few configurations of each side keep it fast."""
    monkeypatch.setattr(sweep, "QUICK_NFE", (5, 10))
    monkeypatch.setattr(sweep, "QUICK_COMPARE_NFE", (10,))
    monkeypatch.setattr(sweep, "PATH_NFE", (10,))
    monkeypatch.setattr(sweep, "QUICK_TOLERANCES", (1e-2,))
    monkeypatch.setattr(runs, "sgm_configs", lambda: [("ddim", {}), ("dpm_solver", {"order": 2})])
    configs = [c for c in peer.configs() if c.label.endswith("trailing")][:3]
    monkeypatch.setattr(peer, "configs", lambda: configs)
    flow_configs = [c for c in flow_peer.configs() if c.label.startswith("diffusers FlowMatch Euler, shift 1")][:1]
    monkeypatch.setattr(flow_peer, "configs", lambda: flow_configs)
    rows = sweep.run_sweep(str(tmp_path), quick=True, n=200, progress=False, paths=True,
                           stochastic=False)  # the stochastic leg: test_bench_stochastic
    per_sde = len(list(runs.budgeted((5, 10)))) + 1
    assert len(rows) == 2 * per_sde
    assert not any(r["diverged"] for r in rows if r["nfe_budget"] == 10)
    out = json.loads((tmp_path / "results.json").read_text())
    meta, compared, goal = out["meta"], out["compare"], out["goal"]
    assert set(meta["floors"]) == set(meta["flow_map"]) == {"2d ring / vp", "2d ring / ve"}
    assert meta["n"] == 200 and meta["nfe_grid"] == [5, 10] and meta["compare_nfe"] == [10]
    assert {r["side"] for r in compared} == ({"sgm", "diffusers"} if configs else {"sgm"})
    flow_rows = [r for r in compared if r["side"] == "diffusers" and r["sde"] == "rf"]
    assert [r["sampler"] for r in flow_rows] == [c.label for c in flow_configs]
    assert not any("family" in r for r in compared)  # --quick: no calibrated methods
    assert [(g["sde"], g["nfe"]) for g in goal] == [("vp", 10), ("ve", 10), ("rf", 10)]
    assert all(g["sgm_error"] > 0 and g["sgm_sw2"] > 0 and g["sw2_floor"] > 0 for g in goal)
    (across,) = out["path_table"]
    assert set(across["paths"]) == {"vp", "ve", "rf", "edm"} and across["best"] in across["paths"]
    assert {r["sde"] for r in out["paths"]} == {"vp", "ve", "rf", "edm"}
    assert all(r["side"] == "sgm" for r in out["paths"])
    figures = {f"{kind}_2d_ring_{sde}.png" for kind in ("scatter",) + report.CURVE_METRICS for sde in ("vp", "ve")}
    figures |= {f"compare_map_error_2d_ring_{sde}.png" for sde in ("vp", "ve", "rf")}
    assert {p.name for p in tmp_path.iterdir()} == figures | {"results.csv", "compare.csv", "goal.md", "results.json",
                                                              "paths.csv", "paths.md"}
    assert all((tmp_path / name).stat().st_size > 0 for name in figures)
