"""The stochastic leg of the benchmark: its metrics are right on known cases, sgm's stochastic configurations come
from the registry, the peers' stochastic runs (k-diffusion's and diffusers') are driven by the exact model at
the noise level each call integrates with and scored on the same problem, and the leg's goal table and files are
written."""
import json
import math

import pytest
import torch

import sgm
from sgm import metrics
from sgm.bench import judge, report, runs, stochastic, strong, sweep
from sgm.bench.peers import diffusers as dpeer
from sgm.bench.peers import k_diffusion as kpeer
from conftest import gen

D = torch.float64
needs_diffusers = pytest.mark.skipif(not dpeer.available(), reason="diffusers is not installed")
# skipped only where k-diffusion's sampling.py is absent: a file that is there but does not load fails the tests
needs_k_diffusion = pytest.mark.skipif(kpeer.sampling_file() is None, reason="k-diffusion's sampling.py is not found "
                                       f"(set {kpeer.ENV} or pip install --no-deps k-diffusion)")
MIXTURES = [(2, 0), (8, 1), (16, 2)]  # (dim, seed) of random_mixture


def _with_moments(x, mean, cov):
    """``x`` moved to have sample mean ``mean`` and sample covariance (n - 1 normalised, as ``torch.cov``) ``cov``."""
    c = x - x.mean(0)
    w = c @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(c.T))).T  # sample covariance I
    return mean + w @ torch.linalg.cholesky(cov).T


@pytest.mark.parametrize("dim,seed", MIXTURES)
def test_frechet_of_moments_is_zero_at_the_exact_moments_and_the_mean_shift_squared_off_them(dim, seed):
    """Samples whose mean and covariance are the mixture's exact ``(m, C)`` are at Fréchet distance 0 (to 1e-9:
    float64 square roots of ``C``'s eigenvalues); shifting them by ``δ`` leaves the covariance term 0 and adds
    ``‖δ‖²`` exactly."""
    gm = sgm.random_mixture(dim, k=4, seed=seed)
    mean, cov = gm.moments()
    x = _with_moments(gm.sample(500, generator=gen(seed)), mean, cov)
    reference = gm.sample(500, generator=gen(seed + 1))
    row = judge.stochastic_metrics(x, reference, gm, gen(0))
    assert set(row) == set(judge.STOCHASTIC_METRICS)
    assert abs(row["frechet_moments"]) < 1e-9
    delta = 0.1 * torch.randn(dim, generator=gen(seed + 2), dtype=D)
    shifted = judge.stochastic_metrics(x + delta, reference, gm, gen(0))["frechet_moments"]
    assert shifted == pytest.approx(float(delta.pow(2).sum()), rel=1e-7, abs=1e-9)
    assert row["sw2"] == pytest.approx(metrics.sliced_wasserstein(x, reference, judge.SW2_PROJECTIONS, gen(0)))


@pytest.mark.parametrize("dim,seed", [(8, 1), (16, 2), (32, 3)])
def test_mode_weight_error_of_a_known_assignment(dim, seed):
    """Samples put at component means in counts ``n_k`` are assigned to those components (checked), so the
    mode-weight error is ``Σ_k |n_k/n - w_k|`` exactly."""
    gm = sgm.random_mixture(dim, k=4, seed=seed)
    assert torch.equal(gm.responsibilities(gm.means).argmax(1), torch.arange(4))
    counts = torch.tensor([5, 0, 12, 3], dtype=D)
    x = torch.repeat_interleave(gm.means, counts.long(), dim=0)
    expected = float((counts / counts.sum() - gm.weights).abs().sum())
    assert judge.stochastic_metrics(x, x, gm, gen(0))["mode_error"] == pytest.approx(expected, rel=1e-12)


