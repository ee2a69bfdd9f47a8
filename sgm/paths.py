"""Gaussian paths: every forward process here is ``x_t = α(t)·x_0 + σ(t)·ε``, ``ε ~ N(0, I)``, on ``t ∈ [0, T]``.

A path is given by ``α, σ`` and their time derivatives ``α', σ'``; everything else is derived from them once, in
``GaussianPath``:

- the SDE ``dx = f(t)·x dt + g(t) dW`` with these marginals: ``f = α'/α`` and ``g² = 2σσ' - 2(α'/α)σ²``
  (``d scale/dt = f·scale`` and ``d σ²/dt = 2fσ² + g²``);
- its reverse (Anderson, 1982) and probability-flow ODE for a score ``s ≈ ∇ log p_t``:
  ``dx = [f x - g² s] dt + g dW̄`` (``reverse_drift``) and ``dx/dt = f x - ½ g² s = α' x̂_0 + σ' ε̂`` (``ode_drift``;
  the second form, the *velocity*, stays finite where ``α = 0``);
- the half log-SNR ``λ(t) = log(α/σ)`` (``lam``), the noise level ``σ/α = e^{-λ}`` (``noise_level``: ``x/α`` is the
  variance-exploding process of the same data, Karras et al., 2022) and their inverses (closed forms where a path
  has one, a monotone bisection in float64 otherwise);
- the prior ``N(0, prior_std² I)`` standing for ``p_T`` and the discrete chain ``discretize(N)``.

Instances: ``VPSDE``, ``SubVPSDE``, ``CosineVPSDE`` (variance preserving, DDPM's and improved DDPM's chains), ``VESDE``
(NCSN's levels), ``EDMPath`` (``α = 1, σ = t``), ``RectifiedFlow`` (``α = 1 - t, σ = t``, with SD3's time shift),
``GaussianPath.from_alphas_cumprod`` (any discrete schedule ``ᾱ_i``, zero terminal SNR included) and
``GaussianPath.from_functions`` (any ``α(t), σ(t)`` callables). Paths compare by value: class and parameters
(a table path by its table), so a grid or checkpoint made for one path is refused for another.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .checks import integer, positive, real
from .device import randn, wide_float

__all__ = ["GaussianPath", "SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "EDMPath", "RectifiedFlow",
           "AlphasCumprodPath", "FunctionPath", "DiscreteChain", "batch_view"]


def batch_view(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor ``v`` of shape ``(batch,)`` to broadcast against ``x``."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class DiscreteChain:
    """A discrete forward chain ``x_i = scale[i]·x_0 + std[i]·z`` for timesteps ``i = 0 … N-1``.

    Noise grows with ``i`` (DDPM's ``t = 1 … N`` is ``i = t - 1``); ``t[i]`` is the continuous time the
    timestep stands for. Between timesteps the chain moves by ``x_i = r_i x_{i-1} + √v_i z`` with
    ``r_i = scale[i]/scale[i-1]`` and ``v_i = std[i]² - r_i² std[i-1]²`` (``v_i = β_i`` on VP).
    All tensors are float64.
    """

    t: Tensor
    scale: Tensor
    std: Tensor
    betas: Tensor | None = None  # the VP-type chains' β_i (Ho et al., 2020); None for VE

    def __len__(self) -> int:
        return self.t.numel()

    @property
    def alphas_cumprod(self) -> Tensor:
        """``ᾱ_i = scale[i]²`` (``∏_{j≤i} (1 - β_j)`` on VP)."""
        return self.scale**2

    @property
    def sigmas(self) -> Tensor:
        """The noise level ``σ_i = std[i] / scale[i]`` of ``x_i / scale[i] = x_0 + σ_i z``.

        On VE these are NCSN's levels in increasing order: ``sigmas.flip(0)`` is ``σ_1 > … > σ_L``.
        """
        return self.std / self.scale

    def index(self, t: Tensor) -> Tensor:
        """The timestep whose time ``t[i]`` is nearest to each entry of ``t`` (a ``long`` tensor)."""
        wide = wide_float(t.device)  # float64 where the device has it
        times = self.t.to(wide).to(t.device)  # ascending
        t = t.to(wide)
        hi = torch.searchsorted(times, t.contiguous()).clamp_(min(1, len(self) - 1), len(self) - 1)
        lo = (hi - 1).clamp_(min=0)
        return torch.where(t - times[lo] <= times[hi] - t, lo, hi)  # a tie goes to the lower timestep


class GaussianPath:
    """``x_t = α(t) x_0 + σ(t) ε`` on ``[0, T]``. A path defines ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma``
    (tensors in, tensors out, in ``t``'s dtype), ``T``, ``prior_std`` and ``params()`` (its parameters, for
    equality and ``repr``); all else is derived here. ``default_eps`` is the smallest time samplers stop at."""

    T: float = 1.0
    default_eps: float = 1e-3

    # --- what a path gives ------------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """``α'(t)``."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """``σ'(t)``."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std² I)`` that stands for ``p_T``."""
        raise NotImplementedError

    def params(self) -> dict:
        """The path's parameters by name (what ``==``, ``hash`` and ``repr`` read, and a checkpoint records)."""
        return {}

    def half_dsigma2(self, t: Tensor) -> Tensor:
        """``½ dσ²/dt = σσ'`` (a path overrides it where the product has a removable ``0·∞`` at ``σ = 0``)."""
        return self.sigma(t) * self.d_sigma(t)

    # --- derived ----------------------------------------------------------------------------------
    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(α(t), σ(t))`` with ``x_t | x_0 ~ N(α·x_0, σ²·I)``, each shaped like ``t``."""
        return self.alpha(t), self.sigma(t)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        """``f(t) = α'/α`` (``-inf`` where ``α = 0``)."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion_squared(self, t: Tensor) -> Tensor:
        """``g(t)² = 2σσ' - 2(α'/α)σ²`` (clamped at 0 against rounding)."""
        return (2 * self.half_dsigma2(t) - 2 * self.drift_coefficient(t) * self.sigma(t) ** 2).clamp_min(0)

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)``, shaped like ``t``."""
        return self.diffusion_squared(t).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(t)·x``, a new tensor shaped like ``x`` (callers may update it in place); ``t`` has shape ``(batch,)``."""
        return batch_view(self.drift_coefficient(t).to(x.dtype), x) * x

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE, ``f x - g² s``, for the score value ``s`` at ``(x, t)``."""
        return self.drift(x, t).addcmul_(batch_view(self.diffusion_squared(t).to(x.dtype), x), score, value=-1)

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE, ``f x - ½ g² s``, for the score value ``s``."""
        return self.drift(x, t).addcmul_(batch_view(self.diffusion_squared(t).to(x.dtype), x), score, value=-0.5)

    def lam(self, t: Tensor) -> Tensor:
        """The half log-SNR ``λ(t) = log α - log σ`` (``-inf`` where ``α = 0``, ``+inf`` where ``σ = 0``)."""
        alpha, sigma = self.marginal(t)
        return torch.log(alpha) - torch.log(sigma)

    def noise_level(self, t: Tensor) -> Tensor:
        """``σ(t)/α(t) = e^{-λ}``: ``x_t/α = x_0 + (σ/α) ε`` is the VE process of the same data
        (``inf`` at ``α = 0``)."""
        alpha, sigma = self.marginal(t)
        return sigma / alpha

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        """The ``t`` with ``noise_level(t) = level`` (the noise level increases with ``t``): bisection on
        ``[0, T]`` in float64 to the last bit, clamped to ``[0, T]``; paths with a closed form override it."""
        target = torch.as_tensor(level, dtype=torch.float64)
        lo, hi = torch.zeros_like(target), torch.full_like(target, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            below = self.noise_level(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        dtype = level.dtype if torch.is_tensor(level) and level.is_floating_point() else torch.float64
        return (0.5 * (lo + hi)).to(dtype)

    def time_at_lam(self, lam: Tensor) -> Tensor:
        """The ``t`` with ``λ(t) = lam``: ``time_at_noise_level(e^{-λ})``."""
        return self.time_at_noise_level(torch.exp(-lam))

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t = α(t)·x_0 + σ(t)·z``; ``noise`` is ``z`` when given."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        scale, std = self.marginal(t)
        return batch_view(scale, x0) * x0 + batch_view(std, x0) * noise

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std² I)`` of the given shape (one ``randn`` call)."""
        return self.prior_std * randn(shape, generator, dtype, device)

    def prior_logp(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std² I)`` per sample: ``-D/2·log(2π prior_std²) - ‖x‖²/(2 prior_std²)``."""
        d = x[0].numel()
        var = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * var) - x.flatten(1).pow(2).sum(1) / (2 * var)

    def discretize(self, N: int) -> DiscreteChain:
        """The ``N``-step chain at times ``t_i = T(i+1)/N`` with the path's ``(α, σ)`` (no betas); the classical
        paths give their own chains (DDPM's, NCSN's)."""
        N = integer("N", N)
        t = self._chain_times(N)
        return DiscreteChain(t, *self.marginal(t))

    def _chain_times(self, N: int) -> Tensor:
        return self.T * torch.arange(1, N + 1, dtype=torch.float64) / N

    # --- identity by value ------------------------------------------------------------------------
    def _key(self) -> tuple:
        return tuple(self.params().items())

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    # --- other ways to make a path ----------------------------------------------------------------
    @staticmethod
    def from_alphas_cumprod(alphas_cumprod, T: float = 1.0) -> "AlphasCumprodPath":
        """The variance-preserving path through a discrete schedule ``ᾱ_i`` (``AlphasCumprodPath``)."""
        return AlphasCumprodPath(alphas_cumprod, T)

    @staticmethod
    def from_functions(alpha: Callable[[Tensor], Tensor], sigma: Callable[[Tensor], Tensor], T: float = 1.0, *,
                       d_alpha: Callable | None = None, d_sigma: Callable | None = None,
                       prior_std: float | None = None, default_eps: float = 1e-3) -> "FunctionPath":
        """A path from ``α(t), σ(t)`` callables (``FunctionPath``; derivatives by autograd unless given)."""
        return FunctionPath(alpha, sigma, T, d_alpha=d_alpha, d_sigma=d_sigma, prior_std=prior_std,
                            default_eps=default_eps)


