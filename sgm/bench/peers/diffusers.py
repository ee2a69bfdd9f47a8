"""diffusers' schedulers as peers: every configuration a user could pick, on the problem's chain, exact model.

**Configurations** (``configs``, generated from ``FAMILIES``): DDIM; DPM-Solver++ and DPM-Solver multistep and
singlestep; UniPC bh1 and bh2; DEIS; Heun; Euler; LMS — each over its variants, crossed with the timestep
spacings ``SPACINGS`` where the class takes ``timestep_spacing`` and with the default sigmas or one of
``SIGMA_OPTIONS`` where its constructor offers it.

**Stochastic configurations** (``stochastic_configs``, from ``STOCHASTIC_FAMILIES``, crossed the same way): DDPM
(variances β̃ and β), Euler-ancestral, KDPM2-ancestral, SDE-DPM-Solver++ 1–3 (midpoint, heun), SA-Solver
(predictor and corrector orders 1–3 paired as (1, 1), (2, 2), (3, 3) — diffusers' default is (2, 2) — with its
default data prediction and τ window; the other pairs, the noise-prediction variant and other τ are left out to
keep the sweep within minutes on 2 cores) and DPM-Solver SDE (torchsde's Brownian tree). Their runs
(``stochastic_rows``) draw noise from a generator seeded ``seed`` (DPM-Solver SDE:
``noise_sampler_seed = seed``) and are scored by a distribution ``judge``.

**The chain** is given as ``trained_betas`` from ``ᾱ_i = 1/(1 + σ_i²)`` (``vp_betas``): DDPM's own betas on VP,
NCSN's levels on VE (every deterministic sampler depends only on the noise levels and ``x/scale``, so this is
the VE probability flow exactly, in VP coordinates). A run starts as diffusers' users start, from
``z·init_noise_sigma``; at its k-th call the scheduler gets the exact ``ε`` at the noise level it integrates
with (``noise_level``): its own ``sigmas[k]`` where it keeps sigmas, else ``σ`` of its ``alphas_cumprod[t]``; a
σ-based scheduler's midpoint stage (KDPM2-ancestral, DPM-Solver SDE) the σ of that stage (``problem.eps_at``: the
exact ε on a mixture, the network's on a trained model). The steps for a budget are the most whose ``timesteps``
(one model call each) fit; a row is scored by ``problem.judge`` (a stochastic row by the leg's ``judge``).
"""
from __future__ import annotations

import inspect
import itertools
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ... import DiscreteChain
from ..judge import STOCHASTIC_METRICS, failed
from ..problems import Problem

__all__ = ["FAMILIES", "STOCHASTIC_FAMILIES", "SPACINGS", "SIGMA_OPTIONS", "Config", "available", "configs",
           "stochastic_configs", "vp_betas", "fit_budget", "make_scheduler", "noise_level", "drive", "run", "quiet",
           "row", "rows", "stochastic_rows", "rerun"]

# (family label template, scheduler class, option axes). Timestep spacings and sigma options are crossed in
# where the class's constructor takes them; labels fill the template from the options.
FAMILIES = (
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
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler",
     {"solver_type": ("bh2",), "solver_order": (2, 3)}),
    # bh1's B(h) = h is infinite at σ = 0: diffusers' UniPC bh1 gives NaN ending there (final_sigmas_type="zero")
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler",
     {"solver_type": ("bh1",), "solver_order": (2, 3), "final_sigmas_type": ("sigma_min",)}),
    ("DEIS {solver_order}", "DEISMultistepScheduler", {"solver_order": (2, 3)}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
)
STOCHASTIC_FAMILIES = (
    ("DDPM {variance_type}", "DDPMScheduler",
     {"variance_type": ("fixed_small", "fixed_large"), "clip_sample": (False,)}),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", {}),
    ("KDPM2 ancestral", "KDPM2AncestralDiscreteScheduler", {}),
    ("SDE-DPM-Solver++ 1M", "DPMSolverMultistepScheduler", {"algorithm_type": ("sde-dpmsolver++",),
                                                             "solver_order": (1,)}),  # its solver type: unused
    ("SDE-DPM-Solver++ {solver_order}M {solver_type}", "DPMSolverMultistepScheduler",
     {"algorithm_type": ("sde-dpmsolver++",), "solver_order": (2, 3), "solver_type": ("midpoint", "heun")}),
    *(("SA-Solver {predictor_order}/{corrector_order}", "SASolverScheduler",  # orders paired: see the docstring
       {"predictor_order": (order,), "corrector_order": (order,)}) for order in (1, 2, 3)),
    ("DPM-Solver SDE", "DPMSolverSDEScheduler", {}),
)
SPACINGS = ("trailing", "leading", "linspace")
SIGMA_OPTIONS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class Config:
    """One diffusers configuration: its row ``label``, the ``scheduler`` class name, its constructor's ``options``
    and the keyword arguments of ``set_timesteps`` beside the step count (``set_timesteps``: FlowMatch's dynamic
    shift ``mu``), each as ``(name, value)`` pairs."""

    label: str
    scheduler: str
    options: tuple
    set_timesteps: tuple = ()


