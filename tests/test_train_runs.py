"""Training runs as a user meets them: EMA warm-up, checkpoints by wall-clock time and on Ctrl-C, the loss log
across kills and resumes, and settings changed on resume (applied, or refused by name)."""
import csv
import os
import signal

import pytest
import torch

from sgm.train import EMA, CheckpointError, TrainConfig, Trainer, load_checkpoint


def config(out_dir, **kw):
    base = dict(data="moons", n_data=256, width=16, depth=1, batch_size=32, steps=6, checkpoint_every=1000,
                sample_every=1000, n_samples=8, sample_steps=2, warmup=0, lr=1e-3, out_dir=str(out_dir),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def log_rows(out_dir):
    with open(os.path.join(out_dir, "loss.csv"), newline="") as f:
        return list(csv.reader(f))


def test_ema_warmup_forgets_the_initial_weights():
    """Parameters jump from 0 to 1 and stay: after k updates the EMA holds 1 - ∏_j d_j. Without warm-up that is
    1 - 0.999^300 = 0.26; with d_j = min(0.999, (1 + j)/(10 + j)) the product telescopes to ≈ 10!/300^9 ≈ 2e-16,
    so the average is the current weights."""
    net = torch.nn.Linear(3, 1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    plain, warm = EMA(net, 0.999), EMA(net, 0.999, warmup=True)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    for k in range(1, 301):
        plain.update(net, k)
        warm.update(net, k)
    expected_plain = 1 - 0.999**300
    for p in plain.model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected_plain))
    kept = 1.0
    for k in range(1, 301):
        kept *= min(0.999, (1 + k) / (10 + k))
    for p in warm.model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1 - kept))
        assert float(p.min()) > 0.99


def test_trainer_uses_the_ema_warmup_by_default(tmp_path):
    trainer = Trainer(config(tmp_path, steps=3, ema_decay=0.999))
    assert trainer.ema.warmup and trainer.ema.decay_at(1) == pytest.approx(2 / 11)


def test_checkpoint_by_wall_clock_time(tmp_path, monkeypatch):
    """With a fake clock advancing 1 s per reading and checkpoint_minutes = 3/60, a checkpoint is written once
    3 s have passed since the last one, though checkpoint_every is never reached."""
    clock = iter(range(10_000))
    monkeypatch.setattr("sgm.train.time.perf_counter", lambda: float(next(clock)))
    saved = []
    original = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self: (saved.append(self.step), original(self)))
    Trainer(config(tmp_path, steps=6, checkpoint_minutes=3 / 60)).fit()
    assert saved[0] < 6 and saved[-1] == 6


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes_there(tmp_path, monkeypatch):
    original = Trainer.train_step

    def interrupt_at_3(self, *batch):
        out = original(self, *batch)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: arrives during the step
        return out

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path, steps=100)).fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    trainer = Trainer(config(tmp_path, steps=5))
    assert trainer.resume() and trainer.step == 3


def test_loss_log_keeps_its_header_and_its_seconds_across_kills(tmp_path, monkeypatch):
    """A run killed before its first flush leaves an empty loss.csv; the next run writes the header. With a fake
    clock the seconds of a resumed run continue from the last kept row instead of restarting at 0."""
    (tmp_path / "loss.csv").write_text("")
    clock = iter(range(10_000))
    monkeypatch.setattr("sgm.train.time.perf_counter", lambda: float(next(clock)))
    Trainer(config(tmp_path, steps=4)).fit()
    rows = log_rows(tmp_path)
    assert rows[0] == ["step", "loss", "lr", "grad_norm", "seconds"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4]
    Trainer(config(tmp_path, steps=7)).fit()
    rows = log_rows(tmp_path)
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 8))
    seconds = [float(r[-1]) for r in rows[1:]]
    assert all(b > a for a, b in zip(seconds, seconds[1:])), seconds


def test_stale_log_rows_without_a_checkpoint_are_dropped(tmp_path):
    (tmp_path / "loss.csv").write_text("step,loss,lr,grad_norm,seconds\n1,0.5,0.001,1,0.1\n2,0.5,0.001,1,0.2\n")
    Trainer(config(tmp_path, steps=1)).fit()
    assert [int(r[0]) for r in log_rows(tmp_path)[1:]] == [1]


def test_changed_learning_rate_on_resume_is_applied_and_saved(tmp_path):
    Trainer(config(tmp_path, steps=2, lr=1e-3, weight_decay=0.0)).fit()
    trainer = Trainer(config(tmp_path, steps=4, lr=5e-4, weight_decay=0.01))
    assert trainer.resume()
    assert trainer.changed == {"steps": (2, 4), "lr": (1e-3, 5e-4), "weight_decay": (0.0, 0.01)}
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == 5e-4 and group["weight_decay"] == 0.01 and trainer.scheduler.get_last_lr() == [5e-4]
    trainer.fit(resume=False)
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["config"]["lr"] == 5e-4 and state["optimizer"]["param_groups"][0]["lr"] == 5e-4
    assert float(log_rows(tmp_path)[3][2]) == 5e-4  # the logged lr of step 3


def test_a_setting_that_cannot_change_on_resume_is_refused_by_name(tmp_path):
    Trainer(config(tmp_path, steps=2)).fit()
    with pytest.raises(CheckpointError, match="seed 0 -> 1 cannot change on resume"):
        Trainer(config(tmp_path, steps=4, seed=1)).fit()


def test_default_network_is_edm_with_the_datas_std_measured_once(tmp_path):
    data = 3.0 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    trainer = Trainer(config(tmp_path, steps=2), data=data)
    assert trainer.config.prediction == "edm" and trainer.model.sigma_data == pytest.approx(float(data.std()), rel=1e-5)
    trainer.fit()
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["config"]["sigma_data"] == trainer.config.sigma_data
    resumed = Trainer(config(tmp_path, steps=3, sigma_data=None), data=data)  # the run keeps its measured σ_d
    assert resumed.resume() and resumed.model.sigma_data == trainer.config.sigma_data


def test_a_run_made_with_eps_says_how_to_resume_it(tmp_path):
    Trainer(config(tmp_path, steps=1, prediction="eps", weighting="std2")).fit()
    with pytest.raises(CheckpointError, match="prediction='eps' and weighting='std2'"):
        Trainer(config(tmp_path, steps=2)).resume()
