"""The NFE sweep and the sgm-vs-diffusers comparison: budgets are spent as the solvers declare, every side starts
from the same state at the same noise level and is scored against the same exact flow map, and the peers are
driven by the exact noise prediction at the noise level each of their steps uses."""
import json
import math

import pytest
import torch

import sgm
from sgm import bench
from conftest import gen, mixture

D = torch.float64


@pytest.mark.parametrize("run", bench.curve_runs(), ids=lambda r: r.label)
def test_curve_steps_spend_the_budget_the_solver_declares(run):
    gm, sde = mixture(), sgm.VPSDE()
    solver = run.solver()
    for budget in (5, 10, 20):
        steps = bench.steps_for_nfe(run, budget)
        if steps is None:
            continue
        out = sgm.sample(gm.score_fn(sde), sde, (4, 2), sampler=run.sampler, steps=steps, spacing=run.spacing,
                         generator=gen(0), dtype=D, **run.options)
        assert out.nfe == solver.nfe(steps) <= budget < solver.nfe(steps + 1)


@pytest.fixture(scope="module")
def problems():
    return {name: bench.make_problem("3 modes", mixture(), name, 64, 0) for name in ("vp", "ve")}


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_every_comparison_run_counts_what_its_solver_declares(problems, sde_name):
    rows = bench.sgm_rows(problems[sde_name], (5, 10))
    spacings = {r["spacing"] for r in rows}
    assert spacings == set(bench.CONTINUOUS_SPACINGS + bench.CHAIN_SPACINGS)
    assert {(r["name"], tuple(r["options"].items())) for r in rows} == \
        {(n, tuple(o.items())) for n, o in bench.sgm_configs()}
    for r in rows:
        solver = sgm.samplers.solver(r["name"], **r["options"])
        assert r["nfe"] == solver.nfe(r["steps"]) <= r["nfe_budget"] and not solver.stochastic
        assert not r["diverged"] and math.isfinite(r["map_error"])


def test_sgm_configs_cover_every_deterministic_sampler():
    names = {n for n, _ in bench.sgm_configs()}
    for name in sgm.samplers.available():
        s = sgm.samplers.solver(name)
        assert (name in names) == (not s.stochastic and s.evals_per_step is not None) or name == "ode"
    assert {o["method"] for n, o in bench.sgm_configs() if n == "ode"} == {"euler", "midpoint", "heun2", "heun3", "rk4"}


