"""Checkpoints cannot run code: pickled objects are refused before they run, through the library and the CLI;
the safetensors export carries the EMA weights and config and samples like the checkpoint it came from."""
import builtins
import os
import subprocess
import sys

import pytest
import torch

import sgm
from sgm.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from sgm.cli import main
from sgm.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code in the checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def malicious_checkpoint(path, marker):
    """A file with every key of a real checkpoint, one of which unpickles to a call."""
    state = {k: 0 for k in ("format", "step", "config", "model", "ema", "optimizer", "scheduler", "rng", "data_shape")}
    state["config"] = {"note": Payload(marker)}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(TrainConfig(data="moons", n_data=256, width=16, depth=1, batch_size=32, steps=4, checkpoint_every=4,
                        sample_every=1000, warmup=0, lr=1e-2, ema_decay=0.5, out_dir=str(out), progress=False)).fit()
    return out


def test_the_payload_would_run_without_weights_only(tmp_path):
    """The test below can fail: loading this file the unsafe way does create the marker."""
    path = malicious_checkpoint(tmp_path / "evil.pt", tmp_path / "ran")
    torch.load(path, weights_only=False)
    assert os.path.exists(tmp_path / "ran")


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    path = malicious_checkpoint(tmp_path / "evil.pt", tmp_path / "ran")
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(CheckpointError, match=f"{path}: refused.*pickled code"):
            load(str(path))
    assert not os.path.exists(tmp_path / "ran")


def test_cli_refuses_pickled_code_in_one_line(tmp_path):
    path = malicious_checkpoint(tmp_path / "evil.pt", tmp_path / "ran")
    done = subprocess.run([sys.executable, "-m", "sgm", "sample", str(path), "--out", str(tmp_path / "s.png"),
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sgm sample: error: {path}: refused"), done.stderr
    assert not os.path.exists(tmp_path / "ran") and not os.path.exists(tmp_path / "s.png")


def test_missing_and_foreign_files_are_named(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "none.pt"), "--no-progress"]) == 2
    assert "none.pt" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(foreign)):
        model_from_checkpoint(str(foreign))
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match=f"{other}: .*not one written by sgm export"):
        model_from_checkpoint(str(other))


def test_export_carries_the_ema_weights_and_config(run, tmp_path, capsys):
    ckpt, out = str(run / "checkpoint.pt"), str(tmp_path / "model.safetensors")
    assert main(["export", ckpt, out]) == 0
    a, cfg_a, shape_a = model_from_checkpoint(ckpt)
    b, cfg_b, shape_b = model_from_checkpoint(out)
    assert cfg_a == cfg_b and shape_a == shape_b == (2,)
    raw = load_checkpoint(ckpt)
    for key, value in raw["ema"].items():
        assert torch.equal(b.net.state_dict()[key], value)
    assert any(not torch.equal(raw["ema"][k], raw["model"][k]) for k in raw["ema"])  # EMA ≠ raw weights here
    x, t = torch.randn(8, 2), torch.rand(8)
    torch.testing.assert_close(a(x, t), b(x, t), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="only the EMA"):
        model_from_checkpoint(out, ema=False)
    png = tmp_path / "s.png"
    assert main(["sample", out, "--sampler", "ddim", "--steps", "3", "--n", "8", "--out", str(png),
                 "--no-progress"]) == 0
    assert png.exists()
    assert main(["export", str(tmp_path / "none.pt"), out]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_checkpoint_is_plain_tensors(run):
    """Everything training needs to resume loads under ``weights_only=True`` (the optimizer's state included)."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["optimizer"]["state"]
    model, _, _ = model_from_checkpoint(str(run / "checkpoint.pt"))
    assert isinstance(model, sgm.ScoreModel)


def test_format_1_checkpoints_still_load_and_unknown_formats_are_named(run, tmp_path):
    state = load_checkpoint(str(run / "checkpoint.pt"))
    old = {**state, "format": 1, "rng": {"torch": torch.get_rng_state()}}  # what format 1 held besides
    torch.save(old, tmp_path / "old.pt")
    model, _, _ = model_from_checkpoint(str(tmp_path / "old.pt"))
    assert isinstance(model, sgm.ScoreModel)
    torch.save({**state, "format": 4}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="new.pt: checkpoint format 4"):
        load_checkpoint(str(tmp_path / "new.pt"))
