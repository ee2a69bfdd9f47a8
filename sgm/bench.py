"""Step-count-vs-quality sweeps: every sampler over score-evaluation budgets (NFE), and sgm against diffusers.

**Problems.** Exact-score targets (an 8-mode ring in 2-D, 5-component mixtures in 16-D and 64-D), each under VP
and VE. A problem fixes one top noise level ``σ_top``, one draw ``z ~ N(0, I)`` and sgm's start
``x_T = prior_std·z`` at ``σ_top``, and one reference: the exact probability-flow map of ``x_T`` from ``σ_top``
to ``σ = 0`` (``flow_map``: ``x̄ = x/scale`` follows ``dx̄/dσ = -σ ∇log p_σ(x̄)`` to ``σ = 1e-4`` by dopri5 at
rtol = atol = 1e-9, then Tweedie's step, whose error is ``O(σ²)``). Every deterministic run is scored by its
map error ``mean ‖x - x_ref‖`` against it, so a sampler that starts lower or ends with a Tweedie jump from
``σ_min`` pays for it.

- VP: the chain is DDPM's, ``VPSDE().discretize(1000)`` (β linear 1e-4 … 0.02), ``σ_top = σ_999 ≈ 157``.
  sgm's continuous grids run on ``VPSDE(T=T*)``, the same β(t/T) run to ``T*`` where its marginal equals the
  chain's at ``i = 999`` (``T* ≈ 1.0067``): every side starts at the same noise level from the same ``z``.
- VE: ``VESDE()`` (σ 0.01 … 50), ``σ_top = 50``; its chain is NCSN's 1000 geometric levels.

**Curves** (``CURVES``, plus each registered sampler not named there with its defaults): each sampler at each
NFE in ``NFE_GRID`` (the steps from ``solver.steps_for_nfe``, the NFE the run's own count) and the adaptive ODE
over ``TOLERANCES``, judged by SW₂, MMD², energy distance, Fréchet distance, exact NLL and mode-weight error
against a fresh target sample (with the Monte-Carlo floor of each), and the map error.

**Comparison** (``compare_rows``): the map error at each NFE in ``COMPARE_NFE`` of every deterministic sgm
configuration (``sgm_configs``: every registered deterministic sampler over its options, on the spacings
uniform, quadratic, logsnr, karras and on the chain's trailing and leading timesteps; ``optimize_grid`` grids
when that function exists) and of every diffusers configuration a user could pick (``peer_configs``: DDIM,
DPM-Solver(++) multistep and singlestep, UniPC, DEIS, Heun, Euler, LMS, each over its variants, timestep
spacings and sigma options), all from the same ``z``. diffusers runs on the problem's chain given as
``trained_betas`` (``ᾱ_i = 1/(1 + σ_i²)``: DDPM's own betas on VP, NCSN's levels on VE), starts as its users
start (``z·init_noise_sigma``) and is driven by the exact noise prediction at the noise level each of its steps
uses. ``goal_table`` gives, per target, SDE and NFE, the best configuration of each side and the ratio.

Writes ``results.csv``, ``compare.csv``, ``goal.md``, ``results.json`` (rows, comparison, floors, seeds,
versions) and figures to ``out_dir``.
"""
from __future__ import annotations

import csv
import inspect
import itertools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import __version__, metrics, samplers
from .plotting import nfe_curves, scatter_panels
from .samplers import SamplerDiverged, ode, sample
from .samplers.grid import time_grid
from .sde import SDE, VESDE, VPSDE, DiscreteChain
from .targets import GaussianMixture, random_mixture, ring_mixture

__all__ = ["NFE_GRID", "QUICK_NFE", "TOLERANCES", "COMPARE_NFE", "GOAL_NFE", "CURVES", "Run", "Problem",
           "TARGETS", "curve_runs", "steps_for_nfe", "make_problem", "flow_map", "chain_score", "eps_at", "chain_eps_model", "sgm_configs",
           "peer_configs", "compare_rows", "goal_table", "goal_markdown", "run_sweep", "main"]

