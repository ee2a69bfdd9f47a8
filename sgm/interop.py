"""Pretrained models from diffusers as sgm score models (diffusers is an optional extra: ``pip install diffusers``).

``load_diffusers(folder)`` reads a local ``UNet2DModel`` (a folder with its ``config.json`` and weights, or a
pipeline folder with ``model_index.json``, ``unet/`` and ``scheduler/``) and the scheduler's config, and returns
the network as a ``ScoreModel`` on the matching discrete chain:

- ``beta_schedule``: ``linear`` (``VPSDE(β_start·N, β_end·N)``, whose chain is ``linspace(β_start, β_end, N)``),
  ``squaredcos_cap_v2`` (``CosineVPSDE``), ``scaled_linear`` (``β_i = linspace(√β_start, √β_end, N)²``, on
  ``GaussianPath.from_alphas_cumprod``: the VP path whose ``log ᾱ`` is piecewise linear in t through the chain);
- ``prediction_type``: ``epsilon`` → ``eps``, ``v_prediction`` → ``v``, ``sample`` → ``x0``.

The network sees integer timesteps ``i`` and the chain's own ``(√ᾱ_i, √(1-ᾱ_i))`` (``ScoreModel(chain=...)``), so
sampling on the chain's grid (``spacing="leading"`` or ``"trailing"``, ``train_steps=N``) is the scheduler's
sampling: sgm's ``ddim`` there is diffusers' ``DDIMScheduler`` step for step.

A flow-matching folder (``FlowMatchEulerDiscreteScheduler`` or ``FlowMatchHeunDiscreteScheduler``, as SD3 and
Flux-style models ship) is a velocity model on ``RectifiedFlow(shift)`` with the scheduler's ``shift``. diffusers'
convention: ``x_σ = (1 - σ) x_0 + σ ε``, the network takes ``timestep = σ·N`` (``N = num_train_timesteps``) and
returns ``dx/dσ = ε - x_0``; at sgm's time ``t`` (``σ = σ(t) = τ(t)``, the shifted time) the model is

    u(x, t) = σ'(t) · net(x, σ(t)·N)          (dx/dt = α' x_0 + σ' ε = σ'(ε - x_0), since α' = -σ')

Its chain is ``sde.discretize(N)``: the scheduler's training sigmas. diffusers' Euler steps in ``σ``; on the linear
path that step is exactly DDIM's, so ``ddim`` on the uniform grid to ``eps = s/(N + s - 1)`` (the scheduler's lowest
σ) is diffusers' FlowMatch Euler loop (and, at ``shift = 1``, so is ``ode`` ``euler``). The scheduler's sigma
options (Karras, exponential, beta, ``shift_terminal``, ``stochastic_sampling``) choose its grid or sampler, not the
model: sgm's own spacings and samplers take their place. ``use_dynamic_shifting`` (a shift set per image size) needs
``shift=`` given; ``invert_sigmas`` (a model of the reversed time) is refused.

A scheduler that clips or thresholds ``x̂_0`` is reproduced by ``threshold_x0`` (off unless asked for): the
model that predicts the clipped ``c(x̂_0)``, from which every other kind follows, so that ``x̂_0`` and ``ε̂`` stay
consistent (diffusers' ``use_clipped_model_output=True``), for every sampler. ``c`` is static clipping to
``[-r, r]``, or dynamic thresholding (Saharia et al., 2022): per sample ``q`` = the ``ratio`` quantile of
``|x̂_0|`` clamped to ``[1, max_value]``, ``c(x̂_0) = clamp(x̂_0, -q, q)/q``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import positive
from .score import ScoreModel
from .paths import SDE, CosineVPSDE, DiscreteChain, GaussianPath, RectifiedFlow, VPSDE, batch_view

__all__ = ["Pretrained", "load_diffusers", "threshold_x0", "ThresholdedScore", "BETA_SCHEDULES",
           "PREDICTION_TYPES", "FLOW_SCHEDULERS"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


@dataclass
class Pretrained:
    """A loaded model: ``model`` (a ``ScoreModel``: on ``chain`` for a DDPM-style scheduler, a velocity model on
    ``RectifiedFlow`` for a flow-matching one), its ``sde``, the ``chain`` of ``train_steps`` steps, the sample
    ``shape`` ``(C, H, W)`` and the scheduler's ``config`` (a dict, as read)."""

    model: ScoreModel
    sde: SDE
    chain: DiscreteChain
    shape: tuple[int, int, int]
    config: dict

    @property
    def train_steps(self) -> int:
        return len(self.chain)


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable {what} ({err})") from err


