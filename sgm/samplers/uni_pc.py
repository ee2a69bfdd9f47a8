"""UniPC (Zhao et al., 2023): a multistep exponential predictor (UniP) and a corrector (UniC) at no extra evaluation.

In the variation-of-constants step from ``s_0`` to ``t`` (see ``sgm.samplers.exponential``; ``h = λ_t - λ_{s_0}``)
the prediction's variation is written through differences ``D_k = (m_k - m_0)/r_k`` at earlier nodes
(``r_k = (λ_{s_k} - λ_{s_0})/h < 0``):

    x_t = A x_{s_0} + B (h φ_1 m_0 + B(h) Σ_k ρ_k D_k),     B(h) = h (``bh1``) or h φ_1 (``bh2``),

with ``ρ`` solving the order conditions ``Σ_k ρ_k r_k^{i-1} = i! h φ_{i+1}/B(h)``, ``i = 1, …, p-1`` (UniP-p;
for ``p = 2`` the leading-order solution ``ρ = 1/2``, as published).

UniC-p corrects the state at ``t`` once the model has been evaluated there (that evaluation is the next step's
anyway): the same formula with the new output ``m_t`` as one more difference (``r = 1``) and ``ρ`` solving all
``p`` conditions (``ρ = 1/2`` for ``p = 1``); its order is one more than the predictor's. The next predictor starts
from the corrected state and uses ``m_t`` as evaluated at the uncorrected one. The last noisy node's correction is
not needed: the final denoising step takes ``x̂_0`` there, as UniPC's last first-order step into σ = 0 does.

From a node of ``α = 0`` the step is ``from_noise`` (uncorrected) and the warm-up starts after it.
Warm-up and ``lower_order_final`` as in multistep DPM-Solver; the corrector at node ``b`` has the order of the
predictor that reached ``b``. The correction is added to the state as ``x^c - x̃ = B Σ_j (w^c_j - w^p_j) m_j``
(predictor and corrector share the linear part from ``s_0``), so a per-step callback's change to ``x̃`` is kept.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..checks import choice, flag
from .exponential import PREDICTIONS, check_order, combine, from_noise, linear, lower_order, output, phi
from .grid import TimeGrid
from .solver import Model, Solver

__all__ = ["UniPC", "VARIANTS", "UniPCState"]

VARIANTS = ("bh1", "bh2")


def unipc_weights(lin, lams: list[float], p: int, variant: str, corrector: bool) -> list[float]:
    """Weights on ``m_0, m_1, …, m_{p-1}`` (newest first, at λs ``lams``) and, for the corrector, last on ``m_t``."""
    h, p1 = lin.h, lin.hphi(1)  # h normalises the differences; the φ-weights carry the exponent lin.H (= h here)
    bh = lin.H if variant == "bh1" else p1
    rks = [(lam - lams[0]) / h for lam in lams[1:p]] + ([1.0] if corrector else [])
    n = len(rks)
    if n == 0:
        return [p1]
    if n == 1 and (corrector or p == 2):  # UniC-1 and UniP-2: ρ = 1/2
        rho = [0.5]
    else:
        R = torch.tensor([[r**i for r in rks] for i in range(n)], dtype=torch.float64)
        rhs = torch.tensor([math.factorial(i) * lin.H * phi(i + 1, lin.z) / bh for i in range(1, n + 1)],
                           dtype=torch.float64)
        rho = torch.linalg.solve(R, rhs).tolist()
    # h φ_1 m_0 + B(h) Σ_k ρ_k (m_k - m_0)/r_k, as weights on m_0, m_1, … (and m_t)
    per_node = [bh * rho_k / r_k for rho_k, r_k in zip(rho, rks)]
    return [p1 - sum(per_node)] + per_node


class UniPCState(NamedTuple):
    transitions: int                 # transitions after a step from pure noise
    index: int = 0                   # transitions taken (after it)
    history: tuple = ()              # ((node, prediction), …), newest first
    previous: Optional[tuple] = None  # (order, weights) of the predictor that reached the current node


class UniPC(Solver):
    """UniPC of ``order`` 1–3 (predictor order; with the corrector the method's order is one higher), ``variant``
    ``bh1``/``bh2``, on the data (``x0``, default) or noise (``eps``) prediction. One evaluation per transition."""

    stochastic = False

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True, prediction: str = "x0",
                 lower_order_final: bool = True):
        self.predictor_order = check_order(order, 3)
        self.variant = choice("variant", variant, VARIANTS)
        self.corrector = flag("corrector", corrector)
        self.prediction = choice("prediction", prediction, PREDICTIONS)
        self.lower_order_final = flag("lower_order_final", lower_order_final)
        self.ode_order = self.predictor_order + int(self.corrector)
        self.name = f"unipc ({variant}, order {order}{', no corrector' if not corrector else ''})"

    def init(self, x, grid: TimeGrid):
        """The transitions in the grid, the history of (node, prediction), the last predictor's order and weights."""
        return UniPCState(len(grid) - int(grid.nodes[0].scale == 0))

    def step(self, model: Model, x, a, b, state, noise):
        prediction = model(x, a)
        if a.scale == 0:
            return from_noise(prediction, b), state
        m = output(prediction, self.prediction)
        i, history = state.index, state.history
        if self.corrector and state.previous is not None:
            p, predictor = state.previous
            (s0, _), past = history[0], history[:p]
            lin = linear(s0, a, self.prediction)
            weights = unipc_weights(lin, [n.lam for n, _ in past], p, self.variant, corrector=True)
            # x^c - x̃ = B Σ_j (w^c_j - w^p_j) m_j (the same linear part from s_0 cancels): added to the state
            delta = [c - q for c, q in zip(weights, predictor + (0.0,))]
            x = combine(x, 1.0, lin.B, delta, [q for _, q in past] + [m])
        history = (((a, m),) + history)[:self.predictor_order]
        k = lower_order(self.predictor_order, i, state.transitions, self.lower_order_final)
        lin = linear(a, b, self.prediction)
        weights = unipc_weights(lin, [n.lam for n, _ in history], k, self.variant, corrector=False)
        return (combine(x, lin.A, lin.B, weights, [q for _, q in history]),
                state._replace(index=i + 1, history=history, previous=(k, tuple(weights))))
