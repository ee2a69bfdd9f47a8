"""SDE-DPM-Solver++ (Lu et al., 2022b; diffusers' ``sde-dpmsolver++``; k-diffusion's DPM-Solver++ SDE samplers):
the data-prediction exponential integrators of ``sgm.samplers.dpm`` on the reverse SDEs of the path's marginals.

``method="multistep"`` (one evaluation per transition): the η-scaled exponent of ``sgm.samplers.exponential``,
``δ = ηh`` (``h = λ_b - λ_a``, ``H = (1+η)h``), on the weights of multistep DPM-Solver++ with the divided
differences still normalised by ``h``:

- order 1: ``x_b = (σ_b/σ_a) e^{-ηh} x_a + α_b (1 - e^{-H}) x̂_0 + σ_b √(1 - e^{-2ηh}) s_noise z``;
- order 2 (2M): ``+ α_b c D_1``, ``D_1 = (m_0 - m_1)/r_0``, ``c = H φ_1(-H)/2`` (``solver_type="midpoint"``) or
  ``H φ_2(-H)`` (``"heun"``);
- order 3 (3M): ``+ α_b (H φ_2(-H) D_1 + H φ_3(-H) D_2)`` with 3M's ``D_1, D_2`` (``sgm.samplers.dpm``); its
  second-order warm-up steps use ``solver_type``.

With ``η = 1`` this is diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`` (orders 1–3,
``solver_type`` midpoint/heun) and k-diffusion's ``sample_dpmpp_2m_sde`` (``order=2``, ``lower_order_final=False``)
and ``sample_dpmpp_3m_sde`` (``order=3, solver_type="heun", lower_order_final=False``), which take any ``η``
(their ``eta``) as here. Warm-up and ``lower_order_final`` as in ``dpm_solver``.

``method="singlestep"`` (two evaluations per transition): k-diffusion's ``sample_dpmpp_sde``, DPM-Solver++(2S) with
k-diffusion's ancestral noise on both stages. With ``u`` the node at ``λ_u = λ_a + h/2`` and ``δ(h') =
-½ log(1 - min(1, η²(1 - e^{-2h'})))`` (``sgm.samplers.exponential.ancestral_extra``):

    x_u = first-order step a → u with extra exponent δ(λ_u - λ_a), plus σ_u √(1 - e^{-2δ}) s_noise z_1
    x_b = (σ_b/σ_a) e^{-δ} x_a + α_b (1 - e^{-h-δ}) [(1 - 1/(2r)) x̂_0(x_a) + 1/(2r) x̂_0(x_u)]
          + σ_b √(1 - e^{-2δ}) s_noise z_2

with ``δ = δ(h)`` and ``r = (λ_u - λ_a)/h = 1/2``. ``z_1`` drives ``[t_u, t_a]`` and ``z_2`` the whole ``[t_b, t_a]``
(k-diffusion's ``noise_sampler(σ_a, σ_u)`` and ``noise_sampler(σ_a, σ_b)``, by default a Brownian tree): ``z_2`` is the
normalised Brownian increment made of ``z_1`` and a draw for ``[t_b, t_u]``, ``(√(t_a - t_u) z_1 + √(t_u - t_b) w)/
√(t_a - t_b)``, so the pair is correlated as Brownian increments are whatever the noise source (with independent
``z_1, z_2`` the method is of weak order 1, with the pair of weak order 2: measured). Here ``eta`` is k-diffusion's
``dpmpp_sde`` ``eta`` (the ancestral parametrisation of the noise, equal to the η-scaled exponent at 0 and 1).

k-diffusion writes these on ``x/α`` in ``σ̃ = σ/α`` (its ``sigmas``); sgm's steps use each node's own ``(α, σ, λ)``, so
on VE and ``EDMPath`` (``α = 1``) they are k-diffusion's updates to rounding, and on VP the same methods on ``x/α``.

``eta = 0`` is deterministic (``dpm_solver`` with ``prediction="x0"``, and DPM-Solver++(2S)). From a node of ``α = 0``
the step is the first-order limit (``sgm.samplers.exponential.from_noise``): ``α_b x̂_0 + σ_b s_noise z`` for the
multistep method with ``η > 0``; for the 2S method the first-order ancestral step, one evaluation (its intermediate
node tends to the top itself).
"""
from __future__ import annotations

