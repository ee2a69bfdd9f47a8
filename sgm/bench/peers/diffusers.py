"""diffusers' schedulers as peers: every configuration a user could pick, on the problem's chain, exact model.

**Configurations** (``configs``, generated from ``FAMILIES``): DDIM; DPM-Solver++ and DPM-Solver multistep and
singlestep; UniPC bh1 and bh2; DEIS; Heun; Euler; LMS — each over its variants, crossed with the timestep
spacings ``SPACINGS`` where the class takes ``timestep_spacing`` and with the default sigmas or one of
``SIGMA_OPTIONS`` where its constructor offers it.

**The chain** is given as ``trained_betas`` from ``ᾱ_i = 1/(1 + σ_i²)`` (``vp_betas``): DDPM's own betas on VP,
NCSN's levels on VE (every deterministic sampler depends only on the noise levels and ``x/scale``, so this is
the VE probability flow exactly, in VP coordinates). A run starts as diffusers' users start, from
``z·init_noise_sigma``; at its k-th call the scheduler gets the exact ``ε`` at the noise level it integrates
with: its own ``sigmas[k]`` where it keeps sigmas, else ``σ`` of its ``alphas_cumprod[t]`` (``problem.eps_at``:
the exact ε on a mixture, the network's on a trained model). The steps for a budget are the most whose
``timesteps`` (one model call each) fit; a row is scored by ``problem.judge``.
"""
from __future__ import annotations

import inspect
import itertools
import math
import time
import warnings
from dataclasses import dataclass

import torch

from ... import DiscreteChain
from ..judge import failed
from ..problems import Problem

__all__ = ["FAMILIES", "SPACINGS", "SIGMA_OPTIONS", "Config", "available", "configs", "vp_betas", "make_scheduler",
           "row", "rows", "rerun"]

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
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler", {"solver_type": ("bh2",), "solver_order": (2, 3)}),
    # bh1's B(h) = h is infinite at σ = 0: diffusers' UniPC bh1 gives NaN ending there (final_sigmas_type="zero")
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler",
     {"solver_type": ("bh1",), "solver_order": (2, 3), "final_sigmas_type": ("sigma_min",)}),
    ("DEIS {solver_order}", "DEISMultistepScheduler", {"solver_order": (2, 3)}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
)
SPACINGS = ("trailing", "leading", "linspace")
SIGMA_OPTIONS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class Config:
    """One diffusers configuration: its row ``label``, the ``scheduler`` class name and its constructor's
    ``options`` as ``(name, value)`` pairs."""

    label: str
    scheduler: str
    options: tuple


