"""SA-Solver (Xue et al., 2023): stochastic Adams predictor and corrector on the data prediction, as diffusers'
``SASolverScheduler``.

SA-Solver solves the family of reverse SDEs ``dx = [f x - ½(1 + τ²) g² ∇log p_t] dt + τ g dW̄`` (``τ = 0``: the
probability-flow ODE; ``τ = 1``: the reverse SDE), whose marginals are the path's for any ``τ(t) ≥ 0``. In the half
log-SNR ``λ = log(α/σ)`` with ``κ = 1 + τ²`` constant on a step ``s → t`` (``h = λ_t - λ_s``), variation of constants
on the data prediction ``x̂_0`` gives

    x_t = e^{-τ²h} (σ_t/σ_s) x_s + κ α_t ∫_0^h e^{-κ(h-u)} x̂_0(λ_s + u) du + σ_t √(1 - e^{-2τ²h}) ξ.

A step replaces ``x̂_0`` by the Lagrange polynomial through earlier predictions ``m_j`` at ``u_j = λ_j - λ_s``; with
``v_j = u_j/h`` the weights ``w_j = ∫_0^h e^{-κ(h-u)} ℓ_j(u) du`` solve the order conditions

    Σ_j w_j v_j^k = h·k!·φ_{k+1}(-κh),      k = 0 … n-1      (``φ`` of ``sgm.samplers.exponential``),

and ``x_t = e^{-τ²h}(σ_t/σ_s) x_s + κ α_t Σ_j w_j m_j + σ_t √(1 - e^{-2τ²h}) ξ``. With ``few_step_modification``
the second condition of ``n = 2`` reads ``h/2`` instead (the official code's and diffusers' "few steps" change,
O(h³) with the order kept). It is off by default: it is 1.8× the exact ``h·φ₂(-κh)`` at ``κh = 2.1``, a last step
from σ = 0.08 to 0.01, where the extrapolation overshoots; on exact mixtures the exact condition's error was a
median 0.10–0.95× the modified one's on every spacing (``benchmarks/sa_solver_condition.py``).

- **SA-Predictor** of order ``p``: the nodes ``s, s_1, …, s_{p-1}`` (``v_0 = 0``, ``v_j < 0``).
- **SA-Corrector** of order ``c`` (PEC, no extra evaluation): once the model has been evaluated at the predicted
  ``x_t`` (the next step's evaluation anyway) the step ``s → t`` is redone with the nodes ``t, s, s_1, …, s_{c-2}``
  (``v_0 = 1``) and the same noise ``ξ``; the two share the linear part and the noise, so the correction is
  ``x^c - x^p = κ α_t Σ_j (w^c_j - w^p_j) m_j``, added to the state (a per-step callback's change is kept).
  The last step into the data node is Tweedie's (uncorrected, as the last step of the official code and diffusers).

Orders at transition ``i`` (counting the final denoising, from 0): predictor ``min(p, i + 1)``, corrector of the
step ``i`` ``min(c, i + 2)``, and with ``lower_order_final`` also ``≤ transitions - i`` and ``≤ transitions - i + 1``
(diffusers' rules). ``τ`` on the step ``s → t`` is ``τ(s)`` (diffusers'): ``tau`` inside ``tau_window`` (fractions of
``T``; the published ``τ(t) = η·1[0.2 ≤ t ≤ 0.8]``, default), ``0`` outside, or ``tau`` everywhere when
``tau_window=None``. One draw per step where ``τ(s) > 0``, named by the step's interval ``(s, t)``.

From a node of ``α = 0`` (``λ = -∞``, the exact top of rectified flow) the step is its limit
``x_t = α_t x̂_0 + σ_t ξ`` (``τ > 0``) or ``from_noise`` (``τ = 0``), uncorrected, and that node never enters the
history.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..checks import flag, integer, nonnegative, real
from .exponential import from_noise, phi
from .grid import Node, TimeGrid
from .solver import Model, Solver

__all__ = ["SASolver", "SAState", "sa_weights", "PUBLISHED_TAU_WINDOW"]

PUBLISHED_TAU_WINDOW = (0.2, 0.8)  # τ(t) = η for 0.2 ≤ t/T ≤ 0.8 (Xue et al.; diffusers' 200 ≤ timestep ≤ 800)


def sa_weights(h: float, kappa: float, v: list[float], few_step_modification: bool = False) -> list[float]:
    """``w_j = ∫_0^h e^{-κ(h-u)} ℓ_j(u) du`` for the Lagrange basis ``ℓ_j`` on the nodes ``u_j = h v_j``, solving
    ``Σ_j w_j v_j^k = h k! φ_{k+1}(-κh)`` (``k < n``); ``few_step_modification``: ``h/2`` for ``k = 1`` when
    ``n = 2`` (see the module)."""
    n, z = len(v), -kappa * h
    g = [h * math.factorial(k) * phi(k + 1, z) for k in range(n)]
    if n == 2 and few_step_modification:
        g[1] = h / 2
    if n == 1:
        return g
    V = torch.tensor([[vj**k for vj in v] for k in range(n)], dtype=torch.float64)
    return torch.linalg.solve(V, torch.tensor(g, dtype=torch.float64)).tolist()


class SAState(NamedTuple):
    transitions: int                 # transitions after a step from pure noise (the final denoising included)
    index: int = 0                   # transitions taken (after it)
    history: tuple = ()              # ((node, x̂_0), …), newest first
    previous: Optional[tuple] = None  # (node s, κ, corrector order, predictor weights) of the step that reached here


class SASolver(Solver):
    """SA-Solver: SA-Predictor of ``predictor_order`` 1–4 and SA-Corrector of ``corrector_order`` 0–4 (0: none) on
    x̂_0, stochasticity ``tau`` (η ≥ 0) in ``tau_window`` (fractions of ``T``; ``None``: everywhere); one evaluation per
    transition. Deterministic (the probability-flow ODE) with ``tau=0``. ``few_step_modification``: diffusers' ``h/2``
    for the second order condition of two nodes (see the module)."""

    def __init__(self, predictor_order: int = 3, corrector_order: int = 4, tau: float = 1.0,
                 tau_window: Optional[tuple] = PUBLISHED_TAU_WINDOW, lower_order_final: bool = True,
                 few_step_modification: bool = False):
        self.predictor_order = integer("predictor_order", predictor_order, 1, 4)
        self.corrector_order = integer("corrector_order", corrector_order, 0, 4)
        self.tau = nonnegative("tau", tau)
        if tau_window is not None:
            if not isinstance(tau_window, (tuple, list)) or len(tau_window) != 2:
                raise TypeError(f"tau_window must be None or a pair (low, high) of fractions of T, got {tau_window!r}")
            lo, hi = (real("tau_window", v, 0.0, 1.0) for v in tau_window)
            if lo > hi:
                raise ValueError(f"tau_window must have low <= high, got {tau_window!r}")
            tau_window = (lo, hi)
        self.tau_window = tau_window
        self.lower_order_final = flag("lower_order_final", lower_order_final)
        self.few_step_modification = flag("few_step_modification", few_step_modification)
        if few_step_modification and max(self.predictor_order, self.corrector_order) < 2:
            raise ValueError("few_step_modification changes the weights of two nodes only: it needs predictor_order "
                             f"or corrector_order >= 2, got {predictor_order} and {corrector_order}")
        self.stochastic = self.tau > 0
        if self.stochastic:
            # In law every τ(t) has the path's marginals, so the steps' τ(s), which moves a window's edges onto nodes,
            # costs no weak order; pathwise it injects noise over an O(h) piece where τ = 0: strong order 1/2 with
            # the window (measured 0.74–1.07 at 16–128 steps, not yet asymptotic), 1 without (0.92–1.45).
            # Weak: the order of the last stage, the corrector's where there is one (a first-order corrector after a
            # higher predictor is first order: measured 0.94–0.99 for (2–4, 1), tests/test_declared_orders.py).
            # Measured (benchmarks/stochastic_samplers.py --only weak, 64–256 steps): 0.92–0.95 (first order),
            # 1.96–2.27 (window or not)
            self.strong_order = 0.5 if tau_window is not None else 1.0
            self.weak_order = 2.0 if (self.corrector_order or self.predictor_order) >= 2 else 1.0
        else:
            # predictor alone: p; with the corrector min(p + 1, c) (PEC); measured 1.0–4.4 (docs/samplers.md)
            self.ode_order = min(self.predictor_order + int(self.corrector_order > 0),
                                 max(self.predictor_order, self.corrector_order))
        self.name = f"sa_solver (predictor {predictor_order}, corrector {corrector_order})"

    def tau_at(self, node: Node, T: float) -> float:
        """``τ`` of a step from ``node``: ``tau`` where ``node.t/T`` lies in ``tau_window`` (or everywhere), else 0."""
        if self.tau_window is None:
            return self.tau
        lo, hi = self.tau_window
        return self.tau if lo <= node.t / T <= hi else 0.0

    def init(self, x, grid: TimeGrid) -> SAState:
        return SAState(len(grid) - int(grid.nodes[0].scale == 0))

    def step(self, model: Model, x, a, b, state: SAState, noise):
        prediction = model(x, a)
        tau = self.tau_at(a, model.sde.T)
        if a.scale == 0:  # from pure noise: the limit h = ∞
            if tau == 0:
                return from_noise(prediction, b), state
            return prediction.combine(x0=b.scale).add_(noise(a.t, b.t), alpha=b.std), state
        m = prediction.x0
        i, history = state.index, state.history
        if state.previous is not None and state.previous[2] > 0:  # SA-Corrector of the step that reached a
            s, kappa, c, predictor = state.previous
            h = a.lam - s.lam
            v = [1.0] + [(n.lam - s.lam) / h for n, _ in history[:c - 1]]
            corrector = sa_weights(h, kappa, v, self.few_step_modification)
            n = max(c - 1, len(predictor))
            pad = lambda w: list(w) + [0.0] * (n - len(w))  # noqa: E731
            delta = [corrector[0]] + [wc - wp for wc, wp in zip(pad(corrector[1:]), pad(predictor))]
            x = x.clone()
            for w, q in zip(delta, [m] + [q for _, q in history[:n]]):
                if w != 0:
                    x.add_(q, alpha=kappa * a.scale * w)
        history = (((a, m),) + history)[:max(self.predictor_order, self.corrector_order - 1)]
        left = state.transitions - i
        p = min(self.predictor_order, i + 1, left if self.lower_order_final else self.predictor_order)
        c = min(self.corrector_order, i + 2, left + 1 if self.lower_order_final else self.corrector_order)
        kappa, h = 1 + tau**2, b.lam - a.lam
        weights = sa_weights(h, kappa, [(n.lam - a.lam) / h for n, _ in history[:p]], self.few_step_modification)
        # e^{-τ²h} (σ_b/σ_a) x + κ α_b Σ_j w_j m_j + σ_b √(1 - e^{-2τ²h}) ξ
        out = x.mul(math.exp(-tau**2 * h) * b.std / a.std)
        for w, (_, q) in zip(weights, history):
            out.add_(q, alpha=kappa * b.scale * w)
        if tau > 0:
            out.add_(noise(a.t, b.t), alpha=b.std * math.sqrt(-math.expm1(-2 * tau**2 * h)))
        return out, state._replace(index=i + 1, history=history, previous=(a, kappa, c, tuple(weights)))
