"""Annealed Langevin's step-size rules against the Monte-Carlo floor, on exact-score 3-D mixtures.

For each SDE: ``n`` samples from ``sgm.sample(..., sampler="langevin", steps=levels)`` (default spacing, 5 steps
per level), their ``SW₂`` to a fresh target sample of the same size, divided by the floor: the median ``SW₂``
between two independent target samples of size ``n`` over 5 pairs. Rules: ``default``
(``u = δ_i/std_i² = 0.2`` at every level), ``ncsn`` (``u = 0.1``: NCSN's ``ε = 2e-5`` at ``σ_L = 0.01``) and
``ncsnv2`` (``step_size="ncsnv2"``, NCSNv2's technique 4).

    python benchmarks/langevin_step_size.py [--n 10000] [--levels 400] [--mixtures wide narrow]
                                            [--rules default ncsn ncsnv2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import sgm
from sgm import metrics

D = torch.float64
SDES = {"vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE}


def mixtures() -> dict[str, sgm.GaussianMixture]:
    return {
        # three modes ~4 apart, unequal weights and widths (the test's mixture)
        "wide": sgm.GaussianMixture([[-2.0, 0.0, 0.5], [2.0, 1.0, -0.5], [0.0, -2.0, 1.0]], [0.5, 0.3, 0.2],
                                    [0.3, 0.5, 0.2], dtype=D),
        # four narrow modes ~6 apart, one of them 0.05 wide with weight 0.1
        "narrow": sgm.GaussianMixture([[-3.0, 0.0, 1.0], [3.0, 1.0, -1.0], [0.0, -3.0, 2.0], [0.5, 2.5, -2.0]],
                                      [0.1, 0.2, 0.15, 0.05], [0.4, 0.3, 0.2, 0.1], dtype=D),
    }


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def floor(gm: sgm.GaussianMixture, n: int) -> float:
    """Median SW₂ between two independent target samples of size ``n`` (5 pairs)."""
    return statistics.median(metrics.sliced_wasserstein(gm.sample(n, generator=gen(10 + i)),
                                                        gm.sample(n, generator=gen(20 + i)), n_projections=200,
                                                        generator=gen(3)) for i in range(5))


def sw_ratio(gm: sgm.GaussianMixture, sde, n: int, levels: int, rule: str, seed: int = 1) -> float:
    """SW₂(annealed Langevin samples, target sample) / floor."""
    grid = sgm.samplers.time_grid(sde, levels)
    ncsn = {"step_size": 2 * 0.1 * grid.noisy[-1].std ** 2}  # NCSN's δ_i = ½ ε std_i²/std_L² with u = 0.1
    options = {"default": {}, "ncsn": ncsn, "ncsnv2": {"step_size": "ncsnv2"}}[rule]
    x = sgm.sample(gm.score_fn(sde), sde, (n, gm.dim), sampler="langevin", grid=grid, generator=gen(seed), dtype=D,
                   **options).x
    return metrics.sliced_wasserstein(x, gm.sample(n, generator=gen(2)), n_projections=200,
                                      generator=gen(3)) / floor(gm, n)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--levels", type=int, default=400)
    parser.add_argument("--mixtures", nargs="*", default=list(mixtures()))
    parser.add_argument("--rules", nargs="*", default=["default", "ncsn", "ncsnv2"])
    args = parser.parse_args()
    print(f"SW₂ / floor, n = {args.n}, {args.levels} levels, 5 steps each, default (uniform) spacing")
    print(f"{'mixture':<8}{'sde':<7}" + "".join(f"{r:>10}" for r in args.rules) + "   seconds")
    for name in args.mixtures:
        gm = mixtures()[name]
        for sde_name, cls in SDES.items():
            t0 = time.perf_counter()
            ratios = [sw_ratio(gm, cls(), args.n, args.levels, rule) for rule in args.rules]
            print(f"{name:<8}{sde_name:<7}" + "".join(f"{r:>10.2f}" for r in ratios)
                  + f"{time.perf_counter() - t0:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
