"""sgm.bench.problems: every side starts from one state at one noise level, and the reference is the exact flow
map to σ = 0 (closed form for a Gaussian, the limit of both sgm families); the chain score is exact on the
chain's timesteps and refuses any other time."""
import math

import pytest
import torch

import sgm
from sgm.bench import problems
from conftest import gen, mixture

D = torch.float64


def test_both_families_start_at_the_chains_top_noise_level(bench_problems):
    """VP: sgm's continuous SDE ends at the DDPM chain's ᾱ_999, so the continuous and chain grids and the peers
    start at one noise level from one x_T; VE: the chain's top level is σ_max."""
    for p in bench_problems.values():
        top = p.sde.marginal(torch.tensor(p.sde.T, dtype=D))
        torch.testing.assert_close(torch.stack(top), torch.stack([p.chain.scale[-1], p.chain.std[-1]]),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(p.x_T, p.z * p.sde.prior_std)
    assert bench_problems["vp"].chain.betas is not None and 1.005 < bench_problems["vp"].sde.T < 1.01
    assert bench_problems["ve"].sde.T == 1 and float(bench_problems["ve"].chain.sigmas[-1]) == pytest.approx(50)


def test_the_exact_flow_map_of_a_gaussian_is_its_closed_form():
    """For N(m, diag s²) the flow ``dx̄/dσ = -σ ∇log p_σ(x̄)`` keeps ``(x̄ - m)/√(s² + σ²)``: from σ_top to 0,
    ``x̄ ↦ m + s (x̄ - m)/√(s² + σ_top²)``. The map stops at σ = 0, not at an ``eps`` (there it would be off by
    ``s/√(s² + σ(eps)²)`` - 1 ≈ 1e-3 here)."""
    m, s, top = torch.tensor([1.0, -2.0], dtype=D), torch.tensor([0.3, 0.7], dtype=D), 50.0
    gaussian = sgm.GaussianMixture(m[None], s[None], [1.0], dtype=D)
    x_bar = top * torch.randn(32, 2, generator=gen(0), dtype=D)
    torch.testing.assert_close(problems.exact_flow_map(gaussian, top, x_bar),
                               m + s * (x_bar - m) / torch.sqrt(s**2 + top**2), rtol=0, atol=1e-7)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_the_reference_is_the_limit_of_both_families(bench_problems, sde_name):
    """RK4 on the continuous SDE and DDIM on the chain's 1000 timesteps both converge to the reference (RK4's
    error is that of its last step, Tweedie's jump from σ(eps) ≈ 0.01 to 0, O(σ²) ≈ 2e-4 here; DDIM's is first
    order, ≈ 1e-3 at 1000 steps; the median, as a draw on a basin boundary may go either way)."""
    p = bench_problems[sde_name]
    rk4 = sgm.sample(p.target.score_fn(p.sde), p.sde, tuple(p.x_T.shape), sampler="ode", method="rk4", steps=200,
                     spacing="logsnr", eps=1e-4, x_init=p.x_T).x
    ddim = sgm.sample(problems.on_chain_score(p.target, p.chain), p.chain_sde, tuple(p.x_T.shape), sampler="ddim",
                      steps=1000, spacing="trailing", x_init=p.x_T).x
    assert float((rk4 - p.x_ref).norm(dim=1).median()) < 5e-4
    assert float((ddim - p.x_ref).norm(dim=1).median()) < 5e-3


def test_the_chain_score_is_exact_on_the_chain_and_refuses_other_times():
    gm, chain = mixture(), sgm.VPSDE().discretize(1000)
    score = problems.on_chain_score(gm, chain)
    x = torch.randn(16, 2, generator=gen(0), dtype=D)
    for i in (0, 123, 999):
        t = torch.full((16,), float(chain.t[i]), dtype=D)
        torch.testing.assert_close(score(x, t), gm.perturbed_score(x, chain.scale[i], chain.std[i]), rtol=1e-12,
                                   atol=1e-12)
        # the peers' noise prediction at the chain's σ_i is the chain's exact ε
        torch.testing.assert_close(problems.eps_at(gm, x, float(chain.sigmas[i])), -chain.std[i] * score(x, t),
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(problems.OffChain, match="0.5005"):
        score(x, torch.full((16,), 0.5005, dtype=D))
    on_then_off = torch.cat([torch.full((8,), float(chain.t[500]), dtype=D), torch.full((8,), 0.5005, dtype=D)])
    with pytest.raises(problems.OffChain):  # every row is checked, not only the first
        score(x, on_then_off)


def test_problems_are_reproducible_and_refuse_an_unknown_sde():
    a, b = (problems.make_problem("ring", sgm.ring_mixture(), "ve", 8, 3) for _ in range(2))
    assert torch.equal(a.z, b.z) and torch.equal(a.x_ref, b.x_ref) and a.x_ref.shape == (8, 2)
    assert not torch.equal(a.z, problems.make_problem("ring", sgm.ring_mixture(), "ve", 8, 4).z)
    with pytest.raises(ValueError, match="sde_name"):
        problems.make_problem("ring", sgm.ring_mixture(), "subvp", 8, 0)


def test_the_targets_run():
    assert list(problems.make_targets(quick=True)) == ["2d ring"]
    assert list(problems.make_targets(quick=False)) == list(problems.TARGETS)
    chosen = problems.make_targets(quick=True, names=["16d mixture"])
    assert list(chosen) == ["16d mixture"] and chosen["16d mixture"].dim == 16
    assert math.isclose(float(chosen["16d mixture"].weights.sum()), 1.0)
