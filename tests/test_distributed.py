"""DDP training on 2 CPU processes (gloo): the averaged gradient is the one-process gradient of the global batch,
the processes hold identical weights, one log and one checkpoint are written, and resume is exact."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sgm
from sgm.checkpoint import load_checkpoint
from sgm.cli import main
from sgm.distributed import stream_seed
from sgm.losses import denoising_loss
from sgm.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2


def config(out_dir, **kw):
    base = dict(data="moons", n_data=256, width=16, depth=1, batch_size=8, steps=6, checkpoint_every=3,
                sample_every=1000, n_samples=8, sample_steps=2, warmup=2, lr=1e-2, dropout=0.1, out_dir=str(out_dir),
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def data64():
    """The same data in every process (EDM's σ_d is measured from it)."""
    return sgm.data.toy_2d("moons", 256, generator=torch.Generator().manual_seed(0)).double()


class Crash(Exception):
    pass


def worker(rank, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        # 1. one step's gradient, in float64, without dropout
        trainer = Trainer(config(f"{tmp}/grad", dropout=0.0), data=data64())
        x0, t, noise, _ = trainer.batch()
        denoising_loss(trainer.model, trainer.sde, x0, t=t, noise=noise).backward()
        torch.save({"x0": x0, "t": t, "noise": noise, "grads": [p.grad for p in trainer.net.parameters()]},
                   f"{tmp}/grad_{rank}.pt")
        # 2. an uninterrupted run
        whole = Trainer(config(f"{tmp}/whole"))
        whole.fit()
        torch.save(whole.net.state_dict(), f"{tmp}/whole_{rank}.pt")
        # 3. the same run, crashing on every process before step 5 and started again
        crashing = Trainer(config(f"{tmp}/cut"))
        step = crashing.train_step

        def crash_at_5(*batch):
            if crashing.step == 4:
                raise Crash()
            return step(*batch)

        crashing.train_step = crash_at_5
        try:
            crashing.fit()
        except Crash:
            pass
        dist.barrier()  # as a relaunch would: every process is back before any resumes
        resumed = Trainer(config(f"{tmp}/cut"))
        resumed.fit()
        torch.save(resumed.net.state_dict(), f"{tmp}/cut_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(tmp),), nprocs=WORLD, join=True)
    return tmp


def rows(out_dir):
    with open(os.path.join(out_dir, "loss.csv")) as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def test_averaged_gradient_is_the_global_batch_gradient(runs):
    parts = [torch.load(runs / f"grad_{r}.pt", weights_only=True) for r in range(WORLD)]
    assert not torch.equal(parts[0]["x0"], parts[1]["x0"])  # each process draws its own part
    single = Trainer(config(runs / "single", dropout=0.0), data=data64())
    x0, t, noise = (torch.cat([p[k] for p in parts]) for k in ("x0", "t", "noise"))
    assert x0.shape == (8, 2) and x0.dtype == torch.float64
    denoising_loss(single.model, single.sde, x0, t=t, noise=noise).backward()
    for p, g0, g1 in zip(single.net.parameters(), parts[0]["grads"], parts[1]["grads"]):
        assert torch.equal(g0, g1)  # all-reduced: the same on both processes
        # mean of the two half-batch means = the global mean; float64 rounding is ~1e-16, 1e-10 is far below 1e-6
        torch.testing.assert_close(g0, p.grad, rtol=0, atol=1e-10)
    assert max(float(p.grad.abs().max()) for p in single.net.parameters()) > 1e-3  # not vacuously small


def test_processes_hold_identical_weights_and_rank_0_alone_writes(runs):
    for name in ("whole", "cut"):
        a, b = (torch.load(runs / f"{name}_{r}.pt", weights_only=True) for r in range(WORLD))
        saved = load_checkpoint(str(runs / name / "checkpoint.pt"))
        assert saved["step"] == 6
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], saved["model"][key])
    assert [s for s, _ in rows(runs / "whole")] == [str(s) for s in range(1, 7)]  # one log, not one per process
    assert sorted(os.listdir(runs / "whole")) == ["checkpoint.pt", "loss.csv", "samples"]


def test_interrupted_and_resumed_equals_uninterrupted(runs):
    assert rows(runs / "cut") == rows(runs / "whole")
    a, b = (load_checkpoint(str(runs / d / "checkpoint.pt")) for d in ("whole", "cut"))
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key])


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    shutil.copytree(runs / "whole", tmp_path / "run")
    trainer = Trainer(config(tmp_path / "run", steps=8))
    assert trainer.resume() and trainer.step == 6 and trainer.local_batch == 8
    trainer.fit(resume=False)
    assert [s for s, _ in rows(tmp_path / "run")] == [str(s) for s in range(1, 9)]


def test_streams_and_batch_checks():
    assert stream_seed(0, 1, 0) != stream_seed(0, 0, 1) != stream_seed(0, 1, 1)
    assert stream_seed(3, 5, 1) == stream_seed(3, 5, 1) < 2 ** 63
    with pytest.raises(ValueError, match="stream_seed"):
        stream_seed(0, -1)


def torchrun(*args):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "sgm", *args, "--device", "cpu", "--no-progress"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[:3000] + "\n…\n" + done.stderr[-2000:]  # each rank's first error
    return done.stdout


def test_torchrun_trains_one_run_and_shares_the_sample_shards(tmp_path):
    """The user's commands: two processes train one run (one log of 4 rows, one checkpoint, not 8 rows from
    2 runs), then share the sample shards, which equal the ones one process draws."""
    out = tmp_path / "run"
    stdout = torchrun("train", "--data", "moons", "--width", "16", "--depth", "1", "--batch-size", "8", "--steps",
                      "4", "--sample-every", "1000", "--n-samples", "8", "--sample-steps", "2", "--out-dir", str(out))
    assert stdout.count("starting") == 1 and "×2" in stdout
    assert [s for s, _ in rows(out)] == ["1", "2", "3", "4"]
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 4
    sampling = ["sample", str(out / "checkpoint.pt"), "--sampler", "euler_maruyama", "--steps", "3",
                "--num-samples", "20", "--shard-size", "6"]
    stdout = torchrun(*sampling, "--out", str(tmp_path / "two.png"))
    assert stdout.count("20 samples") == 1
    assert main([*sampling, "--out", str(tmp_path / "one.png"), "--device", "cpu", "--no-progress"]) == 0
    for k in range(4):
        name = f"shard_{k:05d}.npz"
        with np.load(tmp_path / "two_shards" / name) as a, np.load(tmp_path / "one_shards" / name) as b:
            np.testing.assert_array_equal(a["samples"], b["samples"])
