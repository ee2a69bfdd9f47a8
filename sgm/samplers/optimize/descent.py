"""``optimizer="descent"``: coordinate pattern search on the map error itself.

Objective: ``E(G) = (1/n) Σ_i ‖S_G(x_T^i) - Φ(x_T^i)‖`` on the calibration batch (``common.MapError``), over the
interior positions ``0 < u_1 < … < u_m < 1`` (``m = steps - 2``), with a free first node also ``u_0 ∈ [0, u_1)`` and
with a free last node also ``u_{steps-1} ∈ (u_m, 1]`` (``t ∈ [eps, t_m)``; the data node follows it).

1. start: the best of ``common.start_spacings`` (``uniform``, ``quadratic``, ``logsnr``, ``karras``; ``flow`` on
   rectified flow), or ``start``, each with its pinned ends moved to ``T`` and ``eps`` (``Positions.fit``);
2. each coordinate in turn moves by ``±h_k`` (kept inside its neighbours; ``u_0`` may return to the top ``0`` and
   ``u_{steps-1}`` to ``eps``, ``1``); a move that lowers ``E`` is kept (``h_k`` grows ×1.5), otherwise ``h_k`` halves;
   sweeps stop when two that moved a node each gained less than ``tol`` (relative), when every ``h_k < MIN_MOVE``,
   or after ``sweeps``.

With ``dp=True`` a second descent starts from a dynamic-programming surrogate over ``candidates`` nodes uniform in
``u`` (Analytic-DPM's trajectory search with local map errors for costs, ``Descent.dp``) and the better result is
kept. Cost: one run per start (4, or 5 with ``flow``) and about ``2·m'·sweeps`` more, ``m'`` the free coordinates,
each of ``sampler.nfe(steps)`` evaluations of the batch (``dp`` adds its edges, ``evals_per_step + 1`` evaluations
each, and a second descent).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..base import SamplerDiverged
from ..grid import TimeGrid, time_grid
from ..probability_flow import odeint_landing
from ..solver import Model, integrate
from .common import MapError, Positions, map_error, start_spacings

__all__ = ["descend", "cheapest_path", "MIN_MOVE"]

MIN_MOVE = 1e-3  # the descent stops when every coordinate's step in u is below this


def cheapest_path(cost: list[list[float]], nodes: int, coeff: float = 1.0, start_cost: list[float] | None = None,
                  end_cost: list[float] | None = None) -> list[int] | None:
    """The increasing path ``k_1 < … < k_nodes`` of ``K = len(cost)`` candidates minimising
    ``start_cost[k_1] + Σ_e coeff^(e-1)·cost[k_e][k_{e+1}] + coeff^(nodes-1)·end_cost[k_nodes]`` (edges ``e = 1, 2, …``
    counted from the path's first node, the end cost the weight of an edge after the last; ``coeff = 1``: the plain
    sum; ``start_cost=None``: the path starts at ``k_1 = 0``; ``end_cost=None``: it ends at ``k_nodes = K-1``), by
    dynamic programming over the number of nodes: ``best_1(j) = start_cost[j]``, ``best_k(j) = min_i best_{k-1}(i) +
    coeff^(k-2)·cost[i][j]`` (the weight of an edge depends only on its place from the start, so one pass serves every
    start), then the end ``min_j best_nodes(j) + coeff^(nodes-1)·end_cost[j]``. ``None`` when every such path has an
    infinite cost."""
    K = len(cost)
    start = [0.0] + [math.inf] * (K - 1) if start_cost is None else [float(c) for c in start_cost]
    end = [math.inf] * (K - 1) + [0.0] if end_cost is None else [float(c) for c in end_cost]
    if len(start) != K or len(end) != K:
        raise ValueError(f"start_cost and end_cost must have one entry per node ({K}), got {len(start)}, {len(end)}")
    best, back = [start] + [[math.inf] * K for _ in range(nodes - 1)], [[-1] * K for _ in range(nodes)]
    for k in range(1, nodes):
        weight = coeff ** (k - 1)
        for j in range(1, K):
            for i in range(j):
                c = best[k - 1][i] + weight * cost[i][j]
                if c < best[k][j]:
                    best[k][j], back[k][j] = c, i
    totals = [b + coeff ** (nodes - 1) * e if math.isfinite(e) else math.inf for b, e in zip(best[nodes - 1], end)]
    last = min(range(K), key=lambda j: (totals[j], -j))  # ties: the latest end (the pinned one, K-1)
    if not math.isfinite(totals[last]):
        return None
    path = [last]
    for k in range(nodes - 1, 0, -1):
        path.append(back[k][path[-1]])
    return path[::-1]


def _trajectory(model: Model, x_T: Tensor, grid: TimeGrid, tol: float) -> list[Tensor]:
    """The probability-flow states at every noisy node of ``grid``: one dopri5 run at ``rtol = atol = tol`` that lands
    on each node (``step_t``); the initial step's probe is held inside the interval."""
    ts = torch.tensor([n.t for n in grid.noisy], dtype=x_T.dtype, device=x_T.device)
    return list(odeint_landing(lambda t, y: model(y, float(t)).velocity, x_T, ts, "dopri5", tol, tol))


