"""What the bounds on a discrete chain share: the ``Bound`` result, the checks of data, chain and timesteps, and
the model's ``ε̂`` on the chain's marginal."""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..paths import DiscreteChain, batch_view
from ..predictions import convert, predicts
from ..samplers.grid import Transition

__all__ = ["Bound", "ScoreFn", "check_data", "check_vp_chain", "check_indices", "eps_hat", "sum_features"]

LOG2 = math.log(2.0)

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class Bound(NamedTuple):
    nats: Tensor  # the bound on -log p(x) per sample (nats)
    se: Tensor | None  # its standard error per sample when estimated from sampled timesteps, else None
    terms: Tensor | None  # (batch, K + 1) nats: L_0, L_1 … L_{K-1}, L_T (exact sum only)
    nfe: int  # score evaluations
    dim: int  # data dimension d

    @property
    def bpd(self) -> Tensor:
        """The bound in bits per dimension, ``nats / (d log 2)``."""
        return self.nats / (self.dim * LOG2)



def check_data(x0) -> Tensor:
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2 or x0.shape[0] < 1:
        raise TypeError(f"x0 must be a floating tensor of shape (batch, ...), got "
                        f"{type(x0).__name__ if not isinstance(x0, Tensor) else tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite")
    return x0


def check_vp_chain(chain) -> DiscreteChain:
    if not isinstance(chain, DiscreteChain):
        raise TypeError(f"chain must be a DiscreteChain (sde.discretize(N)), got {type(chain).__name__}")
    if chain.betas is None:
        raise ValueError("chain must be a VP-type chain (VPSDE or SubVPSDE .discretize(N)) with prior N(0, I); "
                         "got a chain without betas (VE)")
    if len(chain) < 2:
        raise ValueError(f"chain must have at least 2 timesteps, got {len(chain)}")
    scale, std = chain.scale, chain.std
    v = Transition.between(scale[1:], std[1:], scale[:-1], std[:-1]).v
    if not (bool(torch.isfinite(scale).all()) and bool((scale > 0).all()) and bool((std > 0).all())
            and bool((v > 0).all())):
        raise ValueError("chain must have 0 < scale and noise that grows at every step (all β_i < 1); got an "
                         f"invalid chain of {len(chain)} timesteps (too few steps for its β_max?)")
    return chain


def check_indices(indices, chain: DiscreteChain) -> list[int]:
    """Timesteps in increasing order (default: all of them)."""
    if indices is None:
        return list(range(len(chain)))
    idx = [int(i) for i in indices]
    if not idx or any(i < 0 or i >= len(chain) for i in idx) or any(a >= b for a, b in zip(idx, idx[1:])):
        raise ValueError(f"indices must be strictly increasing timesteps in [0, {len(chain) - 1}], got {idx}")
    return idx


def eps_hat(model: ScoreFn, chain: DiscreteChain, x: Tensor, idx: Tensor) -> Tensor:
    """The model's ``ε̂`` at the per-row timesteps ``idx``, from whatever it predicts (on the chain's marginal)."""
    t = chain.t.to(device=x.device, dtype=x.dtype)[idx]
    out = model(x, t)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        raise ValueError(f"model must return a tensor shaped like x {tuple(x.shape)}")
    col = lambda v: batch_view(v.to(device=x.device, dtype=x.dtype)[idx], x)  # noqa: E731
    return convert("eps", predicts(model), out, x, col(chain.scale), col(chain.std))


def sum_features(v: Tensor) -> Tensor:
    return v.flatten(1).sum(1)

