"""The cosine VP process (Nichol & Dhariwal, 2021): the same checks as the other SDEs, and its chain is
improved DDPM's (diffusers' squaredcos_cap_v2, computed independently by diffusers)."""
import math

import pytest
import torch

import sgm
from conftest import gen, mixture
from test_distribution import assert_matches_mixture
import test_sde

D = torch.float64


def test_moment_odes_and_closed_form():
    sde = sgm.CosineVPSDE()
    test_sde.test_marginal_solves_the_moment_odes(sde)
    t = torch.tensor([0.0, 0.25, 0.5, 0.9], dtype=D)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    scale, std = sde.marginal(t)
    torch.testing.assert_close(scale**2, f(t) / f(torch.zeros(1, dtype=D)), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(scale**2 + std**2, torch.ones(4, dtype=D), rtol=1e-14, atol=1e-14)
    sigma = torch.tensor([1e-3, 0.5, 3.0, 100.0], dtype=D)
    # σ = 1e-3 round-trips through ᾱ = 1/(1 + σ²) = 1 - 1e-6: σ² keeps ε/σ² ≈ 2e-10 of its relative precision there,
    # and acos near 1 amplifies it (measured 1.5e-10 on one CPU, below 1e-10 on another), so 1e-9
    torch.testing.assert_close(sde.noise_level(sde.time_at_noise_level(sigma)), sigma, rtol=1e-9, atol=0)


def test_chain_is_diffusers_squaredcos_cap_v2():
    diffusers = pytest.importorskip("diffusers")
    for n in (1000, 50):
        theirs = diffusers.DDPMScheduler(num_train_timesteps=n, beta_schedule="squaredcos_cap_v2")
        chain = sgm.CosineVPSDE().discretize(n)
        torch.testing.assert_close(chain.betas.float(), theirs.betas, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(chain.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=1e-5, atol=1e-7)
    # away from the clipped end the chain sits on the continuous marginal: ᾱ((i+1)/N) exactly, until a β is clipped
    chain, sde = sgm.CosineVPSDE().discretize(1000), sgm.CosineVPSDE()
    torch.testing.assert_close(chain.scale[:990], sde.marginal(chain.t[:990])[0], rtol=1e-10, atol=1e-12)


def test_samplers_draw_the_mixture_on_the_cosine_process():
    sde, gm, n = sgm.CosineVPSDE(), mixture(), 10_000
    for name in ("ddim", "ancestral"):
        out = sgm.sample(gm.score_fn(sde), sde, (n, 2), sampler=name, steps=500, generator=gen(1), dtype=D)
        assert_matches_mixture(out.x, gm, n)


@pytest.mark.parametrize("kwargs,match", [({"T": 1.5}, "T must be <= 1"), ({"s": 0.0}, "s must be > 0")])
def test_bad_cosine_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sgm.CosineVPSDE(**kwargs)