def test_the_floors_are_exact_samples_scored_like_a_run():
    """``stochastic_floors`` is the median over ``FLOOR_DRAWS`` repeats (seeds ``seed + r``) of ``stochastic_metrics``
    of one exact sample (SW₂ against a second): the same numbers from the same seeds, and positive (a finite sample's
    moments are never the exact ones)."""
    for dim, seed in MIXTURES:
        gm, n = sgm.random_mixture(dim, k=4, seed=seed), 1000
        floor = judge.stochastic_floors(gm, n, seed)
        repeats = []
        for r in range(judge.FLOOR_DRAWS):
            g = gen(seed + r)
            a, b = gm.sample(n, generator=g), gm.sample(n, generator=g)
            repeats.append(judge.stochastic_metrics(a, b, gm, g))
        assert judge.FLOOR_DRAWS == 5
        assert floor == {k: sorted(v[k] for v in repeats)[2] for k in judge.STOCHASTIC_METRICS}
        assert all(floor[k] > 0 for k in judge.STOCHASTIC_METRICS)


def test_a_diverged_or_missing_run_is_nan():
    gm = sgm.random_mixture(2, k=3, seed=0)
    ref = gm.sample(10, generator=gen(0))
    for x in (None, torch.full((10, 2), float("nan"), dtype=D)):
        row = judge.judge_stochastic(x, ref, gm, 0)
        assert row["diverged"] and all(math.isnan(row[k]) for k in judge.STOCHASTIC_METRICS)


def test_stochastic_configs_are_every_noisy_registered_option_set():
    """Each option set of the registry (sweep axes, curves) whose solver draws noise, and no deterministic one."""
    configs = runs.stochastic_configs()
    assert len(configs) == len({(n, tuple(sorted(o.items()))) for n, o in configs})
    for name, options in configs:
        s = sgm.samplers.solver(name, **options)
        assert s.stochastic and s.evals_per_step is not None
    names = {n for n, _ in configs}
    for name in sgm.samplers.available():
        s = sgm.samplers.solver(name)
        if s.stochastic and s.evals_per_step is not None:
            assert name in names, name
    assert {o["variance"] for n, o in configs if n == "ancestral"} == {"posterior", "beta"}
    for name in sgm.samplers.available():  # a deterministic sampler's noisy option sets (DDIM's η, EDM's churn)
        for options in sgm.samplers.entry(name).stochastic:
            assert (name, dict(options)) in configs, name
    deterministic = {(n, tuple(sorted(o.items()))) for n, o in runs.sgm_configs()}
    assert not {(n, tuple(sorted(o.items()))) for n, o in configs} & deterministic


def test_sgm_stochastic_rows_are_judged_by_the_distribution(bench_problems):
    p = bench_problems["vp"]
    ref = p.target.sample(64, generator=gen(2))
    configs = [("euler_ancestral", {}), ("dpm_solver_sde", {"order": 2})]
    rows = runs.sgm_rows(p, (10,), configs, lambda x: judge.judge_stochastic(x, ref, p.target, 0), seed=0)
    assert {r["spacing"] for r in rows} >= set(runs.CONTINUOUS_SPACINGS)
    for r in rows:
        assert r["side"] == "sgm" and r["nfe"] <= 10 and not r["diverged"] and "map_error" not in r
        assert all(math.isfinite(r[k]) for k in judge.STOCHASTIC_METRICS)
    again = runs.sgm_rows(p, (10,), configs[:1], lambda x: judge.judge_stochastic(x, ref, p.target, 0), seed=0)
    assert [r["frechet_moments"] for r in again] == [r["frechet_moments"] for r in rows[:len(again)]]  # seeded


# --- k-diffusion ---------------------------------------------------------------------------------------------
@needs_k_diffusion
def test_k_diffusion_denoiser_is_the_exact_x0_of_the_ve_path():
    """In k-diffusion's variables every path is VE's: ``D(x̃, σ)`` is the exact ``x̂₀`` of ``VESDE`` at the time of
    noise level σ."""
    ve = sgm.VESDE()
    for dim, seed in MIXTURES:
        gm = sgm.random_mixture(dim, k=3, seed=seed)
        for sigma in (0.02, 1.0, 30.0):
            x = gm.sample(16, generator=gen(seed)) + sigma * torch.randn(16, dim, generator=gen(1), dtype=D)
            t = ve.time_at_noise_level(torch.tensor(sigma, dtype=D)).expand(16)
            torch.testing.assert_close(kpeer.denoiser(gm)(x, torch.full((16,), sigma, dtype=D)),
                                       gm.predict(x, t, ve, "x0"), rtol=1e-8, atol=1e-8)


