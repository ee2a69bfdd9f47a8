"""``optimizer="gits"``: Geometry-Inspired Time Scheduling (Chen, Zhou, Wang, Shen & Lyu, 2024, "On the Trajectory
Regularity of ODE-based Diffusion Sampling", ICML; the diff-sampler repository's ``gits-main``).

1. a fine candidate grid ``t̂_0 = T > … > t̂_{K-1} = eps`` (``candidates = K = 61`` nodes, ``karras`` ρ = 7: the paper's
   61 polynomial timestamps) and a teacher trajectory ``X_k`` on it from the calibration draws: the teacher sampler
   (iPNDM, ``max_order = 4``) run on the fine grid, whose evaluations ``D_k, ε_k`` at ``X_k`` it keeps;
2. the local cost of jumping from candidate ``i`` to ``j > i`` with one Euler step of the probability-flow ODE in the
   noise level ``σ = std/scale`` (EDM's step; DDIM's ``x̃_{ij} = scale_j D_i + std_j ε_i``), measured in EDM's units
   ``x/scale`` at ``j``: ``c_ij = mean_n ‖(x̃_{ij} - X_j)/scale_j‖₂`` (``metric="l2"``; ``"l1"`` the 1-norm; ``"dev"``
   the code's default: the student's deviation from the straight line ``X_0 → X_{K-1}`` minus the teacher's at ``j``);
3. dynamic programming for the path of ``steps`` candidates from ``T`` to ``eps`` minimising
   ``Σ_e coeff^(e-1) c_{k_e k_{e+1}}`` (``coeff = 1.15``, which weighs later steps more: GITS's
   ``V(j, k) = min_i c_ji + coeff·V(i, k-1)``), exactly (``cheapest_path``).

With a free first node the path may start at any candidate ``j``: the prior draw is used as the state there, at the
cost ``s_j = mean_n ‖(x_T - X_j)/scale_j‖`` of that jump (no evaluation), and the DP minimises ``s_j`` plus the path's
cost. With a free last node the path may end at any candidate ``j``, followed by the step to the data node, which is
Euler's step to ``σ = 0`` (``x̃ = D_j``): its local cost is ``e_j = mean_n ‖D_j - D_{K-1}‖`` against the teacher's
output ``D_{K-1}`` (0 at ``j = K-1``), weighed as the edge after the path's last, ``coeff^(steps-1) e_j``
(``metric="dev"`` has no such cost and refuses it). Cost: the teacher's ``K`` evaluations of the batch; the costs and
the DP need none.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...checks import choice, integer, positive
from ..grid import TimeGrid, time_grid
from ..solver import Model, integrate
from .common import check_solver
from .descent import cheapest_path

__all__ = ["gits", "GITS_DEFAULTS", "gits_costs"]

GITS_DEFAULTS = {"candidates": 61, "coeff": 1.15, "metric": "l2", "teacher": "ipndm",
                 "teacher_options": {"max_order": 4}, "spacing": "karras"}
METRICS = ("l2", "l1", "dev")


def _teacher(model, sde, x_T: Tensor, fine: TimeGrid, teacher) -> tuple[list[Tensor], list]:
    """The teacher's states ``X_k`` at the fine grid's noisy nodes and the predictions at them: read from
    ``integrate``'s callback (each transition reports the prediction made at its start), evaluated again where a
    teacher's evaluations are not at the node states."""
    records = []
    integrate(teacher, model, sde, x_T, fine, callback=lambda x, node, prediction: records.append((x, prediction)))
    states = [x_T] + [x for x, _ in records[:-1]]
    predictions = [p for _, p in records]
    nodes = fine.noisy
    ok = len(predictions) == len(nodes) and all(
        p is not None and p.node is not None and p.node.t == n.t and torch.equal(p.x, x)
        for p, n, x in zip(predictions, nodes, states))
    if not ok:
        at = Model(model, sde)
        predictions = [at(x, n) for x, n in zip(states, nodes)]
    return states, predictions


def _norm(v: Tensor, metric: str) -> Tensor:
    return v.flatten(1).abs().sum(1) if metric == "l1" else v.flatten(1).norm(dim=1)


