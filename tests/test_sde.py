"""Forward SDEs: closed-form marginals, the discrete chains of DDPM and NCSN, and bad parameters."""

import pytest
import torch

import sgm


def linear_drift_coefficient(sde, t):
    return sde.drift(torch.ones(t.shape[0], 1, dtype=t.dtype), t)[:, 0]


def test_marginal_solves_the_moment_odes(sde):
    """For dx = a(t) x dt + g dW: d scale/dt = a·scale and d std²/dt = 2a·std² + g² (central differences)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-5
    (sp, dp), (sm, dm), (s, d) = sde.marginal(t + h), sde.marginal(t - h), sde.marginal(t)
    a, g = linear_drift_coefficient(sde, t), sde.diffusion(t)
    torch.testing.assert_close((sp - sm) / (2 * h), a * s, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close((dp**2 - dm**2) / (2 * h), 2 * a * d**2 + g**2, rtol=1e-7, atol=1e-6)


def test_vp_marginal_closed_form():
    sde, t = sgm.VPSDE(), torch.tensor([0.3, 1.0], dtype=torch.float64)
    log_mean = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    scale, std = sde.marginal(t)
    torch.testing.assert_close(scale, log_mean.exp(), rtol=1e-14, atol=0)
    torch.testing.assert_close(std, (1 - (2 * log_mean).exp()).sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(sgm.SubVPSDE().marginal(t)[1], 1 - (2 * log_mean).exp(), rtol=1e-14, atol=0)


def test_ve_marginal_and_prior():
    sde = sgm.VESDE()
    _, std = sde.marginal(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([0.01, 50.0], dtype=torch.float64), rtol=1e-14, atol=0)
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                          torch.tensor(50.0, dtype=torch.float64)).log_prob(x).sum(1)
    torch.testing.assert_close(sde.prior_logp(x), expected, rtol=1e-13, atol=0)


def test_ddpm_betas_are_ho_et_al():
    chain = sgm.VPSDE().discretize(1000)
    assert torch.equal(chain.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    torch.testing.assert_close(chain.alphas_cumprod, torch.cumprod(1 - chain.betas, 0), rtol=1e-14, atol=0)
    assert chain.t[0] == pytest.approx(1e-3) and chain.t[-1] == 1.0


def test_ddpm_chain_approximates_the_vp_marginal_at_first_order():
    """ᾱ_i of the chain vs exp(-B(t_i)): the gap shrinks like 1/N."""
    sde = sgm.VPSDE()
    gaps = []
    for n in (100, 1000):
        chain = sde.discretize(n)
        gaps.append(float((chain.scale - sde.marginal(chain.t)[0]).abs().max()))
    assert gaps[1] < 2e-3 and 7 < gaps[0] / gaps[1] < 13


def test_ncsn_levels_are_geometric_and_on_the_ve_marginal():
    sde, L = sgm.VESDE(sigma_min=0.01, sigma_max=1.0), 10
    ncsn = sde.discretize(L).sigmas.flip(0)  # σ_1 > … > σ_L
    expected = torch.tensor([1.0 * (0.01 / 1.0) ** (i / (L - 1)) for i in range(L)], dtype=torch.float64)
    torch.testing.assert_close(ncsn, expected, rtol=1e-13, atol=0)
    chain = sde.discretize(L)
    torch.testing.assert_close(chain.std, sde.marginal(chain.t)[1], rtol=1e-13, atol=0)


def test_subvp_chain_is_a_valid_forward_chain():
    chain = sgm.SubVPSDE().discretize(100)
    r = chain.scale[1:] / chain.scale[:-1]
    v = chain.std[1:] ** 2 - r**2 * chain.std[:-1] ** 2
    assert bool((v > 0).all())


@pytest.mark.parametrize("sde, N", [(sgm.VPSDE(), 1000), (sgm.SubVPSDE(), 7), (sgm.VESDE(), 10), (sgm.VESDE(), 1)])
def test_chain_index_is_the_nearest_timestep(sde, N):
    chain = sde.discretize(N)
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.rand(500, generator=g, dtype=torch.float64) * 1.2 - 0.1, chain.t,
                   (chain.t[1:] + chain.t[:-1]) / 2])  # out of range, on the timesteps, on the ties
    brute = (t[:, None] - chain.t).abs().argmin(dim=1)  # argmin takes the first, i.e. lower, of a tie
    assert torch.equal(chain.index(t), brute)
    assert torch.equal(chain.index(t[:500].reshape(20, 25)), brute[:500].reshape(20, 25))


def test_perturb_uses_the_marginal():
    sde, x0, z = sgm.VPSDE(), torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    scale, std = sde.marginal(t)
    torch.testing.assert_close(sde.perturb(x0, t, noise=z), scale[0] * x0 + std[0] * z)


def test_reverse_and_ode_drifts():
    sde, x, s = sgm.SubVPSDE(), torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    g2 = sde.diffusion(t)[:, None] ** 2
    torch.testing.assert_close(sde.reverse_drift(x, t, s), sde.drift(x, t) - g2 * s)
    torch.testing.assert_close(sde.ode_drift(x, t, s), sde.drift(x, t) - 0.5 * g2 * s)


@pytest.mark.parametrize("cls,kwargs,match", [
    (sgm.VPSDE, {"beta_min": 0.0}, "beta_min"),
    (sgm.VPSDE, {"beta_min": -1.0}, "beta_min"),
    (sgm.VPSDE, {"beta_min": 5.0, "beta_max": 1.0}, "beta_max"),
    (sgm.SubVPSDE, {"beta_max": float("nan")}, "beta_max"),
    (sgm.VESDE, {"sigma_min": 0.0}, "sigma_min"),
    (sgm.VESDE, {"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_max"),
    (sgm.VESDE, {"T": 0}, "T"),
])
def test_invalid_parameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_parameter_types():
    with pytest.raises(TypeError, match="beta_min"):
        sgm.VPSDE(beta_min="0.1")
    with pytest.raises(TypeError, match="N"):
        sgm.VPSDE().discretize(10.0)
    with pytest.raises(ValueError, match="N"):
        sgm.VESDE().discretize(0)
