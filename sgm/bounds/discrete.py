"""**The discrete bound** (Ho et al., 2020, eq. 5). On the nodes ``τ_K > … > τ_1`` of a VP-type chain
(``x_i = scale_i·x_0 + std_i·z``) a transition ``a → b`` moves forward by ``x_a = r·x_b + √v·z`` with
``r = scale_a/scale_b``, ``v = std_a² - r² std_b²``, and

    -log p_θ(x_0) ≤ L_T + Σ_{k=2}^{K} L_{k-1} + L_0,
    L_T     = KL(q(x_{τ_K}|x_0) ‖ N(0, I)),
    L_{k-1} = KL(q(x_{τ_{k-1}}|x_{τ_k}, x_0) ‖ p_θ(x_{τ_{k-1}}|x_{τ_k})),
    L_0     = -log p_θ(x_0|x_{τ_1}).

The posterior is ``N(c₀·x_0 + c₁·x_a, β̃)`` with ``c₀ = scale_b v/std_a²``, ``c₁ = r std_b²/std_a²``,
``β̃ = std_b² v/std_a²``; the model's mean puts ``x̂_0 = (x_a - std_a ε̂)/scale_a`` in place of ``x_0``
(``ε̂ = -std_a·s(x_a, t_a)``), so ``L_{k-1} = ½ Σ_d [log(σ²/β̃) + β̃/σ² - 1 + c₀²(x_0 - x̂_0)²/σ²]``.
The reverse variance ``σ²`` is ``v`` (``beta``: DDPM's β), ``β̃`` (``posterior``) or Analytic-DPM's optimum
(``analytic``). The decoder ``p_θ(x_0|x_{τ_1}) = N(x̂_0, σ₀²)`` is discretised to the 8-bit bins of
``[-1, 1]`` (``discrete``: ``Φ((x+δ-x̂_0)/σ₀) - Φ((x-δ-x̂_0)/σ₀)``, ``δ = 1/(levels-1)``, open-ended at
±1) or a density (``continuous``). As in Ho et al.'s code, ``σ₀²`` for ``beta`` and ``posterior`` is the
chain's ``β̃`` from timestep 1 to 0; for ``analytic`` it is the optimum ``Var[x_0|x_{τ_1}]``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from tqdm.auto import tqdm
from torch import Tensor

from ..checks import choice, integer
from ..paths import DiscreteChain, batch_view
from ..samplers.grid import Transition
from .analytic_dpm import GammaEstimate
from .chain import Bound, ScoreFn, check_data, check_indices, check_vp_chain, eps_hat, sum_features

__all__ = ["elbo", "decoder_nll", "prior_kl", "VARIANCES", "DECODERS"]

VARIANCES = ("beta", "posterior", "analytic")
DECODERS = ("discrete", "continuous")


def _log_normal_interval(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Φ(hi) - Φ(lo))`` for ``lo < hi`` (either may be infinite), computed on the tail away from the mode."""
    flip = lo > 0  # both in the upper tail: Φ(hi) - Φ(lo) = Φ(-lo) - Φ(-hi)
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def decoder_nll(x0: Tensor, mean: Tensor, var: Tensor, decoder: str, levels: int) -> Tensor:
    """``-log p(x_0)`` per sample under ``N(mean, var)`` (``var`` broadcast against ``x0``), discretised to
    ``levels`` bins of ``[-1, 1]`` or a density."""
    if decoder == "continuous":
        return 0.5 * sum_features((x0 - mean) ** 2 / var + torch.log(2 * math.pi * var))
    half = 1.0 / (levels - 1)
    std = var.sqrt()
    lo = torch.where(x0 <= -1 + half / 2, -math.inf, (x0 - half - mean) / std)
    hi = torch.where(x0 >= 1 - half / 2, math.inf, (x0 + half - mean) / std)
    return -sum_features(_log_normal_interval(lo, hi))


def _gaussian_kl(mean_diff_sq: Tensor, var_q: Tensor, var_p: Tensor) -> Tensor:
    """``KL(N(μ_q, var_q) ‖ N(μ_p, var_p))`` summed over features, from ``(μ_q - μ_p)²``."""
    return 0.5 * sum_features(torch.log(var_p / var_q) + (var_q + mean_diff_sq) / var_p - 1)


