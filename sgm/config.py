"""A training run's settings in one place: ``TrainConfig``, the table of path names, and the factories that turn
a config into the path, the network and the score model.

Every ``TrainConfig`` field carries its metadata — the help text, the accepted values (``choices``, or a range
``low``/``high``), and what a resumed run may do with it (``resume``):

- ``"apply"``: may change on resume; the new value takes effect from the resumed step and is saved;
- ``"fixed"``: the run's identity (seed, the EMA profiles tracked); a change is refused by name;
- ``"architecture"``: fixes the saved tensors' shapes or the loss's meaning; a change means another run.

``validate`` checks every field from that metadata, and ``sgm train``'s flags are generated from it
(``sgm.cli``), so the command line and the config cannot drift apart.

``PATHS`` maps a name to the path class and the constructor parameters a config may set (``sde_args``); adding a
path is one line there.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from . import data as datasets
from .losses import COUPLINGS, MIN_SNR_GAMMA, TIME_DISTRIBUTIONS, WEIGHTINGS, LogitNormal, LogNormal
from .nets import MLP, UNet
from .score import PREDICTIONS, ScoreModel
from .paths import SDE, CosineVPSDE, EDMPath, RectifiedFlow, SubVPSDE, VESDE, VPSDE

__all__ = ["TrainConfig", "PATHS", "PathEntry", "make_path", "build_sde", "build_net", "build_model",
           "build_time_distribution", "path_parameters", "ARCHITECTURE_KEYS", "RESUMABLE_KEYS", "PRECISIONS",
           "LR_SCHEDULES", "NETS", "TENSOR_DATA", "MAX_EMA_STD"]


class PathEntry(NamedTuple):
    cls: type
    params: tuple[str, ...]  # the constructor's keyword parameters a config may set (``sde_args``)


PATHS: dict[str, PathEntry] = {
    "vp": PathEntry(VPSDE, ("beta_min", "beta_max")),
    "subvp": PathEntry(SubVPSDE, ("beta_min", "beta_max")),
    "ve": PathEntry(VESDE, ("sigma_min", "sigma_max")),
    "cosine": PathEntry(CosineVPSDE, ()),
    "edm": PathEntry(EDMPath, ("sigma_min", "sigma_max")),
    "rectified-flow": PathEntry(RectifiedFlow, ("shift",)),
}

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "linear", "cosine")
NETS = ("auto", "mlp", "unet")
TENSOR_DATA = "tensor"  # the recorded ``data`` of a run trained on a tensor given to ``Trainer(config, data=...)``
MAX_EMA_STD = 0.28  # a power-function EMA's relative std peaks at 0.300 (exponent -0.38); EDM2 sweeps up to 0.25


def path_parameters() -> dict[str, list[tuple[str, Any]]]:
    """``{parameter: [(path, its default), ...]}`` over ``PATHS``: what ``sde_args`` may hold."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for name, entry in PATHS.items():
        signature = inspect.signature(entry.cls)
        for param in entry.params:
            out.setdefault(param, []).append((name, signature.parameters[param].default))
    return out