def test_both_families_start_at_the_chains_top_noise_level(problems):
    """VP: sgm's continuous SDE ends at the DDPM chain's ᾱ_999, so the continuous and chain grids and diffusers
    start at one noise level from one x_T; VE: the chain's top level is σ_max."""
    for p in problems.values():
        top = p.sde.marginal(torch.tensor(p.sde.T, dtype=D))
        torch.testing.assert_close(torch.stack(top), torch.stack([p.chain.scale[-1], p.chain.std[-1]]),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(p.x_T, p.z * p.sde.prior_std)
    assert problems["vp"].chain.betas is not None and 1.005 < problems["vp"].sde.T < 1.01


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_the_reference_is_the_limit_of_both_families(problems, sde_name):
    """The exact flow map from the top noise level to σ = 0: RK4 on the continuous SDE and DDIM on the chain's
    1000 timesteps both converge to it (RK4's error is that of its last step, Tweedie's jump from σ(eps) ≈ 0.01
    to 0, O(σ²) ≈ 2e-4 here; DDIM's is first order, ≈ 1e-3 at 1000 steps; the median, as a draw on a basin
    boundary may go either way)."""
    p = problems[sde_name]
    rk4 = sgm.sample(p.target.score_fn(p.sde), p.sde, tuple(p.x_T.shape), sampler="ode", method="rk4", steps=200,
                     spacing="logsnr", eps=1e-4, x_init=p.x_T).x
    ddim = sgm.sample(bench.chain_score(p.target, p.chain), p.chain_sde, tuple(p.x_T.shape), sampler="ddim",
                      steps=1000, spacing="trailing", x_init=p.x_T).x
    assert float((rk4 - p.x_ref).norm(dim=1).median()) < 5e-4
    assert float((ddim - p.x_ref).norm(dim=1).median()) < 5e-3


def test_chain_score_is_exact_on_the_chain_and_refuses_other_times():
    gm, chain = mixture(), sgm.VPSDE().discretize(1000)
    score = bench.chain_score(gm, chain)
    x = torch.randn(16, 2, generator=gen(0), dtype=D)
    for i in (0, 123, 999):
        t = torch.full((16,), float(chain.t[i]), dtype=D)
        torch.testing.assert_close(score(x, t), gm.perturbed_score(x, chain.scale[i], chain.std[i]), rtol=1e-12,
                                   atol=1e-12)
        # the peers' noise prediction at the chain's σ_i is the chain's exact ε
        torch.testing.assert_close(bench.eps_at(gm, x, float(chain.sigmas[i])), -chain.std[i] * score(x, t),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bench.chain_eps_model(gm, chain)(x, i), -chain.std[i] * score(x, t),
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(bench.OffChain):
        score(x, torch.full((16,), 0.5005, dtype=D))


def test_samplers_that_evaluate_between_timesteps_do_not_run_on_the_chain(problems):
    rows = [r for r in bench.sgm_rows(problems["vp"], (10,)) if r["spacing"] in bench.CHAIN_SPACINGS]
    methods = {r["options"].get("method") for r in rows if r["name"] == "ode"}
    assert "euler" in methods and "rk4" not in methods and any(r["name"] == "ddim" for r in rows)


def test_peer_configurations_are_generated_from_options():
    pytest.importorskip("diffusers")
    configs = bench.peer_configs()
    labels = [c.label for c in configs]
    assert len(labels) == len(set(labels))
    for family in ("DDIM", "DPM-Solver++ 2M", "DPM-Solver++ 3M", "DPM-Solver 2M", "DPM-Solver 3M",
                   "DPM-Solver++ singlestep 2", "DPM-Solver++ singlestep 3", "DPM-Solver singlestep 3",
                   "UniPC bh1 2", "UniPC bh1 3", "UniPC bh2 2", "UniPC bh2 3", "DEIS 2", "DEIS 3", "Heun", "Euler",
                   "LMS"):
        assert any(label.startswith(f"diffusers {family}") for label in labels), family
    for spacing in bench.PEER_SPACINGS:
        assert any(label.endswith(f"Euler, {spacing}, karras-sigmas") for label in labels)
    assert any("lu-lambdas" in label and "DPM-Solver++ 3M" in label for label in labels)
    assert not any("lu-lambdas" in label for label in labels if "UniPC" in label or "Euler" in label)


def test_peers_are_driven_at_their_own_noise_levels():
    """With no sigma option the noise level each call uses is the chain's σ at that timestep, interpolated
    linearly at a fractional one as diffusers does (to 1e-3: diffusers keeps ᾱ in float32, and 1 - ᾱ_0 ≈ 1e-4
    loses 6e-4 of itself to rounding), so the exact ε the peers get is the chain's."""
    diffusers = pytest.importorskip("diffusers")
    chain = sgm.VPSDE().discretize(1000)
    betas = bench._vp_betas(chain)
    torch.testing.assert_close(torch.tensor(betas, dtype=D), chain.betas, rtol=1e-9, atol=1e-12)
    for config in bench.peer_configs():
        options = dict(config.options)
        if any(options.get(o) for o in bench.PEER_SIGMAS):
            continue
        scheduler, steps = bench._peer_scheduler(config, betas, 10)
        assert len(scheduler.timesteps) <= 10 and steps >= (5 if config.scheduler == "HeunDiscreteScheduler" else 10)
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is None:
            continue
        for k, t in enumerate(scheduler.timesteps):
            i = float(t)
            lo, hi = int(math.floor(i)), min(int(math.floor(i)) + 1, 999)
            expected = float(chain.sigmas[lo] + (i - lo) * (chain.sigmas[hi] - chain.sigmas[lo]))
            assert math.isclose(float(sigmas[k]), expected, rel_tol=1e-3), (config.label, k, float(t))


def test_diffusers_ddim_equals_sgm_ddim_on_the_chain(problems):
    """An independent DDIM (diffusers', when installed) and sgm's, same chain, same exact model, same x_T."""
    pytest.importorskip("diffusers")
    p = problems["vp"]
    config = next(c for c in bench.peer_configs() if c.label == "diffusers DDIM, trailing")
    theirs = bench.peer_row(config, p, 10)
    ours = next(r for r in bench.sgm_rows(p, (10,)) if r["sampler"] == "ddim, trailing")
    assert theirs["nfe"] == ours["nfe"] == 10
    assert math.isclose(theirs["map_error"], ours["map_error"], rel_tol=1e-4)  # diffusers keeps ᾱ in float32


def test_a_failing_or_diverging_peer_is_a_row(problems, monkeypatch):
    pytest.importorskip("diffusers")
    bad = bench.PeerConfig("diffusers DDIM, nonsense", "DDIMScheduler", (("timestep_spacing", "nonsense"),))
    row = bench.peer_row(bad, problems["vp"], 10)
    assert row["diverged"] and row["nfe"] is None and "nonsense" in row["error"] and row["map_error"] != row["map_error"]
    monkeypatch.setattr(bench, "eps_at", lambda target, x, sigma: x * float("nan"))
    row = bench.peer_row(bench.peer_configs()[0], problems["vp"], 10)
    assert row["diverged"] and row["nfe"] == 10 and row["map_error"] != row["map_error"]


def test_a_diverged_sgm_run_is_a_row_of_nans():
    gm, sde = mixture(), sgm.VPSDE()
    x_T = torch.randn(50, 2, generator=gen(0), dtype=D)
    x, row = bench._one_run(lambda x, t: x * float("nan"), sde, x_T, "ddim", 5, {}, 0, False)
    assert x is None and row["nfe"] is None
    reference = gm.sample(50, generator=gen(1))
    for bad in (None, torch.full_like(x_T, float("inf"))):
        judged = bench._judge(bad, reference, gm, 0, x_T)
        assert judged["diverged"] and all(judged[m] != judged[m] for m in bench.METRICS)  # NaN
    judged = bench._judge(x_T, reference, gm, 0, x_T)
    assert not judged["diverged"] and judged["map_error"] == 0 and judged["sw2"] > 0


def test_optimised_grids_run_when_optimize_grid_exists(problems, monkeypatch):
    """Without ``sgm.samplers.optimize_grid`` there are no such rows; with one (here a stand-in returning the
    logsnr grid), the best fixed configurations run on its grid from the same x_T."""
    p = problems["ve"]
    fixed = bench.sgm_rows(p, (10,))
    if not hasattr(sgm.samplers, "optimize_grid"):
        assert bench.optimized_rows(p, (10,), fixed, 0) == []
    calls = []

    def fake(score, sde, steps, sampler, shape, n, generator, **options):
        calls.append((sampler, steps, shape, n))
        return sgm.samplers.time_grid(sde, steps, "logsnr")

    monkeypatch.setattr(sgm.samplers, "optimize_grid", fake, raising=False)
    rows = bench.optimized_rows(p, (10,), fixed, 0, top=2)
    assert len(rows) == len(calls) == 2 and all(c[2] == (2,) for c in calls)
    assert rows[0]["name"] != rows[1]["name"] or rows[0]["options"] != rows[1]["options"]  # two distinct samplers
    for r in rows:
        same = next(f for f in fixed if f["sampler"] == bench._label(r["name"], r["options"], "logsnr")
                    and f["nfe_budget"] == 10)
        assert r["spacing"] == "optimised" and r["nfe"] == same["nfe"] and r["map_error"] == same["map_error"]


def test_goal_table_picks_each_sides_best_within_budget():
    row = lambda side, name, nfe, err, spent=None, diverged=False: {  # noqa: E731
        "target": "t", "sde": "vp", "side": side, "sampler": name, "nfe_budget": nfe, "nfe": spent or nfe,
        "map_error": err, "diverged": diverged}
    rows = [row("diffusers", "a", 10, 0.2), row("diffusers", "b", 10, 0.1), row("diffusers", "c", 10, 0.01, 11),
            row("diffusers", "d", 10, float("nan"), diverged=True), row("sgm", "x", 10, 0.04),
            row("sgm", "y", 10, 0.06), row("sgm", "x", 20, 0.01)]
    table = bench.goal_table(rows, (10, 20))
    assert table[0] == {"target": "t", "sde": "vp", "nfe": 10, "peer": "b", "peer_error": 0.1, "sgm": "x",
                        "sgm_error": 0.04, "ratio": pytest.approx(0.4), "met": True}
    assert table[1]["peer"] is None and not table[1]["met"]
    md = bench.goal_markdown(table).splitlines()
    assert md[2] == "| t | VP | 10 | b | 0.1 | x | 0.04 | 0.4 | yes |"
    assert md[3] == "| t | VP | 20 | — | — | x | 0.01 | — | no |"


def test_summary_table():
    rows = [{"target": "t", "sde": "vp", "sampler": "ddim", "nfe_budget": b, "sw2": 0.1 * b, "map_error": 1e-3 / b}
            for b in (10, 20)] + [{"target": "t", "sde": "vp", "sampler": "ddpm", "nfe_budget": 10, "sw2": 0.5,
                                   "map_error": float("nan")}]
    table = bench.summary_table(rows, (10, 20)).splitlines()
    assert table[0] == "| target | SDE | sampler | sw2 @ 10 | sw2 @ 20 | map_error @ 10 | map_error @ 20 |"
    assert table[2:] == ["| t | vp | ddim | 1 | 2 | 0.0001 | 5e-05 |", "| t | vp | ddpm | 0.5 | — | — | — |"]


def test_checkpoint_sweep_judges_a_trained_digits_model(tmp_path):
    from sgm.train import TrainConfig, Trainer

    Trainer(TrainConfig(data="digits", steps=2, batch_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_levels=(), out_dir=str(tmp_path), sample_steps=2, n_samples=4, progress=False)).fit()
    rows = bench.checkpoint_rows(str(tmp_path / "checkpoint.pt"), (5,), seed=0, progress=False, n=16)
    assert {r["sampler"] for r in rows} == {r.label for r, _, _ in bench._budgeted((5,))}
    assert all(r["nfe"] <= 5 and r["frechet_classifier"] > 0 and 0 <= r["confident"] <= 1 for r in rows)


def test_quick_sweep_writes_every_run_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_NFE", (5, 10))
    monkeypatch.setattr(bench, "QUICK_COMPARE_NFE", (10,))
    monkeypatch.setattr(bench, "QUICK_TOLERANCES", (1e-2,))
    peers = [c for c in bench.peer_configs() if c.label.endswith("trailing")][:3]
    monkeypatch.setattr(bench, "peer_configs", lambda: peers)
    rows = bench.run_sweep(str(tmp_path), quick=True, n=200, progress=False)
    per_sde = len(list(bench._budgeted((5, 10)))) + 1
    assert len(rows) == 2 * per_sde
    assert not any(r["diverged"] for r in rows if r["nfe_budget"] == 10)
    deterministic = {r.label for r in bench.curve_runs() if r.deterministic} | {"ode dopri5 (adaptive)"}
    assert all((r["map_error"] == r["map_error"]) == (r["sampler"] in deterministic) for r in rows)
    out = json.loads((tmp_path / "results.json").read_text())
    meta, compared, goal = out["meta"], out["compare"], out["goal"]
    assert set(meta["floors"]) == set(meta["flow_map"]) == {"2d ring / vp", "2d ring / ve"}
    assert {r["side"] for r in compared} == ({"sgm", "diffusers"} if peers else {"sgm"})
    assert [(g["sde"], g["nfe"]) for g in goal] == [("vp", 10), ("ve", 10)]
    assert all(g["sgm_error"] > 0 for g in goal)
    for name in ("results.csv", "compare.csv", "goal.md", "sw2_2d_ring_vp.png", "frechet_2d_ring_ve.png",
                 "map_error_2d_ring_vp.png", "scatter_2d_ring___vp.png"):
        assert (tmp_path / name).stat().st_size > 0
