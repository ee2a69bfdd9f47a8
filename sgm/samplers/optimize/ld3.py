"""``optimizer="ld3"``: Learning to Discretize Denoising Diffusion ODEs (Tong, Hoang, Liu, Van den Broeck &
Niepert, ICLR 2025; code ``vinhsuhi/LD3``): the grid learned by gradient descent on the soft teacher loss.

Parameters ``ξ``: the grid's positions are ``u = cumsum(softmax(ξ))`` between ``u = 0`` (the top, or with a free first
node ``u_0 = softmax(ξ)_0 > 0``) and ``u = 1`` (``eps``, or with a free last node ``u_{steps-1} = 1 - softmax(ξ)_{-1}
< 1``: the last weight is the gap to ``eps``), monotone by construction (LD3's λ mode). ``ξ`` starts at the best
fixed spacing on the calibration draws (``init="best"``, among ``common.start_spacings``, measured better than LD3's
uniform start ``ξ = const``, ``init="uniform"``: the uniform grid in ``u``, i.e. in λ on VP and VE). With the
student ``Ψ_ξ`` (the sampler on that grid) and the teacher ``Φ`` (dopri5, the reference), the **soft teacher loss**
of a draw ``x_T = s z`` (``s`` the prior std) is

    ℓ(ξ; z) = min_{‖z' - z‖ ≤ r} ‖Ψ_ξ(s z') - Φ(s z)‖,    L(ξ) = mean over the training draws,

the student may start anywhere in a ball of radius ``r = 0.001·d/steps²`` around the teacher's latent (LD3's
``prior_bound``; ``d`` the sample's size), which spends the small capacity of a few-step grid on what it can match.
Training (LD3's first phase): half the calibration draws train, half validate; for ``rounds = 2`` passes over the
training draws in mini-batches of 2, each step (i) moves the batch's latents ``z'`` by one SGD step of rate
``12/steps`` on ``ℓ``, projected onto the ball and kept only where it lowers ``ℓ``; (ii) moves ``ξ`` by RMSprop
(rate 0.005, momentum 0.9, gradient norm clipped to 1); (iii) evaluates the validation loss, keeping the best ``ξ``;
after 5 steps without improvement it returns to the best ``ξ`` and decays the rate ×0.8 (to at least 5e-5). A pass
over the validation draws moves their latents likewise. The result is the best ``ξ`` on validation.

Gradients: ``∂ℓ/∂z'`` by autograd through the sampler (``solver.run_differentiable``: ``integrate``'s loop with the
graph kept, while sampling itself stays under ``no_grad``); ``∂L/∂ξ`` by central
differences of the same runs (``2·dim ξ`` runs of the mini-batch), because a grid's nodes are Python floats that the
solvers' step coefficients are computed from, outside autograd. LD3's second phase (a second, decoupled set of
model-input times) needs solvers that evaluate the model off the grid and is not implemented. Cost: per step
``2·dim ξ + 3`` runs of the mini-batch (one of them differentiated) and one run of the validation draws.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..base import SamplerDiverged
from ..grid import TimeGrid
from ..solver import Solver, integrate, run_differentiable
from .common import Positions

__all__ = ["ld3", "soft_teacher_loss", "LD3_DEFAULTS", "positions_of"]

LD3_DEFAULTS = {"init": "best", "rounds": 2, "batch": 2, "lr": 0.005, "momentum": 0.9, "clip": 1.0, "radius": None,
                "shift_lr": None, "patience": 5, "lr_decay": 0.8, "min_lr": 5e-5, "fd_step": None, "validation": 0.5}

def positions_of(xi: Tensor, free_start: bool, free_end: bool = False) -> list[float]:
    """``u = cumsum(softmax(ξ))`` with ``u_0 = 0`` (``ξ`` has ``steps - 1`` entries) or, with a free first node,
    ``u_0 = softmax(ξ)_0`` (one entry more); the last position is 1, or with a free last node ``1 - softmax(ξ)_{-1}``
    (one entry more, the gap to ``eps``)."""
    w = torch.softmax(xi.detach().to(torch.float64), 0)
    u = torch.cumsum(w, 0)
    u = u if free_start else torch.cat([u.new_zeros(1), u])
    if free_end:
        return u[:-1].tolist()
    u[-1] = 1.0
    return u.tolist()


def _xi_of(u: list[float], free_start: bool, free_end: bool) -> Tensor:
    """The ``ξ`` whose positions are ``u`` (``log`` of the increments)."""
    inc = torch.diff(torch.tensor(([0.0] if free_start else []) + list(u) + ([1.0] if free_end else []),
                                  dtype=torch.float64))
    return torch.log(inc.clamp_min(1e-12))


def soft_teacher_loss(method: Solver, model, sde, grid: TimeGrid, z: Tensor, target: Tensor, prior_std: float,
                      graph: bool = False) -> Tensor:
    """Per draw ``‖Ψ(s z') - Φ(s z)‖`` for the student latents ``z`` (``target`` = the teacher's ``Φ``), kept in the
    autograd graph with ``graph``; ``inf`` where the sampler diverges."""
    x = prior_std * z
    try:
        out = (run_differentiable if graph else integrate)(method, model, sde, x, grid).x
    except SamplerDiverged:
        return torch.full((z.shape[0],), math.inf, dtype=z.dtype, device=z.device)
    return (out - target).flatten(1).norm(dim=1)


def ld3(method: Solver, model, sde, steps: int, x_T: Tensor, reference: Tensor, positions: Positions, *,
        free_start: bool, free_end: bool, init: list[float], generator: torch.Generator | None, bar=None,
        rounds: int = 2, batch: int = 2, lr: float = 0.005, momentum: float = 0.9, clip: float = 1.0,
        radius: float | None = None, shift_lr: float | None = None, patience: int = 5, lr_decay: float = 0.8,
        min_lr: float = 5e-5, fd_step: float | None = None, validation: float = 0.5) -> tuple[TimeGrid, dict]:
    """The LD3 grid of ``steps`` noisy nodes from the positions ``init`` (module docstring) and its record."""
    n, d = x_T.shape[0], x_T[0].numel()
    n_valid = min(n - 1, max(1, round(validation * n)))
    train, valid = torch.arange(n - n_valid), torch.arange(n - n_valid, n)
    prior_std = float(sde.prior_std)
    radius = 0.001 * d / steps**2 if radius is None else radius
    shift_lr = 12.0 / steps if shift_lr is None else shift_lr
    fd_step = (1e-4 if x_T.dtype == torch.float64 else 1e-3) if fd_step is None else fd_step
    z0 = x_T / prior_std
    z = z0.clone()
    xi = torch.nn.Parameter(_xi_of(init, free_start, free_end))
    optimizer = torch.optim.RMSprop([xi], lr=lr, momentum=momentum)

    def grid_of(v: Tensor) -> TimeGrid:
        return positions.grid(positions_of(v, free_start, free_end))

    def loss(v: Tensor, idx: Tensor, latents: Tensor, graph: bool = False) -> Tensor:
        return soft_teacher_loss(method, model, sde, grid_of(v), latents, reference[idx], prior_std, graph)

    @torch.enable_grad()  # the latents' gradient, also when the caller samples under no_grad
    def latent_step(idx: Tensor, v: Tensor) -> Tensor:
        """One SGD step on the latents of ``idx`` (projected onto the ball); returns the losses before it."""
        zb = z[idx].clone().requires_grad_(True)
        values = loss(v, idx, zb, graph=True)
        finite = torch.isfinite(values)
        if bool(finite.any()):
            values[finite].sum().backward()
        step = zb.grad if zb.grad is not None else torch.zeros_like(zb)
        moved = zb.detach() - shift_lr * step
        offset = (moved - z0[idx]).flatten(1)
        norm = offset.norm(dim=1, keepdim=True)
        scale = torch.where(norm > radius, radius / norm.clamp_min(1e-300), torch.ones_like(norm))
        proposals[idx] = z0[idx] + (offset * scale).reshape(moved.shape)
        return values.detach()

    def accept(idx: Tensor, before: Tensor, v: Tensor) -> None:
        after = loss(v, idx, proposals[idx])
        better = after < before
        z[idx[better]] = proposals[idx[better]]

    proposals = z.clone()
    best_loss, best_xi = float(loss(xi, valid, z[valid]).mean()), xi.detach().clone()
    worse, iterations, rate = 0, 0, lr
    history = [best_loss]
    for round_ in range(rounds):
        if round_ > 0:
            xi.data.copy_(best_xi)
            worse = 0
        order = train[torch.randperm(train.numel(), generator=generator)]
        for idx in order.split(batch):
            before = latent_step(idx, xi)
            # ∂L/∂ξ by central differences of the mini-batch's loss with its current latents
            grad = torch.zeros_like(xi.data)
            for k in range(xi.numel()):
                e = torch.zeros_like(xi.data)
                e[k] = fd_step
                up, down = loss(xi.data + e, idx, z[idx]).mean(), loss(xi.data - e, idx, z[idx]).mean()
                grad[k] = (up - down) / (2 * fd_step) if math.isfinite(up) and math.isfinite(down) else 0.0
            norm = float(grad.norm())
            xi.grad = grad * (clip / norm) if norm > clip else grad
            optimizer.step()
            optimizer.zero_grad()
            iterations += 1
            current = float(loss(xi, valid, z[valid]).mean())
            history.append(current)
            if current < best_loss:
                best_loss, best_xi, worse = current, xi.detach().clone(), 0
            else:
                worse += 1
                if worse >= patience:
                    xi.data.copy_(best_xi)
                    worse = 0
                    rate = max(rate * lr_decay, min_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = rate
            accept(idx, before, xi.detach())
            if bar is not None:
                bar.update()
        if radius > 0:  # the validation draws' latents move too (LD3 moves every latent, training or not)
            for idx in valid.split(batch):
                accept(idx, latent_step(idx, best_xi), best_xi)
            best_loss = min(best_loss, float(loss(best_xi, valid, z[valid]).mean()))
            history.append(best_loss)
    moved = (z - z0).flatten(1).norm(dim=1)
    return grid_of(best_xi), {"objective": best_loss, "train": int(train.numel()), "valid": int(n_valid),
                              "iterations": iterations, "radius": radius, "shift_lr": shift_lr, "lr": lr,
                              "final_lr": rate, "rounds": rounds, "batch": batch, "fd_step": fd_step,
                              "validation_history": history, "latents_moved": float((moved > 0).float().mean())}