def _opt(default, help: str, *, resume: str = "apply", choices: Callable[[], tuple] | tuple | None = None,
         low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False,
         cli: bool = True, flag: str | None = None):
    """A config field with its metadata (see the module docstring); ``low``/``high`` bound numbers and each element
    of a tuple, open at an end where ``open_low``/``open_high``; ``flag``: a second spelling of its CLI flag."""
    meta = dict(help=help, resume=resume, choices=choices, low=low, high=high, open_low=open_low,
                open_high=open_high, cli=cli, flag=flag)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _datasets() -> tuple:
    return datasets.DATASETS


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (see each field's ``help``); immutable: derive a new one with
    ``dataclasses.replace`` or ``config.replace(**changes)``."""

    # data
    data: str = _opt("moons", "dataset", resume="architecture", choices=_datasets)
    data_path: str | None = _opt(None, "folder of the mnist / cifar10 / folder data (a change is checked against "
                                       "the data's fingerprint)")
    image_size: int | None = _opt(None, "resize folder images to this size (folder data only)", low=1,
                                  resume="architecture")
    n_data: int = _opt(50_000, "how many points of a generated 2-D set", low=1)
    xflip: bool = _opt(False, "flip each image left-right with probability 1/2 (images only)")
    workers: int = _opt(0, "data-loading worker processes (0: in the training process)", low=0)
    # path and parameterisation
    sde: str = _opt("vp", "forward path (noise schedule); also --path", resume="architecture",
                    choices=lambda: tuple(PATHS), flag="--path")
    sde_args: dict = _opt({}, "the path's constructor parameters", resume="architecture", cli=False)
    prediction: str = _opt("edm", "what the network predicts (edm: EDM's preconditioning)", resume="architecture",
                           choices=PREDICTIONS)
    weighting: str = _opt("edm", "loss weighting (sgm.losses: the DSM λ(t); edm2 learns a log-variance too)",
                          resume="architecture", choices=WEIGHTINGS)
    snr_gamma: float = _opt(MIN_SNR_GAMMA, "γ of --weighting min_snr / soft_min_snr", resume="fixed", low=0,
                            open_low=True)
    time_distribution: str = _opt("uniform", "training times: uniform on (eps, T), logit_normal (SD3), log_normal "
                                             "(EDM: ln σ̃ ~ N(p_mean, p_std²))", resume="fixed",
                                  choices=lambda: tuple(TIME_DISTRIBUTIONS))
    p_mean: float = _opt(LogNormal.p_mean, "mean of ln σ̃ for --time-distribution log_normal", resume="fixed")
    p_std: float = _opt(LogNormal.p_std, "std of ln σ̃ for --time-distribution log_normal", resume="fixed", low=0,
                        open_low=True)
    logit_mean: float = _opt(LogitNormal.mean, "mean of logit(t) for --time-distribution logit_normal",
                             resume="fixed")
    logit_std: float = _opt(LogitNormal.std, "std of logit(t) for --time-distribution logit_normal", resume="fixed",
                            low=0, open_low=True)
    coupling: str = _opt("independent", "pairing of data and noise in a batch (ot: minibatch optimal transport, "
                                        "OT-CFM; solved on the CPU)", resume="fixed", choices=COUPLINGS)
    sigma_data: float | None = _opt(None, "σ_d of --prediction edm / --weighting edm (default: the training data's "
                                          "std, measured when the run begins)", resume="architecture", low=0,
                                    open_low=True)
    eps: float = _opt(1e-5, "smallest training time: t ~ U(eps, T)", low=0, high=1, open_low=True, open_high=True)
    # network
    net: str = _opt("auto", "network (auto: mlp for vectors, unet for images)", resume="architecture", choices=NETS)
    width: int = _opt(256, "MLP width", resume="architecture", low=1)
    depth: int = _opt(4, "MLP residual blocks", resume="architecture", low=1)
    channels: int = _opt(64, "U-Net base channels", resume="architecture", low=1)
    channel_mult: tuple[int, ...] = _opt((1, 2, 2), "U-Net channel multipliers per level, e.g. 1,2,2",
                                         resume="architecture", low=1)
    num_res_blocks: int = _opt(2, "U-Net residual blocks per level", resume="architecture", low=1)
    attn_levels: tuple[int, ...] = _opt((1,), "U-Net levels with self-attention, e.g. 1 (empty: none)",
                                        resume="architecture", low=0)
    dropout: float = _opt(0.0, "dropout rate", low=0, high=1, open_high=True)
    # class-conditional training: labels from the dataset; each replaced by "no label" with probability
    # label_dropout (the unconditional model of classifier-free guidance); n_classes is recorded from the labels
    conditional: bool = _opt(False, "class-conditional training on the dataset's labels", resume="architecture")
    label_dropout: float = _opt(0.1, "rate of training without the label (for classifier-free guidance)", low=0,
                                high=1, open_high=True)
    n_classes: int = _opt(0, "class count (0: from the labels)", resume="architecture", low=0, cli=False)
    # optimisation
    steps: int = _opt(10_000, "training steps", low=1)
    batch_size: int = _opt(256, "global batch size (split over torchrun's processes and --grad-accumulation)",
                           low=1)
    grad_accumulation: int = _opt(1, "micro-batches per optimiser step (their gradients summed: the step equals "
                                     "one on the whole batch)", low=1)
    lr: float = _opt(2e-4, "peak learning rate", low=0, open_low=True)
    lr_schedule: str = _opt("constant", "learning-rate decay after the warm-up, to --min-lr at the last step",
                            choices=LR_SCHEDULES)
    min_lr: float = _opt(0.0, "learning rate at the last step of a linear or cosine decay", low=0)
    weight_decay: float = _opt(0.0, "AdamW weight decay", low=0)
    warmup: int = _opt(200, "linear learning-rate warm-up steps", low=0)
    grad_clip: float = _opt(1.0, "gradient-norm clip", low=0, open_low=True)
    precision: str = _opt("fp32", "autocast precision of the forward pass (fp16 with loss scaling)",
                          choices=PRECISIONS)
    compile: bool = _opt(False, "compile the network with torch.compile")
    ema_decay: float = _opt(0.999, "decay of the EMA the samples are drawn from", low=0, high=1, open_high=True)
    ema_warmup: bool = _opt(True, "EMA warm-up: decay min(ema_decay, (1 + k)/(10 + k)) at step k")
    ema_stds: tuple[float, ...] = _opt((), "relative stds of power-function EMAs to track (EDM2: 0.05,0.1); "
                                           "with --snapshot-every, any EMA length is reconstructed post hoc",
                                       resume="fixed", low=0, high=MAX_EMA_STD, open_low=True)
    snapshot_every: int = _opt(0, "steps between snapshots of the power-function EMAs (0: none)", low=0)
    seed: int = _opt(0, "seed of every random draw", resume="fixed", low=0)
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps")
    # outputs
    out_dir: str = _opt("runs/default", "the run's folder")
    checkpoint_every: int = _opt(1000, "steps between checkpoints", low=1)
    checkpoint_minutes: float = _opt(10.0, "minutes between checkpoints (also written on Ctrl-C, SIGTERM, SIGUSR1)",
                                     low=0, open_low=True)
    log_every: int = _opt(10, "steps between log rows being written (the device is synchronised only then)", low=1)
    sample_every: int = _opt(1000, "steps between sample grids", low=1)
    n_samples: int = _opt(64, "samples per grid", low=1)
    sample_steps: int = _opt(50, "ODE steps for the grids", low=1)
    progress: bool = _opt(True, "progress bar")
    tensorboard: bool = _opt(False, "also log to OUT_DIR/tensorboard (pip install 'sgm[tensorboard]')")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":
        """``self`` if every field holds an accepted value; else a ``ValueError`` naming the field and the range."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.data == TENSOR_DATA and (self.data_path is not None or self.image_size is not None):
            raise ValueError("data_path and image_size do not apply to data='tensor' (a tensor given to Trainer)")
        if self.image_size is not None and self.data != "folder":
            raise ValueError(f"image_size applies only to data='folder' (it resizes the folder's images), got data="
                             f"{self.data!r}")
        if self.data_path is not None and self.data not in datasets.FILE_DATASETS:
            raise ValueError(f"data_path applies only to data in {datasets.FILE_DATASETS}, got data={self.data!r}")
        if any(level >= len(self.channel_mult) for level in self.attn_levels):
            raise ValueError(f"attn_levels must lie in [0, {len(self.channel_mult) - 1}] (one level per channel_mult "
                             f"entry {self.channel_mult}), got {self.attn_levels}")
        if self.batch_size % self.grad_accumulation:
            raise ValueError(f"batch_size must be a multiple of grad_accumulation={self.grad_accumulation}, got "
                             f"{self.batch_size}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}")
        if len(set(self.ema_stds)) != len(self.ema_stds):
            raise ValueError(f"ema_stds must be distinct, got {self.ema_stds}")
        if self.snapshot_every and not self.ema_stds:
            raise ValueError("snapshot_every needs ema_stds (the power-function EMAs whose snapshots it writes)")
        from .device import resolve_device

        resolve_device(self.device)
        sde = build_sde(self)
        if self.eps >= sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}) of the {self.sde!r} path, got {self.eps}")
        if self.prediction in ("eps", "score") and float(sde.alpha(torch.tensor([sde.T], dtype=torch.float64))) == 0:
            raise ValueError(f"prediction {self.prediction!r} cannot be sampled from the top of the {self.sde!r} path "
                             f"(α(T) = 0: x̂_0 and the velocity are undefined from it there); use x0, v, velocity "
                             f"or edm")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config of ``values`` (as ``to_dict`` or a checkpoint writes it; lists become tuples)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        tuples = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in values.items()})


