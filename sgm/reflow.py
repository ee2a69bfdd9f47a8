"""Reflow (2-rectified flow; Liu, Gong & Liu, 2022): straighten a trained flow by training a second one on its own
couplings.

A trained model on a path with prior ``N(0, s²I)`` (``s = prior_std``) defines the deterministic map
``Φ: x_T ↦ x_0`` of its probability-flow ODE. With ``z ~ N(0, I)`` the pairs ``(z, x_0 = Φ(s·z))`` couple the
noise and (the model's) data; a rectified-flow model ``u_θ`` is then trained with the velocity loss on the straight
interpolation between the paired ends,

    x_t = (1 - t)·x_0 + t·z,        L(θ) = E_t E_(z, x_0) ‖u_θ(x_t, t) - (z - x_0)‖²,

(``sgm.losses.denoising_loss`` with the given noise, ``prediction="velocity"``, ``weighting="native"``; a shifted
rectified flow has ``x_t = (1 - τ)x_0 + τz`` and the target ``τ'(t)(z - x_0)``). Its flow has the new model's
marginals and lines that cross less, so few Euler steps follow it better. The measure of that is the straightness
of a flow ``x_t`` on ``[0, T]``,

    S = (1/T) ∫_0^T E ‖(x_T - x_0)/T - ẋ_t‖² dt,

zero exactly when every trajectory is a straight line run at constant speed (Liu et al.'s ``S(Z)`` at ``T = 1``).

``pairs`` generates the coupling, ``prepare`` makes the trainer on it (``sgm.train.Trainer`` with the noise fixed per
datum; the pairs are kept in ``OUT_DIR/pairs.pt`` so that the run resumes) and ``reflow`` fits it; ``sgm reflow
TEACHER`` does the same from a checkpoint; ``straightness`` measures ``S``.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from .checkpoint import write_atomic
from .checks import integer, positive, real
from .config import TrainConfig
from .paths import GaussianPath
from .predictions import predict
from .samplers import sample
from .samplers.optimize import flow_map

__all__ = ["pairs", "straightness", "prepare", "reflow", "PAIRS"]

PAIRS = "pairs.pt"


def _check(model, path: GaussianPath, noise: Tensor) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    if not isinstance(path, GaussianPath):
        raise TypeError(f"path must be an sgm path (GaussianPath), got {type(path).__name__}")
    if not isinstance(noise, Tensor) or not noise.is_floating_point() or noise.dim() < 2 or not len(noise):
        raise TypeError(f"noise must be a floating tensor (n, ...) of standard normal draws, got "
                        f"{type(noise).__name__} {tuple(getattr(noise, 'shape', ()))}")


@torch.no_grad()
def pairs(model, path: GaussianPath, noise: Tensor, tol: float = 1e-7, batch: int = 1024) -> Tensor:
    """``x_0 = Φ(prior_std·noise)``: the model's probability-flow map (dopri5 at ``rtol = atol = tol``, to the path's
    ``default_eps`` and Tweedie's step; ``sgm.samplers.optimize.flow_map``) of each standard normal ``noise``,
    solved ``batch`` samples at a time (each chunk with its own steps)."""
    _check(model, path, noise)
    tol = real("tol", tol, 0.0, 1.0, open_low=True)
    return torch.cat([flow_map(model, path, path.prior_std * chunk, tol=tol)[0]
                      for chunk in noise.split(integer("batch", batch))])


@torch.no_grad()
def straightness(model, path: GaussianPath, noise: Tensor, steps: int = 64, eps: float = 1e-4) -> float:
    """``S`` (module docstring) of the model's flow from ``x_T = prior_std·noise``: the ODE by RK4 on ``steps``
    uniform steps from ``T`` to ``eps``, ``x_0`` its Tweedie step, ``ẋ_t`` the model's velocity at every node,
    the time integral by the trapezoidal rule on ``[eps, T]`` (the part on ``[0, eps]`` is left out)."""
    _check(model, path, noise)
    steps = integer("steps", steps, low=2)
    states: list[tuple[float, Tensor]] = [(path.T, path.prior_std * noise)]
    out = sample(model, path, tuple(noise.shape), sampler="ode", method="rk4", steps=steps + 1, spacing="uniform",
                 eps=positive("eps", eps), x_init=states[0][1], dtype=noise.dtype, device=noise.device,
                 callback=lambda x, node, _: states.append((node.t, x)) if node.t > 0 else None)
    rate = (states[0][1] - out.x) / path.T
    ts = torch.tensor([t for t, _ in states], dtype=torch.float64)
    gaps = torch.stack([(rate - predict(model, path, x, torch.full((len(x),), t, dtype=x.dtype, device=x.device))
                         .velocity).flatten(1).pow(2).sum(1).mean().double().cpu() for t, x in states])
    return float(torch.trapezoid(gaps.flip(0), ts.flip(0))) / path.T


def prepare(model, path: GaussianPath, config: TrainConfig, noise: Tensor, tol: float = 1e-7):
    """The ``Trainer`` of ``config``'s rectified-flow model on the pairs ``(z, Φ(prior_std·z))`` of ``model`` on
    ``path``, one per standard normal ``z`` in ``noise`` ``(n, ...)`` (on the model's device), not yet fitted. The
    pairs are saved in ``OUT_DIR/pairs.pt`` and reused by a rerun with the same ``noise`` (a resumed run); other
    noise there is refused."""
    from .train import Trainer

    _check(model, path, noise)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.sde != "rectified-flow":
        raise ValueError(f"config.sde must be 'rectified-flow' (reflow trains on the straight interpolation), got "
                         f"{config.sde!r}")
    file = os.path.join(config.out_dir, PAIRS)
    kept = noise.detach().cpu()
    if os.path.exists(file):
        saved = torch.load(file, weights_only=True)
        if not torch.equal(saved["noise"], kept):
            raise ValueError(f"{file} holds the pairs of other noise; pass the same noise or use another out_dir")
        x0 = saved["x0"]
    else:
        x0 = pairs(model, path, noise, tol).cpu()
        write_atomic(file, lambda f: torch.save({"noise": kept, "x0": x0, "teacher": repr(path), "tol": tol}, f))
    return Trainer(config, data=x0, noise=kept)


def reflow(model, path: GaussianPath, config: TrainConfig, noise: Tensor, tol: float = 1e-7):
    """``prepare``'s trainer fitted to ``config.steps`` (resuming its checkpoint if there is one); returns it."""
    trainer = prepare(model, path, config, noise, tol)
    trainer.fit()
    return trainer
