"""The public sampling API: names, options, NFE accounting, seeding, dtypes, devices and bad input."""
import math

import pytest
import torch

import sgm
from sgm.samplers import time_grid
from conftest import SDES, gen, mixture

D = torch.float64
NAMES = sgm.samplers.available()


def test_adaptive_ode_counts_its_own_evaluations():
    gm, forward, calls = mixture(), sgm.VESDE(), []

    def score(x, t):
        calls.append(1)
        return gm.score(x, t, forward)

    out = sgm.sample(score, forward, (8, 2), sampler="ode", steps=2, generator=gen(0), dtype=D)
    assert out.nfe == len(calls) > 10


def test_progress_bar_runs(capsys):
    gm, forward = mixture(), sgm.VPSDE()
    out = sgm.sample(gm.score_fn(forward), forward, (4, 2), sampler="pc", steps=5, generator=gen(0), dtype=D,
                     progress=True)
    assert out.nfe == 9
    assert "pc" in capsys.readouterr().err


def test_image_shaped_state():
    gm, forward = sgm.GaussianMixture(torch.zeros(1, 12), [0.5], dtype=D), sgm.VPSDE()
    out = sgm.sample(gm.score_fn(forward), forward, (5, 3, 2, 2), sampler="ode", steps=10, method="heun2", dtype=D)
    assert out.x.shape == (5, 3, 2, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda(name):
    gm, forward = mixture(torch.float32).to(device="cuda"), sgm.VPSDE()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = sgm.sample(gm.score_fn(forward), forward, (64, 2), sampler=name, steps=10, generator=g,
                     dtype=torch.float32)
    assert out.x.device.type == "cuda" and bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize("sde_name", list(SDES))
def test_noise_level_inverse_and_geometric_grid(sde_name):
    forward = SDES[sde_name]()
    t = torch.linspace(1e-3, 1, 50, dtype=D)
    torch.testing.assert_close(forward.time_at_noise_level(forward.noise_level(t)), t, rtol=1e-12, atol=1e-14)
    sigmas = torch.tensor([n.std / n.scale for n in time_grid(forward, 9, "geometric").noisy], dtype=D)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(8), rtol=1e-10, atol=0)
    k = time_grid(forward, 9, "karras").noisy
    rho = torch.tensor([(n.std / n.scale) ** (1 / 7) for n in k], dtype=D)
    torch.testing.assert_close(rho[1:] - rho[:-1], (rho[1] - rho[0]).expand(8), rtol=1e-9, atol=0)


# --- bad input -------------------------------------------------------------------------------------------
def good(**kw):
    gm, forward = mixture(), sgm.VPSDE()
    args = dict(score=gm.score_fn(forward), sde=forward, shape=(4, 2), sampler="ddim", steps=5, dtype=D)
    args.update(kw)
    return sgm.sample(**args)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"sampler": "rk45"}, ValueError, "available: ancestral, ddim"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"steps": 2.5}, TypeError, "steps"),
    ({"eps": 0.0}, ValueError, "eps must lie in"),
    ({"eps": 1.0}, ValueError, "eps must lie in"),
    ({"spacing": "cosine"}, ValueError, "spacing must be one of"),
    ({"shape": (0, 2)}, ValueError, "shape"),
    ({"shape": "4x2"}, TypeError, "shape"),
    ({"dtype": torch.int64}, TypeError, "dtype"),
    ({"sde": "vp"}, TypeError, "sde"),
    ({"score": 3}, TypeError, "score"),
    ({"generator": 0}, TypeError, "generator"),
    ({"eta": 0.5, "sampler": "ode"}, TypeError, "takes no option"),
    ({"eta": -1.0}, ValueError, "eta"),
    ({"sampler": "ode", "method": "rk45"}, ValueError, "method must be one of"),
    ({"sampler": "pc", "predictor": "ode"}, ValueError, "predictor"),
    ({"sampler": "pc", "snr": 0.0}, ValueError, "snr"),
    ({"sampler": "langevin", "n_steps_each": 0}, ValueError, "n_steps_each"),
    ({"sampler": "ancestral", "variance": "small"}, ValueError, "variance"),
    ({"x_init": torch.zeros(3, 2, dtype=D)}, ValueError, "x_init"),
    ({"steps": 2000, "spacing": "leading"}, ValueError, "train_steps"),
])
def test_bad_arguments_are_named(kwargs, err, match):
    with pytest.raises(err, match=match):
        good(**kwargs)


@pytest.mark.parametrize("score,err,match", [
    (lambda x, t: x[:, :1], ValueError, "shape"),
    (lambda x, t: x.float(), TypeError, "dtype"),
    (lambda x, t: x.numpy(), TypeError, "tensor"),
    (lambda x, t: torch.where(t[:, None] < 0.5, x * math.nan, x), sgm.samplers.SamplerDiverged, "non-finite .* t=0.4"),
])
@pytest.mark.parametrize("name", NAMES)
def test_bad_scores_are_caught_at_the_first_bad_call(score, err, match, name):
    with pytest.raises(err, match=match):
        good(score=score, sampler=name, steps=6, spacing="uniform", eps=0.1,
             **{"ode": {"method": "euler"}, "restart": {"intervals": [(0.4, 1.0, 1, 3)]}}.get(name, {}))
