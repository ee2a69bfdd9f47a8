"""The probability-flow ODE ``dx/dt = f(x, t) - ½ g(t)² s(x, t)``.

Its map ``x_T ↦ x_eps`` is deterministic and carries ``p_T`` to ``p_eps`` (Song et al., 2021).
Adaptive methods (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) are torchdiffeq's:
they choose their own steps under ``rtol``/``atol`` between the first and last noisy node. Fixed-step
methods step exactly on the grid's noisy nodes with the explicit Runge–Kutta tableaus of torchdiffeq's
methods of the same names (``rk4`` is its 3/8-rule), written here as one loop
``k_i = v(t + c_i h, x + h Σ_j a_ij k_j)``, ``x ← x + h Σ_i b_i k_i`` without torchdiffeq's per-step copies
(the tests check both agree to 1e-12).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from ..sde import SDE, _positive
from .base import CheckedScore, SamplerOutput, check_state, tweedie
from .grid import TimeGrid

__all__ = ["ode", "ADAPTIVE_METHODS", "FIXED_METHODS", "TABLEAUS"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
# method: (c, a (lower-triangular rows), b)
TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun2": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "heun3": ((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": ((0.0, 1 / 3, 2 / 3, 1.0), ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (1 / 8, 3 / 8, 3 / 8, 1 / 8)),
}
FIXED_METHODS = tuple(TABLEAUS)


def runge_kutta_step(velocity, x: Tensor, t: float, h: float, tableau) -> Tensor:
    """One explicit Runge–Kutta step of size ``h`` (negative when integrating back in time)."""
    c, a, b = tableau
    ks: list[Tensor] = []
    for ci, row in zip(c, a):
        xi = x
        for aij, k in zip(row, ks):
            if aij != 0:
                xi = xi.add(k, alpha=h * aij)
        ks.append(velocity(xi, t + ci * h))
    for bi, k in zip(b, ks):
        if bi != 0:
            x = x.add(k, alpha=h * bi)
    return x


def check_method(method) -> str:
    if method not in ADAPTIVE_METHODS + FIXED_METHODS:
        raise ValueError(f"method must be one of {ADAPTIVE_METHODS + FIXED_METHODS}, got {method!r}")
    return method


@torch.no_grad()
def ode(score, sde: SDE, x: Tensor, grid: TimeGrid, *, method: str = "dopri5", rtol: float = 1e-5,
        atol: float = 1e-5, generator=None, progress: bool = False) -> SamplerOutput:
    """Solve the probability-flow ODE from the grid's first to its last noisy node, then denoise if the
    grid ends with the data. ``generator`` is unused (the map is deterministic) and kept for a uniform call."""
    x = check_state(x)
    method = check_method(method)
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    score = score if isinstance(score, CheckedScore) else CheckedScore(score)
    noisy = grid.noisy
    if len(noisy) > 1 and method in TABLEAUS:
        def velocity(y: Tensor, t: float) -> Tensor:
            tt = torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device)
            return sde.ode_drift(y, tt, score(y, tt))

        with torch.no_grad():
            for a, b in tqdm(list(zip(noisy[:-1], noisy[1:])), desc=f"ode ({method})", disable=not progress,
                             leave=False):
                x = runge_kutta_step(velocity, x, a.t, b.t - a.t, TABLEAUS[method])
    elif len(noisy) > 1:
        bar = tqdm(desc=f"ode ({method})", unit="nfe", disable=not progress, leave=False)

        def ode_func(t: Tensor, y: Tensor) -> Tensor:
            bar.update()
            tt = t.to(y.dtype).expand(y.shape[0])
            return sde.ode_drift(y, tt, score(y, tt))

        ts = torch.tensor([noisy[0].t, noisy[-1].t], dtype=x.dtype, device=x.device)
        with torch.no_grad():
            # step_t makes the solver land on the end time instead of stepping past it (t < eps).
            x = odeint(ode_func, x, ts, method=method, rtol=rtol, atol=atol, options={"step_t": ts})[-1]
        bar.close()
    if grid.denoise:
        x = tweedie(x, score(x, noisy[-1].t), noisy[-1])
    return SamplerOutput(x, score.nfe)
