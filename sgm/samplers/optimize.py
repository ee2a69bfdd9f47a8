"""Optimised time grids: where a deterministic sampler should step for a given budget.

For a sampler ``S`` and a grid ``G`` of ``steps`` noisy nodes from ``T`` to ``eps`` plus the data node, the
objective is the sampler's **map error** on a calibration batch of ``n`` prior draws,

    E(G) = (1/n) Σ_i ‖S_G(x_T^i) - Φ(x_T^i)‖,

where ``Φ`` is the probability-flow map by dopri5 at ``rtol = atol = reference_tol`` from ``T`` to ``eps``
followed by Tweedie's denoising at ``eps`` — the same ending as every sampler's (``integrate``), so the search
judges where the sampler steps, not a difference of conventions, and ``Φ`` stays defined for any score function
(a network's score is unreliable below the ``eps`` it was trained to; an exact mixture's Tweedie jump from
``eps = 1e-3`` differs from the flow to ``σ = 0`` by ``O(σ(eps)²) ≈ 1e-4``).

The grid's ends are fixed at ``T`` and ``eps``; its ``steps - 2`` interior nodes are free, parameterised by
their positions in the half log-SNR, ``u_k = (λ_k - λ(T))/(λ(eps) - λ(T))`` with ``0 < u_1 < … < u_m < 1``
(monotone by construction). The search runs the sampler itself, so it needs no model of the solver's error and
holds for single-step, multistep (whose error depends on the history of steps) and singlestep-mixed-order
solvers alike:

1. start: the best of the fixed spacings ``uniform``, ``quadratic``, ``logsnr`` and ``karras`` on the batch
   (or the one named by ``start``);
2. descent: coordinate pattern search on ``E`` — each interior node in turn is moved by ``±h_k`` in ``u``
   (kept inside its neighbours), a move is kept if it lowers ``E`` (and ``h_k`` grows ×1.5), otherwise ``h_k``
   halves; sweeps stop when two that moved a node each improved ``E`` by less than ``tol`` (relative), when
   every ``h_k`` is below ``MIN_MOVE``, or after ``sweeps``.

With ``dp=True`` a second descent starts from the optimum of a surrogate found by dynamic programming over
``candidates`` nodes uniform in λ (Analytic-DPM's trajectory search, Bao et al. 2022, with local map errors for
costs: see ``_Objective.dp``), and the better of the two results is kept. The surrogate sums local errors, and
a multistep solver's first step is its lower-order warm-up, so it is a start, never the answer.

Every evaluation is a full run of the sampler on the batch, so the cost is the reference (a few hundred
evaluations) plus about ``(4 + 2·m·sweeps)`` runs of ``sampler.nfe(steps)`` evaluations each, all counted
(``grid.info["nfe"]``); ``dp=True`` adds the surrogate's edges (``evals_per_step + 1`` evaluations each) and
a second descent.
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from ..paths import SDE
from ..checks import integer, real
from .base import CheckedScore, SamplerDiverged, check_state
from .grid import TimeGrid, check_eps, time_grid
from .probability_flow import AdaptiveODE, _velocity
from .registry import _check_shape, solver as make_solver
from .solver import Model, Solver, integrate

__all__ = ["optimize_grid", "flow_map", "map_error", "cheapest_path", "FIXED_SPACINGS"]

FIXED_SPACINGS = ("uniform", "quadratic", "logsnr", "karras")
MIN_MOVE = 1e-3  # the descent stops when every node's step in u = (λ - λ(T))/(λ(eps) - λ(T)) is below this


def flow_map(score, sde: SDE, x_T: Tensor, eps: float | None = None, tol: float = 1e-8) -> tuple[Tensor, int]:
    """``Φ(x_T)``: the probability-flow ODE by dopri5 at ``rtol = atol = tol`` from ``T`` to ``eps``, then Tweedie's
    denoising at ``eps``. Returns ``(x_0, nfe)``."""
    out = integrate(AdaptiveODE("dopri5", tol, tol), score, sde, check_state(x_T), time_grid(sde, 2, eps=eps))
    return out.x, out.nfe


def _trajectory(model: Model, x_T: Tensor, grid: TimeGrid, tol: float) -> list[Tensor]:
    """The probability-flow states at every noisy node of ``grid``: one dopri5 run at ``rtol = atol = tol`` that
    lands on each node (``step_t``), so the last state is ``flow_map``'s before its Tweedie step."""
    velocity = _velocity(model, grid.noisy[0])
    ts = torch.tensor([n.t for n in grid.noisy], dtype=x_T.dtype, device=x_T.device)
    lo, hi = grid.noisy[-1].t, grid.noisy[0].t  # the initial step's probe held inside the interval
    return list(odeint(lambda t, y: velocity(y, min(max(float(t), lo), hi)), x_T, ts, method="dopri5", rtol=tol, atol=tol,
                       options={"step_t": ts}))