class _Steps(NamedTuple):
    """The reverse steps ``a → b`` of the bound, one entry each (``L_0, …, L_{K-1}``), as float64 tensors."""

    i: Tensor  # long: the timestep of a
    scale_a: Tensor
    std_a: Tensor
    scale_b: Tensor  # 1 for the decoder
    std_b: Tensor  # 0 for the decoder
    var: Tensor  # the reverse variance σ²


def _steps(chain: DiscreteChain, idx: list[int], variance: str, gamma: GammaEstimate | None,
           data_range) -> _Steps:
    a = [(i, float(chain.scale[i]), float(chain.std[i])) for i in idx]
    b = [(1.0, 0.0)] + [(s, d) for _, s, d in a[:-1]]
    var = []
    for (i, scale_a, std_a), (scale_b, std_b) in zip(a, b):
        if variance == "analytic":
            var.append(gamma.reverse_variance((scale_a, std_a), (scale_b, std_b), data_range=data_range))
        elif std_b == 0:  # Ho et al.'s decoder: β̃ of the chain's step 1 → 0
            step_1 = Transition.between(*(float(v) for v in (chain.scale[1], chain.std[1], chain.scale[0],
                                                               chain.std[0])))
            var.append(step_1.posterior_var)
        else:
            step = Transition.between(scale_a, std_a, scale_b, std_b)
            var.append(step.v if variance == "beta" else step.posterior_var)
    if not all(s > 0 for s in var):
        raise ValueError(f"gamma gives a decoder variance <= 0 (Γ >= 1 at timestep {idx[0]}); estimate it on "
                         "more data")
    f = lambda vals: torch.tensor(vals, dtype=torch.float64)
    return _Steps(torch.tensor(idx), f([s for _, s, _ in a]), f([d for _, _, d in a]), f([s for s, _ in b]),
                  f([d for _, d in b]), f(var))


def _terms(model, chain, steps: _Steps, j: Tensor, x0: Tensor, z: Tensor, decoder: str, levels: int) -> Tensor:
    """``L_j`` per row for the rows' step indices ``j``, data ``x0`` and forward noise ``z`` of ``x_a``."""
    col = lambda v: batch_view(v.to(device=x0.device)[j].to(x0.dtype), x0)
    scale_a, std_a, scale_b, std_b, var = (col(v) for v in (steps.scale_a, steps.std_a, steps.scale_b,
                                                            steps.std_b, steps.var))
    x_a = scale_a * x0 + std_a * z
    x0_hat = (x_a - std_a * eps_hat(model, chain, x_a, steps.i.to(x0.device)[j])) / scale_a
    out = torch.empty(x0.shape[0], dtype=x0.dtype, device=x0.device)
    dec = steps.std_b.to(x0.device)[j] == 0
    if bool(dec.any()):
        out[dec] = decoder_nll(x0[dec], x0_hat[dec], var[dec], decoder, levels)
    kl = ~dec
    if bool(kl.any()):
        step = Transition.between(scale_a[kl], std_a[kl], scale_b[kl], std_b[kl])
        out[kl] = _gaussian_kl(step.c_0**2 * (x0[kl] - x0_hat[kl]) ** 2, step.posterior_var, var[kl])
    return out


def prior_kl(x0: Tensor, scale: float, std: float) -> Tensor:
    """``L_T = KL(N(scale·x_0, std² I) ‖ N(0, I)) = ½ Σ_d [scale² x_0² + std² - 1 - log std²]``."""
    d = x0[0].numel()
    return 0.5 * (scale**2 * sum_features(x0**2) + d * (std**2 - 1 - math.log(std**2)))