import math

import torch

from ..checks import choice, flag, nonnegative, positive
from .dpm import METHODS, multistep_state, multistep_update, singlestep_weights
from .exponential import ancestral_extra, check_order, combine, eta_extra, from_noise, linear, noise_std
from .grid import Node, TimeGrid
from .solver import Model, Solver

__all__ = ["DPMSolverSDE", "SOLVER_TYPES", "second_order_singlestep", "first_order_ancestral", "check_noise_options"]

SOLVER_TYPES = ("midpoint", "heun")


def check_noise_options(eta, s_noise) -> tuple[float, float]:
    """``eta ≥ 0`` and ``s_noise > 0``; ``s_noise`` only where there is noise to scale (``eta > 0``)."""
    eta, s_noise = nonnegative("eta", eta), positive("s_noise", s_noise)
    if eta == 0 and s_noise != 1:
        raise ValueError(f"s_noise scales the noise, and eta=0 draws none; got s_noise={s_noise}")
    return eta, s_noise


def first_order_ancestral(model: Model, x, a: Node, b: Node, noise, eta: float, s_noise: float):
    """``x_b = α_b (σ̃_↓/σ̃_a · x_a/α_a + (1 - σ̃_↓/σ̃_a) x̂_0) + α_b σ̃_↑ s_noise z`` (Euler–ancestral on ``x/α``): the
    first-order step with the ancestral extra exponent ``δ(h)``; from ``α_a = 0`` its limit
    ``α_b x̂_0 + σ_b (e^{-δ} ε̂ + √(1 - e^{-2δ}) s_noise z)``."""
    p = model(x, a)
    extra = ancestral_extra(b.lam - a.lam, eta)
    if a.scale == 0:
        out = from_noise(p, b, extra)
    else:
        lin = linear(a, b, "x0", extra)
        out = combine(x, lin.A, lin.B, [lin.hphi(1)], [p.x0])
    return out.add_(noise(a.t, b.t), alpha=noise_std(b, extra) * s_noise) if extra > 0 else out


def _node_at_lam(model: Model, lam: float) -> Node:
    return model.node(float(model.sde.time_at_lam(torch.tensor(lam, dtype=torch.float64))))


def second_order_singlestep(model: Model, x, a: Node, b: Node, noise, eta: float, s_noise: float,
                            noisy_stage: bool):
    """DPM-Solver++(2S) from ``a`` to ``b`` (``α_a > 0``) with k-diffusion's ancestral split ``δ = δ(h)``.

    ``noisy_stage=False`` (``sample_dpmpp_2s_ancestral``, ``η ≤ 1``): the deterministic 2S step to the level
    ``λ_↓ = λ_b + δ``, its intermediate node at ``λ_a + (λ_↓ - λ_a)/2``, then noise ``σ_b √(1 - e^{-2δ}) z``.
    ``noisy_stage=True`` (``sample_dpmpp_sde``): the intermediate node at ``λ_a + h/2``, reached by a noisy first-order
    step with its own split, and the 2S weights normalised by ``h``."""
    p = model(x, a)
    d = p.x0
    h = b.lam - a.lam
    extra = ancestral_extra(h, eta)
    step = h if noisy_stage else h + extra  # the step the intermediate node halves, and r is relative to
    u = _node_at_lam(model, a.lam + step / 2)
    extra_u = ancestral_extra(u.lam - a.lam, eta) if noisy_stage else 0.0
    lin_u = linear(a, u, "x0", extra_u)
    x_u = combine(x, lin_u.A, lin_u.B, [lin_u.hphi(1)], [d])
    if extra_u > 0:
        z_u = noise(a.t, u.t)
        x_u.add_(z_u, alpha=noise_std(u, extra_u) * s_noise)
    d_u = model(x_u, u).x0
    lin = linear(a, b, "x0", extra)
    out = combine(x, lin.A, lin.B, singlestep_weights(lin._replace(h=step), [a.lam, u.lam], 2), [d, d_u])
    if extra == 0:
        return out
    if extra_u > 0:  # the increment over [t_b, t_a] from those over [t_u, t_a] and [t_b, t_u]: a Brownian pair
        z = z_u.mul(math.sqrt(a.t - u.t)).add_(noise(u.t, b.t), alpha=math.sqrt(u.t - b.t)).div_(math.sqrt(a.t - b.t))
    else:
        z = noise(a.t, b.t)
    return out.add_(z, alpha=noise_std(b, extra) * s_noise)


