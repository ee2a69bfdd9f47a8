"""Langevin dynamics: annealed Langevin (NCSN) and the predictor–corrector sampler.

A Langevin step of size ``δ`` at a fixed noise level targets ``p_t``:  ``x ← x + δ s(x, t) + √(2δ) z``.

- Annealed Langevin (Song & Ermon, 2019, Alg. 1): at each noisy node ``i`` run ``T = n_steps_each`` steps
  of size ``δ_i = u·std_i²``. Entering node ``i`` the state is rescaled by ``scale_i/scale_{i-1}``:
  annealed Langevin runs on ``x/scale``, whose levels are the VE noise levels ``σ_i = std_i/scale_i`` of any
  SDE (an identity on VE, where it is NCSN exactly; on VP it keeps the modes where ``p_{t_i}`` has them).
  Step size: ``u = 0.2`` by default (twice NCSN's ``ε = 2e-5`` at ``σ_L = 0.01``; measured on random mixtures at 400
  levels, docs/samplers.md). With
  ``step_size="ncsnv2"``, Song & Ermon 2020's technique 4: for data at a point, ``p_{t_i}`` is ``N(0, σ_i²)`` on
  ``x/scale``; a state entering level ``i`` has variance ``γ² σ_i²`` and ``T`` steps
  ``x ← (1 - u)x + √(2u)σ_i z`` leave the variance ratio

      f(u) = (1 - u)^{2T} (γ² - c) + c,     c = 2/(2 - u)   (the discretised chain's stationary ratio),

  which is > 1 for every ``u``; ``u`` minimises it (golden-section search on (0, 1]), with the grid's mean
  ratio ``γ = (σ_0/σ_{L-1})^{1/(L-1)}`` (NCSN's geometric levels: their ``γ``; NCSNv2's ``ε = u σ_L²``).
  It steps less than the default (``u = 0.0385`` for 400 levels, 5 steps each) and measures worse on
  mixtures whose modes have a width (docs/samplers.md). With a number ``step_size = ε``, NCSN's rule:
  ``δ_i = α_i/2``, ``α_i = ε·std_i²/std_L²`` (``std_L`` the last noisy node's; NCSN: ``ε = 2e-5``).
- Predictor–corrector (Song et al., 2021, Alg. 1, as score_sde composes it): any one-step ``predictor``
  (``euler_maruyama``, ``reverse_diffusion``, ``ancestral``, ``ddim`` or ``none``: the state stays) to each node,
  then ``n_corrector`` steps of a ``corrector`` there: ``langevin`` (Alg. 4/5: ``δ = 2·r²·(snr·‖z‖/‖s‖)²`` with the
  norms averaged over the batch, as published), ``ald`` (score_sde's annealed Langevin corrector:
  ``δ = 2·r²·(snr·std_b)²``) or ``none``; ``r² = (scale_a/scale_b)²`` over the predictor's step (1 on VE,
  ``α_i = 1 - β_i`` on DDPM's chain). An option a part does not use is refused.

Langevin steps are not increments of a Brownian path in time: they draw ``noise()`` with no interval.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import integer, positive
from .grid import Node, TimeGrid
from ..checks import choice
from .noise import Noise
from .predictors import PREDICTORS, check_eta, check_variance
from .solver import Model, Solver

__all__ = ["AnnealedLangevin", "PredictorCorrector", "ncsnv2_step", "PC_PREDICTORS", "CORRECTORS"]

DEFAULT_U = 0.2  # the default δ/std² (NCSN's ε = 2e-5 at σ_L = 0.01 is 0.1); also "ncsnv2" on a one-level grid (no γ)


def langevin_step(x: Tensor, s: Tensor, delta: float, z: Tensor) -> Tensor:
    """``x + δ s + √(2δ) z``."""
    return x.add(s, alpha=delta).add_(z, alpha=math.sqrt(2 * delta))


def ncsnv2_step(gamma: float, n_steps: int) -> float:
    """The ``u`` in (0, 1] minimising ``f(u) = (1 - u)^{2T}(γ² - c) + c``, ``c = 2/(2 - u)``: the variance ratio
    ``n_steps = T`` Langevin steps ``δ = u σ²`` leave at a level ``σ`` entered with variance ``γ² σ²`` (see the
    module docstring); golden-section search to 1e-10."""
    def f(u: float) -> float:
        c = 2 / (2 - u)
        return (1 - u) ** (2 * n_steps) * (gamma**2 - c) + c

    lo, hi, k = 0.0, 1.0, (math.sqrt(5) - 1) / 2
    while hi - lo > 1e-10:
        a, b = hi - k * (hi - lo), lo + k * (hi - lo)
        lo, hi = (lo, b) if f(a) <= f(b) else (a, hi)
    return (lo + hi) / 2


class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics over the grid's noise levels: ``n_steps_each`` evaluations at each noisy
    node (the step from ``a`` to ``b`` runs node ``a``'s, ``finish`` the last node's), plus one for the final
    Tweedie step when the grid ends with the data. Step sizes ``δ_i = u·std_i²``: ``u = 0.2`` by default
    (``DEFAULT_U``), NCSNv2's ``u`` with ``step_size="ncsnv2"``, NCSN's
    ``δ_i = ½ step_size·std_i²/std_L²`` for a number ``step_size``. State: ``{node: δ}``."""

    # an MCMC at each level with a fixed step rule: it converges in neither the strong nor the weak sense as the
    # levels grow (its bias is set by u), so it declares no order
    name, stochastic, needs = "langevin", True, frozenset({"positive_alpha"})

    def __init__(self, n_steps_each: int = 5, step_size: float | str | None = None):
        self.n_steps_each = integer("n_steps_each", n_steps_each)
        if isinstance(step_size, str) and step_size != "ncsnv2":
            raise ValueError(f"step_size must be a positive number, None or 'ncsnv2', got {step_size!r}")
        self.step_size = step_size if step_size in (None, "ncsnv2") else positive("step_size", step_size)
        self.evals_per_step = self.final_evals = self.n_steps_each

    def init(self, x: Tensor, grid: TimeGrid) -> dict[Node, float]:
        noisy = grid.noisy
        if self.step_size is None or (self.step_size == "ncsnv2" and len(noisy) == 1):
            u = DEFAULT_U
        elif self.step_size == "ncsnv2":
            u = ncsnv2_step((noisy[0].noise_level / noisy[-1].noise_level) ** (1 / (len(noisy) - 1)), self.n_steps_each)
        else:
            return {n: 0.5 * self.step_size * (n.std / noisy[-1].std) ** 2 for n in noisy}
        return {n: u * n.std**2 for n in noisy}

    def _level(self, model: Model, x: Tensor, node: Node, deltas: dict[Node, float], noise: Noise) -> Tensor:
        delta = deltas[node]
        for _ in range(self.n_steps_each):
            x = langevin_step(x, model(x, node).score, delta, noise())
        return x

    def step(self, model: Model, x, a, b, state, noise):
        return self._level(model, x, a, state, noise).mul_(b.scale / a.scale), state

    def finish(self, model: Model, x, node, state, noise):
        return self._level(model, x, node, state, noise)


