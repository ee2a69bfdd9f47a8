"""AMED-Plugin (Zhou et al., CVPR 2024, "Fast ODE-based sampling for diffusion models in around 5 steps"): learned
intermediate times of two-evaluation steps, plugged into any solver.

AMED-Plugin turns a base solver's grid ``t_0 > t_2 > t_4 > …`` into steps of two base-solver sub-steps each,
``t_{2j} → s_j → t_{2j+2}``, and learns, per step, where the intermediate time lies and two scalings:

    s_j:  σ(s_j) = σ(t_{2j})^{1-r_j} σ(t_{2j+2})^{r_j}       (geometric in the noise level: λ at the fraction r_j)
    the model at s_j is evaluated at the noise level a_j·σ(s_j) (``scale_time``: a_j ∈ [1 - 0.2, 1 + 0.2])
    the second sub-step's change is scaled:  x_{2j+2} = A x_s + c_j (x_{2j+2}^base - A x_s)
                                              (``scale_dir``: c_j ∈ [1 - 0.01, 1 + 0.01]; ``A`` the base step's exact
                                              linear part, ``σ_b/σ_s`` for data-prediction solvers, ``α_b/α_s`` else)

so a grid of ``M`` noisy nodes is read as ``(M - 1)//2`` AMED steps whose intermediate nodes are the odd ones (a last
unpaired transition stays a plain step), and the corrected sampler spends exactly the base solver's evaluations on it.
The defaults are the plugin's published ones, ``scale_dir = 0.01``, ``scale_time = 0.2``, with the analytical first step
— here the one with the model's moments (``afs="moments"``, ``sgm.samplers.corrections.afs``), measured better than
the published ``afs=True`` wherever the data's mean is not 0 (``afs=True`` and ``False`` are there).

**Objective** (AMED's loss), step by step along the student's own trajectory of ``n`` prior draws:

    (r_j, c_j, a_j) = argmin  mean_i ‖ y_{2j+2}^i(r, c, a) - Y_{2j+2}^i ‖²        (y = x/α, ``Y`` the teacher)

AMED predicts ``(r, c, a)`` with a small network fed the U-Net's bottleneck features and the two times; sgm sees the
model as a black box, so the predictor here has the times alone and ``(r_j, c_j, a_j)`` are per-step constants —
three numbers per step, fitted by bounded Nelder–Mead on the same loss (each trial is the two sub-steps from the
saved state: states are values), starting from the given grid's intermediate node, ``c = a = 1``. The fitted
intermediate nodes are written into the correction's grid.

``guard`` (sgm's addition, on by default, as for PAS): a step's fit is kept only if the calibration draws' final map
error, the rest of the run uncorrected, falls below that of the grid's own intermediate node with ``c = a = 1``.

Cost: the teacher, then per step at most ``maxfev`` (60) trials of one evaluation each (the evaluation at the step's
start is shared by every trial) on the batch, and with the guard two runs of the rest of the grid.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize

from ...checks import integer, real
from ...predictions import Prediction
from ..grid import Node, TimeGrid, path_nodes
from ..registry import solver as make_solver
from ..solver import integrate
from ..optimize import map_error
from .base import (Correction, Corrected, finish_record, flat, moments_from, moments_params,
                   register_method, rest_of_run, setup)

__all__ = ["AMED", "AMEDCalibration", "amed", "intermediate_node", "ScaledTime", "R_BOUNDS"]

R_BOUNDS = (1e-3, 1 - 1e-3)  # the intermediate time's fraction r stays inside its step


def intermediate_node(model, a: Node, b: Node, r: float) -> Node:
    """The node at the fraction ``r`` of the step ``a → b`` in λ (``σ = σ_a^{1-r} σ_b^r``); in ``t`` from an ``α = 0``
    node, where λ is ``-∞``."""
    sde = model.sde
    if a.scale > 0:
        lam = a.lam + r * (b.lam - a.lam)
        t = float(sde.time_at_lam(torch.tensor([lam], dtype=torch.float64))[0])
    else:
        t = a.t + r * (b.t - a.t)
    return model.node(min(max(t, b.t), a.t))


def fraction(a: Node, m: Node, b: Node) -> float:
    """Where ``m`` lies in the step ``a → b``: its fraction in λ (in ``t`` from an ``α = 0`` node)."""
    if a.scale > 0:
        return (m.lam - a.lam) / (b.lam - a.lam)
    return (m.t - a.t) / (b.t - a.t)


class ScaledTime:
    """The model as the second sub-step sees it: at ``node`` it is evaluated at the noise level ``factor·σ(node)``
    on the same ``y = x/α`` (AMED's ``scale_time``), its ``x̂_0`` returned as the prediction at ``node``; elsewhere the
    model itself."""

    def __init__(self, model, node: Node, factor: float):
        self.model, self.at, self.factor = model, node, factor

    def __call__(self, x, node):
        node = node if isinstance(node, Node) else self.model.node(node)
        if node != self.at or self.factor == 1.0:
            return self.model(x, node)
        sde = self.model.sde
        level = torch.tensor([self.factor * node.noise_level], dtype=torch.float64)
        t = min(float(sde.time_at_noise_level(level)[0]), sde.T)
        shifted = self.model.node(t)
        if shifted.scale <= 0 or shifted.std <= 0:
            return self.model(x, node)
        prediction = Prediction.at_node(x, node, "x0", self.model(x * (shifted.scale / node.scale), shifted).x0)
        self.model.last = prediction
        return prediction

    def __getattr__(self, name):
        return getattr(self.model, name)


class SharedStart:
    """The model with its evaluation at ``node`` on one state shared by every trial of a step (not re-evaluated)."""

    def __init__(self, model, node: Node):
        self.model, self.start, self.cache = model, node, None

    def __call__(self, x, node):
        node = node if isinstance(node, Node) else self.model.node(node)
        if node != self.start:
            return self.model(x, node)
        if self.cache is None or self.cache[0] is not x:
            self.cache = (x, self.model(x, node))
        return self.cache[1]

    def __getattr__(self, name):
        return getattr(self.model, name)


def pairs_in(grid: TimeGrid) -> int:
    """The AMED steps a grid of ``M`` noisy nodes holds: ``(M - 1)//2``."""
    return (len(grid.noisy) - 1) // 2


class AMED(Corrected):
    """The base solver as AMED-Plugin on a grid whose odd noisy nodes are the intermediate times: ``pairs`` holds
    ``(scale_dir, scale_time)`` of each AMED step (see the module docstring)."""

    method = "amed"

    def __init__(self, base, pairs, afs: bool = True, moments=None):
        super().__init__(base, afs, moments)
        self.pairs = [(float(c), float(a)) for c, a in pairs]

    def init(self, x, grid):
        return (super().init(x, grid), 0, None)

    def linear(self, m: Node, b: Node) -> float:
        """The exact linear part ``A`` of the base step ``m → b`` (``x_b = A x_m + …``)."""
        return b.std / m.std if getattr(self.base, "prediction", None) == "x0" else b.scale / m.scale

    def second(self, model, x, m: Node, b: Node, inner, noise, scale_dir: float, scale_time: float):
        """The second sub-step ``m → b``: the model at ``m`` time-scaled, the change scaled by ``scale_dir``."""
        out, inner = self.base_step(ScaledTime(model, m, scale_time), x, m, b, inner, noise, first=False)
        if scale_dir != 1.0:
            A = self.linear(m, b)
            out = x.mul(A).add_(out.sub(x, alpha=A), alpha=scale_dir)
        return out, inner

    def step(self, model, x, a, b, state, noise):
        inner, i, at = state
        a = at or a
        j, second = divmod(i, 2)
        if j < len(self.pairs) and second:
            x, inner = self.second(model, x, a, b, inner, noise, *self.pairs[j])
        else:
            x, inner = self.base_step(model, x, a, b, inner, noise, first=i == 0)
        return x, (inner, i + 1, None)

    def denoise(self, model, x, node, state):
        return self.base.denoise(model, x, node, state[0])

    def __repr__(self) -> str:
        return f"AMED({self.base!r}, pairs={self.pairs}, afs={self.afs})"


class AMEDCalibration(AMED):
    """AMED-Plugin's training: at the first sub-step of each AMED step, fit ``(r, scale_dir, scale_time)`` against the
    teacher's state at the step's end (``targets``, one per noisy node) and go on from the fitted intermediate node
    (carried in the state, since it is not the grid's). Records ``pairs`` and ``fits`` on itself; one run per object."""

    def __init__(self, base, targets, final, grid: TimeGrid, afs: bool, moments, scale_dir: float, scale_time: float,
                 maxfev: int, guard: bool):
        super().__init__(base, [], afs, moments)
        self.targets, self.final, self.grid, self.guard = targets, final, grid, guard
        self.scale_dir, self.scale_time, self.maxfev = scale_dir, scale_time, maxfev
        self.fits = []  # per AMED step: {"r", "scale_dir", "scale_time", "t", "loss_before", "loss_after", "trials"}

    def decode(self, u) -> tuple[float, float, float]:
        r = R_BOUNDS[0] + (R_BOUNDS[1] - R_BOUNDS[0]) * float(u[0])
        rest = list(u[1:])
        c = 1 + self.scale_dir * (2 * float(rest.pop(0)) - 1) if self.scale_dir > 0 else 1.0
        s = 1 + self.scale_time * (2 * float(rest.pop(0)) - 1) if self.scale_time > 0 else 1.0
        return r, c, s

    def step(self, model, x, a, b, state, noise):
        inner, i, at = state
        j, second = divmod(i, 2)
        if j >= pairs_in(self.grid) or second:
            if second and j < pairs_in(self.grid):
                self.pairs.append((self.fits[j]["scale_dir"], self.fits[j]["scale_time"]))
            return super().step(model, x, a, b, state, noise)
        end, target = self.grid.noisy[i + 2], flat(self.targets[i + 2]) / self.grid.noisy[i + 2].scale
        shared, trials = SharedStart(model, a), [0]

        def run(r: float, c: float, s: float):
            m = intermediate_node(model, a, end, r)
            x_m, st = self.base_step(shared, x, a, m, inner, noise, first=i == 0)
            x_end, st_end = self.second(shared, x_m, m, end, st, noise, c, s)
            return m, x_m, st, x_end, st_end, float((flat(x_end) / end.scale - target).pow(2).sum(1).mean())

        def objective(u) -> float:
            trials[0] += 1
            loss = run(*self.decode(u))[-1]
            return loss if math.isfinite(loss) else 1e300

        r0 = min(max(fraction(a, b, end), R_BOUNDS[0]), R_BOUNDS[1])
        scalings = int(self.scale_dir > 0) + int(self.scale_time > 0)
        u0 = [(r0 - R_BOUNDS[0]) / (R_BOUNDS[1] - R_BOUNDS[0])] + [0.5] * scalings
        before = objective(u0)
        simplex = [u0] + [[v + (0.1 if k == d and v <= 0.5 else -0.1 if k == d else 0.0) for k, v in enumerate(u0)]
                          for d in range(len(u0))]
        found = minimize(objective, np.array(u0), method="Nelder-Mead", bounds=[(0.0, 1.0)] * len(u0),
                         options={"maxfev": self.maxfev, "xatol": 1e-3, "fatol": 0.0, "initial_simplex": simplex})
        fitted = self.decode(found.x if found.fun < before else np.array(u0))
        fit = {"r": fitted[0], "scale_dir": fitted[1], "scale_time": fitted[2], "loss_before": before}
        result = run(*fitted)
        fit["loss_after"] = result[-1]
        if self.guard:  # keep the fit only if the calibration draws' final map error falls too (the rest uncorrected)
            plain = run(*self.decode(u0))
            finals = [map_error(flat(rest_of_run(self.base, model, out[3], out[4], self.grid, i + 2)), flat(self.final))
                      for out in (plain, result)]
            fit.update(final_before=finals[0], final_after=finals[1], kept=finals[1] < finals[0])
            if not fit["kept"]:
                result, fitted = plain, self.decode(u0)
                fit.update(r=fitted[0], scale_dir=fitted[1], scale_time=fitted[2])
        m, x_m, inner = result[:3]
        fit.update(t=m.t, trials=trials[0])
        self.fits.append(fit)
        return x_m, (inner, i + 1, m)


def amed(score, sde, sampler: str = "ipndm", *, grid: TimeGrid | None = None, nfe: int | None = None,
         spacing: str | None = None, shape, generator: torch.Generator | None = None, afs="moments",
         scale_dir: float = 0.01, scale_time: float = 0.2, maxfev: int = 60, guard: bool = True,
         reference_tol: float = 1e-8,
         dtype: torch.dtype = torch.float64, device=None, **options) -> Correction:
    """Calibrate AMED-Plugin for the deterministic ``sampler`` (with ``options``) on ``grid`` (its odd noisy nodes are
    the intermediate times, moved by the fit) or on the budget ``nfe`` (the sampler's default ``spacing`` unless given),
    with the prior draws of the batch ``shape = (n, *dims)`` from ``generator`` (see the module docstring:
    ``scale_dir``, ``scale_time``; ``maxfev``: Nelder–Mead trials per step; ``guard``; ``afs``: the analytical first
    step, ``"moments"``, ``True`` or ``False``). Returns a ``Correction`` (``method="amed"``) whose grid holds the
    fitted intermediate nodes."""
    scale_dir, scale_time = real("scale_dir", scale_dir, 0.0, 0.5), real("scale_time", scale_time, 0.0, 0.5)
    maxfev = integer("maxfev", maxfev, 1)
    if sampler == "dpm_solver_v3":
        raise ValueError("AMED cannot correct sampler='dpm_solver_v3': AMED moves the intermediate nodes, and "
                         "DPM-Solver-v3's statistics are tabulated at the grid's nodes when the run starts; use pas, "
                         "or optimize_grid for v3's grid")
    s = setup(score, sde, sampler, options, grid=grid, nfe=nfe, spacing=spacing, shape=shape,
              generator=generator, afs=afs, reference_tol=reference_tol, dtype=dtype, device=device)
    if pairs_in(s.grid) < 1:
        raise ValueError(f"AMED needs a grid of at least 3 noisy nodes (one two-evaluation step), got "
                         f"{len(s.grid.noisy)}; give a larger grid or nfe")
    if not isinstance(guard, bool):
        raise TypeError(f"guard must be a bool, got {guard!r}")
    learner = AMEDCalibration(s.method, s.teacher.states, s.teacher.x0, s.grid, bool(afs), s.moments, scale_dir,
                              scale_time, maxfev, guard)
    spent = integrate(learner, score, sde, s.x_T, s.grid).nfe
    nodes = list(s.grid.nodes)
    for j, fit in enumerate(learner.fits):
        nodes[2 * j + 1] = path_nodes(sde, torch.tensor([fit["t"]], dtype=torch.float64))[0]
    fitted = TimeGrid(tuple(nodes), s.grid.sde, {"amed": "intermediate nodes fitted by sgm.samplers.corrections.amed",
                                                 "calibrated_on": [list(n) for n in s.grid.nodes]})
    info = finish_record(s.record, spent)
    info.update(method="AMED-Plugin (Zhou et al. 2024), per-step constants", fits=learner.fits,
                parameters=len(learner.fits) * (1 + int(scale_dir > 0) + int(scale_time > 0)))
    params = {"pairs": [{k: f[k] for k in ("r", "scale_dir", "scale_time")} for f in learner.fits],
              "scale_dir_bound": scale_dir, "scale_time_bound": scale_time, **moments_params(s.moments)}
    return Correction("amed", sampler, options, params, fitted, bool(afs), repr(sde),
                      s.model, info)


def build(correction: Correction) -> AMED:
    pairs = [(p["scale_dir"], p["scale_time"]) for p in correction.params["pairs"]]
    return AMED(make_solver(correction.sampler, **correction.options), pairs, correction.afs,
                moments_from(correction.params))


register_method("amed", build)
