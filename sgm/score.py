"""Turning a network's prediction into the score ``s(x, t) ≈ ∇ log p_t(x)`` the samplers take.

With ``x_t = a·x_0 + σ·ε`` (``a, σ = sde.marginal(t)``) the four usual targets are equivalent:

    eps:   s = -ε̂/σ
    x0:    s = (a·x̂_0 - x)/σ²
    v:     v = a·ε - σ·x_0  ⇒  ε̂ = (σ·x + a·v̂)/(a² + σ²)      (Salimans & Ho, 2022; a² + σ² = 1 on VP)
    score: s = ŝ

and Tweedie's formula gives the denoiser ``E[x_0 | x_t] = (x + σ² s)/a``.

A class-conditional network ``net(x, t, labels)`` (``n_classes`` > 0) makes ``ScoreModel`` a conditional score
function ``model(x, t, y)`` (``y = n_classes``: no label) for ``sgm.guidance``, and ``model.conditional(y)`` is the
plain score function ``s(x, t | y)`` every sampler takes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .sde import SDE, DiscreteChain, batch_view

__all__ = ["ScoreModel", "PREDICTIONS"]

PREDICTIONS = ("eps", "score", "x0", "v")


class ScoreModel:
    """The score function of a network ``net(x, t)`` that predicts ``prediction`` (one of PREDICTIONS).

    With ``chain`` (a ``DiscreteChain``, e.g. ``sde.discretize(1000)``) the network takes integer
    timesteps: ``t`` is mapped to the nearest chain timestep ``i`` and ``(a, σ)`` are the chain's
    ``(scale[i], std[i])``, so a DDPM-trained ε-network is used exactly as it was trained.
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sde: SDE, prediction: str = "eps",
                 chain: DiscreteChain | None = None):
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if chain is not None and not isinstance(chain, DiscreteChain):
            raise TypeError(f"chain must be a DiscreteChain, got {type(chain).__name__}")
        self.net, self.sde, self.prediction, self.chain = net, sde, prediction, chain

    def _inputs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The network's time input and ``(a, σ)`` broadcast against ``x``."""
        if self.chain is None:
            scale, std = self.sde.marginal(t)
            net_t = t
        else:
            net_t = self.chain.index(t)
            scale = self.chain.scale.to(device=x.device)[net_t].to(x.dtype)
            std = self.chain.std.to(device=x.device)[net_t].to(x.dtype)
        return net_t, batch_view(scale, x), batch_view(std, x)

    @property
    def n_classes(self) -> int | None:
        """The network's class count, or None for an unconditional network."""
        return getattr(getattr(self.net, "module", self.net), "n_classes", 0) or None  # DDP wraps the network

    def conditional(self, labels) -> Callable[[Tensor, Tensor], Tensor]:
        """The score function ``s(x, t | y)`` for labels ``y`` (an int, or ``(batch,)``; ``n_classes`` = no label)."""
        from .targets import check_class_labels

        if self.n_classes is None:
            raise ValueError("labels given to an unconditional model (its network was built without n_classes)")
        n = self.n_classes
        fixed = check_class_labels(labels, n + 1, None if isinstance(labels, Tensor) else 1)

        def score(x: Tensor, t: Tensor) -> Tensor:
            y = fixed.expand(x.shape[0]) if fixed.shape[0] == 1 and not isinstance(labels, Tensor) else fixed
            return self(x, t, check_class_labels(y, n + 1, x.shape[0], x.device))

        return score

    def __call__(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        net_t, a, s = self._inputs(x, t)
        out = self.net(x, net_t) if labels is None else self.net(x, net_t, labels)
        if self.prediction == "score":
            return out
        if self.prediction == "eps":
            return -out / s
        if self.prediction == "x0":
            return (a * out - x) / s**2
        return -(s * x + a * out) / ((a**2 + s**2) * s)  # v

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """Tweedie's ``E[x_0 | x_t = x] = (x + σ² s(x, t))/a``."""
        _, a, s = self._inputs(x, t)
        return (x + s**2 * self(x, t)) / a
