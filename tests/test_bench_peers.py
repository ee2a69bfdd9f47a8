"""sgm.bench.peers: each peer library is one module with the same two functions; diffusers' configurations are
generated from options, driven at their own noise levels by the exact ε, agree with sgm where the algorithm is the
same, and a configuration that fails is a row."""
import importlib
import math

import pytest
import torch

import sgm
from sgm.bench import judge, peers, problems, runs
from sgm.bench.peers import diffusers as peer
from sgm.bench.peers import diffusers_flow as flow_peer
from sgm.samplers import TimeGrid

D = torch.float64
needs_diffusers = pytest.mark.skipif(not peer.available(), reason="diffusers is not installed")


def test_every_peer_module_offers_the_peer_functions(bench_problems, monkeypatch):
    """Each module has ``available`` and at least one leg (``rows``, ``stochastic_rows``); a leg a module does not
    run contributes no rows."""
    for name in peers.PEERS:
        module = importlib.import_module(f"sgm.bench.peers.{name}")
        legs = [getattr(module, leg, None) for leg in ("rows", "stochastic_rows")]
        assert callable(module.available) and any(callable(leg) for leg in legs), name
    assert callable(peer.rerun)  # the trained leg's peer reruns its finalists
    kd = importlib.import_module("sgm.bench.peers.k_diffusion")
    monkeypatch.setattr(kd, "available", lambda: True)
    monkeypatch.setattr(kd, "stochastic_rows", lambda problem, nfes, judge, seed: [{"side": "k-diffusion"}])
    monkeypatch.setattr(peer, "rows", lambda problem, nfes: [{"side": "diffusers", "nfe_budget": n} for n in nfes])
    monkeypatch.setattr(peer, "available", lambda: True)
    assert peers.peer_rows(bench_problems["vp"], (5, 10)) == [{"side": "diffusers", "nfe_budget": 5},
                                                              {"side": "diffusers", "nfe_budget": 10}]
    assert peers.peer_rows(bench_problems["vp"], (5,), ("diffusers",)) == [{"side": "diffusers", "nfe_budget": 5}]
    monkeypatch.setattr(peer, "stochastic_rows", lambda problem, nfes, judge, seed: [{"side": "diffusers"}])
    assert peers.stochastic_peer_rows(bench_problems["vp"], (5,), None, 0) == [{"side": "diffusers"},
                                                                               {"side": "k-diffusion"}]
    assert peers.stochastic_peer_rows(bench_problems["vp"], (5,), None, 0, ("k_diffusion",)) == [
        {"side": "k-diffusion"}]
    with pytest.raises(ValueError, match="peers must be among"):
        peers.installed(("k-diffusion",))
    monkeypatch.setattr(peer, "available", lambda: False)
    assert peers.installed(("diffusers",)) == [] and peers.peer_rows(bench_problems["vp"], (5,), ("diffusers",)) == []
    monkeypatch.setattr(kd, "available", lambda: False)
    monkeypatch.setattr(flow_peer, "available", lambda: False)
    assert peers.installed() == [] and peers.stochastic_peer_rows(bench_problems["vp"], (5,), None, 0) == []


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
    karras = [c for c in peer.configs()
              if c.label.startswith("diffusers DEIS 2, ") and c.label.endswith("karras-sigmas")]
    first, second = (peer.row(c, p, 10, seen=seen) for c in karras[:2])
    assert "same_as" not in first and second["same_as"] == first["sampler"] != second["sampler"]
    assert second["map_error"] == first["map_error"] and len(seen) == 1


@needs_diffusers
def test_a_failing_or_diverging_peer_is_a_row(bench_problems, monkeypatch):
    bad = peer.Config("diffusers DDIM, nonsense", "DDIMScheduler", (("timestep_spacing", "nonsense"),))
    row = peer.row(bad, bench_problems["vp"], 10)
    assert row["diverged"] and row["nfe"] is None and "nonsense" in row["error"]
    assert row["map_error"] != row["map_error"]  # NaN
    monkeypatch.setattr(problems, "eps_at", lambda target, x, sigma: x * float("nan"))  # what Problem.eps_at calls
    row = peer.row(peer.configs()[0], bench_problems["vp"], 10)
    assert row["diverged"] and row["nfe"] == 10 and row["map_error"] != row["map_error"]


# --- the flow schedulers on the rectified-flow problem ---------------------------------------------------------------
needs_flow = pytest.mark.skipif(not flow_peer.available(), reason="diffusers is not installed")


@needs_flow
def test_flow_peer_configurations_cover_every_family_at_both_shifts():
    configs = flow_peer.configs()
    labels = [c.label for c in configs]
    assert len(labels) == len(set(labels))
    for family in ("FlowMatch Euler", "FlowMatch Heun", "DPM-Solver++ 1", "DPM-Solver++ 2M midpoint",
                   "DPM-Solver++ 3M heun", "DPM-Solver++ singlestep 3 midpoint", "UniPC bh1 2", "UniPC bh2 3",
                   "DEIS 1", "DEIS 3", "SA-Solver 2/3 (tau 0)"):
        for shift in flow_peer.SHIFTS:
            assert any(label.startswith(f"diffusers {family}, shift {shift:g}") for label in labels), (family, shift)
    for mode in ("dynamic exponential", "dynamic linear"):
        assert any(label.startswith(f"diffusers FlowMatch Euler, shift 3 {mode}") for label in labels)
    flow = [dict(c.options) for c in configs if not c.scheduler.startswith("FlowMatch")]
    assert all(o["use_flow_sigmas"] and o["prediction_type"] == "flow_prediction" for o in flow)
    assert {o["flow_shift"] for o in flow} == set(flow_peer.SHIFTS)


