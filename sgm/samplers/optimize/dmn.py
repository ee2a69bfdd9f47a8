"""``optimizer="dmn"``: DM-NonUniform, "Accelerating Diffusion Sampling with Optimized Time Steps" (Xue, Liu, Chen,
Zhang, Hu, Xie & Li, CVPR 2024; code ``scxue/DM-NonUniform``): a model-free bound on the error of a data-prediction
multistep exponential integrator (DPM-Solver++ / UniPC's predictor), minimised over the interior half log-SNRs
``λ_1 < … < λ_{N-1}`` between the fixed ``λ_0 = λ(T)`` and ``λ_N = λ(eps)`` by the constrained trust-region method
(scipy's ``trust-constr``, linear constraints ``λ_0 ≤ λ_1 ≤ … ≤ λ_N``).

The step ``s`` from ``λ_s`` to ``λ_{s+1}`` interpolates ``x̂_0`` over the ``p_s`` latest nodes (``p_s = min(p, s+1,
N-s)``: lower order for the first steps and, as ``lower_order_final``, the last; ``p = min(3, solver order)``) and
integrates ``e^λ`` against each Lagrange basis polynomial ``ℓ_j``: ``J_{s,j} = ∫_{λ_s}^{λ_{s+1}} e^λ ℓ_j(λ) dλ``
(closed forms in ``H_k(h) = ∫_0^h e^q q^k dq``). An error ``δ_j`` of the prediction at node ``j`` moves the result by
``σ_N Σ_s J_{s,j} δ_j``; with ``|δ_j| ∝ w_j`` DMN bounds the total by

    B(λ) = Σ_{s: p_s = 1} |J_{s,s} w_s| + Σ_{s < 3, p_s > 1} (Σ_j (J_{s,j} w_j)²)^{1/2}
           + Σ_j |Σ_{s ≥ 3, p_s > 1} J_{s,j} w_j|

(the first steps' errors add in quadrature, the later ones node by node with their signs). DMN's weight
``w = σ²/α`` is the ``x̂_0`` error of a constant error in a VP score model's output; sgm takes the ``x̂_0`` error of a
constant error in the model's own output, ``w = |∂x̂_0/∂n|`` for its native prediction ``n`` on the path
(``sgm.predictions.coefficients``): ``σ²/α`` for a score — the paper's weight on VP —, ``σ/α`` for ε, 1 for ``x̂_0``,
``σ/(α² + σ²)`` for ``v`` and ``σ/(ασ' - σα')`` for a velocity, finite at the top of rectified flow (``α = 0``), where a
score's weight is infinite. A stencil through ``λ_0 = -∞`` is the limit ``h_0 → ∞`` of the formulas: the one of a lower
order without that node. The bound is the paper's for DPM-Solver++/UniPC; for other solvers it is a surrogate of
their order. Its gradient is autograd's, with ``log w`` interpolated on a fine table of λ. Cost: no model evaluation.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import LinearConstraint, minimize

from ...predictions import coefficients
from ..grid import TimeGrid, path_nodes, time_grid
from .common import Positions

__all__ = ["dmn", "dmn_bound", "dmn_coefficients", "prediction_weight"]


def _H(k: int, h):
    """``H_k(h) = ∫_0^h e^q q^k dq``: ``H_0 = e^h - 1``, ``H_k = e^h h^k - k H_{k-1}``."""
    out = torch.expm1(h)
    for i in range(1, k + 1):
        out = torch.exp(h) * h**i - i * out
    return out


def dmn_coefficients(lam: torch.Tensor, s: int, p: int) -> list[tuple[int, torch.Tensor]]:
    """``[(j, J_{s,j})]`` for the step from ``lam[s]`` to ``lam[s+1]`` interpolating over nodes ``s-p+1 … s``."""
    e, h = torch.exp(lam[s]), lam[s + 1] - lam[s]
    if p == 1:
        return [(s, e * _H(0, h))]
    if p == 2:
        hp = lam[s] - lam[s - 1]
        return [(s - 1, -e * _H(1, h) / hp), (s, e * (_H(1, h) + hp * _H(0, h)) / hp)]
    if p == 3:
        h1, h2 = lam[s - 1] - lam[s - 2], lam[s] - lam[s - 1]
        H0, H1, H2 = _H(0, h), _H(1, h), _H(2, h)
        return [(s - 2, e * (H2 + h2 * H1) / (h1 * (h1 + h2))),
                (s - 1, -e * (H2 + (h1 + h2) * H1) / (h1 * h2)),
                (s, e * (H2 + (2 * h2 + h1) * H1 + h2 * (h1 + h2) * H0) / (h2 * (h1 + h2)))]
    raise ValueError(f"the stencil order must be 1, 2 or 3, got {p}")


def prediction_weight(sde, kind: str, lam: torch.Tensor) -> torch.Tensor:
    """``w = |∂x̂_0/∂n|`` at the half log-SNRs ``lam`` (float64; ``-inf`` is the top ``T``) for a model predicting
    ``kind`` (module docstring)."""
    t = torch.where(torch.isinf(lam), torch.full_like(lam, sde.T), sde.time_at_lam(lam.clamp_min(-700)).to(lam))
    nodes = path_nodes(sde, t)
    try:
        return torch.tensor([abs(float(coefficients("x0", kind, n.scale, n.std, n.d_scale, n.d_std)[1]))
                             for n in nodes], dtype=torch.float64)
    except ValueError:
        raise ValueError(f"DMN's weight of a {kind} model's error is infinite at the top (α = 0: x̂_0 is undefined "
                         "from it); use a model that predicts x0, v or velocity on this path") from None


def dmn_bound(lam: torch.Tensor, w: torch.Tensor, order: int) -> torch.Tensor:
    """``B(λ)`` for the nodes ``lam[0] < … < lam[N]`` with the error weights ``w`` and the solver order ``order``
    (module docstring), in a few vectorised operations (the trust-region search differentiates it often)."""
    N = lam.numel() - 1
    order = min(3, order)
    top = bool(torch.isinf(lam[0]))
    if top:  # nothing below uses λ_0 itself: the first step's term is e^{λ_1} w_0 and no stencil holds node 0
        lam = torch.cat([lam[1:2] - 1.0, lam[1:]])
    e, h = torch.exp(lam[:-1]), torch.diff(lam)
    one = torch.ones(1, dtype=lam.dtype)
    hp, hpp = torch.cat([one, h[:-1]]), torch.cat([one, one, h[:-2]])  # h_{s-1}, h_{s-2}
    H0, H1, H2 = _H(0, h), _H(1, h), _H(2, h)
    table = torch.stack([  # J for (order, place in the stencil) of each step s, as in dmn_coefficients
        e * H0,
        -e * H1 / hp, e * (H1 + hp * H0) / hp,
        e * (H2 + hp * H1) / (hpp * (hpp + hp)), -e * (H2 + (hpp + hp) * H1) / (hpp * hp),
        e * (H2 + (2 * hp + hpp) * H1 + hp * (hpp + hp) * H0) / (hp * (hpp + hp))])
    rows, steps_, nodes, groups = [], [], [], []  # groups: 0 = |J w|, 1 = quadrature sum, 2 = signed by node
    first = {1: 0, 2: 1, 3: 3}
    for s in range(N):
        p = min(order, s + 1, N - s)
        if top and p > 1 and s - p + 1 <= 0:
            p = s  # the stencil without the node at λ = -∞
        for k in range(p):
            rows.append(first[p] + k)
            steps_.append(s)
            nodes.append(s - p + 1 + k)
            groups.append(0 if p == 1 else 1 if s < 3 else 2)
    rows, steps_, nodes, groups = (torch.tensor(v) for v in (rows, steps_, nodes, groups))
    terms = table[rows, steps_] * w[nodes]
    if top:
        terms = torch.where(steps_ == 0, torch.exp(lam[1]) * w[0], terms)
    total = terms[groups == 0].abs().sum()
    quadrature = torch.zeros(N, dtype=lam.dtype).index_add(0, steps_[groups == 1], terms[groups == 1] ** 2)
    used = torch.zeros(N, dtype=torch.bool)
    used[steps_[groups == 1]] = True
    signed = torch.zeros(N + 1, dtype=lam.dtype).index_add(0, nodes[groups == 2], terms[groups == 2])
    return total + quadrature[used].sqrt().sum() + signed.abs().sum()


def dmn(sde, steps: int, eps: float, order: int, kind: str, positions: Positions, *, start: str = "logsnr",
        maxiter: int = 1000) -> tuple[TimeGrid, dict]:
    """The DMN grid of ``steps`` noisy nodes for a solver of ``order`` and a model predicting ``kind`` (module
    docstring), from the ``start`` spacing, and its record."""
    init = time_grid(sde, steps, start, eps)
    lam = [n.lam for n in init.noisy]
    lam0, lamN, x0 = lam[0], lam[-1], np.array(lam[1:-1], dtype=np.float64)
    m = x0.size
    if m == 0:
        return init, {"objective": None, "start": start, "iterations": 0}

    # w as a differentiable function of λ: log w interpolated linearly on a fine table (the path's t(λ) is a bisection)
    table = torch.linspace(min(lam[1], lamN) - 12.0, lamN, 4001, dtype=torch.float64)
    log_w = torch.log(prediction_weight(sde, kind, table))
    w0 = prediction_weight(sde, kind, torch.tensor([lam0, lamN], dtype=torch.float64))

    def weights(inner: torch.Tensor) -> torch.Tensor:
        pos = ((inner - table[0]) / (table[1] - table[0])).clamp(0, table.numel() - 1 - 1e-9)
        i = pos.detach().floor().long()
        f = pos - i
        return torch.cat([w0[:1], torch.exp(log_w[i] * (1 - f) + log_w[i + 1] * f), w0[1:]])

    def fun(x):
        with torch.enable_grad():  # the bound's gradient, also when the caller samples under no_grad
            v = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            b = dmn_bound(torch.cat([torch.tensor([lam0], dtype=torch.float64), v,
                                     torch.tensor([lamN], dtype=torch.float64)]), weights(v), order)
            (g,) = torch.autograd.grad(b, v)
        return float(b.detach()), g.numpy()

    # λ_0 ≤ λ_1, λ_k ≤ λ_{k+1}, λ_{N-1} ≤ λ_N as rows of A x ≥ lb (the first row is absent where λ_0 = -∞)
    rows, lb, gap = [], [], 1e-6 * (lamN - lam[1])
    if math.isfinite(lam0):
        rows.append(np.eye(1, m, 0)[0])
        lb.append(lam0 + gap)
    for k in range(m - 1):
        r = np.zeros(m)
        r[k], r[k + 1] = -1.0, 1.0
        rows.append(r)
        lb.append(gap)
    rows.append(-np.eye(1, m, m - 1)[0])
    lb.append(-lamN + gap)
    constraint = LinearConstraint(np.array(rows), np.array(lb), np.full(len(lb), np.inf))
    with warnings.catch_warnings():  # quasi-Newton updates on the bound's flat pieces
        warnings.simplefilter("ignore", UserWarning)
        res = minimize(fun, x0, jac=True, method="trust-constr", constraints=[constraint],
                       options={"maxiter": maxiter, "verbose": 0})
    x = np.maximum.accumulate(np.clip(res.x, -np.inf, lamN))  # monotone against the last rounding
    u = [0.0] + [positions.of_lam(float(v)) for v in x] + [1.0]
    return positions.grid(u), {"objective": float(res.fun), "start": start, "iterations": int(res.nit),
                               "initial_objective": fun(x0)[0], "evaluations": int(res.nfev),
                               "lams": [lam0, *map(float, x), lamN]}
