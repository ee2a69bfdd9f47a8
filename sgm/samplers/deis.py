"""Multistep solvers of the probability-flow ODE in the noise level: DEIS and iPNDM (Zhang & Chen, 2023).

On ``y = x/scale`` with ``ρ = σ = std/scale`` the probability-flow ODE of every SDE here is
``dy/dρ = ε̂(x, t)`` (``ε̂ = -std·s``), so, exactly (variation of constants; in ``λ = -log ρ`` it reads
``x_b = (scale_b/scale_a) x_a - scale_b ∫ e^{-λ} ε̂ dλ``, DPM-Solver's form),

    x_b = (scale_b/scale_a)·x_a + scale_b ∫_{ρ_a}^{ρ_b} ε̂(ρ) dρ.

A multistep method replaces ``ε̂`` by the polynomial through its last ``k`` values ``ε̂_j`` (at nodes
``0 = a, 1, …, k-1`` back) and integrates it: ``x_b = (scale_b/scale_a)·x_a + scale_b Σ_j c_j ε̂_j``.

- ``deis`` (DEIS's exponential Adams–Bashforth, "tAB" in λ and "ρAB" in ρ): the Lagrange basis
  ``ℓ_j(v) = Π_{m≠j} (v - v_m)/(v_j - v_m)`` in ``v = λ`` (``variable="lambda"``) or ``v = ρ`` (``"rho"``), and
  ``c_j = ∫_{ρ_a}^{ρ_b} ℓ_j(v(ρ)) dρ`` (in λ: ``-∫_{λ_a}^{λ_b} e^{-λ} ℓ_j(λ) dλ``). The integrals are taken by
  32-point Gauss–Legendre quadrature in float64 on the interval of ``v``: exact (to rounding) for the
  polynomials of the ρ variant; for ``e^{-λ}·(degree ≤ 2)`` over a step of ``|Δλ| ≤ 10`` the quadrature
  error is below 1e-16 relative. Order 1 is DDIM (``c_0 = ρ_b - ρ_a``).
- ``ipndm`` (improved PNDM): the fixed Adams–Bashforth weights ``c_j = (ρ_b - ρ_a)·b_j`` with
  ``b = (1)``, ``(3, -1)/2``, ``(23, -16, 5)/12``, ``(55, -59, 37, -9)/24``: ``deis`` in ρ on equal ρ steps,
  without re-deriving the weights for unequal ones. They sum to 1, so on unequal steps their O(h) error
  multiplies differences of ε̂ (O(h)): O(h³) per step, map error of order 2 whatever ``max_order``.

Warm-up: the ``k``-th step (``k = 1, 2, …``) uses order ``min(order, k)`` — the history it has — so the
first step is DDIM. From a node of ``α = 0`` (``ρ = ∞``) the step is ``from_noise``, DDIM's limit
``x_b = scale_b x̂_0 + std_b ε̂``, and the warm-up starts after it. The step into the data node is ``integrate``'s
Tweedie step (``y - ρ ε̂ = x̂_0``, exactly what any of these methods gives with a constant ``ε̂``), so ``steps`` noise
levels cost ``steps`` evaluations.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..checks import choice, integer
from .exponential import from_noise
from .grid import Node
from .solver import Model, Solver

__all__ = ["DEIS", "IPNDM", "deis_coefficients", "IPNDM_WEIGHTS"]

DEIS_VARIABLES = ("lambda", "rho")
IPNDM_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@lru_cache(maxsize=1)
def _gauss_legendre() -> tuple[np.ndarray, np.ndarray]:
    """32-point Gauss–Legendre nodes and weights on [0, 1]."""
    u, w = np.polynomial.legendre.leggauss(32)
    return (u + 1) / 2, w / 2


def deis_coefficients(nodes: tuple[Node, ...], b: Node, variable: str = "lambda") -> list[float]:
    """``c_j = ∫_{ρ_a}^{ρ_b} ℓ_j(v(ρ)) dρ`` for the history ``nodes`` (``nodes[0] = a``, then older) and target
    ``b``, with the Lagrange basis ``ℓ_j`` in ``v = λ`` or ``v = ρ`` (float64 Gauss–Legendre; see the module)."""
    u, w = _gauss_legendre()
    if variable == "rho":
        vs = np.array([n.noise_level for n in nodes])
        lo, hi = nodes[0].noise_level, b.noise_level
        v = lo + (hi - lo) * u
        jac = (hi - lo) * w  # dρ
    else:
        vs = np.array([n.lam for n in nodes])
        lo, hi = nodes[0].lam, b.lam
        v = lo + (hi - lo) * u
        jac = -(hi - lo) * w * nodes[0].noise_level * np.exp(-(v - lo))  # dρ = -e^{-λ} dλ, e^{-λ} = ρ_a e^{-(λ-λ_a)}
    coefficients = []
    for j in range(len(nodes)):
        basis = np.ones_like(v)
        for m in range(len(nodes)):
            if m != j:
                basis *= (v - vs[m]) / (vs[j] - vs[m])
        coefficients.append(float(np.dot(jac, basis)))
    return coefficients


class _Multistep(Solver):
    """``x_b = (scale_b/scale_a)·x_a + scale_b Σ_j c_j ε̂_j`` over the last ``min(order, k)`` values of ε̂.
    State: the history ``((node, ε̂), …)``, newest first, at most ``order - 1`` long."""

    stochastic, evals_per_step = False, 1
    depth: int  # how many values of ε̂ the polynomial uses (its degree + 1)

    def coefficients(self, nodes: tuple[Node, ...], b: Node) -> list[float]:
        raise NotImplementedError

    def init(self, x, grid) -> tuple:
        return ()

    def step(self, model: Model, x, a, b, history, noise):
        prediction = model(x, a)
        if a.scale == 0:
            return from_noise(prediction, b), history
        history = ((a, prediction.eps),) + history
        coefficients = self.coefficients(tuple(n for n, _ in history), b)
        x = x.mul(b.scale / a.scale)
        for c, (_, eps) in zip(coefficients, history):
            x.add_(eps, alpha=b.scale * c)
        return x, history[: self.depth - 1]


class DEIS(_Multistep):
    """DEIS (Zhang & Chen, 2023): the exponential Adams–Bashforth of ``order`` 1–3 with ε̂ extrapolated by a
    polynomial in ``variable`` ``"lambda"`` (λ = log(scale/std), "tAB") or ``"rho"`` (ρ = std/scale, "ρAB").
    One evaluation per step; lower orders for the first steps (warm-up)."""

    name = "deis"

    def __init__(self, order: int = 3, variable: str = "lambda"):
        self.ode_order = self.depth = integer("order", order, 1, 3)
        self.variable = choice("variable", variable, DEIS_VARIABLES)

    def coefficients(self, nodes, b):
        return deis_coefficients(nodes, b, self.variable)


class IPNDM(_Multistep):
    """Improved PNDM (Zhang & Chen, 2023): Adams–Bashforth in ρ = σ on ``x/scale`` with the fixed weights of
    equal steps over the last ``max_order`` (1–4) values of ε̂, fewer for the first steps (warm-up). One evaluation
    per step. Its map error is of order ``min(max_order, 2)`` (declared as ``ode_order``): the fixed weights are exact
    only for equal ρ steps, and off by O(h) on any smoothly varying grid (see the module docstring)."""

    name = "ipndm"

    def __init__(self, max_order: int = 4):
        self.max_order = integer("max_order", max_order, 1, 4)
        self.depth, self.ode_order = self.max_order, min(self.max_order, 2)

    def coefficients(self, nodes, b):
        h = b.noise_level - nodes[0].noise_level
        return [h * w for w in IPNDM_WEIGHTS[len(nodes) - 1]]
