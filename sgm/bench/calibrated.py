"""Calibrate, then run: sgm's methods that are fitted on prior draws before they sample, as rows of a comparison.

A *method* is a step optimiser of ``optimize_grid`` (``OPTIMIZERS``: descent, gits, dmn, ays, ld3) or a learned
correction (``CORRECTIONS``):

- ``pas`` (PAS), ``amed`` (AMED-Plugin, without the analytical first step) and ``s4s`` (S4S's learned multistep
  coefficients) on a grid of the uncorrected sampler;
- ``afs`` (Zhou et al.'s analytical first step) and ``afs_m`` (with the model's moments): one evaluation fewer on the
  same grid, so they run on the budget's grid of the corrected solver (one node more), on a fixed spacing only;
- ``v3``: DPM-Solver-v3 with the model's empirical statistics (EMS, once per problem) on ``dpm_solver_v3``'s
  default spacing for the budget and, composed, on the descent's grid for it (with ``s4s`` too: S4S over it there).

``calibrated_rows(problem, nfes, fixed, draws)`` at each budget ranks the distinct sampler-with-options-and-path of
the ``fixed`` rows (finite, on a continuous spacing) by map error; each optimiser calibrates a grid for its
``TOP[optimizer]`` best that it accepts (one it refuses, a ``ValueError``, is a failed row and passes to the next);
each correction is calibrated on the best fixed run's grid and on every optimised grid (composition: which grid a
correction gains most on is not the best grid's, e.g. S4S on the 16-D mixture; v3, which makes its own descent grid,
once, beside the best by map error on ``select``, the problem whose rows ranked ``fixed``). Every method calibrates on
``draws`` — ``n`` prior draws from a generator seeded apart from the problem's ``x_T`` — and then runs from ``x_T``
(``runs.sgm_row``). Each row carries ``family`` (``"optimised"`` or ``"corrected"``), ``method`` and ``calibration``:
its cost in evaluations of the batch (``nfe``), ``draws`` and ``seconds``, spent once before sampling and not in the
NFE (a correction on an optimised grid: both calibrations; v3 on the descent's grid: the EMS and that grid).

The budget (``TOP``): one calibration of each, measured with ``calibrated_rows`` (top 1 each) on the 16-D mixture,
VP, 10 NFE, 256 draws, on 2 shared cores: descent 1.9 s, GITS 0.3 s, DMN 3.6 s, AYS 7.9 s, LD3 34 s, PAS 0.7 s,
AMED 1.2 s, AFS with moments 0.7 s, EMS 4.6 s (and 3.9 s for the descent's grid of v3). LD3 costs as much as all
the others together, so the descent (cheap, and the best of them in docs/samplers.md) runs on
the 3 best configurations and every other optimiser on the best one; a correction costs two calibrations per
budget. The comparison's rows record every cost (``calibration``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import samplers
from ..samplers import SamplerDiverged, budget_grid, optimize_grid, time_grid
from ..samplers.corrections import AFS, afs, amed, ems, pas, s4s
from ..samplers.optimize import OPTIMIZERS
from .judge import failed
from .runs import CHAIN_SPACINGS, label, sgm_row

__all__ = ["CORRECTIONS", "TRAINED_CORRECTIONS", "OPTIMIZERS", "TOP", "Draws", "check_methods", "calibrate_grid",
           "calibrated_rows",
           "leg_family"]

CORRECTIONS = ("pas", "amed", "s4s", "afs", "afs_m", "v3")
# the trained leg's: the corrections that won a cell on the digits network (S4S every cell of the last run; AMED and
# PAS the run before); AFS and v3 won none on the exact targets and cost a flow map or EMS of the network
TRAINED_CORRECTIONS = ("pas", "amed", "s4s")
TOP = {"descent": 3, "ld3": 1, "gits": 1, "dmn": 1, "ays": 1}  # configurations per budget (module docstring)


@dataclass(frozen=True)
class Draws:
    """The calibration batch: ``n`` prior draws ``x = prior_std·randn(n, *shape)`` from a generator seeded ``seed``
    in ``dtype``; the teacher of every method is dopri5 at ``rtol = atol = reference_tol``."""

    n: int
    seed: int
    dtype: torch.dtype = torch.float64
    reference_tol: float = 1e-8

    def kwargs(self, shape: tuple) -> dict:
        """The calibration arguments every method takes, for samples of ``shape``: the batch ``shape`` ``(n,
        *shape)``, ``generator``, ``dtype``, ``reference_tol``."""
        return {"shape": (self.n, *shape), "generator": torch.Generator().manual_seed(self.seed),
                "dtype": self.dtype, "reference_tol": self.reference_tol}

    def sample(self, sde, shape: tuple) -> torch.Tensor:
        """The draws themselves (the methods draw them the same way from ``kwargs``' generator)."""
        return sde.prior_sample((self.n, *shape), generator=torch.Generator().manual_seed(self.seed), dtype=self.dtype)


def check_methods(optimizers, corrections) -> tuple[tuple, tuple]:
    """``optimizers`` and ``corrections`` as tuples of known names; a ``ValueError`` naming any unknown one."""
    for what, given, known in (("optimizers", optimizers, OPTIMIZERS), ("corrections", corrections, CORRECTIONS)):
        if isinstance(given, str):
            raise TypeError(f"{what} must be a sequence of names, got the string {given!r}")
        unknown = [name for name in given if name not in known]
        if unknown:
            raise ValueError(f"{what}: unknown {unknown}; known: {', '.join(known)}")
    return tuple(optimizers), tuple(corrections)


def calibrate_grid(model, sde, steps: int, sampler: str, options: dict, draws: Draws, shape: tuple,
                   optimizer: str):
    """``optimize_grid``'s grid for ``sampler`` with ``options`` and ``steps`` noisy nodes, by ``optimizer``, on the
    calibration ``draws`` of per-sample ``shape`` (the sweep's one call of ``optimize_grid``)."""
    return optimize_grid(model, sde, steps, sampler=sampler, optimizer=optimizer, **draws.kwargs(shape), **options)


def _cost(info) -> dict:
    """A calibration's cost from a grid's ``info["cost"]`` or a correction's ``info``: evaluations of the batch,
    draws, seconds."""
    cost = info.get("cost", info)
    return {"nfe": cost.get("evaluations") if "cost" in info else cost.get("nfe"), "draws": cost.get("draws"),
            "seconds": cost.get("seconds")}


def _plus(a: dict, b: dict) -> dict:
    """The cost of two calibrations on the same draws (an optimised grid and a correction on it)."""
    return {"nfe": a["nfe"] + b["nfe"], "draws": max(a["draws"], b["draws"]), "seconds": a["seconds"] + b["seconds"]}


def _ranked(rows: list[dict], nfe: int) -> list[dict]:
    """Each distinct sampler-with-options-and-path's best finite continuous-spacing row at ``nfe``, best first."""
    hits = sorted((r for r in rows if r["nfe_budget"] == nfe and not r["diverged"]
                   and r["spacing"] not in CHAIN_SPACINGS), key=lambda r: r["map_error"])
    best = {(r["name"], tuple(r["options"].items()), r.get("variant", "")): r for r in reversed(hits)}
    return sorted(best.values(), key=lambda r: r["map_error"])


def _label(base: dict, family: str, method: str, where: str) -> str:
    """``"ipndm max_order=3, ld3 grid"`` (an optimiser's grid) or ``"ipndm max_order=3, karras + pas"`` (a
    correction on ``where``)."""
    return label(base["name"], base["options"], f"{where} + {method}" if family == "corrected" else f"{method} grid",
                 base.get("variant", ""))


class _Leg:
    """One problem's calibrated rows: the model of each path, the per-sample shape, the draws and the rows."""

    def __init__(self, problem, select, draws: Draws):
        self.problem, self.select, self.draws = problem, select, draws
        self.paths = {v.label: v for v in problem.variants}
        self.shape = tuple(problem.x_T.shape[1:])
        self.rows: list[dict] = []
        self.statistics: dict = {}  # variant -> the EMS correction

    def model(self, variant: str):
        return self.problem.model_for(self.paths[variant], False)

    def run(self, base: dict, nfe: int, steps: int, family: str, method: str, where: str, cost: dict,
            sample_kw: dict) -> dict:
        """The row of one calibrated run of ``base``'s sampler from ``x_T`` (``sample_kw``: a ``grid`` and/or a
        ``correction``)."""
        variant = base.get("variant", "")
        model, sde = self.model(variant)
        row = sgm_row(self.problem, model, sde, base["name"], base["options"], nfe, steps,
                      _label(base, family, method, where), sample_kw, variant)
        row = {**row, "family": family, "method": method, "spacing": where if family == "corrected" else method,
               "calibration": cost}
        self.rows.append(row)
        seconds = cost.get("seconds") or 0.0
        print(f"  {self.problem.target_name} / {self.problem.sde_name}, {row['sampler']} at NFE {nfe}: map error "
              f"{row.get('map_error', float('nan')):.4g} (calibration {seconds:.0f} s)", flush=True)  # minutes each
        return row

    def fail(self, base: dict, nfe: int, steps: int, family: str, method: str, where: str, error: Exception,
             t0: float) -> None:
        """The failed row of a calibration that raised ``error``."""
        self.rows.append({"target": self.problem.target_name, "sde": self.problem.sde_name, "side": "sgm",
                          "sampler": _label(base, family, method, where), "nfe_budget": nfe, "steps": steps,
                          "variant": base.get("variant", ""), "family": family, "method": method,
                          **failed(error, t0, f"{method}: ")})
        print(f"  {self.problem.target_name} / {self.problem.sde_name}, {self.rows[-1]['sampler']} at NFE {nfe}: "
              f"failed ({self.rows[-1]['error']})", flush=True)

    def score_on_select(self, row: dict, grid) -> float:
        """The map error that ranks an optimised grid: its row's own on the problem, else a run on ``select`` (kept
        in the row as ``screen_map_error``)."""
        if self.select is self.problem:
            return row["map_error"]
        model, sde = self.model(row.get("variant", ""))
        again = sgm_row(self.select, model, sde, row["name"], row["options"], row["nfe_budget"], row["steps"],
                        row["sampler"], {"grid": grid}, row.get("variant", ""))
        row["screen_map_error"] = again["map_error"] if not again["diverged"] else float("inf")
        return row["screen_map_error"]

    def optimise(self, ranked: list[dict], nfe: int, optimizer: str, top: int) -> list[tuple[float, dict, object]]:
        """``optimizer``'s grids for the ``top`` best configurations it accepts: ``(select error, row, grid)``."""
        made = []
        for base in ranked:
            if len(made) >= top:
                break
            model, sde = self.model(base.get("variant", ""))
            t0 = time.perf_counter()
            try:
                grid = calibrate_grid(model, sde, base["steps"], base["name"], base["options"], self.draws,
                                      self.shape, optimizer)
            except SamplerDiverged as e:  # on every starting grid: a diverged row, and it counts
                self.fail(base, nfe, base["steps"], "optimised", optimizer, "", e, t0)
                made.append((float("inf"), None, None))
                continue
            except ValueError as e:  # refused (DMN takes exponential integrators only): the next configuration
                self.fail(base, nfe, base["steps"], "optimised", optimizer, "", e, t0)
                continue
            row = self.run(base, nfe, base["steps"], "optimised", optimizer, "", _cost(grid.info), {"grid": grid})
            if not row["diverged"]:
                made.append((self.score_on_select(row, grid), row, grid))
        return made

    def correct(self, base: dict, grid, where: str, nfe: int, corrections, optimised: bool) -> None:
        """Each of ``corrections`` calibrated for ``base``'s sampler on ``grid`` (``where``: its name in the row;
        an ``optimised`` grid, or the fixed spacing ``base["spacing"]``, which AFS's and v3's budget grids use)."""
        name, options, variant = base["name"], base["options"], base.get("variant", "")
        model, sde = self.model(variant)
        for method in corrections:
            if method in ("afs", "afs_m") and optimised:
                continue  # its saved evaluation would need a node more than the optimised grid has
            t0 = time.perf_counter()
            try:
                if method == "pas":
                    c = pas(model, sde, name, grid=grid, **self.draws.kwargs(self.shape), **options)
                elif method == "amed":
                    c = amed(model, sde, name, grid=grid, afs=False, **self.draws.kwargs(self.shape), **options)
                elif method == "s4s":
                    c = s4s(model, sde, name, grid=grid, **self.draws.kwargs(self.shape), **options)
                elif method == "v3":
                    self.v3(base, optimised, where, nfe, "s4s" in corrections)
                    continue
                else:
                    c = afs(name, **options) if method == "afs" else \
                        afs(name, model, sde, **self.draws.kwargs(self.shape), **options)
            except Exception as e:  # noqa: BLE001 — any failure is a failed row with its error, and the run goes on:
                # diverged, a sampler the correction refuses (AMED on dpm_solver_v3), or a bug, kept in the row
                self.fail(base, nfe, base["steps"], "corrected", method, where, e, t0)
                continue
            kw = {"correction": c}
            if c.grid is None:  # the analytical first step: the budget's grid of the corrected solver
                kw["grid"] = budget_grid(AFS(samplers.solver(name, **options)), sde, nfe, base["spacing"])
            steps = len((c.grid or kw["grid"]).noisy)
            cost = _plus(base["calibration"], _cost(c.info)) if optimised else _cost(c.info)
            self.run(base, nfe, steps, "corrected", method, where, cost, kw)

    def v3(self, base: dict, optimised: bool, where: str, nfe: int, s4s_too: bool = False) -> None:
        """DPM-Solver-v3 with the EMS of ``base``'s path (calibrated once) on its default spacing for the budget, or
        (``optimised``: the composition) on the descent's grid for it, and with ``s4s_too`` S4S over it there
        (``where`` names a failure)."""
        variant = base.get("variant", "")
        model, sde = self.model(variant)
        if variant not in self.statistics:
            self.statistics[variant] = ems(model, sde, **self.draws.kwargs(self.shape))
        c = self.statistics[variant]
        cost = _cost(c.info)
        method = samplers.solver("dpm_solver_v3")
        steps = method.steps_for_nfe(nfe)
        v3_base = {**base, "name": "dpm_solver_v3", "options": {}}
        if not optimised:
            spacing = samplers.entry("dpm_solver_v3").default_spacing(sde)
            self.run(v3_base, nfe, steps, "corrected", "v3", spacing, cost,
                     {"correction": c, "grid": budget_grid(method, sde, nfe, spacing)})
            return
        t0 = time.perf_counter()
        try:
            grid = calibrate_grid(model, sde, steps, "dpm_solver_v3", {"ems": c.solver().ems}, self.draws,
                                  self.shape, "descent")
        except ValueError as e:
            self.fail(v3_base, nfe, steps, "corrected", "v3", where, e, t0)
            return
        cost = _plus(cost, _cost(grid.info))
        self.run(v3_base, nfe, steps, "corrected", "v3", "descent grid", cost, {"correction": c, "grid": grid})
        if not s4s_too:
            return
        t0 = time.perf_counter()
        try:
            over = s4s(model, sde, "dpm_solver_v3", grid=grid, ems=c.solver().ems, **self.draws.kwargs(self.shape))
        except Exception as e:  # noqa: BLE001 — as in correct(): a failed row with its error
            self.fail(v3_base, nfe, steps, "corrected", "s4s", "descent grid + v3", e, t0)
            return
        self.run(v3_base, nfe, steps, "corrected", "s4s", "descent grid + v3", _plus(cost, _cost(over.info)),
                 {"correction": over})


def calibrated_rows(problem, nfes, fixed: list[dict], draws: Draws, optimizers=OPTIMIZERS,
                    corrections=CORRECTIONS, top: dict | None = None, select=None) -> list[dict]:
    """The rows of the module docstring on ``problem`` at each budget of ``nfes``: the grids of ``optimizers`` (the
    ``top`` best configurations of ``fixed`` each, default ``TOP``) and ``corrections`` on the best fixed grid and
    on every optimised grid, all calibrated on ``draws`` and run from ``problem.x_T``. ``select`` (default:
    ``problem``): the problem whose rows ``fixed`` are, on which the best optimised grid is chosen."""
    optimizers, corrections = check_methods(optimizers, corrections)
    top = {**TOP, **(top or {})}
    leg = _Leg(problem, problem if select is None else select, draws)
    for nfe in nfes:
        ranked = _ranked(fixed, nfe)
        if not ranked:
            continue
        made = [m for optimizer in optimizers for m in leg.optimise(ranked, nfe, optimizer, top[optimizer])]
        best = ranked[0]
        model, sde = leg.model(best.get("variant", ""))
        leg.correct(best, time_grid(sde, best["steps"], best["spacing"]), best["spacing"], nfe, corrections, False)
        made = sorted((m for m in made if m[1] is not None), key=lambda m: m[0])
        for rank, (_, row, grid) in enumerate(made):  # v3 makes its own descent grid: once, beside the best
            leg.correct(row, grid, f"{row['method']} grid", nfe,
                        [c for c in corrections if rank == 0 or c != "v3"], True)
    return leg.rows


def leg_family(draws: Draws, optimizers=OPTIMIZERS, corrections=TRAINED_CORRECTIONS, top: dict | None = None):
    """A calibrated family for the trained leg (``trained.run_leg(calibrated=[...])``): ``f(evaluation, screen,
    chosen)`` returns ``calibrated_rows`` on ``evaluation`` ranked by sgm's screening finalists ``chosen`` (and the
    best optimised grid chosen on ``screen``), calibrated on ``draws`` — the screening batch itself."""
    optimizers, corrections = check_methods(optimizers, corrections)

    def rows(evaluation, screen, chosen: list[dict]) -> list[dict]:
        fixed = [r for r in chosen if r["side"] == "sgm"]
        nfes = tuple(dict.fromkeys(r["nfe_budget"] for r in fixed))
        return calibrated_rows(evaluation, nfes, fixed, draws, optimizers, corrections, top, select=screen)

    return rows
