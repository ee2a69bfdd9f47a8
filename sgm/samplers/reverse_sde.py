"""The reverse-time SDE ``dx = [f(x, t) - g(t)² s(x, t)] dt + g(t) dW̄`` integrated by torchsde.

torchsde integrates forward in time, so it is given ``τ = -t``: ``dx = -[f - g² s](x, -τ) dτ + g(-τ) dW_τ``
on ``x`` flattened to ``(batch, D)`` with diagonal noise. Steps are of fixed size
``dt = (t_0 - t_last)/(steps - 1)`` between the grid's first and last noisy node, or adaptive under
``rtol``/``atol`` with ``adaptive=True``.

Brownian motion: on fixed steps with ``euler``/``milstein`` the increments ``W(τ_{k+1}) - W(τ_k) = √dt·z``
are the solver's ``noise(t_k, t_{k+1})``, one draw per step, like every other sampler's noise (a
``torchsde.BrownianInterval`` would draw twice per step to build its bridge tree, at 2.5× the cost); so are
adaptive steps under ``BrownianNoise``, whose path answers any interval. Otherwise adaptive steps, and ``srk``
(which needs Lévy areas), use ``noise.brownian_interval``: a ``BrownianInterval`` seeded by one ``randint`` draw
from the generator, or ``BrownianNoise``'s one torchsde path for the batch.
"""
from __future__ import annotations

import torch
import torchsde
from torch import Tensor

from ..checks import flag, positive
from ..device import wide_float
from ..paths import batch_view
from .grid import TimeGrid
from .noise import Noise
from .solver import Model, Solver

__all__ = ["TorchSDE", "SDE_METHODS"]

SDE_METHODS = ("euler", "milstein", "srk")


class _ReverseInTau(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: Model, shape: torch.Size):
        super().__init__()
        self.model, self.shape = model, shape
        self._pending, self._started, self._g = None, False, None  # _pending: the contract check's (y, τ, drift)

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        # sdeint's contract check calls f(t0, y0) before the first step does: answer both with one evaluation, and
        # hold no drift longer (a held 'out' keeps the allocator from reusing its memory for the next one).
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is y and bool(pending[1] == tau):
            return pending[2]
        x, sde = y.reshape(self.shape), self.model.sde
        t = (-tau).to(y.dtype).reshape(1)  # f(t), g(t)² once, broadcast over the batch
        f, g2 = sde.drift_coefficient(t), sde.diffusion_squared(t)
        # -(f x - g² s) as g² s - f x: two tensor operations, no negation pass (the same numbers, bit for bit)
        out = (x * -batch_view(f, x)).addcmul_(batch_view(g2, x), self.model(x, float(-tau)).score).reshape(y.shape)
        self._g = (tau, g2.sqrt())  # g(τ) is asked next, at the same τ
        if not self._started:
            self._started, self._pending = True, (y, tau, out)
        return out

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        if self._g is not None and bool(self._g[0] == tau):
            return self._g[1].expand_as(y)
        return self.model.sde.diffusion((-tau).to(y.dtype)).expand_as(y)


class _StepBrownian(torchsde.BaseBrownian):
    """Brownian increments ``√(tb - ta)·noise(-ta, -tb)`` as torchsde asks for them: consecutive fixed steps, each
    interval once (Euler, Milstein), or any interval of a ``BrownianNoise`` path, a function of time."""

    def __init__(self, like: Tensor, noise: Noise):
        self._like, self._noise = like, noise

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A:
            raise ValueError("fixed-step Brownian increments answer W(tb) - W(ta) only")
        ta, tb = float(ta), float(tb)
        return self._noise(-ta, -tb, like=self._like).mul_((tb - ta) ** 0.5)

    def __repr__(self):
        return f"_StepBrownian(shape={tuple(self._like.shape)})"

    dtype = property(lambda self: self._like.dtype)
    device = property(lambda self: self._like.device)
    shape = property(lambda self: self._like.shape)
    levy_area_approximation = property(lambda self: "none")


class TorchSDE(Solver):
    """The reverse SDE solved by torchsde's ``method`` from the grid's first to its last noisy node, on the
    fixed steps of the grid's mean spacing, or adaptive under ``rtol``/``atol``. Euler is Euler–Maruyama
    (weak order 1); ``srk`` (Rößler 2010, the SRID2 tableau: deterministic order 3) is of strong order 1.5 and, on
    the additive noise of every sgm path (``g(t)`` free of ``x``), of weak order 2, as Rößler's strong-1.5 schemes
    for additive noise are; torchsde's ``weak_order = 1.5`` is its bound for diagonal noise ``g(x, t)``. Measured
    weak slopes 2.0–2.2 on VP and VE (tests/test_declared_orders.py). State: the fixed step ``dt``."""

    stochastic, needs = True, frozenset({"positive_alpha"})

    def __init__(self, method: str = "euler", adaptive: bool = False, rtol: float = 1e-5, atol: float = 1e-4):
        if method not in SDE_METHODS:
            raise ValueError(f"method must be one of {SDE_METHODS}, got {method!r}")
        self.method, self.adaptive = method, flag("adaptive", adaptive)
        self.rtol, self.atol = positive("rtol", rtol), positive("atol", atol)
        # additive noise (g(t) free of x): Euler and Milstein are of strong order 1 and weak order 1, SRK 1.5 and 2
        srk = method == "srk"
        self.strong_order, self.weak_order, self.name = 1.5 if srk else 1.0, 2.0 if srk else 1.0, f"sde ({method})"
        # Euler and Milstein evaluate the drift once per fixed step; srk's stages and adaptive steps vary.
        self.evals_per_step = None if adaptive or method == "srk" else 1
        # adaptive steps are controlled over the batch; srk's Lévy areas come from one path for the batch
        self.samplewise = not (adaptive or method == "srk")

    def init(self, x: Tensor, grid: TimeGrid) -> float:
        noisy = grid.noisy
        # dt a hair long, so that rounding in t + k·dt cannot leave a last step of length ~1e-16 (an extra evaluation).
        return (noisy[0].t - noisy[-1].t) / max(len(noisy) - 1, 1) * (1 + 1e-12)

    def stepping_grid(self, grid: TimeGrid) -> TimeGrid:
        noisy = grid.noisy
        return TimeGrid(((noisy[0], noisy[-1]) if len(noisy) > 1 else noisy) + grid.nodes[len(noisy):])

    def step(self, model: Model, x, a, b, dt, noise: Noise):
        flat = x.reshape(x.shape[0], -1)
        if self.method == "srk" or (self.adaptive and not noise.brownian):
            bm = noise.brownian_interval(flat, -a.t, -b.t, "space-time" if self.method == "srk" else "none")
        else:  # fixed steps, or adaptive ones on one Brownian path: increments from noise(t0, t1)
            bm = _StepBrownian(flat, noise)
        # Time kept in float64 whatever x's dtype (float32 on a device without float64).
        ts = torch.tensor([-a.t, -b.t], dtype=wide_float(x.device), device=x.device)
        flat = torchsde.sdeint(_ReverseInTau(model, x.shape), flat, ts, bm=bm, method=self.method, dt=dt,
                               adaptive=self.adaptive, rtol=self.rtol, atol=self.atol)[-1]
        return flat.reshape(x.shape), dt
