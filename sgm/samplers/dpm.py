"""DPM-Solver (Lu et al., 2022a: noise prediction) and DPM-Solver++ (Lu et al., 2022b: data prediction).

Both approximate the prediction ``m`` (``ε̂`` or ``x̂_0``) in the variation-of-constants formula (see
``sgm.samplers.exponential``) by a polynomial in ``λ`` through predictions at earlier nodes; ``D_1 ≈ h m'`` and
``D_2 ≈ h² m''/2`` are divided differences scaled by the step ``h = λ_t - λ_s``, ``r_i`` ratios of λ-gaps to ``h``.

``method="multistep"`` (one evaluation per transition, at its start ``s_0``; earlier nodes ``s_1, s_2``):

- order 1: ``x_t = A x + B h φ_1 m_0`` (DDIM);
- order 2 (2M): ``x_t = A x + B h φ_1 (m_0 + D_1/2)``, ``D_1 = (m_0 - m_1)/r_0``, ``r_0 = (λ_{s_0} - λ_{s_1})/h``;
- order 3 (3M): ``x_t = A x + B (h φ_1 m_0 + h φ_2 D_1 + h φ_3 D_2)`` with ``D_1 = D_{1,0} + r_0/(r_0+r_1)
  (D_{1,0} - D_{1,1})``, ``D_2 = (D_{1,0} - D_{1,1})/(r_0+r_1)``, ``D_{1,0} = (m_0 - m_1)/r_0``,
  ``D_{1,1} = (m_1 - m_2)/r_1`` (the published formula, as in Lu et al.'s code and diffusers). Its ``D_2`` weight is
  half the Taylor term's (``h³ φ_3 m''`` needs ``2 h φ_3 D_2``): the local error keeps an ``h³ m''/12`` and the method
  is of second order (declared ``order = 2``, measured in the tests); ``unipc(order=3, corrector=False)`` is the exact
  third-order exponential Adams–Bashforth in λ.

Warm-up: transition ``i`` uses order ``min(order, i + 1)`` (only ``i + 1`` predictions exist yet).

``method="singlestep"``: every transition costs one evaluation; the transitions are cut into segments of orders
``1, 2, …, order`` (``init`` fixes the list from the grid, as the original and diffusers do: the tail is a shorter
segment and, with ``lower_order_final``, a last full segment is split in two). A segment starts at its first node
``s`` (a first-order step); its ``k``-th transition goes from ``s`` with the predictions at the segment's ``k``
nodes ``s = u_0, u_1, u_2`` (``r_i = (λ_{u_i} - λ_s)/h``, ``h = λ_t - λ_s``):

- order 2: ``x_t = A x_s + B h φ_1 (m_s + (m_{u_1} - m_s)/(2 r_1))`` (DPM-Solver-2);
- order 3: ``x_t = A x_s + B (h φ_1 m_s + h φ_2 (m_{u_2} - m_s)/r_2)`` (DPM-Solver-3; third order when ``r_2 = 2/3``
  up to ``O(h)``, as on any smooth grid of segments of three equal λ-steps).

``lower_order_final``: the order never exceeds the transitions left, the final denoising step counted (multistep),
or the last full segment is split (singlestep) — stable at few steps, where the last λ-steps are longest.

From a node of ``α = 0`` the step is ``from_noise`` (its first-order limit); the orders and segments start after it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

from ..checks import choice, flag
from .exponential import PREDICTIONS, check_order, combine, from_noise, linear, lower_order, output
from .grid import TimeGrid
from .solver import Model, Solver

__all__ = ["DPMSolver", "METHODS", "singlestep_orders", "multistep_weights", "singlestep_weights", "multistep_update",
           "multistep_state", "MultistepState", "SinglestepState"]

METHODS = ("multistep", "singlestep")


def singlestep_orders(order: int, transitions: int, lower_order_final: bool) -> list[int]:
    """The per-transition orders of singlestep DPM-Solver: segments ``1, …, order``, the remainder as a shorter last
    segment; with ``lower_order_final`` a last full segment becomes ``1, …, order-1`` and ``1``."""
    full, rest = divmod(transitions, order)
    orders = list(range(1, order + 1)) * full + list(range(1, rest + 1))
    if lower_order_final and rest == 0 and order > 1 and full > 0:
        orders[-1] = 1
    return orders


def multistep_weights(lin, lams: list[float], k: int, solver_type: str = "midpoint") -> list[float]:
    """Weights on ``m_0, m_1, …`` (newest first, at λs ``lams``) of the order-``k`` multistep update; ``solver_type``
    weighs 2M's ``D_1`` by ``h φ_1/2`` (``midpoint``, the published 2M) or ``h φ_2`` (``heun``, its Taylor weight)."""
    h, p1 = lin.h, lin.hphi(1)
    if k == 1:
        return [p1]
    r0 = (lams[0] - lams[1]) / h
    if k == 2:
        if solver_type == "heun":
            p2 = lin.hphi(2)
            return [p1 + p2 / r0, -p2 / r0]
        return [p1 * (1 + 0.5 / r0), -p1 * 0.5 / r0]
    r1 = (lams[1] - lams[2]) / h
    d10, d11 = [1 / r0, -1 / r0, 0.0], [0.0, 1 / r1, -1 / r1]
    diff = [a - b for a, b in zip(d10, d11)]
    d1 = [a + r0 / (r0 + r1) * d for a, d in zip(d10, diff)]
    d2 = [d / (r0 + r1) for d in diff]
    p2, p3 = lin.hphi(2), lin.hphi(3)
    return [p1 * e + p2 * a + p3 * b for e, a, b in zip((1.0, 0.0, 0.0), d1, d2)]


