"""DDPM, DDIM and NCSN recovered exactly: each published algorithm written out here, independently of sgm,
and compared element by element for the same noise and the same model."""
import math

import pytest
import torch

import sgm
from sgm.samplers import TimeGrid, ancestral, ddim, time_grid
from conftest import gen, mixture

D = torch.float64


def eps_net(x, i):
    """A fixed nonlinear noise-prediction model of (x, integer timestep i)."""
    w = torch.tensor([[0.7, -0.3], [0.2, 0.9]], dtype=D)
    return torch.tanh(x @ w + (i.to(D) / 1000.0)[:, None]) * 0.8 + 0.1 * x


def ddpm_algorithm_2(x, n_steps, variance, g):
    """Ho et al. (2020), Algorithm 2, with β_t = linspace(1e-4, 0.02, T); t = T … 1, z = 0 at t = 1."""
    betas = torch.linspace(1e-4, 0.02, n_steps, dtype=D)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    for t in range(n_steps, 0, -1):
        i = t - 1
        z = torch.randn(x.shape, generator=g, dtype=D) if t > 1 else torch.zeros_like(x)
        if variance == "beta":
            sigma = betas[i].sqrt()
        else:
            sigma = ((1 - abar[i - 1]) / (1 - abar[i]) * betas[i]).sqrt() if t > 1 else torch.tensor(0.0, dtype=D)
        eps = eps_net(x, torch.full((x.shape[0],), i))
        x = (x - (1 - alphas[i]) / (1 - abar[i]).sqrt() * eps) / alphas[i].sqrt() + sigma * z
    return x


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_is_ancestral_sampling_on_the_vp_chain(variance):
    sde = sgm.VPSDE()
    score = sgm.ScoreModel(eps_net, sde, "eps", chain=sde.discretize(1000))
    out = sgm.sample(score, sde, (16, 2), sampler="ancestral", steps=1000, spacing="leading", variance=variance,
                     generator=gen(0), dtype=D)
    g = gen(0)
    expected = ddpm_algorithm_2(torch.randn((16, 2), generator=g, dtype=D), 1000, variance, g)
    assert out.nfe == 1000
    torch.testing.assert_close(out.x, expected, rtol=1e-10, atol=1e-10)


def ddim_update(x, timesteps, eta, g):
    """Song, Meng & Ermon (2021), eq. 12, over the decreasing sub-sequence τ, with ᾱ_{τ_0 - 1} = 1."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=D), 0)
    for k, t in enumerate(timesteps):
        a_t = abar[t]
        a_prev = abar[timesteps[k + 1]] if k + 1 < len(timesteps) else torch.tensor(1.0, dtype=D)
        eps = eps_net(x, torch.full((x.shape[0],), t))
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=g, dtype=D)
    return x


@pytest.mark.parametrize("timesteps", [
    list(range(980, -1, -20)),                       # "leading", 50 steps
    [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],  # "trailing", 10 steps
    [973, 811, 640, 402, 390, 120, 37, 5],           # an arbitrary sub-sequence
])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_is_song_et_al_for_any_subsequence(timesteps, eta):
    sde = sgm.VPSDE()
    chain = sde.discretize(1000)
    score = sgm.ScoreModel(eps_net, sde, "eps", chain=chain)
    x = torch.randn((16, 2), generator=gen(1), dtype=D)
    out = ddim(score, sde, x, TimeGrid.from_chain(chain, timesteps), eta=eta, generator=gen(2))
    torch.testing.assert_close(out.x, ddim_update(x, timesteps, eta, gen(2)), rtol=1e-10, atol=1e-10)


def test_ddim_spacings_are_diffusers_leading_and_trailing():
    sde = sgm.VPSDE()
    chain = sde.discretize(1000)
    for spacing, expected in [("leading", list(range(980, -1, -20))), ("trailing", list(range(999, 0, -20)))]:
        grid = time_grid(sde, 50, spacing=spacing)
        assert [n.t for n in grid.noisy] == [float(chain.t[i]) for i in expected]


@pytest.mark.parametrize("spacing", ["uniform", "leading"])
def test_ddim_eta_one_is_the_ddpm_ancestral_step(spacing):
    sde, gm = sgm.VPSDE(), mixture()
    grid = time_grid(sde, 40, spacing=spacing)
    x = torch.randn((64, 2), generator=gen(0), dtype=D)
    a = ddim(gm.score_fn(sde), sde, x, grid, eta=1.0, generator=gen(5))
    b = ancestral(gm.score_fn(sde), sde, x, grid, variance="posterior", generator=gen(5))
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


def ncsn_algorithm_1(x, model, sigmas, n_each, eps, g):
    """Song & Ermon (2019), Algorithm 1: annealed Langevin dynamics over σ_1 > … > σ_L."""
    for sigma in sigmas:
        alpha = eps * sigma**2 / sigmas[-1] ** 2
        for _ in range(n_each):
            z = torch.randn(x.shape, generator=g, dtype=D)
            x = x + alpha / 2 * model(x, sigma) + math.sqrt(alpha) * z
    return x


def test_ncsn_is_annealed_langevin_on_the_ve_levels():
    sde, L = sgm.VESDE(sigma_min=0.01, sigma_max=1.0), 10
    sigmas = [1.0 * 0.01 ** (i / (L - 1)) for i in range(L)]

    def model(x, sigma):  # a noise-conditional score model s(x, σ)
        return -x / (0.25 + sigma**2) + 0.05 * torch.sin(3 * x) / sigma

    chain = sde.discretize(L)
    score = sgm.ScoreModel(lambda x, i: model(x, chain.std[i].reshape(-1, 1)), sde, "score", chain=chain)
    out = sgm.sample(score, sde, (16, 2), sampler="langevin", steps=L, spacing="trailing", train_steps=L,
                     denoise=False, n_steps_each=7, step_size=2e-5, generator=gen(0), dtype=D)
    g = gen(0)
    expected = ncsn_algorithm_1(1.0 * torch.randn((16, 2), generator=g, dtype=D), model, sigmas, 7, 2e-5, g)
    assert out.nfe == L * 7
    torch.testing.assert_close(out.x, expected, rtol=1e-10, atol=1e-10)
