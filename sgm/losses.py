"""One denoising loss for every model kind: denoising score matching (Vincent, 2011; Song et al., 2021) and
conditional flow matching (Lipman et al., 2023; Liu et al., 2023) are the same regression.

For ``x_t = α x_0 + σ ε`` a model predicting ``kind`` (``sgm.predictions``: score, ε, x̂_0, v, velocity) regresses
the conditional target ``m* = p·x_0 + q·ε`` of its kind (``-ε/σ``, ``ε``, ``x_0``, ``αε - σx_0``, ``α'x_0 + σ'ε``):

    L(θ) = E_{t, x_0, ε} w(t) ‖m_θ(x_t, t) - m*‖²        (mean over the data dimensions)

which the true conditional expectation ``E[m* | x_t]`` minimises. Every kind is ``a·x + b·s`` in the score ``s`` at
fixed ``(x, t)`` (``b = score_coefficient``), so ``‖m - m*‖² = b² ‖s - s*‖²``: the loss of any kind with weight ``w``
is DSM with ``λ = w·b²``. Weightings are stated as that DSM ``λ(t)`` (``w = λ/b²``), so one weighting means the same
loss for every kind:

- ``"std2"``: ``λ = σ²``: ``‖ε̂ - ε‖²`` for an ε-network (DDPM's ``L_simple``);
- ``"likelihood"``: ``λ = g(t)²`` (Song et al., 2021b: the loss bounds the negative log-likelihood);
- ``"edm"``: ``λ = σ²(σ̃² + σ_d²)/σ_d²``, ``σ̃ = σ/α``: Karras et al.'s ``λ(σ̃)‖D - x_0‖²`` with
  ``λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)²``; for ``ScoreModel(..., "edm")`` the loss is ``‖F - F_target‖²``, of unit scale;
- ``"native"``: ``w = 1``, the plain regression of the model's own prediction (``λ = b²``): ``L_simple`` for ε, the
  conditional flow-matching loss ``‖û - (α'x_0 + σ'ε)‖²`` for a velocity model (``b = -½g²``, so ``λ = g⁴/4``; on
  rectified flow ``‖û - (ε - x_0)‖²`` is DSM with ``λ = t²/(1 - t)²``);
- ``"min_snr"``: Hang et al.'s (2023) Min-SNR-γ, weight ``min(SNR, γ)`` on ``‖x̂_0 - x_0‖²`` with ``SNR = α²/σ²``
  (``b = σ²/α`` for x̂_0): ``λ = σ² min(1, γσ²/α²)``; for an ε-network ``min(SNR, γ)/SNR``, for v on VP
  ``min(SNR, γ)/(SNR + 1)``, as the paper writes them;
- ``"soft_min_snr"``: Crowson et al.'s (2024, HDiT) soft minimum ``1/(1/SNR + 1/γ)`` in place of ``min(SNR, γ)``:
  ``λ = γσ⁴/(α² + γσ²)`` (k-diffusion's ``(σ̃σ_d)²/(σ̃² + σ_d²)²`` on the EDM network's output is ``γ = 1/σ_d²``);
- ``"edm2"``: EDM's weighting with EDM2's learned uncertainty (Karras et al., 2024): a per-sample loss ``L`` becomes
  ``L/e^u + u`` with ``u = log_variance`` (``LogVariance``, a learned function of the noise level, trained with
  the network), which equalises the loss's scale over noise levels;
- any callable ``λ(t) -> (batch,)``.

Times (``time_distribution``): ``"uniform"`` ``t ~ U(eps, T)``; ``"logit_normal"`` (SD3: ``t = eps + (T - eps)·
sigmoid(m + s n)``, ``LogitNormal(mean, std)``); ``"log_normal"`` (EDM: ``ln σ̃ ~ N(P_mean, P_std²)``, ``t`` the time
at that noise level, ``LogNormal(p_mean, p_std)``); or, given a ``chain`` (``path.discretize(N)``), a uniform
timestep ``i`` with the chain's own ``(scale_i, std_i)``. ``coupling="ot"`` pairs the batch's data and noise by the
exact minibatch optimal-transport assignment (``scipy.optimize.linear_sum_assignment`` on ``‖x_0^i - ε^j‖²``;
OT-CFM, Tong et al., 2024; Pooladian et al., 2023).

The discrete losses are special cases:

- DDPM's ``L_simple = E_i ‖ε_θ(√ᾱ_i x_0 + √(1-ᾱ_i) z, i) - z‖²``: ``ddpm_loss`` (VP chain, λ = std²);
- NCSN's ``Σ_i σ_i² · ½ E‖s_θ(x_0 + σ_i z, σ_i) + z/σ_i‖²`` (averaged over levels): ``ncsn_loss`` (VE chain, λ = σ²/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .checks import choice, positive, real
from .paths import VESDE, VPSDE, DiscreteChain, GaussianPath, batch_view
from .predictions import predicts, score_coefficient, target
from .score import ScoreModel, edm_noise_input

__all__ = ["denoising_loss", "ddpm_loss", "ncsn_loss", "WEIGHTINGS", "TIME_DISTRIBUTIONS", "COUPLINGS", "Uniform",
           "LogitNormal", "LogNormal", "sample_times", "ot_coupling", "dsm_weight", "LogVariance", "MIN_SNR_GAMMA"]

WEIGHTINGS = ("std2", "likelihood", "edm", "native", "min_snr", "soft_min_snr", "edm2")
COUPLINGS = ("independent", "ot")
MIN_SNR_GAMMA = 5.0  # Hang et al.'s γ


@dataclass(frozen=True)
class Uniform:
    """``t ~ U(eps, T)``."""

    def sample(self, sde: GaussianPath, n: int, eps: float, generator, device, dtype) -> Tensor:
        return eps + (sde.T - eps) * torch.rand(n, generator=generator, device=device, dtype=dtype)


@dataclass(frozen=True)
class LogitNormal:
    """SD3's logit-normal times (Esser et al., 2024): ``t = eps + (T - eps)·sigmoid(mean + std·n)``, ``n ~ N(0, 1)``."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        real("mean", self.mean)
        positive("std", self.std)

    def sample(self, sde: GaussianPath, n: int, eps: float, generator, device, dtype) -> Tensor:
        u = torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, device=device, dtype=dtype))
        return eps + (sde.T - eps) * u