def _own_loop(config, problem, steps):
    """diffusers' loop written out: the scheduler built from the configuration, set to ``steps``, driven from ``z``
    by the mixture's exact velocity on ``RectifiedFlow()`` at ``t = sigmas[k]`` (diffusers' flow prediction)."""
    import diffusers

    scheduler = getattr(diffusers, config.scheduler)(num_train_timesteps=1000, **dict(config.options))
    scheduler.set_timesteps(steps, **dict(config.set_timesteps))
    velocity, x = problem.target.prediction_fn(sgm.RectifiedFlow(), "velocity"), problem.z.clone()
    for k, t in enumerate(scheduler.timesteps):
        sigma = torch.full((x.shape[0],), float(scheduler.sigmas[k]), dtype=D)
        x = scheduler.step(velocity(x, sigma), t, x).prev_sample
    return x, scheduler.sigmas.to(D)


FLOW_CASES = {"diffusers FlowMatch Euler, shift 3": 10, "diffusers FlowMatch Euler, shift 3 dynamic exponential": 10,
              "diffusers FlowMatch Heun, shift 1": 5,
              "diffusers DPM-Solver++ 2M midpoint, shift 3, lower-order-final, final zero": 10,
              "diffusers UniPC bh2 2, shift 1, lower-order-final, final zero": 10,
              "diffusers DEIS 2, shift 1, lower-order-final": 10}


@needs_flow
def test_flow_peers_reproduce_diffusers_element_by_element(bench_problems):
    """Each row is what diffusers gives: the harness's final state equals the loop written out with the mixture's
    own velocity (the same float32 scheduler arithmetic: equal to 1e-12), its map error and SW₂ are that state's
    against the problem's reference and target sample, and its steps are the most that fit 10 calls (Heun: 5 steps
    of 2 calls but the last)."""
    p = bench_problems["rf"]
    configs = {c.label: c for c in flow_peer.configs()}
    with peer.quiet():
        for label, steps in FLOW_CASES.items():
            config = configs[label]
            scheduler, fitted = flow_peer.make_scheduler(config, 10)
            assert fitted == steps and len(scheduler.timesteps) <= 10, label
            x = peer.drive(scheduler, p, flow_peer.velocity_model(p), flow_peer.step_options(scheduler))
            expected, _ = _own_loop(config, p, steps)
            torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12, msg=label)
            row = flow_peer.row(config, p, 10)
            assert row["steps"] == steps and row["nfe"] == len(scheduler.timesteps) and not row["diverged"]
            assert row["map_error"] == pytest.approx(float((expected - p.x_ref).norm(dim=1).mean()), rel=1e-12)
            assert row["sw2"] == pytest.approx(judge.map_sw2(expected, p.reference), rel=1e-12)
            assert row["sw2_floor"] == p.sw2_floor


@needs_flow
def test_flow_match_euler_in_the_bench_is_sgms_euler_on_its_sigmas(bench_problems):
    """An independent check of the wiring (start, velocity, σ per call): FlowMatch Euler from σ = 1 is Euler in σ,
    sgm's ``ode(method="euler")`` on RectifiedFlow() at the scheduler's sigmas (proved equal in float64 in
    test_rectified_flow.py); here diffusers steps in float32 (its sigmas and its state), so the two agree to float32
    rounding over 10 steps (1e-5 relative)."""
    p = bench_problems["rf"]
    for shift in flow_peer.SHIFTS:
        config = next(c for c in flow_peer.configs() if c.label == f"diffusers FlowMatch Euler, shift {shift:g}")
        theirs, sigmas = _own_loop(config, p, 10)
        assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
        rf = sgm.RectifiedFlow()
        grid = TimeGrid.from_times(rf, sigmas[:-1].tolist())
        ours = sgm.samplers.ode(p.target.prediction_fn(rf, "velocity"), rf, p.z, grid, method="euler")
        assert float((ours.x - theirs).norm() / theirs.norm()) < 1e-5


@needs_flow
def test_flow_rows_record_their_start_and_a_sigma_above_one_fails(bench_problems):
    """FlowMatch starts at the exact top σ = 1 (no start error); DPM-Solver's flow sigmas start at 1 - 1/N, where z
    placed there costs the exact flow's map error from that σ (``start_error``); a Karras sigma option makes
    DPM-Solver read the DDPM chain's σ = 157 as a flow sigma, a failed row naming it."""
    p = bench_problems["rf"]
    labels = {"diffusers FlowMatch Euler, shift 1", "diffusers DPM-Solver++ 2M midpoint, shift 1, lower-order-final, "
              "final zero", "diffusers DPM-Solver++ 2M midpoint, shift 1, lower-order-final, final zero, karras-sigmas"}
    chosen = [c for c in flow_peer.configs() if c.label in labels]
    assert len(chosen) == 3
    with pytest.MonkeyPatch.context() as m:
        m.setattr(flow_peer, "configs", lambda: chosen)
        euler, dpm, karras = flow_peer.rows(p, (10,))
    assert euler["start_sigma"] == 1.0 and euler["start_error"] == 0.0
    assert dpm["start_sigma"] == pytest.approx(0.999, rel=1e-7)  # float32
    exact_from_there = problems.exact_rf_flow_map(p.target, p.z, dpm["start_sigma"])
    assert dpm["start_error"] == pytest.approx(float((exact_from_there - p.x_ref).norm(dim=1).mean()), rel=1e-9)
    assert 0 < dpm["start_error"] < dpm["map_error"]
    assert karras["diverged"] and "outside [0, 1]" in karras["error"]
    assert flow_peer.rows(bench_problems["vp"], (10,)) == [] and peer.rows(p, (10,)) == []
