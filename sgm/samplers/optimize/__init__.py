"""Optimised time grids: where a sampler should step for a budget of ``steps`` noisy nodes (plus the data node).

``optimize_grid(score, sde, steps, sampler, shape=…, optimizer=…)`` is the one entry point; ``optimizer`` chooses
the step optimiser (each module's docstring states its objective as an equation, its algorithm and its cost):

- ``"descent"`` (default): coordinate pattern search on the sampler's map error
  ``E(G) = mean_i ‖S_G(x_T^i) - Φ(x_T^i)‖`` on the calibration draws, against the probability-flow map ``Φ`` by
  dopri5 (``descent``);
- ``"gits"``: GITS's dynamic programming over a fine candidate grid with its local Euler-step costs against a
  teacher trajectory (Chen et al., 2024; ``gits``);
- ``"dmn"``: DM-NonUniform's model-free error bound of a multistep exponential integrator, minimised by the
  constrained trust-region method (Xue et al., 2024; ``dmn``);
- ``"ays"``: Align Your Steps' KL upper bound of the linearised reverse SDE, minimised node by node (Sabour et al.,
  2024; ``ays``);
- ``"ld3"``: LD3's soft teacher loss, minimised by gradient descent through the sampler (Tong et al., 2025; ``ld3``).

Positions are in a bounded coordinate ``u`` of λ that keeps the exact top of every path representable
(``common.Positions``: rectified flow's ``t = 1``, where ``λ = -∞``, is ``u = 0``). ``free_start=True`` lets the first
node leave ``T`` (the sampler then starts from the prior draw at ``t_0 < T``), ``free_end=True`` the last noisy node
leave ``eps`` (to ``t ∈ [eps, t_{steps-2})``; the data node follows it); ``None`` takes each optimiser's measured
default (``FREE_START``, ``FREE_END``). The descent and LD3 start from ``common.start_spacings``: on rectified flow and
its shifts diffusers' ``flow`` grid is among them. Every grid records in ``grid.info`` how it was made
(``optimizer``, the sampler and options, the method's own record), its calibration cost (``info["cost"]``: evaluations
of the batch of ``n`` calibration draws, ``shape = (n, *dims)``, ``draws``, ``sample_evaluations``, ``backward``
passes, ``seconds``) and the fingerprint of the model it was calibrated for (``info["model"]``, see
``sgm.samplers.fingerprint``; ``None`` for DMN, whose grid does not depend on the model); ``grid.save(path)`` writes
it, ``TimeGrid.load(path, sde, model=…)`` refuses another path or model, and ``sgm.sample`` refuses a grid calibrated
for another model or made for another path.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ...checks import choice, flag, integer, real, shape as check_shape
from ...paths import GaussianPath
from ..base import SamplerDiverged
from ..fingerprint import batch_fingerprint
from ..grid import TimeGrid, check_eps, time_grid
from ..solver import integrate
from .ays import KLUB, ays
from .common import (FIXED_SPACINGS, Cost, Counted, MapError, Positions, check_solver, flow_map,
                     map_error, ode_order, start_spacings)
from .descent import MIN_MOVE, cheapest_path, descend
from .dmn import dmn
from .gits import GITS_DEFAULTS, gits
from .ld3 import LD3_DEFAULTS, ld3

__all__ = ["optimize_grid", "flow_map", "map_error", "cheapest_path", "OPTIMIZERS",
           "FIXED_SPACINGS", "FREE_START", "FREE_END", "MIN_MOVE", "start_spacings"]

OPTIMIZERS = ("descent", "gits", "dmn", "ays", "ld3")
# free_start=None takes these (benchmarks/optimize_grid.py --variants measures both; docs/samplers.md has the
# descent's and GITS's numbers, free equal or better in every cell); DMN's and AYS's objectives have no term for the
# mismatch of starting below T, so they cannot free it.
FREE_START = {"descent": True, "gits": True, "dmn": False, "ays": False, "ld3": True}
# free_end=None takes these (benchmarks/optimize_grid.py --variants "descent pinned end" "gits pinned end" "ld3 free
# end", VP, VE and RF: median held-out ratio to the best fixed spacing free / pinned 0.46 / 0.63 for the descent and
# 1.08 / 2.26 for GITS in 54 cells, LD3 0.33 / 0.46 on RF's 2-D ring (9 cells) and within 0.03 on VP and VE,
# docs/samplers.md); DMN's and AYS's objectives integrate to eps and have no term for the last step into the data node.
FREE_END = {"descent": True, "gits": True, "dmn": False, "ays": False, "ld3": True}
OPTIONS = {"descent": {}, "gits": {k: v for k, v in GITS_DEFAULTS.items() if k != "candidates"},
           "dmn": {"maxiter": 1000}, "ays": {"xatol": 1e-3}, "ld3": LD3_DEFAULTS}
DESCRIPTIONS = {
    "descent": "coordinate descent in u on the map error against dopri5",
    "gits": "GITS: dynamic programming on a fine grid with local Euler-step costs against a teacher trajectory",
    "dmn": "DMN: trust-region minimisation of the model-free error bound of a multistep exponential integrator",
    "ays": "AYS: node-by-node minimisation of the KL upper bound of the linearised reverse SDE",
    "ld3": "LD3: gradient descent on the soft teacher loss through the sampler",
}


def _options(optimizer: str, given) -> dict:
    if given is None:
        return dict(OPTIONS[optimizer])
    if not isinstance(given, dict):
        raise TypeError(f"optimizer_options must be a dict, got {type(given).__name__}")
    unknown = sorted(set(given) - set(OPTIONS[optimizer]))
    if unknown:
        raise TypeError(f"optimizer_options has no {unknown} for optimizer={optimizer!r}; it takes "
                        f"{sorted(OPTIONS[optimizer]) or 'none'}")
    return {**OPTIONS[optimizer], **given}


def _ld3_options(o: dict) -> dict:
    o = dict(o)
    o["init"] = choice("optimizer_options['init']", o["init"], ("uniform", "best"))
    for k in ("rounds", "batch", "patience"):
        o[k] = integer(f"optimizer_options[{k!r}]", o[k], 1)
    for k in ("lr", "momentum", "clip", "lr_decay", "min_lr"):
        o[k] = real(f"optimizer_options[{k!r}]", o[k], 0.0)
    for k in ("radius", "shift_lr", "fd_step"):
        if o[k] is not None:
            o[k] = real(f"optimizer_options[{k!r}]", o[k], 0.0)
    o["validation"] = real("optimizer_options['validation']", o["validation"], 0.0, 1.0, open_low=True)
    return o


def _free_node(name: str, given: bool | None, defaults: dict, optimizer: str, why: str) -> bool:
    """Whether an end node is free: ``given``, else the optimiser's default; refused (naming ``name``) for the
    optimisers whose objective cannot move it (DMN, AYS: theirs ``why``)."""
    if given is not None:
        flag(name, given)
    free = defaults[optimizer] if given is None else given
    if free and optimizer in ("dmn", "ays"):
        raise ValueError(f"{name}=True is not available with optimizer={optimizer!r}: its objective {why} (use "
                         "'descent', 'gits' or 'ld3')")
    return free


def optimize_grid(score, sde: GaussianPath, steps: int, sampler: str = "ddim", *, shape,
                  generator: torch.Generator | None = None, eps: float | None = None, optimizer: str = "descent",
                  free_start: bool | None = None, free_end: bool | None = None, start: str | None = None,
                  dp: bool = False, candidates: int | None = None, sweeps: int = 6, tol: float = 1e-3,
                  reference_tol: float = 1e-8, dtype: torch.dtype = torch.float64, device=None, progress: bool = False,
                  optimizer_options: dict | None = None, **options) -> TimeGrid:
    """The grid of ``steps`` noisy nodes from ``T`` (or, with ``free_start``, below it) to ``eps`` (or, with
    ``free_end``, above it) plus the data node
    for the fixed-step ``sampler`` with ``options``, chosen by ``optimizer`` (see the package docstring) for the model
    ``score(x, t)`` on the prior draws of the batch ``shape = (n, *dims)`` (``sgm.sample``'s; 256 draws are typical)
    from ``generator`` in ``dtype`` on ``device``.

    ``start``: the initial spacing (default: the best of ``start_spacings(sde)`` — ``FIXED_SPACINGS`` for DMN and AYS
    — by the optimiser's objective, for LD3 by
    the map error on its calibration draws unless ``optimizer_options={"init": "uniform"}``, uniform in ``u``; DMN:
    ``logsnr``); ``dp``, ``candidates``, ``sweeps``, ``tol``: the descent's options (``candidates`` is also GITS's
    fine-grid size, 61; ``sweeps`` and ``tol`` also AYS's); ``reference_tol``: dopri5's tolerance for ``Φ``;
    ``optimizer_options``: the other hyper-parameters of the chosen optimiser (``OPTIONS``, their published values by
    default); ``progress``: a progress bar. The sampler must be deterministic, except for ``optimizer="ays"``, whose
    bound is that of a stochastic sampler.
    """
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    if not isinstance(sde, GaussianPath):
        raise TypeError("sde must be an sgm path (GaussianPath: VPSDE, VESDE, RectifiedFlow, …), "
                        f"got {type(sde).__name__}")
    steps = integer("steps", steps, 2)
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a sampler name (str), got {type(sampler).__name__}")
    optimizer = choice("optimizer", optimizer, OPTIMIZERS)
    method = check_solver(sampler, options, stochastic_ok=optimizer == "ays")
    shape = check_shape("shape", shape)
    n = integer("shape[0]", shape[0], 2 if optimizer == "ld3" else 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    eps = check_eps(eps, sde)
    starts = start_spacings(sde) if optimizer in ("descent", "ld3") else FIXED_SPACINGS
    if start is not None and start not in starts:
        raise ValueError(f"start must be None (the optimiser's default) or one of {starts} for optimizer={optimizer!r}"
                         f" on this path, got {start!r}")
    flag("dp", dp)
    if dp and optimizer != "descent":
        raise ValueError(f"dp=True is the descent's second start; optimizer={optimizer!r} has none")
    free = _free_node("free_start", free_start, FREE_START, optimizer,
                      "has no term for the mismatch of starting below T")
    free_end = _free_node("free_end", free_end, FREE_END, optimizer,
                          "integrates to eps and has no term for the step into the data node")
    if candidates is None:
        candidates = GITS_DEFAULTS["candidates"] if optimizer == "gits" else min(max(3 * steps, 24), 64)
    candidates = integer("candidates", candidates, max(steps, 3))
    sweeps = integer("sweeps", sweeps, 0)
    tol = real("tol", tol, 0.0)
    reference_tol = real("reference_tol", reference_tol, 0.0, 1.0, open_low=True)
    if reference_tol >= 1:
        raise ValueError(f"reference_tol must lie in (0, 1), got {reference_tol}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    settings = _options(optimizer, optimizer_options)
    if optimizer == "ld3":
        settings = _ld3_options(settings)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    calibrated_for = None if optimizer == "dmn" else batch_fingerprint(score, sde, shape, dtype, device)

    counted = Counted(score)
    cost = Cost(counted)
    positions = Positions(sde, eps)
    bar = tqdm(desc=f"optimize_grid ({optimizer}, {sampler})", unit="step", disable=not progress, leave=False)
    record: dict = {}
    error = None
    x_T = reference = None
    if optimizer != "dmn":
        x_T = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    if optimizer in ("descent", "ays", "ld3"):
        reference, _ = flow_map(counted, sde, x_T, eps, reference_tol)
    reference_evaluations = counted.evaluations / n
    try:
        if optimizer == "descent":
            objective = MapError(method, counted, sde, x_T, reference, bar)
            grid, record = descend(objective, positions, steps, start=start, free_start=free, free_end=free_end, dp=dp,
                                   candidates=candidates, sweeps=sweeps, tol=tol, reference_tol=reference_tol,
                                   spent=lambda: _number(counted.evaluations / n))
            error = record.pop("error")
            record["runs"] = objective.runs
        elif optimizer == "gits":
            grid, record = gits(counted, sde, steps, x_T, eps, free_start=free, free_end=free_end,
                                candidates=candidates, **settings)
        elif optimizer == "dmn":
            grid, record = dmn(sde, steps, eps, ode_order(method), counted.predicts, positions,
                               start=start or "logsnr", **settings)
        elif optimizer == "ays":
            klub = KLUB(counted, sde, reference, generator)
            grid, record = ays(klub, positions, steps, start=start, sweeps=sweeps, tol=tol, **settings)
        else:
            settings = dict(settings)
            fitted = lambda name: positions.fit(time_grid(sde, steps, name, eps), free, free_end)  # noqa: E731
            if settings.pop("init") == "best" and start is None:  # the best fixed spacing on the calibration draws
                check = MapError(method, counted, sde, x_T, reference)
                record["fixed_errors"] = {s: check(fitted(s)) for s in starts}
                start = min(record["fixed_errors"], key=record["fixed_errors"].get)
            init = positions.of_grid(fitted(start)) if start is not None else [k / (steps - 1) for k in range(steps)]
            # every softmax weight positive: a free end 1 % of its interval inside its bound, a pinned one on it
            init[0] = max(init[0], 0.01 * init[1]) if free else 0.0
            init[-1] = min(init[-1], 1.0 - 0.01 * (1.0 - init[-2])) if free_end else 1.0
            grid, found = ld3(method, counted, sde, steps, x_T, reference, positions, free_start=free,
                              free_end=free_end, init=init, generator=generator, bar=bar, **settings)
            record.update(found, start=start)
    finally:
        bar.close()
    if optimizer in ("ays", "ld3") and not method.stochastic:  # the record's check, outside the calibration's bill
        try:
            error = map_error(integrate(method, score, sde, x_T, grid).x, reference)
        except SamplerDiverged:
            error = math.inf
    bill = cost.record(n if x_T is not None else 1)
    if x_T is None:
        bill["draws"], bill["evaluations"] = 0, 0
    info = {"optimizer": optimizer, "method": DESCRIPTIONS[optimizer], "sampler": sampler, "options": dict(options),
            "steps": steps, "eps": eps, "n": n if x_T is not None else 0, "shape": list(shape),
            "dtype": str(dtype).replace("torch.", ""), "free_start": free, "free_end": free_end,
            "settings": _jsonable(settings), **record, "error": error, "cost": bill,
            "nfe": _number(bill["evaluations"]),
            "reference_nfe": _number(reference_evaluations) if reference is not None else None,
            "seconds": bill["seconds"], "model": calibrated_for}
    return TimeGrid(grid.nodes, grid.sde, _jsonable(info))


def _number(v: float):
    return int(v) if float(v).is_integer() else float(v)


def _jsonable(value):
    """``value`` with tuples as lists and non-finite floats as strings (``grid.save`` writes strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