class DPMSolverSDE(Solver):
    """SDE-DPM-Solver++ of ``order`` 1–3 (``multistep``, one evaluation per step; η-scaled exponent), or
    DPM-Solver++(2S) SDE (``singlestep``, ``order=2``, two evaluations per step; k-diffusion's ``dpmpp_sde``), with
    noise ``eta`` (1: the reverse SDE; 0: deterministic) scaled by ``s_noise``; ``solver_type`` ``midpoint``/``heun``
    for the second-order multistep steps."""

    def __init__(self, order: int = 2, method: str = "multistep", solver_type: str = "midpoint", eta: float = 1.0,
                 s_noise: float = 1.0, lower_order_final: bool = True):
        self.solver_order = check_order(order, 3)
        self.method = choice("method", method, METHODS)
        self.solver_type = choice("solver_type", solver_type, SOLVER_TYPES)
        self.eta, self.s_noise = check_noise_options(eta, s_noise)
        self.lower_order_final = flag("lower_order_final", lower_order_final)
        if self.method == "singlestep":
            if self.solver_order != 2:
                raise ValueError(f"order must be 2 with method='singlestep' (DPM-Solver++(2S) SDE, k-diffusion's "
                                 f"sample_dpmpp_sde), got {order}")
            if self.solver_type != "midpoint" or not self.lower_order_final:
                raise ValueError("solver_type and lower_order_final apply to method='multistep' only")
            self.evals_per_step = 2
        elif self.solver_order == 1 and self.solver_type != "midpoint":
            raise ValueError("solver_type applies to the second-order steps (order 2 or 3)")
        self.stochastic = self.eta > 0
        self._declare_orders()
        kind = f"order {order}" if method == "multistep" else "2S"
        self.name = f"dpm_solver_sde ({kind}, eta {self.eta:g})"

    def _declare_orders(self) -> None:
        if not self.stochastic:  # dpm_solver's ODE orders (3M: the published formula is of order 2)
            self.ode_order = min(self.solver_order, 2)
        else:  # measured (benchmarks/stochastic_exponential.py): weak 1.8–2.3 for 2M/3M/2S, 0.8–0.9 for order 1
            self.strong_order, self.weak_order = 1.0, (1.0 if self.solver_order == 1 else 2.0)

    def init(self, x, grid: TimeGrid):
        """Multistep: ``dpm_solver``'s state (transitions, history); singlestep: none."""
        return multistep_state(grid) if self.method == "multistep" else None

    def grid_nfe(self, grid) -> int:
        """The 2S step from a node of ``α = 0`` is its first-order limit, one evaluation."""
        saved = self.method == "singlestep" and grid.nodes[0].scale == 0 and not grid.nodes[1].is_data
        return super().grid_nfe(grid) - int(saved)

    def step(self, model: Model, x, a, b, state, noise):
        if self.method == "singlestep":
            if a.scale == 0:
                return first_order_ancestral(model, x, a, b, noise, self.eta, self.s_noise), state
            return second_order_singlestep(model, x, a, b, noise, self.eta, self.s_noise, noisy_stage=True), state
        p = model(x, a)
        extra = eta_extra(b.lam - a.lam, self.eta)
        if a.scale == 0:
            x = from_noise(p, b, extra)
        else:
            x, state = multistep_update(x, a, b, p.x0, state, self.solver_order, self.lower_order_final,
                                        extra=extra, solver_type=self.solver_type)
        return (x.add_(noise(a.t, b.t), alpha=noise_std(b, extra) * self.s_noise) if extra > 0 else x), state
