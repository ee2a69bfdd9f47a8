"""EDM's sampler (Karras et al., 2022, Algorithm 2): Heun's method in the noise level σ, with optional churn.

Every SDE here is, on ``y = x/scale`` with ``σ = std/scale``, the VE process ``y = x_0 + σ z``, whose
probability-flow ODE is ``dy/dσ = (y - D(y; σ))/σ = ε̂`` (``D = x̂_0``, Tweedie's denoiser). A transition
from node ``a`` (``σ_i``) to node ``b`` (``σ_{i+1} > 0``):

    γ_i = min(churn/N, √2 - 1) if s_tmin ≤ σ_i ≤ s_tmax else 0,      σ̂ = σ_i (1 + γ_i)
    ŷ   = y_i + √(σ̂² - σ_i²) · s_noise · z                               (churn: added noise, only when γ_i > 0)
    d   = ε̂(ŷ; σ̂),        y' = ŷ + (σ_{i+1} - σ̂) d                      (Euler)
    d'  = ε̂(y'; σ_{i+1}),  y_{i+1} = ŷ + (σ_{i+1} - σ̂)(d + d')/2        (Heun's correction)

with ``N`` the grid's number of noisy nodes. EDM's last step, Euler from ``σ_{N-1}`` into ``σ = 0``, is
``y - σ ε̂ = x̂_0``: Tweedie's step, which ``integrate`` takes. So ``N`` noise levels cost ``2N - 1``
evaluations. Churn applies to the ``N - 1`` Heun steps, not to the last level (where EDM's would only
perturb what the Tweedie step then denoises); with EDM's published ``s_tmin ≥ 0.05`` and ``σ_min = 0.002``
the last level is outside ``[s_tmin, s_tmax]`` anyway. ``σ̂`` is a noise level off the grid: its time is
``sde.time_at_noise_level(σ̂)`` with the path's marginal there (on VE and ``EDMPath`` it is ``σ̂`` itself, and on
``EDMPath`` (``scale = 1``) every step is Algorithm 2 with no ``x/scale`` conversion at all).

**Euler's step where the trapezoid fails.** With ``w = 1/σ`` the ODE is ``d(w y)/dw = D`` exactly, and Euler's step
``y' = ŷ + (σ_b - σ̂) ε̂`` is ``x_b = scale_b D + std_b ε̂`` (DDIM's: ``D`` frozen at ``σ̂``), whose error is
``O(ΔD)`` for any ``ρ = σ_b/σ̂``, ``ΔD`` the change of the denoiser over the step. Heun's correction adds
``(σ_b - σ̂)(d' - d)/2 = (1/ρ - 1)(D' - D)/2``: where ``D`` is linear in ``w`` over the step (far above the data's
scale) the trapezoid's error is ``ΔD (1 - ρ)²/(2ρ)`` against Euler's ``ΔD (1 - ρ)/2``, ``(1 - ρ)/ρ`` times
Euler's, without bound as ``ρ → 0`` (from rectified flow's ``flow`` grid's first node, ``σ = 10⁶``, ``ρ ≈ N·10⁻⁶``:
measured ``10⁴–2·10⁵×`` the map error with Euler's first step). Near the data ``ε̂`` is smooth in ``σ`` and the
trapezoid wins even at ``ρ ≈ 10⁻³`` (a uniform grid's last step into ``eps = 10⁻³`` on rectified flow: Euler there
measured up to 2.8× worse). So a step takes Euler's step (one evaluation) when

    σ_b < EULER_BELOW · σ_a,    EULER_BELOW = 10⁻⁴

(more than four decades in one step: the flow grid's first step up to ``N = 100`` levels, and none of a grid's last
steps into ``eps ≥ 10⁻³``), and from a node of ``α = 0`` (``σ = ∞``, the exact top of rectified flow), where the
trapezoid has no limit and Euler's is ``x_b = scale_b x̂_0 + std_b ε̂``. EDM's Karras grids (``σ`` from 80 to 0.002,
ρ = 7) have ``σ_1/σ_0 ≥ 0.031`` from 3 noise levels on, so their steps stay Heun's (only a 2-level grid, one step
over ``σ_max/σ_min = 4·10⁴``, takes Euler's). ``N`` noise levels cost ``2N - 1`` evaluations less one per Euler step.
"""
from __future__ import annotations

