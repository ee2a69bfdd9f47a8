"""Metrics against cases with known answers: Gaussians in closed form, identical sets, exact mixtures."""
import inspect
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import norm

from sgm import metrics
from conftest import gen, mixture

D = torch.float64


def gaussians(n, mean, std, dim, seed):
    return mean + std * torch.randn(n, dim, generator=gen(seed), dtype=D)


def test_gaussian_frechet_is_the_closed_form():
    g = gen(0)
    a, b = torch.randn(4, 4, generator=g, dtype=D), torch.randn(4, 4, generator=g, dtype=D)
    s1, s2 = a @ a.T + 0.1 * torch.eye(4, dtype=D), b @ b.T + 0.1 * torch.eye(4, dtype=D)
    m1, m2 = torch.randn(4, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    cross = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real  # the FID formula, computed independently
    expected = float(((m1 - m2) ** 2).sum()) + float(np.trace(s1.numpy() + s2.numpy() - 2 * cross))
    assert metrics.gaussian_frechet(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples():
    x, y = gaussians(100_000, 0.0, 1.0, 3, 0), gaussians(100_000, 0.5, 2.0, 3, 1)
    # ‖Δμ‖² + Σ (1 + 4 - 2·2) = 3·0.25 + 3
    assert metrics.frechet_distance(x, y) == pytest.approx(3.75, abs=0.05)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    proj = torch.nn.Linear(3, 2).double()
    assert metrics.frechet_distance(x, x, features=proj) == pytest.approx(0.0, abs=1e-8)


def test_sliced_wasserstein_of_shifted_gaussians():
    """SW₂(N(0, I), N(m, I))² = E_θ (θ·m)² = ‖m‖²/D."""
    m = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=D)
    x, y = gaussians(10_000, 0.0, 1.0, 4, 0), gaussians(10_000, m, 1.0, 4, 1)
    # 1000 directions: the sd of the mean of (θ·m)² over θ is ≈ 0.6·6.25/√1000, about 2% of SW₂²
    assert metrics.sliced_wasserstein(x, y, 1000, gen(2)) == pytest.approx(5.0 / 2.0, rel=0.03)
    assert metrics.sliced_wasserstein(x, x, 100, gen(2)) == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sliced_wasserstein_is_the_sorted_projections_to_the_last_bit(dtype):
    """At equal sizes ``SW₂ = √mean_{j,θ}(sort(x·θ)_j - sort(y·θ)_j)²`` with torch's sort, bit for bit (the metric
    sorts by numpy on the CPU): on integer-valued samples, whose projections tie, and on a non-contiguous ``x``."""
    for seed in range(3):
        g = gen(seed)
        x = torch.randint(-3, 4, (4, 500), generator=g).to(dtype).T  # (500, 4), transposed: not contiguous
        y = torch.randn(500, 4, generator=g, dtype=dtype)
        theta = torch.randn((4, 64), generator=gen(10 + seed), dtype=dtype)
        theta = theta / theta.norm(dim=0, keepdim=True)
        qx, qy = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
        expected = float((qx - qy).pow(2).mean().sqrt())
        assert metrics.sliced_wasserstein(x, y, 64, gen(10 + seed)) == expected


def test_mmd_of_two_gaussians_is_the_closed_form():
    """E k(X, Y) = (h²/(h² + s₁² + s₂²))^{D/2} exp(-‖μ₁ - μ₂‖²/(2(h² + s₁² + s₂²))) for the RBF kernel of width h."""
    d, h, m = 2, 1.0, torch.tensor([1.0, 0.0], dtype=D)

    def ek(s1, s2, delta2):
        v = h**2 + s1**2 + s2**2
        return (h**2 / v) ** (d / 2) * math.exp(-delta2 / (2 * v))

    expected = ek(1, 1, 0) + ek(0.5, 0.5, 0) - 2 * ek(1, 0.5, 1.0)
    x, y = gaussians(3000, 0.0, 1.0, d, 0), gaussians(3000, m, 0.5, d, 1)
    assert metrics.mmd(x, y, bandwidths=(h,)) == pytest.approx(expected, abs=0.01)
    assert metrics.mmd(x, x, unbiased=False) == pytest.approx(0.0, abs=1e-12)
    assert abs(metrics.mmd(x, gaussians(3000, 0.0, 1.0, d, 5))) < 0.01


def test_energy_distance_of_two_gaussians_is_the_closed_form():
    """In 1-D: E|X - Y| = s√(2/π) e^{-δ²/2s²} + δ(1 - 2Φ(-δ/s)), s² = s₁² + s₂²; E|X - X'| = 2s₁/√π."""
    d, s1, s2 = 1.0, 1.0, 0.5
    s = math.hypot(s1, s2)
    cross = s * math.sqrt(2 / math.pi) * math.exp(-d**2 / (2 * s**2)) + d * (1 - 2 * norm.cdf(-d / s))
    expected = 2 * cross - 2 * s1 / math.sqrt(math.pi) - 2 * s2 / math.sqrt(math.pi)
    estimates = torch.tensor([metrics.energy_distance(gaussians(2000, 0.0, s1, 1, k), gaussians(2000, d, s2, 1, 10 + k))
                              for k in range(8)])
    assert abs(float(estimates.mean()) - expected) < 4 * float(estimates.std()) / math.sqrt(8)
    x = gaussians(100, 0.0, 1.0, 3, 0)
    assert metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_mixture_scores():
    gm = mixture()
    x = gm.sample(100_000, generator=gen(0))
    assert metrics.mode_weight_error(x, gm) < 0.01
    one_mode = gm.means[1] + gm.stds[1] * torch.randn(1000, 2, generator=gen(1), dtype=D)
    assert metrics.mode_weight_error(one_mode, gm) == pytest.approx(2 * (1 - float(gm.weights[1])), abs=1e-9)
    # the NLL of exact samples is the entropy; a shrunken copy of the data is less likely
    assert metrics.nll(x, gm) == pytest.approx(float(-gm.log_prob(x).mean()), rel=1e-12)
    assert metrics.nll(0.5 * x, gm) > metrics.nll(x, gm) + 1


def test_floor_and_bad_input():
    gm = mixture()
    assert 0 < metrics.floor(metrics.energy_distance, gm, 2000, generator=gen(0)) < 0.01
    with pytest.raises(ValueError, match="same number of features"):
        metrics.energy_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.mmd(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(TypeError, match="target must be a GaussianMixture"):
        metrics.nll(torch.zeros(5, 2), "mixture")
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), 0)