def _dp_start(objective: MapError, positions: Positions, steps: int, candidates: int, tol: float) -> TimeGrid | None:
    """The surrogate optimum: the path of ``steps`` nodes among ``candidates`` nodes uniform in ``u`` (ends included)
    minimising the sum of the edges' local errors ``c(i, j) = mean ‖D_j(S_{i→j}(X_i)) - D_j(X_j)‖``: one sampler step
    from the exact state ``X_i`` (dopri5) to node ``j``, compared with the exact state at ``j`` through Tweedie's
    denoiser ``D_j`` (data units). ``None`` if the sampler diverged on every path."""
    K = candidates
    fine = positions.grid([k / (K - 1) for k in range(K)])
    model = Model(objective.model, objective.sde)
    states = _trajectory(model, objective.x_T, fine, tol)
    denoised = [model(x, node).x0 for x, node in zip(states, fine.noisy)]
    span = max(2, math.ceil(4 * (K - 1) / (steps - 1)))
    cost = [[math.inf] * K for _ in range(K)]
    for i in range(K - 1):
        for j in range(i + 1, min(K, i + span + 1)):
            a, b = fine.noisy[i], fine.noisy[j]
            try:
                y = integrate(objective.method, model.score, objective.sde, states[i], TimeGrid((a, b), fine.sde)).x
                cost[i][j] = map_error(model(y, b).x0, denoised[j])
            except SamplerDiverged:
                pass
    path = cheapest_path(cost, steps)
    if path is None:
        return None
    return TimeGrid((*(fine.noisy[k] for k in path), *fine.nodes[len(fine.noisy):]), fine.sde)


def descend(objective: MapError, positions: Positions, steps: int, *, start: str | None, free_start: bool,
            free_end: bool, dp: bool, candidates: int, sweeps: int, tol: float, reference_tol: float,
            spent) -> tuple[TimeGrid, dict]:
    """The descent (module docstring) from the best fixed spacing (and from the DP surrogate with ``dp``);
    ``spent()`` is the evaluations spent so far, recorded in the ``history`` of ``[evaluations, error]``."""
    sde, eps = positions.sde, positions.eps
    starts = (start,) if start is not None else start_spacings(sde)
    grids = {name: positions.fit(time_grid(sde, steps, name, eps), free_start, free_end) for name in starts}
    fixed = {name: objective(g) for name, g in grids.items()}
    best_fixed = min(fixed, key=fixed.get)
    if not math.isfinite(fixed[best_fixed]):
        raise SamplerDiverged(f"the sampler diverged on every starting grid ({', '.join(starts)})")
    descents = {best_fixed: (grids[best_fixed], fixed[best_fixed])}
    dp_error = None
    if dp and steps > 2:
        dp_grid = _dp_start(objective, positions, steps, candidates, reference_tol)
        if dp_grid is not None:
            dp_error = objective(dp_grid)
            descents["dp"] = (dp_grid, dp_error)
    history, results = [], {}
    for name, (grid, error) in descents.items():
        history.append((spent(), error))
        u = positions.of_grid(grid)[(0 if free_start else 1):(None if free_end else -1)]  # the free coordinates
        if u and sweeps and math.isfinite(error):
            grid, error = _pattern_search(objective, positions, u, grid, error, (free_start, free_end), sweeps, tol,
                                          history, spent)
        results[name] = (grid, error)
    best_start = min(results, key=lambda name: results[name][1])
    grid, error = results[best_start]
    return grid, {"start": best_start, "fixed_errors": fixed, "dp_error": dp_error, "error": error,
                  "history": [list(h) for h in history]}


def _pattern_search(objective, positions: Positions, u: list[float], grid: TimeGrid, error: float,
                    free: tuple[bool, bool], sweeps: int, tol: float, history: list, spent):
    """Coordinate pattern search on the positions ``u`` (``u[0]`` is the first node's when ``free[0]``, ``u[-1]`` the
    last noisy node's when ``free[1]``)."""
    m, (free_start, free_end) = len(u), free

    def full(v):
        return ([] if free_start else [0.0]) + v + ([] if free_end else [1.0])

    def bounds(k):
        return (u[k - 1] if k else 0.0, u[k + 1] if k + 1 < m else 1.0)

    h = [0.25 * (hi - lo) for lo, hi in map(bounds, range(m))]
    direction, stalled = [1.0] * m, 0
    for _ in range(sweeps):
        before, moved = error, False
        for k in range(m):
            lo, hi = bounds(k)
            margin = 0.02 * (hi - lo)
            for d in (direction[k], -direction[k]):
                low = lo if (free_start and k == 0) else lo + margin  # a free first node may return to the top
                high = hi if (free_end and k == m - 1) else hi - margin  # and a free last one to eps
                trial = min(max(u[k] + d * h[k], low), high)
                if trial == u[k]:
                    continue
                candidate = u[:k] + [trial] + u[k + 1:]
                trial_grid = positions.grid(full(candidate))
                trial_error = objective(trial_grid)
                if trial_error < error:
                    u, grid, error, direction[k], moved = candidate, trial_grid, trial_error, d, True
                    h[k] *= 1.5
                    break
            else:
                h[k] *= 0.5
        history.append((spent(), error))
        if moved:
            stalled = stalled + 1 if before - error <= tol * before else 0
        if stalled == 2 or max(h) < MIN_MOVE:
            break
    return grid, error
