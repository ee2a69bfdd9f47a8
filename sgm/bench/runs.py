"""sgm's side of the sweep: which samplers run, with which options, on which grids, for which budgets.

The steps for a budget of ``nfe`` score evaluations are the solver's own, ``solver.steps_for_nfe(nfe)`` (the most
steps whose ``solver.nfe(steps)`` fits); the NFE a row reports is the run's own count.

- **Curves** (``curve_rows``): each run of ``curve_runs`` at each budget and the adaptive dopri5 over
  tolerances, from the problem's ``x_T`` on its continuous SDE, judged by every metric (``judge.judge_curve``).
- **Comparison** (``sgm_rows``): every deterministic fixed-step sampler over its options (``sgm_configs``) on the
  continuous spacings (``problem.sde``, exact score) and the chain's timesteps (``problem.chain_sde``, the score
  on the chain only), by map error; ``optimized_rows``: ``optimize_grid``'s grids for the best of them.
- **A trained model** (``checkpoint_rows``): the curve runs on a digits checkpoint, judged in a classifier's features.

Which samplers and options run comes from the sampler registry (``sgm.samplers.entry``): each entry's ``curves``
(option sets, on its default ``spacing``) for the curves, its ``sweep`` axes for the comparison, so a newly
registered sampler is benchmarked with no edit here.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import samplers
from ..samplers import SamplerDiverged, optimize_grid, sample
from .judge import classifier_scores, failed, judge_curve
from .problems import TRAIN_STEPS, OffChain, Problem

__all__ = ["Run", "CONTINUOUS_SPACINGS", "CHAIN_SPACINGS", "curve_runs", "budgeted",
           "Curves", "curve_rows", "sgm_configs", "label", "sgm_row", "sgm_rows", "optimized_rows", "checkpoint_rows"]


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


CONTINUOUS_SPACINGS = ("uniform", "quadratic", "logsnr", "karras")
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
    score, rows, scatter = target.score_fn(sde), [], []
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


def sgm_configs() -> list[tuple[str, dict]]:
    """``(sampler, options)`` for every registered deterministic fixed-step sampler over its entry's ``sweep`` axes
    (invalid combinations, a ValueError/TypeError from the solver, are skipped)."""
    configs = []
    for name in samplers.available():
        axes = dict(samplers.entry(name).sweep)
        for options in _product(axes):
            try:
                solver = samplers.solver(name, **options)
            except (ValueError, TypeError):
                continue
            if not solver.stochastic and solver.evals_per_step is not None:
                configs.append((name, options))
    return configs


def label(name: str, options: dict, spacing: str) -> str:
    """A comparison row's name: ``"dpm_solver order=2 method=multistep, logsnr"``."""
    return " ".join([name] + [f"{k}={v}" for k, v in options.items()]) + f", {spacing}"


def sgm_row(problem: Problem, score, sde, name: str, options: dict, nfe: int, steps: int, row_label: str,
            grid_kw: dict) -> dict | None:
    """One sgm run of the comparison from ``x_T``, scored by ``problem.judge`` (None when the sampler cannot run on
    a chain grid)."""
    t0 = time.perf_counter()
    row = {"target": problem.target_name, "sde": problem.sde_name, "side": "sgm", "sampler": row_label,
           "nfe_budget": nfe, "steps": steps, "name": name, "options": options,
           "spacing": grid_kw.get("spacing", "optimised")}
    try:
        budget = {} if "grid" in grid_kw else {"steps": steps}  # a ready grid fixes its own nodes
        out = sample(score, sde, tuple(problem.x_T.shape), sampler=name, x_init=problem.x_T, **budget, **grid_kw,
                     **options)
    except OffChain:
        return None
    except (ValueError, RuntimeError) as e:  # diverged (SamplerDiverged), or a solver refusing this grid
        return {**row, **failed(e, t0)}
    return {**row, **problem.judge(out.x, out.nfe, t0)}


def sgm_rows(problem: Problem, nfes, configs=None) -> list[dict]:
    """Every configuration of ``configs`` (default ``sgm_configs()``) on every spacing (the model and path of
    ``problem.model_for``: on an exact problem the continuous spacings on ``problem.sde``, the chain spacings on
    ``problem.chain_sde`` with the score on the chain only) at every budget."""
    models = {on_chain: problem.model_for(on_chain) for on_chain in (False, True)}
    rows = []
    for name, options in configs if configs is not None else sgm_configs():
        solver = samplers.solver(name, **options)
        for spacing, nfe in itertools.product(CONTINUOUS_SPACINGS + CHAIN_SPACINGS, nfes):
            steps = solver.steps_for_nfe(nfe)
            if steps is None:
                continue
            on_chain = spacing in CHAIN_SPACINGS
            row = sgm_row(problem, *models[on_chain], name, options, nfe, steps, label(name, options, spacing),
                          {"spacing": spacing, "train_steps": TRAIN_STEPS})
            if row is not None:
                rows.append(row)
    return rows


def optimized_rows(problem: Problem, nfes, fixed: list[dict], seed: int, top: int = 3) -> list[dict]:
    """``optimize_grid``'s grid for each of the ``top`` best distinct samplers-with-options among the
    continuous-grid runs of ``fixed`` at each budget, calibrated on 256 prior draws from ``seed + 20``
    (independent of ``x_T``); the grid then runs from ``x_T``. An optimisation that fails is a diverged row."""
    score, rows = problem.target.score_fn(problem.sde), []
    for nfe in nfes:
        ranked = sorted((r for r in fixed if r["nfe_budget"] == nfe and not r["diverged"]
                         and r["spacing"] in CONTINUOUS_SPACINGS), key=lambda r: r["map_error"])
        distinct = {(r["name"], tuple(r["options"].items())): r for r in reversed(ranked)}  # each one's best run
        for best in sorted(distinct.values(), key=lambda r: r["map_error"])[:top]:
            name, options, steps, t0 = best["name"], best["options"], best["steps"], time.perf_counter()
            row_label = label(name, options, "optimised grid")
            try:
                grid = optimize_grid(score, problem.sde, steps, sampler=name, shape=(problem.target.dim,), n=256,
                                     generator=torch.Generator().manual_seed(seed + 20), **options)
            except (ValueError, RuntimeError) as e:  # SamplerDiverged on every starting grid
                rows.append({"target": problem.target_name, "sde": problem.sde_name, "side": "sgm",
                             "sampler": row_label, "nfe_budget": nfe, "steps": steps,
                             **failed(e, t0, "optimize_grid: ")})
                continue
            seconds = time.perf_counter() - t0
            row = sgm_row(problem, score, problem.sde, name, options, nfe, steps, row_label, {"grid": grid})
            rows.append({**row, "optimize_seconds": seconds})
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
