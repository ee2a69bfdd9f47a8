"""What the exponential integrators share: the probability-flow ODE solved in λ by variation of constants.

With ``x_t = α_t x_0 + σ_t z`` (a node's ``scale``, ``std``) and the half log-SNR ``λ = log(α/σ)``, the
probability-flow ODE is ``dx/dt = (dlog α/dt) x - σ (dλ/dt) ε̂(x, t)`` (Lu et al., 2022a, for any ``α, σ``:
VP, sub-VP, VE). Its linear part is solved exactly; from node ``s`` to node ``t``, ``h = λ_t - λ_s``:

    noise prediction (DPM-Solver):   x_t = (α_t/α_s) x_s - σ_t ∫_0^h e^{h-u} ε̂(λ_s + u) du
    data prediction (DPM-Solver++):  x_t = (σ_t/σ_s) x_s + α_t ∫_0^h e^{-(h-u)} x̂_0(λ_s + u) du

Expanding the prediction ``m`` in Taylor series in ``λ`` gives ``∫_0^h e^{±(h-u)} u^k/k! du = h^{k+1} φ_{k+1}(±h)``
with ``φ_k(z) = ∫_0^1 e^{(1-θ)z} θ^{k-1}/(k-1)! dθ`` (``φ_1(z) = (e^z - 1)/z``, ``φ_{k+1}(z) = (φ_k(z) - 1/k!)/z``).
So every step here is

    x_t = A x_s + B Σ_j w_j m_j,     (A, B, z) = (σ_t/σ_s, α_t, -h) for x̂_0,  (α_t/α_s, -σ_t, h) for ε̂,

with scalar weights ``w_j`` on the predictions ``m_j`` at earlier nodes (a method is its weights); the first
order method, ``w = h φ_1(z)`` on the prediction at ``s``, is DDIM in both forms.

From pure noise (``α_s = 0``, ``λ_s = -∞``: the exact top of rectified flow) ``h = ∞`` and every method's step is
its first-order limit ``x_t = α_t x̂_0 + σ_t ε̂`` (``from_noise``; DDIM from ``α_s = 0``), as diffusers' solvers
take it with flow sigmas. Such a node carries no information for a polynomial in ``λ`` (the Lagrange basis of a
node at ``λ = -∞`` vanishes in the limit), so it never enters a history: the multistep warm-up starts at the first
node with ``α > 0``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from torch import Tensor

from ..checks import integer
from ..predictions import Prediction
from .grid import Node

__all__ = ["PREDICTIONS", "phi", "Linear", "linear", "combine", "output", "from_noise", "check_order", "lower_order"]

PREDICTIONS = ("x0", "eps")


def phi(k: int, z: float) -> float:
    """``φ_k(z) = Σ_{n≥0} z^n/(n+k)!`` (``k ≥ 1``): the series for ``|z| < 1`` (no cancellation), else the recursion
    ``φ_1 = (e^z - 1)/z``, ``φ_{j+1} = (φ_j - 1/j!)/z``."""
    if abs(z) < 1:
        term, total, n = 1 / math.factorial(k), 0.0, 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300):
            total += term
            n += 1
            term *= z / (n + k)
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1 / math.factorial(j)) / z
    return value


class Linear(NamedTuple):
    """The exact linear part of a step ``s → t``: ``x_t = A x_s + B Σ_j w_j m_j``; ``h = λ_t - λ_s`` and
    ``hphi(k) = h φ_k(z)``."""

    A: float
    B: float
    z: float
    h: float

    def hphi(self, k: int) -> float:
        return self.h * phi(k, self.z)


def linear(s: Node, t: Node, prediction: str) -> Linear:
    """``(A, B, z, h)`` of the step from node ``s`` to the less noisy noisy node ``t`` for ``prediction``."""
    h = t.lam - s.lam
    if prediction == "x0":
        return Linear(t.std / s.std, t.scale, -h, h)
    return Linear(t.scale / s.scale, -t.std, h, h)


def combine(x: Tensor, A: float, B: float, weights: Sequence[float], predictions: Sequence[Tensor]) -> Tensor:
    """``A x + B Σ_j w_j m_j`` as one new tensor updated in place."""
    out = x.mul(A)
    for w, m in zip(weights, predictions):
        if w != 0:
            out.add_(m, alpha=B * w)
    return out


def output(prediction: Prediction, kind: str) -> Tensor:
    """The model output an integrator of ``kind`` (``x0``/``eps``) works with."""
    return prediction.x0 if kind == "x0" else prediction.eps


def from_noise(prediction: Prediction, t: Node) -> Tensor:
    """The step from a node of ``α = 0`` (pure noise) to ``t``: ``x_t = α_t x̂_0 + σ_t ε̂``."""
    return prediction.combine(x0=t.scale, eps=t.std)


def check_order(order, highest: int) -> int:
    return integer("order", order, 1, highest)



def lower_order(order: int, index: int, transitions: int, final: bool) -> int:
    """The order of a multistep method at transition ``index`` (0-based) of ``transitions``: at most ``index + 1``
    (warm-up: only ``index + 1`` predictions exist) and, with ``final`` (``lower_order_final``), at most the number
    of transitions left, counting the final denoising step (``min(order, transitions - index)``)."""
    order = min(order, index + 1)
    return min(order, transitions - index) if final else order
