"""What benchmarks/corrections.py and benchmarks/optimize_grid.py share: the exact-score targets and paths they
calibrate on, their common flags, and each (target, path) cell's held-out reference.

A cell's reference is the exact map ``Φ(x_T)``: ``n_test`` prior draws of seed 1 carried by dopri5 at tolerance 1e-9
to ``eps``, then Tweedie (``sgm.samplers.optimize.flow_map``); a sampler's error is ``mean ‖x̂_0 - Φ(x_T)‖``
(``map_error``).
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch

import sgm
from sgm.samplers.optimize import flow_map
from sgm.targets import GaussianMixture, random_mixture, ring_mixture

D = torch.float64
TARGETS = {"ring": ("2d ring", ring_mixture), "16d": ("16d mixture", lambda: random_mixture(16, seed=0))}
PATHS = {"vp": sgm.VPSDE, "ve": sgm.VESDE, "rf": sgm.RectifiedFlow}


class Cell(NamedTuple):
    """One (target, path) cell: the exact model on ``sde``, the held-out draws ``x`` and their ``reference = Φ(x)``."""

    target_name: str
    target: GaussianMixture
    path: str
    sde: sgm.GaussianPath
    model: Callable
    x: torch.Tensor
    reference: torch.Tensor


def add_arguments(parser, n: int, n_test: int, samplers, default_samplers=None) -> None:
    """Add the flags both scripts take: ``--n`` calibration and ``--n-test`` held-out draws (defaults ``n``,
    ``n_test``), ``--nfe``, ``--paths``, ``--targets`` and ``--samplers`` (choices ``samplers``, default
    ``default_samplers`` or all of them)."""
    parser.add_argument("--n", type=int, default=n, help="calibration draws")
    parser.add_argument("--n-test", type=int, default=n_test, help="held-out draws")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--samplers", nargs="+", default=list(default_samplers or samplers), choices=list(samplers))


def cells(args, flow_prediction: str) -> Iterator[Cell]:
    """The cells of ``args.targets`` × ``args.paths``, in that order. The model is the exact score on VP and VE and,
    on rectified flow (sampled from its top ``t = 1``, where ``α = 0``), the exact ``flow_prediction`` model
    (``"x0"`` or ``"velocity"``)."""
    for key in args.targets:
        target_name, make = TARGETS[key]
        target = make()
        for path in args.paths:
            sde = PATHS[path]()
            model = target.prediction_fn(sde, flow_prediction) if path == "rf" else target.score_fn(sde)
            x = sde.prior_sample((args.n_test, target.dim), generator=torch.Generator().manual_seed(1), dtype=D)
            reference, _ = flow_map(model, sde, x, tol=1e-9)
            yield Cell(target_name, target, path, sde, model, x, reference)