@torch.no_grad()
def elbo(model: ScoreFn, chain: DiscreteChain, x0: Tensor, *, variance: str = "posterior",
         gamma: GammaEstimate | None = None, indices: Sequence[int] | None = None, decoder: str = "discrete",
         levels: int = 256, data_range: tuple[float, float] | None = None, n_timesteps: int | None = None,
         proposal: Tensor | None = None, batch_size: int = 8192,
         generator: torch.Generator | None = None, progress: bool = False) -> Bound:
    """The DDPM bound on ``-log p_θ(x_0)`` per sample (see the module docstring) of the score model ``model``
    (``ε̂ = -std_i·model(x, t_i)``; a ``ScoreModel`` with ``chain`` gives a DDPM network's own ε) on the nodes
    ``indices`` of ``chain`` (all timesteps by default).

    ``n_timesteps=None`` sums every term (one forward draw per term: a ``randn`` of ``x0``'s shape for each node
    in increasing order) and returns them; otherwise ``n_timesteps`` terms per sample are drawn from ``proposal``
    (weights over the ``K`` reverse terms ``L_0 … L_{K-1}``; uniform by default) and ``L_T + mean(L_j / p_j)``
    is returned with its standard error (noise: the terms by one ``multinomial``, then one ``randn`` of
    ``x0``'s shape per draw). ``decoder="discrete"`` needs ``x0`` in ``[-1, 1]`` (8-bit data scaled);
    ``data_range`` (default ``(-1, 1)`` for it) clips Analytic-DPM's ``Var[x_0|x_a]``. At most ``batch_size``
    rows go to the model at once.
    """
    chain = check_vp_chain(chain)
    x0 = check_data(x0)
    if not callable(model):
        raise TypeError(f"model must be a score function model(x, t), got {type(model).__name__}")
    choice("variance", variance, VARIANCES)
    choice("decoder", decoder, DECODERS)
    levels = integer("levels", levels)
    batch_size = integer("batch_size", batch_size)
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if decoder == "discrete":
        if float(x0.min()) < -1 or float(x0.max()) > 1:
            raise ValueError(f"x0 must lie in [-1, 1] for the discrete decoder (8-bit data scaled), got "
                             f"[{float(x0.min()):.4g}, {float(x0.max()):.4g}]; use decoder='continuous' for "
                             "continuous data")
        data_range = (-1.0, 1.0) if data_range is None else data_range
    if data_range is not None:
        lo, hi = (float(v) for v in data_range)
        if not hi > lo:
            raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range!r}")
        data_range = (lo, hi)
    if variance == "analytic":
        if not isinstance(gamma, GammaEstimate):
            raise TypeError(f"gamma must be a GammaEstimate (estimate_gamma) for variance='analytic', got "
                            f"{type(gamma).__name__}")
        gamma.check_chain(chain)
    idx = check_indices(indices, chain)
    if proposal is not None and n_timesteps is None:
        raise ValueError("proposal applies to sampled timesteps only: give n_timesteps too")
    if n_timesteps is not None:
        n_timesteps = integer("n_timesteps", n_timesteps)
        if n_timesteps < 2:
            raise ValueError(f"n_timesteps must be >= 2 for a standard error, got {n_timesteps}")
        p = _check_proposal(proposal, len(idx), x0)
    steps = _steps(chain, idx, variance, gamma, data_range)
    prior = prior_kl(x0, float(chain.scale[idx[-1]]), float(chain.std[idx[-1]]))
    K, B, d = len(idx), x0.shape[0], x0[0].numel()
    randn = lambda: torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if n_timesteps is None:
        per_call = max(1, batch_size // B)
        terms = []
        for start in tqdm(range(0, K, per_call), desc="elbo", disable=not progress, leave=False):
            j = torch.arange(start, min(K, start + per_call), device=x0.device)
            z = torch.cat([randn() for _ in range(j.numel())])
            rows = x0.repeat((j.numel(),) + (1,) * (x0.dim() - 1))
            terms.append(_terms(model, chain, steps, j.repeat_interleave(B), rows, z, decoder, levels).reshape(-1, B))
        terms = torch.cat(terms + [prior[None]]).T
        return Bound(terms.sum(1), None, terms, K * B, d)
    j = torch.multinomial(p, B * n_timesteps, replacement=True, generator=generator).reshape(B, n_timesteps)
    weighted = torch.empty(B, n_timesteps, dtype=x0.dtype, device=x0.device)
    for k in tqdm(range(n_timesteps), desc="elbo", disable=not progress, leave=False):
        weighted[:, k] = _terms(model, chain, steps, j[:, k], x0, randn(), decoder, levels) / p[j[:, k]]
    return Bound(prior + weighted.mean(1), weighted.std(1) / math.sqrt(n_timesteps), None, B * n_timesteps, d)


def _check_proposal(proposal, K: int, x0: Tensor) -> Tensor:
    if proposal is None:
        return torch.full((K,), 1.0 / K, dtype=x0.dtype, device=x0.device)
    p = torch.as_tensor(proposal, dtype=x0.dtype, device=x0.device)
    if p.shape != (K,) or not bool((p > 0).all()) or not bool(torch.isfinite(p).all()):
        raise ValueError(f"proposal must be {K} positive finite weights (one per reverse term), got shape "
                         f"{tuple(p.shape)}")
    return p / p.sum()

