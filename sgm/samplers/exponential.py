"""What the exponential integrators share: the probability-flow ODE, and the reverse SDEs of the same marginals,
solved in λ by variation of constants.

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

**Two steps in one formula.** The weights of a method are polynomial-in-λ quadratures, ``w_j = Σ_k c_{jk} H φ_k(z)``:
the φ-functions carry the *exponent* ``H`` of the exact linear part (``z = -H`` for x̂_0), while the divided
differences ``D_1 ≈ h m'``, ``D_2 ≈ h² m''/2`` that multiply them are normalised by the *step* ``h = λ_t - λ_s``
(the ratios ``r_i`` of earlier λ-gaps to ``h``). ``Linear`` keeps the two apart (``H``, ``h``); for the ODE they are
equal, and the SDE variants below differ only in ``H``.

**The SDE variants (SDE-DPM-Solver++, Lu et al. 2022b; k-diffusion's DPM-Solver++ SDE samplers).** The family of
reverse-time SDEs with the marginals of the path, for ``η ≥ 0`` (``η = 0``: the probability-flow ODE; ``η = 1``:
Anderson's reverse SDE), with ``g² = -2σ² dλ/dt``:

    dx = [f x - ½(1 + η) g² s] dt + √η g dW̄.

With ``s = -(x - α x̂_0)/σ²`` the drift is ``(dlog σ/dt - η dλ/dt) x + (1 + η) α (dλ/dt) x̂_0``, so the linear part
from ``s`` to ``t`` is ``(σ_t/σ_s) e^{-ηh}`` and, in λ (``α_t e^{-(1+η)(λ_t - λ)}`` is ``(σ_t/σ_λ) e^{-η(λ_t-λ)} α_λ``),

    x_t = (σ_t/σ_s) e^{-ηh} x_s + α_t (1+η) ∫_0^h e^{-(1+η)(h-u)} x̂_0(λ_s + u) du + σ_t √(1 - e^{-2ηh}) ξ,

the noise being the exact Itô integral: its variance is ``η ∫ (σ_t/σ_λ)² e^{-2η(λ_t-λ)} g² dt =
σ_t² η ∫_0^h 2 e^{-2η(h-u)} du = σ_t² (1 - e^{-2ηh})``. The Taylor terms integrate as before with the exponent
``H = (1+η)h``: ``(1+η) ∫_0^h e^{-(1+η)(h-u)} u^k/k! du = H φ_{k+1}(-H)·h^k``: the φ-weight carries ``H``, the power
``h^k`` goes with ``m^{(k)}`` into the divided difference normalised by ``h``. So an SDE step is the ODE step of the
same method with ``H = (1+η)h`` in
its φ-weights (``h`` unchanged in its divided differences), ``A = (σ_t/σ_s) e^{-ηh}``, plus ``σ_t √(1 - e^{-2ηh}) z``:
with one ``h`` for both, ``(1+η)h`` in the ratios ``r_i`` would count the correction twice. For ``η = 1``,
``A = (σ_t/σ_s) e^{-h}``, ``H φ_1(-H) = 1 - e^{-2h}`` and the noise ``σ_t √(1 - e^{-2h}) z``: SDE-DPM-Solver++1, which
is DDPM's ancestral step.

**The same step as "down, then up".** ``A = (σ_t/σ_s) e^{-δ}`` with ``δ = H - h`` and ``B H φ_1(-H) = α_t (1 - e^{-H})``
are the first-order ODE step on ``x/α`` from noise level ``σ̃_s = e^{-λ_s}`` down to ``σ̃_↓ = σ̃_t e^{-δ}``, and the
noise
``α_t σ̃_t √(1 - e^{-2δ}) z`` brings the level back up to ``σ̃_t`` (``σ̃_↓² + σ̃_↑² = σ̃_t²``). Ancestral samplers
(k-diffusion's ``get_ancestral_step``) choose ``σ̃_↑ = min(σ̃_t, η σ̃_t √(1 - σ̃_t²/σ̃_s²))``, i.e.
``δ = -½ log(1 - min(1, η² (1 - e^{-2h})))``; the η-scaled exponent chooses ``δ = ηh``. The two agree at ``η = 0``
(the ODE) and ``η = 1`` (``δ = h``). ``linear(s, t, prediction, extra=δ)`` is that step, ``noise_std(t, δ)`` its noise.

From pure noise (``α_s = 0``, ``λ_s = -∞``: the exact top of rectified flow) ``h = ∞`` and every method's step is
its first-order limit ``x_t = α_t x̂_0 + σ_t ε̂`` (``from_noise``; DDIM from ``α_s = 0``), as diffusers' solvers
take it with flow sigmas; with noise, ``x_t = α_t x̂_0 + σ_t (e^{-δ} ε̂ + √(1 - e^{-2δ}) z)`` (``δ = ∞`` for the
η-scaled exponent with ``η > 0``: ``α_t x̂_0 + σ_t z``). Such a node carries no information for a polynomial in ``λ``
(the Lagrange basis of a node at ``λ = -∞`` vanishes in the limit), so it never enters a history: the multistep
warm-up starts at the first node with ``α > 0``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from torch import Tensor

from ..checks import integer
from ..predictions import Prediction
from .grid import Node

__all__ = ["PREDICTIONS", "phi", "Linear", "linear", "combine", "output", "from_noise", "check_order", "lower_order",
           "eta_extra", "ancestral_extra", "noise_std"]

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
    """The exact linear part of a step ``s → t``: ``x_t = A x_s + B Σ_j w_j m_j``. ``h = λ_t - λ_s`` is the step that
    normalises the divided differences (``r_i`` = λ-gap / ``h``); ``H`` the exponent of the linear part (``h`` for the
    ODE, ``h + δ`` for a stochastic step) and ``z = ∓H`` the φ-functions' argument: ``hphi(k) = H φ_k(z)``."""

    A: float
    B: float
    z: float
    h: float
    H: float

    def hphi(self, k: int) -> float:
        if math.isinf(self.H):  # the step down to σ̃ = 0: H φ_k(-H) → 1/(k-1)!
            return 1 / math.factorial(k - 1)
        return self.H * phi(k, self.z)


