"""What every learned correction shares: the record (``Correction``: saved and loaded as JSON, refused for another path
or model), the solver wrapper (``Corrected``), the analytical first step, the teacher and the calibration set-up.

A correction wraps a deterministic fixed-step base solver. The wrapper calls the base solver's ``step`` and adjusts
its output (PAS), or the nodes and the model it is given (AMED-Plugin, the analytical first step); states are values,
so a calibrating wrapper may run a step again from the state it was given. Sampling goes through ``integrate`` like
every solver, at no extra evaluations (one fewer with the analytical first step).

The teacher of every calibration is the model's own probability-flow map: the states ``X_k`` of dopri5 (the ``ode``
sampler's adaptive step) at ``rtol = atol = reference_tol`` from ``T`` to each noisy node in turn, and the final target
``Φ(x_T) = D(X_eps)``, Tweedie's denoiser at the exact state at the path's ``default_eps`` — ``optimize.flow_map``'s
reference, the one every map error in sgm is measured against. On a grid that ends at ``eps`` that is ``D(X_last)``;
on one that stops short of it (an optimised grid with a free last node) the flow is carried on from the last node,
since ``D(X_last)`` there is ``O(σ_last)`` from ``Φ``: S4S fitted to it on rectified flow's 2-D ring at 20 NFE
landed 9.6× farther from ``Φ`` than its base solver.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor

from ...checks import choice, flag, positive, shape as check_shape
from ...paths import GaussianPath
from ...predictions import Prediction
from ..base import CheckedScore
from ..fingerprint import batch_fingerprint, check_model
from ..grid import Node, TimeGrid
from ..probability_flow import AdaptiveODE
from ..registry import budget_grid, entry, solver as make_solver
from ..solver import Model, Solver, integrate

__all__ = ["Correction", "Corrected", "AnalyticFirst", "analytic_prediction", "Teacher", "teacher", "METHODS",
           "CORRECTION_FORMAT", "register_method"]

CORRECTION_FORMAT, CORRECTION_VERSION = "sgm.Correction", 1
METHODS: dict[str, Any] = {}  # method name -> builder(correction) -> Solver (each method module registers its own)


def register_method(name: str, build) -> None:
    """Make ``Correction(method=name, …).solver()`` call ``build(correction)``."""
    METHODS[name] = build


def _json_safe(value):
    """``value`` with tuples as lists and mapping proxies as dicts, for ``json.dump``."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class Correction:
    """A learned correction of the registered deterministic sampler ``sampler`` (with ``options``).

    ``method``: ``"pas"``, ``"amed"``, ``"afs"`` or ``"dpm_solver_v3"``; ``params``: what it learned (JSON values);
    ``grid``: the grid it was calibrated on and runs on (``None``: it runs on any grid); ``afs``: whether the first
    step is the analytical one; ``sde``: the ``repr`` of the path it was calibrated for (``None``: any);
    ``model``: the fingerprint of the model (``sgm.samplers.fingerprint``; ``None``: any); ``info``: how it was made
    and its cost (``nfe``: evaluations of a batch of ``n`` draws, ``draws``, ``seconds``; not part of equality).

    ``solver()`` is the wrapped solver; ``sgm.sample(score, sde, shape, correction=c)`` runs it (on ``grid``, or on
    the grid the other arguments give when ``grid`` is ``None``) after ``check(score, sde)``.
    """

    method: str
    sampler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    grid: TimeGrid | None = None
    afs: bool = False
    sde: str | None = None
    model: Mapping[str, Any] | None = None
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        choice("method", self.method, sorted(METHODS))
        entry(self.sampler)  # a registered sampler
        if self.grid is not None and not isinstance(self.grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid or None, got {type(self.grid).__name__}")
        flag("afs", self.afs)
        for name in ("options", "params", "info"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def solver(self) -> Solver:
        """The base solver wrapped with this correction."""
        return METHODS[self.method](self)

    def check(self, model, sde: GaussianPath) -> None:
        """Raise ``ValueError`` when this correction was calibrated for another path than ``sde`` or (unless ``model``
        is ``None``) another model than ``model``, naming what differs."""
        if not isinstance(sde, GaussianPath):
            raise TypeError(f"sde must be an sgm path (GaussianPath), got {type(sde).__name__}")
        if self.sde is not None and self.sde != repr(sde):
            raise ValueError(f"correction was calibrated for {self.sde}, not for sde={sde!r}; calibrate it for this "
                             "path")
        if self.grid is not None:
            self.grid.check_sde(sde)
        if model is not None:
            check_model(None if self.model is None else dict(self.model), model, sde, what="correction")

    def as_dict(self) -> dict:
        return {"format": CORRECTION_FORMAT, "version": CORRECTION_VERSION, "method": self.method,
                "sampler": self.sampler, "options": _json_safe(self.options), "afs": self.afs, "sde": self.sde,
                "model": None if self.model is None else _json_safe(self.model),
                "grid": None if self.grid is None else self.grid.as_dict(), "params": _json_safe(self.params),
                "info": _json_safe(self.info)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the correction to ``path`` as JSON (floats round-trip exactly)."""
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, allow_nan=False)

    @classmethod
    def load(cls, path: str | os.PathLike, sde: GaussianPath | None = None, model=None) -> "Correction":
        """Read a correction written by ``save``; with ``sde`` (and ``model``), refuse (``ValueError``) one calibrated
        for another path (or model)."""
        source = repr(os.fspath(path))
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source} is not a correction file (invalid JSON: {e})") from None
        if not isinstance(data, dict) or data.get("format") != CORRECTION_FORMAT:
            raise ValueError(f"{source} is not an sgm correction file (no format {CORRECTION_FORMAT!r})")
        if data.get("version") != CORRECTION_VERSION:
            raise ValueError(f"{source} has correction format version {data.get('version')!r}; this sgm reads "
                             f"version {CORRECTION_VERSION}")
        missing = [k for k in ("method", "sampler", "options", "params") if k not in data]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}")
        grid = None if data.get("grid") is None else TimeGrid.from_dict(data["grid"], source=f"{source}'s grid")
        correction = cls(data["method"], data["sampler"], data["options"], data["params"], grid,
                         bool(data.get("afs", False)), data.get("sde"), data.get("model"), data.get("info") or {})
        if model is not None and sde is None:
            raise ValueError("Correction.load(path, model=...) needs the path too: Correction.load(path, sde, model)")
        if sde is not None:
            correction.check(model, sde)
        return correction


# --- the analytical first step -----------------------------------------------------------------------------------

AFS_CHOICES = (False, True, "moments")


def check_afs(afs):
    """``afs``: ``False``, ``True`` (Zhou et al.'s analytic first step) or ``"moments"`` (with the model's moments)."""
    if not any(afs is v or (isinstance(afs, str) and afs == v) for v in AFS_CHOICES):
        raise ValueError(f"afs must be one of {AFS_CHOICES}, got {afs!r}")
    return afs


def analytic_prediction(x: Tensor, node: Node, moments: tuple[Tensor, Tensor] | None = None) -> Prediction:
    """AFS's prediction at the first node, no evaluation.

    Without ``moments`` (Zhou et al., 2024): ``ε̂ = x/r``, ``x̂_0 = α x/(r(r + σ))``, ``r = √(α² + σ²)`` — in
    ``y = x/α`` and the noise level ``σ_n = σ/α`` their ``d = ε̂ = y/√(1 + σ_n²)``, the direction for data of zero mean
    and unit variance at a high noise level; ``α x̂_0 + σ ε̂ = x``, and at ``α = 0`` (rectified flow's top) ``ε̂ = x``
    is exact.

    With ``moments = (μ, v)``, the mean and per-element variance of the model's own samples: the posterior mean of the
    Gaussian ``N(μ, diag v)``, ``x̂_0 = μ + α v (x - α μ)/(α² v + σ²)`` — exact at ``α = 0`` (``x̂_0 = E x_0``) and to
    first order in ``α/σ`` for any data."""
    alpha, sigma = node.scale, node.std
    if moments is None:
        r = math.hypot(alpha, sigma)
        return Prediction.at_node(x, node, "x0", x * (alpha / (r * (r + sigma))))
    mean, var = (m.to(dtype=x.dtype, device=x.device) for m in moments)
    return Prediction.at_node(x, node, "x0", mean + alpha * var * (x - alpha * mean) / (alpha**2 * var + sigma**2))


def moments_of(x0: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and per-element variance of samples ``x0`` (the teacher's outputs on the calibration draws)."""
    return x0.mean(0), x0.var(0, unbiased=False)


def moments_params(moments) -> dict:
    return {} if moments is None else {"moments": {"mean": moments[0].tolist(), "var": moments[1].tolist()}}


def moments_from(params: Mapping):
    m = params.get("moments")
    if m is None:
        return None
    return torch.tensor(m["mean"], dtype=torch.float64), torch.tensor(m["var"], dtype=torch.float64)


class AnalyticFirst:
    """The model as a solver's first step sees it under AFS: the first call is answered by ``analytic_prediction``
    (not an evaluation), every later call by the model."""

    def __init__(self, model: Model, moments=None):
        self.model, self.moments, self.used = model, moments, False

    def __call__(self, x: Tensor, node) -> Prediction:
        node = node if isinstance(node, Node) else self.model.node(node)
        if self.used:
            return self.model(x, node)
        self.used = True
        self.model.last = analytic_prediction(x, node, self.moments)
        return self.model.last

    def __getattr__(self, name):  # node(), nfe, last, sde, kind, score: the model's
        return getattr(self.model, name)


# --- the wrapper -------------------------------------------------------------------------------------------------

def check_base(method: Solver, sampler: str, options: Mapping) -> Solver:
    """``method`` is deterministic and fixed-step, as every correction needs."""
    if method.stochastic:
        raise ValueError(f"sampler {sampler!r} with options {dict(options)} is stochastic; a learned correction needs "
                         "a deterministic sampler (its map x_T -> x_0 is what is corrected)")
    if method.evals_per_step is None:
        raise ValueError(f"sampler {sampler!r} with options {dict(options)} chooses its own steps (adaptive); a "
                         "learned correction needs a fixed-step sampler")
    return method


class Corrected(Solver):
    """The base solver with a correction (subclasses); ``afs``: its first step is the analytical one (with the model's
    ``moments`` when given). Declares the base solver's evaluations (``grid_nfe``: one fewer with ``afs`` on a grid of
    two or more noisy nodes) and no convergence order (a learned correction is fitted to a grid, not consistent as
    steps grow)."""

    method = "correction"
    stochastic = False
    ode_order = None

    def __init__(self, base: Solver, afs: bool = False, moments=None):
        if not isinstance(base, Solver):
            raise TypeError(f"base must be an sgm Solver, got {type(base).__name__}")
        self.base, self.afs, self.moments = base, flag("afs", afs), moments
        self.evals_per_step, self.final_evals, self.needs = base.evals_per_step, base.final_evals, base.needs
        self.name = f"{base.name} + {self.method}" + (" + afs" if afs and self.method != "afs" else "")

    def check(self, grid: TimeGrid) -> None:
        self.base.check(grid)

    def init(self, x, grid):
        if self.moments is not None and tuple(self.moments[0].shape) != tuple(x.shape[1:]):
            raise ValueError(f"the AFS moments are for samples of shape {tuple(self.moments[0].shape)}, got "
                             f"{tuple(x.shape[1:])}")
        return self.base.init(x, grid)

    def grid_nfe(self, grid: TimeGrid) -> int | None:
        spent = self.base.grid_nfe(grid)
        return spent - int(self.afs and len(grid.noisy) >= 2)

    def base_step(self, model, x: Tensor, a: Node, b: Node, state, noise, first: bool):
        """The base solver's step ``a → b`` (its first step under AFS sees ``AnalyticFirst``)."""
        if first and self.afs:
            model = AnalyticFirst(model, self.moments)
        return self.base.step(model, x, a, b, state, noise)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, afs={self.afs})"


class AFS(Corrected):
    """The base solver with the analytical first step alone (Zhou et al., 2024): the first step's model evaluation is
    replaced by ``analytic_prediction`` (with the model's ``moments`` when given)."""

    method = "afs"

    def __init__(self, base: Solver, moments=None):
        super().__init__(base, True, moments)

    def init(self, x, grid):
        return (super().init(x, grid), 0)

    def step(self, model, x, a, b, state, noise):
        inner, i = state
        x, inner = self.base_step(model, x, a, b, inner, noise, first=i == 0)
        return x, (inner, i + 1)

    def denoise(self, model, x, node, state):
        return self.base.denoise(model, x, node, state[0])


register_method("afs", lambda c: AFS(make_solver(c.sampler, **c.options), moments_from(c.params)))


class Resume(Solver):
    """The base solver continuing a run from a saved ``state`` (the calibrations' look-ahead: the rest of a run,
    uncorrected, through ``integrate``)."""

    stochastic = False

    def __init__(self, base: Solver, state):
        self.base, self.state = base, state
        self.evals_per_step, self.final_evals, self.name = base.evals_per_step, base.final_evals, base.name

    def init(self, x, grid):
        return self.state

    def step(self, model, x, a, b, state, noise):
        return self.base.step(model, x, a, b, state, noise)

    def denoise(self, model, x, node, state):
        return self.base.denoise(model, x, node, state)


def rest_of_run(base: Solver, model: Model, x: Tensor, state, grid: TimeGrid, start: int) -> Tensor:
    """``x_0`` of the uncorrected base solver run on from ``x`` (state ``state``) at the noisy node ``start`` of
    ``grid``; its evaluations count on ``model``."""
    return integrate(Resume(base, state), model.score, model.sde, x, TimeGrid(grid.nodes[start:], grid.sde)).x


# --- the teacher ---------------------------------------------------------------------------------------------------

class Teacher(NamedTuple):
    states: tuple        # the exact flow state at each noisy node of the grid
    x0: Tensor           # Tweedie's denoiser at the last one: the final target
    nfe: int             # evaluations spent (of the batch)


@torch.no_grad()
def teacher(score, sde: GaussianPath, x_T: Tensor, grid: TimeGrid, tol: float = 1e-8) -> Teacher:
    """The probability-flow states from ``x_T`` at ``T`` at every noisy node of ``grid`` (``ode``'s dopri5 at
    ``rtol = atol = tol`` from node to node) and Tweedie's ``x̂_0`` at the last, or past it at the path's
    ``default_eps`` (see the module docstring)."""
    checked = CheckedScore(score)
    model, flow = Model(checked, sde), AdaptiveODE("dopri5", tol, tol)
    nodes = grid.noisy
    x = x_T if nodes[0].t == sde.T else flow.step(model, x_T, model.node(float(sde.T)), nodes[0], None, None)[0]
    states = [x]
    for a, b in zip(nodes, nodes[1:]):
        states.append(flow.step(model, states[-1], a, b, None, None)[0])
    last, end = states[-1], nodes[-1]
    if end.t > sde.default_eps:  # a grid that stops short of eps (a free-ended optimised grid): the flow goes on
        end, last = model.node(sde.default_eps), flow.step(model, last, end, model.node(sde.default_eps), None, None)[0]
    return Teacher(tuple(states), model(last, end).x0, checked.nfe)


# --- calibration set-up ----------------------------------------------------------------------------------------------

class Setup(NamedTuple):
    method: Solver       # the base solver
    grid: TimeGrid
    x_T: Tensor          # the calibration draws
    teacher: Teacher
    record: dict         # what every correction's info holds
    moments: tuple | None  # the AFS moments (afs="moments"): of the teacher's outputs
    model: dict          # the fingerprint of the model (batch_fingerprint)


def setup(score, sde: GaussianPath, sampler: str, options: Mapping, *, grid, nfe, spacing, shape, generator,
          afs, reference_tol: float, dtype, device) -> Setup:
    """Check the common arguments, make the grid (``grid``, or the budget ``nfe`` on ``spacing``: the sampler's
    default spacing unless given), draw the calibration batch ``shape = (n, *dims)`` from ``generator`` and run the
    teacher."""
    started = time.perf_counter()
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath: VPSDE, VESDE, RectifiedFlow, …), "
                        f"got {type(sde).__name__}")
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a sampler name (str), got {type(sampler).__name__}")
    method = check_base(make_solver(sampler, **options), sampler, options)
    afs = check_afs(afs)
    shape = check_shape("shape", shape)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    reference_tol = positive("reference_tol", reference_tol)
    if not reference_tol < 1:
        raise ValueError(f"reference_tol must lie in (0, 1), got {reference_tol}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if (grid is None) == (nfe is None):
        raise ValueError("give grid (a TimeGrid, e.g. from optimize_grid) or nfe (a budget of evaluations), "
                         "one of them")
    if grid is not None:
        if not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
        if spacing is not None:
            raise ValueError("a ready grid fixes the nodes: give spacing or grid, not both")
        grid.check_sde(sde)
        if not grid.denoise:
            raise ValueError("grid must end with the data node (denoise=True): the teacher's target is x_0")
    else:
        counted = AFS(method) if afs else method
        grid = budget_grid(counted, sde, nfe, entry(sampler).default_spacing(sde) if spacing is None else spacing)
    method.check(grid)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    model = batch_fingerprint(score, sde, shape, dtype, device)
    x_T = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    taught = teacher(score, sde, x_T, grid, reference_tol)
    record = {"n": shape[0], "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
              "reference": f"dopri5 rtol=atol={reference_tol:g} from T to each node in turn, then Tweedie",
              "reference_nfe": taught.nfe, "started": started}
    return Setup(method, grid, x_T, taught, record, moments_of(taught.x0) if afs == "moments" else None, model)


def finish_record(record: dict, spent: int) -> dict:
    """The cost fields of ``info``: ``nfe`` (evaluations of a batch of ``n``, the teacher's included), ``draws``
    (``n``), ``evaluations`` (``nfe·n``: model evaluations of single samples) and ``seconds``."""
    record = dict(record)
    started = record.pop("started")
    record.update(nfe=spent + record["reference_nfe"], draws=record["n"],
                  evaluations=(spent + record["reference_nfe"]) * record["n"],
                  seconds=time.perf_counter() - started)
    return record


def flat(x: Tensor) -> Tensor:
    """``x`` as ``(batch, features)``."""
    return x.reshape(x.shape[0], -1)