NFE_GRID = (5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_NFE = (5, 10, 20, 50)
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
QUICK_TOLERANCES = (1e-2, 1e-4)
GOAL_NFE = COMPARE_NFE = QUICK_COMPARE_NFE = (5, 10, 20)
GOAL_RATIO = 0.5
TRAIN_STEPS = 1000


# --- problems ---------------------------------------------------------------------------------------
def flow_map(target: GaussianMixture, sigma_top: float, x_bar: Tensor) -> Tensor:
    """The exact probability-flow map of ``x̄ = x/scale`` from noise level ``sigma_top`` to ``σ = 0``:
    ``dx̄/dσ = -σ ∇log p_σ(x̄)`` (Karras et al., 2022), solved as sgm's VE flow by dopri5 at rtol = atol = 1e-9
    down to ``σ = 1e-4``, then Tweedie's step (error ``O(σ²)``)."""
    ve = VESDE(sigma_min=1e-4, sigma_max=sigma_top)
    return ode(target.score_fn(ve), ve, x_bar, time_grid(ve, 2, eps=1e-9), rtol=1e-9, atol=1e-9).x


def chain_flow_map(target: GaussianMixture, chain: DiscreteChain, x_T: Tensor) -> Tensor:
    """``flow_map`` of the state ``x_T`` at a chain's top timestep."""
    return flow_map(target, float(chain.sigmas[-1]), x_T / chain.scale[-1])


@dataclass(frozen=True, eq=False)
class Problem:
    """One target under one SDE: ``sde`` (sgm's continuous grids), ``chain_sde`` (whose ``discretize(1000)`` is
    ``chain``: chain grids and diffusers), the draw ``z``, sgm's start ``x_T = prior_std·z`` at the top noise
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
    return Problem(target_name, target, sde_name, sde, chain_sde, chain, z, x_T, chain_flow_map(target, chain, x_T))


TARGETS = {"2d ring": ring_mixture, "16d mixture": lambda: random_mixture(16, seed=0),
           "64d mixture": lambda: random_mixture(64, seed=1)}


def _targets(quick: bool, names=None) -> dict:
    names = names or (("2d ring",) if quick else tuple(TARGETS))
    return {name: TARGETS[name]() for name in names}


class OffChain(ValueError):
    """A solver asked a chain score for a time between the chain's timesteps."""


def chain_score(target: GaussianMixture, chain: DiscreteChain):
    """The exact score on ``chain``: ``s(x, t_i) = ∇log`` of the mixture seen through ``(scale_i, std_i)`` at the
    chain's timestep times ``t_i``; any other time raises ``OffChain`` (a sampler that evaluates between
    timesteps cannot run on the chain)."""
    index = {t: i for i, t in enumerate(chain.t.tolist())}
    scale, std = chain.scale.tolist(), chain.std.tolist()

    def score(x: Tensor, t: Tensor) -> Tensor:
        i = index.get(float(t[0]))
        if i is None:
            raise OffChain(f"t={float(t[0])} is not a timestep of the chain")
        return target.perturbed_score(x, scale[i], std[i])

    return score


def eps_at(target: GaussianMixture, x: Tensor, sigma: float) -> Tensor:
    """The exact noise prediction of the VP state ``x = scale·x_0 + std·z`` at noise level ``σ = std/scale``
    (``scale = 1/√(1 + σ²)``): ``ε = -std ∇log p(x)``."""
    scale = 1 / math.sqrt(1 + sigma**2)
    return target.perturbed_score(x, scale, sigma * scale).mul_(-sigma * scale)


def chain_eps_model(target: GaussianMixture, chain: DiscreteChain):
    """The exact noise predictor of ``chain`` at timestep ``i``: ``eps_at`` the chain's ``σ_i``; at a fractional
    ``i`` the ``σ_i`` interpolated linearly, as diffusers does."""
    sigmas = chain.sigmas.numpy()

    def eps(x: Tensor, i) -> Tensor:
        return eps_at(target, x, float(np.interp(float(i), np.arange(len(sigmas)), sigmas)))

    return eps


# --- the curves: each sampler over the NFE grid, all metrics ----------------------------------------
@dataclass(frozen=True)
class Run:
    """A sampler with fixed options on a ``spacing``; its NFE per step count comes from its solver."""

    label: str
    sampler: str
    options: dict = field(default_factory=dict)
    spacing: str = "uniform"

    def solver(self):
        return samplers.solver(self.sampler, **self.options)

    @property
    def deterministic(self) -> bool:
        return not self.solver().stochastic


CURVES = (
    Run("euler_maruyama", "euler_maruyama"),
    Run("reverse_diffusion", "reverse_diffusion"),
    Run("ancestral", "ancestral"),
    Run("sde (torchsde euler)", "sde"),
    Run("ddim", "ddim"),
    Run("ode euler", "ode", {"method": "euler"}),
    Run("ode heun2", "ode", {"method": "heun2"}),
    Run("ode rk4", "ode", {"method": "rk4"}),
    Run("pc (reverse diffusion + langevin)", "pc"),
    Run("langevin (annealed, 5/level)", "langevin", {"n_steps_each": 5}, "geometric"),
)


def curve_runs() -> tuple[Run, ...]:
    """``CURVES`` and every other registered fixed-step sampler with its default options (logsnr spacing)."""
    named = {r.sampler for r in CURVES}
    extra = tuple(Run(name, name, spacing="logsnr") for name in samplers.available()
                  if name not in named and samplers.solver(name).evals_per_step is not None)
    return CURVES + extra


def steps_for_nfe(run: Run, nfe: int) -> int | None:
    """The most steps whose run spends at most ``nfe`` evaluations (``solver.steps_for_nfe``), or None."""
    return run.solver().steps_for_nfe(nfe)


def _budgeted(nfes):
    """``(run, nfe, steps)`` for every sampler run and every budget it can spend."""
    for run in curve_runs():
        for nfe in nfes:
            steps = steps_for_nfe(run, nfe)
            if steps is not None:
                yield run, nfe, steps


PAIRWISE_N = 1000  # MMD² and the energy distance cost O(n²): they use the first PAIRWISE_N samples of each set


def _metrics(x: Tensor, reference: Tensor, target: GaussianMixture, generator: torch.Generator) -> dict:
    x = x.reshape(x.shape[0], -1)
    x_pairs, reference_pairs = x[:PAIRWISE_N], reference[:PAIRWISE_N]
    return {"sw2": metrics.sliced_wasserstein(x, reference, 256, generator),
            "mmd2": metrics.mmd(x_pairs, reference_pairs),
            "energy": metrics.energy_distance(x_pairs, reference_pairs),
            "frechet": metrics.frechet_distance(x, reference),
            "nll": metrics.nll(x, target),
            "mode_error": metrics.mode_weight_error(x, target)}


METRICS = ("sw2", "mmd2", "energy", "frechet", "nll", "mode_error", "map_error")


def _judge(x: Tensor | None, reference: Tensor, target: GaussianMixture, seed: int,
           x_ref: Tensor | None = None) -> dict:
    """A run's metrics (the map error only with the reference map ``x_ref``). A run that diverged (``x`` None:
    the score went non-finite; or a NaN/inf among the samples) gets NaN for every metric and ``diverged``."""
    if x is None or not bool(torch.isfinite(x).all()):
        return {**dict.fromkeys(METRICS, float("nan")), "diverged": True}
    row = _metrics(x, reference, target, torch.Generator().manual_seed(seed + 3))
    row["map_error"] = _map_error(x, x_ref) if x_ref is not None else float("nan")
    return {**row, "diverged": False}


def _map_error(x: Tensor, x_ref: Tensor) -> float:
    return float((x.reshape(x.shape[0], -1) - x_ref).norm(dim=1).mean())


def _floors(target: GaussianMixture, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    a, b = target.sample(n, generator=g), target.sample(n, generator=g)
    return _metrics(a, b, target, g)


def curve_rows(problem: Problem, nfes, tolerances, reference: Tensor, seed: int, progress: bool,
               out_dir: str | None = None) -> list[dict]:
    """Every run of ``curve_runs`` at every budget, and dopri5 over ``tolerances``, all metrics."""
    target, sde = problem.target, problem.sde
    score, rows, scatter = target.score_fn(sde), [], []
    common = {"target": problem.target_name, "sde": problem.sde_name}
    for run, nfe, steps in _budgeted(nfes):
        x, row = _one_run(score, sde, problem.x_T, run.sampler, steps, {**run.options, "spacing": run.spacing},
                          seed, progress)
        row.update(common, sampler=run.label, nfe_budget=nfe, steps=steps)
        row.update(_judge(x, reference, target, seed, problem.x_ref if run.deterministic else None))
        if target.dim == 2 and nfe in (10, 50, 200) and not row["diverged"]:
            scatter.append((f"{run.label}\nNFE {row['nfe']}", x))
        rows.append(row)
    for tol in tolerances:
        x, row = _one_run(score, sde, problem.x_T, "ode", 2, {"method": "dopri5", "rtol": tol, "atol": tol}, seed,
                          progress)
        row.update(common, sampler="ode dopri5 (adaptive)", nfe_budget=None, steps=None, tolerance=tol)
        row.update(_judge(x, reference, target, seed, problem.x_ref))
        rows.append(row)
    if scatter and out_dir:
        scatter_panels(scatter, os.path.join(out_dir, f"scatter_{_slug(problem.target_name)}___{problem.sde_name}.png"),
                       target.log_prob, limits=6.0, columns=6)
    return rows


def _one_run(score, sde: SDE, x_T: Tensor, sampler: str, steps: int, options: dict, seed: int,
             progress: bool) -> tuple[Tensor | None, dict]:
    """The samples of one timed run from ``x_T`` (None if it diverged), and its row's NFE and seconds.
    ``options`` may hold ``sample``'s grid options (``spacing``, ``grid``) beside the sampler's."""
    g = torch.Generator().manual_seed(seed + 10)
    t0 = time.perf_counter()
    try:
        out = sample(score, sde, tuple(x_T.shape), sampler=sampler, steps=steps, generator=g, x_init=x_T,
                     progress=progress, **options)
    except SamplerDiverged:
        return None, {"nfe": None, "seconds": time.perf_counter() - t0}
    return out.x, {"nfe": out.nfe, "seconds": time.perf_counter() - t0}


# --- the comparison: every deterministic configuration of sgm and of diffusers, map error only ----------
CONTINUOUS_SPACINGS = ("uniform", "quadratic", "logsnr", "karras")
CHAIN_SPACINGS = ("trailing", "leading")
# The option values swept per sgm sampler; options a registered sampler does not take are dropped, a sampler not
# listed runs with its defaults, invalid combinations (ValueError/TypeError from the solver) are skipped.
SGM_OPTIONS = {
    "ode": {"method": ("euler", "midpoint", "heun2", "heun3", "rk4")},
    "dpm_solver": {"order": (1, 2, 3), "method": ("multistep", "singlestep"), "prediction": ("x0", "eps")},
    "unipc": {"order": (1, 2, 3), "variant": ("bh1", "bh2")},
    "deis": {"order": (1, 2, 3), "variable": ("lambda", "rho")},
    "ipndm": {"max_order": (1, 2, 3, 4)},
}


def _product(axes: dict) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def sgm_configs() -> list[tuple[str, dict]]:
    """``(sampler, options)`` for every registered deterministic fixed-step sampler over ``SGM_OPTIONS``."""
    configs = []
    for name in samplers.available():
        allowed = samplers.options(name)
        axes = {k: v for k, v in SGM_OPTIONS.get(name, {}).items() if k in allowed}
        for options in _product(axes):
            try:
                solver = samplers.solver(name, **options)
            except (ValueError, TypeError):
                continue
            if not solver.stochastic and solver.evals_per_step is not None:
                configs.append((name, options))
    return configs


def _label(name: str, options: dict, spacing: str) -> str:
    return " ".join([name] + [f"{k}={v}" for k, v in options.items()]) + f", {spacing}"


def _sgm_row(problem: Problem, score, sde: SDE, name: str, options: dict, nfe: int, steps: int, label: str,
             grid_kw: dict) -> dict | None:
    """One sgm run of the comparison (None when the sampler cannot run on a chain grid)."""
    t0 = time.perf_counter()
    row = {"target": problem.target_name, "sde": problem.sde_name, "side": "sgm", "sampler": label,
           "nfe_budget": nfe, "steps": steps, "name": name, "options": options,
           "spacing": grid_kw.get("spacing", "optimised")}
    try:
        out = sample(score, sde, tuple(problem.x_T.shape), sampler=name, steps=steps, x_init=problem.x_T,
                     **grid_kw, **options)
    except OffChain:
        return None
    except (ValueError, RuntimeError) as e:  # diverged (SamplerDiverged), or a solver refusing this grid
        return {**row, "nfe": None, "seconds": time.perf_counter() - t0, "map_error": float("nan"),
                "diverged": True, "error": f"{type(e).__name__}: {e}"[:300]}
    return {**row, **_scored(out.x, problem, out.nfe, t0)}


def _scored(x: Tensor, problem: Problem, nfe: int, t0: float) -> dict:
    finite = bool(torch.isfinite(x).all())
    return {"nfe": nfe, "seconds": time.perf_counter() - t0, "diverged": not finite,
            "map_error": _map_error(x, problem.x_ref) if finite else float("nan")}


def sgm_rows(problem: Problem, nfes) -> list[dict]:
    """Every ``sgm_configs`` configuration on every spacing (continuous on ``problem.sde`` with the exact score,
    chain spacings on ``problem.chain_sde`` with ``chain_score``) at every budget."""
    scores = {False: problem.target.score_fn(problem.sde), True: chain_score(problem.target, problem.chain)}
    rows = []
    for name, options in sgm_configs():
        solver = samplers.solver(name, **options)
        for spacing, nfe in itertools.product(CONTINUOUS_SPACINGS + CHAIN_SPACINGS, nfes):
            steps = solver.steps_for_nfe(nfe)
            if steps is None:
                continue
            on_chain = spacing in CHAIN_SPACINGS
            row = _sgm_row(problem, scores[on_chain], problem.chain_sde if on_chain else problem.sde, name, options,
                           nfe, steps, _label(name, options, spacing), {"spacing": spacing, "train_steps": TRAIN_STEPS})
            if row is not None:
                rows.append(row)
    return rows


def optimized_rows(problem: Problem, nfes, fixed: list[dict], seed: int, top: int = 3) -> list[dict]:
    """``sgm.samplers.optimize_grid`` (when it exists) for the ``top`` best distinct samplers-with-options among the
    continuous-grid runs of ``fixed`` at each budget, calibrated on a prior batch independent of ``x_T``; the grid
    then runs from ``x_T``."""
    optimize = getattr(samplers, "optimize_grid", None)
    if optimize is None:
        return []
    score, rows = problem.target.score_fn(problem.sde), []
    for nfe in nfes:
        ranked = sorted((r for r in fixed if r["nfe_budget"] == nfe and not r["diverged"]
                         and r["spacing"] in CONTINUOUS_SPACINGS), key=lambda r: r["map_error"])
        distinct = {(r["name"], tuple(r["options"].items())): r for r in reversed(ranked)}  # each one's best run
        for best in sorted(distinct.values(), key=lambda r: r["map_error"])[:top]:
            name, options, steps, t0 = best["name"], best["options"], best["steps"], time.perf_counter()
            label = _label(name, options, "optimised grid")
            try:
                grid = optimize(score, problem.sde, steps, sampler=name, shape=(problem.target.dim,), n=256,
                                generator=torch.Generator().manual_seed(seed + 20), **options)
            except Exception as e:  # a new function: report its failure as a row
                rows.append({"target": problem.target_name, "sde": problem.sde_name, "side": "sgm", "sampler": label,
                             "nfe_budget": nfe, "steps": steps, "nfe": None, "map_error": float("nan"),
                             "diverged": True, "error": f"optimize_grid: {type(e).__name__}: {e}"})
                continue
            seconds = time.perf_counter() - t0
            row = _sgm_row(problem, score, problem.sde, name, options, nfe, steps, label, {"grid": grid})
            rows.append({**row, "optimize_seconds": seconds})
    return rows


# diffusers: (family label template, scheduler class, option axes). Timestep spacings and sigma options are
# crossed in where the class's constructor takes them; labels fill the template from the options.
PEER_FAMILIES = (
    ("DDIM", "DDIMScheduler", {"clip_sample": (False,), "set_alpha_to_one": (True,)}),
    ("DPM-Solver++ {solver_order}M {solver_type}", "DPMSolverMultistepScheduler",
     {"algorithm_type": ("dpmsolver++",), "solver_order": (2, 3), "solver_type": ("midpoint", "heun")}),
    ("DPM-Solver {solver_order}M {solver_type}", "DPMSolverMultistepScheduler",
     {"algorithm_type": ("dpmsolver",), "solver_order": (2, 3), "solver_type": ("midpoint", "heun"),
      "final_sigmas_type": ("sigma_min",)}),  # diffusers' DPM-Solver (ε) cannot end at σ = 0
    ("DPM-Solver++ singlestep {solver_order}", "DPMSolverSinglestepScheduler",
     {"algorithm_type": ("dpmsolver++",), "solver_order": (2, 3), "lower_order_final": (True,)}),
    ("DPM-Solver singlestep {solver_order}", "DPMSolverSinglestepScheduler",
     {"algorithm_type": ("dpmsolver",), "solver_order": (2, 3), "lower_order_final": (True,),
      "final_sigmas_type": ("sigma_min",)}),
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler", {"solver_type": ("bh2",), "solver_order": (2, 3)}),
    # bh1's B(h) = h is infinite at σ = 0: diffusers' UniPC bh1 gives NaN ending there (final_sigmas_type="zero")
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler",
     {"solver_type": ("bh1",), "solver_order": (2, 3), "final_sigmas_type": ("sigma_min",)}),
    ("DEIS {solver_order}", "DEISMultistepScheduler", {"solver_order": (2, 3)}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
)
PEER_SPACINGS = ("trailing", "leading", "linspace")
PEER_SIGMAS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class PeerConfig:
    label: str
    scheduler: str
    options: tuple  # (name, value) pairs for the constructor


def peer_configs() -> list[PeerConfig]:
    """Every configuration of ``PEER_FAMILIES`` × the timestep spacings × (default sigmas or one sigma option)
    that the installed diffusers offers; [] without diffusers."""
    try:
        import diffusers
    except ImportError:
        return []
    configs = []
    for template, cls_name, axes in PEER_FAMILIES:
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            continue
        takes = inspect.signature(cls.__init__).parameters
        spacings = PEER_SPACINGS if "timestep_spacing" in takes else (None,)
        sigma_options = (None,) + tuple(o for o in PEER_SIGMAS if o in takes)
        for options, spacing, sigma in itertools.product(_product(axes), spacings, sigma_options):
            extra = {**({"timestep_spacing": spacing} if spacing else {}), **({sigma: True} if sigma else {})}
            label = ", ".join(["diffusers " + template.format(**options)] + [spacing or "own spacing"]
                              + ([sigma.removeprefix("use_").replace("_", "-")] if sigma else []))
            configs.append(PeerConfig(label, cls_name, tuple({**options, **extra}.items())))
    return configs


def _vp_betas(chain: DiscreteChain) -> list[float]:
    """The β_i of the VP chain with the noise levels of ``chain``: ``ᾱ_i = 1/(1 + σ_i²)``, ``β_i = 1 - ᾱ_i/ᾱ_{i-1}``."""
    abar = 1 / (1 + chain.sigmas**2)
    return torch.cat([1 - abar[:1], 1 - abar[1:] / abar[:-1]]).tolist()


def _peer_scheduler(config: PeerConfig, betas: list[float], nfe: int):
    """The scheduler of ``config`` on ``betas``, set to the most steps whose run makes at most ``nfe`` model calls
    (one per entry of ``timesteps``; at least 2 steps), or None when even 2 steps cost more."""
    import diffusers

    scheduler = getattr(diffusers, config.scheduler)(num_train_timesteps=len(betas), trained_betas=betas,
                                                     prediction_type="epsilon", **dict(config.options))

    def calls(steps):
        scheduler.set_timesteps(steps)
        return len(scheduler.timesteps)

    steps = nfe
    while steps >= 2 and calls(steps) > nfe:
        steps = min(steps - 1, steps * nfe // calls(steps))
    if steps < 2:
        return None, None
    while steps + 1 <= nfe and calls(steps + 1) <= nfe:
        steps += 1
    calls(steps)
    return scheduler, steps


def peer_row(config: PeerConfig, problem: Problem, nfe: int, betas: list[float] | None = None,
             seen: dict | None = None) -> dict | None:
    """One diffusers run from ``z·init_noise_sigma``: at call k, the exact ``ε`` at the noise level the scheduler
    integrates with (``sigmas[k]`` where it keeps sigmas, else ``σ`` of its ``alphas_cumprod[t]``). Any failure or
    non-finite result is a diverged row with the error; None when the budget is below 2 steps. ``seen`` caches
    results by schedule (class, options but the spacing, timesteps, sigmas): a configuration whose spacing the
    scheduler ignores (Karras sigmas, …) reuses the identical run's result."""
    row = {"target": problem.target_name, "sde": problem.sde_name, "side": "diffusers", "sampler": config.label,
           "nfe_budget": nfe}
    t0 = time.perf_counter()
    try:
        scheduler, steps = _peer_scheduler(config, betas or _vp_betas(problem.chain), nfe)
        if scheduler is None:
            return None
        row["steps"] = steps
        sigmas = getattr(scheduler, "sigmas", None)
        key = (config.scheduler, tuple(o for o in config.options if o[0] != "timestep_spacing"),
               tuple(scheduler.timesteps.tolist()), tuple(sigmas.tolist()) if sigmas is not None else None)
        if seen is not None and key in seen:
            return {**seen[key], **row, "same_as": seen[key]["sampler"]}
        abar = scheduler.alphas_cumprod.double()
        x = problem.z * float(scheduler.init_noise_sigma)
        for k, t in enumerate(scheduler.timesteps):
            sigma = float(sigmas[k]) if sigmas is not None else math.sqrt((1 - abar[int(t)]) / abar[int(t)])
            x = scheduler.step(eps_at(problem.target, scheduler.scale_model_input(x, t), sigma), t, x).prev_sample
        row.update(_scored(x, problem, len(scheduler.timesteps), t0))
        if seen is not None:
            seen[key] = row
        return row
    except Exception as e:  # a configuration diffusers rejects or that breaks down is a row, not a crash
        return {**row, "nfe": None, "seconds": time.perf_counter() - t0, "map_error": float("nan"), "diverged": True,
                "error": f"{type(e).__name__}: {e}"[:300]}


def peer_rows(problem: Problem, nfes) -> list[dict]:
    """Every ``peer_configs`` configuration at every budget on ``problem``."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    betas, seen = _vp_betas(problem.chain), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates its DPM-Solver (ε): still a choice
        rows = [peer_row(c, problem, nfe, betas, seen) for c in peer_configs() for nfe in nfes]
    return [r for r in rows if r is not None]


def compare_rows(problem: Problem, nfes, seed: int = 0, peers: bool = True, optimise: bool = True) -> list[dict]:
    """The comparison on ``problem``: sgm's fixed grids, its optimised grids (with ``optimise``), and diffusers
    (with ``peers``)."""
    fixed = sgm_rows(problem, nfes)
    rows = fixed + (optimized_rows(problem, nfes, fixed, seed) if optimise else [])
    if peers and peer_configs():
        rows += peer_rows(problem, nfes)
    return rows


def goal_table(rows: list[dict], budgets=GOAL_NFE) -> list[dict]:
    """Per target, SDE and budget (of ``budgets``, those the rows have): the best (least map error, finite)
    configuration of each side and ``ratio = sgm / peer``."""
    table, budgets = [], [b for b in budgets if any(r["nfe_budget"] == b for r in rows)]
    for target, sde in dict.fromkeys((r["target"], r["sde"]) for r in rows):
        for nfe in budgets:
            best = {}
            for side in ("diffusers", "sgm"):
                hits = [r for r in rows if (r["target"], r["sde"], r["side"], r["nfe_budget"]) == (target, sde, side, nfe)
                        and not r["diverged"] and r["nfe"] is not None and r["nfe"] <= nfe]
                best[side] = min(hits, key=lambda r: r["map_error"]) if hits else None
            peer, ours = best["diffusers"], best["sgm"]
            ratio = ours["map_error"] / peer["map_error"] if peer and ours else float("nan")
            table.append({"target": target, "sde": sde, "nfe": nfe,
                          "peer": peer["sampler"] if peer else None, "peer_error": peer["map_error"] if peer else None,
                          "sgm": ours["sampler"] if ours else None, "sgm_error": ours["map_error"] if ours else None,
                          "ratio": ratio, "met": bool(ratio <= GOAL_RATIO)})
    return table


def goal_markdown(table: list[dict]) -> str:
    """``goal_table`` as markdown."""
    lines = ["| target | SDE | NFE | best diffusers configuration | map error | best sgm configuration | map error "
             "| sgm / peer | ≤ 0.5 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        fmt = lambda v: f"{v:.3g}" if v is not None and math.isfinite(v) else "—"  # noqa: E731
        lines.append(f"| {r['target']} | {r['sde'].upper()} | {r['nfe']} | {r['peer'] or '—'} | {fmt(r['peer_error'])} "
                     f"| {r['sgm'] or '—'} | {fmt(r['sgm_error'])} | {fmt(r['ratio'])} | "
                     f"{'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def run_sweep(out_dir: str, quick: bool = False, n: int | None = None, seed: int = 0,
              checkpoint: str | None = None, peers: bool = True, progress: bool = True, curves: bool = True,
              compare: bool = True, n_compare: int | None = None, targets=None) -> list[dict]:
    """Run the sweep, write its files to ``out_dir`` and return the curve rows (the comparison's rows and the
    goal table are in ``results.json``)."""
    os.makedirs(out_dir, exist_ok=True)
    n = n or (500 if quick else 4000)
    n_compare = n_compare or min(n, 1000)
    nfes, tolerances = (QUICK_NFE, QUICK_TOLERANCES) if quick else (NFE_GRID, TOLERANCES)
    compare_nfes = QUICK_COMPARE_NFE if quick else COMPARE_NFE
    rows, compared, floors, flow_maps, t_start = [], [], {}, {}, time.perf_counter()
    for target_name, target in _targets(quick, targets).items():
        for sde_name in ("vp", "ve"):
            key = f"{target_name} / {sde_name}"
            if curves:
                problem = make_problem(target_name, target, sde_name, n, seed)
                floors[key] = _floors(target, n, seed + 1)
                reference = target.sample(n, generator=torch.Generator().manual_seed(seed + 2))
                flow_maps[key] = _metrics(problem.x_ref, reference, target, torch.Generator().manual_seed(seed + 3))
                rows += curve_rows(problem, nfes, tolerances, reference, seed, progress, out_dir)
            if compare:
                compared += compare_rows(make_problem(target_name, target, sde_name, n_compare, seed), compare_nfes,
                                         seed, peers, optimise=not quick)
            print(f"{key}: {time.perf_counter() - t_start:.0f}s so far", flush=True)
    if checkpoint:
        rows.extend(checkpoint_rows(checkpoint, nfes, seed, progress))
    goal = goal_table(compared) if compared else []
    meta = {"seed": seed, "n": n, "n_compare": n_compare, "quick": quick, "nfe_grid": list(nfes),
            "compare_nfe": list(compare_nfes), "tolerances": list(tolerances), "floors": floors,
            "flow_map": flow_maps, "seconds": time.perf_counter() - t_start, "versions": _versions()}
    _write(out_dir, rows, meta, compared, goal)
    return rows


# --- a trained digits model ------------------------------------------------------------------------
def checkpoint_rows(path: str, nfes, seed: int, progress: bool, n: int = 1000) -> list[dict]:
    """Sweep a trained model from ``path``: Fréchet distance in a digits classifier's features and the fraction
    of samples it labels with probability > 0.9."""
    from .data import load_digits
    from .nets import train_digits_classifier
    from .train import model_from_checkpoint

    model, config, shape = model_from_checkpoint(path)
    images, labels = load_digits()
    classifier = train_digits_classifier(images, labels, seed=seed)
    rows = []
    for run, nfe, steps in _budgeted(nfes):
        g = torch.Generator().manual_seed(seed + 10)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = sample(model, model.sde, (n,) + shape, sampler=run.sampler, steps=steps, generator=g,
                         dtype=torch.float32, progress=progress, **run.options)
            x = out.x.clamp(-1, 1)
            confident = float((classifier(x).softmax(1).max(1).values > 0.9).float().mean())
        rows.append({"target": f"digits model ({path})", "sde": config.sde, "sampler": run.label, "nfe_budget": nfe,
                     "steps": steps, "nfe": out.nfe, "seconds": time.perf_counter() - t0,
                     "frechet_classifier": metrics.frechet_distance(x, images, features=classifier.features),
                     "confident": confident})
        print(f"digits model, {run.label} at NFE {out.nfe}: Fréchet {rows[-1]['frechet_classifier']:.1f}, "
              f"confident {confident:.3f} ({rows[-1]['seconds']:.0f}s)", flush=True)  # a network sweep takes minutes
    return rows


# --- output -----------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    """``"2d ring / vp"`` -> ``"2d_ring_vp"``: runs of other characters become one underscore."""
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())


def _versions() -> dict:
    import torchdiffeq
    import torchsde

    versions = {"sgm": __version__, "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
                "torchsde": torchsde.__version__, "numpy": np.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "threads": torch.get_num_threads()}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def _write(out_dir: str, rows: list[dict], meta: dict, compared: list[dict] = (), goal: list[dict] = ()) -> None:
    keys = ["target", "sde", "sampler", "nfe_budget", "steps", "tolerance", "nfe", "seconds", "sw2", "mmd2", "energy",
            "frechet", "nll", "mode_error", "map_error", "diverged", "frechet_classifier", "confident"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "compare.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["target", "sde", "side", "sampler", "nfe_budget", "steps", "nfe", "map_error",
                                    "diverged", "seconds", "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(compared)
    with open(os.path.join(out_dir, "goal.md"), "w") as f:
        f.write(goal_markdown(goal) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "compare": list(compared), "goal": list(goal)}, f, indent=1,
                  default=float)
    groups = sorted({(r["target"], r["sde"].split(" ")[0]) for r in rows if "sw2" in r})
    for target_name, sde_name in groups:
        group = [r for r in rows if r["target"] == target_name and r["sde"].split(" ")[0] == sde_name and "sw2" in r]
        floor = meta["floors"].get(f"{target_name} / {sde_name}", {})
        flow_map = meta["flow_map"].get(f"{target_name} / {sde_name}", {})
        best = _best_per_budget([r for r in compared if (r["target"], r["sde"]) == (target_name, sde_name)])
        for metric in ("sw2", "frechet", "map_error"):
            nfe_curves(group + (best if metric == "map_error" else []), metric, os.path.join(out_dir, f"{metric}_{_slug(target_name)}_{sde_name}.png"),
                       title=f"{target_name}, {sde_name.upper()}: {metric} against NFE", floor=floor.get(metric),
                       limit=flow_map.get(metric))
    digits = [r for r in rows if "frechet_classifier" in r]
    if digits:
        nfe_curves(digits, "frechet_classifier", os.path.join(out_dir, "digits_frechet.png"),
                   title="digits model: Fréchet (classifier features)")


def _best_per_budget(compared: list[dict]) -> list[dict]:
    """For the map-error figure: the best comparison configuration of each side at each budget, as two curves."""
    out = []
    for side, name in (("sgm", "sgm, best configuration"), ("diffusers", "diffusers, best configuration")):
        for nfe in sorted({r["nfe_budget"] for r in compared}):
            hits = [r for r in compared if r["side"] == side and r["nfe_budget"] == nfe and not r["diverged"]]
            if hits:
                out.append({"sampler": name, "nfe": nfe, "map_error": min(r["map_error"] for r in hits)})
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="sgm bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="benchmarks/results", help="folder for results.csv/.json and figures")
    parser.add_argument("--quick", action="store_true", help="2-D only, NFE up to 50, 500 samples, the comparison without "
                        "optimised grids")
    parser.add_argument("--n", type=int, default=None, help="samples per run (default 4000, the comparison 1000; 500 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="a trained digits checkpoint to sweep as well (a network on a CPU: "
                        "use with --quick, which took 9.4 min for the 8×8 U-Net on 2 cores)")
    parser.add_argument("--no-peers", action="store_true", help="skip diffusers even if it is installed")
    parser.add_argument("--progress", action="store_true", help="progress bars for each run")
    parser.add_argument("--targets", nargs="+", choices=tuple(TARGETS), default=None,
                        help="the targets to run (default: all; the 2-D ring with --quick)")
    parser.add_argument("--only", choices=("curves", "compare"), default=None,
                        help="run only the curves (all metrics) or only the sgm-vs-diffusers comparison (map error)")


def check_checkpoint(path: str) -> None:
    """Before any sweep: ``path`` must be a readable sgm checkpoint of an 8×8 one-channel image model (the
    digits classifier judges its samples); otherwise a ``ValueError`` (``CheckpointError``) naming the file."""
    from .train import model_from_checkpoint

    _, config, shape = model_from_checkpoint(path)
    if tuple(shape) != (1, 8, 8):
        raise ValueError(f"--checkpoint {path}: a model of {config.data!r} samples of shape {tuple(shape)}; the "
                         f"checkpoint sweep judges digits models (1, 8, 8) with a digits classifier")


def run_from_args(args) -> int:
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be an integer >= 1, got {args.n}")
    if args.checkpoint:
        check_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    rows = run_sweep(args.out, quick=args.quick, n=args.n, seed=args.seed, checkpoint=args.checkpoint,
                     peers=not args.no_peers, progress=args.progress, curves=args.only != "compare",
                     compare=args.only != "curves", targets=args.targets)
    with open(os.path.join(args.out, "results.json")) as f:
        goal = json.load(f)["goal"]
    print(f"{len(rows)} curve runs in {time.perf_counter() - t0:.0f}s; wrote {args.out}/results.csv, compare.csv, "
          f"goal.md, results.json and figures")
    if rows:
        print(summary_table(rows, (10, 20)))
    if goal:
        print(goal_markdown(goal))
    return 0


def summary_table(rows: list[dict], budgets, metrics_shown=("sw2", "map_error")) -> str:
    """A markdown table of the given metrics at the given NFE budgets, one line per target, SDE and sampler
    (— where a sampler cannot spend that budget or has no such metric, e.g. a stochastic sampler's map error)."""
    head = [f"{m} @ {b}" for m in metrics_shown for b in budgets]
    lines = ["| target | SDE | sampler | " + " | ".join(head) + " |", "|---|---|---|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["target"], r["sde"], r["sampler"]) for r in rows if r.get("nfe_budget")))
    for key in keys:
        values = []
        for m in metrics_shown:
            for b in budgets:
                hit = [r.get(m) for r in rows if (r["target"], r["sde"], r["sampler"]) == key and r.get("nfe_budget") == b]
                values.append(f"{hit[0]:.3g}" if hit and hit[0] is not None and math.isfinite(hit[0]) else "—")
        lines.append("| " + " | ".join(key) + " | " + " | ".join(values) + " |")
    return "\n".join(lines)
