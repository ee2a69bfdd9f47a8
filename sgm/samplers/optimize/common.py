"""What every step optimiser shares: where a node sits (``Positions``), the counted model, the reference map ``Φ``,
the map error and its objective over grids, and the record of what a calibration cost.

**Positions.** A grid of ``steps`` noisy nodes is ``u_0 ≤ u_1 < … < u_{steps-1} = 1`` in a bounded coordinate of the
half log-SNR ``λ`` that keeps the exact top representable: ``u = (φ(λ) - φ(λ_T))/(φ(λ_eps) - φ(λ_T))`` with
``φ(λ) = λ`` on a path whose ``λ(T)`` is finite (VP, VE, cosine, EDM) and ``φ(λ) = log(1 + e^λ)`` where ``α(T) = 0``
(``λ(T) = -∞``: rectified flow, a zero-terminal-SNR table), so that ``u = 0`` is the top ``t = T`` exactly, and on
rectified flow ``φ = -log t``, ``u = log t/log eps``. ``u_0 = 0`` pins the first node at ``T``; a free first node has
``u_0 > 0`` and starts the sampler from the prior draw at ``t(u_0) < T``. ``u_{steps-1} = 1`` pins the last noisy node
at ``eps``; a free last node has ``u_{steps-1} ∈ (u_{steps-2}, 1]``, i.e. ``t ∈ [eps, t_{steps-2})``, and the data node
(Tweedie's ``x̂_0``) follows it unchanged.

**Starts.** An optimiser that can free both ends starts from ``start_spacings(sde)``: ``FIXED_SPACINGS``, and on the
paths where diffusers' flow-matching grid is a default (rectified flow and its shifts, ``path_family = "rf"``)
``flow`` too, whose first node is just below ``T`` and whose last is about ``1/steps``; ``Positions.fit`` moves the
ends that are pinned.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import Tensor

from ...paths import GaussianPath
from ...predictions import predicts
from ..base import SamplerDiverged, check_state
from ..grid import TimeGrid, path_family, time_grid
from ..registry import solver as make_solver
from ..solver import Solver, integrate

__all__ = ["FIXED_SPACINGS", "start_spacings", "Positions", "Counted", "flow_map", "map_error", "MapError",
           "check_solver", "ode_order", "Cost"]

FIXED_SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


def start_spacings(sde: GaussianPath) -> tuple[str, ...]:
    """``FIXED_SPACINGS``, with ``flow`` on rectified flow and its shifts (module docstring)."""
    return FIXED_SPACINGS + (("flow",) if path_family(sde) == "rf" else ())


class Positions:
    """The coordinate ``u ∈ [0, 1]`` of a noisy node between ``T`` (``u = 0``) and ``eps`` (``u = 1``), see the module
    docstring; ``grid(u)`` is the ``TimeGrid`` (with its data node) whose noisy nodes sit at ``u``."""

    def __init__(self, sde: GaussianPath, eps: float):
        self.sde, self.eps = sde, eps
        lam_T, lam_eps = sde.lam(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
        self.infinite = math.isinf(lam_T)
        self.lo, self.hi = self.phi(lam_T), self.phi(lam_eps)

    def phi(self, lam: float) -> float:
        if not self.infinite:
            return lam
        return lam + math.log1p(math.exp(-lam)) if lam > 0 else math.log1p(math.exp(lam))  # softplus, stable

    def of_lam(self, lam: float) -> float:
        return (self.phi(lam) - self.lo) / (self.hi - self.lo)

    def of_grid(self, grid: TimeGrid) -> list[float]:
        """``u`` of each noisy node of ``grid``."""
        return [self.of_lam(node.lam) for node in grid.noisy]

    def lam(self, u: float) -> float:
        phi = self.lo + u * (self.hi - self.lo)
        if not self.infinite:
            return phi
        return -math.inf if phi <= 0 else phi + math.log(-math.expm1(-phi))  # log(e^φ - 1)

    def times(self, u: Sequence[float]) -> list[float]:
        """The times at ``u``: exactly ``T`` at ``u = 0`` and ``eps`` at ``u = 1``."""
        inner = [v for v in u if 0 < v < 1]
        t = iter(self.sde.time_at_lam(torch.tensor([self.lam(v) for v in inner], dtype=torch.float64))
                 .clamp(self.eps, self.sde.T).tolist() if inner else [])
        return [self.sde.T if v <= 0 else self.eps if v >= 1 else next(t) for v in u]

    def grid(self, u: Sequence[float]) -> TimeGrid:
        return TimeGrid.from_times(self.sde, self.times(u))

    def fit(self, grid: TimeGrid, free_start: bool, free_end: bool) -> TimeGrid:
        """``grid`` with its first noisy node moved to ``T`` unless ``free_start`` and its last to ``eps`` unless
        ``free_end`` (the other nodes kept exactly); ``grid`` itself when its ends are already there."""
        times = [n.t for n in grid.noisy]
        fitted = [self.sde.T if not free_start and k == 0 else self.eps if not free_end and k == len(times) - 1
                  else t for k, t in enumerate(times)]
        return grid if fitted == times else TimeGrid.from_times(self.sde, fitted, grid.denoise)


class Counted:
    """``model`` counting its calls and the samples it evaluates (``evaluations``: the sum of the batch sizes);
    ``backward`` counts the samples whose evaluation was differentiated. Keeps the model's ``predicts``."""

    def __init__(self, model):
        self.model, self.predicts = model, predicts(model)
        self.calls = self.evaluations = self.backward = 0

    def __call__(self, x: Tensor, t: Tensor, *args) -> Tensor:
        self.calls += 1
        self.evaluations += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.backward += x.shape[0]
        return self.model(x, t, *args)


