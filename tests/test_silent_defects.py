"""Defects that once gave silent wrong results (issue 19), each with the check that now catches it."""
import pytest
import torch

import sgm
from sgm.inverse import LinearObservation, inpainting, posterior_score
from conftest import gen

D = torch.float64


def test_full_mixture_score_takes_each_samples_own_time():
    """The exact posterior's score with per-sample times equals the score at each time alone (it once used the
    first time for the whole batch: off by up to 15)."""
    gm = sgm.random_mixture(3, k=4, seed=11)
    post = gm.linear_posterior(torch.tensor([[1.0, 0.0, 0.5]], dtype=D), torch.tensor([0.3], dtype=D), 0.2)
    path, x = sgm.VPSDE(), torch.randn(6, 3, generator=gen(0), dtype=D)
    t = torch.linspace(0.05, 0.95, 6, dtype=D)
    batch = post.score(x, t, path)
    one_by_one = torch.cat([post.score(x[i:i + 1], t[i:i + 1], path) for i in range(6)])
    torch.testing.assert_close(batch, one_by_one, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.denoise(x, t, path),
                               torch.cat([post.denoise(x[i:i + 1], t[i:i + 1], path) for i in range(6)]))


@pytest.mark.parametrize("path", [sgm.VPSDE(), sgm.VESDE(), sgm.CosineVPSDE(), sgm.RectifiedFlow()], ids=repr)
def test_the_exact_target_refuses_times_outside_the_path(path):
    """Negative times always; beyond T only where the extrapolated alpha turns negative (cosine, rectified flow):
    VP and VE stay Gaussian perturbations there, and EDM's churn evaluates at sigma(1 + gamma) > sigma(T)."""
    gm, x = sgm.random_mixture(2, seed=1), torch.zeros(3, 2, dtype=D)
    late = torch.full((3,), path.T * 1.01, dtype=D)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T="):
        gm.score(x, torch.full((3,), -0.1, dtype=D), path)
    if isinstance(path, (sgm.CosineVPSDE, sgm.RectifiedFlow)):
        with pytest.raises(ValueError, match=r"t must lie in \[0, T="):
            gm.score(x, late, path)
    else:
        assert bool(torch.isfinite(gm.score(x, late, path)).all())


def test_nan_parameters_and_observations_are_refused():
    with pytest.raises(ValueError, match="means must be finite"):
        sgm.GaussianMixture([[float("nan"), 0.0]], [1.0])
    with pytest.raises(ValueError, match="stds must all be finite"):
        sgm.GaussianMixture([[0.0, 0.0]], [float("inf")])
    with pytest.raises(ValueError, match="weights must be positive"):
        sgm.GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [float("nan"), 0.5])
    with pytest.raises(ValueError, match="y must be finite"):
        LinearObservation(inpainting(torch.tensor([True, False])), [float("nan")], 0.1)


def test_a_diverging_guidance_stops_with_sampler_diverged():
    """DPS with a small σ_y on a 4-D mixture ran to 1e77 and returned it: the state check now stops it, naming the
    time and the bound."""
    gm = sgm.random_mixture(4, k=4, seed=3)
    obs = LinearObservation(torch.eye(4, dtype=D)[:2], torch.tensor([3.0, -2.0], dtype=D), 0.05)
    path = sgm.VPSDE()
    dps = posterior_score(gm.score_fn(path), path, obs, method="dps")
    with pytest.raises(sgm.samplers.SamplerDiverged, match="left the plausible range"):
        sgm.sample(dps, path, (64, 4), "ancestral", steps=100, generator=gen(0), dtype=D)