def available() -> bool:
    """Whether diffusers is installed."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def installed(families):
    """``(template, class name, axes, takes, sigma options)`` of each of ``families`` whose scheduler the installed
    diffusers has: ``takes``, its constructor's parameters; the sigma options, ``None`` and those of
    ``SIGMA_OPTIONS`` it takes."""
    import diffusers

    for template, cls_name, axes in families:
        cls = getattr(diffusers, cls_name, None)
        if cls is not None:
            takes = inspect.signature(cls.__init__).parameters
            yield template, cls_name, axes, takes, (None,) + tuple(o for o in SIGMA_OPTIONS if o in takes)


def configs(families=FAMILIES) -> list[Config]:
    """Every configuration of ``families`` × the timestep spacings × (default sigmas or one sigma option) that the
    installed diffusers offers; [] without diffusers."""
    if not available():
        return []
    out = []
    for template, cls_name, axes, takes, sigma_options in installed(families):
        spacings = SPACINGS if "timestep_spacing" in takes else (None,)
        for values, spacing, sigma in itertools.product(itertools.product(*axes.values()), spacings, sigma_options):
            options = dict(zip(axes, values))
            extra = {**({"timestep_spacing": spacing} if spacing else {}), **({sigma: True} if sigma else {})}
            label = ", ".join(["diffusers " + template.format(**options)] + [spacing or "own spacing"]
                              + ([sigma.removeprefix("use_").replace("_", "-")] if sigma else []))
            out.append(Config(label, cls_name, tuple({**options, **extra}.items())))
    return out


def stochastic_configs() -> list[Config]:
    """``configs`` of ``STOCHASTIC_FAMILIES`` (DPM-Solver SDE only where torchsde imports)."""
    try:
        import torchsde  # noqa: F401
    except ImportError:
        return [c for c in configs(STOCHASTIC_FAMILIES) if c.scheduler != "DPMSolverSDEScheduler"]
    return configs(STOCHASTIC_FAMILIES)


def vp_betas(chain: DiscreteChain) -> list[float]:
    """The β_i of the VP chain with the noise levels of ``chain``: ``ᾱ_i = 1/(1 + σ_i²)``, ``β_i = 1 - ᾱ_i/ᾱ_{i-1}``."""
    abar = 1 / (1 + chain.sigmas**2)
    return torch.cat([1 - abar[:1], 1 - abar[1:] / abar[:-1]]).tolist()


def fit_budget(scheduler, nfe: int, set_timesteps=()) -> int | None:
    """Set ``scheduler`` to the most steps whose run makes at most ``nfe`` model calls (one per entry of
    ``timesteps``; at least 2 steps; ``set_timesteps``: its other keyword arguments as pairs) and return them;
    None when even 2 cost more."""
    kwargs = dict(set_timesteps)

    def calls(steps):
        scheduler.set_timesteps(steps, **kwargs)
        return len(scheduler.timesteps)

    steps = max(nfe, 2)
    while steps > 2 and calls(steps) > nfe:  # shrink in proportion, never below 2 steps
        steps = max(2, min(steps - 1, steps * nfe // calls(steps)))
    if calls(steps) > nfe:
        return None
    while steps + 1 <= nfe and calls(steps + 1) <= nfe:
        steps += 1
    calls(steps)
    return steps


def make_scheduler(config: Config, betas: list[float], nfe: int):
    """The scheduler of ``config`` on ``betas``, set to the most steps whose run makes at most ``nfe`` model calls
    (``fit_budget``), and those steps; ``(None, None)`` when even 2 steps cost more."""
    import diffusers

    scheduler = getattr(diffusers, config.scheduler)(num_train_timesteps=len(betas), trained_betas=betas,
                                                     prediction_type="epsilon", **dict(config.options))
    steps = fit_budget(scheduler, nfe, config.set_timesteps)
    return (scheduler, steps) if steps is not None else (None, None)


def noise_level(scheduler, k: int, t) -> float:
    """The noise level of the scheduler's ``k``-th model call (at timestep ``t``): its own ``sigmas[k]`` where it
    keeps sigmas, else ``σ`` of its ``alphas_cumprod[t]``; but a σ-based scheduler gives the model
    ``x/√(σ² + 1)`` with the σ of its stage, which at a midpoint stage (KDPM2-ancestral's ``sigmas_interpol``,
    DPM-Solver SDE's ``mid_point_sigma``) is not ``sigmas[k]``: there σ is read off that factor
    (``√(1/c² - 1)``; diffusers rounds ``c`` to float32, ≤ 3e-4 relative in σ at σ = 0.01)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        abar = float(scheduler.alphas_cumprod[int(t)])
        return math.sqrt((1 - abar) / abar)
    sigma = float(sigmas[k])
    c = float(scheduler.scale_model_input(torch.ones((), dtype=torch.float64), t))
    staged = math.sqrt(max(1 / c**2 - 1, 0.0))
    return sigma if c == 1.0 or math.isclose(staged, sigma, rel_tol=1e-3) else staged


def drive(scheduler, problem: Problem, model, step_options: dict | None = None) -> torch.Tensor:
    """diffusers' sampling loop on a set ``scheduler``, from its users' start ``z·init_noise_sigma``: the k-th call
    gets ``model(scheduler.scale_model_input(x, t), scheduler, k, t)`` and each ``step`` the keyword arguments
    ``step_options`` (a stochastic scheduler's ``generator``). FlowMatch schedulers have neither
    ``init_noise_sigma`` nor ``scale_model_input``: their users start from ``z`` and give the state to the model as
    it is. Returns the final state."""
    x = problem.z * float(getattr(scheduler, "init_noise_sigma", 1.0))
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    kwargs = step_options or {}
    for k, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model(scale(x, t), scheduler, k, t), t, x, **kwargs).prev_sample
    return x