@needs_k_diffusion
def test_k_diffusion_budgets_are_counted_calls():
    """A first-order sampler makes one call a step, a second-order one two (one on the last step to σ = 0)."""
    per_step = {"euler_ancestral": 1, "dpmpp_2m_sde": 1, "dpmpp_3m_sde": 1, "dpm_2_ancestral": 2,
                "dpmpp_2s_ancestral": 2, "dpmpp_sde": 2}
    assert set(per_step) == set(kpeer.SAMPLERS)
    for config in kpeer.configs():
        steps = kpeer.steps_for_nfe(config, 10, 0.01, 50.0)
        assert steps == (10 if per_step[config.sampler] == 1 else 5)
        assert kpeer.calls(config, kpeer.sigmas(config.schedule, steps, 0.01, 50.0)) <= 10


@needs_k_diffusion
def test_k_diffusion_stochastic_rows_on_the_problem(bench_problems):
    """Every configuration at 10 NFE on the VP and VE problems, scored by the judge given, and none on rectified
    flow (its chain's top σ is infinite); reproducible from the seed."""
    assert kpeer.stochastic_rows(bench_problems["rf"], (10,), None, 5) == []
    for p in (bench_problems["vp"], bench_problems["ve"]):
        ref = p.target.sample(64, generator=gen(2))
        rows = kpeer.stochastic_rows(p, (10,), lambda x: judge.judge_stochastic(x, ref, p.target, 0), 5)
        assert [r["sampler"] for r in rows] == [c.label for c in kpeer.configs()]
        for r in rows:
            assert r["side"] == "k-diffusion" and r["target"] == p.target_name and r["sde"] == p.sde_name
            assert not r["diverged"] and r["nfe"] <= 10 and math.isfinite(r["frechet_moments"])
    config = kpeer.configs()[-1]
    a, b = (kpeer.run(config, bench_problems["ve"], 10, 5)[0] for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, kpeer.run(config, bench_problems["ve"], 10, 6)[0])


@needs_k_diffusion
@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "dpmpp_sde"])
def test_k_diffusion_samples_a_gaussian_at_its_moments(sampler):
    """On ``N(m, diag s²)`` the exact denoiser is linear, and at 50 NFE on Karras σ (0.01 … 50) a second-order
    sampler's Fréchet distance to ``(m, diag s²)`` is of the Monte-Carlo size ``≈ 1.5 Tr(C)/n`` (mean ``Tr(C)/n``,
    covariance term about half of it): below ``6·1.5 Tr(C)/n`` (a χ²-like statistic above 6× its mean has
    probability < 1%); a wrong noise level or sign in the driving gives O(1). (The first-order Euler-ancestral's
    bias at 50 NFE, 3.7e-3, is above this bound at n = 4000: not a test of the driving.)"""
    from sgm.bench.problems import make_problem

    m, s, n = torch.tensor([1.0, -0.5], dtype=D), torch.tensor([0.6, 0.3], dtype=D), 2000
    gaussian = sgm.GaussianMixture(m[None], s[None], [1.0], dtype=D)
    p = make_problem("gaussian", gaussian, "ve", n, 3)
    x, _, spent = kpeer.run(kpeer.Config(sampler, sampler, "karras"), p, 50, 11)
    assert spent <= 50
    bound = 6 * 1.5 * float((s**2).sum()) / n
    assert metrics.frechet_to_gaussian(x, m, torch.diag(s**2)) < bound


@needs_k_diffusion
def test_k_diffusion_loads_alone_or_from_the_environment(monkeypatch, tmp_path):
    assert kpeer.sampling_file().name == "sampling.py"
    monkeypatch.setenv(kpeer.ENV, str(tmp_path / "missing.py"))
    assert kpeer.sampling_file() is None
    with pytest.raises(ValueError, match="more than 1"):
        kpeer._append_dims(torch.zeros(2, 3), 1)
    assert kpeer._append_dims(torch.zeros(2), 3).shape == (2, 1, 1)


