"""``optimizer="ays"``: Align Your Steps (Sabour, Fidler & Kreis, 2024, "Align Your Steps: Optimizing Sampling
Schedules in Diffusion Models", ICML): the grid minimising the KL-divergence upper bound (KLUB, by Girsanov's theorem)
between the reverse SDE and its linearisation on the grid, where each step freezes the denoiser at the step's start.

In the noise level ``ν = σ/α`` the bound of one step from ``ν_a`` down to ``ν_b`` is (up to a constant factor)
``∫_{ν_b}^{ν_a} ν^{-3} E‖D(x_ν, ν) - D(x_{ν_a}, ν_a)‖² dν`` with ``x_ν ~ p_ν`` and ``x_{ν_a}`` drawn from the forward
transition ``p(x_{ν_a} | x_ν)``. In ``r = 1/ν = α/σ = e^λ`` (finite at the top of every path, ``r = 0`` where
``α = 0``) it reads

    KLUB(G) = Σ_k K(r_k, r_{k+1}),   K(r_a, r_b) = ∫_{r_a}^{r_b} r E‖D(x_r) - D(x_{r_a})‖² dr.

For data ``N(0, c²I)`` in ``d`` dimensions ``E‖D(x_r) - D(x_{r_a})‖² = d c⁴ (g(r) - g(r_a))``, ``g(r) = r²/(1 + c²r²)``
(``klub_gaussian`` integrates it in closed form). The expectation is estimated as in the paper by importance sampling
with that Gaussian shape: ``r ~ π ∝ r (g(r) - g(r_a))`` on ``[r_a, r_b]`` and ``K ≈ Z·mean ‖ΔD‖²/(g(r) - g(r_a))``
(``Z = ∫ π``), with ``c²`` the samples' per-dimension variance, so the estimate is exact in expectation and of zero
variance on Gaussian data. The samples ``x_0`` are the model's own (the reference map ``Φ`` of the calibration draws:
no data needed); the draws ``x_0``, the two noises and the stratified quantiles of ``r`` are fixed for the whole
search (common random numbers), so the estimate is a smooth function of the grid.

Search (AYS's iterative refinement): from the fixed spacing of least KLUB (or ``start``), each interior node in turn
minimises the KLUB of its two neighbouring steps with the others fixed (Brent's bounded search in ``u`` to ``xatol``),
for at most ``sweeps`` sweeps, until a sweep gains less than ``tol`` (relative). The bound is that of the stochastic
sampler (DDIM with noise, the reverse SDE by Euler–Maruyama); AYS applies the same schedules to deterministic ones,
and so does ``optimize_grid``. Cost: the reference (a few hundred evaluations of the batch), then two evaluations
of the batch per step estimate — about ``(steps - 2)·sweeps·(evaluations of the search + 2)·4``.
"""
from __future__ import annotations


import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from ...predictions import predict
from ..grid import Node, TimeGrid, time_grid
from .common import FIXED_SPACINGS, Positions

__all__ = ["ays", "KLUB", "klub_gaussian", "proposal_cdf"]


def _G(r: Tensor, c2: float) -> Tensor:
    """``∫_0^r q g(q) dq = ∫_0^r q³/(1 + c²q²) dq = (r² - log(1 + c²r²)/c²)/(2c²)`` (its series for small ``c²r²``)."""
    y = c2 * r**2
    series = r**4 / 4 - c2 * r**6 / 6 + c2**2 * r**8 / 8
    closed = (r**2 - torch.log1p(y) / c2) / (2 * c2)
    return torch.where(y < 1e-3, series, closed)


def _g(r: Tensor, c2: float) -> Tensor:
    return r**2 / (1 + c2 * r**2)


def proposal_cdf(r: Tensor, r_a: float, c2: float) -> Tensor:
    """``P(r) = ∫_{r_a}^r q (g(q) - g(r_a)) dq``, the unnormalised CDF of the importance proposal on ``[r_a, ·]``."""
    r_a_t = torch.as_tensor(r_a, dtype=torch.float64)
    return _G(r, c2) - _G(r_a_t, c2) - _g(r_a_t, c2) * (r**2 - r_a**2) / 2


def klub_gaussian(r_a: float, r_b: float, c2: float, d: int) -> float:
    """``K(r_a, r_b)`` for data ``N(0, c²I_d)`` exactly: ``d c⁴ P(r_b)``."""
    return d * c2**2 * float(proposal_cdf(torch.tensor(r_b, dtype=torch.float64), r_a, c2))


