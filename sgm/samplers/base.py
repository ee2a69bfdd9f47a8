"""What every sampler shares at its edges: the checked, counted score, the state check, the output.

Samplers run under ``torch.no_grad()``: a network score builds no autograd graph.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..predictions import predicts

__all__ = ["SamplerOutput", "SamplerDiverged", "CheckedScore", "check_state"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class SamplerOutput(NamedTuple):
    x: Tensor
    nfe: int  # score evaluations spent


class SamplerDiverged(ValueError):
    """The score returned a NaN or inf: the sampler's state left the region where the score is finite."""


class CheckedScore:
    """A model ``score(x, t)`` (a score function or any model declaring what it ``predicts``) called with ``t`` as a
    ``(batch,)`` tensor; counts calls and checks each output.

    An output that is not a tensor shaped like ``x`` in ``x``'s dtype raises ``TypeError``/``ValueError``;
    with ``check_finite`` a NaN or inf raises ``SamplerDiverged`` (a ``ValueError``) naming the time where it appeared:
    at once on the CPU; on an accelerator, where reading the flag would make the host wait for the device at every
    call, the flags stay there and are read every ``CHECK_EVERY`` calls and at the end (``check()``).
    """

    CHECK_EVERY = 16

    def __init__(self, score: ScoreFn, check_finite: bool = True):
        if not callable(score):
            raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
        self.score, self.check_finite, self.nfe = score, check_finite, 0
        self.predicts = predicts(score)  # the kind of the wrapped model's output
        self._pending: list = []  # (finite flag on the device, t, evaluation) not read yet

    def __call__(self, x: Tensor, t) -> Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        out = self.score(x, tt)
        self.nfe += 1
        if not isinstance(out, Tensor):
            raise TypeError(f"score must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"score returned shape {tuple(out.shape)}, expected the shape of x {tuple(x.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"score returned dtype {out.dtype}, expected the dtype of x {x.dtype}")
        # One reduction: a NaN or inf anywhere makes the sum non-finite (isfinite(out).all() costs 30× more).
        if self.check_finite:
            self._pending.append((torch.isfinite(out.sum()), t, self.nfe))
            if out.device.type == "cpu" or len(self._pending) >= self.CHECK_EVERY:
                self.check()
        return out

    def check(self) -> None:
        """Read the finite flags not read yet; ``SamplerDiverged`` naming the first evaluation that was not."""
        if not self._pending:
            return
        flags, pending = torch.stack([f for f, _, _ in self._pending]).tolist(), self._pending
        self._pending = []
        for ok, (_, t, nfe) in zip(flags, pending):
            if not ok:
                when = float(t.flatten()[0]) if isinstance(t, Tensor) else float(t)
                raise SamplerDiverged(f"score returned a non-finite value (NaN or inf) at t={when:.6g}, "
                                      f"evaluation {nfe}")


def check_state(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    return x