PC_PREDICTORS = tuple(PREDICTORS) + ("none",)
CORRECTORS = ("langevin", "ald", "none")


class PredictorCorrector(Solver):
    """Predictor–corrector (Song et al., 2021, Alg. 1): a ``predictor`` step to each node (``PC_PREDICTORS``), then
    ``n_corrector`` steps of the ``corrector`` (``CORRECTORS``) there at signal-to-noise ratio ``snr`` (defaults
    0.16 and 1). ``eta`` applies to the ``ddim`` predictor, ``variance`` to ``ancestral``; an option the chosen
    parts do not use is refused. Evaluations: the predictor's (1, or 0 for ``none``) plus ``n_corrector`` per step
    into a noisy node, 1 into the data node."""

    stochastic = True  # the corrector's fixed-snr moves leave a bias of their own: no declared order

    def __init__(self, predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float | None = None,
                 n_corrector: int | None = None, eta: float | None = None, variance: str | None = None):
        choice("predictor", predictor, PC_PREDICTORS)
        self.corrector = choice("corrector", corrector, CORRECTORS)
        if corrector == "none" and (snr is not None or n_corrector is not None):
            raise ValueError("snr and n_corrector set the corrector's steps; corrector='none' takes neither")
        if eta is not None and predictor != "ddim":
            raise ValueError(f"eta applies to the ddim predictor, not to predictor={predictor!r}")
        if variance is not None and predictor != "ancestral":
            raise ValueError(f"variance applies to the ancestral predictor, not to predictor={predictor!r}")
        self.snr = 0.16 if snr is None else positive("snr", snr)
        self.n_corrector = 0 if corrector == "none" else (1 if n_corrector is None else integer("n_corrector",
                                                                                               n_corrector, 0))
        options = {"eta": check_eta(eta)} if eta is not None else {}
        options.update({"variance": check_variance(variance)} if variance is not None else {})
        self.predictor = None if predictor == "none" else PREDICTORS[predictor](**options)
        self.needs = frozenset() if self.predictor is None else self.predictor.needs
        self.samplewise = corrector != "langevin"  # its step size averages norms over the batch
        self.evals_per_step = int(self.predictor is not None) + self.n_corrector
        self.name = f"pc ({predictor}, {corrector})"

    def step(self, model: Model, x, a, b, state, noise):
        if self.predictor is not None:
            x, state = self.predictor.step(model, x, a, b, state, noise)
        r2 = (a.scale / b.scale) ** 2
        for _ in range(self.n_corrector):
            s = model(x, b).score
            z = noise()
            if self.corrector == "langevin":
                tiny = torch.finfo(x.dtype).tiny
                ratio = float(z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(tiny))
                delta = 2 * r2 * (self.snr * ratio) ** 2
            else:
                delta = 2 * r2 * (self.snr * b.std) ** 2
            x = langevin_step(x, s, delta, z)
        return x, state
