"""Samplers: solvers on one protocol (``Solver``: ``init``/``step`` with states as values, declared ``ode_order`` /
``strong_order`` / ``weak_order``, ``evals_per_step``, ``stochastic``, ``needs``), the one loop ``integrate`` that
runs them, noise sources, time grids (optimised ones: ``optimize_grid``), learned corrections
(``sgm.samplers.corrections``), a registry of entries with their metadata, and the one entry point ``sample``.
``sgm.samplers.NAME(score, sde, x, grid, **options)`` runs the sampler ``NAME``."""
from .base import CheckedScore, SamplerDiverged, SamplerOutput
from .grid import SPACINGS, Node, TimeGrid, time_grid
from .noise import Noise, SeededNoise
from .registry import SAMPLERS, Entry, available, budget_grid, entry, get, markdown_table, options, sample, solver
from .solver import Model, Prediction, Solver, integrate
from .optimize import optimize_grid
from . import corrections
from .corrections import Correction

euler_maruyama = get("euler_maruyama")
reverse_diffusion = get("reverse_diffusion")
ancestral = get("ancestral")
ddim = get("ddim")
ode = get("ode")
sde = get("sde")
langevin = get("langevin")
pc = get("pc")
dpm_solver = get("dpm_solver")
dpm_solver_v3 = get("dpm_solver_v3")
unipc = get("unipc")
deis = get("deis")
ipndm = get("ipndm")
heun = get("heun")
dpm_solver_sde = get("dpm_solver_sde")
euler_ancestral = get("euler_ancestral")
dpmpp_2s_ancestral = get("dpmpp_2s_ancestral")

__all__ = [
    "CheckedScore", "SamplerDiverged", "SamplerOutput", "SPACINGS", "Node", "TimeGrid", "time_grid",
    "Model", "Noise", "SeededNoise", "Prediction", "Solver", "integrate", "Entry", "entry", "markdown_table",
    "budget_grid",
    "euler_maruyama", "reverse_diffusion", "ancestral", "ddim", "ode", "sde", "langevin", "pc", "dpm_solver",
    "dpm_solver_v3", "unipc", "deis", "ipndm", "heun", "dpm_solver_sde", "euler_ancestral", "dpmpp_2s_ancestral",
    "SAMPLERS", "available", "get", "options", "solver", "sample", "optimize_grid", "corrections", "Correction",
]
