"""Samplers: solvers on one protocol (``Solver``: ``init``/``step``, declared ``order``, ``evals_per_step``,
``stochastic``), the one loop ``integrate`` that runs them, time grids, a registry of names, and the one
entry point ``sample``. ``sgm.samplers.NAME(score, sde, x, grid, **options)`` runs the sampler ``NAME``."""
from .base import CheckedScore, SamplerDiverged, SamplerOutput
from .grid import SPACINGS, Node, TimeGrid, time_grid
from .registry import SAMPLERS, available, get, options, sample, solver
from .solver import Model, Noise, Prediction, Solver, integrate
from .optimize import optimize_grid

euler_maruyama = get("euler_maruyama")
reverse_diffusion = get("reverse_diffusion")
ancestral = get("ancestral")
ddim = get("ddim")
ode = get("ode")
sde = get("sde")
langevin = get("langevin")
pc = get("pc")
dpm_solver = get("dpm_solver")
unipc = get("unipc")
deis = get("deis")
ipndm = get("ipndm")
heun = get("heun")

__all__ = [
    "CheckedScore", "SamplerDiverged", "SamplerOutput", "SPACINGS", "Node", "TimeGrid", "time_grid",
    "Model", "Noise", "Prediction", "Solver", "integrate",
    "euler_maruyama", "reverse_diffusion", "ancestral", "ddim", "ode", "sde", "langevin", "pc", "dpm_solver", "unipc",
    "deis", "ipndm", "heun",
    "SAMPLERS", "available", "get", "options", "solver", "sample", "optimize_grid",
]
