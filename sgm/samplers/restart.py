"""Restart sampling (Xu et al., 2023): EDM's Heun on the main grid, with forward re-noising jumps and Heun inner
steps that repeat chosen intervals of noise level.

On ``y = x/α`` with the noise level ``σ = std/α`` (``y = x_0 + σ z``) a restart interval ``[σ_min, σ_max]`` with
``K`` repeats of ``n`` inner levels runs, when the main backward process reaches the grid node nearest to ``σ_min``
(the paper's code snaps ``σ_min`` to it; here among the nodes after the first),

    repeat K times:   y ← y + s_noise·√(σ_max² - σ_min²)·ξ                  (the forward process from σ_min to σ_max)
                      then n - 1 Heun steps (``sgm.samplers.edm.Heun``) on the Karras levels (ρ = 7)
                      σ_max = σ^(0) > … > σ^(n-1) = σ_min

and the main process continues from the node. With the exact score each jump leaves the marginal at ``σ_max`` exact
and the ODE brings it back to ``σ_min``; the jumps contract the error the main ODE has accumulated (the paper's
argument), at the cost of the inner steps.

Evaluations: the main Heun steps (``2·steps - 1`` with the final denoising; one fewer per Euler step, from ``α = 0``
or over more than four decades of ``σ``: ``sgm.samplers.edm``) plus
``Σ_i K_i·2(n_i - 1)`` for the restart segments (``segment_evals``, spent inside the steps that reach their nodes;
their inner steps are always Heun's), whatever the grid (with at least two noisy nodes).

Noise: one draw per jump. The first jump over an interval is the increment of the sample's Brownian path over that
interval of path time, named ``(t(σ_max), t(σ_min))``; a repeat, or an interval overlapping one already named, is an
independent forward process, a draw with no interval (a Brownian source would answer a repeated interval with the
same increment).

``intervals``: a preset of the paper (``PRESETS``: the configurations of its Tables 3 and 5 and of its Stable
Diffusion runs) or a list of ``(σ_min, σ_max, K, n)``; ``repeats`` and ``inner_steps``, when given, replace every
interval's ``K`` and ``n``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..checks import integer, positive
from .edm import Heun
from .grid import KARRAS_RHO, Node, TimeGrid
from .solver import Model

__all__ = ["Restart", "PRESETS", "Interval"]


class Interval(NamedTuple):
    sigma_min: float
    sigma_max: float
    repeats: int   # K
    levels: int    # n: inner noise levels, n - 1 Heun steps


# (σ_min, σ_max, K, n), from the paper's code (benchmarks/params_*.txt, the Stable Diffusion pipeline)
PRESETS = {
    "cifar10_vp": (Interval(0.06, 0.30, 2, 3),),                     # Table 3, 18 main steps
    "cifar10_edm": (Interval(0.14, 0.30, 2, 3),),                    # EDM and PFGM++, 18 main steps
    "imagenet64": (Interval(19.35, 40.79, 1, 4), Interval(1.09, 1.92, 1, 4), Interval(0.59, 1.09, 5, 4),
                   Interval(0.30, 0.59, 5, 4), Interval(0.06, 0.30, 6, 6)),   # Table 5, 36 main steps, NFE 203
    "stable_diffusion": (Interval(0.1, 2.0, 2, 10),),                # guidance 5 and 8
}


def _intervals(intervals, repeats, inner_steps) -> tuple[Interval, ...]:
    if isinstance(intervals, str):
        if intervals not in PRESETS:
            raise ValueError(f"intervals must be one of the presets {tuple(PRESETS)} or a list of "
                             f"(sigma_min, sigma_max, repeats, levels), got {intervals!r}")
        out = PRESETS[intervals]
    else:
        if not isinstance(intervals, (list, tuple)) or not all(isinstance(i, (list, tuple)) and len(i) == 4
                                                               for i in intervals):
            raise TypeError("intervals must be a preset name or a list of (sigma_min, sigma_max, repeats, levels), "
                            f"got {intervals!r}")
        out = []
        for lo, hi, k, n in intervals:
            lo, hi = positive("intervals sigma_min", lo), positive("intervals sigma_max", hi)
            if hi <= lo:
                raise ValueError(f"intervals need sigma_min < sigma_max, got ({lo}, {hi})")
            out.append(Interval(lo, hi, integer("intervals repeats", k, 0), integer("intervals levels", n, 2)))
        out = tuple(out)
    repeats = None if repeats is None else integer("repeats", repeats, 0)
    inner_steps = None if inner_steps is None else integer("inner_steps", inner_steps, 2)
    return tuple(i._replace(repeats=i.repeats if repeats is None else repeats,
                            levels=i.levels if inner_steps is None else inner_steps) for i in out)


class RestartPlan(NamedTuple):
    """Where the restarts happen: ``((node, ((interval, named), …)), …)`` for the main nodes that have any, in the
    order the main process reaches them; ``named``: whether its first jump is named as a Brownian increment."""

    at: tuple = ()


class Restart(Heun):
    """Restart sampling over EDM's Heun (2 evaluations per main step) with restart ``intervals`` (a preset name or a
    list of ``(σ_min, σ_max, K, n)``; ``repeats``/``inner_steps`` replace every ``K``/``n``) and the jumps' noise
    scaled by ``s_noise``. EDM's default grid is ``spacing="karras"``."""

    name = "restart"

    def __init__(self, intervals="cifar10_vp", repeats: int | None = None, inner_steps: int | None = None,
                 s_noise: float = 1.0):
        super().__init__()
        self.intervals = _intervals(intervals, repeats, inner_steps)
        self.s_noise = positive("s_noise", s_noise)
        self.segment_evals = sum(i.repeats * 2 * (i.levels - 1) for i in self.intervals)
        self.stochastic = any(i.repeats > 0 for i in self.intervals)
        if self.stochastic:
            # no weak order: the inner steps are fixed, so their bias does not fall with the main grid's steps; no
            # strong order: σ_min snaps to a node that moves irregularly with the step count (the pathwise error
            # falls, at no steady rate: benchmarks/stochastic_samplers.py)
            self.ode_order, self.strong_order, self.weak_order = None, None, None
        else:
            self.ode_order = 2

    def nfe(self, steps: int, denoise: bool = True) -> int:
        """``2(steps - 1) + segment_evals + denoise`` (no restart on a grid of one noisy node)."""
        return super().nfe(steps, denoise) + (self.segment_evals if steps >= 2 else 0)

    def steps_for_nfe(self, nfe: int, denoise: bool = True) -> int | None:
        return super().steps_for_nfe(nfe - self.segment_evals, denoise)

    def check(self, grid: TimeGrid) -> None:
        super().check(grid)
        top, lowest = grid.noisy[0].noise_level, grid.noisy[-1].noise_level
        for i in self.intervals:
            if i.repeats and i.sigma_max > top:
                raise ValueError(f"a restart interval reaches sigma_max={i.sigma_max}, above the grid's first noise "
                                 f"level {top:.4g}; lower it or start the grid higher")
            if i.repeats and (len(grid.noisy) < 2 or lowest >= i.sigma_max):
                raise ValueError(f"a restart interval ends at sigma_max={i.sigma_max}, but no noisy node after the "
                                 f"first lies below it (the lowest: {lowest:.4g}); give a grid that reaches lower (more "
                                 "steps, a smaller eps) or intervals= of a larger sigma_max")

    def init(self, x, grid: TimeGrid) -> RestartPlan:
        """Snap each interval's ``σ_min`` to the nearest noisy node after the first (in ``σ``) below its ``σ_max`` (a
        jump goes up: a coarse grid's nearest node may lie above ``σ_max``); name the first jump of each interval that
        overlaps no interval named before it."""
        noisy = grid.noisy[1:]
        at: dict[int, list[Interval]] = {}
        for i in self.intervals:
            below = [j for j in range(len(noisy)) if noisy[j].noise_level < i.sigma_max]
            if i.repeats and below:
                k = min(below, key=lambda j: abs(noisy[j].noise_level - i.sigma_min))
                at.setdefault(k, []).append(i)
        plan, named = [], []
        for k in sorted(at):
            entries = []
            for i in at[k]:
                lo = noisy[k].noise_level
                free = all(i.sigma_max <= a or lo >= b for a, b in named)
                named += [(lo, i.sigma_max)] if free else []
                entries.append((i, free))
            plan.append((noisy[k], tuple(entries)))
        return RestartPlan(tuple(plan))

    def step(self, model: Model, x, a, b, plan: RestartPlan, noise):
        x, _ = super().step(model, x, a, b, 0.0, noise)
        for node, entries in plan.at:
            if node == b:
                for interval, named in entries:
                    x = self._restart(model, x, b, interval, named, noise)
        return x, plan

    def _restart(self, model: Model, x, node: Node, interval: Interval, named: bool, noise):
        """``K`` jumps from ``node`` to ``σ_max``, each followed by ``n - 1`` Heun steps back down to ``node``."""
        lo, hi = node.noise_level, interval.sigma_max
        rho = KARRAS_RHO
        u = torch.linspace(0, 1, interval.levels, dtype=torch.float64)
        sigmas = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        times = model.sde.time_at_noise_level(sigmas[:-1]).tolist()
        levels = [model.node(t) for t in times] + [node]
        top = levels[0]
        for k in range(interval.repeats):
            z = noise(top.t, node.t) if k == 0 and named else noise()
            # x̂ = α_max (x/α_min + s_noise √(σ_max² - σ_min²) ξ)
            x = x.mul(top.scale / node.scale).add_(z, alpha=top.scale * self.s_noise * math.sqrt(hi**2 - lo**2))
            for a, b in zip(levels[:-1], levels[1:]):
                x = self.trapezoid(model, x, a, b)
        return x
