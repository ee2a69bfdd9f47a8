"""Preemption with real signals: SIGUSR1 (SLURM's warning) and SIGTERM (the kill) each write a checkpoint and end the
process cleanly; kill -9 loses nothing beyond the last checkpoint; the stopped, killed and resumed run equals the
uninterrupted one; temporary files left by a killed writer are cleaned when a run starts."""
import csv
import os
import signal
import subprocess
import sys
import time

import torch

from sgm.checkpoint import load_checkpoint, remove_stale_temporaries
from sgm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--data", "moons", "--n-data", "256", "--width", "16", "--depth", "1", "--batch-size", "32",
        "--checkpoint-every", "5", "--log-every", "1", "--sample-every", "100000", "--no-progress", "--device", "cpu"]


def start(out_dir, steps):
    return subprocess.Popen([sys.executable, "-m", "sgm", "train", *ARGS, "--steps", str(steps), "--out-dir",
                             str(out_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def rows(out_dir):
    try:
        with open(os.path.join(out_dir, "loss.csv"), newline="") as f:
            return [r for r in csv.reader(f)][1:]
    except FileNotFoundError:
        return []


def after_rows(process, out_dir, n, sig):
    """Send ``sig`` once the run has logged ``n`` rows; its exit status, stderr and the last logged step."""
    deadline = time.monotonic() + 300  # generous: a loaded machine starts python slowly
    while len(rows(out_dir)) < n:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run logged too few rows"
        time.sleep(0.02)
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    return process.returncode, err, int(rows(out_dir)[-1][0])


def test_signals_checkpoint_and_stop_and_the_run_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    code, err, logged = after_rows(start(out, 100_000), out, 3, signal.SIGUSR1)
    assert code == 128 + signal.SIGUSR1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"SIGUSR1: stopped at step {logged}" in err and "run the same command to resume" in err
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == logged  # nothing lost
    first = logged

    code, err, logged = after_rows(start(out, 100_000), out, first + 3, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "SIGTERM: stopped at step" in err and err.count("\n") == 1, err
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == logged > first

    code, _, killed_at = after_rows(start(out, 100_000), out, logged + 8, signal.SIGKILL)
    assert code == -signal.SIGKILL
    kept = load_checkpoint(str(out / "checkpoint.pt"))["step"]  # readable, whatever the moment of the kill
    assert kept % 5 == 0 and killed_at - 5 <= kept <= killed_at  # at most the steps since the last checkpoint

    steps = killed_at + 4  # the resume needs no signal, so no process of its own (one interpreter start less)
    assert main(["train", *ARGS, "--steps", str(steps), "--out-dir", str(out)]) == 0
    assert not [f for f in os.listdir(out) if ".tmp-" in f]
    assert main(["train", *ARGS, "--steps", str(steps), "--out-dir", str(tmp_path / "whole")]) == 0  # uninterrupted
    assert [r[:4] for r in rows(out)] == [r[:4] for r in rows(tmp_path / "whole")]  # step, loss, lr, grad norm
    assert len(rows(out)) == steps  # each step once
    a, b = (load_checkpoint(str(d / "checkpoint.pt")) for d in (out, tmp_path / "whole"))
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key])


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "snapshots").mkdir()
    stale = [tmp_path / f"checkpoint.pt.tmp-{gone.pid}", tmp_path / "snapshots" / f"x.safetensors.tmp-{gone.pid}",
             tmp_path / f"checkpoint.pt.tmp-{os.getpid()}"]  # our own pid: left by an earlier process that had it
    live = tmp_path / f"checkpoint.pt.tmp-{os.getppid()}"
    for path in stale + [live]:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp-x").write_text("not ours")
    assert sorted(remove_stale_temporaries(str(tmp_path))) == sorted(str(p) for p in stale)
    assert live.exists() and (tmp_path / "notes.tmp-x").exists() and not any(p.exists() for p in stale)