def singlestep_weights(lin, lams: list[float], k: int) -> list[float]:
    """Weights on the segment's predictions ``m_s, m_{u_1}, …`` (at λs ``lams``) of its order-``k`` update."""
    p1 = lin.hphi(1)
    if k == 1:
        return [p1]
    r = (lams[-1] - lams[0]) / lin.h
    if k == 2:
        return [p1 * (1 - 0.5 / r), p1 * 0.5 / r]
    p2 = lin.hphi(2)
    return [p1 - p2 / r, 0.0, p2 / r]


def multistep_update(x: Tensor, a, b, m: Tensor, state: "MultistepState", order: int, lower_order_final: bool,
                     prediction: str = "x0", extra: float = 0.0, solver_type: str = "midpoint"):
    """One multistep transition ``a → b`` with the prediction ``m`` at ``a``: ``(x_b, state)``; ``extra`` is the
    extra exponent ``δ`` of a stochastic step (its noise is the caller's)."""
    history = (((a, m),) + state.history)[:order]
    k = lower_order(order, state.index, state.transitions, lower_order_final)
    lin = linear(a, b, prediction, extra)
    weights = multistep_weights(lin, [n.lam for n, _ in history], k, solver_type)
    return combine(x, lin.A, lin.B, weights, [p for _, p in history]), state._replace(index=state.index + 1,
                                                                                      history=history)


def multistep_state(grid: TimeGrid) -> "MultistepState":
    """The transitions of ``grid`` after a step from pure noise, none taken, no history."""
    return MultistepState(len(grid) - int(grid.nodes[0].scale == 0), 0)


class MultistepState(NamedTuple):
    transitions: int           # transitions after a step from pure noise
    index: int                 # transitions taken (after it)
    history: tuple = ()        # ((node, prediction), …), newest first, at most ``order`` long


class SinglestepState(NamedTuple):
    orders: tuple              # the per-transition orders
    index: int
    start: Optional[Tensor] = None  # the state at the segment's first node
    segment: tuple = ()        # ((node, prediction), …) of the segment so far, oldest first


class DPMSolver(Solver):
    """DPM-Solver / DPM-Solver++ of ``order`` 1–3, ``multistep`` or ``singlestep``, on the noise (``eps``) or data
    (``x0``, DPM-Solver++) prediction. One evaluation per transition."""

    stochastic = False

    def __init__(self, order: int = 2, method: str = "multistep", prediction: str = "x0",
                 lower_order_final: bool = True):
        self.solver_order = check_order(order, 3)
        self.method = choice("method", method, METHODS)
        # The declared order of the map error: the published 3M formula weighs D_2 by h φ_3 where the Taylor term
        # needs 2 h φ_3 (D_2 ≈ h² m''/2), so multistep "order 3" is a second-order method (measured, tests).
        self.ode_order = 2 if (self.method, self.solver_order) == ("multistep", 3) else self.solver_order
        self.prediction = choice("prediction", prediction, PREDICTIONS)
        self.lower_order_final = flag("lower_order_final", lower_order_final)
        self.name = f"dpm_solver ({'++' if prediction == 'x0' else 'eps'}, {method}, order {order})"

    def init(self, x, grid: TimeGrid):
        """Multistep: the transitions in the grid (after a step from pure noise) and the history; singlestep: the order
        list and the segment."""
        if self.method == "singlestep":
            transitions = len(grid) - int(grid.nodes[0].scale == 0)
            return SinglestepState(tuple(singlestep_orders(self.solver_order, transitions, self.lower_order_final)), 0)
        return multistep_state(grid)

    def step(self, model: Model, x, a, b, state, noise):
        prediction = model(x, a)
        if a.scale == 0:
            return from_noise(prediction, b), state
        m = output(prediction, self.prediction)
        i = state.index
        if self.method == "singlestep":
            k = state.orders[i]
            start, segment = (x, ((a, m),)) if k == 1 else (state.start, state.segment + ((a, m),))
            nodes, preds = zip(*segment)
            lin = linear(nodes[0], b, self.prediction)
            weights = singlestep_weights(lin, [n.lam for n in nodes], k)
            return combine(start, lin.A, lin.B, weights, preds), state._replace(index=i + 1, start=start,
                                                                                segment=segment)
        return multistep_update(x, a, b, m, state, self.solver_order, self.lower_order_final, self.prediction)
