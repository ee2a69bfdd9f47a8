"""Gaussian mixtures: data distributions whose perturbed density and score are exact at every t.

For ``p_0 = Σ_k w_k N(μ_k, diag(σ_k²))`` and a path with marginal ``x_t = α·x_0 + σ·z``, ``v_k = α²σ_k² + σ²``,

    p_t(x) = Σ_k w_k N(x; α·μ_k, diag(v_k)),
    ∇ log p_t(x) = Σ_k r_k(x) (α·μ_k - x) / v_k,   r_k = w_k N_k(x) / p_t(x),
    E[x_0 | x_t = x] = Σ_k r_k (μ_k + α σ_k² (x - α μ_k)/v_k),      E[ε | x_t = x] = -σ ∇ log p_t(x),

(Gaussian conditioning within each component), so the exact prediction of every kind (``prediction_fn``: score,
ε, x̂_0, v, velocity) is defined at every ``t`` of every path, endpoints included: at ``α = 0`` (rectified flow's
top) ``x̂_0 = Σ_k w_k μ_k``, at ``σ = 0`` ``x̂_0 = x/α``.

Samples may have any shape ``(batch, *event)`` with ``prod(event) = dim``; they are flattened inside.

Classes: each component ``k`` carries a label ``c_k`` (its class; by default its own index). Then, with
``r_k(x)`` the responsibilities under ``p_t``,

    p_t(x | y) = Σ_{k: c_k = y} w_k N_k(x) / Σ_{k: c_k = y} w_k,      p_t(y | x) = Σ_{k: c_k = y} r_k(x),
    ∇ log p_t(x | y) = Σ_{k: c_k = y} r_k^y(x) (scale·μ_k - x)/v_k,   r_k^y = r_k 1[c_k = y] / p_t(y | x),

and ``∇ log p_t(y | x) = ∇ log p_t(x | y) - ∇ log p_t(x)`` (Bayes: the class-conditional is the mixture
restricted to the class's components, so the noisy-class posterior is exact at every ``t``).

A linear Gaussian observation ``y = A x_0 + σ_y n`` of a mixture draw has the posterior ``linear_posterior``:
a mixture of full-covariance Gaussians (``FullGaussianMixture``) with, for ``Σ_k = diag(σ_k²)``,

    C_k = (Σ_k⁻¹ + AᵀA/σ_y²)⁻¹,   m_k = C_k (Σ_k⁻¹ μ_k + Aᵀy/σ_y²),   w'_k ∝ w_k N(y; A μ_k, A Σ_k Aᵀ + σ_y² I).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import choice
from .labels import check_class_labels
from .paths import SDE, DiscreteChain
from .predictions import KINDS

__all__ = ["GaussianMixture", "FullGaussianMixture", "ring_mixture", "random_mixture"]


class _Mixture:
    """What both mixtures share: ``means (K, D)``, ``weights (K,)``, the exact predictions from ``score`` and
    ``denoise``, and sampling (components by ``multinomial`` first, then one ``randn``, placed by ``_place``)."""

    means: Tensor
    weights: Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _place(self, comp: Tensor, z: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, x: Tensor, t: Tensor, sde: SDE, kind: str = "x0") -> Tensor:
        """The exact prediction of ``kind`` (``score``, ``eps``, ``x0``, ``v``, ``velocity``) at ``(x, t)``: from the
        exact pair ``(x̂_0, ε̂ = -σ s)``, each defined everywhere (see the module docstring)."""
        return _exact_prediction(self, x, t, sde, kind)

    def prediction_fn(self, sde: SDE, kind: str = "x0"):
        """The exact model of ``kind``: ``m(x, t)`` with ``m.predicts = kind``. ``x0`` (the default) runs every sampler
        from the exact top of every path (a score cannot give ``x̂_0`` where ``α = 0``)."""
        choice("kind", kind, KINDS)

        def model(x: Tensor, t: Tensor) -> Tensor:
            return self.predict(x, t, sde, kind)

        model.predicts = kind
        return model

    def sample(self, n: int, generator: torch.Generator | None = None, return_components: bool = False):
        """Draw ``n`` samples ``(n, D)``: components by ``multinomial`` first, then one ``randn``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=self.means.dtype, device=self.means.device)
        x = self._place(comp, z)
        return (x, comp) if return_components else x


