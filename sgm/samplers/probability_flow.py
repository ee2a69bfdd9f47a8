"""The probability-flow ODE ``dx/dt = f(x, t) - ½ g(t)² s(x, t)`` integrated by torchdiffeq.

Its map ``x_T ↦ x_eps`` is deterministic and carries ``p_T`` to ``p_eps`` (Song et al., 2021).
Adaptive methods (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) choose their own
steps under ``rtol``/``atol`` between the first and last noisy node; fixed-step methods (``euler``,
``midpoint``, ``heun2``, ``heun3``, ``rk4``) step exactly on the grid's noisy nodes.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from ..sde import SDE, _positive
from .base import CheckedScore, SamplerOutput, check_state, tweedie
from .grid import TimeGrid

__all__ = ["ode", "ADAPTIVE_METHODS", "FIXED_METHODS"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")


def check_method(method) -> str:
    if method not in ADAPTIVE_METHODS + FIXED_METHODS:
        raise ValueError(f"method must be one of {ADAPTIVE_METHODS + FIXED_METHODS}, got {method!r}")
    return method


def ode(score, sde: SDE, x: Tensor, grid: TimeGrid, *, method: str = "dopri5", rtol: float = 1e-5,
        atol: float = 1e-5, generator=None, progress: bool = False) -> SamplerOutput:
    """Solve the probability-flow ODE from the grid's first to its last noisy node, then denoise if the
    grid ends with the data. ``generator`` is unused (the map is deterministic) and kept for a uniform call."""
    x = check_state(x)
    method = check_method(method)
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    score = score if isinstance(score, CheckedScore) else CheckedScore(score)
    noisy = grid.noisy
    times = [noisy[0].t, noisy[-1].t] if method in ADAPTIVE_METHODS else [n.t for n in noisy]
    if len(times) > 1 and times[0] != times[-1]:
        bar = tqdm(desc=f"ode ({method})", unit="nfe", disable=not progress, leave=False)

        def velocity(t: Tensor, y: Tensor) -> Tensor:
            bar.update()
            tt = t.to(y.dtype).expand(y.shape[0])
            return sde.ode_drift(y, tt, score(y, t))

        ts = torch.tensor(times, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            # step_t makes adaptive solvers land on the end time instead of stepping past it (t < eps).
            extra = {"options": {"step_t": ts}} if method in ADAPTIVE_METHODS else {}
            x = odeint(velocity, x, ts, method=method, rtol=rtol, atol=atol, **extra)[-1]
        bar.close()
    if grid.denoise:
        x = tweedie(x, score(x, noisy[-1].t), noisy[-1])
    return SamplerOutput(x, score.nfe)