def _schedule(config: dict, path: str) -> tuple[SDE, DiscreteChain]:
    if config.get("trained_betas") is not None:
        raise ValueError(f"{path}: trained_betas are not supported; beta_schedule must be one of {BETA_SCHEDULES}")
    schedule = config.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"{path}: unsupported beta_schedule {schedule!r}; supported: {BETA_SCHEDULES}")
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if schedule == "linear":
        sde = VPSDE(start * n, end * n)
    elif schedule == "squaredcos_cap_v2":
        sde = CosineVPSDE()
    else:
        betas = torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
        sde = GaussianPath.from_alphas_cumprod(torch.cumprod(1 - betas, 0))
    return sde, sde.discretize(n)


def _locate(folder: str, scheduler: str | None) -> tuple[str, str]:
    """The U-Net folder and the scheduler config file of a pipeline or a bare U-Net folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"diffusers folder {folder!r} does not exist")
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        unet, sched = os.path.join(folder, "unet"), os.path.join(folder, "scheduler", "scheduler_config.json")
    else:
        unet, sched = folder, os.path.join(folder, "scheduler_config.json")
    sched = scheduler or sched
    if not os.path.isfile(os.path.join(unet, "config.json")):
        raise FileNotFoundError(f"{unet!r} holds no UNet2DModel (no config.json)")
    if not os.path.isfile(sched):
        raise FileNotFoundError(f"no scheduler config at {sched!r}; "
                                f"pass scheduler= the path of a scheduler_config.json")
    return unet, sched


def _flow_shift(config: dict, path: str, shift: float | None) -> float:
    """The ``RectifiedFlow`` shift of a flow-matching scheduler config (``shift`` overrides it)."""
    if config.get("invert_sigmas"):
        raise ValueError(f"{path}: invert_sigmas (a network of the reversed time, as Mochi's) is not supported")
    if shift is not None:
        return positive("shift", shift)
    if config.get("use_dynamic_shifting"):
        raise ValueError(f"{path}: use_dynamic_shifting sets the shift per image size (exp(mu)); pass shift= to "
                         "load_diffusers")
    return positive(f"{path}: shift", config.get("shift", 1.0))


def load_diffusers(folder: str, scheduler: str | None = None, device="cpu",
                   dtype: torch.dtype = torch.float32, shift: float | None = None) -> Pretrained:
    """A local diffusers ``UNet2DModel`` (or pipeline folder) as a ``Pretrained`` sgm model; ``scheduler`` is the
    path of a ``scheduler_config.json`` when the folder has none. Weights are read by diffusers (safetensors).
    ``shift``: for a flow-matching scheduler, the ``RectifiedFlow`` shift instead of the scheduler's."""
    try:
        import diffusers  # noqa: F401
    except ImportError as err:
        raise ImportError("sgm.interop needs diffusers: pip install diffusers") from err
    unet_dir, sched_path = _locate(os.fspath(folder), scheduler)
    unet_config = _read_json(os.path.join(unet_dir, "config.json"), "model config")
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{unet_dir}: a {unet_config.get('_class_name')}, only UNet2DModel is supported")
    config = _read_json(sched_path, "scheduler config")
    kind = config.get("_class_name", "")
    if kind.startswith("FlowMatch"):
        if kind not in FLOW_SCHEDULERS:
            raise ValueError(f"{sched_path}: unsupported flow-matching scheduler {kind!r}; "
                             f"supported: {FLOW_SCHEDULERS}")
        return _load_flow(unet_dir, sched_path, config, device, dtype, shift)
    if shift is not None:
        raise ValueError(f"shift applies to flow-matching schedulers only; {sched_path} is a {kind or 'DDPM-style'} "
                         "scheduler")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{sched_path}: unsupported prediction_type {prediction!r}; "
                         f"supported: {sorted(PREDICTION_TYPES)}")
    sde, chain = _schedule(config, sched_path)
    unet, shape = _unet(unet_dir, device, dtype)

    def net(x: Tensor, i: Tensor) -> Tensor:
        return unet(x, i).sample

    return Pretrained(ScoreModel(net, sde, PREDICTION_TYPES[prediction], chain=chain), sde, chain, shape, config)


