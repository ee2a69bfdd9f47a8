"""S4S, "Solving for a diffusion model solver" (Frankel et al., ICML 2025): a solver's coefficients learned so that its
few-step map matches the model's own probability-flow map on prior draws.

Write every step of a base solver in EDM's coordinates, ``y = x/α`` and the noise level ``σ = std/α`` (every path is
the VE process there), as PAS does: the step ``i`` from node ``a`` to node ``b`` is ``y_b = y_a + h_i d_i``,
``h_i = σ_b - σ_a``, with the direction ``d_i`` the base solver takes (DDIM's ``ε̂``, the multistep combination of
iPNDM or DPM-Solver++, …; into the data node ``d = ε̂`` and ``h = -σ``). S4S replaces each direction by a learned
linear combination of the last ``window`` directions of the run,

    d̃_i = Σ_{j=0}^{m_i - 1} c_{i,j} d_{i-j},    m_i = min(i + 1, window),      y_{i+1} = y_i + h_i d̃_i,

so that the corrected sampler is a linear multistep method whose coefficients are free: for DDIM as the base,
``d_{i-j} = ε̂(x_{i-j})`` and ``c`` are exactly S4S's coefficients of the past model outputs; for a multistep base the
directions span the same past outputs. ``c_{i,0} = 1``, ``c_{i,j>0} = 0`` is the base solver itself, where the
calibration starts. The directions are the base solver's own on the corrected trajectory, and no step evaluates the
model more than the base does. ``window`` is 3 by default: over the 72 rows of ``benchmarks/corrections.py --n 64
--n-test 400 --no-optimised`` with ``--s4s-window`` 2, 3 and 4, the geometric mean of S4S's held-out error over its
base's was 0.160, 0.145 and 0.149, and each window was the best of the three in 19, 28 and 25 rows.

**Objective** (S4S's global matching loss, with sgm's map error as the distance): all coefficients jointly,

    c = argmin  L(c),    L(c) = mean_i ‖Ψ_c(x_T^i) - Φ(x_T^i)‖      (Ψ_c the corrected sampler, Φ the teacher)

over ``n`` prior draws, by L-BFGS (strong-Wolfe line search, at most ``iterations`` iterations) on the gradient
through the whole run (autograd through the sampler and the model), stopped after ``patience`` iterations without
gain. The iterate kept is the one of least loss on the ``validation`` fraction of the draws (held out from the fit);
by default none is held out and it is the fit's own minimum, measured better (benchmarks/corrections.py: ``s4s``
against ``s4s_v``, half the draws held out). S4S-Alt alternates the fit with a search over the time
steps; here the grid is ``optimize_grid``'s (descent, LD3, …) and the coefficients are fitted on it. The coefficients
are kept only where they lower ``L`` below the base solver's.
The base may be ``dpm_solver_v3`` with its EMS (``ems=`` an ``EMS``, e.g. ``ems(...).solver().ems``): the record keeps
the table in its params, so it saves as JSON like every correction. From an ``α = 0`` node (rectified flow's top)
``y`` is undefined: that step stays the base's and adds no direction.

Cost: the teacher, then per L-BFGS function evaluation one differentiated run of the base solver on the batch
(``nfe`` counts the forward evaluations).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...checks import flag, integer, real
from ..base import SamplerDiverged
from ..dpm_v3 import EMS
from ..grid import TimeGrid
from ..registry import solver as make_solver
from ..solver import integrate, run_differentiable
from .base import Correction, Corrected, finish_record, flat, moments_from, moments_params, register_method, setup

__all__ = ["S4S", "s4s", "initial_coefficients", "step_scales"]

def _split_ems(options: dict) -> tuple[dict, dict]:
    """``options`` without DPM-Solver-v3's ``ems`` table, and the table as JSON params (``{}`` without one)."""
    table = options.get("ems")
    if not isinstance(table, EMS):
        return dict(options), {}
    rest = {k: v for k, v in options.items() if k != "ems"}
    return rest, {"ems": {k: getattr(table, k).tolist() for k in ("lams", "l", "s", "b")}}


