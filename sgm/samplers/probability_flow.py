"""The probability-flow ODE ``dx/dt = u(x, t)``, the velocity ``u = α' x̂_0 + σ' ε̂ = f x - ½ g² s``.

Its map ``x_T ↦ x_eps`` is deterministic and carries ``p_T`` to ``p_eps`` (Song et al., 2021). Written as the
velocity (``Prediction.velocity``) it stays finite where ``α = 0`` (rectified flow at ``t = 1``, where ``f = -∞``), so
these solvers start from the exact top of every path. On ``RectifiedFlow()`` (whose time is diffusers' σ) Euler at
the scheduler's sigmas is diffusers' ``FlowMatchEulerDiscreteScheduler`` and ``heun2`` its
``FlowMatchHeunDiscreteScheduler``, for every shift of theirs (the shift is in their sigmas); on
``RectifiedFlow(shift)`` these methods step in the shifted time, another discretisation (docs/paths.md).
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

from ..checks import positive
from .grid import TimeGrid
from .solver import Model, Solver

__all__ = ["ode_solver", "RungeKutta", "AdaptiveODE", "ADAPTIVE_METHODS", "FIXED_METHODS", "TABLEAUS"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
# method: (c, a (lower-triangular rows), b)
TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun2": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "heun3": ((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": ((0.0, 1 / 3, 2 / 3, 1.0), ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (1 / 8, 3 / 8, 3 / 8, 1 / 8)),
}
ORDERS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
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


def odeint_landing(func, y0, ts: Tensor, method: str, rtol: float, atol: float):
    """torchdiffeq's adaptive ``odeint(func, y0, ts)`` that lands on every time of ``ts`` (``step_t``: never steps
    past the interval's ends, where a path's model is off its path) and holds the initial step's probe
    (Hairer's ``h0 = 0.01·|y|/|f|``, large where ``f`` is small) inside ``[min ts, max ts]``: ``func(t, y)`` only
    ever sees times of the interval."""
    lo, hi = float(ts.min()), float(ts.max())
    return odeint(lambda t, y: func(t.clamp(lo, hi), y), y0, ts, method=method, rtol=rtol, atol=atol,
                  options={"step_t": ts})


def _velocity(model: Model, first):
    """``u(y, t)``, the probability-flow velocity; ``first`` is the node at the step's start (a grid node: on a
    chain grid it carries the chain's marginal)."""
    def velocity(y: Tensor, t: float) -> Tensor:
        return model(y, first if t == first.t else t).velocity
    return velocity


class RungeKutta(Solver):
    """An explicit Runge–Kutta ``method`` on the probability-flow ODE, stepping from node to node in t."""

    stochastic = False

    def __init__(self, method: str = "rk4"):
        if method not in TABLEAUS:
            raise ValueError(f"method must be one of {FIXED_METHODS}, got {method!r}")
        self.method, self.ode_order, self.evals_per_step = method, ORDERS[method], len(TABLEAUS[method][0])
        self.name = f"ode ({method})"

    def step(self, model: Model, x, a, b, state, noise):
        return runge_kutta_step(_velocity(model, a), x, a.t, b.t - a.t, TABLEAUS[self.method]), state


class AdaptiveODE(Solver):
    """torchdiffeq's adaptive ``method`` under ``rtol``/``atol`` from the grid's first to its last noisy node."""

    stochastic, evals_per_step, adaptive = False, None, True
    samplewise = False  # the step-size control reads the whole batch

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5):
        if method not in ADAPTIVE_METHODS:
            raise ValueError(f"method must be one of {ADAPTIVE_METHODS}, got {method!r}")
        self.method, self.rtol, self.atol = method, positive("rtol", rtol), positive("atol", atol)
        self.ode_order = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}[method]
        self.name = f"ode ({method})"

    def stepping_grid(self, grid: TimeGrid) -> TimeGrid:
        noisy = grid.noisy
        return TimeGrid(((noisy[0], noisy[-1]) if len(noisy) > 1 else noisy) + grid.nodes[len(noisy):])

    def step(self, model: Model, x, a, b, state, noise):
        velocity = _velocity(model, a)
        # Half precision: the step-size controller works in float32 (in float16 its error norms and step sizes
        # overflow to inf and the time to NaN); the score still sees x's dtype.
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        ts = torch.tensor([a.t, b.t], dtype=work, device=x.device)
        # clamped again in float64: ts in float32 (half precision) rounds a.t, which the first node is matched by
        y = odeint_landing(lambda t, y: velocity(y.to(x.dtype), min(max(float(t), b.t), a.t)).to(work), x.to(work),
                           ts, self.method, self.rtol, self.atol)[-1]
        return y.to(x.dtype), state


def ode_solver(method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5) -> Solver:
    """The probability-flow ODE solved by ``method``: a fixed-step Runge–Kutta method on the grid's noisy nodes
    (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``) or torchdiffeq's adaptive one under ``rtol``/``atol``."""
    method = check_method(method)
    rtol, atol = positive("rtol", rtol), positive("atol", atol)
    return RungeKutta(method) if method in TABLEAUS else AdaptiveODE(method, rtol, atol)