SDE = GaussianPath  # every path is the SDE ``dx = f x dt + g dW`` of its marginals: the name of the base in sgm < 0.2


class _LinearBeta(GaussianPath):
    """``β(t) = β_min + (t/T)(β_max - β_min)`` and its integral ``B(t) = β_min t + (β_max - β_min) t²/(2T)``;
    ``α = e^{-B/2}``, so ``α' = -½β α`` (``f = -½β``)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        self.beta_min = positive("beta_min", beta_min)
        self.beta_max = positive("beta_max", beta_max)
        self.T = positive("T", T)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={self.beta_min}, beta_max={self.beta_max}")

    def params(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def beta_integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + (self.beta_max - self.beta_min) * t**2 / (2 * self.T)

    def time_of_beta_integral(self, b: Tensor) -> Tensor:
        """The ``t`` with ``B(t) = b``: the positive root of ``(β_max - β_min) t²/(2T) + β_min t - b = 0``."""
        slope = (self.beta_max - self.beta_min) / self.T
        if slope == 0:
            return b / self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * slope * b))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.beta_integral(t))

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t) * self.alpha(t)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        """``f = -½ β(t)``."""
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def _chain_betas(self, N: int) -> Tensor:
        """``β_i = β(τ_i)·T/N`` at ``τ_i = iT/(N-1)``: ``linspace(β_min T/N, β_max T/N, N)``."""
        return torch.linspace(self.beta_min * self.T / N, self.beta_max * self.T / N, N, dtype=torch.float64)


class VPSDE(_LinearBeta):
    """Variance preserving: ``dx = -½β(t) x dt + √β(t) dW``.

    ``α = exp(-½B(t))``, ``σ = √(1 - exp(-B(t)))``; prior ``N(0, I)``.
    ``discretize(N)`` is DDPM's chain: ``β_i = linspace(β_min/N, β_max/N, N)`` (T = 1), so the defaults
    with ``N = 1000`` give Ho et al.'s ``linspace(1e-4, 0.02, 1000)``, ``ᾱ_i = ∏_{j≤i}(1-β_j)``.
    """

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.beta_integral(t)))

    def half_dsigma2(self, t: Tensor) -> Tensor:
        """``½ d(1 - e^{-B})/dt = ½ β e^{-B}``."""
        return 0.5 * self.beta(t) * torch.exp(-self.beta_integral(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.half_dsigma2(t) / self.sigma(t)

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        """``σ²/α² = e^{B(t)} - 1``, so ``B = log(1 + level²)``."""
        return self.time_of_beta_integral(torch.log1p(level**2))

    def discretize(self, N: int) -> DiscreteChain:
        N = integer("N", N)
        betas = self._chain_betas(N)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        return DiscreteChain(self._chain_times(N), alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt(), betas)


class SubVPSDE(_LinearBeta):
    """Sub-VP: ``dx = -½β(t) x dt + √(β(t)(1 - e^{-2B(t)})) dW``.

    ``α = exp(-½B(t))``, ``σ = 1 - exp(-B(t))`` (below VP's at every t); prior ``N(0, I)``.
    ``discretize(N)`` keeps DDPM's betas and ``scale_i = √ᾱ_i`` with the sub-VP std ``1 - ᾱ_i``.
    """

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.beta_integral(t))

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.beta(t) * torch.exp(-self.beta_integral(t))

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        """``σ/α = (1 - e^{-B})/e^{-B/2} = 2 sinh(B/2)``, so ``B = 2 asinh(level/2)``."""
        return self.time_of_beta_integral(2 * torch.asinh(level / 2))

    def discretize(self, N: int) -> DiscreteChain:
        N = integer("N", N)
        betas = self._chain_betas(N)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        return DiscreteChain(self._chain_times(N), alphas_cumprod.sqrt(), 1 - alphas_cumprod, betas)


class CosineVPSDE(GaussianPath):
    """Variance preserving with the cosine schedule (Nichol & Dhariwal, 2021): ``ᾱ(t) = c(t)²/c(0)²``,
    ``c(t) = cos(π/2 · (t + s)/(1 + s))`` on ``t ∈ [0, 1]``, so ``α = c(t)/c(0)``, ``σ = √(1 - α²)``,
    ``β(t) = -d log ᾱ/dt = π/(1 + s) · tan(π/2 · (t + s)/(1 + s))``, ``dx = -½β x dt + √β dW``; prior ``N(0, I)``.
    ``α(1) = 0`` and ``β`` blows up at ``t = 1``; by default the process stops at ``T = 0.9946`` (DPM-Solver's
    choice, ``β ≈ 1.2e3``, ``σ = 1 - 1.3e-5``); ``T = 1`` is the exact top, where ``α = 0``.
    ``discretize(N)`` is improved DDPM's chain (diffusers' ``squaredcos_cap_v2``): ``β_i = min(1 - ᾱ((i+1)/N)/ᾱ(i/N),
    0.999)``, ``ᾱ_i = ∏_{j≤i}(1 - β_j)`` at times ``(i+1)/N`` (the last clipped steps lie past ``T``).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        self.s = positive("s", s)
        self.T = positive("T", T)
        if self.T > 1:
            raise ValueError(f"T must be <= 1 (α(1) = 0), got {self.T}")

    def params(self) -> dict:
        return {"s": self.s, "T": self.T}

    def _angle(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def _c0(self) -> float:
        return math.cos(self.s / (1 + self.s) * math.pi / 2)

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        return 2 * (torch.log(torch.cos(self._angle(t))) - math.log(self._c0()))

    def beta(self, t: Tensor) -> Tensor:
        return math.pi / (1 + self.s) * torch.tan(self._angle(t))

    def alpha(self, t: Tensor) -> Tensor:
        # exp(½ log ᾱ) (clamped at 1 against rounding at t = 0), and exactly 0 at t = 1 (cos(π/2) rounds to 6e-17)
        alpha = torch.exp(0.5 * self._log_alpha_bar(t).clamp(max=0.0))
        return torch.where(t >= 1, torch.zeros_like(alpha), alpha)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self._log_alpha_bar(t).clamp(max=0.0)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(self._angle(t)) * (math.pi / 2 / (1 + self.s)) / self._c0()

    def half_dsigma2(self, t: Tensor) -> Tensor:
        """``½ d(1 - α²)/dt = -α α'``."""
        return -self.alpha(t) * self.d_alpha(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.half_dsigma2(t) / self.sigma(t)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        """``f = -½ β(t)``."""
        return -0.5 * self.beta(t)

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        """``ᾱ = 1/(1 + level²)``, so ``cos(angle) = c(0)/√(1 + level²)``."""
        angle = torch.acos(self._c0() / torch.sqrt(1 + level**2))
        return angle * (2 / math.pi) * (1 + self.s) - self.s

    @property
    def prior_std(self) -> float:
        return 1.0

    def discretize(self, N: int) -> DiscreteChain:
        N = integer("N", N)
        grid = torch.arange(N + 1, dtype=torch.float64) / N
        alpha_bar = torch.exp(self._log_alpha_bar(grid))
        betas = torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=0.999)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        return DiscreteChain(grid[1:], alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt(), betas)


class VESDE(GaussianPath):
    """Variance exploding: ``dx = σ(t) √(2 log(σ_max/σ_min)/T) dW`` with ``σ(t) = σ_min (σ_max/σ_min)^{t/T}``.

    ``α = 1``, ``σ = σ(t)`` (Song et al.'s convention: the data is already at noise ``σ_min`` at t = 0); prior
    ``N(0, σ_max² I)``. ``discretize(N)`` gives NCSN's geometric levels ``σ_i = σ(iT/(N-1))``, exactly
    ``exp(linspace(log σ_min, log σ_max, N))``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        self.sigma_min = positive("sigma_min", sigma_min)
        self.sigma_max = positive("sigma_max", sigma_max)
        self.T = positive("T", T)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * t / self.T)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.sigma(t) * (self._log_ratio / self.T)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        """``t = T log(level/σ_min)/log(σ_max/σ_min)``."""
        return self.T * torch.log(level / self.sigma_min) / self._log_ratio

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def discretize(self, N: int) -> DiscreteChain:
        N = integer("N", N)
        if N == 1:
            return DiscreteChain(torch.tensor([self.T], dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                                 torch.tensor([self.sigma_max], dtype=torch.float64))
        t = self.T * torch.arange(N, dtype=torch.float64) / (N - 1)
        sigmas = torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), N, dtype=torch.float64))
        return DiscreteChain(t, torch.ones(N, dtype=torch.float64), sigmas)


class EDMPath(GaussianPath):
    """EDM's process (Karras et al., 2022): ``α = 1``, ``σ = t`` on ``t ∈ [0, σ_max]``, so time is the noise level;
    ``dx = √(2t) dW``, probability flow ``dx/dt = -t s = ε̂``. Prior ``N(0, σ_max² I)``; samplers stop at
    ``σ_min`` by default (``default_eps``)."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min = positive("sigma_min", sigma_min)
        self.sigma_max = positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        self.T, self.default_eps = self.sigma_max, self.sigma_min

    def params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        return torch.as_tensor(level).clone()

    @property
    def prior_std(self) -> float:
        return self.sigma_max


class RectifiedFlow(GaussianPath):
    """Rectified flow / conditional flow matching (Liu et al., 2023; Lipman et al., 2023): ``α = 1 - τ``,
    ``σ = τ`` with SD3's time shift ``τ(t) = s t/(1 + (s - 1) t)`` (Esser et al., 2024; ``s = shift``, 1: ``τ = t``),
    on ``t ∈ [0, 1]``. The prior ``N(0, I)`` is exactly ``p_1`` (``α(1) = 0``). The velocity is
    ``u = α' x̂_0 + σ' ε̂ = τ'(t) (ε̂ - x̂_0)``, ``τ' = s/(1 + (s - 1)t)²``. The shift moves the grid's nodes
    towards the noise (``uniform`` in ``t`` to ``eps = s/(N + s - 1)`` has the noise levels of diffusers' FlowMatch
    grid with that shift); the marginals it passes through are the same for every shift, only the clock differs
    (diffusers' Euler steps in ``σ``, the time of shift 1: docs/paths.md)."""

    def __init__(self, shift: float = 1.0):
        self.shift = positive("shift", shift)
        self.T = 1.0

    def params(self) -> dict:
        return {"shift": self.shift}

    def _tau(self, t: Tensor) -> Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def _d_tau(self, t: Tensor) -> Tensor:
        return self.shift / (1 + (self.shift - 1) * t) ** 2

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - self._tau(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self._tau(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -self._d_tau(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self._d_tau(t)

    def time_at_noise_level(self, level: Tensor) -> Tensor:
        """``τ/(1 - τ) = level`` gives ``τ = level/(1 + level)`` (1 at ``inf``), and ``t = τ/(s - (s - 1)τ)``."""
        level = torch.as_tensor(level)
        tau = torch.where(torch.isinf(level), torch.ones_like(level), level / (1 + level))
        return tau / (self.shift - (self.shift - 1) * tau)

    @property
    def prior_std(self) -> float:
        return 1.0


class AlphasCumprodPath(GaussianPath):
    """The variance-preserving path through a discrete schedule ``ᾱ_0 > ᾱ_1 > … > ᾱ_{N-1}`` at times
    ``t_i = T(i+1)/N`` (diffusers' ``alphas_cumprod``: linear, scaled-linear, cosine, zero terminal SNR).
    Between the knots ``(0, 1)`` and ``(t_i, ᾱ_i)`` ``log ᾱ`` is linear in ``t`` (so ``β = -d log ᾱ/dt`` is piecewise
    constant); a last ``ᾱ = 0`` (zero terminal SNR: ``α(T) = 0``) is reached by ``α = √ᾱ`` linear on the last
    segment. ``α = √ᾱ``, ``σ = √(1 - ᾱ)``, ``α'`` piecewise, ``σσ' = -αα'``. ``discretize(N)`` at its own ``N`` is
    the schedule itself, with ``β_i = 1 - ᾱ_i/ᾱ_{i-1}``."""

    def __init__(self, alphas_cumprod, T: float = 1.0):
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().clone()
        if table.numel() < 1 or not bool(torch.isfinite(table).all()):
            raise ValueError("alphas_cumprod must be a non-empty sequence of finite values")
        if not bool((table[:-1] > 0).all()) or not bool((table <= 1).all()) or not table[-1] >= 0:
            raise ValueError("alphas_cumprod must lie in (0, 1] (the last entry may be 0: zero terminal SNR)")
        if table.numel() > 1 and not bool((table[1:] < table[:-1]).all()):
            raise ValueError("alphas_cumprod must strictly decrease")
        if table[0] == 1:
            raise ValueError("alphas_cumprod[0] must be < 1 (the first timestep adds noise)")
        self.alphas_cumprod, self.T = table, positive("T", T)
        n = table.numel()
        self.knots = self.T * torch.arange(n + 1, dtype=torch.float64) / n
        with torch.no_grad():
            self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(table)])  # -inf at a terminal 0
            self._root = torch.cat([torch.ones(1, dtype=torch.float64), table.sqrt()])
        self._digest = hashlib.sha256(table.numpy().tobytes()).hexdigest()[:16]

    def params(self) -> dict:
        return {"N": self.alphas_cumprod.numel(), "T": self.T, "sha256": self._digest}

    def __repr__(self) -> str:
        return f"GaussianPath.from_alphas_cumprod(N={self.alphas_cumprod.numel()}, T={self.T}, sha256={self._digest!r})"

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The segment ``k`` (``knots[k-1] < t <= knots[k]``, 1-based) of each ``t``, its position ``u`` in it and
        ``1 - u`` (from the segment's end, exact at the knot)."""
        tt = t.to(torch.float64)
        knots = self.knots.to(t.device)
        k = torch.searchsorted(knots, tt.contiguous()).clamp_(1, self.alphas_cumprod.numel())
        width = self.T / self.alphas_cumprod.numel()
        return k, (tt - knots[k - 1]) / width, (knots[k] - tt) / width

    def _alpha64(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``α`` and ``α'`` in float64."""
        k, u, rest = self._segment(t)
        la, root = self._log_ab.to(t.device), self._root.to(t.device)
        rate = self.alphas_cumprod.numel() / self.T
        terminal = torch.isinf(la[k])
        log_alpha = 0.5 * (la[k - 1] + u * (torch.where(terminal, la[k - 1], la[k]) - la[k - 1]))
        alpha = torch.where(terminal, root[k - 1] * rest, torch.exp(log_alpha))
        d_alpha = torch.where(terminal, -root[k - 1] * rate,
                              alpha * 0.5 * (torch.where(terminal, la[k - 1], la[k]) - la[k - 1]) * rate)
        return alpha.clamp(0, 1), d_alpha

    def alpha(self, t: Tensor) -> Tensor:
        return self._alpha64(t)[0].to(t.dtype)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - self._alpha64(t)[0] ** 2).clamp_min(0)).to(t.dtype)

    def d_alpha(self, t: Tensor) -> Tensor:
        return self._alpha64(t)[1].to(t.dtype)

    def half_dsigma2(self, t: Tensor) -> Tensor:
        alpha, d_alpha = self._alpha64(t)
        return (-alpha * d_alpha).to(t.dtype)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.half_dsigma2(t) / self.sigma(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def discretize(self, N: int) -> DiscreteChain:
        N = integer("N", N)
        if N != self.alphas_cumprod.numel():
            raise ValueError(f"this path discretises only at its own N={self.alphas_cumprod.numel()}, got N={N}")
        ab = self.alphas_cumprod
        betas = 1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return DiscreteChain(self.knots[1:].clone(), ab.sqrt(), (1 - ab).sqrt(), betas)

    def __eq__(self, other) -> bool:
        return type(other) is AlphasCumprodPath and self.T == other.T and torch.equal(self.alphas_cumprod,
                                                                                       other.alphas_cumprod)

    def __hash__(self) -> int:
        return hash(("AlphasCumprodPath", self._digest, self.T))


class FunctionPath(GaussianPath):
    """A path from callables ``α(t)``, ``σ(t)`` (tensor → tensor, differentiable), with ``α'``, ``σ'`` by autograd
    unless given. ``prior_std`` defaults to ``√(α(T)² + σ(T)²)`` (the std of ``p_T`` for data of unit variance).
    Two function paths are equal when they hold the same callables and parameters."""

    def __init__(self, alpha: Callable, sigma: Callable, T: float = 1.0, *, d_alpha: Callable | None = None,
                 d_sigma: Callable | None = None, prior_std: float | None = None, default_eps: float = 1e-3):
        for name, fn in (("alpha", alpha), ("sigma", sigma), ("d_alpha", d_alpha), ("d_sigma", d_sigma)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable as {name}(t) -> tensor, got {type(fn).__name__}")
        self._alpha, self._sigma, self._d_alpha, self._d_sigma = alpha, sigma, d_alpha, d_sigma
        self.T = positive("T", T)
        self.default_eps = real("default_eps", default_eps, 0.0, self.T, open_low=True)
        end = torch.tensor([self.T], dtype=torch.float64)
        a_T, s_T = float(self.alpha(end)), float(self.sigma(end))
        self._prior_std = positive("prior_std", math.hypot(a_T, s_T) if prior_std is None else prior_std)

    def params(self) -> dict:
        return {"alpha": self._alpha, "sigma": self._sigma, "T": self.T, "prior_std": self._prior_std}

    def __hash__(self) -> int:
        return hash((id(self._alpha), id(self._sigma), self.T))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.as_tensor(self._alpha(t), dtype=t.dtype)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.as_tensor(self._sigma(t), dtype=t.dtype)

    @staticmethod
    def _derivative(fn: Callable, t: Tensor) -> Tensor:
        with torch.enable_grad():
            tt = t.detach().to(torch.float64).requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(tt).sum(), tt)
        return grad.to(t.dtype)

    def d_alpha(self, t: Tensor) -> Tensor:
        return self._d_alpha(t) if self._d_alpha is not None else self._derivative(self._alpha, t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self._d_sigma(t) if self._d_sigma is not None else self._derivative(self._sigma, t)

    @property
    def prior_std(self) -> float:
        return self._prior_std
