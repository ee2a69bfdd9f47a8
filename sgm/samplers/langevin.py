"""Langevin dynamics: annealed Langevin (NCSN) and the predictor–corrector sampler.

A Langevin step of size ``δ`` at a fixed noise level targets ``p_t``:  ``x ← x + δ s(x, t) + √(2δ) z``.

- Annealed Langevin (Song & Ermon, 2019, Alg. 1): at each noisy node ``i`` run ``n_steps_each`` steps
  with ``δ_i = α_i/2``, ``α_i = ε·std_i²/std_L²`` (``ε = step_size``; ``std_L`` the last noisy node's).
  The default ``ε = 0.2·std_L²`` is NCSN's ``ε = 2e-5`` at its ``σ_L = 0.01``, for any ``σ_L``.
  Entering node ``i`` the state is rescaled by ``scale_i/scale_{i-1}``: annealed Langevin runs on
  ``x/scale``, whose levels are the VE noise levels ``σ_i = std_i/scale_i`` of any SDE (an identity on
  VE, where it is NCSN exactly; on VP it keeps the modes where ``p_{t_i}`` has them).
- Corrector (Song et al., 2021, Alg. 4/5): ``δ = 2·r²·(snr·‖z‖/‖s‖)²`` with the norms averaged over the
  batch, as published, and ``r² = (scale_a/scale_b)²`` over the predictor's step (1 on VE,
  ``α_i = 1 - β_i`` on DDPM's chain).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sde import _check_steps, _positive
from .grid import Node, TimeGrid
from .predictors import PREDICTORS, check_eta, check_variance
from .solver import Model, Noise, Solver

__all__ = ["AnnealedLangevin", "PredictorCorrector"]


def langevin_step(x: Tensor, s: Tensor, delta: float, z: Tensor) -> Tensor:
    """``x + δ s + √(2δ) z``."""
    return x.add(s, alpha=delta).add_(z, alpha=math.sqrt(2 * delta))


def _count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {n!r}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics over the grid's noise levels: ``n_steps_each`` evaluations at each noisy
    node (the step from ``a`` to ``b`` runs node ``a``'s, ``finish`` the last node's), plus one for the final
    Tweedie step when the grid ends with the data. State: the last noisy node's ``std_L``."""

    name, order, stochastic = "langevin", 1, True

    def __init__(self, n_steps_each: int = 5, step_size: float | None = None):
        self.n_steps_each = _check_steps("n_steps_each", n_steps_each)
        self.step_size = None if step_size is None else _positive("step_size", step_size)
        self.evals_per_step = self.final_evals = self.n_steps_each

    def init(self, x: Tensor, grid: TimeGrid) -> float:
        return grid.noisy[-1].std

    def _level(self, model: Model, x: Tensor, node: Node, std_last: float, noise: Noise) -> Tensor:
        step_size = 0.2 * std_last**2 if self.step_size is None else self.step_size
        delta = 0.5 * step_size * (node.std / std_last) ** 2
        for _ in range(self.n_steps_each):
            x = langevin_step(x, model(x, node).score, delta, noise())
        return x

    def step(self, model: Model, x, a, b, state, noise):
        return self._level(model, x, a, state, noise).mul_(b.scale / a.scale), state

    def finish(self, model: Model, x, node, state, noise):
        return self._level(model, x, node, state, noise)


class PredictorCorrector(Solver):
    """Predictor–corrector (Song et al., 2021, Alg. 1): a ``predictor`` step to each node, then
    ``n_corrector`` Langevin corrector steps there at signal-to-noise ratio ``snr``.
    ``eta`` applies to the ``ddim`` predictor, ``variance`` to ``ancestral``.
    Evaluations: ``1 + n_corrector`` per step into a noisy node, 1 into the data node."""

    name, order, stochastic = "pc", 1, True

    def __init__(self, predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector: int = 1,
                 eta: float = 0.0, variance: str = "posterior"):
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {tuple(PREDICTORS)}, got {predictor!r}")
        self.snr = _positive("snr", snr)
        self.n_corrector = _count("n_corrector", n_corrector)
        options = {"ddim": {"eta": check_eta(eta)}, "ancestral": {"variance": check_variance(variance)}}
        self.predictor = PREDICTORS[predictor](**options.get(predictor, {}))
        self.evals_per_step = 1 + self.n_corrector
        self.name = f"pc ({predictor})"

    def step(self, model: Model, x, a, b, state, noise):
        x, state = self.predictor.step(model, x, a, b, state, noise)
        r2 = (a.scale / b.scale) ** 2
        for _ in range(self.n_corrector):
            s = model(x, b).score
            z = noise()
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
            x = langevin_step(x, s, float(2 * r2 * (self.snr * ratio) ** 2), z)
        return x, state
