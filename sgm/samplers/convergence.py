"""Strong and weak errors of a stochastic solver on shared Brownian paths: what the order tests and
``benchmarks/convergence.py`` measure.

Every run is driven by the same Brownian path per sample (one ``BrownianNoise`` source) from the same ``x_T``, and
compared with the same solver at ``reference`` steps on those paths:

    strong(K) = E‖x_K - x_ref‖,        weak(K) = ‖m_K - m_ref‖ + ‖C_K - C_ref‖_F      (sample mean and covariance)

The common paths cancel the Monte-Carlo error of the moments to first order (what is left is about the strong error
over √n), so weak orders above 1 show with a few thousand samples, where fresh noise would need millions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .grid import time_grid
from .noise import BrownianNoise
from .solver import Solver, integrate

__all__ = ["slope", "path_errors", "moment_gap"]


def slope(steps, errors) -> float:
    """The order: minus the least-squares slope of ``log error`` against ``log steps``."""
    xs, ys = [math.log(s) for s in steps], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    flat = x.flatten(1)
    return flat.mean(0), torch.cov(flat.T).reshape(flat.shape[1], flat.shape[1])


def path_errors(solver: Solver, score, sde, x: Tensor, steps, reference: int, noise: BrownianNoise, *,
                spacing: str = "logsnr") -> tuple[list[float], list[float], Tensor]:
    """``(strong, weak, x_ref)``: the errors above at each of ``steps`` (grids of ``K + 1`` noisy nodes on
    ``spacing``, ending at eps without denoising) and the reference run's states."""
    def run(k):
        return integrate(solver, score, sde, x, time_grid(sde, k + 1, spacing, denoise=False), noise=noise).x

    ref = run(reference)
    m_ref, c_ref = _moments(ref)
    strong, weak = [], []
    for k in steps:
        x_k = run(k)
        m, c = _moments(x_k)
        strong.append(float((x_k - ref).flatten(1).norm(dim=1).mean()))
        weak.append(float((m - m_ref).norm() + (c - c_ref).norm()))
    return strong, weak, ref


def moment_gap(x: Tensor, mean: Tensor, cov: Tensor) -> float:
    """The largest distance of ``x``'s sample mean and covariance entries from ``mean``, ``cov``, in standard errors
    (``√(C_ii/n)`` for a mean, ``√((C_ii C_jj + C_ij²)/n)`` for a covariance entry, Gaussian approximation)."""
    n = x.shape[0]
    m, c = _moments(x)
    d = cov.diag()
    gap_m = (m - mean).abs() / (d / n).sqrt()
    gap_c = (c - cov).abs() / ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    return max(float(gap_m.max()), float(gap_c.max()))
