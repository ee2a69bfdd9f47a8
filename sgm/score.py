"""Turning a network into a model: ``ScoreModel(net, path, prediction)`` outputs the network's native prediction.

With ``x_t = α·x_0 + σ·ε`` (``α, σ = path.marginal(t)``) a network predicts one of

    eps:       ε̂
    score:     ŝ ≈ ∇ log p_t
    x0:        x̂_0
    v:         v̂ = α·ε - σ·x_0          (Salimans & Ho, 2022)
    velocity:  û = α'·x_0 + σ'·ε        (flow matching, Lipman et al., 2023; rectified flow, Liu et al., 2023)
    edm:       x̂_0 through Karras et al.'s preconditioning (below)

and the model's output *is* that prediction (``model.predicts`` names its kind: ``"x0"`` for ``edm``); samplers,
losses, likelihoods and guidance read the kinds they need through ``sgm.predictions`` (``as_score(model, path)``
is the score function). Tweedie's formula gives the denoiser ``E[x_0 | x_t] = (x + σ² s)/α``.

A class-conditional network ``net(x, t, labels)`` (``n_classes`` > 0) makes ``ScoreModel`` a conditional model
``model(x, t, y)`` (``y = n_classes``: no label) for ``sgm.guidance``, and ``model.conditional(y)`` is the plain
model ``m(x, t | y)`` every sampler takes.

``"edm"`` is Karras et al.'s (2022) preconditioning, written for any path through the variance-exploding view
``x̃ = x/α`` with noise level ``σ̃ = σ/α``: the network ``F`` gives the denoiser

    D(x̃; σ̃) = c_skip x̃ + c_out F(c_in x̃, c_noise),
    c_skip = σ_d²/(σ̃² + σ_d²),  c_out = σ̃ σ_d/√(σ̃² + σ_d²),  c_in = 1/√(σ̃² + σ_d²),  c_noise = ¼ ln σ̃,

with ``σ_d = sigma_data`` the data's standard deviation, written without dividing by ``α``
(``c_skip x̃ = σ_d² α x/(σ² + α²σ_d²)``, ``c_in x̃ = x/√(σ² + α²σ_d²)``, ``c_out = σ σ_d/√(σ² + α²σ_d²)``), so it holds
where ``α = 0`` (``D = σ_d F``, the top of rectified flow; there ``c_noise`` is capped at ``¼·20``). The network's input
and its target have unit variance at every noise level, and where ``F`` is bounded (far from the data) the score tends
to ``-x/(σ² + α²σ_d²)``, the score of ``N(0, σ_d²)`` diffused: ``c_skip`` pulls a stray trajectory back, where an
``eps`` network with a bounded output lets the probability-flow ODE carry it away.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .checks import choice
from .labels import check_class_labels
from .paths import DiscreteChain, GaussianPath, batch_view
from .predictions import Prediction

__all__ = ["ScoreModel", "PREDICTIONS", "NATIVE_KIND", "edm_noise_input"]

PREDICTIONS = ("eps", "score", "x0", "v", "velocity", "edm")
EDM_LOG_SIGMA_MAX = 20.0  # c_noise = ¼ ln σ̃ is capped at ¼·20 (σ̃ ≤ 4.9e8): finite where α = 0
NATIVE_KIND = {"eps": "eps", "score": "score", "x0": "x0", "v": "v", "velocity": "velocity", "edm": "x0"}


def edm_noise_input(alpha: Tensor, sigma: Tensor) -> Tensor:
    """EDM's ``c_noise = ¼ ln σ̃`` of the noise level ``σ̃ = σ/α``, capped at ``¼·20`` (finite where ``α = 0``)."""
    return 0.25 * (sigma / alpha).log().clamp(max=EDM_LOG_SIGMA_MAX)


