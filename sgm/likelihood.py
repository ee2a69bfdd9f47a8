"""Log-likelihood through the probability-flow ODE (Song et al., 2021, app. D; Chen et al., 2018).

Along the ODE ``dx/dt = v(x, t) = α' x̂_0 + σ' ε̂ = f(t) x - ½ g(t)² s(x, t)`` (the model's velocity, from whatever
it predicts: ``sgm.predictions``) the instantaneous change of variables gives
``d log p_t(x_t)/dt = -∇·v(x_t, t)``, so, integrating the data point forward from ``eps`` to ``T``,

    log p_eps(x) = log p_T(x_T) + ∫_eps^T ∇·v(x_t, t) dt,

with ``p_T`` the SDE's prior (or any ``prior_logp``). The state ``(x_t, ∫∇·v)`` is integrated together by
torchdiffeq. The divergence is exact (one autograd pass per dimension: for low dimensions) or Hutchinson's
``∇·v ≈ εᵀ (∂v/∂x) ε`` with Rademacher or Gaussian probes ``ε`` (``E εεᵀ = I``), drawn once per sample from
``generator`` and held fixed along the path, averaged over ``n_probes``: an unbiased estimate of ``log p_eps``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torchdiffeq import odeint

from .bounds import Bound, GammaEstimate, continuous_elbo, elbo, estimate_gamma
from .predictions import predict, predicts
from .samplers.base import CheckedScore
from .samplers.probability_flow import ADAPTIVE_METHODS, FIXED_METHODS, odeint_landing
from .paths import SDE
from .checks import choice, integer, positive, real

__all__ = ["log_likelihood", "bits_per_dim", "Likelihood", "DIVERGENCES", "PROBES",
           "elbo", "continuous_elbo", "estimate_gamma", "GammaEstimate", "Bound"]  # the bounds: sgm.bounds

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class Likelihood(NamedTuple):
    logp: Tensor  # log p_eps(x) in nats, per sample
    prior_logp: Tensor  # log p_T(x_T), per sample
    nfe: int  # score evaluations


def _divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    flat_v = v.flatten(1)
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        div = div + grad.flatten(1)[:, i]
    return div


def _divergence_hutchinson(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Mean over probes of ``εᵀ (∂v/∂x) ε`` (``probes`` of shape ``(n_probes, *x.shape)``)."""
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for k, eps in enumerate(probes):
        (vjp,) = torch.autograd.grad(v, x, grad_outputs=eps, retain_graph=k < len(probes) - 1)
        total = total + (vjp * eps).flatten(1).sum(1)
    return total / len(probes)


def log_likelihood(score: Callable[[Tensor, Tensor], Tensor], sde: SDE, x: Tensor, *, eps: float = 1e-5,
                   method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int = 100,
                   divergence: str = "exact", probe: str = "rademacher", n_probes: int = 1,
                   generator: torch.Generator | None = None,
                   prior_logp: Callable[[Tensor], Tensor] | None = None, t_max: float | None = None) -> Likelihood:
    """``log p_eps(x)`` per sample of the model ``score`` (a score function or any model declaring what it
    ``predicts``; differentiable in ``x``), the ODE integrated from ``eps`` to ``t_max`` (``T``), where the prior
    (or ``prior_logp``) stands for ``p_{t_max}``; the solver never evaluates the model beyond ``t_max``.

    ``method`` is an adaptive torchdiffeq method under ``rtol``/``atol``, or a fixed-step one taking
    ``steps`` uniform steps from ``eps`` to ``t_max``. Where ``α(t_max) = 0`` (``T`` on rectified flow, whose prior
    is then exactly ``p_T``) the velocity needs ``x̂_0``, which a score or ε model does not give there: such a model
    is refused (``ValueError``) unless ``t_max < T``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"x must be a floating tensor of shape (batch, ...), got {type(x).__name__}")
    choice("divergence", divergence, DIVERGENCES)
    choice("probe", probe, PROBES)
    choice("method", method, ADAPTIVE_METHODS + FIXED_METHODS)
    n_probes = integer("n_probes", n_probes)
    steps = integer("steps", steps)
    rtol, atol, eps = positive("rtol", rtol), positive("atol", atol), positive("eps", eps)
    t_max = sde.T if t_max is None else real("t_max", t_max, 0.0, sde.T, open_low=True)
    if eps >= t_max:
        raise ValueError(f"eps must lie in (0, t_max={t_max}), got {eps}")
    kind = predicts(score)
    if kind in ("score", "eps") and float(sde.alpha(torch.tensor(t_max, dtype=torch.float64))) == 0:
        raise ValueError(f"a {kind} model gives no velocity at t_max={t_max}, where α = 0 on {sde!r} (x̂_0 is "
                         "undefined there): pass t_max < T (the prior then stands for p_t_max) or a model that "
                         "predicts x0, v or velocity")
    checked = score if isinstance(score, CheckedScore) else CheckedScore(score)
    probes = None
    if divergence == "hutchinson":
        shape = (n_probes,) + tuple(x.shape)
        device = "cpu" if generator is None else generator.device
        if probe == "rademacher":
            probes = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
        else:
            probes = torch.randn(shape, generator=generator, dtype=x.dtype, device=device)
        probes = probes.to(x.device)

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y = state[0]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            tt = t.to(y.dtype).expand(y.shape[0])
            v = predict(checked, sde, y, tt).velocity
            div = _divergence_exact(v, y) if probes is None else _divergence_hutchinson(v, y, probes)
        return v.detach(), div.detach()

    ts = torch.tensor([eps, t_max], dtype=x.dtype, device=x.device)
    state = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    if method in FIXED_METHODS:
        solution = odeint(dynamics, state, ts, method=method, options={"step_size": (t_max - eps) / steps})
    else:  # never evaluates the model beyond t_max (off its path) nor, probing its first step, outside [eps, t_max]
        solution = odeint_landing(dynamics, state, ts, method, rtol, atol)
    x_T, integral = (s[-1] for s in solution)
    prior = sde.prior_logp(x_T) if prior_logp is None else prior_logp(x_T)
    return Likelihood(prior + integral, prior, checked.nfe)


def bits_per_dim(logp: Tensor, dim: int, levels: int = 256) -> Tensor:
    """Bits per dimension of data quantised to ``levels`` values and scaled to [-1, 1], with uniform dequantisation
    ``x = 2(k + u)/levels - 1``: ``bpd = -(log p(x) + D log(2/levels)) / (D log 2)`` (8 for a uniform model, 8-bit)."""
    dim = integer("dim", dim)
    return -(logp + dim * math.log(2.0 / levels)) / (dim * math.log(2.0))