@dataclass(frozen=True)
class LogNormal:
    """EDM's training noise levels (Karras et al., 2022): ``ln σ̃ ~ N(p_mean, p_std²)``, ``t`` the path's time at
    noise level ``σ̃ = σ/α`` (clamped to ``[eps, T]``)."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        real("p_mean", self.p_mean)
        positive("p_std", self.p_std)

    def sample(self, sde: GaussianPath, n: int, eps: float, generator, device, dtype) -> Tensor:
        level = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, device=device, dtype=dtype))
        return sde.time_at_noise_level(level).clamp(eps, sde.T).to(dtype)  # on the device: no wait for it


TIME_DISTRIBUTIONS = {"uniform": Uniform(), "logit_normal": LogitNormal(), "log_normal": LogNormal()}


def _time_distribution(value):
    if isinstance(value, str):
        return TIME_DISTRIBUTIONS[choice("time_distribution", value, tuple(TIME_DISTRIBUTIONS))]
    if not hasattr(value, "sample"):
        raise TypeError(f"time_distribution must be one of {tuple(TIME_DISTRIBUTIONS)} or an object with "
                        f"sample(sde, n, eps, generator, device, dtype), got {type(value).__name__}")
    return value


def sample_times(sde: GaussianPath, n: int, eps: float = 1e-5, chain: DiscreteChain | None = None,
                 generator: torch.Generator | None = None, device=None, dtype=torch.float32,
                 time_distribution="uniform") -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``t`` for a batch of ``n`` and return ``(t, scale, std)``: from ``time_distribution`` on ``(eps, T)``, or
    a uniform chain timestep."""
    if chain is None:
        eps = positive("eps", eps)
        if eps >= sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        t = _time_distribution(time_distribution).sample(sde, n, eps, generator, device, dtype)
        scale, std = sde.marginal(t)
        return t, scale, std
    i = torch.randint(len(chain), (n,), generator=generator, device=device)
    return tuple(v.to(dtype).to(device)[i] for v in (chain.t, chain.scale, chain.std))  # cast first: no float64 there