def _unet(unet_dir: str, device, dtype):
    """The ``UNet2DModel`` in ``unet_dir`` (weights read by diffusers) and its sample shape ``(C, H, W)``."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(unet_dir).to(device=device, dtype=dtype).eval()
    size = unet.config.sample_size
    return unet, (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def _load_flow(unet_dir: str, sched_path: str, config: dict, device, dtype, shift: float | None) -> Pretrained:
    """A flow-matching U-Net as the velocity model ``u(x, t) = σ'(t)·net(x, σ(t)·N)`` on ``RectifiedFlow(shift)``."""
    sde = RectifiedFlow(_flow_shift(config, sched_path, shift))
    n = int(config.get("num_train_timesteps", 1000))
    unet, shape = _unet(unet_dir, device, dtype)

    def net(x: Tensor, t: Tensor) -> Tensor:
        out = unet(x, sde.sigma(t) * n).sample  # diffusers' timestep σ·N; its output dx/dσ = ε - x_0
        return batch_view(sde.d_sigma(t).to(out.dtype), out) * out

    return Pretrained(ScoreModel(net, sde, "velocity"), sde, sde.discretize(n), shape, config)


class ThresholdedScore:
    """The model that predicts ``c(x̂_0)``, the clipped or thresholded denoiser of ``model`` (see the module
    docstring): ``predicts = "x0"``."""

    predicts = "x0"

    def __init__(self, model: ScoreModel, mode: str = "clip", clip_range: float = 1.0, ratio: float = 0.995,
                 max_value: float = 1.0):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a ScoreModel, got {type(model).__name__}")
        if mode not in ("clip", "dynamic"):
            raise ValueError(f"mode must be 'clip' or 'dynamic', got {mode!r}")
        if not clip_range > 0 or not 0 < ratio <= 1 or not max_value >= 1:
            raise ValueError(f"need clip_range > 0, ratio in (0, 1], max_value >= 1; got {clip_range}, {ratio}, "
                             f"{max_value}")
        self.model, self.mode, self.clip_range, self.ratio, self.max_value = model, mode, clip_range, ratio, max_value

    def threshold(self, x0: Tensor) -> Tensor:
        if self.mode == "clip":
            return x0.clamp(-self.clip_range, self.clip_range)
        flat = x0.reshape(x0.shape[0], -1)
        q = torch.quantile(flat.abs().float(), self.ratio, dim=1).to(x0.dtype).clamp(1, self.max_value)
        q = batch_view(q, x0)
        return torch.maximum(torch.minimum(x0, q), -q) / q

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.threshold(self.model.prediction_at(x, t).x0)


def threshold_x0(model: ScoreModel, mode: str = "clip", clip_range: float = 1.0, ratio: float = 0.995,
                 max_value: float = 1.0) -> ThresholdedScore:
    """``model``'s score with its denoiser clipped (``mode="clip"``) or dynamically thresholded (``"dynamic"``)."""
    return ThresholdedScore(model, mode, clip_range, ratio, max_value)
