"""The reverse-time SDE ``dx = [f(x, t) - g(t)² s(x, t)] dt + g(t) dW̄`` integrated by torchsde.

torchsde integrates forward in time, so it is given ``τ = -t``: ``dx = -[f - g² s](x, -τ) dτ + g(-τ) dW_τ``
on ``x`` flattened to ``(batch, D)`` with diagonal noise. Steps are of fixed size
``dt = (t_0 - t_last)/(steps - 1)`` between the grid's first and last noisy node, or adaptive under
``rtol``/``atol`` with ``adaptive=True``.

Brownian motion: on fixed steps with ``euler``/``milstein`` the increments ``W(τ_{k+1}) - W(τ_k) = √dt·z``
are drawn from ``generator`` one ``randn`` per step, like every other sampler's noise (a
``torchsde.BrownianInterval`` would draw twice per step to build its bridge tree, at 2.5× the cost).
Adaptive steps and ``srk`` (which needs Lévy areas) use a ``BrownianInterval`` seeded from ``generator``
(one ``randint`` draw).
"""
from __future__ import annotations

import torch
import torchsde
from torch import Tensor
from tqdm.auto import tqdm

from ..sde import SDE, _positive
from .base import CheckedScore, SamplerOutput, check_state, tweedie
from .grid import TimeGrid

__all__ = ["sde", "SDE_METHODS"]

SDE_METHODS = ("euler", "milstein", "srk")


class _ReverseInTau(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, forward: SDE, score: CheckedScore, shape: torch.Size, bar):
        super().__init__()
        self.forward_sde, self.score, self.shape, self.bar = forward, score, shape, bar
        self._last = None

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        # sdeint's contract check calls f(t0, y0) before the first step does: answer both with one evaluation.
        if self._last is not None and self._last[0] is y and bool(self._last[1] == tau):
            return self._last[2]
        self.bar.update()
        x = y.reshape(self.shape)
        t = (-tau).to(y.dtype).expand(y.shape[0])
        out = self.forward_sde.reverse_drift(x, t, self.score(x, -tau)).neg_().reshape(y.shape)
        self._last = (y, tau, out)
        return out

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        return self.forward_sde.diffusion((-tau).to(y.dtype)).expand_as(y)


class _StepBrownian(torchsde.BaseBrownian):
    """Brownian increments over consecutive fixed steps, drawn from ``generator`` as they are asked for."""

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device, generator):
        self._shape, self._dtype, self._device, self._generator = shape, dtype, device, generator
        self._last = None

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A:
            raise ValueError("fixed-step Brownian increments answer W(tb) - W(ta) only")
        key = (float(ta), float(tb))
        if self._last is None or self._last[0] != key:
            z = torch.randn(self._shape, generator=self._generator, dtype=self._dtype, device=self._device)
            self._last = (key, z * (key[1] - key[0]) ** 0.5)
        return self._last[1]

    def __repr__(self):
        return f"_StepBrownian(shape={tuple(self._shape)})"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: self._device)
    shape = property(lambda self: self._shape)
    levy_area_approximation = property(lambda self: "none")


@torch.no_grad()
def sde(score, sde: SDE, x: Tensor, grid: TimeGrid, *, method: str = "euler", adaptive: bool = False,
        rtol: float = 1e-5, atol: float = 1e-4, generator=None, progress: bool = False) -> SamplerOutput:
    """Solve the reverse SDE with torchsde from the first to the last noisy node, then denoise if the
    grid ends with the data. Euler is Euler–Maruyama (weak order 1); ``srk`` is strong order 1."""
    forward = sde
    x = check_state(x)
    if method not in SDE_METHODS:
        raise ValueError(f"method must be one of {SDE_METHODS}, got {method!r}")
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    score = score if isinstance(score, CheckedScore) else CheckedScore(score)
    noisy = grid.noisy
    t0, t1 = noisy[0].t, noisy[-1].t
    if len(noisy) > 1:
        flat = x.reshape(x.shape[0], -1)
        if adaptive or method == "srk":
            entropy = int(torch.randint(2**62, (1,), generator=generator, device="cpu" if generator is None
                                        else generator.device))
            bm = torchsde.BrownianInterval(t0=-t0, t1=-t1, size=flat.shape, dtype=x.dtype, device=x.device,
                                           entropy=entropy,
                                           levy_area_approximation="space-time" if method == "srk" else "none")
        else:
            bm = _StepBrownian(flat.shape, x.dtype, x.device, generator)
        bar = tqdm(desc=f"sde ({method})", unit="nfe", disable=not progress, leave=False)
        # Time kept in float64 whatever x's dtype, and dt a hair long, so that rounding in t + k·dt cannot
        # leave a last step of length ~1e-16 (an extra evaluation).
        ts = torch.tensor([-t0, -t1], dtype=torch.float64, device=x.device)
        dt = (t0 - t1) / (len(noisy) - 1) * (1 + 1e-12)
        with torch.no_grad():
            flat = torchsde.sdeint(_ReverseInTau(forward, score, x.shape, bar), flat, ts, bm=bm, method=method,
                                   dt=dt, adaptive=adaptive, rtol=rtol, atol=atol)[-1]
        bar.close()
        x = flat.reshape(x.shape)
    if grid.denoise:
        x = tweedie(x, score(x, t1), noisy[-1])
    return SamplerOutput(x, score.nfe)