def _kind(f: dataclasses.Field) -> tuple[str, bool]:
    """``(base type name, whether None is allowed)`` from the field's annotation, e.g. ``("float", True)``."""
    text = str(f.type)
    optional = text.endswith(" | None")
    return text[: -len(" | None")] if optional else text, optional


def _check_field(f: dataclasses.Field, value) -> None:
    kind, optional = _kind(f)
    meta = f.metadata
    if value is None:
        if optional:
            return
        raise ValueError(f"{f.name} must be set, got None")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{f.name} must be True or False, got {value!r}")
        return
    if kind == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"{f.name} must be a dict, got {value!r}")
        return
    if kind.startswith("tuple"):
        element = "int" if "int" in kind else "float"
        if not isinstance(value, tuple):
            raise ValueError(f"{f.name} must be a tuple of {element}s, got {value!r}")
        if kind == "tuple[int, ...]" and f.name == "channel_mult" and not value:
            raise ValueError("channel_mult must hold at least one level, got ()")
        for v in value:
            _check_number(f.name, v, element, meta, f" (each entry of {value})")
        return
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{f.name} must be a string, got {value!r}")
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        allowed = tuple(choices or ()) + ((TENSOR_DATA,) if f.name == "data" else ())
        if choices and value not in allowed:
            raise ValueError(f"{f.name} must be one of {tuple(choices)}, got {value!r}")
        return
    _check_number(f.name, value, kind, meta)


