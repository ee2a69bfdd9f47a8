"""**The continuous bound** (Song et al., 2021b, Thm. 3; Huang et al., 2021). Treat ``x`` as data at time ``eps``
and let ``x_t = a_t x + σ_t z`` be the forward process from there (``a_t = scale(t)/scale(eps)``,
``σ_t² = std(t)² - a_t² std(eps)²``). With the likelihood weighting ``g²`` and ``∇ log q(x_t|x) = -z/σ_t``,

    -log p_eps^θ(x) ≤ -E log π(x_T) - d log(a_T) + ½ ∫_eps^T g(t)² E[‖s‖² + 2 s·z/σ_t] dt,

where ``‖s + z/σ_t‖² - ‖z/σ_t‖² = ‖s‖² + 2 s·z/σ_t`` is denoising score matching minus its analytic
constant, and ``-d log a_T = -∫ ∇·f dt`` for the linear drift. With the exact score the bound exceeds
``-log p_eps(x)`` only by ``E_{x_T|x}[log p_T(x_T) - log π(x_T)]`` (the model's paths are the data's).
Where ``α(T) = 0`` (rectified flow: ``p_T = π`` exactly, so that gap is 0) ``-d log a_T`` and ``g²`` diverge at ``T``;
the bound is still defined on ``[eps, T]``: the drift term and the control variate's constant are integrated as one
bounded integrand (``_deterministic_integral``), and the Monte-Carlo times never reach ``T``, where
``½ g² [‖s‖² + 2 s·z/σ_t + c‖z‖²/σ_t²]`` stays bounded (its bracket vanishes as ``α``).
The integral is estimated by Monte Carlo over ``t`` (uniform, or importance-sampled from a pilot run) and ``z``
(antithetic pairs, and a control variate in ``‖z‖² - d``); see ``continuous_elbo``.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm
from torch import Tensor

from ..checks import choice, integer, positive
from ..paths import SDE, batch_view
from ..predictions import as_score
from .chain import Bound, ScoreFn, check_data, sum_features

__all__ = ["continuous_elbo", "T_PROPOSALS"]

T_PROPOSALS = ("importance", "uniform")


def _conditional(sde: SDE, t: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(a_t, σ_t)`` of ``x_t | x_eps``: ``a_t = scale(t)/scale(eps)``, ``σ_t² = std(t)² - a_t² std(eps)²``."""
    s_e, d_e = (float(v) for v in sde.marginal(torch.tensor(eps, dtype=torch.float64)))
    scale, std = sde.marginal(t)
    a = scale / s_e
    return a, (std**2 - a**2 * d_e**2).clamp_min(0).sqrt()


def _time_at_conditional_std(sde: SDE, sigma: Tensor, eps: float) -> Tensor:
    """The ``t`` in ``(eps, T)`` with ``σ_t = sigma`` (bisection; ``σ_t`` increases with ``t``)."""
    lo = torch.full_like(sigma, eps)
    hi = torch.full_like(sigma, sde.T)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = _conditional(sde, mid, eps)[1] < sigma
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def _integrand(score: ScoreFn, sde: SDE, x: Tensor, t: Tensor, z: Tensor, eps: float) -> Tensor:
    """``½ g² [‖s‖² + 2 s·z/σ_t + c ‖z‖²/σ_t²]`` per row (mean over the antithetic pair ``±z``), with
    ``c = 1 - (a_t²/(a_t² + σ_t²))²``; its mean minus ``½ g² c d/σ_t²`` is the bound's integrand."""
    a, sig = _conditional(sde, t.double(), eps)
    a_, sig_ = batch_view(a.to(x.dtype), x), batch_view(sig.to(x.dtype), x)
    tt = t.to(x.dtype)
    s = score(torch.cat([a_ * x + sig_ * z, a_ * x - sig_ * z]), torch.cat([tt, tt])).double()
    zz = torch.cat([z, -z]).double()
    sig2 = torch.cat([sig, sig])
    pair = sum_features(s**2) + 2 * sum_features(s * zz) / sig2
    c = 1 - (a**2 / (a**2 + sig**2)) ** 2
    B = x.shape[0]
    return 0.5 * sde.diffusion(t.double()) ** 2 * ((pair[:B] + pair[B:]) / 2
                                                 + c * sum_features(z.double() ** 2) / sig**2)


