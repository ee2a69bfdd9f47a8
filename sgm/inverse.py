"""Linear inverse problems ``y = A x_0 + σ_y n`` (inpainting, colourisation, denoising, super-resolution):
sampling ``p(x_0 | y)`` with an unconditional score.

``A`` acts on flattened samples: an ``(m, D)`` matrix with ``D = prod(event_shape)``. The operators below
build the usual ones; ``LinearObservation`` holds ``A``, ``y`` and ``σ_y``.

Two ways to condition a sampler:

- ``replacement`` (Song et al., 2021, inpainting and colourisation): a per-step callback that, after each
  step into a node with marginal ``(scale, std)``, replaces the observed part of the state by the
  forward-noised observation,

      x ← x + A⁺ (y_t - A x),   y_t = scale·y + std·A z,   z ~ N(0, I)

  (for a mask ``A⁺ = Aᵀ``: the known pixels are overwritten). It runs with any predictor and corrector but
  does not sample the posterior: the unobserved part is never told about ``y`` except through the
  replaced coordinates, and ``σ_y`` is ignored (``y`` is taken as exact).
- ``posterior_score`` (ΠGDM, Song et al., 2023; DPS, Chung et al., 2023): a score correction

      s(x, t | y) = s(x, t) + ∇_x log N(y; A x̂_0(x), r_t² A Aᵀ + σ_y² I),   x̂_0 = E[x_0 | x_t = x],

  with the gradient taken through the model's ``x̂_0`` by autograd (one vector–Jacobian product per
  evaluation); for a model of another kind the correction moves its output by ``b·∇_x log N(…)``
  (``sgm.predictions.score_coefficient``), so the guided model keeps the kind. ``r_t² = σ² v/(σ² + v)``,
  ``σ = std/scale``, is the posterior variance of ``x_0 | x_t`` for a ``N(·, v I)`` prior (``data_var = v``; ΠGDM's
  ``r_t² = σ²/(1 + σ²)`` at ``v = 1``); DPS is ``r_t = 0``. It is an approximation of the exact posterior score
  ``∇ log p_t(x | y)`` (the likelihood ``p(y | x_t)`` is not Gaussian under a multimodal prior); docs/inverse.md reports
  the bias measured on exact posteriors.
- ``RePaint`` (Lugmayr et al., 2022): a solver wrapper that repeats each step with replacement and re-noising
  (``integrate(RePaint(solver, obs, resample), ...)``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import choice, integer, real
from .paths import SDE
from .predictions import predict, predicts, score_coefficient
from .samplers.solver import Solver

__all__ = ["LinearObservation", "inpainting", "colourisation", "super_resolution", "denoising", "replacement",
           "posterior_score", "PosteriorScore", "Replacement", "RePaint"]


def _event_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints (the event shape), got {shape!r}")
    return tuple(shape)


def inpainting(mask) -> Tensor:
    """The rows of the identity at the known entries of ``mask`` (a bool or 0/1 tensor shaped like one sample):
    ``A (m, D)`` with ``m`` the number of known entries."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or hold only 0 and 1")
        mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError("mask must mark at least one known entry")
    return torch.eye(mask.numel(), dtype=torch.float64)[mask.reshape(-1)]


def colourisation(shape) -> Tensor:
    """Grey level of a ``(C, H, W)`` image, the mean over channels: ``A (H·W, C·H·W)``."""
    c, h, w = _event_shape(shape) if len(shape) == 3 else (None, None, None)
    if c is None:
        raise ValueError(f"shape must be (channels, height, width), got {shape!r}")
    return torch.eye(h * w, dtype=torch.float64).repeat(1, c) / c


def super_resolution(shape, factor: int) -> Tensor:
    """Average pooling by ``factor`` of a ``(C, H, W)`` image: ``A (C·H/f·W/f, C·H·W)``."""
    if len(shape) != 3:
        raise ValueError(f"shape must be (channels, height, width), got {shape!r}")
    c, h, w = _event_shape(shape)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or h % factor or w % factor:
        raise ValueError(f"factor must be a positive int dividing height {h} and width {w}, got {factor!r}")
    eye = torch.eye(c * h * w, dtype=torch.float64).reshape(c * h * w, c, h, w)
    return torch.nn.functional.avg_pool2d(eye, factor).reshape(c * h * w, -1).T.contiguous()


