"""An MLP score network for low-dimensional data: ``net(x, t) -> (batch, D)``.

``h_0 = W_in x``, then residual blocks ``h ← h + W_2 SiLU(W_1 SiLU(LayerNorm(h)) + E_k(t))``, and a
zero-initialised output layer (the network starts at 0: ``ε̂ = 0`` or ``ŝ = 0``).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..checks import integer
from .embeddings import LabelEmbedding, add_labels, time_embedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        u = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(nn.functional.silu(u)))


class MLP(nn.Module):
    """``net(x, t, labels=None) -> (batch, out_dim or dim)`` (``out_dim``: e.g. a noisy classifier's logits);
    with ``n_classes`` a learned class embedding (``LabelEmbedding``, with a "no label" index) is added to the time
    embedding."""

    def __init__(self, dim: int, width: int = 256, depth: int = 4, emb_dim: int = 128,
                 embedding: str = "sinusoidal", time_scale: float = 1000.0, dropout: float = 0.0, n_classes: int = 0,
                 out_dim: int | None = None):
        super().__init__()
        for name, v in (("dim", dim), ("width", width), ("depth", depth), ("emb_dim", emb_dim)):
            integer(name, v)
        self.dim = dim
        self.embed = nn.Sequential(time_embedding(embedding, emb_dim, time_scale), nn.Linear(emb_dim, emb_dim),
                                   nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.n_classes = n_classes
        self.labels = LabelEmbedding(n_classes, emb_dim) if n_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim or dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        emb = add_labels(self.embed(t), self.labels, labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
