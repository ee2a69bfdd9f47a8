"""**Analytic-DPM** (Bao et al., 2022, Thm. 1). The KL-optimal Gaussian reverse variance of ``a → b`` is

    σ*² = β̃ + c₀² · Var[x_0 | x_a],   Var[x_0 | x_a] = (std_a/scale_a)² (1 - Γ_a),   Γ_a = E‖ε̂(x_a)‖²/d,

with ``Var[x_0|x_a]`` clipped to ``[0, ((hi - lo)/2)²]`` for data in ``[lo, hi]`` (their Thm. 2). ``Γ`` is
estimated once by Monte Carlo over data (``estimate_gamma``) and kept with its chain (``GammaEstimate``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm
from torch import Tensor

from ..checks import integer
from ..paths import DiscreteChain, batch_view
from ..samplers.grid import Transition
from .chain import ScoreFn, check_data, check_indices, eps_hat, sum_features

__all__ = ["GammaEstimate", "estimate_gamma"]


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
            raise ValueError(f"{name} was estimated on a chain without a timestep at (scale={scale:.6g}, "
                             f"std={std:.6g}); use that chain's timesteps (spacing 'leading' or 'trailing' with "
                             f"train_steps={self.std.numel()} and the same SDE)")
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
            lam2 = Transition.between(scale_a, std_a, scale_b, std_b).posterior_var
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
    x0 = check_data(x0)
    if x0.shape[0] < 2:
        raise ValueError(f"x0 must hold at least 2 data points for a standard error, got {x0.shape[0]}")
    batch_size = integer("batch_size", batch_size)
    idx = check_indices(indices, chain)
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
        sq = (sum_features(eps_hat(model, chain, x, rows) ** 2) / d).reshape(block.numel(), n).double()
        gamma.append(sq.mean(1))
        se.append(sq.std(1) / math.sqrt(n))
    return GammaEstimate(chain.scale.double().cpu().clone(), chain.std.double().cpu().clone(),
                         torch.tensor(idx), torch.cat(gamma).cpu(), torch.cat(se).cpu(), n)

