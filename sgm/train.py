"""Training a score network by denoising score matching: the trainer, its checkpoints, exact resume.

A run lives in ``config.out_dir``: ``checkpoint.pt`` (model, EMAs, optimizer, scheduler, loss scale, step, the full
config and the data's fingerprint; written and read by ``sgm.checkpoint``, safe to load), ``loss.csv`` (step,
loss, learning rate, gradient norm, seconds), ``samples/`` (a PNG grid or scatter every ``sample_every`` steps)
and, with ``ema_stds`` and ``snapshot_every``, ``snapshots/`` (the power-function EMAs, for ``sgm.ema``'s post-hoc
reconstruction). Every random draw of step ``s`` — batch indices and flips (``sgm.loader``), times, noise,
label dropout, network dropout — comes from streams seeded by ``(seed, s, rank)`` (``sgm.distributed.stream_seed``),
so no RNG state is saved and, on CPU, a resumed run's losses and weights equal the uninterrupted run's.

One optimiser step: this process's part of the global batch (``batch_size / world_size``) is split into
``grad_accumulation`` micro-batches; each one's loss, divided by their number, is back-propagated (under torchrun,
DDP averages the gradients over the processes after the last), so the step equals one step on the whole batch.
The gradient is clipped to ``grad_clip`` in norm; AdamW steps at ``learning_rate(config, k)``; then the EMA
(``sgm.ema.EMA``, with diffusers' warm-up unless ``ema_warmup=False``) and the power-function EMAs update.
The forward pass runs under autocast in ``precision`` (``bf16`` or ``fp16``; ``fp32``: none); ``fp16`` scales the
loss (``torch.amp.GradScaler``), which skips a step whose gradients overflow (its one host sync per step).

The loop never waits for the device between log points: losses and gradient norms stay on it and are read every
``log_every`` steps (and before every checkpoint, snapshot and sample grid), where a non-finite loss stops the run
with ``TrainingDiverged`` naming the first such step — before anything after it is saved.

Checkpoints are written every ``checkpoint_every`` steps, every ``checkpoint_minutes``, at the last step, and on
SIGINT (Ctrl-C), SIGTERM (a scheduler's preemption) or SIGUSR1 (SLURM's warning before a time limit): the step in
progress finishes, the checkpoint is written and ``fit`` raises ``Interrupted``; a second SIGINT or SIGTERM stops at
once. Under torchrun the processes agree on the stop at the next log point. A resumed run applies the settings
that may change (``sgm.config.RESUMABLE_KEYS``), refuses other changes by name, and refuses other data.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import signal
import threading
import time
import warnings

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import data as datasets
from . import distributed
from .board import Board
from .checkpoint import (CHECKPOINT, FORMAT_VERSION, CheckpointError, load_checkpoint, model_from_checkpoint,
                         remove_stale_temporaries, save_checkpoint, write_atomic)
from .config import (ARCHITECTURE_KEYS, RESUMABLE_KEYS, TENSOR_DATA, TrainConfig, build_model, build_net, build_sde,
                     build_time_distribution, make_path)
from .device import resolve_device
from .ema import EMA, SNAPSHOTS, PowerEMA, flatten_parameters
from .loader import InMemory, StepBatches, Streamed
from .losses import LogVariance, denoising_loss, ot_coupling, sample_times

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "Interrupted", "CheckpointError", "EMA", "load_checkpoint",
           "save_checkpoint", "build_sde", "build_net", "build_model", "model_from_checkpoint", "learning_rate",
           "LOG_HEADER"]

LOG_HEADER = ["step", "loss", "lr", "grad_norm", "seconds"]
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal (``signum``) after writing the checkpoint of ``step``."""

    def __init__(self, signum: int, step: int, path: str):
        super().__init__(f"{signal.Signals(signum).name}: stopped at step {step}; checkpoint in {path}")
        self.signum, self.step, self.path = signum, step, path


