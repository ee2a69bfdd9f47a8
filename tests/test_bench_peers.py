"""sgm.bench.peers: each peer library is one module with the same two functions; diffusers' configurations are
generated from options, driven at their own noise levels by the exact ε, agree with sgm where the algorithm is the
same, and a configuration that fails is a row."""
import importlib
import math

import pytest
import torch

import sgm
from sgm.bench import peers, problems, runs
from sgm.bench.peers import diffusers as peer

D = torch.float64
needs_diffusers = pytest.mark.skipif(not peer.available(), reason="diffusers is not installed")


def test_every_peer_module_offers_the_peer_functions(bench_problems, monkeypatch):
    for name in peers.PEERS:
        module = importlib.import_module(f"sgm.bench.peers.{name}")
        assert callable(module.available) and callable(module.rows) and callable(module.rerun)
    monkeypatch.setattr(peer, "rows", lambda problem, nfes: [{"side": "diffusers", "nfe_budget": n} for n in nfes])
    monkeypatch.setattr(peer, "available", lambda: True)
    assert peers.peer_rows(bench_problems["vp"], (5, 10)) == [{"side": "diffusers", "nfe_budget": 5},
                                                              {"side": "diffusers", "nfe_budget": 10}]
    monkeypatch.setattr(peer, "available", lambda: False)
    assert peers.installed() == [] and peers.peer_rows(bench_problems["vp"], (5,)) == []


@needs_diffusers
def test_peer_configurations_are_generated_from_options():
    configs = peer.configs()
    labels = [c.label for c in configs]
    assert len(labels) == len(set(labels))
    for family in ("DDIM", "DPM-Solver++ 2M", "DPM-Solver++ 3M", "DPM-Solver 2M", "DPM-Solver 3M",
                   "DPM-Solver++ singlestep 2", "DPM-Solver++ singlestep 3", "DPM-Solver singlestep 3",
                   "UniPC bh1 2", "UniPC bh1 3", "UniPC bh2 2", "UniPC bh2 3", "DEIS 2", "DEIS 3", "Heun", "Euler",
                   "LMS"):
        assert any(label.startswith(f"diffusers {family}") for label in labels), family
    for spacing in peer.SPACINGS:
        assert any(label.endswith(f"Euler, {spacing}, karras-sigmas") for label in labels)
    assert any("lu-lambdas" in label and "DPM-Solver++ 3M" in label for label in labels)
    assert not any("lu-lambdas" in label for label in labels if "UniPC" in label or "Euler" in label)


@needs_diffusers
def test_peers_are_driven_at_their_own_noise_levels():
    """With no sigma option the noise level each call uses is the chain's σ at that timestep, interpolated
    linearly at a fractional one as diffusers does (to 1e-3: diffusers keeps ᾱ in float32, and 1 - ᾱ_0 ≈ 1e-4
    loses 6e-4 of itself to rounding), so the exact ε the peers get is the chain's."""
    chain = sgm.VPSDE().discretize(1000)
    betas = peer.vp_betas(chain)
    torch.testing.assert_close(torch.tensor(betas, dtype=D), chain.betas, rtol=1e-9, atol=1e-12)
    checked = 0
    for config in peer.configs():
        if any(dict(config.options).get(o) for o in peer.SIGMA_OPTIONS):
            continue
        scheduler, steps = peer.make_scheduler(config, betas, 10)
        assert len(scheduler.timesteps) <= 10 and steps >= (5 if config.scheduler == "HeunDiscreteScheduler" else 10)
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is None:
            continue
        for k, t in enumerate(scheduler.timesteps):
            i = float(t)
            lo, hi = int(math.floor(i)), min(int(math.floor(i)) + 1, 999)
            expected = float(chain.sigmas[lo] + (i - lo) * (chain.sigmas[hi] - chain.sigmas[lo]))
            assert math.isclose(float(sigmas[k]), expected, rel_tol=1e-3), (config.label, k, float(t))
        checked += 1
    assert checked >= 10


@needs_diffusers
def test_a_budget_below_two_steps_has_no_scheduler():
    config = next(c for c in peer.configs() if c.scheduler == "HeunDiscreteScheduler")
    betas = peer.vp_betas(sgm.VPSDE().discretize(1000))
    assert peer.make_scheduler(config, betas, 2) == (None, None)  # Heun's 2 steps cost 3 calls
    scheduler, steps = peer.make_scheduler(config, betas, 3)
    assert steps == 2 and len(scheduler.timesteps) == 3


@needs_diffusers
def test_diffusers_ddim_equals_sgm_ddim_on_the_chain(bench_problems):
    """An independent DDIM (diffusers') and sgm's, same chain, same exact model, same x_T."""
    p = bench_problems["vp"]
    config = next(c for c in peer.configs() if c.label == "diffusers DDIM, trailing")
    theirs = peer.row(config, p, 10)
    ours = next(r for r in runs.sgm_rows(p, (10,)) if r["sampler"] == "ddim, trailing")
    assert theirs["nfe"] == ours["nfe"] == 10
    assert math.isclose(theirs["map_error"], ours["map_error"], rel_tol=1e-4)  # diffusers keeps ᾱ in float32


@needs_diffusers
def test_a_spacing_the_scheduler_ignores_reuses_the_identical_run(bench_problems):
    p, seen = bench_problems["vp"], {}
    karras = [c for c in peer.configs() if c.label.startswith("diffusers DEIS 2, ") and c.label.endswith("karras-sigmas")]
    first, second = (peer.row(c, p, 10, seen=seen) for c in karras[:2])
    assert "same_as" not in first and second["same_as"] == first["sampler"] != second["sampler"]
    assert second["map_error"] == first["map_error"] and len(seen) == 1


@needs_diffusers
def test_a_failing_or_diverging_peer_is_a_row(bench_problems, monkeypatch):
    bad = peer.Config("diffusers DDIM, nonsense", "DDIMScheduler", (("timestep_spacing", "nonsense"),))
    row = peer.row(bad, bench_problems["vp"], 10)
    assert row["diverged"] and row["nfe"] is None and "nonsense" in row["error"] and row["map_error"] != row["map_error"]
    monkeypatch.setattr(problems, "eps_at", lambda target, x, sigma: x * float("nan"))  # what Problem.eps_at calls
    row = peer.row(peer.configs()[0], bench_problems["vp"], 10)
    assert row["diverged"] and row["nfe"] == 10 and row["map_error"] != row["map_error"]
