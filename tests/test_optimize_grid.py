"""Optimised time grids (``sgm.samplers.optimize_grid``) on the exact 2-D mixture, and saving/loading grids."""
import itertools
import json
import math

import pytest
import torch

import sgm
from sgm.samplers import TimeGrid, integrate, optimize_grid, solver, time_grid
from sgm.samplers.optimize import FIXED_SPACINGS, cheapest_path, flow_map, map_error
from conftest import SDES, gen, mixture

D = torch.float64


def held_out_errors(sde, name, options, steps, grid):
    """Map errors on 500 held-out prior draws (another seed than the calibration batch): each fixed spacing's
    and the grid's."""
    score = mixture().score_fn(sde)
    x = sde.prior_sample((500, 2), generator=gen(123), dtype=D)
    reference, _ = flow_map(score, sde, x)
    method = solver(name, **options)
    fixed = {s: map_error(integrate(method, score, sde, x, time_grid(sde, steps, s)).x, reference)
             for s in FIXED_SPACINGS}
    return fixed, map_error(integrate(method, score, sde, x, grid).x, reference)


# Held-out ratio optimised / best fixed spacing, as measured (n = 128): vp ddim 0.79, vp heun2 0.49,
# ve ddim 0.60, ve heun2 0.54 (benchmarks/optimize_grid.py: the same direction on other targets).
@pytest.mark.parametrize("sde_name, name, options, steps", [
    ("vp", "ddim", {}, 8), ("vp", "ode", {"method": "heun2"}, 5),
    ("ve", "ddim", {}, 8), ("ve", "ode", {"method": "heun2"}, 5)])
def test_optimised_grid_beats_every_fixed_spacing_on_held_out_draws(sde_name, name, options, steps):
    sde = SDES[sde_name]()
    grid = optimize_grid(mixture().score_fn(sde), sde, steps, name, shape=(2,), n=128, generator=gen(0), **options)
    fixed, optimised = held_out_errors(sde, name, options, steps, grid)
    assert optimised < min(fixed.values()), (optimised, fixed)
    # The calibration error went down from the best fixed spacing's, and the record says so.
    info = grid.info
    assert info["error"] < info["fixed_errors"][info["start"]] == min(info["fixed_errors"].values())


def test_grid_shape_identity_and_cost_record():
    sde = sgm.VPSDE()
    steps, method = 5, solver("ode", method="heun2")
    grid = optimize_grid(mixture().score_fn(sde), sde, steps, "ode", shape=(2,), n=32, generator=gen(0), sweeps=1,
                         eps=2e-3, method="heun2")
    assert len(grid.noisy) == steps and grid.denoise and grid.sde == repr(sde)
    assert grid.noisy[0].t == sde.T and grid.noisy[-1].t == pytest.approx(2e-3, rel=1e-12)
    lams = [n.lam for n in grid.noisy]
    assert all(a < b for a, b in zip(lams, lams[1:]))
    # Every run is a full sampler run on the batch: the evaluations spent are the reference's plus the runs'.
    info = grid.info
    assert info["nfe"] == info["reference_nfe"] + info["runs"] * method.nfe(steps)
    assert info["runs"] >= len(FIXED_SPACINGS) + 1 and info["reference_nfe"] > 50
    assert info["history"][-1] == [info["nfe"], info["error"]]
    assert info["sampler"] == "ode" and info["options"] == {"method": "heun2"}


def test_cheapest_path_is_the_brute_force_minimum():
    g = gen(4)
    for K, nodes in [(6, 3), (8, 4), (9, 6), (7, 7)]:
        cost = torch.rand(K, K, generator=g, dtype=D).tolist()
        cost[0][K - 1] = math.inf  # an unreachable edge is never taken
        paths = [(0, *mid, K - 1) for mid in itertools.combinations(range(1, K - 1), nodes - 2)]
        total = lambda p: sum(cost[a][b] for a, b in zip(p, p[1:]))  # noqa: E731
        best = min(paths, key=total)
        assert tuple(cheapest_path(cost, nodes)) == best
    assert cheapest_path([[math.inf] * 4 for _ in range(4)], 3) is None


def test_the_dp_start_only_adds_a_second_descent():
    """With ``dp=True`` the descent from the best fixed spacing runs as before, and a second one from the DP
    surrogate's grid: the kept calibration error can only be lower or equal (the runs are deterministic)."""
    sde, score = sgm.VESDE(), mixture().score_fn(sgm.VESDE())
    kwargs = dict(shape=(2,), n=64, generator=None, sweeps=2)
    plain = optimize_grid(score, sde, 6, "ddim", **{**kwargs, "generator": gen(0)})
    with_dp = optimize_grid(score, sde, 6, "ddim", dp=True, candidates=18, **{**kwargs, "generator": gen(0)})
    assert with_dp.info["error"] <= plain.info["error"] and with_dp.info["nfe"] > plain.info["nfe"]
    assert math.isfinite(with_dp.info["dp_error"]) and with_dp.info["dp_nfe"] > 0 and plain.info["dp_error"] is None
    assert len(with_dp.noisy) == 6 and with_dp.noisy[0].t == sde.T


def test_two_steps_leave_nothing_to_move():
    sde = sgm.VESDE()
    grid = optimize_grid(mixture().score_fn(sde), sde, 2, "ddim", shape=(2,), n=16, generator=gen(0))
    assert grid.info["runs"] == len(FIXED_SPACINGS) and grid == time_grid(sde, 2, grid.info["start"])


