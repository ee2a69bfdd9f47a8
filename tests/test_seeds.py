"""Per-sample seeds: a sample is the same whatever batch it is drawn in (EDM's per-sample streams)."""
import pytest
import torch

import sgm

SDE = sgm.VPSDE()
TARGET = sgm.ring_mixture()
SCORE = TARGET.score_fn(SDE)


@pytest.mark.parametrize("sampler,options", [("euler_maruyama", {}), ("ancestral", {}), ("langevin", {}),
                                             ("sde", {"method": "milstein"}), ("ode", {"method": "heun2"})])
def test_seeds_in_one_batch_equal_seeds_in_batches_of_7(sampler, options):
    seeds = list(range(64))
    run = lambda s: sgm.sample(SCORE, SDE, (len(s), 2), sampler=sampler, steps=6, seeds=s, dtype=torch.float64,
                               **options).x
    whole = run(seeds)
    parts = torch.cat([run(seeds[i:i + 7]) for i in range(0, 64, 7)])
    # the exact mixture score is computed row by row, so equality is exact (no batch-size-dependent reduction)
    assert torch.equal(whole, parts)
    assert len(torch.unique(whole[:, 0])) == 64
    reordered = run(seeds[::-1])
    assert torch.equal(reordered.flip(0), whole)  # order in the batch does not matter either


def test_the_stream_is_the_seed_and_noise_is_drawn():
    """Sample i's stream is torch.Generator().manual_seed(seeds[i]): x_T is its first draw; a stochastic
    sampler's result depends on the later draws (same x_T through the ODE and through Euler–Maruyama differ)."""
    x_t = SDE.prior_std * torch.randn(2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_init = x_t.repeat(2, 1)
    ode = sgm.sample(SCORE, SDE, (2, 2), "ode", 4, x_init=x_init, method="euler").x
    seeded = sgm.sample(SCORE, SDE, (2, 2), "ode", 4, seeds=[5, 5], dtype=torch.float64, method="euler").x
    torch.testing.assert_close(seeded, ode, rtol=0, atol=0)
    em = sgm.sample(SCORE, SDE, (2, 2), "euler_maruyama", 4, seeds=[5, 6], dtype=torch.float64).x
    assert not torch.equal(em[0], em[1])


def test_bad_seeds():
    with pytest.raises(ValueError, match="one seed per sample"):
        sgm.sample(SCORE, SDE, (3, 2), "ddim", 3, seeds=[0, 1])
    with pytest.raises(ValueError, match="seeds must be ints"):
        sgm.sample(SCORE, SDE, (2, 2), "ddim", 3, seeds=[0, -1])
    with pytest.raises(ValueError, match="not both"):
        sgm.sample(SCORE, SDE, (2, 2), "ddim", 3, seeds=[0, 1], generator=torch.Generator())



def test_batch_wide_brownian_paths_still_run_reproducibly():
    """``sde`` with srk draws one Brownian path for the batch: from a generator seeded by all the seeds."""
    run = lambda seeds: sgm.sample(SCORE, SDE, (len(seeds), 2), "sde", 3, seeds=seeds, method="srk").x
    assert torch.equal(run([0, 1]), run([0, 1]))
    assert not torch.equal(run([0, 1])[0], run([0, 2])[0])  # the path depends on the whole batch
