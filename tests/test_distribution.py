"""Every sampler, with the exact score and generous steps, draws the mixture: mode weights, per-mode means
and standard deviations within Monte-Carlo error, and a sliced Wasserstein distance at the data-vs-data floor.

Tolerances are 4 standard errors of each statistic at the sample size used (two-sided p ≈ 6e-5 per
statistic, so a correct sampler fails by chance about once in 500 runs of the whole file):
mode weight √(w(1-w)/n), per-mode mean σ_k/√n_k, per-mode standard deviation σ_k/√(2 n_k).
"""
import math

import pytest
import torch

import sgm
from sgm import metrics
from conftest import SDES, gen, mixture

D = torch.float64
N = 10_000
# Each registered sampler at its registry entry's steps and options (on its default grid), and EDM's stochastic
# Heun (churn), which its entry's deterministic options leave out.
SETTINGS = {name: (sgm.samplers.entry(name).steps, dict(sgm.samplers.entry(name).options))
            for name in sgm.samplers.available()}
SETTINGS["heun churn"] = (250, {"churn": 5.0})
# The 95th percentile of SW₂(target sample, target sample) over 20 pairs at n = 1e4 (the floor is wide:
# SW₂ is dominated by the binomial scatter of mass between modes 4 apart).
SW_FLOOR_95 = 0.15


def assert_matches_mixture(x, gm, n):
    comp = gm.responsibilities(x).argmax(1)
    counts = torch.bincount(comp, minlength=gm.n_components).to(D)
    w = gm.weights
    torch.testing.assert_close(counts / n, w, rtol=0, atol=4 * float((w * (1 - w) / n).sqrt().max()))
    for k in range(gm.n_components):
        xk, nk = x[comp == k], float(counts[k])
        sd = gm.stds[k]
        assert bool(((xk.mean(0) - gm.means[k]).abs() <= 4 * sd / math.sqrt(nk)).all()), (k, xk.mean(0))
        assert bool(((xk.std(0) - sd).abs() <= 4 * sd / math.sqrt(2 * nk)).all()), (k, xk.std(0))


# One path per family of default grids (sgm.samplers.grid.path_family): VP and VE. Sub-VP, of VP's family, took the
# same grids and the same code in every sampler (none branches on the path; each reads only α, σ and their
# derivatives), so its 21 runs repeated VP's; rectified flow: tests/test_rectified_flow.py.
@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_samples_match_the_mixture(name, sde_name):
    forward, gm = SDES[sde_name](), mixture()
    steps, options = SETTINGS[name]
    out = sgm.sample(gm.score_fn(forward), forward, (N, 2), sampler=name.split()[0], steps=steps, generator=gen(1),
                     dtype=D, **options)
    assert_matches_mixture(out.x, gm, N)
    sw = metrics.sliced_wasserstein(out.x, gm.sample(N, generator=gen(2)), n_projections=200, generator=gen(3))
    assert sw < SW_FLOOR_95
