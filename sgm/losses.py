"""Denoising score matching (Vincent, 2011; Song et al., 2021).

For ``x_t = scale·x_0 + std·z`` the conditional score is ``∇ log p(x_t | x_0) = -z/std``, and

    L(θ) = E_{t, x_0, z} λ(t) ‖s_θ(x_t, t) + z/std(t)‖²        (mean over the data dimensions)

is minimised by the true score: ``L(θ) = E λ‖s_θ - ∇ log p_t‖² + C`` with ``C`` free of θ.
Written as ``λ/std² · ‖std·s_θ + z‖²`` so that no ``z/std`` is formed at small ``std``. Weightings:

- ``"std2"`` (default): ``λ = std²``, i.e. ``‖std·s_θ + z‖² = ‖ε̂ - z‖²`` for an ε-network;
- ``"likelihood"``: ``λ = g(t)²`` (Song et al., 2021b: the loss bounds the negative log-likelihood);
- ``"edm"``: Karras et al.'s ``λ(σ̃)‖D - x_0‖²`` with ``λ = (σ̃² + σ_d²)/(σ̃ σ_d)²``, ``σ̃ = std/scale``: since
  ``std·s + z = (D - x_0)/σ̃`` for ``s = (scale·D - x)/std²``, the weight on ``‖std·s + z‖²`` is
  ``(σ̃² + σ_d²)/σ_d²``; for ``ScoreModel(..., "edm")`` the loss is ``‖F - F_target‖²``, of unit scale at every σ̃;
- any callable ``λ(t) -> (batch,)``.

Times: ``t ~ U(eps, T)``; or, given a ``chain`` (``sde.discretize(N)``), a uniform timestep ``i`` with the
chain's own ``(scale_i, std_i)``. The discrete losses are then special cases:

- DDPM's ``L_simple = E_i ‖ε_θ(√ᾱ_i x_0 + √(1-ᾱ_i) z, i) - z‖²``: ``ddpm_loss`` (VP chain, λ = std²);
- NCSN's ``Σ_i σ_i² · ½ E‖s_θ(x_0 + σ_i z, σ_i) + z/σ_i‖²`` (averaged over levels): ``ncsn_loss`` (VE chain, λ = σ²/2).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .score import ScoreModel
from .sde import SDE, VESDE, DiscreteChain, VPSDE, _positive, batch_view

__all__ = ["dsm_loss", "ddpm_loss", "ncsn_loss", "WEIGHTINGS", "sample_times"]

WEIGHTINGS = ("std2", "likelihood", "edm")


def sample_times(sde: SDE, n: int, eps: float = 1e-5, chain: DiscreteChain | None = None,
                 generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``t`` for a batch of ``n`` and return ``(t, scale, std)``: ``t ~ U(eps, T)``, or a uniform chain timestep."""
    if chain is None:
        eps = _positive("eps", eps)
        if eps >= sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        t = eps + (sde.T - eps) * torch.rand(n, generator=generator, device=device, dtype=dtype)
        scale, std = sde.marginal(t)
        return t, scale, std
    i = torch.randint(len(chain), (n,), generator=generator, device=device)
    return (chain.t.to(device)[i].to(dtype), chain.scale.to(device)[i].to(dtype), chain.std.to(device)[i].to(dtype))


def dsm_loss(score: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, *, t: Tensor | None = None,
             noise: Tensor | None = None, weighting="std2", eps: float = 1e-5, chain: DiscreteChain | None = None,
             generator: torch.Generator | None = None, reduce: bool = True, sigma_data: float = 0.5) -> Tensor:
    """The DSM loss of ``score(x, t)`` on data ``x0``, averaged over the batch (per sample if ``reduce=False``);
    ``sigma_data`` is the ``σ_d`` of the ``"edm"`` weighting.

    ``t`` and ``noise`` default to draws from ``generator`` (times first, then one ``randn``); with a given
    ``t`` and a ``chain``, each ``t`` must be one of the chain's times and takes its ``(scale, std)``.
    """
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        raise TypeError(f"x0 must be a floating tensor of shape (batch, ...), got {type(x0).__name__} "
                        f"{tuple(getattr(x0, 'shape', ()))}")
    if not (callable(weighting) or weighting in WEIGHTINGS):
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable λ(t), got {weighting!r}")
    n = x0.shape[0]
    if t is None:
        t, scale, std = sample_times(sde, n, eps, chain, generator, x0.device, x0.dtype)
    else:
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(n)
        if chain is None:
            scale, std = sde.marginal(t)
        else:
            i = chain.index(t)
            scale, std = chain.scale.to(x0.device)[i].to(x0.dtype), chain.std.to(x0.device)[i].to(x0.dtype)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    xt = batch_view(scale, x0) * x0 + batch_view(std, x0) * noise
    s = score(xt, t)
    if not isinstance(s, Tensor) or s.shape != x0.shape:
        raise ValueError(f"score must return a tensor shaped like x0 {tuple(x0.shape)}, got "
                         f"{tuple(getattr(s, 'shape', ()))}")
    residual = (batch_view(std, s) * s + noise).flatten(1).pow(2).mean(1)
    if weighting == "std2":
        per_sample = residual
    elif weighting == "edm":
        per_sample = ((std / scale) ** 2 + sigma_data**2) / sigma_data**2 * residual
    else:
        lam = sde.diffusion(t) ** 2 if weighting == "likelihood" else torch.as_tensor(weighting(t)).to(residual)
        per_sample = lam / std**2 * residual
    return per_sample.mean() if reduce else per_sample


def ddpm_loss(eps_model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, chain: DiscreteChain,
              generator: torch.Generator | None = None) -> Tensor:
    """Ho et al.'s ``L_simple`` for an ε-network of integer timesteps on a VP chain (``VPSDE().discretize(N)``):
    ``dsm_loss`` of ``ScoreModel(eps_model, sde, "eps", chain)`` with ``λ = std²``."""
    if chain.betas is None:
        raise ValueError("chain must be a VP-type chain (sde.discretize(N) of a VPSDE)")
    sde = VPSDE()
    return dsm_loss(ScoreModel(eps_model, sde, "eps", chain), sde, x0, chain=chain, generator=generator)


def ncsn_loss(score_model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, chain: DiscreteChain,
              generator: torch.Generator | None = None) -> Tensor:
    """Song & Ermon's σ²-weighted loss ``½ σ_i² ‖s_θ(x̃, i) + z/σ_i‖²`` on a VE chain (``VESDE().discretize(L)``),
    for a score network of integer level indices: ``dsm_loss`` with ``λ = σ²/2``."""
    if chain.betas is not None:
        raise ValueError("chain must be a VE chain (sde.discretize(L) of a VESDE)")
    sde = VESDE()
    return 0.5 * dsm_loss(ScoreModel(score_model, sde, "score", chain), sde, x0, chain=chain, generator=generator)