def map_error(x: Tensor, reference: Tensor) -> float:
    """``(1/n) Σ_i ‖x_i - reference_i‖`` over the batch (each sample flattened); ``inf`` if ``x`` is not finite."""
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return float((x - reference).flatten(1).norm(dim=1).mean())


def _check_solver(sampler: str, options: dict) -> Solver:
    method = make_solver(sampler, **options)
    if method.stochastic:
        raise ValueError(f"sampler {sampler!r} with options {options} is stochastic; optimize_grid needs a "
                         "deterministic sampler (its map x_T -> x_0 is what the grid is optimised for)")
    if method.evals_per_step is None:
        raise ValueError(f"sampler {sampler!r} with options {options} chooses its own steps (adaptive); "
                         "optimize_grid needs a fixed-step sampler")
    return method


def _count(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class _Objective:
    """``E(u)`` for interior positions ``u`` in λ (see the module docstring), counting evaluations."""

    def __init__(self, method: Solver, score, sde: SDE, x_T: Tensor, reference: Tensor, eps: float, bar=None):
        self.method, self.score, self.sde, self.x_T, self.reference, self.eps = method, score, sde, x_T, reference, eps
        self.bar = bar  # a progress bar counting solver runs, or None
        lo, hi = sde.noise_level(torch.tensor([eps, sde.T], dtype=torch.float64)).tolist()
        self.lam_T, self.lam_eps = -math.log(hi), -math.log(lo)
        self.nfe = self.runs = 0

    def positions(self, grid: TimeGrid) -> list[float]:
        return [(n.lam - self.lam_T) / (self.lam_eps - self.lam_T) for n in grid.noisy[1:-1]]

    def grid(self, u: list[float]) -> TimeGrid:
        lam = torch.tensor([self.lam_T + v * (self.lam_eps - self.lam_T) for v in u], dtype=torch.float64)
        t = self.sde.time_at_noise_level(torch.exp(-lam)).clamp(self.eps, self.sde.T).tolist()
        return TimeGrid.from_times(self.sde, [self.sde.T, *t, self.eps])

    def dp(self, steps: int, candidates: int, tol: float) -> tuple[TimeGrid | None, int]:
        """The surrogate optimum: the path of ``steps`` nodes among ``candidates`` nodes uniform in λ (ends
        included) minimising the sum of the edges' local errors ``c(i, j) = mean ‖D_j(S_{i→j}(X_i)) - D_j(X_j)‖``:
        one sampler step from the exact state ``X_i`` (dopri5) at node ``i`` to node ``j``, compared with the
        exact state at ``j`` through Tweedie's denoiser ``D_j`` there (data units: an error at high noise
        counts as much as it moves the predicted data). The last edge's cost is exactly its share of the final
        error. A multistep solver takes its first, lower-order, step here, so for it this is a rougher surrogate.
        Returns the grid (``None`` if the sampler diverged on every path) and the evaluations spent."""
        K = candidates
        fine = self.grid([k / (K - 1) for k in range(1, K - 1)])
        model = Model(self.score, self.sde)
        states = _trajectory(model, self.x_T, fine, tol)
        denoised = [model(x, node).x0 for x, node in zip(states, fine.noisy)]
        span = max(2, math.ceil(4 * (K - 1) / (steps - 1)))
        cost = [[math.inf] * K for _ in range(K)]
        for i in range(K - 1):
            for j in range(i + 1, min(K, i + span + 1)):
                a, b = fine.noisy[i], fine.noisy[j]
                try:
                    y = integrate(self.method, model.score, self.sde, states[i], TimeGrid((a, b), fine.sde)).x
                    cost[i][j] = map_error(model(y, b).x0, denoised[j])
                except SamplerDiverged:
                    pass
        path = cheapest_path(cost, steps)
        if path is None:
            return None, model.nfe
        return TimeGrid((*(fine.noisy[k] for k in path), *fine.nodes[len(fine.noisy):]), fine.sde), model.nfe

    def __call__(self, grid: TimeGrid) -> float:
        self.runs += 1
        if self.bar is not None:
            self.bar.update()
        score = CheckedScore(self.score)
        try:
            x = integrate(self.method, score, self.sde, self.x_T, grid).x
        except SamplerDiverged:
            return math.inf
        finally:
            self.nfe += score.nfe
        return map_error(x, self.reference)


def cheapest_path(cost: list[list[float]], nodes: int) -> list[int] | None:
    """The increasing path ``0 = k_1 < … < k_nodes = K-1`` minimising ``Σ cost[k_i][k_{i+1}]`` (``K = len(cost)``),
    by dynamic programming over the number of edges: ``best_e(j) = min_i best_{e-1}(i) + cost[i][j]``;
    ``None`` when every such path has an infinite cost."""
    K = len(cost)
    best, back = [[math.inf] * K for _ in range(nodes)], [[-1] * K for _ in range(nodes)]
    best[0][0] = 0.0
    for e in range(1, nodes):
        for j in range(1, K):
            for i in range(j):
                c = best[e - 1][i] + cost[i][j]
                if c < best[e][j]:
                    best[e][j], back[e][j] = c, i
    if not math.isfinite(best[nodes - 1][K - 1]):
        return None
    path = [K - 1]
    for e in range(nodes - 1, 0, -1):
        path.append(back[e][path[-1]])
    return path[::-1]


def optimize_grid(score, sde: SDE, steps: int, sampler: str = "ddim", *, shape, n: int = 256,
                  generator: torch.Generator | None = None, eps: float | None = None, start: str | None = None,
                  dp: bool = False, candidates: int | None = None, sweeps: int = 6, tol: float = 1e-3,
                  reference_tol: float = 1e-8, dtype: torch.dtype = torch.float64, device=None, progress: bool = False,
                  **options) -> TimeGrid:
    """The grid of ``steps`` noisy nodes from ``T`` to ``eps`` (plus the data node) on which the deterministic
    ``sampler`` (with ``options``) has the least map error against the probability-flow map on ``n`` prior draws
    of per-sample ``shape`` from ``generator``, in ``dtype`` (a network's own dtype; float64 by default) on
    ``device`` (see the module docstring for the objective and the search; ``dp``, ``candidates``: the optional
    dynamic-programming start; ``sweeps``, ``tol``: the descent; ``reference_tol``: dopri5's tolerance for ``Φ``;
    ``progress``: a bar counting the sampler's runs).

    Returns a ``TimeGrid`` for ``sde``; ``grid.info`` records the sampler and options, the calibration errors of
    the fixed spacings and of the result, the ``history`` of ``(nfe, error)`` after each sweep, and the cost:
    ``nfe`` (score evaluations of a batch of ``n``, reference included), ``reference_nfe``, ``runs`` and
    ``seconds``. Save it with ``grid.save(path)``; reuse it with ``sgm.sample(..., grid=grid)``.
    """
    t_start = time.perf_counter()
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sgm SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    steps = integer("steps", steps)
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a sampler name (str), got {type(sampler).__name__}")
    method = _check_solver(sampler, options)
    shape = _check_shape(shape)
    n = _count("n", n, 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    eps = check_eps(eps, sde)
    if start is not None and start not in FIXED_SPACINGS:
        raise ValueError(f"start must be None (the best of {FIXED_SPACINGS}) or one of them, got {start!r}")
    if not isinstance(dp, bool):
        raise TypeError(f"dp must be a bool, got {dp!r}")
    if candidates is None:
        candidates = min(max(3 * steps, 24), 64)
    candidates = _count("candidates", candidates, max(steps, 3))
    sweeps = _count("sweeps", sweeps, 0)
    tol = real("tol", tol)
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    reference_tol = real("reference_tol", reference_tol)
    if not 0 < reference_tol < 1:
        raise ValueError(f"reference_tol must lie in (0, 1), got {reference_tol}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    if device is None:
        device = generator.device if generator is not None else "cpu"
    x_T = sde.prior_sample((n, *shape), generator=generator, dtype=dtype, device=device)
    reference, reference_nfe = flow_map(score, sde, x_T, eps, reference_tol)
    bar = tqdm(desc=f"optimize_grid ({sampler})", unit="run", disable=not progress, leave=False)
    objective = _Objective(method, score, sde, x_T, reference, eps, bar)

    starts = (start,) if start is not None else FIXED_SPACINGS
    grids = {name: time_grid(sde, steps, name, eps) for name in starts}
    fixed = {name: objective(g) for name, g in grids.items()}
    best_fixed = min(fixed, key=fixed.get)
    if not math.isfinite(fixed[best_fixed]):
        raise SamplerDiverged(f"sampler {sampler!r} diverged on every starting grid ({', '.join(starts)})")
    descents = {best_fixed: (grids[best_fixed], fixed[best_fixed])}
    dp_error = dp_nfe = None
    if dp and steps > 2:
        dp_grid, dp_nfe = objective.dp(steps, candidates, reference_tol)
        objective.nfe += dp_nfe
        if dp_grid is not None:
            dp_error = objective(dp_grid)
            descents["dp"] = (dp_grid, dp_error)
    history, results = [], {}
    for name, (grid, error) in descents.items():
        history.append((objective.nfe + reference_nfe, error))
        u = objective.positions(grid)
        if u and sweeps and math.isfinite(error):
            u, grid, error = _descend(objective, u, grid, error, sweeps, tol, history, reference_nfe)
        results[name] = (grid, error)
    best_start = min(results, key=lambda name: results[name][1])
    grid, error = results[best_start]
    bar.close()

    info = {"method": "coordinate descent in λ from the best fixed spacing" + (" and from the DP surrogate" if dp else ""),
            "sampler": sampler,
            "options": dict(options), "steps": steps, "eps": eps, "n": n, "shape": list(shape),
            "reference": f"dopri5 rtol=atol={reference_tol:g} to eps, then Tweedie", "start": best_start,
            "fixed_errors": fixed, "dp_error": dp_error, "dp_nfe": dp_nfe, "error": error, "history": [list(h) for h in history],
            "nfe": objective.nfe + reference_nfe, "reference_nfe": reference_nfe, "runs": objective.runs,
            "seconds": time.perf_counter() - t_start}
    return TimeGrid(grid.nodes, grid.sde, info)


def _descend(objective: _Objective, u: list[float], grid: TimeGrid, error: float, sweeps: int, tol: float,
             history: list, reference_nfe: int):
    """Coordinate pattern search on the interior positions ``u`` (see the module docstring)."""
    m = len(u)
    bounds = lambda k: (u[k - 1] if k else 0.0, u[k + 1] if k + 1 < m else 1.0)  # noqa: E731
    h = [0.25 * (hi - lo) for lo, hi in map(bounds, range(m))]
    direction, stalled = [1.0] * m, 0
    for _ in range(sweeps):
        before, moved = error, False
        for k in range(m):
            lo, hi = bounds(k)
            margin = 0.02 * (hi - lo)
            for d in (direction[k], -direction[k]):
                trial = min(max(u[k] + d * h[k], lo + margin), hi - margin)
                if trial == u[k]:
                    continue
                candidate = u[:k] + [trial] + u[k + 1:]
                trial_grid = objective.grid(candidate)
                trial_error = objective(trial_grid)
                if trial_error < error:
                    u, grid, error, direction[k], moved = candidate, trial_grid, trial_error, d, True
                    h[k] *= 1.5
                    break
            else:
                h[k] *= 0.5
        history.append((objective.nfe + reference_nfe, error))
        if moved:
            stalled = stalled + 1 if before - error <= tol * before else 0
        if stalled == 2 or max(h) < MIN_MOVE:
            break
    return u, grid, error
