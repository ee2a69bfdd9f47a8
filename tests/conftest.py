import os

import pytest
import torch

import sgm
from sgm.config import PATHS

# Under pytest-xdist each worker is one process of several on the machine's cores: one thread each (and in the
# processes the tests start, which read OMP_NUM_THREADS), since oversubscribed torch threads run many times slower.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def mixture(dtype=torch.float64):
    """Three separated modes of unequal weight and width in 2-D: the exact-score ground truth."""
    return sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=dtype)


# The paths the exactness tests sweep, by their names in the one table (sgm.config.PATHS).
SDES = {name: PATHS[name].cls for name in ("vp", "subvp", "ve")}


@pytest.fixture
def gm():
    return mixture()


@pytest.fixture(params=list(SDES))
def sde(request):
    return SDES[request.param]()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def bench_problems():
    """The benchmark's problems of the 3-mode mixture under VP, VE, rectified flow and EDM's path, 64 draws each
    (tests/test_bench_*.py)."""
    from sgm.bench.problems import PATHS, make_problem

    return {name: make_problem("3 modes", mixture(), name, 64, 0) for name in PATHS}


class RecordedNoise(sgm.samplers.Noise):
    """A generator's noise that keeps every draw with the interval it was asked for: ``draws`` holds
    ``(t0, t1, z)`` in call order (``t0 = t1 = None`` for a draw that names no interval)."""

    def __init__(self, generator, x):
        super().__init__(generator, x)
        self.draws = []

    def __call__(self, t0=None, t1=None, *, like=None):
        z = super().__call__(t0, t1, like=like)
        self.draws.append((t0, t1, z))
        return z
