"""sgm's side of the sweep: which samplers run, with which options, on which grids, for which budgets.

The steps for a budget of ``nfe`` score evaluations are the solver's own, ``solver.steps_for_nfe(nfe)`` (the most
steps whose ``solver.nfe(steps)`` fits); the NFE a row reports is the run's own count.

- **Curves** (``curve_rows``): each run of ``curve_runs`` at each budget and the adaptive dopri5 over
  tolerances, from the problem's ``x_T`` on its continuous SDE, judged by every metric (``judge.judge_curve``).
- **Comparison** (``sgm_rows``): every deterministic fixed-step sampler over its options (``sgm_configs``) on each
  of the problem's paths (its ``variants``: on rectified flow shift 1 and 3), on the continuous spacings (the
  path, ``problems.exact_model``: the exact score, or ``x̂_0`` where ``α(T) = 0``) and the chain's timesteps (the
  variant's ``chain_sde``, ``problems.chain_model``: exact on the chain only), by map error; the calibrated methods
  (step optimisers' grids, learned corrections) for the best of them are ``calibrated.calibrated_rows``.
- **The stochastic leg** (``sgm_rows`` with ``stochastic_configs`` and a distribution ``judge``): every option set
  of every fixed-step sampler that draws noise, on the same paths and spacings, its noise from a generator seeded
  ``seed + 10``.
- **A trained model** (``checkpoint_rows``): the curve runs on a digits checkpoint, judged in a classifier's features.

Which samplers and options run comes from the sampler registry (``sgm.samplers.entry``): each entry's ``curves``
(option sets, on its default ``spacing``) for the curves, its ``sweep`` axes for the comparison and the stochastic
leg, so a newly registered sampler is benchmarked with no edit here.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .. import samplers
from ..samplers import SamplerDiverged, sample
from .judge import STOCHASTIC_METRICS, classifier_scores, failed, judge_curve
from .problems import TRAIN_STEPS, OffChain, Problem, exact_model

__all__ = ["Run", "CONTINUOUS_SPACINGS", "CHAIN_SPACINGS", "curve_runs",
           "budgeted", "Curves", "curve_rows", "sgm_configs", "stochastic_configs", "label", "sgm_row", "sgm_rows",
           "checkpoint_rows"]


@dataclass(frozen=True)
class Run:
    """A sampler with fixed options on a ``spacing`` (``None``: the sampler's default for the path it runs on); its
    NFE per step count comes from its solver."""

    label: str
    sampler: str
    options: dict = field(default_factory=dict)
    spacing: str | None = None

    def solver(self):
        return samplers.solver(self.sampler, **self.options)

    @property
    def deterministic(self) -> bool:
        return not self.solver().stochastic


Judge = Callable[[Tensor], dict]  # a run's samples -> its metrics and ``diverged``

# the fixed continuous spacings swept on every path. ``flow`` (the uniform grid of steps + 1 levels without its last) is
# the flow-matching schedulers' grid on rectified flow and, on VP, the grid of diffusers' multistep schedulers'
# ``leading`` timesteps (last timestep N/(steps + 1), not DDIM's 0)
CONTINUOUS_SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "flow")
CHAIN_SPACINGS = ("trailing", "leading")


# --- the curves: each sampler over the NFE grid, all metrics ----------------------------------------
def curve_runs() -> tuple[Run, ...]:
    """Every registered fixed-step sampler with each of its entry's ``curves`` option sets, on its default spacing
    for the problem's path (``spacing=None``; labelled by name and options)."""
    runs = []
    for name in samplers.available():
        entry = samplers.entry(name)
        for options in entry.curves:
            run = Run(" ".join([name] + [f"{k}={v}" for k, v in options.items()]), name, dict(options))
            if run.solver().evals_per_step is not None:
                runs.append(run)
    return tuple(runs)


def budgeted(nfes):
    """``(run, nfe, steps)`` for every run of ``curve_runs`` and every budget of ``nfes`` it can spend."""
    for run in curve_runs():
        for nfe in nfes:
            steps = run.solver().steps_for_nfe(nfe)
            if steps is not None:
                yield run, nfe, steps


@dataclass(frozen=True)
class Curves:
    """``curve_rows``' result: the ``rows`` and, for a scatter figure, ``(caption, samples)`` of the runs at the
    budgets asked for."""

    rows: list[dict]
    scatter: list[tuple[str, Tensor]]


def _timed_run(score, sde, x_T: Tensor, sampler: str, steps: int, options: dict, seed: int,
               progress: bool) -> tuple[Tensor | None, dict]:
    """The samples of one timed run from ``x_T`` (None if it diverged), and its row's NFE and seconds.
    ``options`` may hold ``sample``'s grid options (``spacing``) beside the sampler's."""
    g = torch.Generator().manual_seed(seed + 10)
    t0 = time.perf_counter()
    try:
        out = sample(score, sde, tuple(x_T.shape), sampler=sampler, steps=steps, generator=g, x_init=x_T,
                     progress=progress, **options)
    except SamplerDiverged:
        return None, {"nfe": None, "seconds": time.perf_counter() - t0}
    return out.x, {"nfe": out.nfe, "seconds": time.perf_counter() - t0}


def curve_rows(problem: Problem, nfes, tolerances, reference: Tensor, seed: int, progress: bool,
               scatter_nfe=()) -> Curves:
    """Every run of ``curve_runs`` at every budget, and dopri5 over ``tolerances``, all metrics against the target
    sample ``reference``; the samples of the finite runs at budgets in ``scatter_nfe`` kept for a figure."""
    target, sde = problem.target, problem.sde
    score, rows, scatter = exact_model(target, sde), [], []
    common = {"target": problem.target_name, "sde": problem.sde_name}
    for run, nfe, steps in budgeted(nfes):
        x, row = _timed_run(score, sde, problem.x_T, run.sampler, steps, {**run.options, "spacing": run.spacing},
                            seed, progress)
        row.update(common, sampler=run.label, nfe_budget=nfe, steps=steps)
        row.update(judge_curve(x, reference, target, seed, problem.x_ref if run.deterministic else None))
        if nfe in scatter_nfe and not row["diverged"]:
            scatter.append((f"{run.label}\nNFE {row['nfe']}", x))
        rows.append(row)
    for tol in tolerances:
        x, row = _timed_run(score, sde, problem.x_T, "ode", 2, {"method": "dopri5", "rtol": tol, "atol": tol},
                            seed, progress)
        row.update(common, sampler="ode dopri5 (adaptive)", nfe_budget=None, steps=None, tolerance=tol)
        row.update(judge_curve(x, reference, target, seed, problem.x_ref))
        rows.append(row)
    return Curves(rows, scatter)


# --- the comparison: every deterministic configuration, map error only ---------------------------------
def _product(axes: dict) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _configs(stochastic: bool) -> list[tuple[str, dict]]:
    configs, seen = [], set()
    for name in samplers.available():
        entry = samplers.entry(name)
        extra = [(dict(c), True) for c in entry.curves + entry.stochastic] if stochastic else []
        for options, once in [(o, False) for o in _product(dict(entry.sweep))] + extra:
            try:
                solver = samplers.solver(name, **options)
            except (ValueError, TypeError):
                continue
            if once and repr(solver) in seen:  # a curves set that is one of the sweep's solvers
                continue
            seen.add(repr(solver))
            if solver.stochastic == stochastic and solver.evals_per_step is not None:
                configs.append((name, options))
    return configs


def sgm_configs() -> list[tuple[str, dict]]:
    """``(sampler, options)`` for every registered deterministic fixed-step sampler over its entry's ``sweep`` axes
    (invalid combinations, a ValueError/TypeError from the solver, are skipped)."""
    return _configs(stochastic=False)


def stochastic_configs() -> list[tuple[str, dict]]:
    """``(sampler, options)`` for every registered fixed-step sampler option set that draws noise: each valid
    combination of its entry's ``sweep`` axes and each of its ``curves`` and ``stochastic`` option sets (DDIM's η,
    EDM's churn) that is not one of them (the same solver)."""
    return _configs(stochastic=True)


def label(name: str, options: dict, spacing: str, variant: str = "") -> str:
    """A comparison row's name: ``"dpm_solver order=2 method=multistep, logsnr"`` (``", shift 3"`` appended on a
    variant's path)."""
    words = " ".join([name] + [f"{k}={v}" for k, v in options.items()])
    return f"{words}, {spacing}" + (f", {variant}" if variant else "")


def sgm_row(problem: Problem, score, sde, name: str, options: dict, nfe: int, steps: int, row_label: str,
            sample_kw: dict, variant: str = "", judge: Judge | None = None) -> dict | None:
    """One sgm run from ``x_T`` (None when the sampler cannot run on a chain grid), judged by ``problem.judge`` (or
    by ``judge(x)``, a stochastic run); ``sample_kw``: ``sample``'s grid options (or a ``grid``, a ``correction``) and
    generator."""
    t0 = time.perf_counter()
    row = {"target": problem.target_name, "sde": problem.sde_name, "side": "sgm", "sampler": row_label,
           "nfe_budget": nfe, "steps": steps, "name": name, "options": options,
           "spacing": sample_kw.get("spacing", "optimised"), "variant": variant}
    try:
        budget = {} if "grid" in sample_kw or "correction" in sample_kw else {"steps": steps}  # a ready grid
        fixed = {} if "correction" in sample_kw else options  # a correction fixes the sampler's options
        out = sample(score, sde, tuple(problem.x_T.shape), sampler=name, x_init=problem.x_T, **budget, **sample_kw,
                     **fixed)
    except OffChain:
        return None
    except (ValueError, RuntimeError) as e:  # diverged (SamplerDiverged), or a solver refusing this grid
        return {**row, **failed(e, t0, keys=("map_error",) if judge is None else STOCHASTIC_METRICS)}
    if judge is None:
        return {**row, **problem.judge(out.x, out.nfe, t0)}
    return {**row, "nfe": out.nfe, "seconds": time.perf_counter() - t0, **judge(out.x)}


def sgm_rows(problem: Problem, nfes, configs=None, judge: Judge | None = None, seed: int = 0) -> list[dict]:
    """Every configuration of ``configs`` (default ``sgm_configs()``) on every spacing of every variant of the
    problem (the model and path of ``problem.model_for``: on an exact problem the continuous spacings on
    ``variant.sde`` with ``exact_model``, the chain spacings on ``variant.chain_sde`` with ``chain_model``) at every
    budget, judged as ``sgm_row`` says, any noise from a generator seeded ``seed + 10``."""
    rows, configs = [], sgm_configs() if configs is None else configs
    for variant in problem.variants:
        models = {on_chain: problem.model_for(variant, on_chain) for on_chain in (False, True)}
        for name, options in configs:
            solver = samplers.solver(name, **options)
            for spacing, nfe in itertools.product(CONTINUOUS_SPACINGS + CHAIN_SPACINGS, nfes):
                steps = solver.steps_for_nfe(nfe)
                if steps is None:
                    continue
                kw = {"spacing": spacing, "train_steps": TRAIN_STEPS,
                      "generator": torch.Generator().manual_seed(seed + 10)}
                row = sgm_row(problem, *models[spacing in CHAIN_SPACINGS], name, options, nfe, steps,
                              label(name, options, spacing, variant.label), kw, variant.label, judge)
                if row is not None:
                    rows.append(row)
    return rows


# --- a trained digits model ------------------------------------------------------------------------
def checkpoint_rows(path: str, nfes, seed: int, progress: bool, n: int = 1000) -> list[dict]:
    """The curve runs on the trained model at ``path``, judged by ``judge.classifier_scores``."""
    from ..data import load_digits
    from ..nets import train_digits_classifier
    from ..train import model_from_checkpoint

    model, config, shape = model_from_checkpoint(path)
    images, labels = load_digits()
    classifier = train_digits_classifier(images, labels, seed=seed)
    rows = []
    for run, nfe, steps in budgeted(nfes):
        g = torch.Generator().manual_seed(seed + 10)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = sample(model, model.sde, (n,) + shape, sampler=run.sampler, steps=steps, spacing=run.spacing,
                         generator=g, dtype=torch.float32, progress=progress, **run.options)
        rows.append({"target": f"digits model ({path})", "sde": config.sde, "sampler": run.label, "nfe_budget": nfe,
                     "steps": steps, "nfe": out.nfe, "seconds": time.perf_counter() - t0,
                     **classifier_scores(out.x, classifier, images)})
        print(f"digits model, {run.label} at NFE {out.nfe}: Fréchet {rows[-1]['frechet_classifier']:.1f}, "
              f"confident {rows[-1]['confident']:.3f} ({rows[-1]['seconds']:.0f}s)", flush=True)  # takes minutes
    return rows
