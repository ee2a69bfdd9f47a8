"""Training a score network by denoising score matching: config, trainer, EMA, atomic checkpoints, exact resume.

A run lives in ``config.out_dir``: ``checkpoint.pt`` (model, EMA, optimizer, scheduler, step, RNG states and
the full config), ``loss.csv`` (step, loss, learning rate, gradient norm, seconds), and ``samples/`` (a PNG
grid or scatter every ``sample_every`` steps). Starting the same run again resumes from the checkpoint; on
CPU the resumed run's losses equal the uninterrupted run's, because every random draw (batch indices,
times, noise, dropout) comes from RNG states the checkpoint holds.

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
from .device import resolve_device
from .losses import WEIGHTINGS, dsm_loss
from .nets import MLP, UNet
from .score import PREDICTIONS, ScoreModel
from .sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "CheckpointError", "load_checkpoint", "save_checkpoint",
           "build_sde", "build_net", "build_model", "model_from_checkpoint"]

SDE_CLASSES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, or does not match the run that tries to load it."""


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
                     "depth", "channels", "channel_mult", "num_res_blocks", "attn_levels")
# Keys a resumed run may change: they take effect from the resumed step (lr and weight_decay are written into the
# optimiser). Any other change (the architecture keys, seed, ...) is refused, naming the keys.
RESUMABLE_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "ema_decay", "ema_warmup", "eps",
                  "dropout", "device", "out_dir", "data_path", "n_data", "checkpoint_every", "checkpoint_minutes",
                  "sample_every", "n_samples", "sample_steps", "progress")


def build_sde(config: TrainConfig) -> SDE:
    return SDE_CLASSES[config.sde](**config.sde_args)


def build_net(config: TrainConfig, data_shape: tuple[int, ...]) -> nn.Module:
    kind = config.net if config.net != "auto" else ("mlp" if len(data_shape) == 1 else "unet")
    time_scale = 1000.0 / build_sde(config).T
    if kind == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"net 'mlp' needs vector data, got samples of shape {data_shape}")
        return MLP(data_shape[0], config.width, config.depth, time_scale=time_scale, dropout=config.dropout)
    if len(data_shape) != 3:
        raise ValueError(f"net 'unet' needs images (C, H, W), got samples of shape {data_shape}")
    return UNet(data_shape[0], config.channels, config.channel_mult, config.num_res_blocks, config.attn_levels,
                config.dropout, time_scale=time_scale)


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` atomically: to a temporary file in the same folder, flushed to disk, then renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint, raising ``CheckpointError`` naming the file if it is not a whole sgm checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    needed = {"format", "step", "config", "model", "ema", "optimizer", "scheduler", "rng", "data_shape"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise CheckpointError(f"{path}: not an sgm checkpoint (missing "
                              f"{sorted(needed - set(state if isinstance(state, dict) else ()))})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, expected {FORMAT_VERSION}")
    return state


def model_from_checkpoint(path: str, ema: bool = True, device="cpu") -> tuple[ScoreModel, TrainConfig, tuple]:
    """The score function of a saved run (EMA weights by default), its config and the data shape."""
    device = resolve_device(device)
    state = load_checkpoint(path, map_location=device)
    config = TrainConfig.from_dict(state["config"])
    shape = tuple(state["data_shape"])
    net = build_net(config, shape).to(device)
    try:
        net.load_state_dict(state["ema" if ema else "model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the network its config builds ({err})") from err
    net.eval()
    return build_model(net, config), config, shape


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

    def __init__(self, config: TrainConfig, data: Tensor | None = None):
        self.config = config.validate()
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.data = (data if data is not None else datasets.load_dataset(
            config.data, config.data_path, config.n_data, config.seed, config.image_size)).to(self.device)
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
        self.net = build_net(config, self.data_shape).to(self.device)
        self.model = build_model(self.net, self.config)
        self.ema = EMA(self.net, config.ema_decay, config.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.step = 0
        self.changed: dict = {}  # settings changed on resume: {key: (saved, now)}
        self.autocast = self.device.type == "cuda"
        self.path = os.path.join(config.out_dir, CHECKPOINT)
        self.log_path = os.path.join(config.out_dir, "loss.csv")

    # --- state ----------------------------------------------------------------------------------
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": FORMAT_VERSION, "step": self.step, "config": self.config.to_dict(),
                "data_shape": list(self.data_shape), "model": self.net.state_dict(),
                "ema": self.ema.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng}

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
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"].to("cpu"))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
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
        save_checkpoint(self.path, self.state())

    # --- training -------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One optimiser step on a batch drawn from ``self.generator``; returns ``(loss, gradient norm)``."""
        self.net.train()
        idx = torch.randint(len(self.data), (self.config.batch_size,), generator=self.generator, device=self.device)
        x0 = self.data[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            loss = dsm_loss(self.model, self.sde, x0, weighting=self.config.weighting, eps=self.config.eps,
                            generator=self.generator, sigma_data=self.config.sigma_data)
        if not bool(torch.isfinite(loss)):
            raise TrainingDiverged(f"loss became {loss.item()} at step {self.step + 1}; the last good checkpoint "
                                   f"is {self.path if os.path.exists(self.path) else 'none (none was written yet)'}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.net, self.step + 1)
        self.step += 1
        return loss.item(), grad_norm.item()

    def fit(self, resume: bool = True) -> list[float]:
        """Train from the current step (after resuming, if ``resume``) to ``config.steps``; returns the losses."""
        from .plotting import save_samples

        if resume:
            self.resume()
        os.makedirs(self.config.out_dir, exist_ok=True)
        t0 = time.perf_counter() - self._prepare_log()  # seconds continue across resumes
        losses: list[float] = []
        with open(self.log_path, "a", newline="") as log, tqdm(
                total=self.config.steps, initial=self.step, desc="train", disable=not self.config.progress,
                unit="step") as bar, _deferred_interrupt() as interrupted:
            writer = csv.writer(log)
            saved_at = time.perf_counter()
            while self.step < self.config.steps:
                lr = self.scheduler.get_last_lr()[0]
                loss, grad_norm = self.train_step()
                losses.append(loss)
                now = time.perf_counter()
                writer.writerow([self.step, f"{loss:.8g}", f"{lr:.6g}", f"{grad_norm:.6g}", f"{now - t0:.3f}"])
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
                if self.step % self.config.sample_every == 0 or last:
                    save_samples(self.sample(), os.path.join(self.config.out_dir, "samples",
                                                             f"step_{self.step:07d}.png"), f"step {self.step}")
        return losses

    @torch.no_grad()
    def sample(self, n: int | None = None, sampler: str = "ode", steps: int | None = None, **options) -> Tensor:
        """Samples from the EMA network (default: the probability-flow ODE with Heun's method), drawn from a
        generator of their own so that sampling does not disturb training's random stream."""
        from .samplers import sample as draw

        n = n or self.config.n_samples
        options = options or ({"method": "heun2"} if sampler == "ode" else {})
        model = build_model(self.ema.model, self.config)
        g = torch.Generator(self.device).manual_seed(self.config.seed + 1)
        return draw(model, self.sde, (n,) + self.data_shape, sampler=sampler, steps=steps or self.config.sample_steps,
                    generator=g, device=self.device, dtype=torch.float32, **options).x
