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
from tqdm.auto import tqdm

from ..sde import SDE, _check_steps, _positive
from .base import CheckedScore, SamplerOutput, check_state, randn_like, run_steps, tweedie
from .grid import Node, TimeGrid
from .predictors import PREDICTOR_STEPS, check_eta, check_variance

__all__ = ["langevin", "pc"]


def langevin_step(x: Tensor, s: Tensor, delta: float, z: Tensor) -> Tensor:
    """``x + δ s + √(2δ) z``."""
    return x.add(s, alpha=delta).add_(z, alpha=math.sqrt(2 * delta))


def _count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {n!r}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


@torch.no_grad()
def langevin(score, sde: SDE, x: Tensor, grid: TimeGrid, *, n_steps_each: int = 5, step_size: float | None = None,
             generator=None, progress: bool = False) -> SamplerOutput:
    """Annealed Langevin dynamics over the grid's noise levels; ``n_steps_each`` evaluations per level,
    plus one for the final Tweedie step when the grid ends with the data."""
    x = check_state(x)
    n_steps_each = _check_steps("n_steps_each", n_steps_each)
    score = score if isinstance(score, CheckedScore) else CheckedScore(score)
    noisy = grid.noisy
    last = noisy[-1]
    step_size = 0.2 * last.std**2 if step_size is None else _positive("step_size", step_size)
    with tqdm(total=len(noisy) * n_steps_each, desc="langevin", disable=not progress, leave=False) as bar:
        for prev, node in zip((noisy[0],) + noisy[:-1], noisy):
            x = x * (node.scale / prev.scale)
            delta = 0.5 * step_size * (node.std / last.std) ** 2
            for _ in range(n_steps_each):
                x = langevin_step(x, score(x, node.t), delta, randn_like(x, generator))
                bar.update()
    if grid.denoise:
        x = tweedie(x, score(x, last.t), last)
    return SamplerOutput(x, score.nfe)


def pc(score, sde: SDE, x: Tensor, grid: TimeGrid, *, predictor: str = "reverse_diffusion", snr: float = 0.16,
       n_corrector: int = 1, eta: float = 0.0, variance: str = "posterior", generator=None,
       progress: bool = False) -> SamplerOutput:
    """Predictor–corrector (Song et al., 2021, Alg. 1): a ``predictor`` step to each node, then
    ``n_corrector`` Langevin corrector steps there at signal-to-noise ratio ``snr``.
    ``eta`` applies to the ``ddim`` predictor, ``variance`` to ``ancestral``.
    Evaluations: ``1 + n_corrector`` per step into a noisy node, 1 into the data node."""
    if predictor not in PREDICTOR_STEPS:
        raise ValueError(f"predictor must be one of {tuple(PREDICTOR_STEPS)}, got {predictor!r}")
    snr = _positive("snr", snr)
    n_corrector = _count("n_corrector", n_corrector)
    options = {"ddim": {"eta": check_eta(eta)}, "ancestral": {"variance": check_variance(variance)}}.get(predictor, {})
    predictor_step = PREDICTOR_STEPS[predictor]

    def step(x, s, a, b, sde, generator):
        return predictor_step(x, s, a, b, sde, generator, **options)

    def correct(x: Tensor, a: Node, b: Node, score: CheckedScore) -> Tensor:
        r2 = (a.scale / b.scale) ** 2
        for _ in range(n_corrector):
            s = score(x, b.t)
            z = randn_like(x, generator)
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
            x = langevin_step(x, s, float(2 * r2 * (snr * ratio) ** 2), z)
        return x

    return run_steps(step, score, sde, x, grid, generator, progress, f"pc ({predictor})", after=correct)
