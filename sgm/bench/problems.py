"""The problems of the sweep: exact-score targets under each path, each with one start and one reference.

A problem fixes, for one target and path, one top noise level ``σ_top`` (``σ = std/scale``), one draw
``z ~ N(0, I)``, sgm's start ``x_T = prior_std·z`` at ``σ_top``, and the reference ``x_ref``: the exact
probability-flow map of ``x_T`` from ``σ_top`` to ``σ = 0`` (``exact_flow_map``; from the exact top ``t = 1`` of
rectified flow, where ``σ_top = ∞``, ``exact_rf_flow_map``).

- VP: the chain is DDPM's, ``VPSDE().discretize(1000)`` (β linear 1e-4 … 0.02), ``σ_top = σ_999 ≈ 157``.
  sgm's continuous grids run on ``VPSDE(T=T*)``, the same β(t/T) run to the ``T*`` where its marginal equals
  the chain's at ``i = 999`` (``T* ≈ 1.0067``): every side starts at the same noise level from the same ``z``.
- VE: ``VESDE()`` (σ 0.01 … 50), ``σ_top = 50``; its chain is NCSN's 1000 geometric levels.
- RF: ``RectifiedFlow()`` from its exact top ``t = 1`` (``α = 0``, ``x_T = z``), and the same problem on
  ``RectifiedFlow(3)`` (SD3's shift: the same marginals on another clock, so the same ``x_T`` and reference); the
  chain of each is the path itself at ``t_i = (i+1)/1000``.
- EDM: ``EDMPath()`` (``α = 1``, ``σ = t``), ``σ_top = 80``; its chain the path at ``t_i = 0.08 (i+1)``.

Each problem lists its ``variants``: the paths sgm's side runs on, each with the path whose chain its chain grids
use. The exact model the runs use is ``exact_model`` (the score, or ``x̂_0`` where ``α(T) = 0``); on a chain grid
``chain_model`` (exact at the chain's timesteps only). The peers get the exact noise prediction at a noise level
(``eps_at``) or the exact flow velocity at a flow sigma (``velocity_at``).

What the runs and the peers ask of a problem (``Problem`` here, ``trained.TrainedProblem`` for a network): the
fields ``target_name, sde_name, chain, z, x_T, x_ref, variants`` and the methods ``model_for(variant, on_chain)``
(the model and path sgm's samplers run on), ``eps_at(x, sigma)`` (the VP-chain peers' noise prediction) and
``judge(x, nfe, t0)`` (a comparison row's scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import SDE, VESDE, VPSDE, DiscreteChain, EDMPath, GaussianMixture, RectifiedFlow, random_mixture, ring_mixture
from ..samplers import TimeGrid
from ..samplers.optimize import flow_map
from ..samplers.probability_flow import AdaptiveODE
from ..samplers.solver import integrate
from .judge import judge_map, map_sw2

__all__ = ["TARGETS", "TRAIN_STEPS", "PATHS", "RF_SHIFTS", "REFERENCE_TOL", "Variant", "Problem", "make_problem",
           "make_targets", "exact_flow_map", "exact_rf_flow_map", "exact_model", "chain_model", "OffChain",
           "on_chain", "on_chain_score", "eps_at", "velocity_at"]

TARGETS = {"2d ring": ring_mixture, "16d mixture": lambda: random_mixture(16, seed=0),
           "64d mixture": lambda: random_mixture(64, seed=1)}
TRAIN_STEPS = 1000  # the chain's length: DDPM's and NCSN's
PATHS = ("vp", "ve", "rf", "edm")  # the path names make_problem takes
RF_SHIFTS = (1.0, 3.0)  # the rectified-flow clocks sgm's side runs on: the identity and SD3's shift 3
REFERENCE_TOL = 1e-9  # dopri5's rtol = atol for every reference map
REFERENCE_END = 1e-4  # where the reference's ODE stops and Tweedie's step takes it to σ = 0 (error O(σ²) ≈ 1e-8)


def make_targets(quick: bool, names=None) -> dict[str, GaussianMixture]:
    """The targets named (default: the 2-D ring with ``quick``, else all of ``TARGETS``)."""
    names = names or (("2d ring",) if quick else tuple(TARGETS))
    return {name: TARGETS[name]() for name in names}


def exact_flow_map(target: GaussianMixture, sigma_top: float, x_bar: Tensor) -> Tensor:
    """The exact probability-flow map of ``x̄ = x/scale`` from noise level ``sigma_top`` to ``σ = 0``:
    ``dx̄/dσ = -σ ∇log p_σ(x̄)`` (Karras et al., 2022), the flow of ``VESDE(1e-4, sigma_top)``, by
    ``samplers.optimize.flow_map`` at rtol = atol = 1e-9 down to ``σ = 1e-4``, then Tweedie's step there
    (error ``O(σ²)`` ≈ 1e-8)."""
    ve = VESDE(sigma_min=REFERENCE_END, sigma_max=sigma_top)
    return flow_map(target.score_fn(ve), ve, x_bar, eps=REFERENCE_TOL, tol=REFERENCE_TOL)[0]


def exact_rf_flow_map(target: GaussianMixture, x: Tensor, t: float = 1.0) -> Tensor:
    """The exact probability-flow map of the state ``x`` at time ``t`` of ``RectifiedFlow()`` (``x = (1 - t) x_0 +
    t ε``; at ``t = 1``, where ``α = 0``, ``x`` is pure noise and the noise level infinite) to ``σ = 0``: the
    velocity ODE ``dx/dt = ε̂ - x̂_0`` by dopri5 at rtol = atol = 1e-9 from ``t`` down to ``t = 1e-4``, then
    Tweedie's step there (error ``O(t²)`` ≈ 1e-8). Every shift of rectified flow has this map (the same marginals
    on another clock)."""
    rf = RectifiedFlow()
    grid = TimeGrid.from_times(rf, [t, REFERENCE_END])
    return integrate(AdaptiveODE("dopri5", REFERENCE_TOL, REFERENCE_TOL), target.prediction_fn(rf, "x0"), rf, x,
                     grid).x


@dataclass(frozen=True)
class Variant:
    """A path sgm's side runs a problem on: its ``label`` in row names ("" for the problem's own path), the path
    ``sde`` of its continuous grids and the path ``chain_sde`` whose ``discretize(1000)`` its chain grids use."""

    label: str
    sde: SDE
    chain_sde: SDE


@dataclass(frozen=True, eq=False)
class Problem:
    """One target under one path: ``sde`` (sgm's continuous grids), ``chain_sde`` (whose ``discretize(1000)`` is
    ``chain``: chain grids and the VP-chain peers), the draw ``z``, sgm's start ``x_T = prior_std·z`` at the top
    noise level, the reference ``x_ref`` (the exact flow map of ``x_T`` to ``σ = 0``), the ``variants`` sgm's side
    runs on (the first is ``sde`` itself), a target sample ``reference`` of the same size and ``sw2_floor``, the SW₂
    of ``x_ref`` against it (``judge.map_sw2``): ``x_ref`` is an exact draw of the target, so the floor of a run's
    SW₂ at this sample size."""

    target_name: str
    target: GaussianMixture
    sde_name: str
    sde: SDE
    chain_sde: SDE
    chain: DiscreteChain
    z: Tensor
    x_T: Tensor
    x_ref: Tensor | None
    variants: tuple = ()
    reference: Tensor | None = None
    sw2_floor: float = float("nan")

    def __post_init__(self):
        if not self.variants:
            object.__setattr__(self, "variants", (Variant("", self.sde, self.chain_sde),))

    def model_for(self, variant: Variant, on_chain: bool):
        """``(model, path)`` for sgm's samplers on ``variant``: ``chain_model`` on its ``chain_sde`` for a chain
        spacing, else ``exact_model`` on its continuous ``sde``."""
        if on_chain:
            return chain_model(self.target, variant.chain_sde), variant.chain_sde
        return exact_model(self.target, variant.sde), variant.sde

    def eps_at(self, x: Tensor, sigma: float) -> Tensor:
        """The exact noise prediction at noise level ``sigma`` (``eps_at``)."""
        return eps_at(self.target, x, sigma)

    def judge(self, x: Tensor | None, nfe: int, t0: float) -> dict:
        """A comparison run's scores (``judge.judge_map``: map error against ``x_ref``, SW₂ against ``reference``)
        and the problem's ``sw2_floor``."""
        return {**judge_map(x, self.x_ref, nfe, t0, self.reference), "sw2_floor": self.sw2_floor}


