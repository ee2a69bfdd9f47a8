"""Samplers: plain functions ``fn(score, sde, x, grid, *, generator, progress, **options) -> (x, nfe)``,
a registry of their names, and the one entry point ``sample``."""
from .base import CheckedScore, SamplerDiverged, SamplerOutput
from .grid import SPACINGS, Node, TimeGrid, time_grid
from .langevin import langevin, pc
from .predictors import ancestral, ddim, euler_maruyama, reverse_diffusion
from .probability_flow import ode
from .registry import SAMPLERS, available, get, options, sample
from .reverse_sde import sde

__all__ = [
    "CheckedScore", "SamplerDiverged", "SamplerOutput", "SPACINGS", "Node", "TimeGrid", "time_grid",
    "euler_maruyama", "reverse_diffusion", "ancestral", "ddim", "ode", "sde", "langevin", "pc",
    "SAMPLERS", "available", "get", "options", "sample",
]
