"""Learned solver corrections (what the best 5-NFE results use), calibrated on prior draws with the model alone.

- ``pas``: PCA-based adaptive search (Wang et al., 2025) — learned coordinates of the sampling direction in a PCA
  basis of the trajectory, at the few steps where they pay;
- ``amed``: AMED-Plugin (Zhou et al., 2024) — learned intermediate times (and two scalings) of two-evaluation steps;
- ``afs``: the analytical first step (Zhou et al., 2024) — the first evaluation replaced by ``x/√(α² + σ²)``;
- ``s4s``: S4S (Frankel et al., 2025) — learned multistep coefficients of the solver's directions, fitted jointly to
  the model's own flow map;
- ``ems``: DPM-Solver-v3's empirical model statistics (Zheng et al., 2023), for the ``dpm_solver_v3`` sampler.

Each returns a ``Correction``: saved and loaded as JSON with the path and the model's fingerprint, refused for another,
and run by ``sgm.sample(score, sde, shape, correction=c)``.
"""
from .base import AFS, Correction, Corrected, analytic_prediction, teacher
from .pas import PAS, pas, pas_basis
from .amed import AMED, amed
from .afs import afs
from .s4s import S4S, s4s
from .ems import ems

__all__ = ["Correction", "Corrected", "AFS", "PAS", "AMED", "S4S", "pas", "amed", "s4s", "afs", "ems", "pas_basis",
           "analytic_prediction", "teacher"]
