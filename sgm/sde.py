"""Forward processes ``dx = f(x, t) dt + g(t) dW`` on ``t ∈ [0, T]`` (Song et al., 2021).

Every SDE here is linear in ``x``, so its marginal given the data is Gaussian,

    x_t = scale(t) · x_0 + std(t) · z,   z ~ N(0, I),

and it has a discrete chain (``discretize``) whose steps are the classical discrete models:
DDPM's betas for VP, NCSN's geometric noise levels for VE.

Reverse time (Anderson, 1982) and the probability-flow ODE, for a score ``s ≈ ∇ log p_t``:

    dx = [f(x, t) - g(t)² s(x, t)] dt + g(t) dW̄      (reverse_drift)
    dx/dt = f(x, t) - ½ g(t)² s(x, t)                  (ode_drift)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteChain", "batch_view"]


def batch_view(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor ``v`` of shape ``(batch,)`` to broadcast against ``x``."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)) or (
        isinstance(value, Tensor) and value.numel() != 1
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _positive(name: str, value) -> float:
    value = _real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_steps(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {n!r}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


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
        times = self.t.to(device=t.device, dtype=torch.float64)  # ascending
        t = t.to(torch.float64)
        hi = torch.searchsorted(times, t.contiguous()).clamp_(min(1, len(self) - 1), len(self) - 1)
        lo = (hi - 1).clamp_(min=0)
        return torch.where(t - times[lo] <= times[hi] - t, lo, hi)  # a tie goes to the lower timestep


class SDE:
    """A forward SDE with Gaussian marginals. Subclasses give the coefficients; ``t`` is a tensor."""

    T: float

    # --- coefficients (subclasses) -------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(x, t)``, a new tensor shaped like ``x`` (callers may update it in place); ``t`` has shape ``(batch,)``."""
        raise NotImplementedError

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)``, shaped like ``t``."""
        raise NotImplementedError

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(scale(t), std(t))`` with ``x_t | x_0 ~ N(scale·x_0, std²·I)``, each shaped like ``t``."""
        raise NotImplementedError

    def discretize(self, N: int) -> DiscreteChain:
        """The ``N``-step discrete chain of this SDE."""
        raise NotImplementedError

    def time_at_noise_level(self, sigma: Tensor) -> Tensor:
        """The time ``t`` at which ``noise_level(t) = sigma`` (the inverse of ``noise_level``)."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std² I)`` that approximates ``p_T``."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def noise_level(self, t: Tensor) -> Tensor:
        """``σ(t) = std(t)/scale(t)``: ``x_t/scale = x_0 + σ z`` is the VE process of the same data (Karras et al., 2022)."""
        scale, std = self.marginal(t)
        return std / scale

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t = scale(t)·x_0 + std(t)·z``; ``noise`` is ``z`` when given."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        scale, std = self.marginal(t)
        return batch_view(scale, x0) * x0 + batch_view(std, x0) * noise

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std² I)`` of the given shape (one ``randn`` call)."""
        return self.prior_std * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def prior_logp(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std² I)`` per sample: ``-D/2·log(2π prior_std²) - ‖x‖²/(2 prior_std²)``."""
        d = x[0].numel()
        var = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * var) - x.flatten(1).pow(2).sum(1) / (2 * var)

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE, ``f(x, t) - g(t)² s``, for the score value ``s`` at ``(x, t)``."""
        return self.drift(x, t).addcmul_(batch_view(self.diffusion(t) ** 2, x), score, value=-1)

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE, ``f(x, t) - ½ g(t)² s``, for the score value ``s``."""
        return self.drift(x, t).addcmul_(batch_view(self.diffusion(t) ** 2, x), score, value=-0.5)

    def _chain_times(self, N: int) -> Tensor:
        return self.T * torch.arange(1, N + 1, dtype=torch.float64) / N


class _LinearBeta(SDE):
    """``β(t) = β_min + (t/T)(β_max - β_min)`` and its integral ``B(t) = β_min t + (β_max - β_min) t²/(2T)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        self.T = _positive("T", T)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={self.beta_min}, beta_max={self.beta_max}")

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

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(x, t) = -½ β(t) x``."""
        return -0.5 * batch_view(self.beta(t), x) * x

    @property
    def prior_std(self) -> float:
        return 1.0

    def _chain_betas(self, N: int) -> Tensor:
        """``β_i = β(τ_i)·T/N`` at ``τ_i = iT/(N-1)``: ``linspace(β_min T/N, β_max T/N, N)``."""
        return torch.linspace(self.beta_min * self.T / N, self.beta_max * self.T / N, N, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"


class VPSDE(_LinearBeta):
    """Variance preserving: ``dx = -½β(t) x dt + √β(t) dW``.

    Marginal: ``scale = exp(-½B(t))``, ``std = √(1 - exp(-B(t)))``; prior ``N(0, I)``.
    ``discretize(N)`` is DDPM's chain: ``β_i = linspace(β_min/N, β_max/N, N)`` (T = 1), so the defaults
    with ``N = 1000`` give Ho et al.'s ``linspace(1e-4, 0.02, 1000)``, ``ᾱ_i = ∏_{j≤i}(1-β_j)``.
    """

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.beta_integral(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def time_at_noise_level(self, sigma: Tensor) -> Tensor:
        """``σ² = e^{B(t)} - 1``, so ``B = log(1 + σ²)``."""
        return self.time_of_beta_integral(torch.log1p(sigma**2))

    def discretize(self, N: int) -> DiscreteChain:
        N = _check_steps("N", N)
        betas = self._chain_betas(N)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        return DiscreteChain(self._chain_times(N), alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt(), betas)


class SubVPSDE(_LinearBeta):
    """Sub-VP: ``dx = -½β(t) x dt + √(β(t)(1 - e^{-2B(t)})) dW``.

    Marginal: ``scale = exp(-½B(t))``, ``std = 1 - exp(-B(t))`` (below VP's at every t); prior ``N(0, I)``.
    ``discretize(N)`` keeps DDPM's betas and ``scale_i = √ᾱ_i`` with the sub-VP std ``1 - ᾱ_i``.
    """

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.beta_integral(t)))

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.beta_integral(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def time_at_noise_level(self, sigma: Tensor) -> Tensor:
        """``σ = (1 - e^{-B})/e^{-B/2} = 2 sinh(B/2)``, so ``B = 2 asinh(σ/2)``."""
        return self.time_of_beta_integral(2 * torch.asinh(sigma / 2))

    def discretize(self, N: int) -> DiscreteChain:
        N = _check_steps("N", N)
        betas = self._chain_betas(N)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        return DiscreteChain(self._chain_times(N), alphas_cumprod.sqrt(), 1 - alphas_cumprod, betas)


class CosineVPSDE(SDE):
    """Variance preserving with the cosine schedule (Nichol & Dhariwal, 2021): ``ᾱ(t) = f(t)/f(0)``,
    ``f(t) = cos²(π/2 · (t + s)/(1 + s))`` on the unit schedule ``t ∈ [0, 1]``, so

        scale = √ᾱ(t),  std = √(1 - ᾱ(t)),  β(t) = -d log ᾱ/dt = π/(1 + s) · tan(π/2 · (t + s)/(1 + s)),

    ``dx = -½β(t) x dt + √β(t) dW``; prior ``N(0, I)``. ``ᾱ(1) = 0`` and ``β`` blows up at ``t = 1``, so the
    process stops at ``T = 0.9946`` (DPM-Solver's choice, where ``β ≈ 1.2e3`` and ``std = 1 - 1.3e-5``).
    ``discretize(N)`` is improved DDPM's chain (diffusers' ``squaredcos_cap_v2``): ``β_i = min(1 - ᾱ((i+1)/N)/ᾱ(i/N),
    0.999)``, ``ᾱ_i = ∏_{j≤i}(1 - β_j)`` at times ``(i+1)/N`` (the last clipped steps lie past ``T``).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        self.s = _positive("s", s)
        self.T = _positive("T", T)
        if self.T >= 1:
            raise ValueError(f"T must be < 1 (ᾱ(1) = 0), got {self.T}")

    def _angle(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        return 2 * (torch.log(torch.cos(self._angle(t))) - math.log(math.cos(self.s / (1 + self.s) * math.pi / 2)))

    def beta(self, t: Tensor) -> Tensor:
        return math.pi / (1 + self.s) * torch.tan(self._angle(t))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(x, t) = -½ β(t) x``."""
        return -0.5 * batch_view(self.beta(t), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_ab = self._log_alpha_bar(t).clamp(max=0.0)  # 0 at t = 0, up to rounding
        return torch.exp(0.5 * log_ab), torch.sqrt(-torch.expm1(log_ab))

    def time_at_noise_level(self, sigma: Tensor) -> Tensor:
        """``ᾱ = 1/(1 + σ²)``, so ``cos(angle) = cos(angle(0))/√(1 + σ²)``."""
        c0 = math.cos(self.s / (1 + self.s) * math.pi / 2)
        angle = torch.acos(c0 / torch.sqrt(1 + sigma**2))
        return angle * (2 / math.pi) * (1 + self.s) - self.s

    @property
    def prior_std(self) -> float:
        return 1.0

    def discretize(self, N: int) -> DiscreteChain:
        N = _check_steps("N", N)
        grid = torch.arange(N + 1, dtype=torch.float64) / N
        alpha_bar = torch.exp(self._log_alpha_bar(grid))
        betas = torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=0.999)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        return DiscreteChain(grid[1:], alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt(), betas)

    def __repr__(self) -> str:
        return f"CosineVPSDE(s={self.s}, T={self.T})"


class VESDE(SDE):
    """Variance exploding: ``dx = σ(t) √(2 log(σ_max/σ_min)/T) dW`` with ``σ(t) = σ_min (σ_max/σ_min)^{t/T}``.

    Marginal (Song et al.'s convention, data already at noise ``σ_min`` at t = 0): ``scale = 1``,
    ``std = σ(t)``; prior ``N(0, σ_max² I)``. ``discretize(N)`` gives NCSN's geometric levels
    ``σ_i = σ(iT/(N-1))``, exactly ``exp(linspace(log σ_min, log σ_max, N))``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        self.T = _positive("T", T)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * t / self.T)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def time_at_noise_level(self, sigma: Tensor) -> Tensor:
        """``t = T log(σ/σ_min)/log(σ_max/σ_min)``."""
        return self.T * torch.log(sigma / self.sigma_min) / self._log_ratio

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def discretize(self, N: int) -> DiscreteChain:
        N = _check_steps("N", N)
        if N == 1:
            return DiscreteChain(torch.tensor([self.T], dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                                 torch.tensor([self.sigma_max], dtype=torch.float64))
        t = self.T * torch.arange(N, dtype=torch.float64) / (N - 1)
        sigmas = torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), N, dtype=torch.float64))
        return DiscreteChain(t, torch.ones(N, dtype=torch.float64), sigmas)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T})"
