"""Probability-flow log-likelihood against the exact log-density of the perturbed mixture."""
import functools
import math

import pytest
import torch

import sgm
from sgm.likelihood import bits_per_dim, log_likelihood
from conftest import SDES, gen, mixture

D = torch.float64
EPS = 1e-5


def exact_logp(gm, forward, x, t):
    return gm.log_prob(x, torch.full((x.shape[0],), t, dtype=D), forward)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_ode_likelihood_in_2d(sde_name):
    forward, gm = SDES[sde_name](), mixture()
    x = gm.sample(100, generator=gen(0))
    exact = exact_logp(gm, forward, x, EPS)
    out = log_likelihood(gm.score_fn(forward), forward, x, eps=EPS, rtol=1e-6, atol=1e-6)
    # with the SDE's prior N(0, prior_std² I) standing in for p_T (measured 0.0026 on VP, 0.0079 on VE)
    assert float((out.logp - exact).abs().mean()) <= 0.01
    # with the exact p_T the ODE itself is all that is left: measured 3e-6 (VP) and 4e-6 (VE) at rtol 1e-6
    with_exact_prior = log_likelihood(gm.score_fn(forward), forward, x, eps=EPS, rtol=1e-6, atol=1e-6,
                                      prior_logp=lambda y: exact_logp(gm, forward, y, forward.T))
    assert float((with_exact_prior.logp - exact).abs().mean()) <= 1e-4
    assert out.nfe == with_exact_prior.nfe > 20


@pytest.mark.parametrize("sde_name", list(SDES))
def test_ode_likelihood_in_16d(sde_name):
    g = gen(1)
    means = 1.5 * torch.randn(4, 16, generator=g, dtype=D)
    gm = sgm.GaussianMixture(means, 0.3 + 0.5 * torch.rand(4, 16, generator=g, dtype=D), [0.1, 0.2, 0.3, 0.4])
    forward = SDES[sde_name]()
    x = gm.sample(32, generator=gen(2))
    out = log_likelihood(gm.score_fn(forward), forward, x, eps=EPS, rtol=1e-5, atol=1e-5)
    assert float((out.logp - exact_logp(gm, forward, x, EPS)).abs().mean()) <= 0.05


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ode_likelihood_on_rectified_flow(shift):
    """On rectified flow the prior N(0, I) is p_1 exactly, so the ODE to T = 1 is all there is: with the exact
    velocity (or x̂_0) the error is the solver's (measured 1.3e-6 and 1.7e-6 at rtol 1e-6). A score gives no velocity
    at α = 0: refused at T, and below it (t_max = 1 - 1e-5) with the exact p_t_max as the prior it agrees as well."""
    forward, gm = sgm.RectifiedFlow(shift), mixture()
    x = gm.sample(100, generator=gen(0))
    exact = exact_logp(gm, forward, x, EPS)
    for kind in ("velocity", "x0"):
        out = log_likelihood(gm.prediction_fn(forward, kind), forward, x, eps=EPS, rtol=1e-6, atol=1e-6)
        assert float((out.logp - exact).abs().mean()) <= 1e-5, kind
    with pytest.raises(ValueError, match="t_max"):
        log_likelihood(gm.score_fn(forward), forward, x, eps=EPS)
    t_max = 1 - 1e-5
    below = log_likelihood(gm.score_fn(forward), forward, x, eps=EPS, rtol=1e-6, atol=1e-6, t_max=t_max,
                           prior_logp=lambda y: exact_logp(gm, forward, y, t_max))
    assert float((below.logp - exact).abs().mean()) <= 1e-5


@functools.lru_cache(maxsize=None)
def single_probe_estimates(probe, k=200):
    """Four points of the mixture, their exact-divergence log-likelihood on VP, and ``K = 200`` single-probe
    Hutchinson estimates of it per point ``(4, K)`` (computed once per probe kind)."""
    forward, gm = sgm.VPSDE(), mixture()
    x = gm.sample(4, generator=gen(0))
    exact = log_likelihood(gm.score_fn(forward), forward, x, rtol=1e-6, atol=1e-6).logp
    repeated = x.repeat_interleave(k, 0)
    est = log_likelihood(gm.score_fn(forward), forward, repeated, rtol=1e-6, atol=1e-6, divergence="hutchinson",
                         probe=probe, generator=gen(3)).logp.reshape(4, k)
    return x, exact, est


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """K single-probe estimates per point: their mean is the exact-divergence log-likelihood
    within 4 standard errors."""
    _, exact, est = single_probe_estimates(probe)
    se = est.std(1) / math.sqrt(est.shape[1])
    assert bool(((est.mean(1) - exact).abs() <= 4 * se).all()), (est.mean(1), exact, se)
    assert bool((est.std(1) > 0).all())  # the estimator does vary with the probe


def test_n_probes_average_the_single_probe_estimates():
    """``n_probes = K`` is within 4 standard errors of a K-probe mean (``sd/√K``, sd of the single-probe estimates)
    of the exact value. With Rademacher probes only: the probe kind decides how the probes are drawn (above), not
    the averaging over them, one VJP per probe (4.7 s a kind)."""
    forward, gm = sgm.VPSDE(), mixture()
    x, exact, est = single_probe_estimates("rademacher")
    k = est.shape[1]
    averaged = log_likelihood(gm.score_fn(forward), forward, x, rtol=1e-6, atol=1e-6, divergence="hutchinson",
                              probe="rademacher", n_probes=k, generator=gen(4)).logp
    assert bool(((averaged - exact).abs() <= 4 * est.std(1) / math.sqrt(k)).all())


def test_fixed_step_method_and_bits_per_dim():
    forward, gm = sgm.SubVPSDE(), mixture()
    x = gm.sample(50, generator=gen(0))
    out = log_likelihood(gm.score_fn(forward), forward, x, method="rk4", steps=200)
    assert float((out.logp - exact_logp(gm, forward, x, EPS)).abs().mean()) <= 0.02
    assert out.nfe == 4 * 200
    # a uniform model on [-1, 1]^D (log p = -D log 2) is 8 bits per 8-bit dimension
    torch.testing.assert_close(bits_per_dim(torch.tensor([-64 * math.log(2.0)]), 64), torch.tensor([8.0]))


@pytest.mark.parametrize("kwargs,err,match", [
    ({"divergence": "trace"}, ValueError, "divergence"), ({"probe": "sphere"}, ValueError, "probe"),
    ({"method": "rk45"}, ValueError, "method"), ({"n_probes": 0}, ValueError, "n_probes"),
    ({"eps": 1.5}, ValueError, "eps"), ({"rtol": 0.0}, ValueError, "rtol"),
    ({"t_max": 1.5}, ValueError, "t_max"), ({"t_max": 1e-6}, ValueError, "eps"),
])
def test_bad_arguments(kwargs, err, match):
    forward, gm = sgm.VPSDE(), mixture()
    with pytest.raises(err, match=match):
        log_likelihood(gm.score_fn(forward), forward, gm.sample(2), **kwargs)
