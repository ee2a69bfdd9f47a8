"""How a run of the sweep is judged, whichever side ran it.

- The **map error** ``mean_i ‖x_i - x_ref,i‖`` against the problem's reference map (``samplers.optimize.map_error``):
  every deterministic run.
- On digits (a trained model): ``classifier_scores``, the Fréchet distance in a digits classifier's 128 features
  against the real digits and the fraction of samples it labels with probability > ``CONFIDENT``.
- The distribution metrics against a fresh target sample (the curves): SW₂ (``SW2_PROJECTIONS`` directions),
  MMD² and the energy distance (O(n²): the first ``PAIRWISE_N`` samples of each set), the Fréchet distance of
  the raw coordinates, the exact NLL and the mode-weight error; and the Monte-Carlo floor of each, its value
  between two independent target samples.

A run that diverged (no samples, or a NaN/inf among them) or failed is a row with ``diverged`` true and NaN
metrics, never a crash.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from .. import GaussianMixture, metrics
from ..samplers.optimize import map_error

__all__ = ["METRICS", "PAIRWISE_N", "SW2_PROJECTIONS", "CONFIDENT", "distribution_metrics", "floors", "judge_curve",
           "judge_map", "classifier_scores", "failed"]

METRICS = ("sw2", "mmd2", "energy", "frechet", "nll", "mode_error", "map_error")
PAIRWISE_N = 1000
SW2_PROJECTIONS = 256
CONFIDENT = 0.9


def distribution_metrics(x: Tensor, reference: Tensor, target: GaussianMixture, generator: torch.Generator) -> dict:
    """Every metric of ``METRICS`` but the map error, of samples ``x`` against ``reference`` (SW₂'s directions from
    ``generator``)."""
    x = x.reshape(x.shape[0], -1)
    x_pairs, reference_pairs = x[:PAIRWISE_N], reference[:PAIRWISE_N]
    return {"sw2": metrics.sliced_wasserstein(x, reference, SW2_PROJECTIONS, generator),
            "mmd2": metrics.mmd(x_pairs, reference_pairs),
            "energy": metrics.energy_distance(x_pairs, reference_pairs),
            "frechet": metrics.frechet_distance(x, reference),
            "nll": metrics.nll(x, target),
            "mode_error": metrics.mode_weight_error(x, target)}


def floors(target: GaussianMixture, n: int, seed: int) -> dict:
    """The Monte-Carlo floor of each distribution metric: two independent samples of ``n`` from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    a, b = target.sample(n, generator=g), target.sample(n, generator=g)
    return distribution_metrics(a, b, target, g)


def _finite(x: Tensor | None) -> bool:
    return x is not None and bool(torch.isfinite(x).all())


def judge_curve(x: Tensor | None, reference: Tensor, target: GaussianMixture, seed: int,
          x_ref: Tensor | None = None) -> dict:
    """A curve run's metrics (the map error only with the reference map ``x_ref``); ``x`` None: it diverged."""
    if not _finite(x):
        return {**dict.fromkeys(METRICS, float("nan")), "diverged": True}
    row = distribution_metrics(x, reference, target, torch.Generator().manual_seed(seed + 3))
    row["map_error"] = map_error(x, x_ref) if x_ref is not None else float("nan")
    return {**row, "diverged": False}


def judge_map(x: Tensor, x_ref: Tensor, nfe: int, t0: float) -> dict:
    """A comparison run's row: its NFE, seconds since ``t0``, map error and ``diverged``."""
    finite = _finite(x)
    return {"nfe": nfe, "seconds": time.perf_counter() - t0, "diverged": not finite,
            "map_error": map_error(x, x_ref) if finite else float("nan")}


def classifier_scores(x: Tensor, classifier, images: Tensor) -> dict:
    """Digits samples ``x`` (clamped to the data's range [-1, 1]) in the eyes of ``classifier``
    (``nets.DigitsClassifier``): ``frechet_classifier``, the Fréchet distance of its features to those of the real
    ``images``, and ``confident``, the fraction of samples whose top class has probability > ``CONFIDENT``."""
    x = x.clamp(-1, 1)
    with torch.no_grad():
        confident = float((classifier(x).softmax(1).max(1).values > CONFIDENT).float().mean())
    return {"frechet_classifier": metrics.frechet_distance(x, images, features=classifier.features),
            "confident": confident}


def failed(error: Exception, t0: float, prefix: str = "") -> dict:
    """The row of a run that raised ``error``: no NFE, NaN map error, ``diverged`` and the error's text."""
    return {"nfe": None, "seconds": time.perf_counter() - t0, "map_error": float("nan"), "diverged": True,
            "error": f"{prefix}{type(error).__name__}: {error}"[:300]}