class ScoreModel:
    """The model of a network ``net(x, t)`` that predicts ``prediction`` (one of PREDICTIONS); its output is that
    prediction (``predicts``: its kind).

    With ``chain`` (a ``DiscreteChain``, e.g. ``path.discretize(1000)``) the network takes integer
    timesteps: ``t`` is mapped to the nearest chain timestep ``i``, so a DDPM-trained ε-network is used exactly as it
    was trained. With ``prediction="edm"`` the network takes ``(c_in x̃, c_noise)`` and ``sigma_data`` is ``σ_d``.
    ``time_input`` maps the path time to the network's time input (default: ``t`` itself, or the chain index).
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sde: GaussianPath, prediction: str = "eps",
                 chain: DiscreteChain | None = None, sigma_data: float | None = 0.5,
                 time_input: Callable[[Tensor], Tensor] | None = None):
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if not isinstance(sde, GaussianPath):
            raise TypeError(f"sde must be an sgm path (GaussianPath), got {type(sde).__name__}")
        choice("prediction", prediction, PREDICTIONS)
        if chain is not None and not isinstance(chain, DiscreteChain):
            raise TypeError(f"chain must be a DiscreteChain, got {type(chain).__name__}")
        if (prediction == "edm" or sigma_data is not None) and not (
                isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a number > 0, got {sigma_data!r}")
        if time_input is not None and not callable(time_input):
            raise TypeError(f"time_input must be callable as time_input(t), got {type(time_input).__name__}")
        self.net, self.sde, self.prediction, self.chain = net, sde, prediction, chain
        self.sigma_data = None if sigma_data is None else float(sigma_data)
        self.time_input = time_input
        self.predicts = NATIVE_KIND[prediction]

    def _net_time(self, t: Tensor) -> Tensor:
        if self.chain is not None:
            return self.chain.index(t)
        return t if self.time_input is None else self.time_input(t)

    @property
    def n_classes(self) -> int | None:
        """The network's class count, or None for an unconditional network."""
        return getattr(getattr(self.net, "module", self.net), "n_classes", 0) or None  # DDP wraps the network

    def conditional(self, labels) -> Callable[[Tensor, Tensor], Tensor]:
        """The model ``m(x, t | y)`` for labels ``y`` (an int, or ``(batch,)``; ``n_classes`` = no label), of the
        same kind as this model."""
        if self.n_classes is None:
            raise ValueError("labels given to an unconditional model (its network was built without n_classes)")
        n = self.n_classes
        fixed = check_class_labels(labels, n + 1, None if isinstance(labels, Tensor) else 1)

        def model(x: Tensor, t: Tensor) -> Tensor:
            y = fixed.expand(x.shape[0]) if fixed.shape[0] == 1 and not isinstance(labels, Tensor) else fixed
            return self(x, t, check_class_labels(y, n + 1, x.shape[0], x.device))

        model.predicts, model.sde = self.predicts, self.sde
        return model

    def __call__(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        dtype = self._net_dtype()
        if dtype is not None and dtype != x.dtype:  # a float32 network in a float64 sampler: it computes in its own
            return self(x.to(dtype), torch.as_tensor(t).to(dtype), labels).to(x.dtype)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if self.prediction == "edm":
            return self._edm_denoiser(x, t, labels)
        net_t = self._net_time(t)
        return self.net(x, net_t) if labels is None else self.net(x, net_t, labels)

    def _net_dtype(self) -> torch.dtype | None:
        """The dtype of the network's first floating parameter (None for a plain function)."""
        params = getattr(self.net, "parameters", None)
        return next((p.dtype for p in params() if p.is_floating_point()), None) if callable(params) else None

    def _marginal(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        if self.chain is None:
            scale, std = self.sde.marginal(t)
        else:
            i = self.chain.index(t)
            scale, std = self.chain.scale.to(x.dtype).to(x.device)[i], self.chain.std.to(x.dtype).to(x.device)[i]
        return batch_view(scale, x), batch_view(std, x)

    def _edm_denoiser(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """``D = c_skip x̃ + c_out F(c_in x̃, c_noise)`` in ``x``'s units (see the module docstring)."""
        a, s = self._marginal(x, t)
        sd = self.sigma_data
        norm = (s**2 + (a * sd) ** 2).sqrt()  # α·√(σ̃² + σ_d²)
        c_noise = edm_noise_input(a.reshape(x.shape[0], -1)[:, 0], s.reshape(x.shape[0], -1)[:, 0])
        x_in = x / norm
        out = self.net(x_in, c_noise) if labels is None else self.net(x_in, c_noise, labels)
        return (sd**2 * a / norm**2) * x + (s * sd / norm) * out

    def prediction_at(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Prediction:
        """The output at ``(x, t)`` as a ``Prediction`` on this model's own marginal (the chain's at the nearest
        timestep when it has one), every kind on demand."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        a, s = self._marginal(x, t)
        d_a, d_s = (batch_view(f(t).to(x.dtype), x) for f in (self.sde.d_alpha, self.sde.d_sigma))
        return Prediction(x, self.predicts, self(x, t, labels), a, s, d_a, d_s)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """Tweedie's ``E[x_0 | x_t = x]``."""
        return self.prediction_at(x, t).x0