def run(config: Config, problem: Problem, nfe: int, make, model, seen: dict | None = None, annotate=None,
        step_options=None, judge=None) -> dict | None:
    """One run (``drive``) of ``config`` on ``problem`` within ``nfe`` model calls, judged by ``problem.judge`` (or,
    a stochastic run, by ``judge(x)``: ``STOCHASTIC_METRICS`` and ``diverged``): ``make()`` gives
    ``(scheduler, steps)`` set for the budget (``(None, None)``: below 2 steps, no row), and the k-th call gets
    ``model(x, scheduler, k, t)``, the exact prediction at the noise level that call uses; ``annotate(scheduler)``
    adds fields to the row, ``step_options(scheduler)`` keyword arguments to each ``step``. Any failure or
    non-finite result is a diverged row with the error. ``seen`` caches results by schedule (class, options but the
    spacing, timesteps, sigmas): a configuration whose spacing the scheduler ignores (Karras sigmas, …) reuses the
    identical run's result, naming it in ``same_as``."""
    out = {"target": problem.target_name, "sde": problem.sde_name, "side": "diffusers", "sampler": config.label,
           "nfe_budget": nfe}
    t0 = time.perf_counter()
    try:
        scheduler, steps = make()
        if scheduler is None:
            return None
        out["steps"] = steps
        out.update(annotate(scheduler) if annotate else {})
        sigmas = getattr(scheduler, "sigmas", None)
        key = (config.scheduler, tuple(o for o in config.options if o[0] != "timestep_spacing"),
               tuple(scheduler.timesteps.tolist()), tuple(sigmas.tolist()) if sigmas is not None else None)
        if seen is not None and key in seen:
            return {**seen[key], **out, "same_as": seen[key]["sampler"]}
        x = drive(scheduler, problem, model, step_options(scheduler) if step_options else None)
        if judge is None:
            out.update(problem.judge(x, len(scheduler.timesteps), t0))
        else:
            out.update({"nfe": len(scheduler.timesteps), "seconds": time.perf_counter() - t0, **judge(x)})
        if seen is not None:
            seen[key] = out
        return out
    except Exception as e:  # a configuration diffusers rejects or that breaks down is a row, not a crash
        return {**out, **failed(e, t0, keys=("map_error",) if judge is None else STOCHASTIC_METRICS)}