def _check_number(name: str, value, kind: str, meta, where: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind == "float" else int):
        raise ValueError(f"{name} must be {'a number' if kind == 'float' else 'an int'}{where}, got {value!r}")
    if kind == "float" and not math.isfinite(value):
        raise ValueError(f"{name} must be finite{where}, got {value!r}")
    low, high = meta["low"], meta["high"]
    below = low is not None and (value <= low if meta["open_low"] else value < low)
    above = high is not None and (value >= high if meta["open_high"] else value > high)
    if below or above:
        if high is None:
            accepted = f"{'>' if meta['open_low'] else '>='} {low:g}"
            raise ValueError(f"{name} must be {accepted}{where}, got {value!r}")
        interval = f"{'(' if meta['open_low'] else '['}{low:g}, {high:g}{')' if meta['open_high'] else ']'}"
        raise ValueError(f"{name} must lie in {interval}{where}, got {value!r}")


ARCHITECTURE_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == "architecture")
RESUMABLE_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == "apply")


def make_path(name: str, args: dict | None = None) -> SDE:
    """The path ``PATHS[name]`` with constructor parameters ``args``; a ``ValueError`` naming an unknown path or a
    parameter it does not take."""
    if name not in PATHS:
        raise ValueError(f"sde must be one of {tuple(PATHS)}, got {name!r}")
    entry, args = PATHS[name], dict(args or {})
    wrong = sorted(set(args) - set(entry.params))
    if wrong:
        takes = f"takes {', '.join(entry.params)}" if entry.params else "takes no parameters"
        raise ValueError(f"sde_args: the {name!r} path {takes}, not {', '.join(wrong)}")
    return entry.cls(**args)


def build_sde(config: TrainConfig) -> SDE:
    """The config's path with its ``sde_args``."""
    return make_path(config.sde, config.sde_args)


def build_time_distribution(config: TrainConfig):
    """The config's distribution of training times (``sgm.losses``), with its parameters."""
    if config.time_distribution == "log_normal":
        return LogNormal(config.p_mean, config.p_std)
    if config.time_distribution == "logit_normal":
        return LogitNormal(config.logit_mean, config.logit_std)
    return TIME_DISTRIBUTIONS[config.time_distribution]


def build_net(config: TrainConfig, data_shape: tuple[int, ...]) -> nn.Module:
    """The config's network for samples of ``data_shape`` (an MLP for vectors, a U-Net for ``(C, H, W)`` images)."""
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
    """The score function of ``net`` as the config's path and parameterisation define it."""
    return ScoreModel(net, build_sde(config), config.prediction, sigma_data=config.sigma_data)