def gits_costs(states: list[Tensor], predictions: list, nodes,
               metric: str) -> tuple[list[list[float]], list[float], list[float] | None]:
    """``c_ij`` for ``i < j`` (``inf`` elsewhere), the jump costs ``s_j`` from the first state and the end costs ``e_j``
    into the data node (``None`` for ``metric="dev"``; module docstring)."""
    K = len(nodes)
    cost = [[math.inf] * K for _ in range(K)]
    edm = [x / n.scale if n.scale > 0 else None for x, n in zip(states, nodes)]
    if metric == "dev":
        start, end = edm[0], edm[-1]
        line = (end - start).flatten(1)
        line = line / line.norm(dim=1, keepdim=True)

        def measure(point: Tensor, j: int) -> float:  # the deviation from the line through X_0 and X_{K-1}
            ac = (end - point).flatten(1)
            return float((ac - (ac * line).sum(1, keepdim=True) * line).norm(dim=1).mean())

        teacher = [measure(edm[j], j) for j in range(K)]
        score = lambda point, j: measure(point, j) - teacher[j]  # noqa: E731
    else:
        score = lambda point, j: float(_norm(point - edm[j], metric).mean())  # noqa: E731
    for i in range(K - 1):
        p = predictions[i]
        for j in range(i + 1, K):
            b = nodes[j]
            cost[i][j] = score(p.combine(x0=b.scale, eps=b.std) / b.scale, j)
    jump = [0.0] + [score(states[0] / nodes[j].scale, j) for j in range(1, K)]
    if metric == "dev":
        return cost, jump, None
    denoised = [p.x0 for p in predictions]
    end = [float(_norm(d - denoised[-1], metric).mean()) for d in denoised]
    return cost, jump, end


def gits(model, sde, steps: int, x_T: Tensor, eps: float, *, free_start: bool, free_end: bool,
         candidates: int = 61, coeff: float = 1.15, metric: str = "l2", teacher: str = "ipndm",
         teacher_options: dict | None = None, spacing: str = "karras") -> tuple[TimeGrid, dict]:
    """The GITS grid of ``steps`` noisy nodes (module docstring) and its record."""
    candidates = integer("candidates", candidates, max(steps, 3))
    coeff = positive("coeff", coeff)
    metric = choice("metric", metric, METRICS)
    teacher_options = GITS_DEFAULTS["teacher_options"] if teacher_options is None else dict(teacher_options)
    if not isinstance(teacher, str):
        raise TypeError(f"teacher must be a sampler name (str), got {type(teacher).__name__}")
    method = check_solver(teacher, teacher_options)
    if metric == "dev" and free_end:
        raise ValueError("free_end=True needs GITS's cost of the step into the data node, which metric='dev' (a "
                         "deviation from the line x_T -> x_0) does not have; use metric='l2' or 'l1' or "
                         "free_end=False")
    fine = time_grid(sde, candidates, spacing, eps)
    if metric == "dev" and fine.noisy[0].scale == 0:
        raise ValueError("metric='dev' measures the deviation from the line x_T/α(T) -> x_0 in EDM's units, which is "
                         "infinite where α(T) = 0 (this path's top); use metric='l2' or 'l1'")
    states, predictions = _teacher(model, sde, x_T, fine, method)
    cost, jump, end = gits_costs(states, predictions, fine.noisy, metric)
    path = cheapest_path(cost, steps, coeff, jump if free_start else None, end if free_end else None)
    if path is None:
        raise ValueError("GITS found no path of finite cost (the teacher or the Euler steps diverged)")
    total = (jump[path[0]] if free_start else 0.0) + sum(
        coeff**e * cost[a][b] for e, (a, b) in enumerate(zip(path, path[1:]))) + (
        coeff ** (steps - 1) * end[path[-1]] if free_end else 0.0)
    grid = TimeGrid((*(fine.noisy[k] for k in path), *fine.nodes[len(fine.noisy):]), fine.sde)
    return grid, {"candidates": candidates, "coeff": coeff, "metric": metric, "spacing": spacing,
                  "teacher": {"sampler": teacher, "options": teacher_options}, "path": path, "objective": total}