def _eps_model(problem: Problem):
    """The problem's ε at the noise level of each call (``problem.eps_at`` at ``noise_level``)."""

    def model(x, scheduler, k, t):
        return problem.eps_at(x, noise_level(scheduler, k, t))

    return model


def _generator(seed: int):
    """``step_options`` of a stochastic run: a generator seeded ``seed`` where the scheduler's ``step`` takes one."""

    def options(scheduler) -> dict:
        takes = inspect.signature(scheduler.step).parameters
        return {"generator": torch.Generator().manual_seed(seed)} if "generator" in takes else {}

    return options


def row(config: Config, problem: Problem, nfe: int, betas: list[float] | None = None,
        seen: dict | None = None, judge=None, seed: int = 0) -> dict | None:
    """One run of ``config`` on the problem's chain (``run``; see the module docstring), by map error, or with a
    ``judge`` a stochastic run scored by ``judge(x)``, its noise seeded ``seed`` (DPM-Solver SDE:
    ``noise_sampler_seed``)."""
    betas = betas or vp_betas(problem.chain)
    made = config
    if judge is not None and config.scheduler == "DPMSolverSDEScheduler":
        made = Config(config.label, config.scheduler, config.options + (("noise_sampler_seed", seed),))
    return run(config, problem, nfe, lambda: make_scheduler(made, betas, nfe), _eps_model(problem), seen,
               step_options=_generator(seed) if judge is not None else None, judge=judge)


@contextmanager
def quiet():
    """diffusers logging only errors, its deprecation warnings silenced (its DPM-Solver (ε) is deprecated: still a
    choice), and torchsde's on the float32 ends of its tree's interval and numpy 2's on KDPM2's σ interpolation."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "Should have", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _rows(problem: Problem, nfes, made: list[Config], judge=None, seed: int = 0) -> list[dict]:
    """``row`` of every configuration of ``made`` at every budget; none on a problem off VP and VE (the
    rectified-flow problem's peers are ``peers.diffusers_flow``'s)."""
    if problem.sde_name not in ("vp", "ve"):
        return []
    betas, seen = vp_betas(problem.chain), {}
    with quiet():
        out = [row(c, problem, nfe, betas, seen, judge, seed) for c in made for nfe in nfes]
    return [r for r in out if r is not None]


def rows(problem: Problem, nfes) -> list[dict]:
    """Every configuration of ``configs`` at every budget on ``problem``, by map error."""
    return _rows(problem, nfes, configs())


def stochastic_rows(problem: Problem, nfes, judge, seed: int) -> list[dict]:
    """Every configuration of ``stochastic_configs`` at every budget on ``problem``, scored by ``judge(x)``
    (``STOCHASTIC_METRICS`` and ``diverged``), noise seeded ``seed``."""
    return _rows(problem, nfes, stochastic_configs(), judge, seed)


def stochastic_rerun(done: dict, problem: Problem, judge, seed: int) -> dict | None:
    """The configuration and budget of the stochastic row ``done`` (by its label) run again on ``problem``, scored by
    ``judge(x)``, its noise seeded ``seed``."""
    config = next(c for c in stochastic_configs() if c.label == done["sampler"])
    with quiet():
        return row(config, problem, done["nfe_budget"], judge=judge, seed=seed)


def rerun(done: dict, problem) -> dict | None:
    """The configuration and budget of the comparison row ``done`` (by its label) run again on ``problem``."""
    config = next(c for c in configs() if c.label == done["sampler"])
    with quiet():
        return row(config, problem, done["nfe_budget"])
