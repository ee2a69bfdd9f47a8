"""Guidance: a conditional model plus a label and a guidance scale ``w`` turned into one model ``m(x, t)`` of the same
kind (score, ε, x̂_0, v or velocity: ``sgm.predictions``), so that every sampler runs on it unchanged.

A *conditional score function* is ``cond_score(x, t, y) -> tensor shaped like x`` with integer labels
``y (batch,)`` in ``[0, n_classes]``, where ``y = n_classes`` is the reserved "no label" index (the
unconditional score ``s(x, t)``); it carries ``n_classes`` as an attribute (``GaussianMixture.class_score_fn``
and ``ScoreModel.conditional`` do).

- Classifier-free guidance (Ho & Salimans, 2022):

      s_w(x, t) = (1 + w)·s(x, t | y) - w·s(x, t),

  the score of ``p_t(x | y)^{1+w} / p_t(x)^w ∝ p_t(x | y)·p_t(y | x)^w``. Evaluated as ONE call of
  ``cond_score`` on the doubled batch ``[x, x]`` with labels ``[y, ∅]``. Every kind is ``a·x + b·s`` with the same
  ``a, b`` for both terms and ``(1 + w) - w = 1``, so the same combination of the model's own outputs is the
  guided prediction of its kind.
- Classifier guidance (Dhariwal & Nichol, 2021): ``s_w(x, t) = s(x, t) + w·∇_x log p_t(y | x)`` with a
  time-conditioned classifier ``classifier(x, t) -> logits (batch, n_classes)``; ``w = 1`` with the exact
  noisy-class posterior is the exact class-conditional score ``∇ log p_t(x | y)``. For a model of another kind
  the score correction moves its output by ``b·w ∇ log p_t(y | x)`` (``Prediction.add_score``; the path comes from
  ``sde=`` or the model's own ``sde``).

NFE: a sampler counts calls of the score function it is given (``SamplerOutput.nfe``). One guided call is one
model call on ``2·batch`` rows (classifier-free) or one score call plus one classifier forward and backward
(classifier guidance), so its compute is about twice an unguided evaluation; ``calls`` and ``rows`` on the
guided score count the underlying calls and the rows they evaluated.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .checks import integer, real
from .labels import check_class_labels
from .paths import SDE
from .predictions import predict, predicts

__all__ = ["ClassifierFree", "ClassifierGuidance", "classifier_free", "classifier_guidance", "train_classifier"]

CondScore = Callable[[Tensor, Tensor, Tensor], Tensor]


def _n_classes(cond_score, n_classes) -> int:
    if not callable(cond_score):
        raise TypeError(f"cond_score must be callable as cond_score(x, t, y), got {type(cond_score).__name__}")
    n = getattr(cond_score, "n_classes", None) if n_classes is None else n_classes
    if n is None:
        raise ValueError("guidance needs a conditional model: cond_score has no n_classes (an unconditional "
                         "model cannot be guided by labels); pass n_classes for a plain function")
    return integer("n_classes", n)


def _labels(labels, n_classes: int) -> Tensor | int:
    """An int label is kept (expanded per call); a tensor must be ``(batch,)`` and is checked now."""
    if isinstance(labels, Tensor):
        return check_class_labels(labels, n_classes)
    return int(check_class_labels(labels, n_classes, 1)[0])


def _per_batch(labels: Tensor | int, x: Tensor, n_classes: int) -> Tensor:
    return check_class_labels(labels, n_classes, x.shape[0]).to(x.device)


class ClassifierFree:
    """``s_w(x, t) = (1 + w) s(x, t | y) - w s(x, t)`` from one call of ``cond_score`` on the doubled batch."""

    def __init__(self, cond_score: CondScore, labels, guidance: float, n_classes: int | None = None):
        self.n_classes = _n_classes(cond_score, n_classes)
        self.cond_score, self.labels = cond_score, _labels(labels, self.n_classes)
        self.predicts = predicts(cond_score)
        self.guidance = real("guidance", guidance)
        self.calls = self.rows = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = _per_batch(self.labels, x, self.n_classes)
        both = self.cond_score(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.n_classes)]))
        self.calls, self.rows = self.calls + 1, self.rows + 2 * x.shape[0]
        cond, uncond = both.chunk(2)
        return cond.mul(1 + self.guidance).sub_(uncond, alpha=self.guidance)


class ClassifierGuidance:
    """``s_w(x, t) = s(x, t) + w ∇_x log softmax(classifier(x, t))_y`` (the gradient by autograd)."""

    def __init__(self, score, classifier, labels, guidance: float, n_classes: int | None = None,
                 sde: SDE | None = None):
        if not callable(score):
            raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
        if not callable(classifier):
            raise TypeError(f"classifier must be callable as classifier(x, t) -> logits, "
                            f"got {type(classifier).__name__}")
        self.n_classes = _n_classes(classifier, n_classes)
        self.score, self.classifier = score, classifier
        self.predicts, self.sde = predicts(score), sde if sde is not None else getattr(score, "sde", None)
        if self.predicts != "score" and not isinstance(self.sde, SDE):
            raise ValueError(f"a model that predicts {self.predicts!r} needs its path: pass sde=")
        self.labels, self.guidance = _labels(labels, self.n_classes), real("guidance", guidance)
        self.calls = self.rows = 0

    def log_posterior_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """``∇_x log p_t(y | x)`` of the classifier."""
        y = _per_batch(self.labels, x, self.n_classes)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, t)
            if logits.shape != (x.shape[0], self.n_classes):
                raise ValueError(f"classifier must return logits ({x.shape[0]}, {self.n_classes}), "
                                 f"got {tuple(logits.shape)}")
            chosen = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, xg)
        return grad

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls, self.rows = self.calls + 1, self.rows + x.shape[0]
        delta = self.guidance * self.log_posterior_grad(x, t)
        if self.predicts == "score":
            return self.score(x, t) + delta
        return predict(self.score, self.sde, x, t).add_score(delta)


def classifier_free(cond_score: CondScore, labels, guidance: float, n_classes: int | None = None) -> ClassifierFree:
    """The classifier-free guided score function (see the module docstring)."""
    return ClassifierFree(cond_score, labels, guidance, n_classes)


def classifier_guidance(score, classifier, labels, guidance: float, n_classes: int | None = None,
                        sde: SDE | None = None) -> ClassifierGuidance:
    """The classifier-guided model (see the module docstring)."""
    return ClassifierGuidance(score, classifier, labels, guidance, n_classes, sde)


def train_classifier(net: torch.nn.Module, sde: SDE, data: Tensor, labels: Tensor, steps: int = 2000,
                     batch_size: int = 256, lr: float = 2e-3, eps: float = 1e-3, seed: int = 0,
                     progress: bool = False) -> torch.nn.Module:
    """Train a time-conditioned classifier ``net(x_t, t) -> logits`` for classifier guidance: cross-entropy of
    ``y`` at ``x_t = scale(t)·x_0 + std(t)·z``, ``t ~ U(eps, T)``, Adam; the minimiser is ``log p_t(y | x)``.
    Draws (batch indices, times, noise) come from one generator seeded by ``seed``. Returns ``net`` in eval mode."""
    from tqdm.auto import tqdm

    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(data, Tensor) or data.dim() < 2:
        raise ValueError(f"data must be a tensor (N, ...), got {type(data).__name__}")
    labels = check_class_labels(labels, int(labels.max()) + 1 if isinstance(labels, Tensor) and labels.numel() else 1,
                                len(data))
    steps, batch_size = integer("steps", steps), integer("batch_size", batch_size)
    g = torch.Generator(data.device).manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        idx = torch.randint(len(data), (batch_size,), generator=g, device=data.device)
        t = eps + (sde.T - eps) * torch.rand(batch_size, generator=g, device=data.device, dtype=data.dtype)
        x_t = sde.perturb(data[idx], t, generator=g)
        loss = torch.nn.functional.cross_entropy(net(x_t, t), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()