# --- diffusers -----------------------------------------------------------------------------------------------
@needs_diffusers
def test_diffusers_stochastic_configurations():
    labels = [c.label for c in dpeer.stochastic_configs()]
    assert len(labels) == len(set(labels))
    for family in ("DDPM fixed_small", "DDPM fixed_large", "Euler ancestral", "KDPM2 ancestral",
                   "SDE-DPM-Solver++ 1M", "SDE-DPM-Solver++ 2M", "SDE-DPM-Solver++ 3M", "SA-Solver 3/3",
                   "DPM-Solver SDE"):
        assert any(label.startswith(f"diffusers {family}") for label in labels), family


@needs_diffusers
@pytest.mark.parametrize("cls_name,stage", [("KDPM2AncestralDiscreteScheduler", "sigmas_interpol"),
                                             ("DPMSolverSDEScheduler", "mid_point_sigma"),
                                             ("EulerAncestralDiscreteScheduler", None)])
def test_diffusers_noise_level_is_the_stage_of_each_call(bench_problems, cls_name, stage):
    """The σ each call is given the exact ε at: the scheduler's own ``sigmas[k]``, or at a midpoint stage the σ of
    that stage (KDPM2's ``sigmas_interpol[i - 1]``, DPM-Solver SDE's ``mid_point_sigma``), read from diffusers'
    own state; to 3e-4 relative (its float32 input scale, see ``noise_level``)."""
    p = bench_problems["vp"]
    config = dpeer.Config(cls_name, cls_name, (("timestep_spacing", "trailing"),))
    scheduler, _ = dpeer.make_scheduler(config, dpeer.vp_betas(p.chain), 9)
    x, midpoints = p.z * float(scheduler.init_noise_sigma), 0
    for k, t in enumerate(scheduler.timesteps):
        level = dpeer.noise_level(scheduler, k, t)
        first = getattr(scheduler, "state_in_first_order", True)
        if first:
            expected = float(scheduler.sigmas[scheduler.step_index if scheduler.step_index is not None else 0])
        elif stage == "sigmas_interpol":
            expected = float(scheduler.sigmas_interpol[scheduler.step_index - 1])
        else:
            expected = float(scheduler.mid_point_sigma)
        midpoints += not first
        assert level == pytest.approx(expected, rel=3e-4), (k, first)
        eps = sgm.bench.problems.eps_at(p.target, scheduler.scale_model_input(x, t), level)
        x = scheduler.step(eps, t, x).prev_sample
    assert midpoints == (0 if stage is None else 4)


@needs_diffusers
def test_diffusers_stochastic_rows_on_the_problem(bench_problems, monkeypatch):
    """One configuration of each family at 10 NFE: scored by the judge, within the budget, finite, and seeded; none
    on rectified flow."""
    chosen = {}
    for c in dpeer.stochastic_configs():
        chosen.setdefault(c.scheduler + c.label.split(",")[0].split()[-1], c)
    monkeypatch.setattr(dpeer, "stochastic_configs", lambda: list(chosen.values()))
    p = bench_problems["ve"]
    ref = p.target.sample(64, generator=gen(2))
    rows, again = (dpeer.stochastic_rows(p, (10,), lambda x: judge.judge_stochastic(x, ref, p.target, 0), 5)
                   for _ in range(2))
    assert {r["sampler"] for r in rows} == {c.label for c in chosen.values()}
    for r in rows:
        assert r["side"] == "diffusers" and not r["diverged"] and r["nfe"] <= 10, r
        assert math.isfinite(r["frechet_moments"]) and math.isfinite(r["sw2"])
    assert [r["frechet_moments"] for r in rows] == [r["frechet_moments"] for r in again]
    assert dpeer.stochastic_rows(bench_problems["rf"], (10,), None, 5) == []  # flow schedulers: diffusers_flow


