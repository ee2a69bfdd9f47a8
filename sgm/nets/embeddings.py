"""Time embeddings: the network's view of ``t`` (continuous time, or an integer DDPM timestep).

- Sinusoidal (Vaswani et al. 2017; DDPM): ``e(t) = [sin(τ ω_k), cos(τ ω_k)]``, ``ω_k = 10000^{-k/(d/2)}``,
  ``τ = time_scale·t`` (``time_scale = 1000/T`` makes continuous ``t`` span DDPM's timestep range).
- Gaussian Fourier features (Tancik et al. 2020; NCSN++): ``e(t) = [sin(2π W τ), cos(2π W τ)]``,
  ``W ~ N(0, scale²)`` fixed at initialisation.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import integer
from ..labels import check_class_labels

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "LabelEmbedding", "time_embedding", "EMBEDDINGS"]

EMBEDDINGS = ("sinusoidal", "fourier")


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int, time_scale: float = 1000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even int >= 2, got {dim}")
        self.time_scale = float(time_scale)
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2)),
                             persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = (self.time_scale * t.float())[:, None] * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, dim: int, time_scale: float = 1.0, scale: float = 16.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even int >= 2, got {dim}")
        self.time_scale = float(time_scale)
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        arg = 2 * math.pi * (self.time_scale * t.float())[:, None] * self.W[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class LabelEmbedding(nn.Module):
    """Class labels ``y ∈ [0, n_classes]`` to vectors added to the time embedding; ``y = n_classes`` is the reserved
    "no label" index (the unconditional model of classifier-free guidance), also used when ``y`` is None."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.n_classes = integer("n_classes", n_classes)
        self.table = nn.Embedding(n_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.n_classes, dtype=torch.long, device=device)
        return self.table(check_class_labels(y, self.n_classes + 1, batch, device))  # n_classes: "no label"


def add_labels(emb: Tensor, labels: LabelEmbedding | None, y: Tensor | None) -> Tensor:
    """The time embedding plus the label embedding (a conditional network), or unchanged (``y`` must be None)."""
    if labels is None:
        if y is not None:
            raise ValueError("labels given to an unconditional network (built with n_classes=0)")
        return emb
    return emb + labels(y, emb.shape[0], emb.device)


def time_embedding(kind: str, dim: int, time_scale: float) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, time_scale)
    if kind == "fourier":
        return FourierEmbedding(dim, time_scale)
    raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
