"""Per-sample seeds: a sample is the same whatever batch it is drawn in, with plain per-sample streams and with one
Brownian path per sample, for every registered stochastic solver that declares its updates act sample by sample."""
import pytest
import torch

import sgm
from sgm.samplers.noise import counter_normals, stream_keys
from test_solver_contract import CASES, IDS

SDE = sgm.VPSDE()
TARGET = sgm.ring_mixture()
SCORE = TARGET.score_fn(SDE)

_STOCHASTIC = [(c, i) for c, i in zip(CASES, IDS) if sgm.samplers.solver(c[0], **c[1]).stochastic]
SAMPLEWISE = [(c, i) for c, i in _STOCHASTIC if sgm.samplers.solver(c[0], **c[1]).samplewise]
COUPLED = [(c, i) for c, i in _STOCHASTIC if not sgm.samplers.solver(c[0], **c[1]).samplewise]


# Equal to rounding: the noise of a sample is bit for bit its own, but a CPU with AVX-512 rounds the mixture's
# vectorised exp and log sums differently in a batch's body and its tail, so a sample moves by a few ulps with its batch
# (measured at most 2.3e-14 over these solvers; on AVX2 machines 0), against >= 0.1 where the batch is coupled.
SAME = {"rtol": 0.0, "atol": 1e-12}


def same(a, b) -> bool:
    return a.shape == b.shape and bool(((a - b).abs() <= SAME["atol"]).all())


def _run(sampler, options, seeds, noise):
    return sgm.sample(SCORE, SDE, (len(seeds), 2), sampler=sampler, steps=6, seeds=seeds, noise=noise,
                      dtype=torch.float64, **options).x


@pytest.mark.parametrize("noise", [None, "brownian"])
@pytest.mark.parametrize("sampler,options", [c for c, _ in SAMPLEWISE] + [("ode", {"method": "heun2"})],
                         ids=[i for _, i in SAMPLEWISE] + ["ode-method=heun2"])
def test_seeds_in_one_batch_equal_seeds_in_batches_of_21(sampler, options, noise):
    """Seeds 0–63 at once, in batches of 21, 21, 21 and 1 (each seed at another row of a batch of another size, the
    last alone), and reversed: equal element by element to rounding (``SAME``). Batches of 7 took 10 runs for the same
    proof."""
    seeds = list(range(64))
    whole = _run(sampler, options, seeds, noise)
    parts = torch.cat([_run(sampler, options, seeds[i:i + 21], noise) for i in range(0, 64, 21)])
    # the exact mixture score is computed row by row: no batch-size-dependent reduction, only the kernels' rounding
    torch.testing.assert_close(whole, parts, **SAME)
    assert len(torch.unique(whole[:, 0])) == 64
    reordered = _run(sampler, options, seeds[::-1], noise)
    torch.testing.assert_close(reordered.flip(0), whole, **SAME)  # order in the batch does not matter either


@pytest.mark.parametrize("sampler,options", [c for c, _ in COUPLED], ids=[i for _, i in COUPLED])
def test_a_solver_that_couples_the_batch_declares_it(sampler, options):
    """The declaration is needed: a solver declared not samplewise (pc's batch-averaged Langevin step, srk's one
    Lévy-area path) does give other samples in other batches."""
    seeds = list(range(14))
    whole = _run(sampler, options, seeds, None)
    parts = torch.cat([_run(sampler, options, seeds[i:i + 7], None) for i in range(0, 14, 7)])
    assert not same(whole, parts)


def test_x_T_is_the_first_draw_of_each_seeds_stream_and_noise_is_drawn():
    """Sample i's x_T is draw 0 of its stream (``counter_normals`` of seed i) times the prior's std; a stochastic
    sampler's result depends on the later draws (the same x_T through the ODE and Euler–Maruyama differ), and with
    ``noise="brownian"`` too, the path's own."""
    x_t = SDE.prior_std * counter_normals(stream_keys([5], 1), 0, 2, torch.float64)
    x_init = x_t.repeat(2, 1)
    ode = sgm.sample(SCORE, SDE, (2, 2), "ode", 4, x_init=x_init, method="euler").x
    seeded = sgm.sample(SCORE, SDE, (2, 2), "ode", 4, seeds=[5, 5], dtype=torch.float64, method="euler").x
    torch.testing.assert_close(seeded, ode, rtol=0, atol=0)
    em = sgm.sample(SCORE, SDE, (2, 2), "euler_maruyama", 4, seeds=[5, 6], dtype=torch.float64).x
    assert not torch.equal(em[0], em[1])
    twin = sgm.sample(SCORE, SDE, (2, 2), "euler_maruyama", 4, seeds=[5, 5], noise="brownian", dtype=torch.float64).x
    plain = sgm.sample(SCORE, SDE, (2, 2), "euler_maruyama", 4, seeds=[5, 5], dtype=torch.float64).x
    assert torch.equal(twin[0], twin[1]) and not torch.equal(twin, plain)


def test_bad_seeds():
    with pytest.raises(ValueError, match="one seed per sample"):
        sgm.sample(SCORE, SDE, (3, 2), "ddim", 3, seeds=[0, 1])
    with pytest.raises(ValueError, match="seeds must be ints"):
        sgm.sample(SCORE, SDE, (2, 2), "ddim", 3, seeds=[0, -1])
    with pytest.raises(ValueError, match="not both"):
        sgm.sample(SCORE, SDE, (2, 2), "ddim", 3, seeds=[0, 1], generator=torch.Generator())


def test_batch_wide_brownian_paths_still_run_reproducibly():
    """``sde`` with srk draws one Brownian path for the batch: from a generator seeded by all the seeds."""
    run = lambda seeds: sgm.sample(SCORE, SDE, (len(seeds), 2), "sde", 3, seeds=seeds, method="srk").x  # noqa: E731
    assert torch.equal(run([0, 1]), run([0, 1]))
    assert not torch.equal(run([0, 1])[0], run([0, 2])[0])  # the path depends on the whole batch