def available() -> bool:
    """Whether diffusers is installed."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def configs() -> list[Config]:
    """Every configuration of ``FAMILIES`` × the timestep spacings × (default sigmas or one sigma option) that the
    installed diffusers offers; [] without diffusers."""
    if not available():
        return []
    import diffusers

    out = []
    for template, cls_name, axes in FAMILIES:
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            continue
        takes = inspect.signature(cls.__init__).parameters
        spacings = SPACINGS if "timestep_spacing" in takes else (None,)
        sigma_options = (None,) + tuple(o for o in SIGMA_OPTIONS if o in takes)
        for values, spacing, sigma in itertools.product(itertools.product(*axes.values()), spacings, sigma_options):
            options = dict(zip(axes, values))
            extra = {**({"timestep_spacing": spacing} if spacing else {}), **({sigma: True} if sigma else {})}
            label = ", ".join(["diffusers " + template.format(**options)] + [spacing or "own spacing"]
                              + ([sigma.removeprefix("use_").replace("_", "-")] if sigma else []))
            out.append(Config(label, cls_name, tuple({**options, **extra}.items())))
    return out


def vp_betas(chain: DiscreteChain) -> list[float]:
    """The β_i of the VP chain with the noise levels of ``chain``: ``ᾱ_i = 1/(1 + σ_i²)``, ``β_i = 1 - ᾱ_i/ᾱ_{i-1}``."""
    abar = 1 / (1 + chain.sigmas**2)
    return torch.cat([1 - abar[:1], 1 - abar[1:] / abar[:-1]]).tolist()


def make_scheduler(config: Config, betas: list[float], nfe: int):
    """The scheduler of ``config`` on ``betas``, set to the most steps whose run makes at most ``nfe`` model calls
    (one per entry of ``timesteps``; at least 2 steps), and those steps; ``(None, None)`` when even 2 cost more."""
    import diffusers

    scheduler = getattr(diffusers, config.scheduler)(num_train_timesteps=len(betas), trained_betas=betas,
                                                     prediction_type="epsilon", **dict(config.options))

    def calls(steps):
        scheduler.set_timesteps(steps)
        return len(scheduler.timesteps)

    steps = max(nfe, 2)
    while steps > 2 and calls(steps) > nfe:  # shrink in proportion, never below 2 steps
        steps = max(2, min(steps - 1, steps * nfe // calls(steps)))
    if calls(steps) > nfe:
        return None, None
    while steps + 1 <= nfe and calls(steps + 1) <= nfe:
        steps += 1
    calls(steps)
    return scheduler, steps


def row(config: Config, problem: Problem, nfe: int, betas: list[float] | None = None,
        seen: dict | None = None) -> dict | None:
    """One run of ``config`` from ``z·init_noise_sigma`` (see the module docstring). Any failure or non-finite
    result is a diverged row with the error; None when the budget is below 2 steps. ``seen`` caches results by
    schedule (class, options but the spacing, timesteps, sigmas): a configuration whose spacing the scheduler
    ignores (Karras sigmas, …) reuses the identical run's result, naming it in ``same_as``."""
    out = {"target": problem.target_name, "sde": problem.sde_name, "side": "diffusers", "sampler": config.label,
           "nfe_budget": nfe}
    t0 = time.perf_counter()
    try:
        scheduler, steps = make_scheduler(config, betas or vp_betas(problem.chain), nfe)
        if scheduler is None:
            return None
        out["steps"] = steps
        sigmas = getattr(scheduler, "sigmas", None)
        key = (config.scheduler, tuple(o for o in config.options if o[0] != "timestep_spacing"),
               tuple(scheduler.timesteps.tolist()), tuple(sigmas.tolist()) if sigmas is not None else None)
        if seen is not None and key in seen:
            return {**seen[key], **out, "same_as": seen[key]["sampler"]}
        abar = scheduler.alphas_cumprod.double()
        x = problem.z * float(scheduler.init_noise_sigma)
        for k, t in enumerate(scheduler.timesteps):
            sigma = float(sigmas[k]) if sigmas is not None else math.sqrt((1 - abar[int(t)]) / abar[int(t)])
            x = scheduler.step(problem.eps_at(scheduler.scale_model_input(x, t), sigma), t, x).prev_sample
        out.update(problem.judge(x, len(scheduler.timesteps), t0))
        if seen is not None:
            seen[key] = out
        return out
    except Exception as e:  # a configuration diffusers rejects or that breaks down is a row, not a crash
        return {**out, **failed(e, t0)}


def _quiet(run):
    """``run()`` with diffusers' logging at errors only and its FutureWarnings (it deprecates its DPM-Solver (ε),
    still a choice) silenced."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return run()


def rows(problem: Problem, nfes) -> list[dict]:
    """Every configuration of ``configs`` at every budget on ``problem``."""
    betas, seen = vp_betas(problem.chain), {}
    made = _quiet(lambda: [row(c, problem, nfe, betas, seen) for c in configs() for nfe in nfes])
    return [r for r in made if r is not None]


def rerun(done: dict, problem) -> dict | None:
    """The configuration and budget of the row ``done`` (by its label) run again on ``problem``."""
    config = next(c for c in configs() if c.label == done["sampler"])
    return _quiet(lambda: row(config, problem, done["nfe_budget"]))
