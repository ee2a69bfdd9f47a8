"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023): the probability-flow ODE solved in the parameterisation that
minimises its first-order discretisation error, through the model's empirical model statistics (EMS).

With ``x_λ = α x_0 + σ ε`` and the half log-SNR ``λ``, the ODE of ``y = x/α`` is ``dy/dλ = -(σ/α) ε̂``. DPM-Solver-v3
splits off a linear part and a linear trend with three per-element coefficient vectors of ``λ`` (the EMS, shaped like a
sample):

    σ ε̂(x, λ) = l_λ x + α f(x, λ)                  (l_λ: the part of σ ε̂ linear in x)
    f^(1) ≈ s_λ f + b_λ                             (f^(1) = df(x_λ, λ)/dλ along the ODE)
    g(x, λ) = e^{S_s - S_λ} f - e^{S_s} (B_λ - B_s),   L = ∫ l,  S = ∫ s,  B = ∫ e^{-S} b   (from the start s)

so that ``g`` is nearly constant along a trajectory and, with ``I = ∫ e^{L+S}``, ``C = ∫ e^{L+S} B``, the exact solution
from node ``s`` to node ``t`` is (Zheng et al., eq. 9, and their code)

    x_t = (α_t/α_s) e^{L_s - L_t} x_s - α_t e^{-L_t - S_s} (I_t - I_s) g_s - α_t e^{-L_t} (C_t - C_s - B_s (I_t - I_s))
          - α_t e^{L_s - L_t} Σ_{k=1}^{p-1} g^(k)_s ∫_{λ_s}^{λ_t} e^{L+S - L_s - S_s} (λ - λ_s)^k/k! dλ

with ``g^(k)`` estimated from ``g`` at the last ``p`` nodes (solving the Taylor system, or by divided differences: the
"pseudo" order). The EMS are the minimisers of the first-order errors,

    l_λ = argmin_l E_{p_λ}‖σ ∇_x ε̂ - diag(l)‖²_F = E diag(σ ∇_x ε̂),        (s_λ, b_λ) = argmin E‖f^(1) - s f - b‖²

(element by element: ``s = Cov(f^(1), f)/Var(f)``, ``b = E f^(1) - s E f``), computed on the model's own trajectories
(``sgm.samplers.corrections.ems``) on a λ-uniform table; between its points ``l, s, b`` are linear and the integrals are
trapezoidal on the table refined by the grid's nodes (the paper's trapezoid, without rounding nodes to the table).
Without EMS (``ems=None``) ``l = 1, s = b = 0`` in closed form: ``f = -x̂_0``, the method is DPM-Solver++ in the
data prediction (order 1 is DDIM) with this predictor–corrector.