# --- the leg's tables and files ------------------------------------------------------------------------------
def test_stochastic_goal_takes_the_best_peer_of_all_libraries():
    def row(side, name, err, nfe=10):
        return {"target": "t", "sde": "ve", "side": side, "sampler": name, "nfe_budget": nfe, "nfe": nfe,
                "frechet_moments": err, "sw2": 10 * err, "diverged": False}

    rows = [row("diffusers", "d", 0.04), row("k-diffusion", "k", 0.02), row("sgm", "s", 0.008)]
    (g,) = report.goal_table(rows, (10,), ("diffusers", "k-diffusion"), "frechet_moments")
    assert (g["peer"], g["sgm"], g["ratio"], g["met"]) == ("k", "s", pytest.approx(0.4), True)
    md = report.stochastic_markdown([g], {"t / ve": {"frechet_moments": 0.005, "sw2": 0.03}}).splitlines()
    assert "| floor |" in md[0] and "| SW₂ peer / sgm / floor |" in md[0]
    assert md[2] == "| t | VE | 10 | k | 0.02 | s | 0.008 | 0.005 | 0.4 | yes | 0.2 / 0.08 / 0.03 |"


def test_finalists_are_each_sides_best_distinct_rows_within_the_budget():
    def row(side, err, nfe=10, spent=10, **extra):
        return {"target": "t", "sde": "vp", "side": side, "sampler": f"{side} {err}", "nfe_budget": nfe, "nfe": spent,
                "frechet_moments": err, "diverged": False, **extra}

    rows = [row("sgm", 0.3), row("sgm", 0.1), row("sgm", 0.2), row("sgm", 0.05, spent=11), row("sgm", 0.4),
            row("sgm", float("nan"), diverged=True), row("diffusers", 0.02, same_as="diffusers 0.5"),
            row("diffusers", 0.5), row("k-diffusion", 0.7), row("diffusers", 0.6), row("k-diffusion", 0.8),
            row("sgm", 0.6, nfe=20, spent=20)]
    chosen = [(r["side"], r["nfe_budget"], r["frechet_moments"]) for r in stochastic.finalists(rows, k=3)]
    assert chosen == [("sgm", 10, 0.1), ("sgm", 10, 0.2), ("sgm", 10, 0.3),  # as many for the peers together
                      ("diffusers", 10, 0.5), ("diffusers", 10, 0.6), ("k-diffusion", 10, 0.7), ("sgm", 20, 0.6)]


