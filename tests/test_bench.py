"""The NFE sweep: budgets map to the evaluations actually spent, and the peer set-up is the same chain."""
import pytest
import torch

import sgm
from sgm import bench
from conftest import gen, mixture

D = torch.float64


@pytest.mark.parametrize("run", bench.RUNS, ids=lambda r: r.label)
def test_steps_spend_the_budget(run):
    gm, sde = mixture(), sgm.VPSDE()
    for budget in (5, 10, 20, 50):
        steps = bench.steps_for_nfe(run, budget)
        if steps is None:
            continue
        out = sgm.sample(gm.score_fn(sde), sde, (4, 2), sampler=run.sampler, steps=steps, generator=gen(0), dtype=D,
                         **run.options)
        assert budget - run.per_step < out.nfe <= budget


def test_chain_noise_predictor_is_the_exact_chain_score():
    gm, chain = mixture(), sgm.VPSDE().discretize(1000)
    eps = bench.chain_eps_model(gm, chain)
    x = torch.randn(16, 2, generator=gen(0), dtype=D)
    for i in (0, 123, 999):
        torch.testing.assert_close(eps(x, i), -chain.std[i] * gm.perturbed_score(x, chain.scale[i], chain.std[i]),
                                   rtol=1e-12, atol=1e-12)


def test_diffusers_ddim_equals_sgm_ddim_on_the_chain():
    """An independent DDIM (diffusers', when installed) and sgm's, same chain, same exact model, same x_T."""
    diffusers = pytest.importorskip("diffusers")
    gm, sde, chain = mixture(), sgm.VPSDE(), sgm.VPSDE().discretize(1000)
    eps = bench.chain_eps_model(gm, chain)
    x_T = torch.randn(32, 2, generator=gen(0), dtype=D)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, t), t, x).prev_sample
    score = sgm.ScoreModel(lambda y, i: eps(y, int(i[0])), sde, "eps", chain=chain)
    ours = sgm.sample(score, sde, (32, 2), sampler="ddim", steps=10, spacing="trailing", x_init=x_T).x
    torch.testing.assert_close(ours, x.to(D), rtol=1e-5, atol=1e-5)  # diffusers keeps ᾱ in float32


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


def test_chain_flow_map_is_the_limit_of_ddim_on_the_chain():
    """The peers' map-error reference: DDIM on the chain converges to it at first order (error ∝ 1/steps). The
    median, because a sample that starts on the boundary between two modes' basins may land in either."""
    gm, sde, chain = mixture(), sgm.VPSDE(), sgm.VPSDE().discretize(1000)
    eps = bench.chain_eps_model(gm, chain)
    x_T = torch.randn(200, 2, generator=gen(0), dtype=D)
    ref = bench.chain_flow_map(gm, chain, x_T)
    score = sgm.ScoreModel(lambda y, i: eps(y, int(i[0])), sde, "eps", chain=chain)
    err = {n: float((sgm.sample(score, sde, (200, 2), sampler="ddim", steps=n, spacing="trailing", x_init=x_T).x
                     - ref).norm(dim=1).median()) for n in (100, 1000)}
    assert err[1000] < 5e-3
    assert 7 < err[100] / err[1000] < 13


def test_a_diverged_run_is_a_row_of_nans():
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


def test_quick_sweep_writes_every_run_and_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_NFE", (5, 10))
    monkeypatch.setattr(bench, "QUICK_TOLERANCES", (1e-2,))
    rows = bench.run_sweep(str(tmp_path), quick=True, n=200, peers=False, progress=False)
    per_sde = len(list(bench._budgeted((5, 10)))) + 1
    assert len(rows) == 2 * per_sde
    assert not any(r["diverged"] for r in rows if r["nfe_budget"] == 10)
    deterministic = {r.label for r in bench.RUNS if r.deterministic} | {"ode dopri5 (adaptive)"}
    assert all((r["map_error"] == r["map_error"]) == (r["sampler"] in deterministic) for r in rows)
    meta = __import__("json").loads((tmp_path / "results.json").read_text())["meta"]
    assert set(meta["floors"]) == set(meta["flow_map"]) == {"2d ring / vp", "2d ring / ve"}
    for name in ("results.csv", "sw2_2d_ring_vp.png", "frechet_2d_ring_ve.png", "map_error_2d_ring_vp.png",
                 "scatter_2d_ring_vp.png"):
        assert (tmp_path / name).stat().st_size > 0