def ot_coupling(x0: Tensor, noise: Tensor) -> Tensor:
    """The noise reordered to the exact minibatch optimal-transport pairing with ``x0``: the permutation ``π``
    minimising ``Σ_i ‖x0_i - noise_π(i)‖²`` (``linear_sum_assignment``)."""
    cost = torch.cdist(x0.detach().flatten(1).double().cpu(), noise.detach().flatten(1).double().cpu()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    order = np.empty_like(cols)
    order[rows] = cols
    return noise[torch.as_tensor(order, device=noise.device)]


def dsm_weight(weighting, sde: GaussianPath, t: Tensor, scale: Tensor, std: Tensor,
               sigma_data: float = 0.5, snr_gamma: float = MIN_SNR_GAMMA) -> Tensor:
    """The DSM weight ``λ(t)`` on ``‖s - s*‖²`` of a named weighting (``native`` has none: it is per kind)."""
    if weighting == "std2":
        return std**2
    if weighting in ("edm", "edm2"):
        return std**2 * ((std / scale) ** 2 + sigma_data**2) / sigma_data**2
    if weighting == "likelihood":
        return sde.diffusion_squared(t)
    if weighting == "min_snr":  # σ² min(1, γσ²/α²): σ² where α = 0
        return std**2 * torch.clamp(snr_gamma * std**2 / scale**2, max=1.0)
    if weighting == "soft_min_snr":
        return snr_gamma * std**4 / (scale**2 + snr_gamma * std**2)
    return torch.as_tensor(weighting(t)).to(std)


class LogVariance(nn.Module):
    """EDM2's learned uncertainty ``u(σ̃)``: a linear map (zero at the start) of ``channels`` fixed random Fourier
    features ``√2 cos(2π(f_k c + φ_k))`` of EDM's ``c = ¼ ln σ̃`` (``f_k ~ N(0, 1)``, ``φ_k ~ U(0, 1)`` drawn from
    ``generator``). ``module(scale, std)`` gives ``u`` per sample."""

    def __init__(self, channels: int = 128, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=generator))
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, scale: Tensor, std: Tensor) -> Tensor:
        c = edm_noise_input(scale, std).to(self.freqs.dtype)
        features = math.sqrt(2) * torch.cos(c[:, None] * self.freqs + self.phases)
        return self.linear(features)[:, 0]


