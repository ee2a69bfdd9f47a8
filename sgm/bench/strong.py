"""The stochastic leg's strong error: how far a run lies from the same sampler's fine-step solution on the same
Brownian paths,

    strong(K) = ( (1/m) Σ_i ‖x_K,i - x_ref,i‖² )^½        over the first ``m = STRONG_SAMPLES`` draws of the problem,

(all of them when the problem has fewer), ``x_ref`` the same configuration (options, spacing, path) within
``REFERENCE_NFE`` evaluations, its step count in the row's ``strong_reference_steps``. Both runs start from the
same ``x_T`` and are driven by the same path:

- **sgm**: ``BrownianNoise`` of per-sample seeds (``seeds``: sample ``i`` has its own virtual Brownian tree, so a
  subset of ``m`` runs as it would in the full batch), from the problem's first ``m`` ``x_T``;
- **k-diffusion**: its own ``BrownianTreeNoiseSampler`` with one seed over the ``m`` draws (``peers.k_diffusion``,
  ``strong_error``), the same tree at every step count;
- **diffusers**: none (``nan``; the tables print "n/a"). Its schedulers take one generator and draw a fresh normal
  at each step, so a run of 10 steps and one of 500 do not share a path. (``DPMSolverSDEScheduler`` has a Brownian
  tree, but over the σ range of the timesteps it is set to, which moves with the step count.)

The cost is bounded: ``m`` draws rather than the leg's ``n``, and one reference per configuration and path for all
budgets. The distribution metrics of a row come from its own run of all ``n`` draws (generator noise), not these.
"""
from __future__ import annotations

import math

from .. import samplers
from ..samplers import sample
from .judge import rms_distance
from .peers import k_diffusion
from .problems import TRAIN_STEPS, Problem

__all__ = ["STRONG_SAMPLES", "REFERENCE_NFE", "sample_seeds", "sgm_strong_error",
           "with_strong_errors"]

STRONG_SAMPLES = 128
REFERENCE_NFE = 500


def sample_seeds(seed: int, m: int) -> list[int]:
    """The per-sample seeds of the strong runs: sample ``i`` of the leg seeded ``seed`` has ``(seed + 10)·2²⁰ + i``."""
    return [(seed + 10) * 2**20 + i for i in range(m)]


def _sgm_run(problem: Problem, row: dict, steps: int, seeds: list[int]):
    variant = next(v for v in problem.variants if v.label == row["variant"])
    score, sde = problem.model_for(variant, row["spacing"] in ("trailing", "leading"))
    x_T = problem.x_T[: len(seeds)]
    try:
        return sample(score, sde, tuple(x_T.shape), sampler=row["name"], x_init=x_T, steps=steps,
                      spacing=row["spacing"], train_steps=TRAIN_STEPS, seeds=seeds, noise="brownian",
                      **row["options"]).x
    except (ValueError, RuntimeError):  # diverged, or a solver refusing the grid: no strong error
        return None


def sgm_strong_error(problem: Problem, row: dict, seed: int, samples: int = STRONG_SAMPLES,
                     reference_nfe: int = REFERENCE_NFE, cache: dict | None = None) -> dict:
    """``strong_error`` and ``strong_reference_steps`` of an sgm stochastic-leg ``row`` (its ``name``, ``options``,
    ``spacing``, ``variant`` and ``steps``); ``cache`` keeps each reference run for the other budgets."""
    steps = samplers.solver(row["name"], **row["options"]).steps_for_nfe(reference_nfe)
    key = (row["name"], repr(row["options"]), row["spacing"], row["variant"])
    seeds = sample_seeds(seed, min(samples, problem.x_T.shape[0]))
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = _sgm_run(problem, row, steps, seeds)
    x = cache[key] if row["steps"] == steps else _sgm_run(problem, row, row["steps"], seeds)
    return {"strong_error": rms_distance(x, cache[key]), "strong_reference_steps": steps}


def with_strong_errors(problem: Problem, rows: list[dict], seed: int, samples: int = STRONG_SAMPLES,
                       reference_nfe: int = REFERENCE_NFE) -> list[dict]:
    """The stochastic leg's ``rows`` with ``strong_error`` and ``strong_reference_steps``: sgm's and k-diffusion's
    as the module docstring says, diffusers' ``nan`` (no shared path), a diverged row's ``nan``."""
    out, cache = [], {}
    kd_configs = {c.label: c for c in k_diffusion.configs()}
    for row in rows:
        strong = {"strong_error": math.nan, "strong_reference_steps": None}
        if not row.get("diverged", True) and row["side"] == "sgm":
            strong = sgm_strong_error(problem, row, seed, samples, reference_nfe, cache)
        elif not row.get("diverged", True) and row["side"] == "k-diffusion":
            strong = k_diffusion.strong_error(kd_configs[row["sampler"]], problem, row["nfe_budget"], seed + 10,
                                              samples, reference_nfe, cache)
        out.append({**row, **strong})
    return out
