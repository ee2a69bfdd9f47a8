"""k-diffusion's ancestral samplers: each step goes deterministically down to a lower noise level, then adds fresh
noise back up to the next node's.

k-diffusion works on ``x̃ = x/α`` in the noise level ``σ̃ = σ/α`` (its ``sigmas``; every path is the VE process
``x̃ = x_0 + σ̃ ε`` there). ``get_ancestral_step(σ̃_a, σ̃_b, η)`` splits the step into

    σ̃_↑ = min(σ̃_b, η √(σ̃_b² (σ̃_a² - σ̃_b²)/σ̃_a²)),     σ̃_↓ = √(σ̃_b² - σ̃_↑²),

a deterministic step of the probability-flow ODE from ``σ̃_a`` to ``σ̃_↓`` and noise ``σ̃_↑ s_noise z``. With the exact
ODE map this is exact in distribution at every step (``p_{σ̃_↓} * N(0, σ̃_↑²) = p_{σ̃_b}``), so the method's error is
its ODE step's. In λ the step down is the extra exponent ``δ = λ_↓ - λ_b = -½ log(1 - min(1, η²(1 - e^{-2h})))``
(``sgm.samplers.exponential.ancestral_extra``), and in sgm's units, from node ``a`` to node ``b``:

- ``euler_ancestral`` (``sample_euler_ancestral``; diffusers' ``EulerAncestralDiscreteScheduler`` at η = 1): Euler in
  σ̃ to ``σ̃_↓`` (= DDIM = DPM-Solver++1 there), ``x_b = (σ_b/σ_a) e^{-δ} x_a + α_b (1 - e^{-h-δ}) x̂_0 +
  σ_b √(1 - e^{-2δ}) s_noise z``. With ``η ≤ 1`` and ``s_noise = 1`` it is ``ddim`` with the same ``eta``.
- ``dpmpp_2s_ancestral`` (``sample_dpmpp_2s_ancestral``): DPM-Solver++(2S) to ``σ̃_↓`` with its intermediate node
  ``u`` at the λ-midpoint of ``[λ_a, λ_↓]`` (``x_u`` the first-order step there, no noise), then the step with
  ``x̂_0(x_u)`` alone, ``x_b = (σ_b/σ_a) e^{-δ} x_a + α_b (1 - e^{-h-δ}) x̂_0(x_u) + σ_b √(1 - e^{-2δ}) s_noise z``;
  ``η ≤ 1`` (beyond, a long step reaches ``σ̃_↓ = 0``, where k-diffusion takes Euler's step). Two evaluations per step.

Each uses its nodes' own ``(α, σ, λ)``: on VE and ``EDMPath`` (``α = 1``) it is k-diffusion's update to rounding, on VP
the same method on ``x/α``. The noise ``z`` drives ``[t_b, t_a]`` (k-diffusion's ``noise_sampler(σ̃_a, σ̃_b)``); the
step into the data node is Tweedie's (k-diffusion's last step adds no noise either). ``η = 0`` is deterministic
(Euler = DDIM; DPM-Solver++(2S)). From a node of ``α = 0`` the step is the first-order limit
``α_b x̂_0 + σ_b (√(1 - min(1, η)²) ε̂ + min(1, η) s_noise z)`` (one evaluation: the 2S intermediate node tends to the
top itself).
"""
from __future__ import annotations

from .dpm_sde import check_noise_options, first_order_ancestral, second_order_singlestep
from .solver import Model, Solver

__all__ = ["EulerAncestral", "DPMPP2SAncestral"]


class _Ancestral(Solver):
    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta, self.s_noise = check_noise_options(eta, s_noise)
        self.stochastic = self.eta > 0
        if self.stochastic:
            self.strong_order, self.weak_order = self._stochastic_orders
        else:
            self.ode_order = self._ode_order


class EulerAncestral(_Ancestral):
    """k-diffusion's Euler–ancestral sampler: Euler in σ̃ on ``x/α`` down to ``σ̃_↓``, noise ``σ̃_↑`` up (``eta``,
    scaled by ``s_noise``). One evaluation per step."""

    name = "euler_ancestral"
    _ode_order, _stochastic_orders = 1, (1.0, 1.0)

    def step(self, model: Model, x, a, b, state, noise):
        return first_order_ancestral(model, x, a, b, noise, self.eta, self.s_noise), state


class DPMPP2SAncestral(_Ancestral):
    """k-diffusion's DPM-Solver++(2S) ancestral sampler: the 2S step on ``x/α`` down to ``σ̃_↓``, noise ``σ̃_↑`` up
    (``eta``, scaled by ``s_noise``). Two evaluations per step (one from a node of ``α = 0``)."""

    name, evals_per_step = "dpmpp_2s_ancestral", 2
    _ode_order, _stochastic_orders = 2, (1.0, 2.0)  # weak: the error of its second-order ODE step down (measured)

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)
        if self.eta > 1:  # η²(1 - e^{-2h}) ≥ 1 on a long step: σ̃_↓ = 0, where k-diffusion's 2S is Euler's step
            raise ValueError(f"eta must be <= 1 for dpmpp_2s_ancestral (above, a long step goes down to σ = 0, "
                             f"where the 2S step is Euler's and the evaluations per step vary), got {eta}")

    def grid_nfe(self, grid) -> int:
        return super().grid_nfe(grid) - int(grid.nodes[0].scale == 0 and not grid.nodes[1].is_data)

    def step(self, model: Model, x, a, b, state, noise):
        if a.scale == 0:
            return first_order_ancestral(model, x, a, b, noise, self.eta, self.s_noise), state
        return second_order_singlestep(model, x, a, b, noise, self.eta, self.s_noise, noisy_stage=False), state