def linear(s: Node, t: Node, prediction: str, extra: float = 0.0) -> Linear:
    """``(A, B, z, h, H)`` of the step from node ``s`` to the less noisy noisy node ``t`` for ``prediction``. ``extra``
    (``δ ≥ 0``, data prediction only) continues the exponent to ``H = h + δ`` with ``A = (σ_t/σ_s) e^{-δ}``: the
    deterministic part of a stochastic step, whose noise is ``noise_std(t, δ)·z`` (see the module docstring)."""
    h = t.lam - s.lam
    if prediction == "x0":
        if extra == 0:
            return Linear(t.std / s.std, t.scale, -h, h, h)
        return Linear(t.std / s.std * math.exp(-extra), t.scale, -(h + extra), h, h + extra)
    if extra != 0:
        raise ValueError("a stochastic exponential step is written for the data prediction (x0)")
    return Linear(t.scale / s.scale, -t.std, h, h, h)


def eta_extra(h: float, eta: float) -> float:
    """``δ = ηh``: the η-scaled exponent ``H = (1+η)h`` of SDE-DPM-Solver++ (``∞`` for ``h = ∞``, ``η > 0``)."""
    return eta * h if eta > 0 else 0.0


def ancestral_extra(h: float, eta: float) -> float:
    """``δ = -½ log(1 - min(1, η²(1 - e^{-2h})))``: k-diffusion's ancestral step (``σ̃_↓ = σ̃_t e^{-δ}``, ``σ̃_↑`` of
    ``get_ancestral_step``) as an extra exponent; ``∞`` where ``σ̃_↓ = 0``."""
    if eta == 0:
        return 0.0
    up2 = min(1.0, eta**2 * -math.expm1(-2 * h))
    return math.inf if up2 >= 1 else -0.5 * math.log1p(-up2)


def noise_std(t: Node, extra: float) -> float:
    """``σ_t √(1 - e^{-2δ})``: the standard deviation of the noise of a step with extra exponent ``δ`` into ``t``."""
    return t.std * math.sqrt(-math.expm1(-2 * extra)) if extra > 0 else 0.0


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


def from_noise(prediction: Prediction, t: Node, extra: float = 0.0) -> Tensor:
    """The step from a node of ``α = 0`` (pure noise) to ``t``: ``x_t = α_t x̂_0 + σ_t e^{-δ} ε̂`` (``δ = extra``; the
    caller adds ``noise_std(t, δ)·z``), ``α_t x̂_0 + σ_t ε̂`` for the ODE."""
    if extra == 0:
        return prediction.combine(x0=t.scale, eps=t.std)
    if math.isinf(extra):
        return prediction.combine(x0=t.scale)
    return prediction.combine(x0=t.scale, eps=t.std * math.exp(-extra))


def check_order(order, highest: int) -> int:
    return integer("order", order, 1, highest)


def lower_order(order: int, index: int, transitions: int, final: bool) -> int:
    """The order of a multistep method at transition ``index`` (0-based) of ``transitions``: at most ``index + 1``
    (warm-up: only ``index + 1`` predictions exist) and, with ``final`` (``lower_order_final``), at most the number
    of transitions left, counting the final denoising step (``min(order, transitions - index)``)."""
    order = min(order, index + 1)
    return min(order, transitions - index) if final else order
