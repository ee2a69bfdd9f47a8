"""diffusers' flow-matching schedulers as peers on the rectified-flow problems: every configuration a user could pick.

**Configurations** (``configs``, generated from ``FAMILIES``, each at ``shift`` / ``flow_shift`` 1 and 3):

- ``FlowMatchEulerDiscreteScheduler``: the static shift, or ``use_dynamic_shifting`` with ``time_shift_type``
  ``"exponential"`` (``mu = log s``) or ``"linear"`` (``mu = s``), the two shifts a pipeline computes from the image
  size (the same σ(t) as the static shift, but the grid's lowest σ is shifted once, not twice); with the default
  sigmas or ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas``; with and without
  ``shift_terminal=0.1`` (LTX-Video's).
- ``FlowMatchHeunDiscreteScheduler`` (its only option is the shift).
- ``DPMSolverMultistepScheduler`` (DPM-Solver++ 1, 2M and 3M, ``solver_type`` midpoint and heun,
  ``lower_order_final`` and ``euler_at_final`` on and off), ``DPMSolverSinglestepScheduler`` (DPM-Solver++ 1–3,
  midpoint and heun, ``lower_order_final`` on and off), ``UniPCMultistepScheduler`` (bh1 and bh2, orders 1–3,
  ``lower_order_final`` on and off, the corrector on every step or ``disable_corrector`` on all),
  ``DEISMultistepScheduler`` (orders 1–3, ``lower_order_final`` on and off) and ``SASolverScheduler`` in its
  deterministic setting ``tau_func = 0`` (predictor and corrector orders 1–4, ``lower_order_final`` on and off) —
  each with ``use_flow_sigmas=True, prediction_type="flow_prediction"``, with its flow sigmas or one of the sigma
  options its constructor offers (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``,
  ``use_lu_lambdas``), and ``final_sigmas_type`` ``"zero"`` and ``"sigma_min"`` where it takes one.

Left out, as no choice for this problem: ``stochastic_sampling`` and SA-Solver's default ``tau_func`` (stochastic);
DPM-Solver (ε) and SA-Solver's ``noise_prediction``, which diffusers refuses with a flow prediction; ``invert_sigmas``
(Mochi's reversed time convention); UniPC's ``predict_x0=False`` (no flow prediction there) and ``solver_p``;
``use_dynamic_shifting`` on the flow-sigma schedulers, where ``mu`` only sets ``flow_shift = e^mu`` (the same
schedule); ``timestep_spacing``, which flow sigmas ignore. With a sigma option, DPM-Solver, DEIS and SA-Solver build
their sigmas from the default DDPM chain's noise levels (0.01 … 157) and read them as flow sigmas (UniPC maps its
Karras sigmas into ``σ/(1 + σ)`` first): a σ above 1 is no state of rectified flow, and such a run is a failed row.

**The start.** Every run starts as diffusers' users start: ``x_T = z`` (``init_noise_sigma = 1``) is its state at
its first sigma. FlowMatch's first sigma is the exact top σ = 1, where sgm starts; DPM-Solver's, DEIS's and
SA-Solver's flow sigmas start at ``s(1 - 1/N)/(1 + (s - 1)(1 - 1/N))`` (0.999 at shift 1, 0.99967 at shift 3),
UniPC's at ``1 - 10⁻⁶`` (with Karras sigmas at ``157/158``). Placing ``z`` at a lower sigma is part of what a user
gets, and each row is judged against the same reference (the exact map from σ = 1); the row records its
``start_sigma`` and ``start_error``, the map error of the *exact* flow from ``z`` placed there: what the start alone
costs. At its k-th call a scheduler gets the exact flow velocity ``ε̂ - x̂_0`` at its ``sigmas[k]``
(``problems.velocity_at``). The steps for a budget are the most whose ``timesteps`` (one model call each) fit.
"""
from __future__ import annotations

import itertools
import math

import torch

from ...samplers.optimize import map_error
from ..problems import TRAIN_STEPS, Problem, exact_rf_flow_map, velocity_at
from . import diffusers as _diffusers
from .diffusers import Config, fit_budget, quiet, run

__all__ = ["SHIFTS", "SHIFT_TERMINAL", "FAMILIES", "SIGMA_OPTIONS", "FINAL_SIGMAS", "available", "configs",
           "make_scheduler", "velocity_model", "step_options", "row", "rows", "start_error"]