def _vp_paths() -> tuple[SDE, SDE]:
    chain_sde = VPSDE()
    chain = chain_sde.discretize(TRAIN_STEPS)
    # VPSDE(T)'s β(t) = β_min + (t/T)(β_max - β_min) integrates to T(β_min + β_max)/2 = -log ᾱ(T): match ᾱ_999.
    T = -math.log(float(chain.alphas_cumprod[-1])) / ((chain_sde.beta_min + chain_sde.beta_max) / 2)
    return VPSDE(T=T), chain_sde


def make_problem(target_name: str, target: GaussianMixture, sde_name: str, n: int, seed: int,
                 flow_map: bool = True) -> Problem:
    """The problem of ``target`` under the path ``sde_name`` (one of ``PATHS``) with ``n`` draws ``z`` from ``seed``
    and the target sample ``reference`` from ``seed + 2`` (the curves' reference sample); without ``flow_map`` no
    exact map ``x_ref`` (None, ``sw2_floor`` NaN: a stochastic run is judged against the target, not a map)."""
    if sde_name not in PATHS:
        raise ValueError(f"sde_name must be one of {PATHS}, got {sde_name!r}")
    z = torch.randn((n, target.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    reference = target.sample(n, generator=torch.Generator().manual_seed(seed + 2))
    if sde_name == "rf":
        paths = [RectifiedFlow(shift) for shift in RF_SHIFTS]
        variants = tuple(Variant("" if p.shift == 1 else f"shift {p.shift:g}", p, p) for p in paths)
        sde = chain_sde = paths[0]
        x_T, x_ref = z.clone(), exact_rf_flow_map(target, z) if flow_map else None
    else:
        sde, chain_sde = {"vp": _vp_paths, "ve": lambda: (VESDE(),) * 2, "edm": lambda: (EDMPath(),) * 2}[sde_name]()
        chain = chain_sde.discretize(TRAIN_STEPS)
        top = float(sde.noise_level(torch.tensor([sde.T], dtype=torch.float64)))
        assert math.isclose(top, float(chain.sigmas[-1]), rel_tol=1e-9), (top, float(chain.sigmas[-1]))
        x_T = sde.prior_std * z
        x_ref = exact_flow_map(target, float(chain.sigmas[-1]), x_T / chain.scale[-1]) if flow_map else None
        variants = ()
    return Problem(target_name, target, sde_name, sde, chain_sde, chain_sde.discretize(TRAIN_STEPS), z, x_T, x_ref,
                   variants, reference, map_sw2(x_ref, reference) if flow_map else float("nan"))


def exact_model(target: GaussianMixture, sde: SDE):
    """The exact model sgm's runs use on path ``sde``: the score where ``α(T) > 0`` (VP, VE, EDM), ``x̂_0`` where
    ``α(T) = 0`` (rectified flow: a score gives no ``x̂_0`` at the exact top, where every run starts)."""
    if float(sde.alpha(torch.tensor([sde.T], dtype=torch.float64))) > 0:
        return target.score_fn(sde)
    return target.prediction_fn(sde, "x0")


class OffChain(ValueError):
    """A solver asked a chain model for a time between the chain's timesteps."""


def on_chain(model, chain: DiscreteChain):
    """``model`` at the chain's timestep times only: any other time raises ``OffChain``, so a sampler that evaluates
    between timesteps (Runge–Kutta stages, singlestep intermediate points) cannot run on the chain, where the
    nearest timestep's value would be silently wrong. Keeps ``model.predicts``."""
    times = frozenset(chain.t.tolist())

    def checked(x: Tensor, t: Tensor) -> Tensor:
        off = set(t.tolist()) - times
        if off:
            raise OffChain(f"t={min(off)} is not a timestep of the chain")
        return model(x, t)

    if hasattr(model, "predicts"):
        checked.predicts = model.predicts
    return checked


def on_chain_score(target: GaussianMixture, chain: DiscreteChain):
    """``target.chain_score_fn(chain)`` (the exact score of the chain's marginal at each timestep) on the chain's
    timesteps only (``on_chain``)."""
    return on_chain(target.chain_score_fn(chain), chain)


def chain_model(target: GaussianMixture, chain_sde: SDE):
    """The exact model on the chain grids of ``chain_sde.discretize(1000)``, at its timesteps only: the chain's score
    (``on_chain_score``) where ``α(T) > 0``; where ``α(T) = 0`` (rectified flow, whose chain is the path itself at
    its timesteps) the path's ``x̂_0`` there (``exact_model``)."""
    chain = chain_sde.discretize(TRAIN_STEPS)
    model = exact_model(target, chain_sde)
    if getattr(model, "predicts", "score") == "score":
        return on_chain_score(target, chain)
    alpha, sigma = chain_sde.marginal(chain.t)
    assert torch.equal(alpha, chain.scale) and torch.equal(sigma, chain.std), "the chain is not the path"
    return on_chain(model, chain)


def eps_at(target: GaussianMixture, x: Tensor, sigma: float) -> Tensor:
    """The exact noise prediction of the VP state ``x = scale·x_0 + std·z`` at noise level ``σ = std/scale``
    (``scale = 1/√(1 + σ²)``): ``ε = -std ∇log p(x)``."""
    scale = 1 / math.sqrt(1 + sigma**2)
    return target.perturbed_score(x, scale, sigma * scale).mul_(-sigma * scale)


def velocity_at(target: GaussianMixture, x: Tensor, sigma: float) -> Tensor:
    """The exact flow velocity ``dx/dσ = ε̂ - x̂_0`` of the rectified-flow state ``x = (1 - σ) x_0 + σ ε`` at the flow
    sigma ``σ ∈ [0, 1]`` (diffusers' ``flow_prediction``: ``RectifiedFlow()``'s velocity at ``t = σ``);
    ``ValueError`` for a σ outside ``[0, 1]``, which is no state of the path."""
    if not 0 <= sigma <= 1:
        raise ValueError(f"flow sigma {sigma:g} is outside [0, 1]: no state of rectified flow")
    rf = RectifiedFlow()
    return target.predict(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), rf, "velocity")
