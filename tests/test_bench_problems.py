"""sgm.bench.problems: every side starts from one state at one noise level, and the reference is the exact flow
map to σ = 0 (closed form for a Gaussian, the limit of both sgm families); the chain score is exact on the
chain's timesteps and refuses any other time."""
import math

import pytest
import torch

import sgm
from sgm.bench import judge, problems
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
    # the target sample the comparison's SW₂ is judged against: the curves' (seed + 2); its floor the exact map's SW₂
    torch.testing.assert_close(a.reference, sgm.ring_mixture().sample(8, generator=gen(5)), rtol=0, atol=0)
    assert a.sw2_floor == judge.map_sw2(a.x_ref, a.reference) > 0
    with pytest.raises(ValueError, match="sde_name"):
        problems.make_problem("ring", sgm.ring_mixture(), "subvp", 8, 0)


def test_the_targets_run():
    assert list(problems.make_targets(quick=True)) == ["2d ring"]
    assert list(problems.make_targets(quick=False)) == list(problems.TARGETS)
    chosen = problems.make_targets(quick=True, names=["16d mixture"])
    assert list(chosen) == ["16d mixture"] and chosen["16d mixture"].dim == 16
    assert math.isclose(float(chosen["16d mixture"].weights.sum()), 1.0)


def _gaussian():
    m, s = torch.tensor([1.0, -2.0], dtype=D), torch.tensor([0.3, 0.7], dtype=D)
    return m, s, sgm.GaussianMixture(m[None], s[None], [1.0], dtype=D)


def test_the_exact_rectified_flow_map_of_a_gaussian_is_its_closed_form():
    """On ``x_t = (1 - t) x_0 + t ε`` a Gaussian ``N(m, diag s²)`` has ``p_t = N((1 - t) m, (1 - t)² s² + t²)`` and the
    flow keeps ``(x - (1 - t) m)/√((1 - t)² s² + t²)``: from the exact top ``t = 1`` (pure noise, ``x = z``) it ends
    at ``m + s z``, from ``t < 1`` at ``m + s (x̄ - m)/√(s² + ℓ²)`` with ``x̄ = x/(1 - t)``, ``ℓ = t/(1 - t)``. The RF
    problem's reference is the first."""
    m, s, gaussian = _gaussian()
    z = torch.randn(32, 2, generator=gen(0), dtype=D)
    torch.testing.assert_close(problems.exact_rf_flow_map(gaussian, z), m + s * z, rtol=0, atol=2e-7)
    t = 0.9
    x_bar, level = z / (1 - t), t / (1 - t)
    torch.testing.assert_close(problems.exact_rf_flow_map(gaussian, z, t),
                               m + s * (x_bar - m) / torch.sqrt(s**2 + level**2), rtol=0, atol=2e-7)
    p = problems.make_problem("gaussian", gaussian, "rf", 32, 0)
    assert torch.equal(p.x_T, p.z)  # the prior N(0, I) is p_1 itself
    torch.testing.assert_close(p.x_ref, m + s * p.z, rtol=0, atol=2e-7)


def test_the_edm_problem_starts_at_sigma_max_and_maps_to_the_closed_form():
    m, s, gaussian = _gaussian()
    p = problems.make_problem("gaussian", gaussian, "edm", 32, 0)
    assert p.sde == sgm.EDMPath() and p.sde.T == 80 and float(p.chain.sigmas[-1]) == 80
    torch.testing.assert_close(p.x_T, 80 * p.z)
    torch.testing.assert_close(p.x_ref, m + s * (p.x_T - m) / torch.sqrt(s**2 + 80**2), rtol=0, atol=1e-7)


def test_rectified_flow_runs_on_both_clocks_to_one_reference(bench_problems):
    """The RF problem's variants are RectifiedFlow() and RectifiedFlow(3) from t = 1 with the exact x̂_0: the same
    marginals on two clocks, so RK4 from the same x_T converges to the one reference on both (its error is that of
    40 steps and the last, Tweedie's jump from t = eps = 1e-4)."""
    p = bench_problems["rf"]
    assert [(v.label, v.sde) for v in p.variants] == [("", sgm.RectifiedFlow()), ("shift 3", sgm.RectifiedFlow(3))]
    for v in p.variants:
        assert v.chain_sde == v.sde
        model = problems.exact_model(p.target, v.sde)
        assert model.predicts == "x0"
        x = sgm.sample(model, v.sde, tuple(p.x_T.shape), sampler="ode", method="rk4", steps=40, spacing="logsnr",
                       eps=1e-4, x_init=p.x_T).x
        assert float((x - p.x_ref).norm(dim=1).median()) < 5e-5, v.label  # measured 6e-6, 8e-6
    assert bench_problems["vp"].variants[0].sde is bench_problems["vp"].sde  # one variant elsewhere
    assert problems.exact_model(p.target, sgm.VPSDE()).__name__ == "score"


def test_the_chain_model_of_rectified_flow_is_its_x0_on_the_chain_only():
    gm, rf = mixture(), sgm.RectifiedFlow(3)
    chain = rf.discretize(1000)
    model = problems.chain_model(gm, rf)
    x = torch.randn(8, 2, generator=gen(0), dtype=D)
    t = torch.full((8,), float(chain.t[-1]), dtype=D)  # t = 1: pure noise, x̂_0 is the mixture's mean
    assert model.predicts == "x0"
    torch.testing.assert_close(model(x, t), gm.prediction_fn(rf, "x0")(x, t), rtol=0, atol=0)
    torch.testing.assert_close(model(x, t)[0], (gm.weights[:, None] * gm.means).sum(0), rtol=1e-12, atol=1e-12)
    with pytest.raises(problems.OffChain):
        model(x, torch.full((8,), 0.9995, dtype=D))
    assert not hasattr(problems.chain_model(gm, sgm.VPSDE()), "predicts")  # a score on VP's chain


def test_the_flow_peers_velocity_is_the_paths_and_refuses_other_sigmas():
    """diffusers' flow prediction at flow sigma σ is RectifiedFlow()'s velocity ε̂ - x̂_0 at t = σ; for a Gaussian
    at the top σ = 1 it is ``x - m`` (x̂_0 = m, ε̂ = x)."""
    m, s, gaussian = _gaussian()
    x = torch.randn(8, 2, generator=gen(0), dtype=D)
    torch.testing.assert_close(problems.velocity_at(gaussian, x, 1.0), x - m, rtol=1e-12, atol=1e-12)
    rf = sgm.RectifiedFlow()
    torch.testing.assert_close(problems.velocity_at(gaussian, x, 0.3),
                               gaussian.prediction_fn(rf, "velocity")(x, torch.full((8,), 0.3, dtype=D)))
    with pytest.raises(ValueError, match="outside"):
        problems.velocity_at(gaussian, x, 157.0)