SHIFTS = (1.0, 3.0)
SHIFT_TERMINAL = 0.1  # LTX-Video's shift_terminal
SIGMA_OPTIONS = _diffusers.SIGMA_OPTIONS  # the same sigma options as the VP schedulers
FINAL_SIGMAS = ("zero", "sigma_min")
EVERY_STEP = tuple(range(TRAIN_STEPS))  # disable_corrector on every step


def no_noise(t) -> float:
    """SA-Solver's ``tau_func`` of its deterministic (ODE) setting: τ = 0 at every timestep."""
    return 0


_ON_OFF = (True, False)
_FLOW = {"use_flow_sigmas": (True,), "prediction_type": ("flow_prediction",)}
# (label template, scheduler class, option axes); the shift, the sigma options and final_sigmas_type are crossed in
# where the class's constructor takes them, and FlowMatch Euler's shifting modes (see the module docstring).
FAMILIES = (
    ("FlowMatch Euler", "FlowMatchEulerDiscreteScheduler", {"shift_terminal": (None, SHIFT_TERMINAL)}),
    ("FlowMatch Heun", "FlowMatchHeunDiscreteScheduler", {}),
    ("DPM-Solver++ 1", "DPMSolverMultistepScheduler", {**_FLOW, "solver_order": (1,)}),
    ("DPM-Solver++ {solver_order}M {solver_type}", "DPMSolverMultistepScheduler",
     {**_FLOW, "solver_order": (2, 3), "solver_type": ("midpoint", "heun"), "lower_order_final": _ON_OFF,
      "euler_at_final": (False, True)}),
    ("DPM-Solver++ singlestep 1", "DPMSolverSinglestepScheduler", {**_FLOW, "solver_order": (1,)}),
    ("DPM-Solver++ singlestep {solver_order} {solver_type}", "DPMSolverSinglestepScheduler",
     {**_FLOW, "solver_order": (2, 3), "solver_type": ("midpoint", "heun"), "lower_order_final": _ON_OFF}),
    ("UniPC {solver_type} 1", "UniPCMultistepScheduler",
     {**_FLOW, "solver_type": ("bh1", "bh2"), "solver_order": (1,), "disable_corrector": ((), EVERY_STEP)}),
    ("UniPC {solver_type} {solver_order}", "UniPCMultistepScheduler",
     {**_FLOW, "solver_type": ("bh1", "bh2"), "solver_order": (2, 3), "lower_order_final": _ON_OFF,
      "disable_corrector": ((), EVERY_STEP)}),
    ("DEIS 1", "DEISMultistepScheduler", {**_FLOW, "solver_order": (1,)}),
    ("DEIS {solver_order}", "DEISMultistepScheduler", {**_FLOW, "solver_order": (2, 3), "lower_order_final": _ON_OFF}),
    ("SA-Solver {predictor_order}/{corrector_order} (tau 0)", "SASolverScheduler",
     {**_FLOW, "predictor_order": (1, 2, 3, 4), "corrector_order": (1, 2, 3, 4), "lower_order_final": _ON_OFF,
      "tau_func": (no_noise,)}),
)
_SILENT = {"use_flow_sigmas", "prediction_type", "tau_func", "solver_order", "solver_type", "predictor_order",
           "corrector_order"}  # in the template, or the same for every row


def available() -> bool:
    """Whether diffusers is installed (``peers.diffusers.available``)."""
    return _diffusers.available()


def _words(name: str, value) -> list[str]:
    """A non-template option's words in a row label."""
    if name == "lower_order_final":
        return ["lower-order-final" if value else "no lower-order-final"]
    if name == "euler_at_final":
        return ["euler-at-final"] if value else []
    if name == "disable_corrector":
        return ["no corrector"] if value else []
    if name == "shift_terminal":
        return [f"shift-terminal {value:g}"] if value else []
    if name == "final_sigmas_type":
        return [f"final {value}"]
    return [] if name in _SILENT else [f"{name}={value}"]


def _shiftings(cls_name: str, shift: float) -> list[tuple[str, dict, dict]]:
    """``(label, options, set_timesteps)`` of each way to shift by ``shift``: FlowMatch Euler's static shift and its
    dynamic shifts (module docstring); the static one for the others."""
    if cls_name == "FlowMatchHeunDiscreteScheduler":
        return [(f"shift {shift:g}", {"shift": shift}, {})]
    if cls_name != "FlowMatchEulerDiscreteScheduler":
        return [(f"shift {shift:g}", {"flow_shift": shift}, {})]
    dynamic = {"use_dynamic_shifting": True}
    return [(f"shift {shift:g}", {"shift": shift}, {}),
            (f"shift {shift:g} dynamic exponential", {**dynamic, "time_shift_type": "exponential"},
             {"mu": math.log(shift)}),
            (f"shift {shift:g} dynamic linear", {**dynamic, "time_shift_type": "linear"}, {"mu": shift})]


