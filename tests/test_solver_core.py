"""The solver protocol and the integrate loop: declared NFE, the per-step callback, ready-made grids, λ on nodes."""
import math

import pytest
import torch

import sgm
from sgm.samplers import Node, Prediction, Solver, TimeGrid, integrate, time_grid
from conftest import SDES, gen, mixture

D = torch.float64


def test_callback_sees_every_node_and_the_latest_prediction():
    gm, forward = mixture(), sgm.VPSDE()
    x = forward.prior_sample((5, 2), generator=gen(0), dtype=D)
    grid = time_grid(forward, 6, spacing="logsnr")
    seen = []

    def callback(x, node, prediction):
        assert isinstance(prediction, Prediction)
        # The prediction's x̂0 is Tweedie's formula at its node, ε̂ = -std·s.
        torch.testing.assert_close(prediction.x0, (prediction.x + prediction.node.std**2 * prediction.score)
                                   / prediction.node.scale)
        torch.testing.assert_close(prediction.eps, -prediction.node.std * prediction.score)
        seen.append((node, prediction.node))

    out = sgm.samplers.ddim(gm.score_fn(forward), forward, x, grid, callback=callback)
    plain = sgm.samplers.ddim(gm.score_fn(forward), forward, x, grid)
    assert torch.equal(out.x, plain.x) and out.nfe == plain.nfe == 6
    assert [s[0] for s in seen] == list(grid.nodes[1:])
    assert [s[1] for s in seen] == list(grid.noisy)  # each step's prediction was made at the node it left


def test_callback_replacement_changes_the_state_and_is_checked():
    gm, forward = mixture(), sgm.VESDE()
    x = forward.prior_sample((5, 2), generator=gen(0), dtype=D)
    grid = time_grid(forward, 8)
    # Pin coordinate 0 to 1.5 after every step: the final sample keeps it exactly.
    out = sgm.samplers.euler_maruyama(
        gm.score_fn(forward), forward, x, grid, generator=gen(1),
        callback=lambda x, node, p: torch.cat([torch.full_like(x[:, :1], 1.5), x[:, 1:]], 1))
    assert bool((out.x[:, 0] == 1.5).all())
    with pytest.raises(ValueError, match="callback must return"):
        sgm.samplers.ddim(gm.score_fn(forward), forward, x, grid, callback=lambda x, node, p: x[:2])
    with pytest.raises(TypeError, match="callback must be callable"):
        sgm.samplers.ddim(gm.score_fn(forward), forward, x, grid, callback=3)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_logsnr_grid_is_uniform_in_lambda_and_is_the_geometric_one(sde_name):
    forward = SDES[sde_name]()
    grid = time_grid(forward, 9, spacing="logsnr", denoise=False)
    lam = torch.tensor([n.lam for n in grid.nodes], dtype=D)
    lo, hi = forward.marginal(torch.tensor([forward.T, 1e-3], dtype=D))
    torch.testing.assert_close(lam, torch.linspace(math.log(lo[0] / hi[0]), math.log(lo[1] / hi[1]), 9, dtype=D),
                               rtol=1e-9, atol=1e-9)
    assert grid == time_grid(forward, 9, spacing="geometric", denoise=False)
    for node in grid.nodes:
        assert node.lam == pytest.approx(-math.log(node.noise_level))
    assert Node(0.0, 1.0, 0.0).lam == math.inf and Node(0.0, 1.0, 0.0).noise_level == 0.0


def test_karras_rho_option():
    forward = sgm.VESDE()

    def sigmas(rho):
        return torch.tensor([n.noise_level for n in time_grid(forward, 6, spacing="karras", rho=rho).noisy], dtype=D)

    lo, hi = 0.01 * (50 / 0.01) ** 1e-3, 50.0
    for rho in (1.0, 3.0, 7.0):
        u = torch.linspace(1, 0, 6, dtype=D)
        expected = (lo ** (1 / rho) + (hi ** (1 / rho) - lo ** (1 / rho)) * u) ** rho
        torch.testing.assert_close(sigmas(rho).to(D), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="rho"):
        time_grid(forward, 6, spacing="karras", rho=0)


def test_sample_takes_a_ready_grid():
    gm, forward = mixture(), sgm.SubVPSDE()
    grid = TimeGrid.from_times(forward, [1.0, 0.6, 0.3, 0.1, 0.01])
    a = sgm.sample(gm.score_fn(forward), forward, (10, 2), sampler="ddim", grid=grid, generator=gen(0), dtype=D)
    x = forward.prior_sample((10, 2), generator=gen(0), dtype=D)
    b = sgm.samplers.ddim(gm.score_fn(forward), forward, x, grid)
    assert a.nfe == 5 and torch.equal(a.x, b.x)
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        sgm.sample(gm.score_fn(forward), forward, (10, 2), sampler="ddim", grid=[1.0, 0.5])
    with pytest.raises(ValueError, match="after the SDE's T"):
        sgm.sample(gm.score_fn(forward), sgm.VPSDE(T=0.5), (10, 2), sampler="ddim", grid=grid)


def test_a_solver_keeps_its_memory_in_the_state():
    """A custom solver: a two-step Adams–Bashforth in t on the probability-flow ODE, state = last velocity.
    Reusing one solver object for two runs gives the same result (no memory on the object)."""

    class AB2(Solver):
        name, ode_order = "ab2", 2

        def step(self, model, x, a, b, state, noise):
            t = torch.full((x.shape[0],), a.t, dtype=x.dtype)
            v = model.sde.ode_drift(x, t, model(x, a).score)
            h = b.t - a.t
            x = x + h * v if state is None else x + h * (1.5 * v - 0.5 * state)
            return x, v

    gm, forward = mixture(), sgm.VPSDE()
    solver, x = AB2(), forward.prior_sample((50, 2), generator=gen(2), dtype=D)
    score = gm.score_fn(forward)
    ref = sgm.samplers.ode(score, forward, x, time_grid(forward, 2, denoise=False), rtol=1e-10, atol=1e-10).x
    errors = [float((integrate(solver, score, forward, x, time_grid(forward, k, denoise=False)).x - ref).norm(dim=1)
                    .mean()) for k in (50, 100)]
    assert 3.2 < errors[0] / errors[1] < 4.8  # second order: halving the step divides the error by ~4
    assert torch.equal(integrate(solver, score, forward, x, time_grid(forward, 50, denoise=False)).x,
                       integrate(solver, score, forward, x, time_grid(forward, 50, denoise=False)).x)


def test_integrate_rejects_bad_arguments():
    gm, forward = mixture(), sgm.VPSDE()
    x, grid = torch.zeros(3, 2, dtype=D), time_grid(forward, 3)
    with pytest.raises(TypeError, match="solver must be an sgm Solver"):
        integrate("ddim", gm.score_fn(forward), forward, x, grid)
    with pytest.raises(TypeError, match="sde must be"):
        integrate(sgm.samplers.solver("ddim"), gm.score_fn(forward), "vp", x, grid)
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        integrate(sgm.samplers.solver("ddim"), gm.score_fn(forward), forward, x, [1.0])
    with pytest.raises(TypeError, match="takes no option"):
        sgm.samplers.solver("ddim", order=2)
