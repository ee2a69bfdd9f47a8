"""The mixture's classes and its posterior under a linear Gaussian observation, against independent computations:
autograd of log-densities, Bayes' rule written out, scipy's Gaussian densities and the unnormalised posterior
p_0(x) N(y; A x, σ_y² I) (whose ratio to the closed form must be constant in x)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import sgm
from conftest import gen

D = torch.float64


def labelled():
    """Four components in 3-D, two classes: class 0 = components {0, 2}, class 1 = {1, 3}."""
    means = [[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0], [0.0, -2.0, 0.5], [1.0, 2.0, 2.0]]
    stds = [[0.3, 0.4, 0.5], [0.6, 0.2, 0.3], [0.5, 0.5, 0.4], [0.3, 0.3, 0.6]]
    return sgm.GaussianMixture(means, stds, [0.1, 0.2, 0.3, 0.4], dtype=D, labels=[0, 1, 0, 1])


@pytest.mark.parametrize("t", [1e-3, 0.3, 1.0])
def test_class_score_and_posterior_are_bayes(sde, t):
    gm, n = labelled(), 64
    x = sde.perturb(gm.sample(n, generator=gen(0)), torch.full((n,), t, dtype=D), generator=gen(1))
    tt = torch.full((n,), t, dtype=D)
    y = torch.randint(0, 2, (n,), generator=gen(2))
    log_post = gm.class_log_posterior(x, tt, sde)
    # Bayes written out: p_t(y | x) = p(y) p_t(x | y) / p_t(x), with p_t(x | y) the renormalised class mixture.
    for c in range(2):
        expected = (math.log(float(gm.class_weights[c])) + gm.conditional(c).log_prob(x, tt, sde)
                    - gm.log_prob(x, tt, sde))
        torch.testing.assert_close(log_post[:, c], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_post.exp().sum(1), torch.ones(n, dtype=D), rtol=1e-12, atol=1e-12)
    # The class score is autograd of log p_t(x | y); ∇ log p_t(y | x) = s(x|y) - s(x).
    xg = x.clone().requires_grad_(True)
    cond_lp = torch.stack([gm.conditional(c).log_prob(xg, tt, sde) for c in range(2)], 1).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(cond_lp, xg)
    torch.testing.assert_close(gm.class_score(x, tt, sde, y), grad, rtol=1e-9, atol=1e-9)
    xg = x.clone().requires_grad_(True)
    (grad_post,) = torch.autograd.grad(gm.class_log_posterior(xg, tt, sde).gather(1, y[:, None]).sum(), xg)
    torch.testing.assert_close(gm.class_score(x, tt, sde, y) - gm.score(x, tt, sde), grad_post, rtol=1e-9, atol=1e-9)
    # The conditional-score convention: label n_classes is "no label", the unconditional score.
    fn = gm.class_score_fn(sde)
    mixed = y.clone()
    mixed[::2] = 2
    out = fn(x, tt, mixed)
    torch.testing.assert_close(out[::2], gm.score(x, tt, sde)[::2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1::2], gm.class_score(x, tt, sde, y)[1::2], rtol=1e-12, atol=1e-12)


def test_default_labels_and_bad_labels():
    gm = sgm.GaussianMixture([[0.0], [1.0]], 0.5, dtype=D)
    assert gm.labels.tolist() == [0, 1] and gm.n_classes == 2
    with pytest.raises(ValueError, match="labels must use every class"):
        sgm.GaussianMixture([[0.0], [1.0]], 0.5, labels=[0, 2])
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(2,\)"):
        sgm.GaussianMixture([[0.0], [1.0]], 0.5, labels=[0])
    x, t, sde = torch.zeros(4, 1, dtype=D), torch.full((4,), 0.5, dtype=D), sgm.VPSDE()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        gm.class_score(x, t, sde, 2)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        gm.class_score(x, t, sde, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be integers"):
        gm.class_score(x, t, sde, torch.zeros(4))


def observation(gm, m=2, sigma_y=0.3, seed=0):
    g = gen(seed)
    A = torch.randn(m, gm.dim, generator=g, dtype=D)
    x0 = gm.sample(1, generator=g)[0]
    return A, A @ x0 + sigma_y * torch.randn(m, generator=g, dtype=D), sigma_y


def test_linear_posterior_is_prior_times_likelihood():
    gm = labelled()
    A, y, sigma_y = observation(gm)
    post = gm.linear_posterior(A, y, sigma_y)
    x = gm.sample(200, generator=gen(5)) + 0.5 * torch.randn(200, 3, generator=gen(6), dtype=D)
    unnorm = gm.log_prob(x) + torch.from_numpy(
        multivariate_normal(np.zeros(2), sigma_y**2 * np.eye(2)).logpdf((y[None] - x @ A.T).numpy()))
    ratio = post.log_prob(x) - unnorm
    torch.testing.assert_close(ratio, ratio[:1].expand(200), rtol=0, atol=1e-9)  # a constant: the evidence
    # and the constant is minus the log-evidence log p(y) = log Σ_k w_k N(y; A μ_k, A Σ_k Aᵀ + σ_y² I) (scipy).
    evidence = sum(float(w) * multivariate_normal((A @ mu).numpy(), (A @ torch.diag(s**2) @ A.T).numpy()
                                                  + sigma_y**2 * np.eye(2)).pdf(y.numpy())
                   for w, mu, s in zip(gm.weights, gm.means, gm.stds))
    assert abs(float(ratio[0]) + math.log(evidence)) < 1e-9


@pytest.mark.parametrize("t", [1e-3, 0.4, 1.0])
def test_posterior_score_is_autograd_of_its_log_prob(sde, t):
    gm = labelled()
    post = gm.linear_posterior(*observation(gm))
    x = sde.perturb(post.sample(32, generator=gen(0)), torch.full((32,), t, dtype=D), generator=gen(1))
    tt = torch.full((32,), t, dtype=D)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(post.log_prob(xg, tt, sde).sum(), xg)
    torch.testing.assert_close(post.score(x, tt, sde), grad, rtol=1e-9, atol=1e-9)


def test_posterior_samples_and_moments():
    gm = labelled()
    post = gm.linear_posterior(*observation(gm))
    n = 100_000
    x = post.sample(n, generator=gen(3))
    mean, cov = post.moments()
    sd = cov.diagonal().sqrt()
    assert bool(((x.mean(0) - mean).abs() <= 4 * sd / math.sqrt(n)).all())  # 4 standard errors
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=float(4 * cov.abs().max() * math.sqrt(2 / n)) * 2)


def test_observation_shapes_are_checked():
    gm = labelled()
    with pytest.raises(ValueError, match=r"A must have shape \(m, 3\)"):
        gm.linear_posterior(torch.ones(2, 2), torch.ones(2), 0.1)
    with pytest.raises(ValueError, match="y must have 2 entries"):
        gm.linear_posterior(torch.ones(2, 3), torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="sigma_y must be > 0"):
        gm.linear_posterior(torch.ones(2, 3), torch.ones(2), 0.0)