def initial_coefficients(grid: TimeGrid, window: int) -> list[list[float]]:
    """The base solver's coefficients: per step (the step into the data node last) ``[1, 0, …]`` of length
    ``m_i = min(i' + 1, window)``, ``i'`` the step's index among those from a node with ``α > 0``."""
    steps = len(grid.noisy) - (0 if grid.denoise else 1)
    offset = sum(1 for node in grid.noisy[:steps] if node.scale == 0)  # the α = 0 top adds no direction
    return [[1.0] + [0.0] * (min(i + 1, window) - 1) for i in range(steps - offset)]


def step_scales(grid: TimeGrid) -> list[float]:
    """The fit's preconditioner: per step (as ``initial_coefficients``) ``min(1, √(1 + σ_b²)/|h|)``, the coefficients
    moving by that times the optimiser's variables. A coefficient of a step ``σ_a → σ_b`` moves ``y_b`` by ``h·d``
    per unit, against a state of size ``√(1 + σ_b²)``: from rectified flow's top at ``t = 1 - 10⁻⁶`` (σ = 10⁶) that is
    10⁵ times the later steps', which leaves L-BFGS's curvature model to a single coefficient."""
    nodes = [node for node in grid.noisy if node.scale > 0]
    ends = [node.noise_level for node in nodes[1:]] + [0.0]
    scales = [min(1.0, math.sqrt(1 + b**2) / abs(b - a.noise_level)) for a, b in zip(nodes, ends)]
    return scales[:len(initial_coefficients(grid, 1))]


class S4S(Corrected):
    """The base solver with S4S's directions ``d̃_i = Σ_j c_{i,j} d_{i-j}`` (``coefficients[i]``, one list per step
    from a node with ``α > 0``, the step into the data node last; see the module docstring)."""

    method = "s4s"

    def __init__(self, base, coefficients, afs: bool = False, moments=None):
        super().__init__(base, afs, moments)
        self.coefficients = [c if isinstance(c, Tensor) else [float(v) for v in c] for c in coefficients]

    def check(self, grid: TimeGrid) -> None:
        super().check(grid)
        expected = [len(c) for c in initial_coefficients(grid, max(map(len, self.coefficients), default=1))]
        if [len(c) for c in self.coefficients] != expected:
            raise ValueError(f"S4S coefficients for {len(self.coefficients)} steps do not fit a grid of "
                             f"{len(grid.noisy)} noisy nodes (steps of {expected} directions): calibrate on this grid")

    def init(self, x, grid: TimeGrid):
        return (super().init(x, grid), True, ())

    def combine(self, history: tuple) -> Tensor:
        """``d̃_i`` from ``history``, the directions so far (``d_i`` last: ``i = len(history) - 1``)."""
        c = self.coefficients[len(history) - 1]
        out = history[-1] * c[0]
        for j in range(1, len(c)):
            out = out + history[-1 - j] * c[j]
        return out

    def step(self, model, x, a, b, state, noise):
        inner, first, history = state
        out, inner = self.base_step(model, x, a, b, inner, noise, first=first)
        if a.scale == 0:  # from pure noise: y is undefined there; the step stays the base's
            return out, (inner, False, history)
        y, h = flat(x) / a.scale, b.noise_level - a.noise_level
        history = history + ((flat(out) / b.scale - y) / h,)
        return (b.scale * (y + h * self.combine(history))).reshape(x.shape), (inner, False, history)

    def denoise(self, model, x, node, state):
        inner, _, history = state
        if node.scale == 0 or len(history) >= len(self.coefficients):
            return self.base.denoise(model, x, node, inner)
        y, h = flat(x) / node.scale, -node.noise_level
        history = history + (flat(model(x, node).eps),)
        return (y + h * self.combine(history)).reshape(x.shape)

    def __repr__(self) -> str:
        c = [[float(v) for v in row] for row in self.coefficients]
        return f"S4S({self.base!r}, coefficients={c}, afs={self.afs})"


