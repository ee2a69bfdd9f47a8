"""Training: exact resume after a crash, atomic checkpoints, clear errors for bad checkpoints and NaN losses."""
import csv
import os

import pytest
import torch

import sgm
from sgm.train import (CheckpointError, EMA, TrainConfig, Trainer, TrainingDiverged, load_checkpoint,
                       model_from_checkpoint)


def config(out_dir, **kw):
    base = dict(data="moons", n_data=512, width=32, depth=2, batch_size=64, steps=24, checkpoint_every=8,
                sample_every=1000, n_samples=16, sample_steps=4, warmup=5, lr=1e-3, dropout=0.1, out_dir=str(out_dir),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def logged_losses(out_dir):
    with open(os.path.join(out_dir, "loss.csv")) as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


class Crash(Exception):
    pass


def test_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    Trainer(config(tmp_path / "whole")).fit()
    whole = logged_losses(tmp_path / "whole")
    assert [s for s, _ in whole] == list(range(1, 25))

    crashing = Trainer(config(tmp_path / "crashed"))
    original = Trainer.train_step

    def crash_at_19(self, *batch):
        if self.step == 18:
            raise Crash()
        return original(self, *batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_19)
    with pytest.raises(Crash):
        crashing.fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert load_checkpoint(str(tmp_path / "crashed" / "checkpoint.pt"))["step"] == 16
    resumed = Trainer(config(tmp_path / "crashed"))
    resumed.fit()
    assert resumed.step == 24
    assert logged_losses(tmp_path / "crashed") == whole  # rows 17–18 of the crashed run were dropped and redone
    a, b = (load_checkpoint(str(tmp_path / d / "checkpoint.pt")) for d in ("whole", "crashed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key])
        assert torch.equal(a["ema"][key], b["ema"][key])
    assert os.path.exists(tmp_path / "whole" / "samples" / "step_0000024.png")


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path, steps=8))
    trainer.fit()
    path = tmp_path / "checkpoint.pt"
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "loss.csv", "samples"]


def test_corrupt_and_mismatched_checkpoints_are_named(tmp_path):
    Trainer(config(tmp_path, steps=8)).fit()
    with pytest.raises(CheckpointError, match="different run .*width"):
        Trainer(config(tmp_path, steps=16, width=64)).fit()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(path)):
        Trainer(config(tmp_path, steps=16)).fit()
    torch.save({"weights": 1}, path)
    with pytest.raises(CheckpointError, match="not an sgm checkpoint"):
        load_checkpoint(str(path))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """Weights that turn NaN after the checkpoint of step 8: the run stops naming step 9, the first bad loss (read
    only at the next log point), and writes nothing after it."""
    Trainer(config(tmp_path, steps=8)).fit()
    trainer = Trainer(config(tmp_path, steps=16, log_every=4))
    trainer.resume()
    with torch.no_grad():
        next(trainer.net.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 9.*checkpoint.pt"):
        trainer.fit(resume=False)
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 8
    assert [s for s, _ in logged_losses(tmp_path)] == list(range(1, 9))


def test_trained_model_samples_through_the_checkpoint(tmp_path):
    Trainer(config(tmp_path, steps=8)).fit()
    model, cfg, shape = model_from_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert shape == (2,) and cfg.width == 32
    x = sgm.sample(model, sgm.VPSDE(), (10, 2), sampler="ddim", steps=5, generator=torch.Generator().manual_seed(0)).x
    assert x.shape == (10, 2) and bool(torch.isfinite(x).all())


def test_ema_is_the_exponential_average():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.9)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for p_ema, p0 in zip(ema.model.parameters(), start):
        torch.testing.assert_close(p_ema, p0 + 0.1)


@pytest.mark.parametrize("kw,match", [
    ({"data": "imagenet"}, "data must be one of"), ({"sde": "cld"}, "sde must be one of"),
    ({"prediction": "noise"}, "prediction"), ({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
    ({"ema_decay": 1.0}, "ema_decay"), ({"weighting": "snr"}, "weighting"),
])
def test_bad_config(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **kw).validate()