def learning_rate(config: TrainConfig, k: int) -> float:
    """The learning rate of optimiser step ``k`` (from 1): ``lr·k/warmup`` while ``k ≤ warmup``, then ``lr``
    (``constant``) or a decay from ``lr`` to ``min_lr`` at ``k = steps``: ``linear``, or ``cosine``
    ``min_lr + (lr - min_lr)·½(1 + cos(π p))`` with ``p = (k - warmup)/(steps - warmup)``."""
    if k <= config.warmup:
        return config.lr * k / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    p = min(1.0, (k - config.warmup) / max(config.steps - config.warmup, 1))
    shape = 1 - p if config.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * p))
    return config.min_lr + (config.lr - config.min_lr) * shape


class _Signals:
    """SIGINT, SIGTERM and SIGUSR1 deferred (see the module docstring); outside the main thread, none are."""

    def __init__(self):
        self.received: int = 0
        self.previous: dict = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.received and signum != getattr(signal, "SIGUSR1", None):
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
        self.received = self.received or signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def agreed(self, device: torch.device, sync_point: bool) -> int:
        """The signal to stop on (0: none): this process's; under torchrun, the processes' at log points."""
        if distributed.world()[1] == 1:
            return self.received
        return distributed.max_over_ranks(self.received, device) if sync_point else 0