def denoising(shape) -> Tensor:
    """The identity on samples of ``shape``: ``y = x_0 + σ_y n``."""
    return torch.eye(math.prod(_event_shape(shape)), dtype=torch.float64)


class LinearObservation:
    """``y = A x_0 + σ_y n`` on samples of ``event_shape``: ``A (m, D)``, ``y`` of shape ``(m,)`` (one observation
    for the whole batch) or ``(batch, m)``, ``σ_y >= 0``."""

    def __init__(self, A, y, sigma_y: float = 0.0, event_shape=None):
        A = torch.as_tensor(A)
        if A.dim() != 2 or not A.is_floating_point():
            raise ValueError(f"A must be a floating (m, D) matrix, got shape {tuple(A.shape)} dtype {A.dtype}")
        if not bool(torch.isfinite(A).all()):
            raise ValueError("A must be finite")
        self.event_shape = (A.shape[1],) if event_shape is None else _event_shape(event_shape)
        if math.prod(self.event_shape) != A.shape[1]:
            raise ValueError(f"A has {A.shape[1]} columns but samples of event_shape {self.event_shape} have "
                             f"{math.prod(self.event_shape)} entries")
        y = torch.as_tensor(y, dtype=A.dtype)
        if y.dim() not in (1, 2) or y.shape[-1] != A.shape[0]:
            raise ValueError(f"y must have shape ({A.shape[0]},) or (batch, {A.shape[0]}) for A of shape "
                             f"{tuple(A.shape)}, got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y must be finite (an observation with NaN or inf would poison every step)")
        self.sigma_y = real("sigma_y", sigma_y, 0.0)
        self.A, self.y = A, y
        self.pinv = torch.linalg.pinv(A)

    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, but the observation acts on samples of shape "
                             f"{self.event_shape}")
        if self.y.dim() == 2 and self.y.shape[0] != x.shape[0]:
            raise ValueError(f"y holds {self.y.shape[0]} observations but x has batch {x.shape[0]}")
        return x.reshape(x.shape[0], -1)

    def project(self, x: Tensor, target: Tensor) -> Tensor:
        """``x + A⁺(target - A x)``: the nearest state whose observed part is ``target``."""
        flat = self._flat(x)
        A, pinv = self.A.to(x), self.pinv.to(x)
        return (flat + (target - flat @ A.T) @ pinv.T).reshape(x.shape)

    def log_likelihood_grad(self, x0: Tensor, var: float) -> Tensor:
        """``Aᵀ (var·A Aᵀ + σ_y² I)⁻¹ (y - A x0)`` per sample: ``∇_{x0} log N(y; A x0, var·A Aᵀ + σ_y² I)``."""
        flat = self._flat(x0)
        A = self.A.to(x0)
        cov = var * A @ A.T + self.sigma_y**2 * torch.eye(A.shape[0], dtype=x0.dtype, device=x0.device)
        resid = (self.y.to(x0) - flat @ A.T)
        return (torch.linalg.solve(cov, resid.T).T @ A).reshape(x0.shape)


class Replacement:
    """Song et al.'s replacement as a ``callback(x, node, prediction)`` for ``sgm.sample``/``integrate``; draws
    its ``z`` from ``generator`` (one ``randn`` shaped like the state per step)."""

    def __init__(self, observation: LinearObservation, generator: torch.Generator | None = None):
        if not isinstance(observation, LinearObservation):
            raise TypeError(f"observation must be a LinearObservation, got {type(observation).__name__}")
        self.observation, self.generator = observation, generator

    def __call__(self, x: Tensor, node, prediction) -> Tensor:
        obs = self.observation
        y = obs.y.to(x).expand(x.shape[0], -1)
        if node.std == 0:
            return obs.project(x, y)
        z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        y_t = node.scale * y + node.std * (obs._flat(z) @ obs.A.to(x).T)
        return obs.project(x, y_t)


