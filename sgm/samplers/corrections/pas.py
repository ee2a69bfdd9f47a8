"""PAS, PCA-based adaptive search (Wang et al., ICML 2025): a few learned coordinates correct a solver's sampling
directions in a PCA basis of the trajectory so far.

Write every step of a base solver in the noise level ``σ = std/α`` on ``y = x/α`` (EDM's coordinates, where every path
is the VE process): the step ``a → b`` is ``y_b = y_a + (σ_b - σ_a)·d`` with the direction ``d`` it takes (Euler's
``ε̂`` for DDIM, the multistep combination for iPNDM, …; the step into the data node is ``y_0 = y - σ ε̂``). At step
``i`` the basis is, per sample,

    u_1 = d/‖d‖,   u_2 … u_k = the top k-1 principal directions of the centred rows {y_T, d_0, …, d_{i-1}, d}
                    (``use_xT``; without it, of {d_0, …, d}), Gram–Schmidt orthonormalised against u_1 and each other,
                    each flipped so that ⟨y_i - y_T, u_j⟩ > 0,

and a corrected step replaces ``d`` by ``d̃ = Σ_j c_j u_j`` with ``k`` coordinates ``c`` shared by all samples — about
10 numbers for a whole sampler. (PAS takes ``torch.pca_lowrank``'s randomized estimate of the principal directions; the
rows are few, so the exact SVD of the same centred matrix is taken here.) A basis vector that vanishes (a principal
direction inside the span of the earlier ones, as with AFS's first direction ``d_0 ∥ y_T``) is set to zero.

**Calibration** (PAS's adaptive search), step by step along the corrected trajectory of ``n`` prior draws:

    c_i = argmin_c  mean |y_i + (σ_{i+1} - σ_i) Σ_j c_j u_j - Y_{i+1}|    (L1 over the elements; ``loss="l2"``: squares)

against the teacher's ``Y_{i+1}`` (the exact flow state at node ``i+1``, in ``y``), by Adam (``lr`` 0.01) from
``c = (mean ‖d‖, 0, …, 0)`` (the uncorrected step, up to the spread of ‖d‖) for at most ``epochs`` (1000) full-batch
steps, stopping when ``early_stop`` (10) successive losses change by at most 1e-5. The step is kept corrected only if
its loss falls below the uncorrected step's by more than ``tau_first`` (first corrected step) or ``tau`` (later ones;
both 1e-4, PAS's launch settings) — the "S-shaped" cumulative error makes a few middle steps carry the gain. The
trajectory then continues from the corrected (or uncorrected) state; the base solver's history keeps the model outputs
evaluated along it, as in PAS. A step with fewer than ``k`` rows (too early for ``k - 1`` principal directions) is not
searched. ``k = min(components, dim)``.

``guard`` (sgm's addition, on by default): a step is kept only if, besides, the final map error of the calibration
draws with the rest of the run uncorrected falls — ``mean ‖x_0(c_i) - Φ‖ < mean ‖x_0(d) - Φ‖`` — so the kept steps lower
the calibration error monotonically. Multistep solvers' errors partly cancel later in a run: fitting a middle step to
the teacher alone broke that (iPNDM at 10 NFE on the 16-D mixture: held-out 0.30 uncorrected, 0.93 with PAS as
published, 0.24 guarded; benchmarks/corrections.py).

Cost: the teacher (a few hundred evaluations of the batch), one run of the base solver (its own evaluations) and, with
the guard, two runs of the rest of the grid per searched step; the search itself evaluates nothing. From an ``α = 0``
node (rectified flow's top) ``y`` is undefined: that step is left uncorrected and the state at the next node stands in
for ``y_T``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...checks import choice, integer, real
from ..grid import TimeGrid
from ..registry import solver as make_solver
from ..solver import integrate
from ..optimize import map_error
from .base import (Correction, Corrected, finish_record, flat, moments_from, moments_params,
                   register_method, rest_of_run, setup)

__all__ = ["PAS", "PASCalibration", "pas", "pas_basis", "LOSSES"]

LOSSES = ("l1", "l2")
EARLY_STOP_TOL = 1e-5  # PAS's early stopping: ``early_stop`` successive losses within this of each other


def pas_basis(rows: Tensor, d: Tensor, y: Tensor, y_ref: Tensor, k: int) -> Tensor:
    """PAS's basis ``(n, k, D)``: ``u_1 = d/‖d‖`` and the top ``k - 1`` principal directions of the centred ``rows``
    ``(n, m, D)`` (which include ``d``), Gram–Schmidt orthonormalised and flipped so that ``⟨y - y_ref, u_j⟩ > 0``
    (see the module docstring); vanishing vectors are zero."""
    u1 = d / d.norm(dim=1, keepdim=True)
    basis = [u1]
    if k > 1:
        centred = rows - rows.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        flip = y - y_ref
        for j in range(k - 1):
            v = vh[:, j]
            u = v.clone()
            for w in basis:
                u = u - (w * v).sum(1, keepdim=True) * w
            norm = u.norm(dim=1, keepdim=True)
            u = torch.where(norm > 1e-8 * v.norm(dim=1, keepdim=True), u / norm.clamp_min(1e-300), torch.zeros_like(u))
            u = torch.where((flip * u).sum(1, keepdim=True) > 0, u, -u)
            basis.append(u)
    return torch.stack(basis, dim=1)


class PAS(Corrected):
    """The base solver with PAS's corrected directions ``d̃ = Σ_j c_j u_j`` at the steps in ``coordinates``
    (``{step index: [c_1 … c_k]}``; the step into the data node has index ``len(grid.noisy) - 1``)."""

    method = "pas"

    def __init__(self, base, coordinates: dict, components: int, use_xT: bool = True, afs: bool = False,
                 moments=None):
        super().__init__(base, afs, moments)
        self.coordinates = {int(i): [float(v) for v in c] for i, c in coordinates.items()}
        self.components, self.use_xT = components, use_xT

    def init(self, x, grid: TimeGrid):
        first = grid.noisy[0]
        ref = flat(x) / first.scale if first.scale > 0 else None
        return (super().init(x, grid), 0, (ref,) if self.use_xT and ref is not None else (), ref)

    def rank(self, dim: int) -> int:
        return min(self.components, dim)

    def basis(self, history: tuple, d: Tensor, y: Tensor, ref: Tensor) -> Tensor:
        return pas_basis(torch.stack(history + (d,), dim=1), d, y, ref, self.rank(d.shape[1]))

    def choose(self, model, i: int, history: tuple, d: Tensor, y: Tensor, ref: Tensor, h: float, node, inner):
        """The direction of step ``i`` (into ``node``, from the state ``y``): corrected when it has coordinates."""
        c = self.coordinates.get(i)
        if c is None:
            return d
        coordinates = torch.tensor(c, dtype=d.dtype, device=d.device)
        return torch.einsum("nkd,k->nd", self.basis(history, d, y, ref), coordinates)

    def step(self, model, x, a, b, state, noise):
        inner, i, history, ref = state
        out, inner = self.base_step(model, x, a, b, inner, noise, first=i == 0)
        if a.scale == 0:  # from pure noise: y is undefined there; the next state stands in for y_T
            ref = flat(out) / b.scale
            return out, (inner, i + 1, (ref,) if self.use_xT else (), ref)
        y, h = flat(x) / a.scale, b.noise_level - a.noise_level
        d = (flat(out) / b.scale - y) / h
        corrected = self.choose(model, i, history, d, y, ref, h, b, inner)
        if corrected is not d:
            out = (b.scale * (y + h * corrected)).reshape(x.shape)
        return out, (inner, i + 1, history + (corrected,), ref)

    def denoise(self, model, x, node, state):
        inner, i, history, ref = state
        if node.scale == 0 or ref is None:
            return self.base.denoise(model, x, node, inner)
        y, h = flat(x) / node.scale, -node.noise_level
        prediction = model(x, node)
        d = flat(prediction.eps)
        corrected = self.choose(model, i, history, d, y, ref, h, None, inner)
        return prediction.x0 if corrected is d else (y + h * corrected).reshape(x.shape)

    def __repr__(self) -> str:
        return (f"PAS({self.base!r}, coordinates={self.coordinates}, components={self.components}, "
                f"use_xT={self.use_xT}, afs={self.afs})")


class PASCalibration(PAS):
    """PAS's adaptive search: the ``PAS`` solver that, at each step, searches the coordinates against the teacher's
    ``targets`` (``y`` at each noisy node, ``x_0`` last) and keeps them when they lower the loss by more than the
    tolerance and, with ``guard``, the calibration draws' final map error too (the rest of the run uncorrected). It
    records what it learned on itself (``coordinates``, ``losses``); one calibration run per object."""

    def __init__(self, base, grid: TimeGrid, targets: list, components: int, use_xT: bool, afs: bool, moments,
                 tau_first: float, tau: float, lr: float, epochs: int, early_stop: int, loss: str, guard: bool):
        super().__init__(base, {}, components, use_xT, afs, moments)
        self.grid, self.targets, self.tau_first, self.tau = grid, targets, tau_first, tau
        self.lr, self.epochs, self.early_stop, self.loss, self.guard = lr, epochs, early_stop, loss, guard
        self.losses = {}  # step -> {"before", "after", "epochs", "kept"} (+ "final_before", "final_after" with guard)

    def criterion(self, y_next: Tensor, target: Tensor) -> Tensor:
        diff = y_next - target
        return diff.abs().mean() if self.loss == "l1" else diff.pow(2).mean()

    def search(self, basis: Tensor, d: Tensor, y: Tensor, h: float, target: Tensor) -> tuple[Tensor, int]:
        """Adam (β = 0.9, 0.999; ε = 1e-8; torch.optim.Adam's update, written out: the loss is convex in ``c`` and its
        gradient closed-form) from ``(mean ‖d‖, 0, …)``, with PAS's early stopping; returns ``c`` and the epochs."""
        c = torch.zeros(basis.shape[1], dtype=d.dtype, device=d.device)
        c[0] = d.norm(dim=1).mean()
        m, v = torch.zeros_like(c), torch.zeros_like(c)
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        losses = []
        directions = basis.transpose(0, 1).reshape(basis.shape[1], -1)  # (k, n·D): the residual is linear in c
        offset, size = (y - target).reshape(-1), y.numel()
        for epoch in range(1, self.epochs + 1):
            residual = offset + h * (c @ directions)
            if self.loss == "l1":
                losses.append(float(residual.abs().mean()))
                slope = residual.sign()
            else:
                losses.append(float(residual.pow(2).mean()))
                slope = 2 * residual
            grad = h * (directions @ slope) / size
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (v / (1 - beta2**epoch)).sqrt_().add_(adam_eps)
            c.addcdiv_(m, denominator, value=-self.lr / (1 - beta1**epoch))
            recent = losses[-self.early_stop:]
            if len(recent) == self.early_stop and all(abs(u - w) <= EARLY_STOP_TOL for u, w in zip(recent, recent[1:])):
                break
        return c, len(losses)

    def choose(self, model, i, history, d, y, ref, h, node, inner):
        if len(history) + 1 < self.rank(d.shape[1]):  # too few rows for k - 1 principal directions: not searched
            return d
        target = self.targets[i + 1]
        basis = self.basis(history, d, y, ref)
        c, epochs = self.search(basis, d, y, h, target)
        corrected = torch.einsum("nkd,k->nd", basis, c)
        before, after = float(self.criterion(y + h * d, target)), float(self.criterion(y + h * corrected, target))
        record = {"before": before, "after": after, "epochs": epochs}
        kept = before - after > (self.tau_first if not self.coordinates else self.tau)
        if kept and self.guard:
            if node is None:  # the step into the data node: its output is the final one
                finals = [map_error(y + h * v, flat(self.targets[-1])) for v in (d, corrected)]
            else:
                finals = [map_error(flat(rest_of_run(self.base, model, (node.scale * (y + h * v)).reshape(
                    (-1, *self.shape)), inner, self.grid, i + 1)), flat(self.targets[-1])) for v in (d, corrected)]
            record.update(final_before=finals[0], final_after=finals[1])
            kept = finals[1] < finals[0]
        record["kept"] = kept
        self.losses[i] = record
        if not kept:
            return d
        self.coordinates[i] = c.tolist()
        return corrected

    def init(self, x, grid):
        self.shape = tuple(x.shape[1:])
        return super().init(x, grid)


