"""Sharded sampling: shards as they are drawn, a crash keeps the finished ones and a rerun completes them to
the uninterrupted result; the split over processes does not change a sample; the CLI writes shards."""
import json
import os

import numpy as np
import pytest
import torch

import sgm
from sgm import distributed, shards
from sgm.cli import main
from sgm.shards import sample_shards, shard_path
from sgm.train import TrainConfig, Trainer

SDE = sgm.VPSDE()
TARGET = sgm.ring_mixture()
SCORE = TARGET.score_fn(SDE)
KW = dict(shard_size=16, seed=3, sampler="euler_maruyama", steps=5, dtype=torch.float64, progress=False)


def read(out_dir, count):
    parts = []
    for k in range(count):
        with np.load(shard_path(str(out_dir), k), allow_pickle=False) as f:
            parts.append(f["samples"])
    return np.concatenate(parts)


class Crash(Exception):
    pass


def test_crash_keeps_finished_shards_and_resume_completes_them(tmp_path, monkeypatch):
    paths = sample_shards(SCORE, SDE, (2,), 50, str(tmp_path / "whole"), **KW)
    assert [os.path.basename(p) for p in paths] == [f"shard_{k:05d}.npz" for k in range(4)]
    whole = read(tmp_path / "whole", 4)
    assert whole.shape == (50, 2) and np.isfinite(whole).all() and len(np.unique(whole[:, 0])) == 50

    calls = []
    original = shards.sample

    def crash_on_third(*args, **kwargs):
        if len(calls) == 2:
            raise Crash()
        calls.append(args[2][0])
        return original(*args, **kwargs)

    monkeypatch.setattr(shards, "sample", crash_on_third)
    with pytest.raises(Crash):
        sample_shards(SCORE, SDE, (2,), 50, str(tmp_path / "cut"), **KW)
    assert sorted(f for f in os.listdir(tmp_path / "cut") if f != "shards.json") == [
        "shard_00000.npz", "shard_00001.npz"]  # whole shards only, no temporary file
    kept = os.stat(shard_path(str(tmp_path / "cut"), 0)).st_mtime_ns
    calls.clear()
    monkeypatch.setattr(shards, "sample", lambda *a, **k: calls.append(a[2][0]) or original(*a, **k))
    sample_shards(SCORE, SDE, (2,), 50, str(tmp_path / "cut"), **KW)
    assert calls == [16, 2]  # only shards 2 and 3 were drawn again
    assert os.stat(shard_path(str(tmp_path / "cut"), 0)).st_mtime_ns == kept
    np.testing.assert_array_equal(read(tmp_path / "cut", 4), whole)


def test_a_sample_does_not_depend_on_the_shard_size(tmp_path):
    sample_shards(SCORE, SDE, (2,), 20, str(tmp_path / "a"), **KW)
    sample_shards(SCORE, SDE, (2,), 20, str(tmp_path / "b"), **{**KW, "shard_size": 7})
    np.testing.assert_array_equal(read(tmp_path / "a", 2), read(tmp_path / "b", 3))


def test_other_settings_are_refused(tmp_path):
    sample_shards(SCORE, SDE, (2,), 20, str(tmp_path), **KW)
    with pytest.raises(ValueError, match=r"other settings \(differs in \['seed'\]"):
        sample_shards(SCORE, SDE, (2,), 20, str(tmp_path), **{**KW, "seed": 4})
    assert json.load(open(tmp_path / "shards.json"))["n"] == 20


def test_processes_split_the_shards_without_changing_a_sample(tmp_path, monkeypatch):
    sample_shards(SCORE, SDE, (2,), 50, str(tmp_path / "one"), **KW)
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    drawn = {}
    for rank in (1, 0):  # as two processes would, each its own shards
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 2))
        before = set(os.listdir(tmp_path / "two")) if (tmp_path / "two").exists() else set()
        sample_shards(SCORE, SDE, (2,), 50, str(tmp_path / "two"), **KW)
        drawn[rank] = sorted(set(os.listdir(tmp_path / "two")) - before - {"shards.json"})
    assert drawn == {1: ["shard_00001.npz", "shard_00003.npz"], 0: ["shard_00000.npz", "shard_00002.npz"]}
    np.testing.assert_array_equal(read(tmp_path / "two", 4), read(tmp_path / "one", 4))


def test_cli_writes_shards(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(TrainConfig(data="moons", n_data=128, width=16, depth=1, batch_size=16, steps=2, sample_every=1000,
                        out_dir=str(run), progress=False)).fit()
    png = tmp_path / "s.png"
    args = ["sample", str(run / "checkpoint.pt"), "--sampler", "ddim", "--steps", "3", "--n", "30", "--shard-size",
            "8", "--out", str(png), "--no-progress"]
    assert main(args) == 0
    assert "30 samples with ddim in 4 shards" in capsys.readouterr().out and png.exists()
    sharded = read(tmp_path / "s_shards", 4)
    assert sharded.shape == (30, 2)
    assert main([*args[:7], "10", "--out", str(tmp_path / "few.png"), "--no-progress"]) == 0  # one batch in memory
    with np.load(tmp_path / "few.npz") as f:
        # sample i is the same in a batch or a shard; a float32 network's matrix products may round differently
        # with the batch size on some BLAS builds, hence 1e-5 rather than bit equality
        np.testing.assert_allclose(f["samples"], sharded[:10], rtol=1e-5, atol=1e-5)
    assert main(args + ["--seed", "1"]) == 2  # same folder, other seed: one-line refusal
    assert "other settings" in capsys.readouterr().err
