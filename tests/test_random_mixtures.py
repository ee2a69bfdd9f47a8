"""Every fast stochastic sampler and annealed Langevin draw exact-score mixtures that no default was measured on
within 3× the SW₂ Monte-Carlo floor, on VP, sub-VP and VE: ``random_mixture(3, seed)`` for held-out seeds (the
defaults were chosen on seeds 1, 2, 4, 5; benchmarks/stochastic_samplers.py --only mixtures). Each sampler runs at its
registry entry's steps, options and grid; annealed Langevin with its defaults at 400 levels (the issue's setting,
where the old default, u = 0.1 on the geometric grid, reached 3.1× the floor on seed 5, sub-VP).

The floor is the median SW₂ between two independent target samples of the same size over three pairs; n = 5000
keeps each run to seconds (the ratio is larger at small n only through the floor, which grows as n^{-1/2})."""
import statistics

import pytest
import torch

import sgm
from sgm import metrics
from conftest import SDES, gen

D = torch.float64
N = 5000
SEEDS = (11, 12)


def floor(gm) -> float:
    return statistics.median(metrics.sliced_wasserstein(gm.sample(N, generator=gen(10 + i)),
                                                        gm.sample(N, generator=gen(20 + i)), n_projections=100,
                                                        generator=gen(3)) for i in range(3))


def run(name, gm, sde, seed=1):
    if name == "langevin":
        return sgm.sample(gm.score_fn(sde), sde, (N, gm.dim), name, steps=400, generator=gen(seed), dtype=D).x
    entry = sgm.samplers.entry(name)
    return sgm.sample(gm.score_fn(sde), sde, (N, gm.dim), name, steps=entry.steps, generator=gen(seed), dtype=D,
                      **entry.options).x


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", ["sa_solver", "er_sde", "restart", "langevin"])
def test_samples_random_mixtures_within_3x_the_floor(name, sde_name, seed):
    gm, sde = sgm.random_mixture(3, seed=seed), SDES[sde_name]()
    sw = metrics.sliced_wasserstein(run(name, gm, sde), gm.sample(N, generator=gen(2)), n_projections=100,
                                    generator=gen(3))
    assert sw < 3 * floor(gm), (sw, floor(gm))
