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

from .score import ScoreModel
from .paths import SDE, CosineVPSDE, DiscreteChain, GaussianPath, VPSDE, batch_view

__all__ = ["Pretrained", "load_diffusers", "threshold_x0", "ThresholdedScore", "BETA_SCHEDULES",
           "PREDICTION_TYPES"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


@dataclass
class Pretrained:
    """A loaded model: ``model`` (a ``ScoreModel`` on ``chain``), its ``sde``, the ``chain`` of ``train_steps``
    steps, the sample ``shape`` ``(C, H, W)`` and the scheduler's ``config`` (a dict, as read)."""

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
        raise FileNotFoundError(f"no scheduler config at {sched!r}; pass scheduler= the path of a scheduler_config.json")
    return unet, sched


def load_diffusers(folder: str, scheduler: str | None = None, device="cpu",
                   dtype: torch.dtype = torch.float32) -> Pretrained:
    """A local diffusers ``UNet2DModel`` (or pipeline folder) as a ``Pretrained`` sgm model; ``scheduler`` is the
    path of a ``scheduler_config.json`` when the folder has none. Weights are read by diffusers (safetensors)."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise ImportError("sgm.interop needs diffusers: pip install diffusers") from err
    unet_dir, sched_path = _locate(os.fspath(folder), scheduler)
    unet_config = _read_json(os.path.join(unet_dir, "config.json"), "model config")
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{unet_dir}: a {unet_config.get('_class_name')}, only UNet2DModel is supported")
    config = _read_json(sched_path, "scheduler config")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{sched_path}: unsupported prediction_type {prediction!r}; supported: {sorted(PREDICTION_TYPES)}")
    sde, chain = _schedule(config, sched_path)
    unet = UNet2DModel.from_pretrained(unet_dir).to(device=device, dtype=dtype).eval()
    size = unet.config.sample_size
    shape = (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))

    def net(x: Tensor, i: Tensor) -> Tensor:
        return unet(x, i).sample

    return Pretrained(ScoreModel(net, sde, PREDICTION_TYPES[prediction], chain=chain), sde, chain, shape, config)


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
