"""Sampling refuses what it used to ignore or die on: grid options beside a ready grid, a model sampled on another
path than its own; a float32 network samples in a float64 sampler; a CPU generator feeds a GPU run."""
import pytest
import torch

import sgm
from sgm.nets import MLP

from conftest import gen, mixture


def test_grid_options_beside_a_grid_are_refused():
    gm, sde = mixture(), sgm.VPSDE()
    grid = sgm.samplers.time_grid(sde, 5)
    for kw in ({"steps": 10}, {"spacing": "karras"}, {"eps": 1e-2}, {"t_max": 0.5}, {"nfe": 5}):
        with pytest.raises(ValueError, match=f"a ready grid fixes the nodes: {next(iter(kw))} would be ignored"):
            sgm.sample(gm.score_fn(sde), sde, (4, 2), "ddim", grid=grid, **kw)
    assert sgm.sample(gm.score_fn(sde), sde, (4, 2), "ddim", grid=grid, generator=gen(0)).nfe == 5


def model(dtype=torch.float32, sde=None):
    net = MLP(2, 16, 1).to(dtype)
    return sgm.ScoreModel(net, sde or sgm.VPSDE(), "edm", sigma_data=1.0)


def test_a_model_is_sampled_on_its_own_path_only():
    m = model()
    for other in (sgm.VESDE(), sgm.VPSDE(beta_max=10.0)):
        with pytest.raises(ValueError, match=r"the model was made for VPSDE\(.*but sde is"):
            sgm.sample(m, other, (4, 2), "ddim", 3)
    assert sgm.sample(m, sgm.VPSDE(), (4, 2), "ddim", 3, generator=gen(0)).x.shape == (4, 2)  # equal by value
    conditional = sgm.ScoreModel(MLP(2, 16, 1, n_classes=2), sgm.VPSDE(), "eps", sigma_data=None).conditional(1)
    with pytest.raises(ValueError, match="the model was made for"):
        sgm.sample(conditional, sgm.VESDE(), (4, 2), "ddim", 3)


def test_a_float32_network_samples_in_float64_and_optimises_a_grid():
    """The network computes in its own dtype, the sampler in its: the float64 run's result equals the float32 run
    to float32 rounding of the state (1e-4 over 5 steps), and optimize_grid (float64 by default) runs."""
    m, sde = model(), sgm.VPSDE()
    x_T = torch.randn(8, 2, generator=gen(0), dtype=torch.float64)
    x32 = sgm.sample(m, sde, (8, 2), "ddim", 5, x_init=x_T.float()).x
    x64 = sgm.sample(m, sde, (8, 2), "ddim", 5, x_init=x_T).x
    assert x64.dtype == torch.float64
    torch.testing.assert_close(x64.float(), x32, rtol=1e-4, atol=1e-4)
    grid = sgm.samplers.optimize_grid(m, sde, 4, "ddim", shape=(16, 2), generator=gen(1), sweeps=1)
    assert len(grid.noisy) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_generator_feeds_a_cuda_run_with_its_own_draws():
    sde, score = sgm.VPSDE(), lambda x, t: -x  # data N(0, I): p_t = N(0, I) on VP, whatever the device
    on_cpu = sgm.sample(score, sde, (16, 2), "ancestral", 5, generator=gen(0), dtype=torch.float64)
    on_gpu = sgm.sample(score, sde, (16, 2), "ancestral", 5, generator=gen(0), dtype=torch.float64, device="cuda")
    assert on_gpu.x.device.type == "cuda"
    torch.testing.assert_close(on_gpu.x.cpu(), on_cpu.x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid_by", ["steps", "nfe", "grid"])
def test_sample_checks_its_grid_once(grid_by, monkeypatch):
    """``sample`` checks its grid arguments once (``check_grid``: ``eps`` among them), the grid's path once and the
    solver against the grid once, not again in ``time_grid``, the NFE budget's search or ``integrate``."""
    gm, sde = mixture(), sgm.VPSDE()
    given = {"steps": {"steps": 6}, "nfe": {"nfe": 6}, "grid": {"grid": sgm.samplers.time_grid(sde, 6)}}[grid_by]
    calls = []

    def counted(name, f):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return f(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(sgm.samplers.grid, "check_eps", counted("eps", sgm.samplers.grid.check_eps))
    monkeypatch.setattr(sgm.samplers.TimeGrid, "check_sde", counted("sde", sgm.samplers.TimeGrid.check_sde))
    monkeypatch.setattr(sgm.samplers.Solver, "check", counted("solver", sgm.samplers.Solver.check))
    out = sgm.sample(gm.score_fn(sde), sde, (4, 2), "dpm_solver", generator=gen(0), **given)
    assert sorted(calls) == sorted(["sde", "solver"] + (["eps"] if grid_by != "grid" else [])), calls
    assert out.nfe == 6