class GaussianMixture(_Mixture):
    """``Σ_k w_k N(μ_k, diag(σ_k²))`` with ``means (K, D)``, ``stds (K,)`` isotropic or ``(K, D)``, ``weights (K,)``
    and ``labels (K,)``: each component's class in ``0 … n_classes - 1`` (every class used; default ``0 … K-1``).
    The parameters are held in ``dtype``; by default in ``means``' own floating dtype when it is a tensor, else in
    float64, as every exact target (``ring_mixture``, ``random_mixture``): the score is then evaluated in ``x``'s
    dtype."""

    def __init__(self, means, stds, weights=None, dtype: torch.dtype | None = None, device=None, labels=None):
        given_floating = isinstance(means, torch.Tensor) and means.is_floating_point()
        means = torch.as_tensor(means, dtype=dtype, device=device)
        if dtype is None and not given_floating:
            means = means.to(torch.float64)
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
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite")
        if not bool((stds > 0).all()) or not bool(torch.isfinite(stds).all()):
            raise ValueError("stds must all be finite and > 0")
        weights = torch.full((k,), 1.0 / k) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}")
        if not bool((weights > 0).all()) or not abs(float(weights.sum()) - 1) <= 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {weights.tolist()}")
        self.means, self.stds, self.weights = means, stds.contiguous(), weights
        self.labels = torch.arange(k, device=means.device) if labels is None else _check_labels(labels, k, means.device)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    def to(self, dtype: torch.dtype | None = None, device=None) -> "GaussianMixture":
        return GaussianMixture(self.means.to(dtype=dtype, device=device), self.stds.to(dtype=dtype, device=device),
                               self.weights.to(dtype=dtype, device=device), labels=self.labels.to(device=device))

    # --- classes -------------------------------------------------------------------------------
    def check_labels(self, y, batch: int | None = None) -> Tensor:
        """``y`` as a ``long`` tensor ``(batch,)`` of classes in ``[0, n_classes)`` (an int is expanded)."""
        return check_class_labels(y, self.n_classes, batch, self.means.device)

    @property
    def class_weights(self) -> Tensor:
        """``p(y) = Σ_{k: c_k = y} w_k``, ``(n_classes,)``."""
        return torch.zeros(self.n_classes, dtype=self.weights.dtype, device=self.weights.device).index_add_(
            0, self.labels, self.weights)

    def conditional(self, y: int) -> "GaussianMixture":
        """The class-conditional ``p_0(x | y)``: the components of class ``y``, weights renormalised."""
        y = int(self.check_labels(y, 1)[0])
        keep = self.labels == y
        w = self.weights[keep]
        return GaussianMixture(self.means[keep], self.stds[keep], w / w.sum())

    def class_log_posterior(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """``log p_t(y | x)`` for every class, ``(B, n_classes)``: log-sums of the class's responsibilities."""
        log_p = self._components(*self._perturbed(x, t, sde))[0]
        member = torch.nn.functional.one_hot(self.labels, self.n_classes).to(log_p.dtype)  # (K, C)
        joint = torch.logsumexp(log_p[:, :, None] + torch.log(member), dim=1)
        return joint - torch.logsumexp(log_p, dim=1, keepdim=True)

    def class_score(self, x: Tensor, t: Tensor, sde: SDE, y) -> Tensor:
        """The exact ``∇_x log p_t(x | y)`` for labels ``y`` (an int or ``(B,)``), shaped like ``x``."""
        y = self.check_labels(y, x.shape[0])
        flat, means, var = self._perturbed(x, t, sde)
        log_p, prec, mean_prec = self._components(flat, means, var)
        log_p = log_p.masked_fill(self.labels[None, :] != y[:, None], -math.inf)
        r = torch.softmax(log_p, dim=1)
        return (_contract_components(r, mean_prec) - flat * _contract_components(r, prec)).reshape(x.shape)

    def class_score_fn(self, sde: SDE):
        """``s(x, t, y) = ∇ log p_t(x | y)``; ``y = n_classes`` (the "no label" index) gives ``∇ log p_t(x)``.
        The conditional score-function convention of ``sgm.guidance``."""

        def score(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
            y = check_class_labels(y, self.n_classes + 1, x.shape[0], x.device)
            null = y == self.n_classes
            if bool(null.all()):
                return self.score(x, t, sde)
            out = self.class_score(x, t, sde, y.masked_fill(null, 0))
            if bool(null.any()):
                out[null] = self.score(x[null], t[null] if torch.is_tensor(t) and t.dim() else t, sde)
            return out

        score.n_classes = self.n_classes
        return score

    def classifier_fn(self, sde: SDE):
        """The exact noisy classifier ``(x, t) -> log p_t(y | x)`` ``(B, n_classes)`` (logits for ``sgm.guidance``)."""

        def classifier(x: Tensor, t: Tensor) -> Tensor:
            return self.class_log_posterior(x, t, sde)

        classifier.n_classes = self.n_classes
        return classifier

    # --- linear Gaussian observations -----------------------------------------------------------
    def linear_posterior(self, A, y, sigma_y: float) -> "FullGaussianMixture":
        """The exact posterior ``p(x_0 | y)`` for ``y = A x_0 + σ_y n`` (``A (m, D)``, ``y (m,)``, ``σ_y > 0``):
        the mixture of the module docstring. Gaussian conditioning done in the observation space,
        ``C_k = Σ_k - Σ_k Aᵀ S_k⁻¹ A Σ_k``, ``m_k = μ_k + Σ_k Aᵀ S_k⁻¹ (y - A μ_k)``, ``S_k = A Σ_k Aᵀ + σ_y² I``."""
        A, y = check_observation(A, y, self.dim, self.means.dtype, self.means.device)
        sigma_y = float(sigma_y)
        if not sigma_y > 0:
            raise ValueError(f"sigma_y must be > 0, got {sigma_y}")
        sig = self.stds**2                                                  # (K, D)
        AS = A[None] * sig[:, None, :]                                      # A Σ_k, (K, m, D)
        S = AS @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        L = torch.linalg.cholesky(S)
        resid = y[None] - self.means @ A.T                                  # (K, m)
        sol = torch.cholesky_solve(resid[..., None], L)[..., 0]             # S⁻¹ (y - A μ)
        means = self.means + (AS.transpose(1, 2) @ sol[..., None])[..., 0]
        covs = torch.diag_embed(sig) - AS.transpose(1, 2) @ torch.cholesky_solve(AS, L)
        log_ev = -0.5 * ((resid * sol).sum(1) + 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
                         + A.shape[0] * math.log(2 * math.pi))
        weights = torch.softmax(torch.log(self.weights) + log_ev, 0)
        return FullGaussianMixture(means, 0.5 * (covs + covs.transpose(1, 2)), weights)

    def _place(self, comp: Tensor, z: Tensor) -> Tensor:
        return self.means[comp] + self.stds[comp] * z

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
            t = t.reshape(-1)[:1] if shared else t.expand(x.shape[0])
            check_times(t, sde)
            scale_std = sde.marginal(t)
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

    def denoise(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """The exact ``E[x_0 | x_t = x] = Σ_k r_k (μ_k + α σ_k² (x - α μ_k)/v_k)``, shaped like ``x``."""
        flat, means, var = self._perturbed(x, t, sde)
        log_p, prec, mean_prec = self._components(flat, means, var)
        r = torch.softmax(log_p, dim=1)
        alpha = self._alpha(x, t, sde)
        s2 = (self.stds.to(x.dtype) ** 2)[None]
        # Σ r μ + α (x Σ r σ_k²/v_k - Σ r σ_k² (αμ_k)/v_k)
        out = _contract_components(r, self.means.to(x.dtype)[None]) + alpha * (
            flat * _contract_components(r, s2 * prec) - _contract_components(r, s2 * mean_prec))
        return out.reshape(x.shape)

    def _alpha(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return sde.alpha(t).reshape(-1, 1)


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
        cov = (torch.diag((w[:, None] * var).sum(0))
               + (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0))
        return mean, cov


class FullGaussianMixture(_Mixture):
    """``Σ_k w_k N(μ_k, C_k)`` with full covariances ``covs (K, D, D)``: the posterior of a ``GaussianMixture``
    under a linear Gaussian observation. Perturbed by an SDE it stays one, ``N(scale·μ_k, scale² C_k + std² I)``,
    so its density and score are exact at every ``t`` too."""

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor):
        k, d = means.shape
        if covs.shape != (k, d, d) or weights.shape != (k,):
            raise ValueError(f"covs must be ({k}, {d}, {d}) and weights ({k},), got {tuple(covs.shape)}, "
                             f"{tuple(weights.shape)}")
        self.means, self.covs, self.weights = means, covs, weights
        self._chol = torch.linalg.cholesky(covs)

    def _place(self, comp: Tensor, z: Tensor) -> Tensor:
        return self.means[comp] + (self._chol[comp] @ z[..., None])[..., 0]

    def _log_components(self, x: Tensor, t, sde: SDE | None):
        """``log w_k + log N(x; α m_k, V_k)`` ``(B, K)``, ``V_k⁻¹(α m_k - x)`` ``(B, K, D)`` and ``α`` (``(B, 1)`` or a
        float), with ``V_k = α² C_k + σ² I`` at each sample's own time (one set of components when the batch
        shares one time)."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} features per sample, got shape {tuple(x.shape)}")
        means, covs, alpha = self.means.to(x.dtype), self.covs.to(x.dtype), 1.0
        if t is not None:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            check_times(t, sde)
            eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
            if t.numel() == 1 or (t.dim() == 1 and t.stride(0) == 0):
                alpha, std = (float(v) for v in sde.marginal(t.reshape(-1)[:1]))
                means, covs = alpha * means, alpha**2 * covs + std**2 * eye
            else:
                a, std = (v.reshape(-1, 1, 1) for v in sde.marginal(t.expand(x.shape[0])))
                means = a * means[None]                                     # (B, K, D)
                covs = a[..., None] ** 2 * covs[None] + std[..., None] ** 2 * eye
                alpha = a[:, :, 0]
        L = torch.linalg.cholesky(covs)                                     # (K|B·K, D, D)
        Lb = L if L.dim() == 4 else L[None]
        diff = (means if means.dim() == 3 else means[None]) - flat[:, None]  # (B, K, D)
        white = torch.linalg.solve_triangular(Lb, diff[..., None], upper=False)[..., 0]
        log_n = -0.5 * ((white**2).sum(-1) + 2 * torch.log(torch.diagonal(Lb, dim1=-2, dim2=-1)).sum(-1)
                        + self.dim * math.log(2 * math.pi))
        grad = torch.cholesky_solve(diff[..., None], Lb)[..., 0]
        return torch.log(self.weights.to(x.dtype)) + log_n, grad, alpha

    def log_prob(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """``log p_t(x)`` per sample (``log p_0`` when ``t`` is None)."""
        return torch.logsumexp(self._log_components(x, t, sde)[0], dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Component probabilities ``(B, K)`` under ``p_0``."""
        return torch.softmax(self._log_components(x, None, None)[0], dim=1)

    def score(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """The exact ``∇ log p_t(x) = Σ_k r_k V_k⁻¹ (α m_k - x)``."""
        log_p, grad, _ = self._log_components(x, t, sde)
        return (torch.softmax(log_p, 1)[..., None] * grad).sum(1).reshape(x.shape)

    def score_fn(self, sde: SDE):
        return lambda x, t: self.score(x, t, sde)

    def denoise(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """The exact ``E[x_0 | x_t = x] = Σ_k r_k (m_k - α C_k V_k⁻¹(α m_k - x))``."""
        log_p, grad, alpha = self._log_components(x, t, sde)
        r = torch.softmax(log_p, 1)[..., None]
        x0 = self.means.to(x.dtype)[None] - (alpha[..., None] if torch.is_tensor(alpha) else alpha) * (
            self.covs.to(x.dtype)[None] @ grad[..., None])[..., 0]
        return (r * x0).sum(1).reshape(x.shape)

    def moments(self) -> tuple[Tensor, Tensor]:
        """Exact mean ``(D,)`` and covariance ``(D, D)``."""
        w = self.weights
        mean = (w[:, None] * self.means).sum(0)
        c = self.means - mean
        return mean, (w[:, None, None] * (self.covs + c[:, :, None] * c[:, None, :])).sum(0)


def _exact_prediction(mixture, x: Tensor, t: Tensor, sde: SDE, kind: str) -> Tensor:
    """``kind`` from the exact ``x̂_0`` and ``ε̂ = -σ s`` of ``mixture`` (``p·x̂_0 + q·ε̂``, ``sgm.predictions``)."""
    choice("kind", kind, KINDS)
    if kind == "score":
        return mixture.score(x, t, sde)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    view = lambda v: v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))  # noqa: E731
    alpha, sigma, d_alpha, d_sigma = (view(f(t)) for f in (sde.alpha, sde.sigma, sde.d_alpha, sde.d_sigma))
    eps = -sigma * mixture.score(x, t, sde)
    if kind == "eps":
        return eps
    x0 = mixture.denoise(x, t, sde)
    return {"x0": x0, "v": alpha * eps - sigma * x0, "velocity": d_alpha * x0 + d_sigma * eps}[kind]


def check_times(t: Tensor, sde: SDE) -> None:
    """``t ≥ 0`` where the path is a Gaussian perturbation, ``α(t) ≥ 0`` and ``σ(t)`` finite (``ValueError`` naming
    the range otherwise). Beyond ``T`` the path's ``α, σ`` are extrapolations: EDM's churn evaluates there on VP and
    VE, while rectified flow's ``α = 1 − t`` turns negative and cosine's too."""
    lo, hi = float(t.min()), float(t.max())
    beyond = lo < 0
    if not beyond and hi > sde.T * (1 + 1e-12):
        late = t[t > sde.T]
        alpha, sigma = sde.marginal(late)
        beyond = not (bool(torch.isfinite(alpha).all()) and bool(torch.isfinite(sigma).all())
                      and float(alpha.min()) >= 0 and float(sigma.min()) > 0)
    if beyond:
        raise ValueError(f"t must lie in [0, T={sde.T}] of {sde!r} (or beyond T where its alpha(t) >= 0), "
                         f"got [{lo:.6g}, {hi:.6g}]")


def _check_labels(labels, k: int, device) -> Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (k,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of shape ({k},), got {tuple(labels.shape)} {labels.dtype}")
    if int(labels.min()) < 0 or set(labels.tolist()) != set(range(int(labels.max()) + 1)):
        raise ValueError(f"labels must use every class 0 … C-1 (each class at least one component), "
                         f"got {labels.tolist()}")
    return labels.long()


def check_observation(A, y, dim: int, dtype, device) -> tuple[Tensor, Tensor]:
    """``A`` as an ``(m, dim)`` matrix and ``y`` as ``(m,)``, with the shapes checked."""
    A = torch.as_tensor(A, dtype=dtype, device=device)
    if A.dim() != 2 or A.shape[1] != dim:
        raise ValueError(f"A must have shape (m, {dim}), got {tuple(A.shape)}")
    y = torch.as_tensor(y, dtype=dtype, device=device).reshape(-1)
    if y.shape[0] != A.shape[0]:
        raise ValueError(f"y must have {A.shape[0]} entries (the rows of A), got {y.shape[0]}")
    return A, y


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
