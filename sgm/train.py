"""Training a score network by denoising score matching: config, trainer, EMA, atomic checkpoints, exact resume.

A run lives in ``config.out_dir``: ``checkpoint.pt`` (model, EMA, optimizer, scheduler, step and the full
config; written and read by ``sgm.checkpoint``, safe to load), ``loss.csv`` (step, loss, learning rate,
gradient norm, seconds), and ``samples/`` (a PNG grid or scatter every ``sample_every`` steps). Starting the
same run again resumes from the checkpoint; on CPU the resumed run's losses equal the uninterrupted run's,
because every random draw of step ``s`` (batch indices, times, noise, dropout) comes from streams seeded by
``(seed, s, rank)`` (``sgm.distributed.stream_seed``), so no RNG state needs saving.

Under ``torchrun --nproc_per_node N`` the network is wrapped in DistributedDataParallel: each process draws
``batch_size / N`` samples of the global batch from its own streams, DDP averages the gradients (so the step
equals one process's step on the whole global batch), and process 0 alone writes the checkpoint, the log
and the sample grids. A checkpoint resumes under any number of processes.

The optimiser is AdamW with linear warm-up over ``warmup`` steps, gradients clipped to ``grad_clip`` in
norm, and the EMA ``θ̄ ← d_k θ̄ + (1 - d_k) θ`` at step ``k`` with the warm-up ``d_k = min(ema_decay, (1 + k)/(10 + k))``
(the average forgets the initial weights within the first steps; ``ema_warmup=False``: ``d_k = ema_decay``). On
CUDA the forward pass runs under bf16 autocast; on CPU in float32.

Checkpoints are written every ``checkpoint_every`` steps, every ``checkpoint_minutes`` of wall-clock time, at the
last step, and when the run is interrupted (Ctrl-C / SIGINT, after the step in progress). Resuming with changed
settings applies those in ``RESUMABLE_KEYS`` (the new config is the one saved) and refuses any other change.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import data as datasets
from . import distributed
from .board import Board
from .checkpoint import (CHECKPOINT, FORMAT_VERSION, CheckpointError, load_checkpoint, model_from_checkpoint,
                         save_checkpoint)
from .device import resolve_device
from .losses import WEIGHTINGS, denoising_loss, sample_times
from .nets import MLP, UNet
from .score import PREDICTIONS, ScoreModel
from .paths import SDE, CosineVPSDE, EDMPath, RectifiedFlow, SubVPSDE, VESDE, VPSDE

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "CheckpointError", "load_checkpoint", "save_checkpoint",
           "build_sde", "build_net", "build_model", "model_from_checkpoint"]

# The one table of path names (the CLI's --sde choices read it).
SDE_CLASSES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineVPSDE, "edm": EDMPath,
               "rectified-flow": RectifiedFlow}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    # data
    data: str = "moons"
    data_path: str | None = None
    image_size: int | None = None
    n_data: int = 50_000
    # model
    sde: str = "vp"
    sde_args: dict = field(default_factory=dict)
    prediction: str = "edm"  # EDM preconditioning: see sgm.score and docs/training.md
    weighting: str = "edm"
    sigma_data: float | None = None  # σ_d of "edm"; None: the training data's std, measured at the start
    eps: float = 1e-5
    net: str = "auto"  # "mlp" for vectors, "unet" for images
    width: int = 256
    depth: int = 4
    channels: int = 64
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 2
    attn_levels: tuple = (1,)
    dropout: float = 0.0
    # class-conditional training: labels from the dataset; each label replaced by "no label" with probability
    # label_dropout (the unconditional model of classifier-free guidance); n_classes is recorded from the data
    conditional: bool = False
    label_dropout: float = 0.1
    n_classes: int = 0
    # optimisation
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    device: str = "auto"
    # outputs
    out_dir: str = "runs/default"
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 10.0
    sample_every: int = 1000
    n_samples: int = 64
    sample_steps: int = 50
    progress: bool = True
    tensorboard: bool = False  # also log to out_dir/tensorboard (pip install 'sgm[tensorboard]')

    def validate(self) -> "TrainConfig":
        if self.data not in datasets.DATASETS:
            raise ValueError(f"data must be one of {datasets.DATASETS}, got {self.data!r}")
        if self.sde not in SDE_CLASSES:
            raise ValueError(f"sde must be one of {sorted(SDE_CLASSES)}, got {self.sde!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.net not in ("auto", "mlp", "unet"):
            raise ValueError(f"net must be 'auto', 'mlp' or 'unet', got {self.net!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "n_samples", "sample_steps", "n_data"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.sigma_data is not None and not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0 or None (the data's std), got {self.sigma_data!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")
        if not isinstance(self.conditional, bool):
            raise ValueError(f"conditional must be a bool, got {self.conditional!r}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout!r}")
        if self.warmup < 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ValueError("warmup and weight_decay must be >= 0 and dropout in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        values = dict(values)
        for key in ("channel_mult", "attn_levels"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# Keys that fix the shapes of the saved tensors or the meaning of the loss: a resumed run must agree on them.
ARCHITECTURE_KEYS = ("data", "image_size", "sde", "sde_args", "prediction", "weighting", "sigma_data", "net", "width",
                     "depth", "channels", "channel_mult", "num_res_blocks", "attn_levels", "conditional", "n_classes")
# Keys a resumed run may change: they take effect from the resumed step (lr and weight_decay are written into the
# optimiser). Any other change (the architecture keys, seed, ...) is refused, naming the keys.
RESUMABLE_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "ema_decay", "ema_warmup", "eps",
                  "dropout", "device", "out_dir", "data_path", "n_data", "checkpoint_every", "checkpoint_minutes",
                  "sample_every", "n_samples", "sample_steps", "progress", "tensorboard")


def build_sde(config: TrainConfig) -> SDE:
    return SDE_CLASSES[config.sde](**config.sde_args)


def build_net(config: TrainConfig, data_shape: tuple[int, ...]) -> nn.Module:
    kind = config.net if config.net != "auto" else ("mlp" if len(data_shape) == 1 else "unet")
    time_scale = 1000.0 / build_sde(config).T
    if kind == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"net 'mlp' needs vector data, got samples of shape {data_shape}")
        return MLP(data_shape[0], config.width, config.depth, time_scale=time_scale, dropout=config.dropout,
                   n_classes=config.n_classes)
    if len(data_shape) != 3:
        raise ValueError(f"net 'unet' needs images (C, H, W), got samples of shape {data_shape}")
    return UNet(data_shape[0], config.channels, config.channel_mult, config.num_res_blocks, config.attn_levels,
                config.dropout, time_scale=time_scale, n_classes=config.n_classes)


def build_model(net: nn.Module, config: TrainConfig) -> ScoreModel:
    """The score function of ``net`` as the config's SDE and parameterisation define it."""
    return ScoreModel(net, build_sde(config), config.prediction, sigma_data=config.sigma_data)