def denoising_loss(model: Callable[[Tensor, Tensor], Tensor], sde: GaussianPath, x0: Tensor, *,
                   t: Tensor | None = None, noise: Tensor | None = None, weighting="std2", eps: float = 1e-5,
                   chain: DiscreteChain | None = None, generator: torch.Generator | None = None, reduce: bool = True,
                   sigma_data: float = 0.5, time_distribution="uniform", coupling: str = "independent",
                   snr_gamma: float = MIN_SNR_GAMMA, log_variance=None) -> Tensor:
    """The denoising loss of ``model(x, t)`` (a score function, or any model declaring what it ``predicts``) on data
    ``x0``, averaged over the batch (per sample if ``reduce=False``); ``sigma_data`` is the ``σ_d`` of ``"edm"``,
    ``snr_gamma`` the ``γ`` of ``"min_snr"`` and ``"soft_min_snr"``, ``log_variance`` the ``LogVariance`` module
    (or a per-sample tensor ``u``) that ``"edm2"`` needs.

    ``t`` and ``noise`` default to draws from ``generator`` (times first, then one ``randn``); with a given
    ``t`` and a ``chain``, each ``t`` must be one of the chain's times and takes its ``(scale, std)``.
    """
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        raise TypeError(f"x0 must be a floating tensor of shape (batch, ...), got {type(x0).__name__} "
                        f"{tuple(getattr(x0, 'shape', ()))}")
    if not (callable(weighting) or weighting in WEIGHTINGS):
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable λ(t), got {weighting!r}")
    choice("coupling", coupling, COUPLINGS)
    positive("snr_gamma", snr_gamma)
    if (weighting == "edm2") != (log_variance is not None):
        raise ValueError("weighting 'edm2' needs log_variance (a LogVariance module or a per-sample tensor), and only "
                         f"it takes one; got weighting={weighting!r} with log_variance "
                         f"{'given' if log_variance is not None else 'None'}")
    kind = predicts(model)
    n = x0.shape[0]
    if t is None:
        t, scale, std = sample_times(sde, n, eps, chain, generator, x0.device, x0.dtype, time_distribution)
    else:
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(n)
        if chain is None:
            scale, std = sde.marginal(t)
        else:
            i = chain.index(t)
            scale, std = (v.to(x0.dtype).to(x0.device)[i] for v in (chain.scale, chain.std))
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    if coupling == "ot":
        noise = ot_coupling(x0, noise)
    a, s = batch_view(scale, x0), batch_view(std, x0)
    d_a, d_s = (batch_view(f(t).to(x0.dtype), x0) for f in (sde.d_alpha, sde.d_sigma)) if kind == "velocity" \
        else (None, None)
    xt = a * x0 + s * noise
    out = model(xt, t)
    if not isinstance(out, Tensor) or out.shape != x0.shape:
        raise ValueError(f"model must return a tensor shaped like x0 {tuple(x0.shape)}, got "
                         f"{tuple(getattr(out, 'shape', ()))}")
    residual = (out - target(kind, x0, noise, a, s, d_a, d_s)).flatten(1).pow(2).mean(1)
    if weighting == "native":
        per_sample = residual
    else:  # check=False: where the kind is undefined (α = 0 for x̂_0) its weight is λ/∞² = 0, read from no device
        b = score_coefficient(kind, scale, std, None if d_a is None else d_a.flatten(), None if d_s is None
                              else d_s.flatten(), check=False)
        lam = dsm_weight(weighting, sde, t, scale, std, sigma_data, snr_gamma)
        per_sample = lam / torch.as_tensor(b, dtype=residual.dtype, device=residual.device) ** 2 * residual
    if log_variance is not None:
        u = log_variance(scale, std) if isinstance(log_variance, nn.Module) else torch.as_tensor(log_variance)
        u = u.to(per_sample).expand(n)
        per_sample = per_sample * torch.exp(-u) + u
    return per_sample.mean() if reduce else per_sample


def ddpm_loss(eps_model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, chain: DiscreteChain,
              generator: torch.Generator | None = None) -> Tensor:
    """Ho et al.'s ``L_simple`` for an ε-network of integer timesteps on a VP chain (``VPSDE().discretize(N)``):
    ``denoising_loss`` of ``ScoreModel(eps_model, sde, "eps", chain)`` with ``λ = std²``."""
    if chain.betas is None:
        raise ValueError("chain must be a VP-type chain (sde.discretize(N) of a VPSDE)")
    sde = VPSDE()
    return denoising_loss(ScoreModel(eps_model, sde, "eps", chain), sde, x0, chain=chain, generator=generator)


def ncsn_loss(score_model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, chain: DiscreteChain,
              generator: torch.Generator | None = None) -> Tensor:
    """Song & Ermon's σ²-weighted loss ``½ σ_i² ‖s_θ(x̃, i) + z/σ_i‖²`` on a VE chain (``VESDE().discretize(L)``),
    for a score network of integer level indices: ``denoising_loss`` with ``λ = σ²/2``."""
    if chain.betas is not None:
        raise ValueError("chain must be a VE chain (sde.discretize(L) of a VESDE)")
    sde = VESDE()
    return 0.5 * denoising_loss(ScoreModel(score_model, sde, "score", chain), sde, x0, chain=chain,
                                generator=generator)