def _deterministic_integral(sde: SDE, eps: float, d: int, nodes: int = 20001) -> float:
    """``d ∫_eps^T K dt`` with ``K = f + ½ g² c/σ_t²``: the drift's ``-d log a_T = -d ∫ f dt`` and the control variate's
    constant ``∫ ½ g² c d/σ_t² dt`` as one integral, by the trapezoid rule. Each diverges where ``α(T) = 0`` (``f`` and
    ``g²`` grow as ``1/α``), their sum does not: with ``a = α/α_e``, ``σ_t² = σ² - a²σ_e²`` (``α_e, σ_e`` at ``eps``),
    ``c/σ_t² = (2a² + σ_t²)/(a² + σ_t²)²`` and ``fa² = α'α/α_e²``,

        K = [σσ' (2a² + σ_t²) + (α'α/α_e²)(a²(1 - 2σ_e²) - σ_e² σ_t²)] / (a² + σ_t²)²,

    bounded on ``[eps, T]`` with no division by ``α`` or ``σ_t`` (1 at the top of rectified flow,
    ``2σσ' + f(1 - 2σ_e²)`` at ``eps``)."""
    t = torch.linspace(eps, sde.T, nodes, dtype=torch.float64)
    t[0] = eps  # linspace may round it
    a_e, s_e = (float(v) for v in sde.marginal(torch.tensor(eps, dtype=torch.float64)))
    a, sig = _conditional(sde, t, eps)
    a2, sig2 = a**2, sig**2
    alpha_dalpha = sde.alpha(t) * sde.d_alpha(t) / a_e**2
    k = ((sde.half_dsigma2(t) * (2 * a2 + sig2) + alpha_dalpha * (a2 * (1 - 2 * s_e**2) - s_e**2 * sig2))
         / (a2 + sig2) ** 2)
    return d * float(torch.trapezoid(k, t))


@torch.no_grad()
def continuous_elbo(score: ScoreFn, sde: SDE, x: Tensor, *, eps: float = 1e-5, n_samples: int = 100,
                    proposal: str = "importance", bins: int = 32, pilot: int = 64,
                    generator: torch.Generator | None = None, progress: bool = False) -> Bound:
    """The continuous-time bound on ``-log p_eps^θ(x)`` per sample (module docstring) with its standard error,
    the integral estimated from ``n_samples`` times per sample.

    Each time takes an antithetic pair ``x_t = a_t x ± σ_t z`` (2 score evaluations) and the control variate
    ``c (‖z‖² - d)/σ_t²`` whose constant part is integrated by quadrature (``c → 1`` where ``s ≈ -z/σ_t``).
    ``proposal="uniform"`` draws ``t`` uniformly; ``importance`` draws it from a piecewise-constant density on
    ``bins`` equal bins of ``[eps, T]``, ``0.1`` uniform plus ``0.9`` in proportion to the integrand's root mean
    square measured in a pilot run (``pilot`` data points, one time per bin each; its draws are not reused).
    Noise: pilot (``rand`` of ``(pilot, bins)``, then one ``randn`` per bin), then one ``rand`` of
    ``(batch, n_samples)`` and one ``randn`` of ``x``'s shape per time column.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sgm SDE, got {type(sde).__name__}")
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    score = as_score(score, sde)
    x = check_data(x)
    eps = positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    n_samples = integer("n_samples", n_samples)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 for a standard error, got {n_samples}")
    choice("proposal", proposal, T_PROPOSALS)
    bins, pilot = integer("bins", bins), integer("pilot", pilot)
    B, d = x.shape[0], x[0].numel()
    f64 = dict(dtype=torch.float64, device=x.device)
    randn = lambda shape: torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    a_T, sig_T = (float(v) for v in _conditional(sde, torch.tensor(sde.T, dtype=torch.float64), eps))
    var_pi = sde.prior_std**2
    prior = (0.5 * d * math.log(2 * math.pi * var_pi)
             + (a_T**2 * sum_features(x.double() ** 2) + d * sig_T**2) / (2 * var_pi))
    width = (sde.T - eps) / bins
    weights = torch.full((bins,), 1.0 / bins, **f64)
    nfe = 0
    if proposal == "importance":
        xp = x[:pilot]
        u = torch.rand((xp.shape[0], bins), generator=generator, **f64)
        rms = torch.stack([_integrand(score, sde, xp, eps + width * (k + u[:, k]), randn(xp.shape), eps)
                           .pow(2).mean().sqrt() for k in range(bins)])
        nfe += 2 * xp.shape[0] * bins
        weights = 0.1 / bins + 0.9 * rms / rms.sum()
    u = torch.rand((B, n_samples), generator=generator, **f64)
    which = torch.searchsorted(weights.cumsum(0), u * weights.sum()).clamp_(max=bins - 1)
    within = torch.rand((B, n_samples), generator=generator, **f64)
    t = eps + width * (which + within)
    density = weights[which] / width
    values = torch.empty(B, n_samples, **f64)
    for k in tqdm(range(n_samples), desc="continuous elbo", disable=not progress, leave=False):
        values[:, k] = _integrand(score, sde, x, t[:, k], randn(x.shape), eps) / density[:, k]
    nfe += 2 * B * n_samples
    nats = prior - _deterministic_integral(sde, eps, d) + values.mean(1)
    return Bound(nats.to(x.dtype), (values.std(1) / math.sqrt(n_samples)).to(x.dtype), None, nfe, d)