def flow_map(score, sde: GaussianPath, x_T: Tensor, eps: float | None = None, tol: float = 1e-8) -> tuple[Tensor, int]:
    """``Φ(x_T)``: the probability-flow ODE by dopri5 at ``rtol = atol = tol`` from ``T`` to ``eps``, then Tweedie's
    denoising at ``eps``. Returns ``(x_0, nfe)``."""
    out = integrate(make_solver("ode", method="dopri5", rtol=tol, atol=tol), score, sde, check_state(x_T),
                    time_grid(sde, 2, eps=eps))
    return out.x, out.nfe


def map_error(x: Tensor, reference: Tensor) -> float:
    """``(1/n) Σ_i ‖x_i - reference_i‖`` over the batch (each sample flattened); ``inf`` if ``x`` is not finite."""
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return float((x - reference).flatten(1).norm(dim=1).mean())


class MapError:
    """``E(G) = (1/n) Σ_i ‖S_G(x_T^i) - Φ(x_T^i)‖``: the sampler ``method`` run on ``grid`` from the batch ``x_T``
    against ``reference``; ``inf`` when it diverges. ``runs`` counts the runs; ``bar`` (optional) is updated per run."""

    def __init__(self, method: Solver, model, sde: GaussianPath, x_T: Tensor, reference: Tensor, bar=None):
        self.method, self.model, self.sde, self.x_T, self.reference, self.bar = method, model, sde, x_T, reference, bar
        self.runs = 0

    def __call__(self, grid: TimeGrid) -> float:
        self.runs += 1
        if self.bar is not None:
            self.bar.update()
        try:
            x = integrate(self.method, self.model, self.sde, self.x_T, grid).x
        except SamplerDiverged:
            return math.inf
        return map_error(x, self.reference)


def check_solver(sampler: str, options: dict, stochastic_ok: bool = False) -> Solver:
    """The registered solver; refused (``ValueError``) when adaptive, or stochastic unless ``stochastic_ok``."""
    method = make_solver(sampler, **options)
    if method.stochastic and not stochastic_ok:
        raise ValueError(f"sampler {sampler!r} with options {options} is stochastic; this optimizer needs a "
                         "deterministic sampler (its map x_T -> x_0 is what the grid is optimised for); "
                         "optimizer='ays' optimises grids for stochastic samplers too")
    if method.evals_per_step is None:
        raise ValueError(f"sampler {sampler!r} with options {options} chooses its own steps (adaptive); "
                         "optimize_grid needs a fixed-step sampler")
    return method


def ode_order(method: Solver) -> int:
    """The declared order of the solver's deterministic map (``ode_order``; ``order`` in the first protocol)."""
    order = getattr(method, "ode_order", None)
    if order is None:
        order = getattr(method, "order", 1)
    return max(1, int(order))


class Cost:
    """The calibration's bill: model evaluations (counted sample by sample through ``Counted``), backward passes and
    seconds since construction. ``record(n)`` is ``grid.info["cost"]``: ``evaluations`` in evaluations of a batch of
    the ``n`` calibration draws (``sample_evaluations / n``), ``draws``, ``sample_evaluations``, ``backward`` and
    ``seconds``."""

    def __init__(self, model: Counted):
        self.model, self.start = model, time.perf_counter()

    def record(self, n: int) -> dict:
        return {"evaluations": self.model.evaluations / n, "draws": n, "sample_evaluations": self.model.evaluations,
                "backward": self.model.backward, "seconds": time.perf_counter() - self.start}
