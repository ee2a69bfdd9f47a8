"""sgm.bench.runs: budgets are spent as the solvers declare, every deterministic sampler is compared over its
options on every spacing, samplers that evaluate between timesteps stay off the chain, and a trained checkpoint
is swept on the same runs."""
import math

import pytest
import torch

import sgm
from sgm.bench import judge, runs
from conftest import gen, mixture

D = torch.float64


@pytest.mark.parametrize("run", runs.curve_runs(), ids=lambda r: r.label)
def test_curve_steps_spend_the_budget_the_solver_declares(run):
    gm, sde = mixture(), sgm.VPSDE()
    solver, spent = run.solver(), 0
    for run_, budget, steps in runs.budgeted((5, 10, 20)):
        if run_ != run:
            continue
        out = sgm.sample(gm.score_fn(sde), sde, (4, 2), sampler=run.sampler, steps=steps, spacing=run.spacing,
                         generator=gen(0), dtype=D, **run.options)
        assert out.nfe == solver.nfe(steps) <= budget < solver.nfe(steps + 1)
        spent += 1
    assert spent >= 1  # every curve run can spend 20 evaluations


def test_curve_runs_are_every_registered_entrys_curves():
    """One run per registered fixed-step sampler and per option set of its entry's ``curves``, on its default
    spacing; labels unique."""
    curve_runs = runs.curve_runs()
    labels = [r.label for r in curve_runs]
    assert len(labels) == len(set(labels))
    expected = {(name, tuple(sorted(c.items())), None)
                for name in sgm.samplers.available() for c in sgm.samplers.entry(name).curves
                if sgm.samplers.solver(name, **c).evals_per_step is not None}
    assert {(r.sampler, tuple(sorted(r.options.items())), r.spacing) for r in curve_runs} == expected
    assert {"ode", "ddim", "euler_maruyama", "heun"} <= {r.sampler for r in curve_runs}


def test_curve_rows_judge_every_run_and_keep_the_scatter_budgets(bench_problems):
    p = bench_problems["vp"]
    reference = p.target.sample(64, generator=gen(2))
    result = runs.curve_rows(p, (5, 10), (1e-2,), reference, 0, False, scatter_nfe=(10,))
    fixed = [r for r in result.rows if r["nfe_budget"] is not None]
    assert len(fixed) == len(list(runs.budgeted((5, 10)))) and len(result.rows) == len(fixed) + 1
    deterministic = {r.label for r in runs.curve_runs() if r.deterministic} | {"ode dopri5 (adaptive)"}
    assert all((r["map_error"] == r["map_error"]) == (r["sampler"] in deterministic) for r in result.rows)
    assert all(r["nfe"] <= r["nfe_budget"] for r in fixed)
    assert len(result.scatter) == sum(r["nfe_budget"] == 10 and not r["diverged"] for r in fixed)
    assert all(x.shape == (64, 2) for _, x in result.scatter)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_every_comparison_run_counts_what_its_solver_declares(bench_problems, sde_name):
    rows = runs.sgm_rows(bench_problems[sde_name], (5, 10))
    assert {r["spacing"] for r in rows} == set(runs.CONTINUOUS_SPACINGS + runs.CHAIN_SPACINGS)
    assert {(r["name"], tuple(r["options"].items())) for r in rows} == \
        {(n, tuple(o.items())) for n, o in runs.sgm_configs()}
    for r in rows:
        solver = sgm.samplers.solver(r["name"], **r["options"])
        assert r["nfe"] == solver.nfe(r["steps"]) <= r["nfe_budget"] and not solver.stochastic
        assert not r["diverged"] and math.isfinite(r["map_error"])
        assert r["sampler"] == runs.label(r["name"], r["options"], r["spacing"])


