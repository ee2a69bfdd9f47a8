"""Variational bounds on ``-log p(x)``: the DDPM bound of a discrete chain, the continuous-time ELBO of an SDE,
and Analytic-DPM's optimal reverse variance.

**The discrete bound** (Ho et al., 2020, eq. 5). On the nodes ``τ_K > … > τ_1`` of a VP-type chain
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

**Analytic-DPM** (Bao et al., 2022, Thm. 1). The KL-optimal Gaussian reverse variance of ``a → b`` is

    σ*² = β̃ + c₀² · Var[x_0 | x_a],   Var[x_0 | x_a] = (std_a/scale_a)² (1 - Γ_a),   Γ_a = E‖ε̂(x_a)‖²/d,

with ``Var[x_0|x_a]`` clipped to ``[0, ((hi - lo)/2)²]`` for data in ``[lo, hi]`` (their Thm. 2). ``Γ`` is
estimated once by Monte Carlo over data (``estimate_gamma``) and kept with its chain (``GammaEstimate``).

**The continuous bound** (Song et al., 2021b, Thm. 3; Huang et al., 2021). Treat ``x`` as data at time ``eps``
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
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm
from torch import Tensor

from .paths import SDE, DiscreteChain, batch_view
from .predictions import as_score, convert, predicts
from .checks import integer, positive

__all__ = ["Bound", "GammaEstimate", "estimate_gamma", "elbo", "continuous_elbo", "VARIANCES", "DECODERS",
           "T_PROPOSALS"]

VARIANCES = ("beta", "posterior", "analytic")
DECODERS = ("discrete", "continuous")
T_PROPOSALS = ("importance", "uniform")
LOG2 = math.log(2.0)

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class Bound(NamedTuple):
    nats: Tensor  # the bound on -log p(x) per sample (nats)
    se: Tensor | None  # its standard error per sample when estimated from sampled timesteps, else None
    terms: Tensor | None  # (batch, K + 1) nats: L_0, L_1 … L_{K-1}, L_T (exact sum only)
    nfe: int  # score evaluations
    dim: int  # data dimension d

    @property
    def bpd(self) -> Tensor:
        """The bound in bits per dimension, ``nats / (d log 2)``."""
        return self.nats / (self.dim * LOG2)


# --- shared pieces ---------------------------------------------------------------------------------

def _check_data(x0) -> Tensor:
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2 or x0.shape[0] < 1:
        raise TypeError(f"x0 must be a floating tensor of shape (batch, ...), got "
                        f"{type(x0).__name__ if not isinstance(x0, Tensor) else tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite")
    return x0


def _check_vp_chain(chain) -> DiscreteChain:
    if not isinstance(chain, DiscreteChain):
        raise TypeError(f"chain must be a DiscreteChain (sde.discretize(N)), got {type(chain).__name__}")
    if chain.betas is None:
        raise ValueError("chain must be a VP-type chain (VPSDE or SubVPSDE .discretize(N)) with prior N(0, I); "
                         "got a chain without betas (VE)")
    if len(chain) < 2:
        raise ValueError(f"chain must have at least 2 timesteps, got {len(chain)}")
    scale, std = chain.scale, chain.std
    v = std[1:] ** 2 - (scale[1:] / scale[:-1]) ** 2 * std[:-1] ** 2
    if not (bool(torch.isfinite(scale).all()) and bool((scale > 0).all()) and bool((std > 0).all())
            and bool((v > 0).all())):
        raise ValueError("chain must have 0 < scale and noise that grows at every step (all β_i < 1); got an "
                         f"invalid chain of {len(chain)} timesteps (too few steps for its β_max?)")
    return chain


def _check_indices(indices, chain: DiscreteChain) -> list[int]:
    """Timesteps in increasing order (default: all of them)."""
    if indices is None:
        return list(range(len(chain)))
    idx = [int(i) for i in indices]
    if not idx or any(i < 0 or i >= len(chain) for i in idx) or any(a >= b for a, b in zip(idx, idx[1:])):
        raise ValueError(f"indices must be strictly increasing timesteps in [0, {len(chain) - 1}], got {idx}")
    return idx


def _eps_hat(model: ScoreFn, chain: DiscreteChain, x: Tensor, idx: Tensor) -> Tensor:
    """The model's ``ε̂`` at the per-row timesteps ``idx``, from whatever it predicts (on the chain's marginal)."""
    t = chain.t.to(device=x.device, dtype=x.dtype)[idx]
    out = model(x, t)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        raise ValueError(f"model must return a tensor shaped like x {tuple(x.shape)}")
    col = lambda v: batch_view(v.to(device=x.device, dtype=x.dtype)[idx], x)  # noqa: E731
    return convert("eps", predicts(model), out, x, col(chain.scale), col(chain.std))


def _sum_features(v: Tensor) -> Tensor:
    return v.flatten(1).sum(1)


# --- Analytic-DPM's Γ --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GammaEstimate:
    """``Γ_i = E‖ε̂(x_i, i)‖²/d`` at the chain timesteps ``indices``, estimated on ``n`` data points.

    Keeps the chain's ``(scale, std)`` so that it is only ever used with the chain it was estimated on.
    """

    scale: Tensor  # the chain's scale, float64 (N,)
    std: Tensor  # the chain's std, float64 (N,)
    indices: Tensor  # long (M,), increasing
    gamma: Tensor  # float64 (M,)
    se: Tensor  # float64 (M,), standard error of each Γ_i
    n: int

    def check_chain(self, chain: DiscreteChain, name: str = "gamma") -> None:
        """``ValueError`` naming ``name`` unless ``chain`` is the chain this estimate was made on."""
        same = (len(chain) == self.scale.numel() and torch.equal(chain.scale.double().cpu(), self.scale)
                and torch.equal(chain.std.double().cpu(), self.std))
        if not same:
            raise ValueError(f"{name} was estimated on a different chain ({self.scale.numel()} timesteps); "
                             f"estimate it again with estimate_gamma on this chain ({len(chain)} timesteps)")

    def at(self, i: int, name: str = "gamma") -> float:
        """``Γ_i``; ``ValueError`` if timestep ``i`` was not estimated."""
        pos = int(torch.searchsorted(self.indices, torch.tensor(int(i))))
        if pos >= self.indices.numel() or int(self.indices[pos]) != int(i):
            raise ValueError(f"{name} has no estimate at timestep {int(i)}; estimate_gamma(..., indices=...) "
                             f"must include every timestep the sampler or bound visits")
        return float(self.gamma[pos])

    def timestep(self, scale: float, std: float, name: str = "gamma") -> int:
        """The chain timestep whose ``(scale, std)`` these are (a sampler's node on ``leading``/``trailing``
        spacing); ``ValueError`` naming ``name`` if there is none."""
        i = int(torch.searchsorted(self.std, torch.tensor(float(std), dtype=torch.float64)))
        if i >= self.std.numel() or float(self.std[i]) != float(std) or float(self.scale[i]) != float(scale):
            raise ValueError(f"{name} was estimated on a chain without a timestep at (scale={scale:.6g}, std={std:.6g}); "
                             f"use that chain's timesteps (spacing 'leading' or 'trailing' with train_steps="
                             f"{self.std.numel()} and the same SDE)")
        return i

    def x0_variance(self, i: int, data_range: tuple[float, float] | None = None) -> float:
        """``Var[x_0|x_i]`` per dimension, ``(std_i/scale_i)²(1 - Γ_i)``, clipped to ``[0, ((hi-lo)/2)²]``."""
        var = max(float((self.std[i] / self.scale[i]) ** 2) * (1.0 - self.at(i)), 0.0)
        if data_range is not None:
            var = min(var, ((data_range[1] - data_range[0]) / 2) ** 2)
        return var

    def reverse_variance(self, a: tuple[float, float], b: tuple[float, float], lam2: float | None = None,
                         data_range: tuple[float, float] | None = None) -> float:
        """Bao et al.'s optimal variance ``σ*² = λ² + c² Var[x_0|x_a]`` of the step from the chain node
        ``a = (scale, std)`` to ``b = (scale, std)`` (``std = 0``: the data) whose mean is
        ``scale_b x̂_0 + √(std_b² - λ²) ε̂``; ``c = scale_b - √(std_b² - λ²) scale_a/std_a``. ``λ²`` defaults to
        DDPM's ``β̃ = std_b² v/std_a²`` (then ``c = scale_b v/std_a²``); DDIM's is ``η² β̃``."""
        (scale_a, std_a), (scale_b, std_b) = a, b
        if lam2 is None:
            lam2 = std_b**2 * (std_a**2 - (scale_a / scale_b) ** 2 * std_b**2) / std_a**2
        c = scale_b - math.sqrt(max(std_b**2 - lam2, 0.0)) * scale_a / std_a
        return lam2 + c**2 * self.x0_variance(self.timestep(scale_a, std_a), data_range)


@torch.no_grad()
def estimate_gamma(model: ScoreFn, chain: DiscreteChain, x0: Tensor, *, indices: Sequence[int] | None = None,
                   batch_size: int = 4096, generator: torch.Generator | None = None,
                   progress: bool = False) -> GammaEstimate:
    """Monte-Carlo ``Γ_i = E_{x_0, z}‖ε̂(scale_i x_0 + std_i z, i)‖²/d`` over the data ``x0`` (one noise draw
    per data point and timestep, one ``randn`` per timestep in increasing order), with its standard error."""
    if not isinstance(chain, DiscreteChain):
        raise TypeError(f"chain must be a DiscreteChain (sde.discretize(N)), got {type(chain).__name__}")
    if not callable(model):
        raise TypeError(f"model must be a score function model(x, t), got {type(model).__name__}")
    x0 = _check_data(x0)
    if x0.shape[0] < 2:
        raise ValueError(f"x0 must hold at least 2 data points for a standard error, got {x0.shape[0]}")
    batch_size = integer("batch_size", batch_size)
    idx = _check_indices(indices, chain)
    n, d = x0.shape[0], x0[0].numel()
    per_batch = max(1, batch_size // n)
    gamma, se = [], []
    for start in tqdm(range(0, len(idx), per_batch), desc="gamma", disable=not progress, leave=False):
        block = torch.tensor(idx[start:start + per_batch], device=x0.device)
        z = torch.cat([torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
                       for _ in range(block.numel())])
        rows = block.repeat_interleave(n)
        scale = batch_view(chain.scale.to(device=x0.device, dtype=x0.dtype)[rows], z)
        std = batch_view(chain.std.to(device=x0.device, dtype=x0.dtype)[rows], z)
        x = scale * x0.repeat((block.numel(),) + (1,) * (x0.dim() - 1)) + std * z
        sq = (_sum_features(_eps_hat(model, chain, x, rows) ** 2) / d).reshape(block.numel(), n).double()
        gamma.append(sq.mean(1))
        se.append(sq.std(1) / math.sqrt(n))
    return GammaEstimate(chain.scale.double().cpu().clone(), chain.std.double().cpu().clone(),
                         torch.tensor(idx), torch.cat(gamma).cpu(), torch.cat(se).cpu(), n)


# --- the discrete bound ------------------------------------------------------------------------------

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
        return 0.5 * _sum_features((x0 - mean) ** 2 / var + torch.log(2 * math.pi * var))
    half = 1.0 / (levels - 1)
    std = var.sqrt()
    lo = torch.where(x0 <= -1 + half / 2, -math.inf, (x0 - half - mean) / std)
    hi = torch.where(x0 >= 1 - half / 2, math.inf, (x0 + half - mean) / std)
    return -_sum_features(_log_normal_interval(lo, hi))


def _gaussian_kl(mean_diff_sq: Tensor, var_q: Tensor, var_p: Tensor) -> Tensor:
    """``KL(N(μ_q, var_q) ‖ N(μ_p, var_p))`` summed over features, from ``(μ_q - μ_p)²``."""
    return 0.5 * _sum_features(torch.log(var_p / var_q) + (var_q + mean_diff_sq) / var_p - 1)


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
        r = scale_a / scale_b
        v = std_a**2 - r**2 * std_b**2
        if variance == "analytic":
            var.append(gamma.reverse_variance((scale_a, std_a), (scale_b, std_b), data_range=data_range))
        elif std_b == 0:  # Ho et al.'s decoder: β̃ of the chain's step 1 → 0
            s0, s1, r1 = float(chain.std[0]), float(chain.std[1]), float(chain.scale[1] / chain.scale[0])
            var.append(s0**2 * (s1**2 - r1**2 * s0**2) / s1**2)
        else:
            var.append(v if variance == "beta" else std_b**2 * v / std_a**2)
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
    x0_hat = (x_a - std_a * _eps_hat(model, chain, x_a, steps.i.to(x0.device)[j])) / scale_a
    out = torch.empty(x0.shape[0], dtype=x0.dtype, device=x0.device)
    dec = steps.std_b.to(x0.device)[j] == 0
    if bool(dec.any()):
        out[dec] = decoder_nll(x0[dec], x0_hat[dec], var[dec], decoder, levels)
    kl = ~dec
    if bool(kl.any()):
        r = scale_a[kl] / scale_b[kl]
        v = std_a[kl] ** 2 - r**2 * std_b[kl] ** 2
        c0 = scale_b[kl] * v / std_a[kl] ** 2
        out[kl] = _gaussian_kl(c0**2 * (x0[kl] - x0_hat[kl]) ** 2, std_b[kl] ** 2 * v / std_a[kl] ** 2, var[kl])
    return out


def prior_kl(x0: Tensor, scale: float, std: float) -> Tensor:
    """``L_T = KL(N(scale·x_0, std² I) ‖ N(0, I)) = ½ Σ_d [scale² x_0² + std² - 1 - log std²]``."""
    d = x0[0].numel()
    return 0.5 * (scale**2 * _sum_features(x0**2) + d * (std**2 - 1 - math.log(std**2)))


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
    chain = _check_vp_chain(chain)
    x0 = _check_data(x0)
    if not callable(model):
        raise TypeError(f"model must be a score function model(x, t), got {type(model).__name__}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
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
    idx = _check_indices(indices, chain)
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


# --- the continuous bound ----------------------------------------------------------------------------

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
    pair = _sum_features(s**2) + 2 * _sum_features(s * zz) / sig2
    c = 1 - (a**2 / (a**2 + sig**2)) ** 2
    B = x.shape[0]
    return 0.5 * sde.diffusion(t.double()) ** 2 * ((pair[:B] + pair[B:]) / 2 + c * _sum_features(z.double() ** 2) / sig**2)


def _deterministic_integral(sde: SDE, eps: float, d: int, nodes: int = 20001) -> float:
    """``d ∫_eps^T K dt`` with ``K = f + ½ g² c/σ_t²``: the drift's ``-d log a_T = -d ∫ f dt`` and the control variate's
    constant ``∫ ½ g² c d/σ_t² dt`` as one integral, by the trapezoid rule. Each diverges where ``α(T) = 0`` (``f`` and
    ``g²`` grow as ``1/α``), their sum does not: with ``a = α/α_e``, ``σ_t² = σ² - a²σ_e²`` (``α_e, σ_e`` at ``eps``),
    ``c/σ_t² = (2a² + σ_t²)/(a² + σ_t²)²`` and ``fa² = α'α/α_e²``,

        K = [σσ' (2a² + σ_t²) + (α'α/α_e²)(a²(1 - 2σ_e²) - σ_e² σ_t²)] / (a² + σ_t²)²,

    bounded on ``[eps, T]`` with no division by ``α`` or ``σ_t`` (1 at the top of rectified flow, ``2σσ' + f(1 - 2σ_e²)``
    at ``eps``)."""
    t = torch.linspace(eps, sde.T, nodes, dtype=torch.float64)
    t[0] = eps  # linspace may round it
    a_e, s_e = (float(v) for v in sde.marginal(torch.tensor(eps, dtype=torch.float64)))
    a, sig = _conditional(sde, t, eps)
    a2, sig2 = a**2, sig**2
    alpha_dalpha = sde.alpha(t) * sde.d_alpha(t) / a_e**2
    k = (sde.half_dsigma2(t) * (2 * a2 + sig2) + alpha_dalpha * (a2 * (1 - 2 * s_e**2) - s_e**2 * sig2)) / (a2 + sig2) ** 2
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
    x = _check_data(x)
    eps = positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    n_samples = integer("n_samples", n_samples)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 for a standard error, got {n_samples}")
    if proposal not in T_PROPOSALS:
        raise ValueError(f"proposal must be one of {T_PROPOSALS}, got {proposal!r}")
    bins, pilot = integer("bins", bins), integer("pilot", pilot)
    B, d = x.shape[0], x[0].numel()
    f64 = dict(dtype=torch.float64, device=x.device)
    randn = lambda shape: torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    a_T, sig_T = (float(v) for v in _conditional(sde, torch.tensor(sde.T, dtype=torch.float64), eps))
    var_pi = sde.prior_std**2
    prior = (0.5 * d * math.log(2 * math.pi * var_pi)
             + (a_T**2 * _sum_features(x.double() ** 2) + d * sig_T**2) / (2 * var_pi))
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
