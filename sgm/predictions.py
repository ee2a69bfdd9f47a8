"""The model's native prediction and every conversion between score, ε, x̂_0, v and velocity — here and nowhere else.

A model is a callable ``model(x, t)`` (``t`` of shape ``(batch,)``) whose output is one *kind* of prediction, named
by its attribute ``predicts`` (a plain function without it is a score). At a time with ``x = α x̂_0 + σ ε̂``
(``α, σ`` and ``α', σ'`` of the path) every kind is a linear function ``p·x̂_0 + q·ε̂`` of the pair ``(x̂_0, ε̂)``:

    kind       p      q          meaning
    x          α      σ          the state itself
    x0         1      0          x̂_0 = E[x_0 | x_t]  (Tweedie's denoiser)
    eps        0      1          ε̂ = E[ε | x_t]
    score      0      -1/σ       s = ∇ log p_t = -ε̂/σ
    v          -σ     α          v = α ε̂ - σ x̂_0  (Salimans & Ho, 2022)
    velocity   α'     σ'         u = α' x̂_0 + σ' ε̂ = dx/dt of the probability-flow ODE

So, given the state and the native prediction ``n``, any kind ``k`` is ``k = a·x + b·n`` with ``(a, b)`` solving
``(p_k, q_k) = a (α, σ) + b (p_n, q_n)``:

    det = α q_n - σ p_n,    a = (p_k q_n - q_k p_n)/det,    b = (α q_k - σ p_k)/det.

``det`` is ``-α/σ`` for a score, ``α`` for ε, ``-σ`` for x̂_0, ``α² + σ²`` for v and ``ασ' - σα' = -ασλ'`` for the
velocity: it vanishes only where the native kind says nothing about ``k`` (x̂_0 from a score or ε where ``α = 0``, at
the top of rectified flow), and there a conversion raises ``ValueError`` instead of dividing by zero. When ``k`` is a
multiple of ``n`` (a score from ε: ``a = 0``) the ratio is taken directly, so a score and ε convert everywhere.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .checks import choice
from .paths import batch_view

__all__ = ["KINDS", "predicts", "coefficients", "score_coefficient", "target", "convert", "Prediction", "predict",
           "as_score", "with_prediction"]

KINDS = ("score", "eps", "x0", "v", "velocity")


def predicts(model) -> str:
    """The kind a model's output is: its ``predicts`` attribute, ``"score"`` for a plain function."""
    kind = getattr(model, "predicts", "score")
    if kind not in KINDS:
        raise ValueError(f"model.predicts must be one of {KINDS}, got {kind!r}")
    return kind


def _pq(kind: str, alpha, sigma, d_alpha, d_sigma):
    if kind == "x0":
        return 1.0, 0.0
    if kind == "eps":
        return 0.0, 1.0
    if kind == "score":
        return 0.0, -1.0 / sigma
    if kind == "v":
        return -sigma, alpha
    if kind == "velocity":
        if d_alpha is None or d_sigma is None:
            raise ValueError("the velocity needs the path's α' and σ' at this time; a discrete chain's node has none")
        return d_alpha, d_sigma
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _undefined(k: str, n: str) -> ValueError:
    return ValueError(f"{k} is undefined from a {n} prediction here (α = 0: the state carries no information on x_0, "
                      f"as at the top of RectifiedFlow); use a model that predicts x0, v or velocity, or start below T")


def coefficients(k: str, n: str, alpha, sigma, d_alpha=None, d_sigma=None, check: bool = True):
    """``(a, b)`` with ``k = a·x + b·n`` (floats, or tensors of per-sample values; see the module docstring).
    ``check=False`` (per-sample tensors only): where ``k`` is undefined ``b`` is ``inf`` and ``a`` NaN instead of a
    ``ValueError``, so that nothing is read back from the device (the training loss, which weights them by 0)."""
    if k == n:
        return 0.0, 1.0
    pk, qk = _pq(k, alpha, sigma, d_alpha, d_sigma)
    pn, qn = _pq(n, alpha, sigma, d_alpha, d_sigma)
    cross, det = pk * qn - qk * pn, alpha * qn - sigma * pn
    if not torch.is_tensor(cross) and not torch.is_tensor(det):
        if cross == 0:  # k ∝ n: the ratio, whatever det
            return 0.0, (qk / qn if qn != 0 else pk / pn)
        if det == 0:
            raise _undefined(k, n)
        return cross / det, (alpha * qk - sigma * pk) / det
    cross, det = torch.as_tensor(cross), torch.as_tensor(det)
    proportional = cross == 0
    undefined = (det == 0) & ~proportional
    if check and bool(undefined.any()):
        raise _undefined(k, n)
    ratio = torch.where(torch.as_tensor(qn) != 0, torch.as_tensor(qk) / qn, torch.as_tensor(pk) / pn)
    safe = torch.where(det == 0, torch.ones_like(det), det)
    a = torch.where(proportional, torch.zeros_like(cross), cross / safe)
    b = torch.where(proportional, ratio, (alpha * qk - sigma * pk) / safe)
    if not check:
        a = torch.where(undefined, torch.full_like(a, float("nan")), a)
        b = torch.where(undefined, torch.full_like(b, float("inf")), b)
    return a, b