def test_rectified_flow_rows_run_on_both_clocks_against_the_exact_map(bench_problems):
    """On the RF problem every configuration runs on every spacing of RectifiedFlow() and RectifiedFlow(3) (the
    flow-matching schedulers' ``flow`` grid among them) from the exact top
    t = 1 (``flow``: σ = 1 - 10⁻⁶), and a row's scores are its run's map error against the exact flow map of the same
    x_T = z and SW₂ against the problem's target sample (recomputed here from sgm.sample)."""
    p = bench_problems["rf"]
    rows = runs.sgm_rows(p, (10,))
    keys = {(r["name"], tuple(r["options"].items()), r["spacing"], r["variant"]) for r in rows}
    every = {(n, tuple(o.items()), s, v) for n, o in runs.sgm_configs()
             for s in runs.CONTINUOUS_SPACINGS + runs.CHAIN_SPACINGS for v in ("", "shift 3")}
    assert {k for k in every if k[2] not in runs.CHAIN_SPACINGS} <= keys <= every
    on_chain = {v: {k[:3] for k in keys if k[2] in runs.CHAIN_SPACINGS and k[3] == v} for v in ("", "shift 3")}
    assert on_chain[""] == on_chain["shift 3"] and ("ddim", (), "trailing") in on_chain[""]  # no Runge–Kutta there
    assert all(r["sde"] == "rf" and r["sampler"] == runs.label(r["name"], r["options"], r["spacing"], r["variant"])
               for r in rows)
    # the one combination that diverges: DPM-Solver's ε form, singlestep of order 2-3, on the flow grid (its first
    # step from σ = 1 - 10⁻⁶ spans h ≈ 11.6 in λ, and the ε form's correction carries e^h; docs/samplers.md)
    diverged = {(r["name"], tuple(r["options"].items()), r["spacing"]) for r in rows if r["diverged"]}
    assert diverged <= {("dpm_solver", (("order", k), ("method", "singlestep"), ("prediction", "eps")), "flow")
                        for k in (2, 3)}, diverged
    row = next(r for r in rows if r["sampler"] == "dpm_solver order=2 method=multistep prediction=x0, logsnr, shift 3")
    rf = sgm.RectifiedFlow(3)
    x = sgm.sample(p.target.prediction_fn(rf, "x0"), rf, (64, 2), sampler="dpm_solver", order=2, method="multistep",
                   prediction="x0", steps=row["steps"], spacing="logsnr", train_steps=1000, x_init=p.z).x
    assert row["map_error"] == pytest.approx(float((x - p.x_ref).norm(dim=1).mean()), rel=1e-12)
    assert row["sw2"] == pytest.approx(judge.map_sw2(x, p.reference), rel=1e-12) and row["sw2_floor"] == p.sw2_floor
    assert row["map_error"] < 0.2 * float((p.z - p.x_ref).norm(dim=1).mean())  # 10 NFE get most of the way


def test_sgm_configs_are_every_deterministic_sampler_over_its_options():
    configs = runs.sgm_configs()
    names = {n for n, _ in configs}
    for name in sgm.samplers.available():
        assert (name in names) == (not sgm.samplers.solver(name).stochastic), name
    for name, options in configs:
        solver = sgm.samplers.solver(name, **options)
        assert not solver.stochastic and solver.evals_per_step is not None
    assert {o["method"] for n, o in configs if n == "ode"} == {"euler", "midpoint", "heun2", "heun3", "rk4"}
    assert sum(n == "dpm_solver" for n, _ in configs) == 12  # orders 1-3 × multistep/singlestep × x0/eps


def test_samplers_that_evaluate_between_timesteps_do_not_run_on_the_chain(bench_problems):
    rows = [r for r in runs.sgm_rows(bench_problems["vp"], (10,)) if r["spacing"] in runs.CHAIN_SPACINGS]
    methods = {r["options"].get("method") for r in rows if r["name"] == "ode"}
    assert "euler" in methods and "rk4" not in methods and any(r["name"] == "ddim" for r in rows)


def test_checkpoint_sweep_judges_a_trained_digits_model(tmp_path, monkeypatch):
    """Every budgeted run on a 2-step digits checkpoint, each on its own spacing, judged in a digits classifier's
    features. The classifier is trained for 2 epochs instead of 40 (8 of this test's 11 s): what is asserted here
    (rows, spacings, budgets, scores in range) does not depend on how well it classifies."""
    import functools

    import sgm.nets
    from sgm.train import TrainConfig, Trainer

    monkeypatch.setattr(sgm.nets, "train_digits_classifier",
                        functools.partial(sgm.nets.train_digits_classifier, epochs=2))

    Trainer(TrainConfig(data="digits", steps=2, batch_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_levels=(), out_dir=str(tmp_path), sample_steps=2, n_samples=4, progress=False)).fit()
    spacings, sample = [], runs.sample

    def recording(*args, spacing, **kwargs):
        spacings.append(spacing)
        return sample(*args, spacing=spacing, **kwargs)

    monkeypatch.setattr(runs, "sample", recording)
    rows = runs.checkpoint_rows(str(tmp_path / "checkpoint.pt"), (5,), seed=0, progress=False, n=16)
    planned = list(runs.budgeted((5,)))
    assert [r["sampler"] for r in rows] == [r.label for r, _, _ in planned]
    assert spacings == [r.spacing for r, _, _ in planned]  # each run on its own spacing, as in the curves
    assert all(r["nfe"] <= 5 and r["frechet_classifier"] > 0 and 0 <= r["confident"] <= 1 for r in rows)
