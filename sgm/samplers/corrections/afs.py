"""The analytical first step (AFS; Zhou et al., CVPR 2024, with AMED): the first step's model evaluation is replaced by
an analytic prediction, so a budget of ``N`` evaluations runs one more noise level.

At the first node ``x_T`` is almost pure noise. Zhou et al. take the direction of the probability-flow ODE in
``y = x/α`` and the noise level ``σ_n = σ/α`` as ``d = ε̂ = y/√(1 + σ_n²)`` — that of data of zero mean and unit
variance seen at a high noise level:

    ε̂(x_T) = x_T/√(α_T² + σ_T²),     x̂_0(x_T) = α_T x_T/(r(r + σ_T)),   r = √(α_T² + σ_T²)

(exact at rectified flow's top, ``α = 0``, only for data of mean 0). Nothing is calibrated: it holds for any model, path
and grid. Its error is the data's mean seen through ``α_T/σ_T`` — small on VP (``α_T = 0.0066``), larger on VE
(``σ_T = 50``) and rectified flow, where ``x̂_0(x_T) = E x_0`` exactly.

``afs(sampler, score=model, sde=path, shape=(n, …))`` calibrates the same step with the model's own moments: the mean
``μ`` and per-element variance ``v`` of its samples (the flow map of ``n`` prior draws), and the posterior mean of
``N(μ, diag v)``,

    x̂_0(x_T) = μ + α_T v (x_T - α_T μ)/(α_T² v + σ_T²),

exact at ``α = 0`` and to first order in ``α/σ`` for any data. Both compose with every other correction
(``pas(..., afs=True | "moments")``, ``amed(...)``) and run on any grid.
"""
from __future__ import annotations

import time

import torch

from ...checks import integer, positive, shape as check_shape
from ...paths import GaussianPath
from ..fingerprint import batch_fingerprint
from ..optimize import flow_map
from ..registry import solver as make_solver
from .base import Correction, check_base, moments_of, moments_params

__all__ = ["afs"]


def afs(sampler: str = "ipndm", score=None, sde: GaussianPath | None = None, *, shape=None,
        generator: torch.Generator | None = None, eps: float | None = None, reference_tol: float = 1e-8,
        dtype: torch.dtype = torch.float64, device=None, **options) -> Correction:
    """The analytical first step for the deterministic ``sampler`` (with ``options``): a ``Correction``
    (``method="afs"``) that spends one evaluation fewer than the sampler on the same grid. Without ``score``, Zhou et
    al.'s step (for any model and path); with ``score``, ``sde`` and the batch ``shape = (n, *dims)``, the step with the
    model's moments from the flow map of ``n`` prior draws of ``generator`` (see the module docstring)."""
    started = time.perf_counter()
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a sampler name (str), got {type(sampler).__name__}")
    check_base(make_solver(sampler, **options), sampler, options)
    if score is None:
        if sde is not None or shape is not None:
            raise ValueError("give score, sde and shape together (the AFS with the model's moments), or none of them")
        return Correction("afs", sampler, options, {}, None, True, None, None,
                          {"method": "analytical first step (Zhou et al. 2024)", "nfe": 0, "draws": 0,
                           "evaluations": 0, "seconds": 0.0})
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath) with score, got {type(sde).__name__}")
    shape = check_shape("shape", shape)
    n = integer("shape[0]", shape[0], 2)
    reference_tol = positive("reference_tol", reference_tol)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    model = batch_fingerprint(score, sde, shape, dtype, device)
    x_T = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    x0, spent = flow_map(score, sde, x_T, eps, reference_tol)
    info = {"method": "analytical first step with the model's moments", "n": n, "shape": list(shape),
            "reference": f"dopri5 rtol=atol={reference_tol:g}, then Tweedie", "nfe": spent, "draws": n,
            "evaluations": spent * n, "seconds": time.perf_counter() - started}
    return Correction("afs", sampler, options, moments_params(moments_of(x0)), None, True, repr(sde), model, info)