def test_save_load_round_trip_and_reuse(tmp_path):
    sde, gm = sgm.VESDE(), mixture()
    grid = optimize_grid(gm.score_fn(sde), sde, 4, "ddim", shape=(2,), n=32, generator=gen(0), sweeps=1)
    path = tmp_path / "grid.json"
    grid.save(path)
    loaded = TimeGrid.load(path, sde)
    assert loaded == grid and loaded.nodes == grid.nodes and loaded.sde == grid.sde  # floats exact
    assert dict(loaded.info) == json.loads(json.dumps(dict(grid.info)))
    a = sgm.sample(gm.score_fn(sde), sde, (50, 2), "ddim", grid=grid, generator=gen(5), dtype=D)
    b = sgm.sample(gm.score_fn(sde), sde, (50, 2), "ddim", grid=loaded, generator=gen(5), dtype=D)
    assert a.nfe == b.nfe == 4 and torch.equal(a.x, b.x)
    # A chain grid keeps its SDE too.
    chain = time_grid(sde, 7, "trailing")
    chain.save(path)
    assert TimeGrid.load(path) == chain and TimeGrid.load(path).sde == repr(sde)


def test_a_grid_for_another_sde_is_refused(tmp_path):
    vp, ve, gm = sgm.VPSDE(), sgm.VESDE(), mixture()
    grid = time_grid(vp, 5)
    grid.save(tmp_path / "vp.json")
    with pytest.raises(ValueError, match="made for VPSDE"):
        TimeGrid.load(tmp_path / "vp.json", ve)
    with pytest.raises(ValueError, match="made for VPSDE"):
        TimeGrid.load(tmp_path / "vp.json", sgm.VPSDE(beta_max=10.0))
    with pytest.raises(ValueError, match="made for VPSDE"):
        sgm.sample(gm.score_fn(ve), ve, (4, 2), "ddim", grid=grid)
    # A hand-made grid of unknown SDE is accepted by any.
    anonymous = TimeGrid(grid.nodes)
    assert anonymous.sde is None and sgm.sample(gm.score_fn(vp), vp, (4, 2), "ddim", grid=anonymous).nfe == 5


@pytest.mark.parametrize("content, match", [
    ("not json", "invalid JSON"),
    ('{"nodes": [[1.0, 1.0, 1.0]]}', "not an sgm time grid"),
    ('{"format": "sgm.TimeGrid", "version": 3, "nodes": []}', "version 3"),
    ('{"format": "sgm.TimeGrid", "version": 1, "nodes": [[1.0, 1.0]]}', "nodes must be a list"),
    ('{"format": "sgm.TimeGrid", "version": 2, "nodes": [[1.0, 1.0, 1.0, 0.5]]}', "nodes must be a list"),
    ('{"format": "sgm.TimeGrid", "version": 1, "nodes": [[1.0, -1.0, 1.0]]}', "scale >= 0"),
    ('{"format": "sgm.TimeGrid", "version": 1, "nodes": [[1.0, 1.0, 1.0], [0.5, 0.0, 1.0]]}', "only the first"),
    ('{"format": "sgm.TimeGrid", "version": 1, "nodes": [[0.5, 1.0, 1.0], [0.9, 1.0, 2.0]]}', "decrease"),
])
def test_load_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        TimeGrid.load(path)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sampler": "euler_maruyama"}, ValueError, "stochastic"),
    ({"sampler": "ddim", "eta": 0.5}, ValueError, "stochastic"),
    ({"sampler": "ode", "method": "dopri5"}, ValueError, "adaptive"),
    ({"sampler": "nope"}, ValueError, "unknown sampler"),
    ({"sampler": "ddim", "order": 2}, TypeError, "takes no option"),
    ({"steps": 0}, ValueError, "steps"),
    ({"n": 0}, ValueError, "n must be"),
    ({"n": 2.5}, TypeError, "n must be"),
    ({"shape": 2}, TypeError, "shape"),
    ({"start": "trailing"}, ValueError, "start"),
    ({"sweeps": -1}, ValueError, "sweeps"),
    ({"dp": 1}, TypeError, "dp"),
    ({"candidates": 3}, ValueError, "candidates"),
    ({"tol": -1.0}, ValueError, "tol"),
    ({"reference_tol": 0.0}, ValueError, "reference_tol"),
    ({"eps": 2.0}, ValueError, "eps"),
    ({"generator": 3}, TypeError, "generator"),
    ({"dtype": torch.int64}, TypeError, "dtype"),
])
def test_bad_arguments(kwargs, error, match):
    sde = sgm.VPSDE()
    args = {"steps": 4, "sampler": "ddim", "shape": (2,), "n": 8, **kwargs}
    with pytest.raises(error, match=match):
        optimize_grid(mixture().score_fn(sde), sde, args.pop("steps"), args.pop("sampler"), **args)


def test_bad_score_and_sde():
    sde = sgm.VPSDE()
    with pytest.raises(TypeError, match="score"):
        optimize_grid(None, sde, 4, shape=(2,))
    with pytest.raises(TypeError, match="sde"):
        optimize_grid(mixture().score_fn(sde), "vp", 4, shape=(2,))
