"""sgm.bench.judge: a run is scored by its map error against the reference map and by the distribution metrics
against a target sample; a diverged or failed run is a row of NaNs, not a crash."""
import time

import pytest
import torch

from sgm import metrics
from sgm.bench import judge
from conftest import gen, mixture

D = torch.float64


def test_a_diverged_run_is_a_row_of_nans():
    gm = mixture()
    x = torch.randn(50, 2, generator=gen(0), dtype=D)
    reference = gm.sample(50, generator=gen(1))
    for bad in (None, torch.full_like(x, float("inf")), torch.cat([x[:-1], torch.full_like(x[:1], float("nan"))])):
        judged = judge.judge_curve(bad, reference, gm, 0, x)
        assert judged["diverged"] and set(judge.METRICS) < set(judged)
        assert all(judged[m] != judged[m] for m in judge.METRICS)  # NaN
    assert judge.judge_map(torch.full_like(x, float("nan")), x, 7, time.perf_counter())["diverged"]


def test_a_finite_run_has_every_metric():
    gm = mixture()
    x, x_ref = (torch.randn(50, 2, generator=gen(k), dtype=D) for k in (0, 1))
    reference = gm.sample(50, generator=gen(2))
    judged = judge.judge_curve(x, reference, gm, 0, x_ref)
    assert not judged["diverged"] and judged["sw2"] > 0 and judged["nll"] > 0
    assert judged["map_error"] == pytest.approx(float((x - x_ref).norm(dim=1).mean()), rel=1e-12)
    assert judge.judge_curve(x, reference, gm, 0, x)["map_error"] == 0
    assert judge.judge_curve(x, reference, gm, 0)["map_error"] != judged["map_error"]  # no reference map: NaN
    assert judged["sw2"] == metrics.sliced_wasserstein(x, reference, judge.SW2_PROJECTIONS, gen(3))  # seed + 3
    row = judge.judge_map(x, x_ref, 7, time.perf_counter())
    assert row["nfe"] == 7 and not row["diverged"] and row["map_error"] == judged["map_error"] and row["seconds"] >= 0
    assert "sw2" not in row
    scored = judge.judge_map(x, x_ref, 7, time.perf_counter(), reference)  # every run on the same directions
    assert scored["sw2"] == judge.map_sw2(x, reference) == metrics.sliced_wasserstein(x, reference, 256, gen(0))
    assert judge.judge_map(x * float("nan"), x_ref, 7, time.perf_counter(), reference)["sw2"] != scored["sw2"]  # NaN


def test_the_pairwise_metrics_use_the_first_samples_only():
    gm = mixture()
    x = gm.sample(judge.PAIRWISE_N + 20, generator=gen(0))
    reference = gm.sample(judge.PAIRWISE_N + 20, generator=gen(1))
    tail_changed = torch.cat([x[:judge.PAIRWISE_N], x[judge.PAIRWISE_N:] + 5])
    a, b = (judge.distribution_metrics(v, reference, gm, gen(3)) for v in (x, tail_changed))
    assert a["mmd2"] == b["mmd2"] and a["energy"] == b["energy"]
    assert a["sw2"] != b["sw2"] and a["frechet"] != b["frechet"]


def test_floors_are_the_metrics_between_two_target_samples():
    gm = mixture()
    g = gen(5)
    a, b = gm.sample(300, generator=g), gm.sample(300, generator=g)
    assert judge.floors(gm, 300, 5) == judge.distribution_metrics(a, b, gm, g)


def test_a_failed_run_names_its_error():
    row = judge.failed(ValueError("x" * 400), time.perf_counter(), "optimize_grid: ")
    assert row["diverged"] and row["nfe"] is None and row["map_error"] != row["map_error"]
    assert row["error"].startswith("optimize_grid: ValueError: xxx") and len(row["error"]) == 300
