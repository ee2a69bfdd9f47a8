"""Gaussian mixtures: data distributions whose perturbed density and score are exact at every t.

For ``p_0 = Σ_k w_k N(μ_k, diag(σ_k²))`` and an SDE with marginal ``x_t = scale·x_0 + std·z``,

    p_t(x) = Σ_k w_k N(x; scale·μ_k, diag(scale²σ_k² + std²)),
    ∇ log p_t(x) = Σ_k r_k(x) (scale·μ_k - x) / (scale²σ_k² + std²),   r_k = w_k N_k(x) / p_t(x).

Samples may have any shape ``(batch, *event)`` with ``prod(event) = dim``; they are flattened inside.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .sde import SDE, DiscreteChain

__all__ = ["GaussianMixture", "ring_mixture", "random_mixture"]


class GaussianMixture:
    """``Σ_k w_k N(μ_k, diag(σ_k²))`` with ``means (K, D)``, ``stds (K,)`` isotropic or ``(K, D)``, ``weights (K,)``."""

    def __init__(self, means, stds, weights=None, dtype: torch.dtype | None = None, device=None):
        means = torch.as_tensor(means, dtype=dtype, device=device)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must have shape (components, dim), got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        if stds.dim() == 0:
            stds = stds.expand(k)
        if stds.shape == (k,):
            stds = stds[:, None].expand(k, d)
        if stds.shape != (k, d):
            raise ValueError(f"stds must have shape ({k},) or ({k}, {d}), got {tuple(stds.shape)}")
        if not bool((stds > 0).all()):
            raise ValueError("stds must all be > 0")
        weights = torch.full((k,), 1.0 / k) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}")
        if not bool((weights > 0).all()) or abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {weights.tolist()}")
        self.means, self.stds, self.weights = means, stds.contiguous(), weights

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def to(self, dtype: torch.dtype | None = None, device=None) -> "GaussianMixture":
        return GaussianMixture(self.means.to(dtype=dtype, device=device), self.stds.to(dtype=dtype, device=device),
                               self.weights.to(dtype=dtype, device=device))

    def sample(self, n: int, generator: torch.Generator | None = None, return_components: bool = False):
        """Draw ``n`` samples ``(n, D)``: components by ``multinomial`` first, then one ``randn``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=self.means.dtype, device=self.means.device)
        x = self.means[comp] + self.stds[comp] * z
        return (x, comp) if return_components else x

    # --- the perturbed mixture p_t ------------------------------------------------------------
    def _perturbed(self, x: Tensor, t: Tensor | None, sde: SDE | None, scale_std: tuple | None = None):
        """Flattened ``x (B, D)`` and the components of ``p_t``: means and variances ``(B|1, K, D)``.
        ``p_t`` is given by ``t`` and ``sde``, or directly by per-sample or scalar ``(scale, std)``. A batch at
        one time (a scalar ``t``, or one expanded to the batch as the samplers pass it) keeps a single
        ``(1, K, D)`` set of components."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} features per sample, got shape {tuple(x.shape)}")
        means, var = self.means.to(x.dtype)[None], (self.stds.to(x.dtype) ** 2)[None]
        if t is not None:
            if sde is None:
                raise ValueError("sde must be given with t")
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            shared = t.numel() == 1 or (t.dim() == 1 and t.stride(0) == 0)
            scale_std = sde.marginal(t.reshape(-1)[:1] if shared else t.expand(x.shape[0]))
        if scale_std is not None:
            scale, std = (torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1, 1, 1) for v in scale_std)
            means, var = scale * means, scale**2 * var + std**2
        return flat, means, var

    def _components(self, flat: Tensor, means: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``log w_k + log N(x; m_k, diag v_k)`` as ``(B, K)``, with the precisions ``1/v_k`` and ``m_k/v_k``.

        The quadratic form is expanded, ``Σ_d (x_d - m_kd)²/v_kd = x²·(1/v_k) - 2 x·(m_k/v_k) + m_k·(m_k/v_k)``,
        so that it is two matrix products instead of reductions over a short feature axis.
        """
        prec = var.reciprocal()
        mean_prec = means * prec
        quad = _contract_features(flat**2, prec) - 2 * _contract_features(flat, mean_prec) \
            + (means * mean_prec).sum(-1)
        log_n = -0.5 * (quad + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        return torch.log(self.weights.to(flat.dtype)) + log_n, prec, mean_prec

    def log_prob(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """``log p_t(x)`` per sample (``log p_0`` when ``t`` is None)."""
        return torch.logsumexp(self._components(*self._perturbed(x, t, sde))[0], dim=1)

    def responsibilities(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """Posterior component probabilities ``r_k(x)`` under ``p_t``, ``(B, K)``."""
        return torch.softmax(self._components(*self._perturbed(x, t, sde))[0], dim=1)

    def score(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """The exact ``∇_x log p_t(x)``, shaped like ``x``."""
        return self._score(x, *self._perturbed(x, t, sde))

    def perturbed_score(self, x: Tensor, scale: Tensor | float, std: Tensor | float) -> Tensor:
        """The exact score of the mixture seen through ``x = scale·x_0 + std·z`` (per-sample or scalar
        ``scale, std``): for discrete chains, whose marginals need no SDE."""
        return self._score(x, *self._perturbed(x, None, None, (scale, std)))

    def _score(self, x: Tensor, flat: Tensor, means: Tensor, var: Tensor) -> Tensor:
        """``Σ_k r_k (m_k - x)/v_k = Σ_k r_k m_k/v_k - x Σ_k r_k/v_k``."""
        log_p, prec, mean_prec = self._components(flat, means, var)
        r = torch.softmax(log_p, dim=1)
        return (_contract_components(r, mean_prec) - flat * _contract_components(r, prec)).reshape(x.shape)

    def score_fn(self, sde: SDE):
        """The score function ``s(x, t) = ∇ log p_t(x)`` of the mixture perturbed by ``sde``."""

        def score(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, t, sde)

        return score

    def chain_score_fn(self, chain: DiscreteChain):
        """The exact score of the mixture on a discrete chain: ``s(x, t) = ∇ log p_i(x)`` with ``p_i`` the law of
        ``scale_i·x_0 + std_i·z`` at the timestep ``i = chain.index(t)`` nearest each row's ``t``."""

        def score(x: Tensor, t: Tensor) -> Tensor:
            i = chain.index(torch.as_tensor(t).expand(x.shape[0]))
            scale, std = chain.scale.to(x.device)[i], chain.std.to(x.device)[i]
            return self.perturbed_score(x, scale, std)

        return score

    def moments(self, t: Tensor | float | None = None, sde: SDE | None = None) -> tuple[Tensor, Tensor]:
        """Exact mean ``(D,)`` and covariance ``(D, D)`` of ``p_t``."""
        means, var = self.means, self.stds**2
        if t is not None:
            scale, std = sde.marginal(torch.as_tensor(float(t), dtype=means.dtype))
            means, var = scale * means, scale**2 * var + std**2
        w = self.weights
        mean = (w[:, None] * means).sum(0)
        centred = means - mean
        cov = torch.diag((w[:, None] * var).sum(0)) + (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
        return mean, cov


def _contract_features(a: Tensor, c: Tensor) -> Tensor:
    """``Σ_d a_bd c_bkd`` as ``(B, K)`` for ``c`` of shape ``(B, K, D)`` or ``(1, K, D)`` (one matrix product)."""
    return a @ c[0].T if c.shape[0] == 1 else torch.bmm(c, a[:, :, None])[..., 0]


def _contract_components(r: Tensor, c: Tensor) -> Tensor:
    """``Σ_k r_bk c_bkd`` as ``(B, D)`` for ``c`` of shape ``(B, K, D)`` or ``(1, K, D)``."""
    return r @ c[0] if c.shape[0] == 1 else torch.bmm(r[:, None, :], c)[:, 0]


def ring_mixture(k: int = 8, radius: float = 4.0, std: float = 0.3, dtype=torch.float64) -> GaussianMixture:
    """``k`` equal Gaussians of width ``std`` on a circle of the given radius in 2-D."""
    angle = torch.arange(k, dtype=dtype) * (2 * math.pi / k)
    return GaussianMixture(radius * torch.stack([angle.cos(), angle.sin()], 1), std, dtype=dtype)


def random_mixture(dim: int, k: int = 5, spread: float = 2.0, seed: int = 0, dtype=torch.float64) -> GaussianMixture:
    """``k`` components in ``dim`` dimensions: means ``spread·N(0, I)``, diagonal stds ``U(0.3, 0.8)``, weights
    ``∝ 1 … k`` — a fixed, reproducible high-dimensional target for a given ``seed``."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, dim, generator=g, dtype=dtype)
    stds = 0.3 + 0.5 * torch.rand(k, dim, generator=g, dtype=dtype)
    weights = torch.arange(1, k + 1, dtype=dtype)
    return GaussianMixture(means, stds, weights / weights.sum())