class KLUB:
    """The estimate of ``K(r_a, r_b)`` for the ``model`` on ``sde`` from the samples ``x0`` (module docstring)."""

    def __init__(self, model, sde, x0: Tensor, generator: torch.Generator | None = None):
        self.model, self.sde, self.x0 = model, sde, x0
        n = x0.shape[0]
        self.z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        self.z_a = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        perm = torch.randperm(n, generator=generator)
        self.q = ((perm.to(torch.float64) + 0.5) / n)  # stratified quantiles, shuffled against the draws
        self.c2 = max(float(x0.flatten(1).var(0).mean()), 1e-12)

    def _quantile(self, r_a: float, r_b: float) -> Tensor:
        """``r`` at the quantiles ``q`` of ``π`` on ``[r_a, r_b]``: interpolated on a table of ``√P`` (``P`` grows like
        ``(r - r_a)²`` at ``r_a``), then three Newton steps on ``P(r) = q P(r_b)`` (``P' = r (g(r) - g(r_a))``)."""
        r_grid = torch.linspace(r_a, r_b, 257, dtype=torch.float64)
        total = float(proposal_cdf(r_grid[-1:], r_a, self.c2))
        s_grid = (proposal_cdf(r_grid, r_a, self.c2) / total).clamp_min(0).sqrt()
        s_grid = torch.cummax(s_grid, 0).values
        s = self.q.sqrt()
        i = torch.searchsorted(s_grid, s).clamp(1, 256)
        lo, hi = s_grid[i - 1], s_grid[i]
        f = ((s - lo) / (hi - lo).clamp_min(1e-300)).clamp(0, 1)
        r = r_grid[i - 1] + f * (r_grid[i] - r_grid[i - 1])
        g_a = _g(torch.tensor(r_a, dtype=torch.float64), self.c2)
        for _ in range(3):
            slope = r * (_g(r, self.c2) - g_a) / total
            step = (proposal_cdf(r, r_a, self.c2) / total - self.q) / slope.clamp_min(1e-300)
            r = torch.where(slope > 0, r - step, r).clamp(r_a, r_b)
        return r

    def __call__(self, a: Node, b: Node) -> float:
        r_a = a.scale / a.std
        r_b = b.scale / b.std
        sde, x0 = self.sde, self.x0
        r = self._quantile(r_a, r_b)
        t = sde.time_at_lam(torch.log(r)).to(torch.float64)
        alpha, sigma = (v.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1))) for v in sde.marginal(t))
        x_r = alpha * x0 + sigma * self.z
        # the forward transition from x_r up to the noisier node a: x_a = (α_a/α_r) x_r + √(σ_a² - (α_a σ_r/α_r)²) z'
        ratio = a.scale / alpha
        x_a = ratio * x_r + torch.sqrt((a.std**2 - (ratio * sigma) ** 2).clamp_min(0)) * self.z_a
        with torch.no_grad():
            d_r = predict(self.model, sde, x_r, t.to(x0.dtype)).x0
            d_a = predict(self.model, sde, x_a, torch.full_like(t, a.t).to(x0.dtype)).x0
        weight = (_g(r, self.c2) - _g(torch.tensor(r_a, dtype=torch.float64), self.c2)).to(x0.dtype)
        value = (d_r - d_a).flatten(1).pow(2).sum(1) / weight
        total = float(proposal_cdf(torch.tensor(r_b, dtype=torch.float64), r_a, self.c2))
        return total * float(value.mean())

    def grid_value(self, grid: TimeGrid) -> list[float]:
        """``K`` of each step between the grid's noisy nodes."""
        return [self(a, b) for a, b in zip(grid.noisy[:-1], grid.noisy[1:])]


def ays(klub: KLUB, positions: Positions, steps: int, *, start: str | None, sweeps: int, tol: float,
        xatol: float = 1e-3) -> tuple[TimeGrid, dict]:
    """The AYS search (module docstring) and its record."""
    sde, eps = positions.sde, positions.eps
    starts = (start,) if start is not None else FIXED_SPACINGS
    initial = {name: sum(klub.grid_value(time_grid(sde, steps, name, eps))) for name in starts}
    best = min(initial, key=initial.get)
    u = positions.of_grid(time_grid(sde, steps, best, eps))
    u[0], u[-1] = 0.0, 1.0
    nodes = list(positions.grid(u).noisy)
    parts = [klub(a, b) for a, b in zip(nodes[:-1], nodes[1:])]
    history = [sum(parts)]
    for _ in range(sweeps if steps > 2 else 0):
        before = sum(parts)
        for k in range(1, steps - 1):
            lo, hi = u[k - 1], u[k + 1]
            margin = 0.02 * (hi - lo)

            def local(v, k=k):
                node = positions.grid([u[k - 1], v, u[k + 1]]).noisy[1]
                return klub(nodes[k - 1], node) + klub(node, nodes[k + 1])

            res = minimize_scalar(local, bounds=(lo + margin, hi - margin), method="bounded",
                                  options={"xatol": xatol})
            current = parts[k - 1] + parts[k]
            if res.fun < current:
                u[k] = float(res.x)
                nodes[k] = positions.grid([u[k - 1], u[k], u[k + 1]]).noisy[1]
                parts[k - 1], parts[k] = klub(nodes[k - 1], nodes[k]), klub(nodes[k], nodes[k + 1])
        history.append(sum(parts))
        if before - history[-1] <= tol * before:
            break
    return positions.grid(u), {"start": best, "initial_klub": initial, "objective": sum(parts), "klub_history": history,
                  "c2": klub.c2}