import math

import torch

from ..checks import nonnegative, positive
from .exponential import from_noise
from .solver import Model, Solver

__all__ = ["Heun", "EULER_BELOW"]

EULER_BELOW = 1e-4  # a step with σ_b < EULER_BELOW·σ_a is Euler's (module docstring)


class Heun(Solver):
    """EDM's Algorithm 2: Heun steps in σ on ``x/scale`` (2 evaluations per step, ``2·steps - 1`` in all) with
    EDM's stochastic ``churn`` (``γ = min(churn/steps, √2 - 1)`` for ``σ`` in ``[s_tmin, s_tmax]``, noise
    scaled by ``s_noise``). Deterministic unless ``churn > 0``.
    EDM's default grid is ``spacing="karras"``, ``rho=7``."""

    name, evals_per_step = "heun", 2

    def __init__(self, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        self.churn = nonnegative("churn", churn)
        self.s_tmin = nonnegative("s_tmin", s_tmin)
        self.s_tmax = nonnegative("s_tmax", s_tmax, infinite=True)
        if self.s_tmax < self.s_tmin:
            raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={self.s_tmin}, s_tmax={self.s_tmax}")
        self.s_noise = positive("s_noise", s_noise)
        self.stochastic = self.churn > 0
        if self.stochastic:
            # Churn's noising x + √(σ̂² - σ²)·z is exact in law (the marginal at σ̂ from the one at σ), so a step's only
            # weak error is its Heun ODE step's: weak order 2 (measured 2.02, tests/test_declared_orders.py); with
            # s_noise ≠ 1 the law is off by O(1) whatever the steps: none. Pathwise it claims none.
            self.strong_order, self.weak_order = None, 2.0 if self.s_noise == 1 else None
        else:
            self.ode_order = 2

    def grid_nfe(self, grid) -> int:
        return super().grid_nfe(grid) - sum(self.euler(a, b) for a, b in grid.steps() if not b.is_data)

    @staticmethod
    def euler(a, b) -> bool:
        """Whether the step from node ``a`` to the noisy node ``b`` is Euler's (module docstring)."""
        return a.scale == 0 or b.noise_level < EULER_BELOW * a.noise_level

    def init(self, x, grid) -> float:
        """State: the churn ``γ = min(churn/N, √2 - 1)`` for the grid's ``N`` noisy nodes."""
        return min(self.churn / len(grid.noisy), math.sqrt(2) - 1)

    def step(self, model: Model, x, a, b, gamma, noise):
        if a.scale == 0:
            return from_noise(model(x, a), b), gamma
        euler = self.euler(a, b)
        sigma_a = a.noise_level
        if gamma > 0 and self.s_tmin <= sigma_a <= self.s_tmax:
            sigma_hat = sigma_a * (1 + gamma)
            a_hat = model.node(float(model.sde.time_at_noise_level(torch.tensor(sigma_hat, dtype=torch.float64))))
            # x̂ = scale(σ̂)·(x/scale_a + √(σ̂² - σ_a²)·s_noise·z)
            z = noise(a.t, b.t)  # the churn drives the step a → b (not [a, â], which the last step's overlaps)
            x = x.mul(a_hat.scale / a.scale).add_(z, alpha=a_hat.scale * math.sqrt(sigma_hat**2 - sigma_a**2)
                                                  * self.s_noise)
            a = a_hat
        if euler:  # y' = ŷ + (σ_b - σ̂) ε̂, i.e. x_b = scale_b x̂_0 + std_b ε̂
            return from_noise(model(x, a), b), gamma
        return self.trapezoid(model, x, a, b), gamma

    @staticmethod
    def trapezoid(model: Model, x, a, b):
        """Heun's step from ``a`` to ``b`` in ``σ`` on ``x/scale`` (two evaluations)."""
        h = b.noise_level - a.noise_level
        d = model(x, a).eps
        y = x.mul(1 / a.scale)  # ŷ; y' = ŷ + h d, evaluated at x' = scale_b·y'
        d2 = model(y.add(d, alpha=h).mul_(b.scale), b).eps
        return y.add_(d, alpha=h / 2).add_(d2, alpha=h / 2).mul_(b.scale)