def s4s(score, sde, sampler: str = "ipndm", *, grid: TimeGrid | None = None, nfe: int | None = None,
        spacing: str | None = None, shape, generator: torch.Generator | None = None, window: int = 3,
        iterations: int = 100, validation: float = 0.0, patience: int = 10, afs=False, reference_tol: float = 1e-8,
        dtype: torch.dtype = torch.float64, device=None, progress: bool = False, **options) -> Correction:
    """Calibrate S4S for the deterministic ``sampler`` (with ``options``) on ``grid`` (any ``TimeGrid``) or on the
    budget ``nfe`` (the sampler's default ``spacing`` unless given), with the prior draws of the batch ``shape =
    (n, *dims)`` from ``generator`` (see the module docstring: ``window`` directions per step, at most ``iterations``
    L-BFGS iterations on the training draws, the ``validation`` fraction held out to choose the iterate and stop
    after ``patience`` iterations without gain; ``afs``: the analytical first step, ``False``, ``True`` or
    ``"moments"``; ``progress``: a bar over the iterations). Returns a ``Correction`` (``method="s4s"``)."""
    window, iterations = integer("window", window, 1), integer("iterations", iterations, 1)
    validation, patience = real("validation", validation, 0.0, 0.9), integer("patience", patience, 1)
    progress = flag("progress", progress)
    s = setup(score, sde, sampler, options, grid=grid, nfe=nfe, spacing=spacing, shape=shape,
              generator=generator, afs=afs, reference_tol=reference_tol, dtype=dtype, device=device)
    n = s.x_T.shape[0]
    n_valid = min(n - 1, round(validation * n))
    train, valid = slice(0, n - n_valid), slice(n - n_valid, n) if n_valid > 0 else slice(0, n)
    start = initial_coefficients(s.grid, window)
    as_tensor = functools.partial(torch.tensor, dtype=s.x_T.dtype, device=s.x_T.device)
    origin, scales = [as_tensor(c) for c in start], step_scales(s.grid)
    params = [torch.zeros_like(c, requires_grad=True) for c in origin]
    learner = S4S(s.method, origin, bool(afs), s.moments)
    spent, target = [0], flat(s.teacher.x0)

    def coefficients() -> list[Tensor]:
        return [c + scale * u for c, scale, u in zip(origin, scales, params)]

    def loss(part: slice, graph: bool) -> Tensor:
        learner.coefficients = coefficients()
        out = (run_differentiable if graph else integrate)(learner, score, sde, s.x_T[part], s.grid)
        spent[0] += out.nfe
        return (flat(out.x) - target[part]).norm(dim=1).mean()

    def closure():
        optimizer.zero_grad()
        try:
            value = loss(train, True)
        except SamplerDiverged:
            value = None
        if value is None or not torch.isfinite(value):  # a trial that diverged: a large loss, no gradient
            return torch.tensor(1e300, dtype=s.x_T.dtype)
        grads = torch.autograd.grad(value, params, allow_unused=True)  # the coefficients' alone: a network's weights
        for p, g in zip(params, grads):                                  # get no .grad from the calibration
            p.grad = torch.zeros_like(p) if g is None else g
        return value

    def checked_loss(part: slice) -> float:
        try:
            value = float(loss(part, False))
        except SamplerDiverged:
            return math.inf
        return value if math.isfinite(value) else math.inf

    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=1, max_eval=25, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-12, history_size=20)
    before = best = checked_loss(valid)
    fitted, history, stale = start, [before], 0
    for _ in tqdm(range(iterations), desc=f"s4s ({sampler})", unit="iteration", disable=not progress, leave=False):
        optimizer.step(closure)
        history.append(checked_loss(valid))
        if history[-1] < best:
            best, fitted, stale = history[-1], [c.detach().tolist() for c in coefficients()], 0
        else:
            stale += 1
            if stale >= patience:
                break
    kept = best < before
    info = finish_record(s.record, spent[0])
    info.update(method="S4S (Frankel et al. 2025): learned multistep coefficients of the base's directions",
                window=window, train=n - n_valid, valid=n_valid, loss_before=before, loss_after=best, kept=kept,
                iterations=len(history) - 1, validation_history=history, parameters=sum(len(c) for c in start))
    options, table = _split_ems(options)
    return Correction("s4s", sampler, options, {"coefficients": fitted, "window": window, **table,
                                                **moments_params(s.moments)},
                      s.grid, bool(afs), repr(sde), s.model, info)


def build(correction: Correction) -> S4S:
    p, options = correction.params, dict(correction.options)
    if "ems" in p:
        options["ems"] = EMS(**p["ems"])
    return S4S(make_solver(correction.sampler, **options), p["coefficients"], correction.afs, moments_from(p))


register_method("s4s", build)
