"""How a run of the sweep is judged, whichever side ran it.

- The **map error** ``mean_i ‖x_i - x_ref,i‖`` against the problem's reference map (``samplers.optimize.map_error``):
  every deterministic run; with a target sample, also its SW₂ against it (``judge_map``).
- On digits (a trained model): ``classifier_scores``, the Fréchet distance in a digits classifier's 128 features
  against the real digits and the fraction of samples it labels with probability > ``CONFIDENT``.
- The distribution metrics against a fresh target sample (the curves): SW₂ (``SW2_PROJECTIONS`` directions),
  MMD² and the energy distance (O(n²): the first ``PAIRWISE_N`` samples of each set), the Fréchet distance of
  the raw coordinates, the exact NLL and the mode-weight error; and the Monte-Carlo floor of each, its value
  between two independent target samples.
- The stochastic leg's distribution error (``STOCHASTIC_METRICS``): the Fréchet distance of the samples' mean
  ``m̂`` and covariance ``Ĉ`` to the mixture's exact ``(m, C)``, ``‖m̂ - m‖² + Tr(Ĉ + C - 2(C^½ Ĉ C^½)^½)``
  (``frechet_moments``), the mode-weight error ``Σ_k |n_k/n - w_k|`` and SW₂ to a target sample; their floors
  (``stochastic_floors``) are the medians over ``FLOOR_DRAWS`` repeats of the values of ``n`` exact samples (SW₂:
  between two such samples); its strong error ``rms_distance`` against a fine-step run on the same Brownian paths
  (``bench.strong``).

A run that diverged (no samples, or a NaN/inf among them) or failed is a row with ``diverged`` true and NaN
metrics, never a crash.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor

from .. import GaussianMixture, metrics
from ..samplers.optimize import map_error

__all__ = ["METRICS", "STOCHASTIC_METRICS", "PAIRWISE_N", "SW2_PROJECTIONS", "CONFIDENT", "distribution_metrics",
           "floors", "stochastic_metrics", "stochastic_floors", "judge_curve", "map_sw2", "judge_map",
           "judge_stochastic", "rms_distance", "classifier_scores", "failed"]

METRICS = ("sw2", "mmd2", "energy", "frechet", "nll", "mode_error", "map_error")
STOCHASTIC_METRICS = ("frechet_moments", "mode_error", "sw2")
PAIRWISE_N = 1000
FLOOR_DRAWS = 5  # repeats whose median is a stochastic floor
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


def stochastic_metrics(x: Tensor, reference: Tensor, target: GaussianMixture, generator: torch.Generator) -> dict:
    """``STOCHASTIC_METRICS`` of samples ``x``: to the target's exact moments and weights, SW₂ to ``reference``."""
    x = x.reshape(x.shape[0], -1)
    return {"frechet_moments": metrics.frechet_to_gaussian(x, *target.moments()),
            "mode_error": metrics.mode_weight_error(x, target),
            "sw2": metrics.sliced_wasserstein(x, reference, SW2_PROJECTIONS, generator)}


def stochastic_floors(target: GaussianMixture, n: int, seed: int, draws: int = FLOOR_DRAWS) -> dict:
    """The Monte-Carlo floor of each of ``STOCHASTIC_METRICS``: the median over ``draws`` independent repeats of its
    value for ``n`` exact samples (SW₂ between two independent samples of ``n``), repeat ``r`` from ``seed + r``. One
    draw's Fréchet floor at 16-D, n = 20000, was 0.0044 in one run and 0.0156 in another."""
    values = []
    for r in range(draws):
        g = torch.Generator().manual_seed(seed + r)
        a, b = target.sample(n, generator=g), target.sample(n, generator=g)
        values.append(stochastic_metrics(a, b, target, g))
    return {k: statistics.median(v[k] for v in values) for k in values[0]}


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


def map_sw2(x: Tensor, reference: Tensor) -> float:
    """SW₂ of ``x`` against the target sample ``reference`` on ``SW2_PROJECTIONS`` directions from seed 0: the same
    directions for every comparison run."""
    return metrics.sliced_wasserstein(x.reshape(x.shape[0], -1), reference, SW2_PROJECTIONS,
                                      torch.Generator().manual_seed(0))


def judge_map(x: Tensor, x_ref: Tensor, nfe: int, t0: float, reference: Tensor | None = None) -> dict:
    """A comparison run's row: its NFE, seconds since ``t0``, map error, ``diverged`` and, given a target sample
    ``reference``, its SW₂ against it (``map_sw2``; NaN when it diverged)."""
    finite = _finite(x)
    row = {"nfe": nfe, "seconds": time.perf_counter() - t0, "diverged": not finite,
           "map_error": map_error(x, x_ref) if finite else float("nan")}
    if reference is not None:
        row["sw2"] = map_sw2(x, reference) if finite else float("nan")
    return row


def judge_stochastic(x: Tensor | None, reference: Tensor, target: GaussianMixture, seed: int) -> dict:
    """A stochastic run's ``STOCHASTIC_METRICS`` (SW₂'s directions from ``seed + 3``) and ``diverged``; NaN and
    diverged when ``x`` is None or not finite."""
    if not _finite(x):
        return {**dict.fromkeys(STOCHASTIC_METRICS, float("nan")), "diverged": True}
    return {**stochastic_metrics(x, reference, target, torch.Generator().manual_seed(seed + 3)), "diverged": False}


def rms_distance(x, ref) -> float:
    """The stochastic leg's strong error of ``x`` against its reference run ``ref`` (``bench.strong``):
    ``((1/m) Σ_i ‖x_i - ref_i‖²)^½``; ``nan`` when either run failed or is not finite."""
    if x is None or ref is None or not (torch.isfinite(x).all() and torch.isfinite(ref).all()):
        return math.nan
    return float((x - ref).flatten(1).pow(2).sum(1).mean().sqrt())


def classifier_scores(x: Tensor, classifier, images: Tensor) -> dict:
    """Digits samples ``x`` (clamped to the data's range [-1, 1]) in the eyes of ``classifier``
    (``nets.DigitsClassifier``): ``frechet_classifier``, the Fréchet distance of its features to those of the real
    ``images``, and ``confident``, the fraction of samples whose top class has probability > ``CONFIDENT``."""
    x = x.clamp(-1, 1)
    with torch.no_grad():
        confident = float((classifier(x).softmax(1).max(1).values > CONFIDENT).float().mean())
    return {"frechet_classifier": metrics.frechet_distance(x, images, features=classifier.features),
            "confident": confident}


def failed(error: Exception, t0: float, prefix: str = "", keys=("map_error",)) -> dict:
    """The row of a run that raised ``error``: no NFE, NaN metrics ``keys``, ``diverged`` and the error's text."""
    return {"nfe": None, "seconds": time.perf_counter() - t0, **dict.fromkeys(keys, float("nan")),
            "diverged": True, "error": f"{prefix}{type(error).__name__}: {error}"[:300]}
