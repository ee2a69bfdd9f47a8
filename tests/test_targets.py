"""The Gaussian mixture: exact density and score of p_t, checked against independent computations."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import sgm
from conftest import gen


@pytest.mark.parametrize("t", [1e-3, 0.1, 0.5, 1.0])
def test_score_is_autograd_of_log_prob(sde, t):
    gm = sgm.GaussianMixture([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]], [[0.3, 0.4, 0.5], [0.6, 0.2, 0.3]], [0.7, 0.3],
                             dtype=torch.float64)
    x = sde.perturb(gm.sample(64, generator=gen(0)), torch.full((64,), t, dtype=torch.float64), generator=gen(1))
    x.requires_grad_(True)
    tt = torch.full((64,), t, dtype=torch.float64)
    (grad,) = torch.autograd.grad(gm.log_prob(x, tt, sde).sum(), x)
    torch.testing.assert_close(gm.score_fn(sde)(x.detach(), tt), grad, rtol=1e-10, atol=1e-10)
    # One time expanded over the batch (as the samplers pass it) takes the shared-marginal path: same score.
    shared = torch.tensor(t, dtype=torch.float64).expand(64)
    torch.testing.assert_close(gm.score_fn(sde)(x.detach(), shared), grad, rtol=1e-10, atol=1e-10)


def test_log_prob_matches_scipy(gm):
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    expected = np.log(sum(w * multivariate_normal(m, np.diag(s**2)).pdf(x.numpy()) for w, m, s in
                          zip(gm.weights.numpy(), gm.means.numpy(), gm.stds.numpy())))
    np.testing.assert_allclose(gm.log_prob(x).numpy(), expected, rtol=1e-12)


def test_perturbed_log_prob_matches_scipy(gm):
    sde, t = sgm.VPSDE(), 0.4
    scale, std = (float(v) for v in sde.marginal(torch.tensor(t, dtype=torch.float64)))
    x = torch.randn(50, 2, dtype=torch.float64)
    expected = np.log(sum(w * multivariate_normal(scale * m, np.diag(scale**2 * s**2 + std**2)).pdf(x.numpy())
                          for w, m, s in zip(gm.weights.numpy(), gm.means.numpy(), gm.stds.numpy())))
    for tt in (torch.full((50,), t, dtype=torch.float64), torch.tensor(t, dtype=torch.float64).expand(50), t):
        np.testing.assert_allclose(gm.log_prob(x, tt, sde).numpy(), expected, rtol=1e-12)  # per-sample and shared


def test_sample_matches_weights_and_moments(gm):
    n = 200_000
    x, comp = gm.sample(n, generator=gen(0), return_components=True)
    freq = torch.bincount(comp, minlength=3).double() / n
    # Binomial standard error √(w(1-w)/n) ≤ 0.0012; 5 standard errors.
    torch.testing.assert_close(freq, gm.weights, atol=0.006, rtol=0)
    mean, cov = gm.moments()
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)  # sd of the mean ≤ 1.8/√n = 0.004
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0)


def test_moments_at_t_match_perturbed_samples(gm):
    sde, n = sgm.VESDE(sigma_max=2.0), 200_000
    x = sde.perturb(gm.sample(n, generator=gen(0)), torch.full((n,), 0.7, dtype=torch.float64), generator=gen(1))
    mean, cov = gm.moments(0.7, sde)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0)


def test_image_shaped_samples():
    gm = sgm.GaussianMixture(torch.zeros(2, 12), [0.5, 1.0], dtype=torch.float64)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    s = gm.score_fn(sgm.VPSDE())(x, t)
    assert s.shape == x.shape
    torch.testing.assert_close(s.flatten(1), gm.score_fn(sgm.VPSDE())(x.flatten(1), t))


@pytest.mark.parametrize("kwargs,err,match", [
    ({"means": [1.0, 2.0], "stds": [1.0]}, ValueError, "means"),
    ({"means": [[0.0], [1.0]], "stds": [1.0, -1.0]}, ValueError, "stds"),
    ({"means": [[0.0], [1.0]], "stds": [1.0, 1.0], "weights": [0.2, 0.2]}, ValueError, "weights"),
    ({"means": [[0.0], [1.0]], "stds": [1.0, 1.0, 1.0]}, ValueError, "stds"),
])
def test_invalid_mixture(kwargs, err, match):
    with pytest.raises(err, match=match):
        sgm.GaussianMixture(**kwargs)


def test_wrong_feature_count(gm):
    with pytest.raises(ValueError, match="features"):
        gm.log_prob(torch.zeros(3, 5, dtype=torch.float64))


def test_perturbed_score_is_the_score_at_the_marginal(gm):
    sde, t = sgm.SubVPSDE(), torch.linspace(0.01, 1, 40, dtype=torch.float64)
    x = torch.randn(40, 2, generator=gen(0), dtype=torch.float64)
    scale, std = sde.marginal(t)
    torch.testing.assert_close(gm.perturbed_score(x, scale, std), gm.score(x, t, sde), rtol=1e-13, atol=1e-13)