RANDOM_METRICS = {  # every metric that draws random numbers, called without a generator
    "sliced_wasserstein": lambda x, y: metrics.sliced_wasserstein(x, y),
    "kid": lambda x, y: metrics.kid(x, y, n_subsets=4, subset_size=50),
    "floor": lambda x, y: metrics.floor(metrics.sliced_wasserstein, mixture(), 200),
}


def test_every_random_metric_is_checked_for_determinism():
    takes_generator = {name for name in metrics.__all__ if callable(getattr(metrics, name))
                       and "generator" in inspect.signature(getattr(metrics, name)).parameters}
    assert takes_generator == set(RANDOM_METRICS)


@pytest.mark.parametrize("name", sorted(RANDOM_METRICS))
def test_metrics_are_deterministic_by_default(name):
    """Without a generator a metric draws from one seeded with DEFAULT_SEED: the same value whatever torch's
    global RNG holds, which it leaves as it was."""
    x, y = gaussians(300, 0.0, 1.0, 3, 0), gaussians(300, 0.5, 1.5, 3, 1)
    values = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        values.append(RANDOM_METRICS[name](x, y))
        assert torch.equal(torch.get_rng_state(), state)
    assert values[0] == values[1]


def test_the_default_generator_is_seeded_with_the_default_seed():
    x, y = gaussians(300, 0.0, 1.0, 3, 0), gaussians(300, 0.5, 1.5, 3, 1)
    assert metrics.sliced_wasserstein(x, y) == metrics.sliced_wasserstein(x, y, generator=gen(metrics.DEFAULT_SEED))
    assert metrics.sliced_wasserstein(x, y) != metrics.sliced_wasserstein(x, y, generator=gen(metrics.DEFAULT_SEED + 1))
    assert metrics.kid(x, y, 4, 50) == metrics.kid(x, y, 4, 50, generator=gen(metrics.DEFAULT_SEED))
    with pytest.raises(TypeError, match="generator"):
        metrics.sliced_wasserstein(x, y, generator=0)