Multistep, one evaluation per node. At each node the corrector (``use_corrector``; order ``p + 1`` with the pseudo
derivatives when ``c_pseudo``, else ``p``, ``p`` the order of the predictor that reached the node) redoes the last step
with the model output at the node (UniPC's idea), keeping ``σ ε̂ - l x`` fixed; then the predictor of order ``p``
(``min(order, steps taken + 1)``, and with ``lower_order_final`` at most the transitions left) steps on. The last noisy
node is left to the final denoising (Tweedie's ``x̂_0``), as every solver's. From an ``α = 0`` node the step is the
first-order ``from_noise`` and the method starts after it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import flag, integer
from .exponential import from_noise, lower_order, phi
from .grid import Node, TimeGrid
from .solver import Model, Solver

__all__ = ["EMS", "DPMSolverV3", "Table"]


def _cumtrapz(y: Tensor, x: Tensor) -> Tensor:
    """``∫_{x_0}^{x_k} y`` by the trapezoid rule along dim 0 (``x`` of shape ``(K,)``), zero at ``k = 0``."""
    dx = (x[1:] - x[:-1]).reshape(-1, *([1] * (y.dim() - 1)))
    out = torch.cumsum(0.5 * dx * (y[1:] + y[:-1]), dim=0)
    return torch.cat([torch.zeros_like(y[:1]), out])


class EMS:
    """Empirical model statistics on a λ-uniform table: ``lams (K+1,)`` increasing, ``l, s, b`` of shape
    ``(K+1, *sample shape)`` (float64). See the module docstring."""

    def __init__(self, lams, l, s, b):
        lams = torch.as_tensor(lams, dtype=torch.float64)
        l, s, b = (torch.as_tensor(v, dtype=torch.float64) for v in (l, s, b))
        if lams.dim() != 1 or lams.numel() < 2 or not bool((lams[1:] > lams[:-1]).all()):
            raise ValueError("lams must be an increasing 1-D sequence of at least 2 half log-SNRs")
        for name, v in (("l", l), ("s", s), ("b", b)):
            if v.dim() < 2 or v.shape[0] != lams.numel() or v.shape != l.shape:
                raise ValueError(f"{name} must have shape (len(lams), *sample shape) = ({lams.numel()}, …) like l, "
                                 f"got {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} must be finite")
        self.lams, self.l, self.s, self.b = lams, l, s, b

    @property
    def shape(self) -> tuple:
        return tuple(self.l.shape[1:])

    @property
    def range(self) -> tuple[float, float]:
        return float(self.lams[0]), float(self.lams[-1])

    def __repr__(self) -> str:
        return f"EMS(λ {self.range[0]:.4g} … {self.range[1]:.4g}, {self.lams.numel()} points, shape {self.shape})"


class Table(NamedTuple):
    """The EMS quantities at a run's nodes (keyed by λ): ``l, L, S, B, I, C`` as ``{λ: tensor}`` and what
    ``coefficient`` needs (the refined table)."""

    at: dict            # λ -> (l, L, S, B, I, C)
    lams: Tensor | None  # the refined table's λ (None: the closed forms of l = 1, s = b = 0)
    LS: Tensor | None    # L + S on it


def _table(ems: EMS | None, lams: list[float], like: Tensor) -> Table:
    """The table for the node λs ``lams`` in ``like``'s dtype and device."""
    cast = dict(dtype=like.dtype, device=like.device)
    if ems is None:  # l = 1, s = b = 0: L = λ - λ_0, S = B = C = 0, I = e^{λ - λ_0} - 1
        ref = min(lams)
        one, zero = torch.ones((), **cast), torch.zeros((), **cast)
        return Table({lam: (one, one * (lam - ref), zero, zero, one * math.expm1(lam - ref), zero) for lam in lams},
                     None, None)
    grid = torch.unique(torch.cat([ems.lams, torch.tensor(lams, dtype=torch.float64)]))
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    index = torch.searchsorted(ems.lams, grid).clamp(1, ems.lams.numel() - 1)
    lo, hi = ems.lams[index - 1], ems.lams[index]
    w = ((grid - lo) / (hi - lo)).clamp(0, 1)[:, None]
    l, s, b = ((1 - w) * flat(v)[index - 1] + w * flat(v)[index] for v in (ems.l, ems.s, ems.b))
    L, S = _cumtrapz(l, grid), _cumtrapz(s, grid)
    I = _cumtrapz(torch.exp(L + S), grid)
    B = _cumtrapz(torch.exp(-S) * b, grid)
    C = _cumtrapz(torch.exp(L + S) * B, grid)
    shape = ems.shape
    at = {}
    for lam in lams:
        k = int(torch.searchsorted(grid, torch.tensor(lam, dtype=torch.float64)))
        at[lam] = tuple(v[k].reshape(shape).to(**cast) for v in (l, L, S, B, I, C))
    return Table(at, grid, (L + S))


def coefficient(table: Table, lam_s: float, lam_t: float, k: int, like: Tensor) -> Tensor:
    """``∫_{λ_s}^{λ_t} e^{L+S - L_s - S_s} (λ - λ_s)^k/k! dλ``: closed form without EMS (``e^h h^{k+1} φ_{k+1}(-h)``),
    else the trapezoid on the refined table."""
    if table.lams is None:
        h = lam_t - lam_s
        return torch.tensor(math.exp(h) * h ** (k + 1) * phi(k + 1, -h), dtype=like.dtype, device=like.device)
    grid = table.lams
    i, j = (int(torch.searchsorted(grid, torch.tensor(v, dtype=torch.float64))) for v in (lam_s, lam_t))
    x = grid[i:j + 1]
    a = table.LS[i:j + 1] - table.LS[i]
    w = ((x - x[0]) ** k / math.factorial(k))[:, None]
    y = torch.exp(a) * w
    dx = (x[1:] - x[:-1])[:, None]
    out = (0.5 * dx * (y[1:] + y[:-1])).sum(0)
    return out.reshape(like.shape[1:]).to(dtype=like.dtype, device=like.device)


def derivatives(lams: list[float], gs: list[Tensor], pseudo: bool) -> list[Tensor]:
    """``g^(1) … g^(n)`` at ``lams[0]`` from ``g`` at ``n + 1`` nodes: the Taylor system
    ``g_m - g_0 = Σ_k g^(k) (λ_m - λ_0)^k/k!`` solved exactly, or (``pseudo``) ``k!`` times the divided differences."""
    n = len(gs) - 1
    if pseudo:
        table = [list(gs)]
        for i in range(1, n + 1):
            table.append([(table[i - 1][j] - table[i - 1][j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)])
        return [table[i][0] * math.factorial(i) for i in range(1, n + 1)]
    R = torch.tensor([[(lams[m] - lams[0]) ** k for k in range(1, n + 1)] for m in range(1, n + 1)],
                     dtype=torch.float64)
    weights = torch.linalg.inv(R)  # row k-1: the combination of (g_m - g_0) giving g^(k)/k!
    diffs = [g - gs[0] for g in gs[1:]]
    out = []
    for k in range(n):
        total = sum(float(weights[k, m]) * diffs[m] for m in range(n))
        out.append(total * math.factorial(k + 1))
    return out


class V3State(NamedTuple):
    transitions: int       # transitions after a step from pure noise
    index: int             # transitions taken (after it)
    table: Table | None
    history: tuple = ()    # ((node, x, ε̂), …), newest first
    order: int = 0         # the order of the predictor that reached the current node


class DPMSolverV3(Solver):
    """DPM-Solver-v3 of ``order`` 1–3 with the empirical model statistics ``ems`` (``None``: ``l = 1, s = b = 0``,
    DPM-Solver++'s parameterisation), the predictor's ``p_pseudo`` derivatives, the corrector (``use_corrector``,
    ``c_pseudo``) and ``lower_order_final``. One evaluation per node."""

    stochastic = False

    def __init__(self, ems: EMS | None = None, order: int = 3, p_pseudo: bool = False, use_corrector: bool = True,
                 c_pseudo: bool = True, lower_order_final: bool = True):
        if ems is not None and not isinstance(ems, EMS):
            raise TypeError(f"ems must be an EMS (sgm.samplers.corrections.ems) or None, got {type(ems).__name__}")
        self.ems = ems
        self.solver_order = integer("order", order, 1, 3)
        self.p_pseudo, self.use_corrector = flag("p_pseudo", p_pseudo), flag("use_corrector", use_corrector)
        self.c_pseudo, self.lower_order_final = flag("c_pseudo", c_pseudo), flag("lower_order_final", lower_order_final)
        # Measured (docs/samplers.md): the pseudo-order derivatives (divided differences for g^(2)) are first-order
        # accurate, so the pseudo corrector and the order-3 pseudo predictor give a method of order 2.
        predictor = 2 if p_pseudo and self.solver_order == 3 else self.solver_order
        self.ode_order = 2 if use_corrector and c_pseudo else predictor
        self.name = f"dpm_solver_v3 (order {order}{', EMS' if ems is not None else ''})"

    def check(self, grid: TimeGrid) -> None:
        super().check(grid)
        if self.ems is None:
            return
        lo, hi = self.ems.range
        outside = [n.t for n in grid.noisy if n.scale > 0 and not lo - 1e-9 <= n.lam <= hi + 1e-9]
        if outside:
            raise ValueError(f"grid nodes at t={outside} lie outside the EMS's half log-SNR range "
                             f"[{lo:.6g}, {hi:.6g}]; compute the EMS over this range "
                             "(sgm.samplers.corrections.ems(..., eps=, t_max=))")

    def init(self, x, grid: TimeGrid):
        if self.ems is not None and tuple(x.shape[1:]) != self.ems.shape:
            raise ValueError(f"the EMS are for samples of shape {self.ems.shape}, got {tuple(x.shape[1:])}")
        lams = [n.lam for n in grid.noisy if n.scale > 0]
        if self.ems is not None:  # nodes within rounding of the range's ends (``check``) are read at the ends
            lo, hi = self.ems.range
            table = _table(self.ems, [min(max(v, lo), hi) for v in lams], x)
            table = Table({lam: table.at[min(max(lam, lo), hi)] for lam in lams}, table.lams, table.LS)
        else:
            table = _table(None, lams, x)
        return V3State(len(grid) - int(grid.nodes[0].scale == 0), 0, table)

    def update(self, table: Table, points, t: Node, order: int, pseudo: bool, like: Tensor) -> Tensor:
        """The solution at ``t`` from the first of ``points`` (``(node, x, ε̂)``, the others older or, for the
        corrector, the target first) with ``g`` through ``order`` of them (see the module docstring)."""
        (s, x_s, _) = points[0]
        l_s, L_s, S_s, B_s, I_s, C_s = table.at[s.lam]
        _, L_t, _, _, I_t, C_t = table.at[t.lam]
        gs = []
        for node, x, eps in points[:order]:
            l, _, S, B, _, _ = table.at[node.lam]
            f = (node.std * eps - l * x) / node.scale
            gs.append(torch.exp(S_s - S) * f - torch.exp(S_s) * (B - B_s))
        out = (t.scale / s.scale) * torch.exp(L_s - L_t) * x_s \
            - t.scale * torch.exp(-L_t - S_s) * (I_t - I_s) * gs[0] \
            - t.scale * torch.exp(-L_t) * (C_t - C_s - B_s * (I_t - I_s))
        if order > 1:
            for k, g in enumerate(derivatives([n.lam for n, _, _ in points[:order]], gs, pseudo), start=1):
                out = out - t.scale * torch.exp(L_s - L_t) * coefficient(table, s.lam, t.lam, k, like) * g
        return out

    def step(self, model: Model, x, a, b, state: V3State, noise):
        prediction = model(x, a)
        if a.scale == 0:
            return from_noise(prediction, b), state
        eps, table, history = prediction.eps, state.table, state.history
        corrector_order = state.order + int(self.c_pseudo)
        if self.use_corrector and history and corrector_order > 1:
            points = (history[0], (a, x, eps)) + history[1:]
            corrected = self.update(table, points, a, corrector_order, self.c_pseudo, x)
            l = table.at[a.lam][0]
            eps = (a.std * eps + l * (corrected - x)) / a.std  # σ ε̂ - l x kept: ε̂' = (σ ε̂ - l x + l x')/σ
            x = corrected
        history = (((a, x, eps),) + history)[: self.solver_order + 1]
        order = lower_order(self.solver_order, state.index, state.transitions, self.lower_order_final)
        out = self.update(table, history, b, order, self.p_pseudo, x)
        return out, state._replace(index=state.index + 1, history=history, order=order)
