"""The ``sgm`` command (also ``python -m sgm``): ``sgm demo`` samples a 2-D mixture with every sampler."""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from . import metrics
from .plotting import scatter_panels
from .samplers import available, sample
from .sde import SDE, SubVPSDE, VESDE, VPSDE
from .targets import GaussianMixture

__all__ = ["main", "ring_mixture", "make_sde"]

SDE_NAMES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}

# The demo's (sampler, steps, options): a few score evaluations for the ODE samplers, more for the SDE ones.
DEMO_RUNS = (
    ("ode", 2, {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4}),
    ("ode", 20, {"method": "heun2"}),
    ("ddim", 20, {}),
    ("ancestral", 200, {}),
    ("euler_maruyama", 200, {}),
    ("reverse_diffusion", 200, {}),
    ("sde", 200, {}),
    ("pc", 100, {}),
    ("langevin", 100, {"n_steps_each": 5, "spacing": "geometric"}),
)


def ring_mixture(k: int = 8, radius: float = 4.0, std: float = 0.3, dtype=torch.float64) -> GaussianMixture:
    """``k`` equal Gaussians of width ``std`` on a circle of the given radius."""
    angle = torch.arange(k, dtype=dtype) * (2 * math.pi / k)
    return GaussianMixture(radius * torch.stack([angle.cos(), angle.sin()], 1), std, dtype=dtype)


def make_sde(name: str) -> SDE:
    if name not in SDE_NAMES:
        raise ValueError(f"sde must be one of {sorted(SDE_NAMES)}, got {name!r}")
    return SDE_NAMES[name]()


def demo(args: argparse.Namespace) -> int:
    target, forward = ring_mixture(), make_sde(args.sde)
    g = torch.Generator().manual_seed(args.seed)
    reference = target.sample(args.n, generator=g)
    panels = [(f"target ({target.n_components} modes)", reference)]
    print(f"{'sampler':<28}{'NFE':>6}{'SW2':>9}{'modes err':>11}{'seconds':>9}")
    for name, steps, options in DEMO_RUNS:
        t0 = time.perf_counter()
        out = sample(target.score_fn(forward), forward, (args.n, 2), sampler=name, steps=steps, generator=g,
                     dtype=torch.float64, progress=args.progress, **options)
        seconds = time.perf_counter() - t0
        label = name if "method" not in options else f"{name} ({options['method']})"
        sw = metrics.sliced_wasserstein(out.x, target.sample(args.n, generator=g), generator=g)
        mw = metrics.mode_weight_error(out.x, target)
        print(f"{label:<28}{out.nfe:>6}{sw:>9.4f}{mw:>11.4f}{seconds:>9.2f}")
        panels.append((f"{label}\nNFE {out.nfe}, SW₂ {sw:.3f}", out.x))
    path = scatter_panels(panels, args.out, density=target.log_prob, limits=6.0, columns=5)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="sample an 8-mode ring mixture with its exact score, one panel per sampler")
    p.add_argument("--sde", default="vp", choices=sorted(SDE_NAMES))
    p.add_argument("--n", type=int, default=2000, help="samples per sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/demo.png", help="the PNG to write")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
