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

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "time_embedding", "EMBEDDINGS"]

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


def time_embedding(kind: str, dim: int, time_scale: float) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, time_scale)
    if kind == "fourier":
        return FourierEmbedding(dim, time_scale)
    raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