class Trainer:
    """Denoising score matching on ``config.data`` (or on ``data``, a tensor ``(N, ...)``, with ``labels`` for a
    conditional run); ``fit()`` trains to ``config.steps``, resuming if it can.

    ``self.config`` is the run's own config: ``config`` with what the data decide filled in (``data="tensor"``
    for a given tensor, the measured ``sigma_data``, ``n_classes``); the caller's is left as it was.

    ``noise`` (with ``data``, shaped like it) fixes the coupling: sample ``i`` is always noised by ``noise[i]``
    instead of a fresh draw, ``x_t = α x_0[i] + σ noise[i]`` — reflow's pairs (``sgm.reflow``); the data's
    fingerprint then covers the noise, so a resume on other pairs is refused.
    """

    def __init__(self, config: TrainConfig, data: Tensor | None = None, labels: Tensor | None = None,
                 noise: Tensor | None = None):
        config.validate()
        self.pairs = self._pairs(config, data, noise)
        self.rank, self.world_size = distributed.world()
        if config.batch_size % (self.world_size * config.grad_accumulation):
            raise ValueError(f"batch_size (the global batch) must be a multiple of the {self.world_size} processes × "
                             f"grad_accumulation {config.grad_accumulation}, got {config.batch_size}")
        self.local_batch = config.batch_size // self.world_size
        self.device = distributed.local_device(resolve_device(config.device))
        self.source = self._source(config, data, labels)
        self.fingerprint = self.source.fingerprint()
        if self.pairs is not None:
            self.fingerprint["noise"] = datasets.fingerprint(self.pairs)["sha256"]
        self.data_shape, self.dtype = tuple(self.source.shape), self.source.dtype
        config = config.replace(data=TENSOR_DATA if data is not None else config.data,
                                n_classes=self._class_count(config))
        self._measured_sigma_data = config.sigma_data is None and "edm" in (config.prediction, config.weighting)
        if self._measured_sigma_data:  # saved in the config, so that the checkpoint's model needs no data
            std = self.source.std()
            if not std > 0:
                raise ValueError("the data are constant (std 0): sigma_data cannot be measured from them; set "
                                 "sigma_data (or another prediction and weighting than 'edm')")
            config = config.replace(sigma_data=round(std, 6))
        self.config = config
        self.batches = StepBatches(self.source, self.local_batch, config.seed, self.rank, config.xflip)
        torch.manual_seed(config.seed)
        self.sde = build_sde(config)
        self.net = build_net(config, self.data_shape).to(self.device, self.dtype)
        flatten_parameters(self.net)  # the EMAs then average all weights in one operation each
        # Under torchrun the forward pass goes through DDP, which averages the gradients over the processes.
        self.ddp = self.net if self.world_size == 1 else nn.parallel.DistributedDataParallel(
            self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.ddp) if config.compile else self.ddp
        self.model = build_model(self.forward, config)
        self.ema = EMA(self.net, config.ema_decay, config.ema_warmup)
        self.power_ema = PowerEMA(self.net, config.ema_stds)
        self.times = build_time_distribution(config)
        # EDM2's learned uncertainty: trained with the network, its gradients averaged over the processes by hand
        self.log_variance = (LogVariance(generator=torch.Generator().manual_seed(config.seed))
                             .to(self.device, self.dtype) if config.weighting == "edm2" else None)
        self.trained = list(self.net.parameters()) + ([] if self.log_variance is None else
                                                      list(self.log_variance.parameters()))
        self.optimizer = torch.optim.AdamW(self.trained, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: learning_rate(self.config, k + 1) / self.config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.generator = torch.Generator(self.device)
        self.step = 0
        self.changed: dict = {}  # settings changed on resume: {key: (saved, now)}
        self.path = os.path.join(config.out_dir, CHECKPOINT)
        self.log_path = os.path.join(config.out_dir, "loss.csv")

    @staticmethod
    def _source(config: TrainConfig, data: Tensor | None, labels: Tensor | None):
        """The training set: the given tensor, a streamed image folder, or a named dataset in memory."""
        if data is not None:
            if config.data_path is not None or config.image_size is not None:
                raise ValueError("data_path and image_size do not apply when the data are given as a tensor")
        elif config.data == TENSOR_DATA:
            raise ValueError("data='tensor' is a run trained on a tensor given as Trainer(config, data=...): pass "
                             "the same tensor")
        elif config.data == "folder":
            if config.data_path is None:
                raise ValueError("dataset 'folder' needs a path to its files (data_path)")
            images = datasets.ImageFolder(config.data_path, config.image_size, labels=config.conditional)
            return Streamed(images)
        else:
            data = datasets.load_dataset(config.data, config.data_path, config.n_data, config.seed,
                                         labels=config.conditional)
            data, labels = (data.images, data.labels) if config.conditional else (data, None)
        if not config.conditional:
            if labels is not None:
                raise ValueError("labels given to an unconditional run; set conditional=True")
        elif labels is None:
            raise ValueError("conditional=True needs labels for the data")
        elif (not isinstance(labels, Tensor) or labels.shape != (len(data),) or labels.is_floating_point()
              or int(labels.min()) < 0):
            raise ValueError(f"labels must be non-negative integers of shape ({len(data)},), got "
                             f"{tuple(getattr(labels, 'shape', ()))} {getattr(labels, 'dtype', type(labels).__name__)}")
        return InMemory(data, None if labels is None else labels.long())

    @staticmethod
    def _pairs(config: TrainConfig, data: Tensor | None, noise: Tensor | None) -> Tensor | None:
        """The given noise of each datum (None: drawn each step), checked against the data and the config."""
        if noise is None:
            return None
        if data is None or not isinstance(noise, Tensor) or noise.shape != getattr(data, "shape", None):
            raise ValueError(f"noise must be a tensor shaped like the data tensor given with it "
                             f"{tuple(getattr(data, 'shape', ()))}, got {tuple(getattr(noise, 'shape', ()))}")
        if config.coupling != "independent" or config.xflip:
            raise ValueError(f"noise given with the data is the coupling: it takes coupling='independent' and no "
                             f"xflip, got coupling={config.coupling!r}, xflip={config.xflip}")
        return datasets.check_finite(noise.detach().cpu().to(data.dtype))

    def _class_count(self, config: TrainConfig) -> int:
        """The class count of a conditional run: ``config.n_classes``, or from the labels when it is 0."""
        labels = self.source.labels
        if labels is None:
            return 0
        seen = int(labels.max()) + 1
        if config.n_classes and seen > config.n_classes:
            raise ValueError(f"labels reach {seen - 1}, but n_classes is {config.n_classes}")
        return config.n_classes or seen

    # --- state ----------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"format": FORMAT_VERSION, "step": self.step, "config": self.config.to_dict(),
                "path": {"name": self.config.sde, "params": dict(self.sde.params())},
                "data_shape": list(self.data_shape), "data": self.fingerprint, "model": self.net.state_dict(),
                "ema": self.ema.model.state_dict(), "power_ema": self.power_ema.state_dict(),
                "log_variance": None if self.log_variance is None else self.log_variance.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def resume(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if there is one; ``CheckpointError`` if it belongs to another run or was
        trained on other data."""
        if not os.path.exists(self.path):
            return False
        state = load_checkpoint(self.path, map_location=self.device)
        self.changed = self._config_changes(state)
        self._check_data(state)
        try:
            self.net.load_state_dict(state["model"])
            self.ema.model.load_state_dict(state["ema"])
            if "power_ema" in state:
                self.power_ema.load_state_dict(state["power_ema"])
            if self.log_variance is not None:
                self.log_variance.load_state_dict(state["log_variance"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{self.path}: weights do not fit this run's network ({err})") from err
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._apply_optimiser_settings()
        self.step = int(state["step"])
        return True

    def _config_changes(self, state: dict) -> dict:
        """``{key: (saved, ours)}`` for the settings that differ from the checkpoint's; ``CheckpointError`` naming
        the keys if any of them may not change on resume (``RESUMABLE_KEYS``)."""
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        if self._measured_sigma_data and saved["sigma_data"] is not None:  # measured once, when the run began
            self.config = self.config.replace(sigma_data=saved["sigma_data"])
            self.model.sigma_data = saved["sigma_data"]
        ours = self.config.to_dict()
        if (saved["sde"], saved["sde_args"]) != (ours["sde"], ours["sde_args"]):
            raise CheckpointError(f"{self.path}: trained on the {saved['sde']!r} path "
                                  f"{make_path(saved['sde'], saved['sde_args'])!r}, not the {ours['sde']!r} path "
                                  f"{self.sde!r}; resume with --path {saved['sde']} (and its parameters) or use "
                                  f"another out_dir")
        changed = {k: (saved[k], ours[k]) for k in ours if saved[k] != ours[k]}
        differ = [k for k in ARCHITECTURE_KEYS if k in changed]
        if differ or tuple(state["data_shape"]) != self.data_shape:
            hint = (f" (to resume a run made before 'edm' became the default, set prediction={saved['prediction']!r}"
                    f" and weighting={saved['weighting']!r})" if "prediction" in differ else "")
            raise CheckpointError(f"{self.path}: saved by a different run (differs in "
                                  f"{differ or ['data_shape']}); use another out_dir or remove it{hint}")
        fixed = [k for k in changed if k not in RESUMABLE_KEYS]
        if fixed:
            values = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in fixed)
            raise CheckpointError(f"{self.path}: {values} cannot change on resume; "
                                  f"use the saved value or another out_dir")
        return changed

    def _check_data(self, state: dict) -> None:
        """Refuse to resume on data other than the run's (by fingerprint; checkpoints before format 3 have none)."""
        saved = state.get("data")
        if saved is None or saved == self.fingerprint:
            return
        moved = [f"{k} {a!r} -> {b!r}" for k, (a, b) in self.changed.items() if k in ("data_path", "n_data")]

        def describe(f):
            return f"shape {tuple(f['shape'])} {f['dtype']}, sha256 {f['sha256'][:12]}…"

        raise CheckpointError(f"{self.path}: trained on other data (saved: {describe(saved)}; now: "
                              f"{describe(self.fingerprint)}{'; ' + ', '.join(moved) if moved else ''}); resume on "
                              f"the run's data or use another out_dir")

    def _apply_optimiser_settings(self) -> None:
        """Write this config's lr and weight_decay over those the loaded optimiser and scheduler state hold."""
        self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        lr = learning_rate(self.config, self.scheduler.last_epoch + 1)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = self.config.lr, lr
            group["weight_decay"] = self.config.weight_decay
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _prepare_log(self) -> float:
        """Rewrite ``loss.csv`` as its header and the rows up to the current step (later rows, written after the
        checkpoint, are redone); returns the seconds already spent, from the last kept row."""
        rows = []
        if os.path.exists(self.log_path):
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.reader(f) if r]
        kept = [r for r in rows[1:] if r[0].isdigit() and int(r[0]) <= self.step] if rows[:1] == [LOG_HEADER] else []
        with open(self.log_path, "w", newline="") as f:
            csv.writer(f).writerows([LOG_HEADER] + kept)
            f.flush()
        return float(kept[-1][-1]) if kept else 0.0

    def save(self) -> None:
        """Write the checkpoint (process 0 alone: every process holds the same weights and optimiser state)."""
        if self.rank == 0:
            save_checkpoint(self.path, self.state())

    def save_snapshots(self) -> None:
        """Write the power-function EMAs of this step to ``out_dir/snapshots/`` (process 0)."""
        if self.rank == 0:
            self.power_ema.save_snapshots(os.path.join(self.config.out_dir, SNAPSHOTS), self.step, write_atomic)

    # --- training -------------------------------------------------------------------------------
    def batch(self, data: tuple[Tensor, Tensor | None] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """This process's part of the current step's global batch, ``(x0, t, noise, labels)``: the samples
        (``data``, as ``self.batches`` gives them; drawn here if None) on the device, then times, noise (or the
        samples' given ``noise``) and (for a
        conditional run) the uniforms that replace a label by "no label" with probability ``label_dropout``, from
        ``self.generator`` seeded by ``(seed, step, rank)``; ``labels`` is None for an unconditional run."""
        x0, y = self.batches(self.step) if data is None else data
        x0 = x0.to(self.device, non_blocking=True)
        g = self.generator.manual_seed(distributed.stream_seed(self.config.seed, self.step, self.rank))
        t = sample_times(self.sde, len(x0), self.config.eps, generator=g, device=self.device, dtype=x0.dtype,
                         time_distribution=self.times)[0]
        if self.pairs is None:
            noise = torch.randn(x0.shape, generator=g, device=self.device, dtype=x0.dtype)
        else:  # the step's own indices (the loader's draw), so each datum meets its own noise
            noise = self.pairs[self.batches.draw(self.step)[0]].to(self.device, non_blocking=True)
        if self.config.coupling == "ot":  # over this process's whole part, before any micro-batch split
            noise = ot_coupling(x0, noise)
        if y is None:
            return x0, t, noise, None
        drop = torch.rand(len(x0), generator=g, device=self.device) < self.config.label_dropout
        return x0, t, noise, y.to(self.device, non_blocking=True).masked_fill(drop, self.config.n_classes)

    def train_step(self, data: tuple[Tensor, Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
        """One optimiser step on ``self.batch(data)`` (network dropout seeded by ``(seed, step, rank, 1)``);
        returns the loss averaged over the processes and the gradient norm before clipping, as device tensors."""
        self.net.train()
        torch.manual_seed(distributed.stream_seed(self.config.seed, self.step, self.rank, 1))
        x0, t, noise, y = self.batch(data)
        parts = self.config.grad_accumulation
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for k, (x_k, t_k, n_k) in enumerate(zip(x0.chunk(parts), t.chunk(parts), noise.chunk(parts))):
            score = self.model if y is None else self.model.conditional(y.chunk(parts)[k])
            last = k == parts - 1 or self.ddp is self.net  # DDP averages the gradients in the last backward only
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                with torch.autocast(self.device.type, dtype=AUTOCAST.get(self.config.precision, torch.float32),
                                    enabled=self.config.precision != "fp32"):
                    loss = denoising_loss(score, self.sde, x_k, t=t_k, noise=n_k, weighting=self.config.weighting,
                                          sigma_data=self.config.sigma_data, snr_gamma=self.config.snr_gamma,
                                          log_variance=self.log_variance) / parts
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.log_variance is not None and self.world_size > 1:
            for p in self.log_variance.parameters():
                p.grad = distributed.mean_over_ranks(p.grad)
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.trained, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # a step fp16's scaler skipped makes the scheduler warn: expected
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning)
            self.scheduler.step()
        self.step += 1
        self.ema.update(self.net, self.step)
        self.power_ema.update(self.net, self.step)
        return distributed.mean_over_ranks(total), grad_norm

    def fit(self, resume: bool = True) -> list[float]:
        """Train from the current step (after resuming, if ``resume``) to ``config.steps``; returns the losses."""
        from .plotting import save_samples

        if resume:
            self.resume()
        main = self.rank == 0  # process 0 alone writes the log, the checkpoints and the sample grids
        if main:
            os.makedirs(self.config.out_dir, exist_ok=True)
            remove_stale_temporaries(self.config.out_dir)
        cfg = self.config
        t0 = time.perf_counter() - (self._prepare_log() if main else 0.0)  # seconds continue across resumes
        losses: list[float] = []
        pending: list = []  # (step, lr, loss, grad_norm, seconds) not yet read from the device
        stream = self.batches.stream(self.step, cfg.workers, pin_memory=self.device.type == "cuda")
        with open(self.log_path if main else os.devnull, "a", newline="") as log, tqdm(
                total=cfg.steps, initial=self.step, desc="train", disable=not (cfg.progress and main),
                unit="step") as bar, Board(os.path.join(cfg.out_dir, "tensorboard"), cfg.tensorboard and main,
                                           self.step) as board, _Signals() as signals:
            writer = csv.writer(log)

            def flush():
                """Read the pending losses from the device (the loop's one wait), stop on a non-finite one,
                log them."""
                values = torch.stack([torch.stack([p[2], p[3].to(p[2].dtype)]) for p in pending]).cpu().tolist()
                for (step, lr, _, _, seconds), (loss, grad_norm) in zip(pending, values):
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"loss became {loss} at step {step}; the last good checkpoint is "
                            f"{self.path if os.path.exists(self.path) else 'none (none was written yet)'}")
                    writer.writerow([step, f"{loss:.8g}", f"{lr:.6g}", f"{grad_norm:.6g}", f"{seconds:.3f}"])
                    board.scalars(step, loss=loss, lr=lr, grad_norm=grad_norm)
                    losses.append(loss)
                bar.update(len(pending))
                bar.set_postfix(loss=f"{values[-1][0]:.4f}")
                pending.clear()
                log.flush()

            saved_at = time.perf_counter()
            try:
                while self.step < cfg.steps:
                    lr = self.scheduler.get_last_lr()[0]
                    loss, grad_norm = self.train_step(next(stream))
                    now = time.perf_counter()
                    pending.append((self.step, lr, loss, grad_norm, now - t0))
                    last = self.step == cfg.steps
                    snapshot = cfg.snapshot_every > 0 and (self.step % cfg.snapshot_every == 0 or last)
                    grid = main and (self.step % cfg.sample_every == 0 or last)
                    sync_point = self.step % cfg.log_every == 0 or last or self.step % cfg.checkpoint_every == 0
                    stop = signals.agreed(self.device, sync_point)
                    save = (self.step % cfg.checkpoint_every == 0 or last or stop
                            or (main and now - saved_at >= 60 * cfg.checkpoint_minutes))
                    if sync_point or save or snapshot or grid:
                        flush()
                    if save:
                        self.save()
                        saved_at = now
                    if snapshot:
                        self.save_snapshots()
                    if stop:
                        raise Interrupted(stop, self.step, self.path)
                    if grid:
                        png = os.path.join(cfg.out_dir, "samples", f"step_{self.step:07d}.png")
                        save_samples(self.sample(), png, f"step {self.step}")
                        board.image(self.step, png)
            finally:
                del stream  # stops the workers, if any
        distributed.barrier()  # the last checkpoint is on disk before any process goes on
        return losses

    @torch.no_grad()
    def sample(self, n: int | None = None, sampler: str = "ode", steps: int | None = None, **options) -> Tensor:
        """Samples from the EMA network (default: the probability-flow ODE with Heun's method), drawn from a
        generator of their own so that sampling does not disturb training's random stream."""
        from .samplers import sample as draw

        n = n or self.config.n_samples
        options = options or ({"method": "heun2"} if sampler == "ode" else {})
        model = build_model(self.ema.model, self.config)
        if self.config.conditional:  # a grid of every class in turn
            model = model.conditional(torch.arange(n, device=self.device) % self.config.n_classes)
        g = torch.Generator(self.device).manual_seed(self.config.seed + 1)
        return draw(model, self.sde, (n,) + self.data_shape, sampler=sampler, steps=steps or self.config.sample_steps,
                    generator=g, device=self.device, dtype=self.dtype, **options).x