def configs() -> list[Config]:
    """Every configuration of ``FAMILIES`` × the shifts (and FlowMatch Euler's shifting modes) × (its sigmas or one
    sigma option) × ``final_sigmas_type`` that the installed diffusers offers; [] without diffusers."""
    if not available():
        return []
    out = []
    for template, cls_name, axes, takes, sigma_options in _diffusers.installed(FAMILIES):
        finals = FINAL_SIGMAS if "final_sigmas_type" in takes else (None,)
        for values, shift, sigma, final in itertools.product(itertools.product(*axes.values()), SHIFTS, sigma_options,
                                                             finals):
            options = dict(zip(axes, values))
            for shift_label, shift_options, set_timesteps in _shiftings(cls_name, shift):
                extra = {**shift_options, **({sigma: True} if sigma else {}),
                         **({"final_sigmas_type": final} if final else {})}
                words = [w for k, v in {**options, **extra}.items() if k not in shift_options
                         and k not in SIGMA_OPTIONS for w in _words(k, v)]
                label = ", ".join(["diffusers " + template.format(**options), shift_label] + words
                                  + ([sigma.removeprefix("use_").replace("_", "-")] if sigma else []))
                out.append(Config(label, cls_name, tuple({**options, **extra}.items()), tuple(set_timesteps.items())))
    return out


def make_scheduler(config: Config, nfe: int):
    """The scheduler of ``config`` (``num_train_timesteps=1000``, diffusers' default betas, as a flow model's
    scheduler has them) set to the most steps whose run makes at most ``nfe`` model calls, and those steps;
    ``(None, None)`` when even 2 steps cost more."""
    import diffusers

    scheduler = getattr(diffusers, config.scheduler)(num_train_timesteps=TRAIN_STEPS, **dict(config.options))
    steps = fit_budget(scheduler, nfe, config.set_timesteps)
    return (scheduler, steps) if steps is not None else (None, None)


def velocity_model(problem: Problem):
    """The exact flow velocity at the k-th call's flow sigma ``sigmas[k]``."""

    def model(x, scheduler, k, t):
        return velocity_at(problem.target, x, float(scheduler.sigmas[k]))

    return model


def step_options(scheduler) -> dict:
    """A seeded generator for a scheduler whose ``step`` draws noise (SA-Solver draws it even at τ = 0, times 0)."""
    import inspect

    return {"generator": torch.Generator().manual_seed(0)} if "generator" in inspect.signature(
        scheduler.step).parameters else {}


def row(config: Config, problem: Problem, nfe: int, seen: dict | None = None) -> dict | None:
    """One run of ``config`` from ``x_T = z`` at its first sigma (``peers.diffusers.run``), with its ``start_sigma``."""
    return run(config, problem, nfe, lambda: make_scheduler(config, nfe), velocity_model(problem), seen,
               annotate=lambda s: {"start_sigma": float(s.sigmas[0])}, step_options=step_options)


def start_error(problem: Problem, sigma: float) -> float:
    """The map error of the exact flow from ``z`` placed at flow sigma ``sigma`` (0 at σ = 1; NaN outside
    ``(0, 1]``): what starting there costs a sampler with no discretisation error."""
    if sigma == 1:
        return 0.0
    if not 0 < sigma < 1:
        return float("nan")
    return map_error(exact_rf_flow_map(problem.target, problem.z, sigma), problem.x_ref)


def rows(problem: Problem, nfes) -> list[dict]:
    """Every configuration of ``configs`` at every budget on a rectified-flow problem (none on another), each with
    the ``start_error`` of its first sigma."""
    if problem.sde_name != "rf":
        return []
    seen, starts = {}, {}
    with quiet():
        made = [r for r in (row(c, problem, nfe, seen) for c in configs() for nfe in nfes) if r is not None]
    for r in made:
        sigma = r.get("start_sigma")
        if sigma is not None:
            if sigma not in starts:
                starts[sigma] = start_error(problem, sigma)
            r["start_error"] = starts[sigma]
    return made
