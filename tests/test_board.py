"""TensorBoard logging beside loss.csv: the same scalars at the same steps, the sample figures, and a resumed
run logs each step once."""
import csv
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sgm.train import TrainConfig, Trainer


def config(out_dir, **kw):
    base = dict(data="moons", n_data=128, width=16, depth=1, batch_size=16, steps=4, checkpoint_every=2,
                sample_every=2, n_samples=16, sample_steps=2, out_dir=str(out_dir), progress=False, tensorboard=True)
    return TrainConfig(**{**base, **kw})


def events(out_dir):
    board = EventAccumulator(os.path.join(out_dir, "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    board.Reload()
    return board


class Crash(Exception):
    pass


def test_scalars_and_figures_match_the_log_and_resume_logs_each_step_once(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path))
    original = Trainer.train_step

    def crash_at_4(self, *batch):
        if self.step == 3:
            raise Crash()
        return original(self, *batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_4)
    with pytest.raises(Crash):
        trainer.fit()  # logged steps 1–3; the checkpoint is at step 2
    monkeypatch.setattr(Trainer, "train_step", original)
    Trainer(config(tmp_path, steps=6)).fit()
    with open(tmp_path / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    board = events(tmp_path)
    loss = board.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]  # step 3 of the crashed run purged, logged once again
    for event, row in zip(loss, rows):
        assert event.value == pytest.approx(float(row["loss"]), rel=1e-6)
    assert [e.step for e in board.Scalars("grad_norm")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in board.Images("samples")] == [2, 4, 6]


def test_off_by_default_and_named_when_missing(tmp_path, monkeypatch):
    Trainer(config(tmp_path, tensorboard=False, steps=2)).fit()
    assert not os.path.exists(tmp_path / "tensorboard")
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ValueError, match=r"pip install 'sgm\[tensorboard\]'"):
        Trainer(config(tmp_path / "b", steps=2)).fit()