def score_coefficient(kind: str, alpha, sigma, d_alpha=None, d_sigma=None, check: bool = True):
    """``∂ kind/∂ s`` at fixed ``x`` (the ``b`` of ``kind = a·x + b·s``): 1, ``-σ``, ``σ²/α``, ``-σ(α² + σ²)/α``,
    ``-½g² = σ²α'/α - σσ'`` for score, eps, x0, v, velocity. A score correction ``δs`` (guidance, likelihood gradients)
    moves a prediction of ``kind`` by ``score_coefficient·δs``; ``‖k - k*‖² = b²‖s - s*‖²`` relates losses."""
    return coefficients(kind, "score", alpha, sigma, d_alpha, d_sigma, check)[1]


def target(kind: str, x0: Tensor, eps: Tensor, alpha, sigma, d_alpha=None, d_sigma=None) -> Tensor:
    """``p·x_0 + q·ε``: the regression target of a ``kind`` model for ``x_t = α x_0 + σ ε`` (the ``eps``-network's
    ``ε``, the flow-matching velocity ``α' x_0 + σ' ε``, Salimans' ``v``, DSM's ``-ε/σ``)."""
    p, q = _pq(kind, alpha, sigma, d_alpha, d_sigma)
    return p * x0 + q * eps


def convert(k: str, n: str, value: Tensor, x: Tensor, alpha, sigma, d_alpha=None, d_sigma=None) -> Tensor:
    """The ``k`` prediction from the native ``n`` prediction ``value`` at state ``x`` (``alpha`` … broadcastable)."""
    a, b = coefficients(k, n, alpha, sigma, d_alpha, d_sigma)
    return a * x + b * value


class Prediction:
    """A model's output at the state ``x``: its native ``kind`` and ``value``, and every other kind on demand
    (``score``, ``eps``, ``x0``, ``v``, ``velocity``; each computed once). The path's ``alpha, sigma, d_alpha,
    d_sigma`` at the state's time are floats (one time for the batch, as samplers call a model: ``node`` is then the
    grid node) or per-sample tensors broadcastable against ``x``."""

    __slots__ = ("x", "node", "kind", "value", "alpha", "sigma", "d_alpha", "d_sigma", "_cache")

    def __init__(self, x: Tensor, kind: str, value: Tensor, alpha, sigma, d_alpha=None, d_sigma=None, node=None):
        self.x, self.kind, self.value, self.node = x, kind, value, node
        self.alpha, self.sigma, self.d_alpha, self.d_sigma = alpha, sigma, d_alpha, d_sigma
        self._cache = {kind: value}

    @classmethod
    def at_node(cls, x: Tensor, node, kind: str, value: Tensor) -> "Prediction":
        """At a grid node (``scale, std, d_scale, d_std``)."""
        return cls(x, kind, value, node.scale, node.std, node.d_scale, node.d_std, node)

    def coefficients(self, kind: str):
        """``(a, b)`` with ``kind = a·x + b·value``."""
        return coefficients(kind, self.kind, self.alpha, self.sigma, self.d_alpha, self.d_sigma)

    def get(self, kind: str) -> Tensor:
        if kind not in self._cache:
            self._cache[kind] = self.combine(**{kind: 1.0})
        return self._cache[kind]

    score = property(lambda self: self.get("score"))
    eps = property(lambda self: self.get("eps"))
    x0 = property(lambda self: self.get("x0"))
    v = property(lambda self: self.get("v"))
    velocity = property(lambda self: self.get("velocity"))

    def combine(self, x_coef=0.0, **weights) -> Tensor:
        """``x_coef·x + Σ_k w_k·kind_k`` as one new tensor ``A·x + B·value`` (``A = x_coef + Σ w_k a_k``,
        ``B = Σ w_k b_k``): a solver's update in any kinds costs two tensor operations."""
        A, B = x_coef, 0.0
        for kind, w in weights.items():
            a, b = self.coefficients(kind)
            A, B = A + w * a, B + w * b
        if torch.is_tensor(A) or torch.is_tensor(B):
            return A * self.x + B * self.value
        if A == 0:
            return self.value.mul(B)
        return self.x.mul(A).add_(self.value, alpha=B)

    def add_score(self, delta: Tensor) -> Tensor:
        """The native prediction of the model whose score is moved by ``delta``: ``value + b·delta``."""
        b = coefficients(self.kind, "score", self.alpha, self.sigma, self.d_alpha, self.d_sigma)[1]
        return self.value + b * delta


def _path_at(path, x: Tensor, t: Tensor):
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
    values = (path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t))
    return t, tuple(batch_view(v.to(x.dtype), x) for v in values)


def predict(model: Callable, path, x: Tensor, t: Tensor, *args) -> Prediction:
    """``model(x, t, *args)`` as a ``Prediction`` with the path's per-sample ``α, σ, α', σ'`` at ``t``."""
    t, (alpha, sigma, d_alpha, d_sigma) = _path_at(path, x, t)
    return Prediction(x, predicts(model), model(x, t, *args), alpha, sigma, d_alpha, d_sigma)


def as_score(model: Callable, path) -> Callable[[Tensor, Tensor], Tensor]:
    """``model`` seen as a score function ``s(x, t)`` (itself when it already predicts the score)."""
    if predicts(model) == "score":
        return model

    def score(x: Tensor, t: Tensor) -> Tensor:
        return predict(model, path, x, t).score

    return score


def with_prediction(fn: Callable, kind: str) -> Callable:
    """``fn`` marked as predicting ``kind`` (sets ``fn.predicts``)."""
    choice("kind", kind, KINDS)
    fn.predicts = kind
    return fn
