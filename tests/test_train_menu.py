"""The training menu: gradient accumulation equal to the large batch, learning-rate schedules against their closed
forms, autocast precisions and fp16 loss scaling, torch.compile, and a loop that reads the device only at log points."""
import csv
import math
import os
import sys

import pytest
import torch

from sgm.checkpoint import load_checkpoint
from sgm.train import TrainConfig, Trainer, learning_rate


def config(out_dir, **kw):
    base = dict(data="moons", n_data=256, width=16, depth=2, batch_size=32, steps=3, sample_every=1000, warmup=0,
                lr=1e-3, out_dir=str(out_dir), progress=False)
    return TrainConfig(**{**base, **kw})


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    """Four micro-batches of 8 against one batch of 32 (the same draws): the summed gradient and the loss agree to
    1e-6; float32 rounding of a sum of four partial means is ~1e-7 of the gradient's scale."""
    grads, losses = {}, {}
    for parts in (1, 4):
        trainer = Trainer(config(tmp_path / str(parts), grad_accumulation=parts))
        trainer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, parts=parts, net=trainer.net: grads.setdefault(
                parts, [p.grad.clone() for p in net.parameters()]) and None)
        losses[parts] = trainer.train_step()[0]
    for a, b in zip(grads[1], grads[4]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert max(float(g.abs().max()) for g in grads[1]) > 1e-2  # not vacuously small
    torch.testing.assert_close(losses[4], losses[1], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="multiple of grad_accumulation=3"):
        config(tmp_path, grad_accumulation=3).validate()


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_learning_rate_schedules_follow_their_closed_forms(schedule, tmp_path):
    cfg = config(tmp_path / schedule, steps=10, warmup=2, lr=1e-2, min_lr=1e-3, lr_schedule=schedule, log_every=3)
    assert learning_rate(cfg, 1) == pytest.approx(5e-3) and learning_rate(cfg, 2) == pytest.approx(1e-2)
    expected = {"constant": lambda p: 1e-2, "linear": lambda p: 1e-3 + 9e-3 * (1 - p),
                "cosine": lambda p: 1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * p))}[schedule]
    for k in range(3, 11):
        assert learning_rate(cfg, k) == pytest.approx(expected((k - 2) / 8), rel=1e-12)
    assert learning_rate(cfg, 10) == pytest.approx(1e-2 if schedule == "constant" else 1e-3)
    Trainer(cfg).fit()  # the optimiser uses them: the logged lr of every step
    with open(tmp_path / schedule / "loss.csv") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged == pytest.approx([learning_rate(cfg, k) for k in range(1, 11)], rel=1e-5)


def test_a_changed_schedule_on_resume_is_applied_from_the_resumed_step(tmp_path):
    Trainer(config(tmp_path, steps=4, warmup=0)).fit()
    trainer = Trainer(config(tmp_path, steps=8, warmup=0, lr_schedule="linear"))
    assert trainer.resume() and trainer.changed["lr_schedule"] == ("constant", "linear")
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(trainer.config, 5))


def capture_dtype(trainer):
    seen = []
    first = next(m for m in trainer.net.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_precision_sets_the_autocast_dtype_and_weights_stay_float32(precision, dtype, tmp_path):
    trainer = Trainer(config(tmp_path, precision=precision, steps=2))
    seen = capture_dtype(trainer)
    trainer.fit()
    assert set(seen) == {dtype} and all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_fp16_skips_a_step_whose_gradients_overflow_and_saves_its_loss_scale(tmp_path):
    trainer = Trainer(config(tmp_path, precision="fp16", steps=2))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # the scaled fp16 gradients overflow
    before = [p.detach().clone() for p in trainer.net.parameters()]
    loss, grad_norm = trainer.train_step()
    assert math.isfinite(float(loss)) and not math.isfinite(float(grad_norm))
    for a, p in zip(before, trainer.net.parameters()):
        assert torch.equal(a, p)  # skipped
    assert trainer.scaler.get_scale() == 2.0**119  # halved: the next step is tried at a lower scale
    trainer.fit(resume=False)
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["scaler"]["scale"] < 2.0**120
    resumed = Trainer(config(tmp_path, precision="fp16", steps=3))
    assert resumed.resume() and resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_compile_trains_the_same_run_and_saves_plain_weights(tmp_path, monkeypatch):
    """``compile=True`` runs the forward pass through ``torch.compile`` (here with its eager backend, which keeps
    the test fast and the arithmetic identical); the checkpoint holds the network's own parameter names."""
    compiled = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or real(m, backend="eager"))
    plain = Trainer(config(tmp_path / "plain")).fit()
    trainer = Trainer(config(tmp_path / "compiled", compile=True))
    assert compiled == [trainer.ddp] and trainer.forward is not trainer.ddp
    assert trainer.fit() == plain
    assert set(load_checkpoint(str(tmp_path / "compiled" / "checkpoint.pt"))["model"]) == set(
        trainer.net.state_dict())


def test_the_loop_reads_the_device_only_at_log_points(tmp_path, monkeypatch):
    """Every way sgm's own code could read a tensor's value on the host (``item``, ``bool``, ``float``, ``int``,
    ``tolist``), counted during 12 steps logged every 4: one read per log point (3), none per step."""
    reads = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            caller = sys._getframe(1).f_code.co_filename
            if os.sep + "sgm" + os.sep in caller and "tests" not in caller:
                reads.append((_name, caller.rsplit(os.sep, 1)[-1], sys._getframe(1).f_lineno))
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer = Trainer(config(tmp_path, steps=12, log_every=4, checkpoint_every=1000))
    monkeypatch.setattr(trainer, "sample", lambda: None)  # the last step's figure reads its samples
    monkeypatch.setattr("sgm.plotting.save_samples", lambda *a, **k: None)
    reads.clear()
    trainer.fit()
    assert [r[0] for r in reads] == ["tolist"] * 3, reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_do_not_synchronise(tmp_path):
    trainer = Trainer(config(tmp_path, device="cuda", precision="bf16", grad_accumulation=2, ema_stds=(0.05,)))
    trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step(trainer.batches(trainer.step))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_training_with_workers_matches_the_cpu_batches(precision, tmp_path):
    trainer = Trainer(config(tmp_path, device="cuda", precision=precision, workers=1, steps=4))
    losses = trainer.fit()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert next(trainer.net.parameters()).device.type == "cuda" and trainer.scaler.is_enabled() == (precision == "fp16")
    stream = trainer.batches.stream(2, workers=1, pin_memory=True)
    pinned = next(stream)[0]
    del stream
    assert pinned.is_pinned() and torch.equal(pinned, trainer.batches(2)[0])