@needs_diffusers
@needs_k_diffusion
def test_the_stochastic_sweep_confirms_its_finalists_on_fresh_draws(tmp_path, monkeypatch):
    """The goal is read from the confirmed rows: each finalist of the screening run again on the confirmation
    problem (its own x_T, noise and target sample) gives there what a direct run on that problem gives, not its
    screening value; the strong column is the confirmed rows'."""
    monkeypatch.setattr(sweep, "QUICK_STOCHASTIC_NFE", (10, 20))
    monkeypatch.setattr(sweep, "QUICK_CONFIRM_N", 300)
    monkeypatch.setattr(stochastic, "stochastic_configs", lambda: [("euler_ancestral", {}), ("ancestral", {})])
    ddpm = [c for c in dpeer.stochastic_configs() if c.label == "diffusers DDPM fixed_small, trailing"]
    monkeypatch.setattr(dpeer, "stochastic_configs", lambda: ddpm)
    euler = [c for c in kpeer.configs() if c.label == "k-diffusion euler_ancestral, karras"]
    monkeypatch.setattr(kpeer, "configs", lambda: euler)
    monkeypatch.setattr(stochastic, "with_strong_errors",  # the strong column of 8 draws against 40 evaluations
                        lambda problem, rows, seed: strong.with_strong_errors(problem, rows, seed, 8, 40))
    sweep.run_sweep(str(tmp_path), quick=True, n=200, progress=False, curves=False, compare=False)
    out = json.loads((tmp_path / "results.json").read_text())
    assert {p.name for p in tmp_path.iterdir()} >= {"stochastic.csv", "stochastic_confirmed.csv",
                                                    "stochastic_goal.md", "results.json"}
    assert out["meta"]["n_confirm"] == 300 and out["meta"]["n_stochastic"] == 200
    assert set(out["meta"]["stochastic_floors"]) == {"2d ring / vp", "2d ring / ve"}
    assert [(g["sde"], g["nfe"]) for g in out["stochastic_goal"]] == [("vp", 10), ("vp", 20), ("ve", 10), ("ve", 20)]
    screened, confirmed = out["stochastic"], out["stochastic_confirmed"]
    assert {r["side"] for r in screened} == {r["side"] for r in confirmed} == {"sgm", "diffusers", "k-diffusion"}
    key = ("sde", "nfe_budget", "side")
    for cell in {tuple(r[k] for k in key) for r in screened}:  # 3 of sgm's, both peers' only configurations
        sides = [r for r in confirmed if tuple(r[k] for k in key) == cell]
        assert len(sides) == (3 if cell[2] == "sgm" else 1)
    for g in out["stochastic_goal"]:
        best = min((r for r in confirmed if (r["sde"], r["nfe_budget"], r["side"]) == (g["sde"], g["nfe"], "sgm")),
                   key=lambda r: r["frechet_moments"])
        assert (g["sgm"], g["sgm_error"]) == (best["sampler"], best["frechet_moments"])
    errors = {r["side"]: r["strong_error"] for r in confirmed}
    assert errors["sgm"] > 0 and errors["k-diffusion"] > 0 and math.isnan(errors["diffusers"])
    assert all("strong_error" not in r for r in screened)

    row = next(r for r in confirmed if r["side"] == "sgm" and r["sde"] == "vp")
    fresh = stochastic.CONFIRM_SEED
    problem = sweep.make_problem("2d ring", sgm.ring_mixture(), "vp", 300, fresh, flow_map=False)
    ref = problem.target.sample(300, generator=gen(fresh + 2))
    score, path = problem.model_for(problem.variants[0], row["spacing"] in runs.CHAIN_SPACINGS)
    direct = sgm.sample(score, path, (300, 2), sampler=row["name"], steps=row["steps"], spacing=row["spacing"],
                        train_steps=1000, x_init=problem.x_T, generator=gen(fresh + 10), **row["options"]).x
    value = judge.judge_stochastic(direct, ref, problem.target, fresh)["frechet_moments"]
    assert row["frechet_moments"] == pytest.approx(value, rel=1e-12)
    assert row["frechet_moments"] != row["screen_frechet_moments"]
    screening = {r["frechet_moments"] for r in screened}  # the finalists were chosen on the shortlist's draws
    assert not {r["screen_frechet_moments"] for r in confirmed} & screening


def test_finalists_are_the_best_of_the_shortlist_on_its_own_draws(monkeypatch):
    """With a shortlist the finalists are the ``k`` best of the ``shortlist`` best screening rows, rescored on fresh
    draws (seed + SHORTLIST_SEED); without one (shortlist <= k) the screening's ``k`` best."""
    rows = [{"target": "t", "sde": "vp", "side": "sgm", "sampler": f"s{i}", "nfe_budget": 10, "nfe": 10,
             "frechet_moments": 0.1 * (i + 1), "diverged": False} for i in range(5)]
    rescored = {"s0": 0.9, "s1": 0.5, "s2": 0.1, "s3": 0.2, "s4": 0.0}
    seen = {}

    def confirm(chosen, problem, seed, strong):
        seen.update(seed=seed, n=problem.z.shape[0], strong=strong, names=[r["sampler"] for r in chosen])
        return [{**r, "frechet_moments": rescored[r["sampler"]]} for r in chosen]

    monkeypatch.setattr(stochastic, "confirm_rows", confirm)
    picked = stochastic.choose_finalists(rows, "2d ring", sgm.ring_mixture(), "vp", 50, 7, k=2, shortlist=4)
    assert [r["sampler"] for r in picked] == ["s2", "s3"]  # s4, best on fresh draws, was not shortlisted
    assert seen == {"seed": 7 + stochastic.SHORTLIST_SEED, "n": 50, "strong": False,
                    "names": ["s0", "s1", "s2", "s3"]}
    assert [r["sampler"] for r in stochastic.choose_finalists(rows, "2d ring", sgm.ring_mixture(), "vp", 50, 7, k=2,
                                                               shortlist=2)] == ["s0", "s1"]