class EMA:
    """``θ̄ ← d θ̄ + (1 - d) θ`` over a model's parameters (buffers copied).

    With ``warmup`` the decay at optimiser step ``k`` (counted from 1) is ``min(decay, (1 + k)/(10 + k))``, the
    warm-up of diffusers' ``EMAModel``: after ``k`` steps the initial weights keep a share ``∏ d_j`` that is
    ≈ 0 within the first steps instead of ``decay^k`` (0.74 after 300 steps at 0.999).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup, self.model = decay, warmup, copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        return self.decay if step is None or not self.warmup else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - self.decay_at(step))
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


LOG_HEADER = ["step", "loss", "lr", "grad_norm", "seconds"]


@contextlib.contextmanager
def _deferred_interrupt():
    """Within the block, a first SIGINT (Ctrl-C) only appends to the yielded list, so the loop can finish its step
    and write a checkpoint before stopping; a second one stops at once. Outside the main thread, a no-op."""
    flag: list = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag:
            raise KeyboardInterrupt
        flag.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """Denoising score matching on ``config.data``; ``fit()`` trains to ``config.steps``, resuming if it can."""

    def __init__(self, config: TrainConfig, data: Tensor | None = None, labels: Tensor | None = None):
        self.config = config.validate()
        self.rank, self.world_size = distributed.world()
        if config.batch_size % self.world_size:
            raise ValueError(f"batch_size (the global batch) must be a multiple of the {self.world_size} processes, "
                             f"got {config.batch_size}")
        self.local_batch = config.batch_size // self.world_size
        self.device = distributed.local_device(resolve_device(config.device))
        torch.manual_seed(config.seed)
        if data is None:
            data = datasets.load_dataset(config.data, config.data_path, config.n_data, config.seed, config.image_size,
                                         labels=config.conditional)
            data, labels = data if config.conditional else (data, None)
        self.data = data.to(self.device)
        self.labels = self._labels(labels)
        if self.data.dim() < 2 or len(self.data) < 2:
            raise ValueError(f"data must hold at least 2 samples of shape (N, ...), got {tuple(self.data.shape)}")
        self.data_shape = tuple(self.data.shape[1:])
        self._measured_sigma_data = self.config.sigma_data is None and "edm" in (config.prediction, config.weighting)
        if self._measured_sigma_data:
            # saved in the config, so that the checkpoint's model needs no data (0.5 if the data are not finite:
            # the first loss then stops the run with TrainingDiverged)
            std = float(self.data.float().std())
            self.config = dataclasses.replace(self.config, sigma_data=round(std, 6) if std > 0 and math.isfinite(std)
                                              else 0.5)
        self.sde = build_sde(config)
        self.net = build_net(config, self.data_shape).to(self.device, self.data.dtype)
        # Under torchrun the forward pass goes through DDP, which averages the gradients over the processes.
        self.ddp = self.net if self.world_size == 1 else nn.parallel.DistributedDataParallel(
            self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = build_model(self.ddp, self.config)
        self.ema = EMA(self.net, config.ema_decay, config.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
        self.generator = torch.Generator(self.device)
        self.step = 0
        self.changed: dict = {}  # settings changed on resume: {key: (saved, now)}
        self.autocast = self.device.type == "cuda"
        self.path = os.path.join(config.out_dir, CHECKPOINT)
        self.log_path = os.path.join(config.out_dir, "loss.csv")

    def _labels(self, labels: Tensor | None) -> Tensor | None:
        """The class labels of a conditional run (their count recorded as ``config.n_classes``)."""
        if not self.config.conditional:
            if labels is not None:
                raise ValueError("labels given to an unconditional run; set conditional=True")
            return None
        if labels is None:
            raise ValueError("conditional=True needs labels for the data")
        if labels.shape != (len(self.data),) or labels.is_floating_point() or int(labels.min()) < 0:
            raise ValueError(f"labels must be non-negative integers of shape ({len(self.data)},), got "
                             f"{tuple(labels.shape)} {labels.dtype}")
        self.config.n_classes = int(labels.max()) + 1
        return labels.long().to(self.device)

    # --- state ----------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"format": FORMAT_VERSION, "step": self.step, "config": self.config.to_dict(),
                "data_shape": list(self.data_shape), "model": self.net.state_dict(),
                "ema": self.ema.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def resume(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if there is one; ``CheckpointError`` if it belongs to another run."""
        if not os.path.exists(self.path):
            return False
        state = load_checkpoint(self.path, map_location=self.device)
        self.changed = self._config_changes(state)
        try:
            self.net.load_state_dict(state["model"])
            self.ema.model.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{self.path}: weights do not fit this run's network ({err})") from err
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_optimiser_settings()
        self.step = int(state["step"])
        return True

    def _config_changes(self, state: dict) -> dict:
        """``{key: (saved, ours)}`` for the settings that differ from the checkpoint's; ``CheckpointError`` naming
        the keys if any of them may not change on resume (``RESUMABLE_KEYS``)."""
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        if self._measured_sigma_data and saved["sigma_data"] is not None:  # measured once, when the run began
            self.config = dataclasses.replace(self.config, sigma_data=saved["sigma_data"])
            self.model.sigma_data = saved["sigma_data"]
        ours = self.config.to_dict()
        changed = {k: (saved[k], ours[k]) for k in ours if saved[k] != ours[k]}
        differ = [k for k in ARCHITECTURE_KEYS if k in changed]
        if differ or tuple(state["data_shape"]) != self.data_shape:
            hint = (f" (to resume a run made before 'edm' became the default, set prediction={saved['prediction']!r}"
                    f" and weighting={saved['weighting']!r})" if "prediction" in differ else "")
            raise CheckpointError(f"{self.path}: saved by a different run (differs in "
                                  f"{differ or ['data_shape']}); use another out_dir or remove it{hint}")
        fixed = [k for k in changed if k not in RESUMABLE_KEYS]
        if fixed:
            raise CheckpointError(f"{self.path}: {', '.join(f'{k} {changed[k][0]!r} -> {changed[k][1]!r}' for k in fixed)}"
                                  f" cannot change on resume; use the saved value or another out_dir")
        return changed

    def _apply_optimiser_settings(self) -> None:
        """Write this config's lr and weight_decay over those the loaded optimiser and scheduler state hold."""
        self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = self.config.lr, self.config.lr * factor
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

    # --- training -------------------------------------------------------------------------------
    def batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """This process's part of the next step's global batch, ``(x0, t, noise, labels)``: ``batch_size /
        world_size`` data indices, then times, then noise, then (conditional runs) the uniforms that replace a
        label by "no label" with probability ``label_dropout``, from ``self.generator`` seeded by
        ``(seed, step, rank)``; ``labels`` is None for an unconditional run."""
        g = self.generator.manual_seed(distributed.stream_seed(self.config.seed, self.step, self.rank))
        idx = torch.randint(len(self.data), (self.local_batch,), generator=g, device=self.device)
        x0 = self.data[idx]
        t = sample_times(self.sde, self.local_batch, self.config.eps, generator=g, device=self.device,
                         dtype=x0.dtype)[0]
        noise = torch.randn(x0.shape, generator=g, device=self.device, dtype=x0.dtype)
        if self.labels is None:
            return x0, t, noise, None
        drop = torch.rand(idx.shape, generator=g, device=self.device) < self.config.label_dropout
        return x0, t, noise, self.labels[idx].masked_fill(drop, self.config.n_classes)

    def train_step(self) -> tuple[float, float]:
        """One optimiser step on ``self.batch()`` (dropout seeded by ``(seed, step, rank, 1)``); returns the loss
        averaged over the processes and the gradient norm before clipping."""
        self.net.train()
        torch.manual_seed(distributed.stream_seed(self.config.seed, self.step, self.rank, 1))
        x0, t, noise, y = self.batch()
        score = self.model if y is None else self.model.conditional(y)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            loss = denoising_loss(score, self.sde, x0, t=t, noise=noise, weighting=self.config.weighting,
                                  sigma_data=self.config.sigma_data)
        mean_loss = distributed.mean_over_ranks(loss.detach())  # every process takes the same decision below
        if not bool(torch.isfinite(mean_loss)):
            raise TrainingDiverged(f"loss became {mean_loss.item()} at step {self.step + 1}; the last good checkpoint "
                                   f"is {self.path if os.path.exists(self.path) else 'none (none was written yet)'}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.net, self.step + 1)
        self.step += 1
        return mean_loss.item(), grad_norm.item()

    def fit(self, resume: bool = True) -> list[float]:
        """Train from the current step (after resuming, if ``resume``) to ``config.steps``; returns the losses."""
        from .plotting import save_samples

        if resume:
            self.resume()
        os.makedirs(self.config.out_dir, exist_ok=True)
        main = self.rank == 0  # process 0 alone writes the log and the sample grids
        t0 = time.perf_counter() - (self._prepare_log() if main else 0.0)  # seconds continue across resumes
        losses: list[float] = []
        with open(self.log_path if main else os.devnull, "a", newline="") as log, tqdm(
                total=self.config.steps, initial=self.step, desc="train", disable=not (self.config.progress and main),
                unit="step") as bar, Board(os.path.join(self.config.out_dir, "tensorboard"),
                                           self.config.tensorboard and main, self.step) as board, \
                _deferred_interrupt() as interrupted:
            writer = csv.writer(log)
            saved_at = time.perf_counter()
            while self.step < self.config.steps:
                lr = self.scheduler.get_last_lr()[0]
                loss, grad_norm = self.train_step()
                losses.append(loss)
                now = time.perf_counter()
                writer.writerow([self.step, f"{loss:.8g}", f"{lr:.6g}", f"{grad_norm:.6g}", f"{now - t0:.3f}"])
                board.scalars(self.step, loss=loss, lr=lr, grad_norm=grad_norm)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                last = self.step == self.config.steps
                if (self.step % self.config.checkpoint_every == 0 or last or interrupted
                        or now - saved_at >= 60 * self.config.checkpoint_minutes):
                    log.flush()
                    self.save()
                    saved_at = now
                if interrupted:
                    raise KeyboardInterrupt(f"interrupted; checkpoint at step {self.step} in {self.path}")
                if main and (self.step % self.config.sample_every == 0 or last):
                    png = os.path.join(self.config.out_dir, "samples", f"step_{self.step:07d}.png")
                    save_samples(self.sample(), png, f"step {self.step}")
                    board.image(self.step, png)
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
        if self.labels is not None:  # a grid of every class in turn
            model = model.conditional(torch.arange(n, device=self.device) % self.config.n_classes)
        g = torch.Generator(self.device).manual_seed(self.config.seed + 1)
        return draw(model, self.sde, (n,) + self.data_shape, sampler=sampler, steps=steps or self.config.sample_steps,
                    generator=g, device=self.device, dtype=self.data.dtype, **options).x
