"""The problems of the sweep: exact-score targets under VP and VE, each with one start and one reference.

A problem fixes, for one target and SDE, one top noise level ``σ_top`` (``σ = std/scale``), one draw
``z ~ N(0, I)``, sgm's start ``x_T = prior_std·z`` at ``σ_top``, and the reference ``x_ref``: the exact
probability-flow map of ``x_T`` from ``σ_top`` to ``σ = 0`` (``exact_flow_map``).

- VP: the chain is DDPM's, ``VPSDE().discretize(1000)`` (β linear 1e-4 … 0.02), ``σ_top = σ_999 ≈ 157``.
  sgm's continuous grids run on ``VPSDE(T=T*)``, the same β(t/T) run to the ``T*`` where its marginal equals
  the chain's at ``i = 999`` (``T* ≈ 1.0067``): every side starts at the same noise level from the same ``z``.
- VE: ``VESDE()`` (σ 0.01 … 50), ``σ_top = 50``; its chain is NCSN's 1000 geometric levels.

The exact model in the two other forms the runs use: the score on the chain's timesteps only
(``on_chain_score``) and the noise prediction at a noise level (``eps_at``).

What the runs and the peers ask of a problem (``Problem`` here, ``trained.TrainedProblem`` for a network): the
fields ``target_name, sde_name, chain, z, x_T, x_ref`` and the methods ``model_for(on_chain)`` (the model and path
sgm's samplers run on), ``eps_at(x, sigma)`` (the peers' noise prediction) and ``judge(x, nfe, t0)`` (a row's
scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import SDE, VESDE, VPSDE, DiscreteChain, GaussianMixture, random_mixture, ring_mixture
from ..samplers.optimize import flow_map
from .judge import judge_map

__all__ = ["TARGETS", "TRAIN_STEPS", "Problem", "make_problem", "make_targets", "exact_flow_map", "OffChain",
           "on_chain_score", "eps_at"]

TARGETS = {"2d ring": ring_mixture, "16d mixture": lambda: random_mixture(16, seed=0),
           "64d mixture": lambda: random_mixture(64, seed=1)}
TRAIN_STEPS = 1000  # the chain's length: DDPM's and NCSN's


def make_targets(quick: bool, names=None) -> dict[str, GaussianMixture]:
    """The targets named (default: the 2-D ring with ``quick``, else all of ``TARGETS``)."""
    names = names or (("2d ring",) if quick else tuple(TARGETS))
    return {name: TARGETS[name]() for name in names}


def exact_flow_map(target: GaussianMixture, sigma_top: float, x_bar: Tensor) -> Tensor:
    """The exact probability-flow map of ``x̄ = x/scale`` from noise level ``sigma_top`` to ``σ = 0``:
    ``dx̄/dσ = -σ ∇log p_σ(x̄)`` (Karras et al., 2022), the flow of ``VESDE(1e-4, sigma_top)``, by
    ``samplers.optimize.flow_map`` at rtol = atol = 1e-9 down to ``σ = 1e-4``, then Tweedie's step there
    (error ``O(σ²)`` ≈ 1e-8)."""
    ve = VESDE(sigma_min=1e-4, sigma_max=sigma_top)
    return flow_map(target.score_fn(ve), ve, x_bar, eps=1e-9, tol=1e-9)[0]


@dataclass(frozen=True, eq=False)
class Problem:
    """One target under one SDE: ``sde`` (sgm's continuous grids), ``chain_sde`` (whose ``discretize(1000)`` is
    ``chain``: chain grids and the peers), the draw ``z``, sgm's start ``x_T = prior_std·z`` at the top noise
    level and the reference ``x_ref``, the exact flow map of ``x_T`` to ``σ = 0``."""

    target_name: str
    target: GaussianMixture
    sde_name: str
    sde: SDE
    chain_sde: SDE
    chain: DiscreteChain
    z: Tensor
    x_T: Tensor
    x_ref: Tensor

    def model_for(self, on_chain: bool):
        """``(score, path)`` for sgm's samplers: the chain's score on ``chain_sde`` (``on_chain_score``) for a chain
        spacing, else the exact score on the continuous ``sde``."""
        if on_chain:
            return on_chain_score(self.target, self.chain), self.chain_sde
        return self.target.score_fn(self.sde), self.sde

    def eps_at(self, x: Tensor, sigma: float) -> Tensor:
        """The exact noise prediction at noise level ``sigma`` (``eps_at``)."""
        return eps_at(self.target, x, sigma)

    def judge(self, x: Tensor, nfe: int, t0: float) -> dict:
        """A comparison row's scores: ``judge.judge_map`` against ``x_ref``."""
        return judge_map(x, self.x_ref, nfe, t0)


def make_problem(target_name: str, target: GaussianMixture, sde_name: str, n: int, seed: int) -> Problem:
    """The problem of ``target`` under ``sde_name`` ("vp" or "ve") with ``n`` draws from ``seed``."""
    if sde_name == "vp":
        chain_sde = VPSDE()
        chain = chain_sde.discretize(TRAIN_STEPS)
        # VPSDE(T)'s β(t) = β_min + (t/T)(β_max - β_min) integrates to T(β_min + β_max)/2 = -log ᾱ(T): match ᾱ_999.
        sde = VPSDE(T=-math.log(float(chain.alphas_cumprod[-1])) / ((chain_sde.beta_min + chain_sde.beta_max) / 2))
    elif sde_name == "ve":
        chain_sde = sde = VESDE()
        chain = chain_sde.discretize(TRAIN_STEPS)
    else:
        raise ValueError(f"sde_name must be 'vp' or 've', got {sde_name!r}")
    top = float(sde.noise_level(torch.tensor([sde.T], dtype=torch.float64)))
    assert math.isclose(top, float(chain.sigmas[-1]), rel_tol=1e-9), (top, float(chain.sigmas[-1]))
    z = torch.randn((n, target.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_T = sde.prior_std * z
    x_ref = exact_flow_map(target, float(chain.sigmas[-1]), x_T / chain.scale[-1])
    return Problem(target_name, target, sde_name, sde, chain_sde, chain, z, x_T, x_ref)


class OffChain(ValueError):
    """A solver asked a chain score for a time between the chain's timesteps."""


def on_chain_score(target: GaussianMixture, chain: DiscreteChain):
    """``target.chain_score_fn(chain)`` (the exact score of the chain's marginal at each timestep) at the chain's
    timestep times only: any other time raises ``OffChain``, so a sampler that evaluates between timesteps
    (Runge–Kutta stages, singlestep intermediate points) cannot run on the chain, where the nearest timestep's
    score would be silently wrong."""
    times, score = frozenset(chain.t.tolist()), target.chain_score_fn(chain)

    def checked(x: Tensor, t: Tensor) -> Tensor:
        off = set(t.tolist()) - times
        if off:
            raise OffChain(f"t={min(off)} is not a timestep of the chain")
        return score(x, t)

    return checked


def eps_at(target: GaussianMixture, x: Tensor, sigma: float) -> Tensor:
    """The exact noise prediction of the VP state ``x = scale·x_0 + std·z`` at noise level ``σ = std/scale``
    (``scale = 1/√(1 + σ²)``): ``ε = -std ∇log p(x)``."""
    scale = 1 / math.sqrt(1 + sigma**2)
    return target.perturbed_score(x, scale, sigma * scale).mul_(-sigma * scale)