class PosteriorScore:
    """``s(x, t) + ∇_x log N(y; A x̂_0, r_t² A Aᵀ + σ_y² I)`` (ΠGDM; DPS at ``method="dps"``), a score function."""

    METHODS = ("pigdm", "dps")

    def __init__(self, score, sde: SDE, observation: LinearObservation, method: str = "pigdm",
                 data_var: float = 1.0):
        if not callable(score):
            raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sgm SDE, got {type(sde).__name__}")
        if not isinstance(observation, LinearObservation):
            raise TypeError(f"observation must be a LinearObservation, got {type(observation).__name__}")
        choice("method", method, self.METHODS)
        if method == "dps" and observation.sigma_y == 0:
            raise ValueError("method='dps' needs sigma_y > 0 (its likelihood is N(y; A x̂_0, σ_y² I))")
        self.data_var = real("data_var", data_var)
        if self.data_var <= 0:
            raise ValueError(f"data_var must be > 0, got {self.data_var}")
        self.score, self.sde, self.observation, self.method = score, sde, observation, method
        self.predicts = predicts(score)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            p = predict(self.score, self.sde, xg, t)
            level = float((p.sigma / p.alpha).flatten()[0])  # one time per batch, as the samplers call it
            # r² = σ̃² v/(σ̃² + v), written to hold at σ̃ = ∞ (α = 0), where it is v
            r2 = 0.0 if self.method == "dps" else self.data_var / (1 + self.data_var / level**2)
            x0 = p.x0
            g = self.observation.log_likelihood_grad(x0.detach(), r2)
            (vjp,) = torch.autograd.grad(x0, xg, grad_outputs=g)
        b = score_coefficient(self.predicts, p.alpha, p.sigma, p.d_alpha, p.d_sigma)
        return p.value.detach() + b * vjp


def replacement(observation: LinearObservation, generator: torch.Generator | None = None) -> Replacement:
    """Song et al.'s replacement callback (see the module docstring)."""
    return Replacement(observation, generator)


def posterior_score(score, sde: SDE, observation: LinearObservation, method: str = "pigdm",
                    data_var: float = 1.0) -> PosteriorScore:
    """The ΠGDM / DPS posterior score function (see the module docstring)."""
    return PosteriorScore(score, sde, observation, method, data_var)


class RePaint(Solver):
    """RePaint's resampling (Lugmayr et al., 2022) around any fixed-step ``solver`` that steps on the grid's nodes:
    each transition ``a → b`` is made ``resample`` times from the same solver state (states are values, so a
    multistep solver's history is the one it had at ``a`` every time); after each, the observed part is replaced
    (``Replacement``), and all but the last are sent back to ``a`` by the forward transition ``x_a = r·x_b + √v·z``
    (``r = scale_a/scale_b``, ``v = std_a² - r² std_b²``), so that the unknown part is harmonised with the known one.
    ``evals_per_step = resample × solver.evals_per_step``. Noise: the solver's, then the re-noising ``z``. A solver
    that chooses its own steps or steps across the grid (adaptive ODE, torchsde) is refused by name."""

    def __init__(self, solver: Solver, observation: LinearObservation, resample: int = 10,
                 generator: torch.Generator | None = None):
        if not isinstance(solver, Solver) or solver.evals_per_step is None:
            raise TypeError(f"solver must be a fixed-step sgm Solver, got {solver!r}")
        self.solver, self.resample = solver, integer("resample", resample)
        self.replace = Replacement(observation, generator)
        self.name, self.stochastic, self.needs = f"repaint({solver.name})", True, solver.needs
        self.evals_per_step, self.final_evals = self.resample * solver.evals_per_step, solver.final_evals

    def nfe(self, steps: int, denoise: bool = True) -> int | None:
        """Every evaluation of the solver's steps ``resample`` times (a restart segment inside a step too), its
        ``finish`` and the final denoising once."""
        inner = self.solver.nfe(steps, denoise)
        if inner is None:
            return None
        once = self.solver.final_evals + int(denoise)
        return self.resample * (inner - once) + once

    def check(self, grid) -> None:
        if self.solver.stepping_grid(grid) != grid:
            raise ValueError(f"RePaint cannot wrap {self.solver.name}: it steps across the grid's nodes "
                             "(torchsde, adaptive ODE), so there is no transition a → b to resample")
        self.solver.check(grid)

    def init(self, x: Tensor, grid):
        return self.solver.init(x, grid)

    def step(self, model, x, a, b, state, noise):
        r, v = a.transition(b)[:2]
        v = max(v, 0.0)
        for k in range(self.resample):
            x_b, new_state = self.solver.step(model, x, a, b, state, noise)
            x_b = self.replace(x_b, b, None)
            if k < self.resample - 1:
                # a forward draw, not an increment of the reverse path: no interval (fresh under Brownian noise)
                x = x_b.mul(r).add_(noise(), alpha=math.sqrt(v))
        return x_b, new_state

    def finish(self, model, x, node, state, noise):
        return self.solver.finish(model, x, node, state, noise)