def pas(score, sde, sampler: str = "ddim", *, grid: TimeGrid | None = None, nfe: int | None = None,
        spacing: str | None = None, shape, generator: torch.Generator | None = None,
        components: int = 4, use_xT: bool = True, afs=False, tau_first: float = 1e-4, tau: float = 1e-4,
        lr: float = 0.01, epochs: int = 1000, early_stop: int = 10, loss: str = "l1", guard: bool = True,
        reference_tol: float = 1e-8,
        dtype: torch.dtype = torch.float64, device=None, **options) -> Correction:
    """Calibrate PAS for the deterministic ``sampler`` (with ``options``) on ``grid`` (any ``TimeGrid``: a fixed
    spacing, ``optimize_grid``'s) or on the budget ``nfe`` (the sampler's default ``spacing`` unless given), with the
    prior draws of the batch ``shape = (n, *dims)`` from ``generator`` (see the module docstring: ``components`` = PAS's
    ``PCA_num``, ``use_xT``, the tolerances ``tau_first`` and ``tau``, Adam's ``lr``, ``epochs``, ``early_stop``,
    ``loss``, ``guard``; ``afs``: the analytical first step, ``False``, ``True`` or ``"moments"``). Returns a
    ``Correction`` (``method="pas"``)."""
    components = integer("components", components, 1)
    if not isinstance(use_xT, bool):
        raise TypeError(f"use_xT must be a bool, got {use_xT!r}")
    tau_first, tau = real("tau_first", tau_first, 0.0), real("tau", tau, 0.0)
    lr = real("lr", lr, 0.0, open_low=True)
    epochs, early_stop = integer("epochs", epochs, 1), integer("early_stop", early_stop, 2)
    loss = choice("loss", loss, LOSSES)
    s = setup(score, sde, sampler, options, grid=grid, nfe=nfe, spacing=spacing, shape=shape,
              generator=generator, afs=afs, reference_tol=reference_tol, dtype=dtype, device=device)
    targets = [flat(x) / node.scale if node.scale > 0 else None for x, node in zip(s.teacher.states, s.grid.noisy)]
    targets.append(flat(s.teacher.x0))
    if not isinstance(guard, bool):
        raise TypeError(f"guard must be a bool, got {guard!r}")
    learner = PASCalibration(s.method, s.grid, targets, components, use_xT, bool(afs), s.moments, tau_first, tau, lr,
                             epochs, early_stop, loss, guard)
    spent = integrate(learner, score, sde, s.x_T, s.grid).nfe
    info = finish_record(s.record, spent)
    info.update(method="PAS (PCA-based adaptive search; Wang et al. 2025)", corrected=sorted(learner.coordinates),
                losses={str(i): v for i, v in learner.losses.items()},
                parameters=sum(map(len, learner.coordinates.values())))
    params = {"coordinates": {str(i): c for i, c in learner.coordinates.items()}, "components": components,
              "use_xT": use_xT, **moments_params(s.moments)}
    return Correction("pas", sampler, options, params, s.grid, bool(afs), repr(sde),
                      s.model, info)


def build(correction: Correction) -> PAS:
    p = correction.params
    return PAS(make_solver(correction.sampler, **correction.options), p["coordinates"], int(p["components"]),
               bool(p["use_xT"]), correction.afs, moments_from(p))


register_method("pas", build)
