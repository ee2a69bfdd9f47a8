"""A U-Net score network of the DDPM++ / NCSN++ family (Ho et al. 2020; Song et al. 2021).

- Residual blocks: ``h = conv(SiLU(GN(x)))``, then the time embedding by scale-and-shift
  ``h ← GN(h)·(1 + γ(t)) + β(t)``, ``SiLU``, dropout, ``conv`` (zero-initialised), and
  ``out = (skip(x) + h)/√2``.
- Self-attention blocks (one head per ``head_channels``) at the chosen resolutions, ``out = (x + attn)/√2``.
- Levels ``channel_mult``: ``num_res_blocks`` blocks per level on the way down, each output kept for the
  skip connection across the stage; ``num_res_blocks + 1`` blocks per level on the way up, each taking one
  skip by concatenation; stride-2 convolutions down, nearest-neighbour + conv up.

Any channel count; any image size divisible by ``2^(len(channel_mult) - 1)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import integer
from .embeddings import LabelEmbedding, add_labels, time_embedding

__all__ = ["UNet"]


def _norm(channels: int) -> nn.GroupNorm:
    groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return (self.skip(x) + h) / math.sqrt(2)


class AttnBlock(nn.Module):
    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm, self.qkv = _norm(channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return (x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))) / math.sqrt(2)


class UNet(nn.Module):
    """``net(x, t, labels=None) -> (batch, out_channels, H, W)``; with ``n_classes`` a learned class embedding
    (``LabelEmbedding``, with a "no label" index) is added to the time embedding. Self-attention at the levels
    ``attn_levels`` (level ``k`` works at resolution ``H/2^k``; DDPM's attention at 16×16 of a 32×32 image is level 1)
    and in the middle."""

    def __init__(self, in_channels: int = 3, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, attn_levels: Sequence[int] = (1,), dropout: float = 0.1,
                 embedding: str = "sinusoidal", time_scale: float = 1000.0, out_channels: int | None = None,
                 head_channels: int = 64, n_classes: int = 0):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("channels", channels), ("num_res_blocks", num_res_blocks)):
            integer(name, v)
        if not channel_mult or any(int(m) < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of ints >= 1, got {channel_mult!r}")
        if any(not 0 <= int(level) < len(channel_mult) for level in attn_levels):
            raise ValueError(f"attn_levels must lie in [0, {len(channel_mult) - 1}], got {attn_levels!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_channels, self.levels = in_channels, len(channel_mult)
        attn = {int(level) for level in attn_levels}
        emb_dim = 4 * channels
        self.embed = nn.Sequential(time_embedding(embedding, channels, time_scale), nn.Linear(channels, emb_dim),
                                   nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.n_classes = n_classes
        self.labels = LabelEmbedding(n_classes, emb_dim) if n_classes else None
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * int(m) for m in channel_mult]

        def stage(c_in: int, width: int, level: int) -> nn.ModuleDict:
            return nn.ModuleDict({"res": ResBlock(c_in, width, emb_dim, dropout),
                                  "attn": AttnBlock(width, head_channels) if level in attn else nn.Identity()})

        self.down, skips, c = nn.ModuleList(), [channels], channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(stage(c, width, level))
                c = width
                skips.append(c)
            if level < self.levels - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), AttnBlock(c, head_channels),
                                  ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(stage(c + skips.pop(), width, level))
                c = width
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, out_channels or in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        factor = 2 ** (self.levels - 1)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, H, W) with H and W divisible by "
                             f"{factor}, got {tuple(x.shape)}")
        emb = add_labels(self.embed(t), self.labels, labels)
        h = self.inp(x)
        skips = [h]
        for module in self.down:
            if isinstance(module, nn.ModuleDict):
                h = module["attn"](module["res"](h, emb))
            else:
                h = module(h)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for module in self.up:
            if isinstance(module, nn.ModuleDict):
                h = module["attn"](module["res"](torch.cat([h, skips.pop()], dim=1), emb))
            else:
                h = module(h)
        return self.out(h)
