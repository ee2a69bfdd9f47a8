"""One-evaluation-per-step samplers: a transition from node ``a`` to the less noisy node ``b``.

Notation for a transition (``s = s(x, t_a)``, ``h = t_a - t_b``; nodes carry ``(scale, std)``): the forward process
moves ``x_b ↦ x_a = r·x_b + √v·z``, with ``r``, ``v`` and DDPM's posterior coefficients from ``Node.transition``
(``grid.Transition``). Each is a
``Solver`` of one evaluation per step (the model at ``(x, t_a)``); ``integrate`` takes the step into the data node by
Tweedie's formula. Ancestral sampling and DDIM are written in ``x̂_0`` and ``ε̂`` (``Prediction.combine``), so they
start from pure noise where ``α = 0``; Euler–Maruyama and the reverse-diffusion predictor discretise the SDE's drift,
which is infinite there (``needs = {"positive_alpha"}``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import real
from ..paths import GaussianPath
from ..predictions import Prediction
from .grid import Node
from .noise import Noise
from .solver import Model, Solver

__all__ = ["EulerMaruyama", "ReverseDiffusion", "Ancestral", "DDIM", "PREDICTORS", "ANCESTRAL_VARIANCES"]

ANCESTRAL_VARIANCES = ("posterior", "beta", "analytic")


# Each step is written as one new tensor updated in place (x·α, then += β·s, += γ·z): on large CPU batches
# every temporary costs a fresh allocation, and these steps run within 1.2× of a bare torch loop
# (benchmarks/sampler_speed.py).

def euler_maruyama_step(p: Prediction, a: Node, b: Node, sde: GaussianPath, z: Tensor) -> Tensor:
    """Reverse SDE, Euler–Maruyama: ``x_b = x - [f(t_a) x - g(t_a)² s] h + g(t_a) √h z``."""
    h = a.t - b.t
    t = torch.tensor(a.t, dtype=torch.float64)
    f, g2 = float(sde.drift_coefficient(t)), float(sde.diffusion_squared(t))
    return p.combine(1 - f * h, score=h * g2).add_(z, alpha=math.sqrt(g2 * h))


def reverse_diffusion_step(p: Prediction, a: Node, b: Node, z: Tensor) -> Tensor:
    """Song et al. (2021)'s reverse diffusion predictor on the chain ``x_a = r x_b + √v z``:
    ``x_b = x - (r - 1) x + v s + √v z``."""
    r, v = a.transition(b)[:2]
    return p.combine(2 - r, score=v).add_(z, alpha=math.sqrt(v))


def ancestral_step(p: Prediction, a: Node, b: Node, z: Tensor, variance: str = "posterior",
                   gamma=None) -> Tensor:
    """Ancestral sampling: the posterior mean
    ``E[x_b | x_a, x_0 = x̂_0] = (r std_b²/std_a²) x + (scale_b v/std_a²) x̂_0`` (``= (x + v s)/r`` where ``r > 0``)
    plus ``σ z``, with ``σ² = std_b² v / std_a²`` (``posterior``: DDPM's β̃, SMLD's), ``σ² = v`` (``beta``: DDPM's β) or
    Analytic-DPM's ``β̃ + (scale_b v/std_a²)² Var[x_0|x_a]`` from the Γ estimate ``gamma`` (``analytic``)."""
    step = a.transition(b)
    if variance == "analytic":
        var = gamma.reverse_variance((a.scale, a.std), (b.scale, b.std))
    else:
        var = step.v if variance == "beta" else step.posterior_var
    return p.combine(step.c_x, x0=step.c_0).add_(z, alpha=math.sqrt(var))


def ddim_step(p: Prediction, a: Node, b: Node, noise: Noise, eta: float = 0.0, gamma=None) -> Tensor:
    """DDIM (Song, Meng & Ermon, 2021): ``x_b = scale_b x̂_0 + √(std_b² - c²) ε̂ + σ z``,
    ``c = η std_b √v / std_a``, ``σ = c``. ``η = 0`` is the exponential integrator of the probability-flow ODE (exact
    for constant ε̂); from pure noise (``scale_a = 0``) it is ``scale_b x̂_0 + std_b ε̂``. With a Γ estimate
    ``gamma``, ``σ²`` is Analytic-DDIM's ``c² + (scale_b - √(std_b² - c²) scale_a/std_a)² Var[x_0|x_a]``."""
    c = eta * b.std * math.sqrt(a.transition(b).v) / a.std
    k = math.sqrt(max(b.std**2 - c**2, 0.0))
    sigma = c if gamma is None else math.sqrt(gamma.reverse_variance((a.scale, a.std), (b.scale, b.std), c**2))
    x = p.combine(x0=b.scale, eps=k)
    return x.add_(noise(a.t, b.t), alpha=sigma) if sigma > 0 else x


def check_variance(variance) -> str:
    if variance not in ANCESTRAL_VARIANCES:
        raise ValueError(f"variance must be one of {ANCESTRAL_VARIANCES}, got {variance!r}")
    return variance


def check_gamma(gamma, variance: str):
    """The Γ estimate (``sgm.bounds.GammaEstimate``) that ``variance="analytic"`` needs, and only it."""
    if variance == "analytic" and not (hasattr(gamma, "reverse_variance") and hasattr(gamma, "timestep")):
        raise TypeError("gamma must be a GammaEstimate (sgm.likelihood.estimate_gamma on the sampling chain) for "
                        f"variance='analytic', got {type(gamma).__name__}")
    if variance != "analytic" and gamma is not None:
        raise ValueError(f"gamma is used only with variance='analytic', got variance={variance!r}")
    return gamma


def check_gamma_grid(gamma, grid) -> None:
    """Before sampling: every noisy node of ``grid`` is a timestep of ``gamma``'s chain with an estimate."""
    for node in grid.noisy:
        gamma.at(gamma.timestep(node.scale, node.std))


def check_eta(eta) -> float:
    return real("eta", eta, 0.0)


class EulerMaruyama(Solver):
    """Euler–Maruyama on the reverse-time SDE ``dx = [f - g² s] dt + g dW̄``. One evaluation per step."""

    name, stochastic, needs = "euler_maruyama", True, frozenset({"positive_alpha"})
    strong_order, weak_order = 1.0, 1.0  # the reverse SDE's noise is additive (g(t) free of x): strong order 1

    def step(self, model: Model, x, a, b, state, noise):
        return euler_maruyama_step(model(x, a), a, b, model.sde, noise(a.t, b.t)), state


class ReverseDiffusion(Solver):
    """Song et al. (2021)'s reverse diffusion predictor. One evaluation per step."""

    name, stochastic, needs = "reverse_diffusion", True, frozenset({"positive_alpha"})
    strong_order, weak_order = 1.0, 1.0

    def step(self, model: Model, x, a, b, state, noise):
        return reverse_diffusion_step(model(x, a), a, b, noise(a.t, b.t)), state


class Ancestral(Solver):
    """Ancestral sampling (DDPM on VP, Ho et al. 2020 Alg. 2; SMLD on VE) with ``variance`` β̃ (``posterior``),
    β (``beta``) or Analytic-DPM's optimum (``analytic``, Bao et al. 2022; needs ``gamma``, a Γ estimate on the
    chain whose timesteps the grid visits). One evaluation per step."""

    name, stochastic, strong_order, weak_order = "ancestral", True, 1.0, 1.0

    def __init__(self, variance: str = "posterior", gamma=None):
        self.variance = check_variance(variance)
        self.gamma = check_gamma(gamma, self.variance)

    def init(self, x, grid):
        if self.gamma is not None:
            check_gamma_grid(self.gamma, grid)

    def step(self, model: Model, x, a, b, state, noise):
        return ancestral_step(model(x, a), a, b, noise(a.t, b.t), self.variance, self.gamma), state


class DDIM(Solver):
    """DDIM with stochasticity ``eta`` (0: deterministic, DPM-Solver-1; 1: DDPM's ancestral step with β̃), or
    Analytic-DDIM's optimal noise for that ``eta`` (``variance="analytic"`` with ``gamma``; Bao et al. 2022).
    One evaluation per step."""

    name = "ddim"

    def __init__(self, eta: float = 0.0, variance: str | None = None, gamma=None):
        self.eta = check_eta(eta)
        if variance not in (None, "analytic"):
            raise ValueError(f"variance must be None (DDIM's own η noise) or 'analytic', got {variance!r}")
        self.variance, self.gamma = variance, check_gamma(gamma, variance)
        self.stochastic = self.eta > 0 or variance == "analytic"
        if self.stochastic:
            self.strong_order, self.weak_order = 1.0, 1.0
        else:
            self.ode_order = 1

    def init(self, x, grid):
        if self.gamma is not None:
            check_gamma_grid(self.gamma, grid)

    def step(self, model: Model, x, a, b, state, noise):
        return ddim_step(model(x, a), a, b, noise, self.eta, self.gamma), state


PREDICTORS = {cls.name: cls for cls in (EulerMaruyama, ReverseDiffusion, Ancestral, DDIM)}
