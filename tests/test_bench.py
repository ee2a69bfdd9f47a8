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
    rows = [{"target": "t", "sde": "vp", "sampler": "ddim", "nfe_budget": b, "sw2": 0.1 * b} for b in (10, 20)]
    table = bench.summary_table(rows, (10, 20))
    assert "| t | vp | ddim | 1.000 | 2.000 |" in table


def test_checkpoint_sweep_judges_a_trained_digits_model(tmp_path):
    from sgm.train import TrainConfig, Trainer

    Trainer(TrainConfig(data="digits", steps=2, batch_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_levels=(), out_dir=str(tmp_path), sample_steps=2, n_samples=4, progress=False)).fit()
    rows = bench.checkpoint_rows(str(tmp_path / "checkpoint.pt"), (5,), seed=0, progress=False, n=16)
    assert {r["sampler"] for r in rows} == {r.label for r, _, _ in bench._budgeted((5,))}
    assert all(r["nfe"] <= 5 and r["frechet_classifier"] > 0 and 0 <= r["confident"] <= 1 for r in rows)
