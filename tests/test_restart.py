"""Restart sampling: the published algorithm (Xu et al., 2023; ``restart_sampler`` of the paper's code) written out
here on ``y = x/α`` in the noise level σ, element by element for the same noise; the NFE of the paper's ImageNet-64
configuration; no restart is EDM's Heun; the jumps' noise named as Brownian increments only where that is right;
options refused by name."""
import math

import pytest
import torch

import sgm
from sgm.samplers import integrate, time_grid
from sgm.samplers.restart import PRESETS
from conftest import SDES, RecordedNoise, gen, mixture

D = torch.float64


def karras(hi, lo, n, rho=7.0):
    return [(hi ** (1 / rho) + k / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for k in range(n)]


def published(gm, sde, x_T, grid, intervals, draws):
    """The paper's sampler: EDM's Heun over the main levels ``σ_i`` (the grid's, then 0: the last step Euler), and
    after the step into the level nearest to each ``σ_min``, ``K`` times: ``y ← y + √(σ_max² - σ_i²) z`` and Heun over
    the Karras levels (ρ = 7) from ``σ_max`` to ``σ_i``; ``D(y; σ) = x̂_0(α(t) y, t)`` at the path time ``t(σ)``."""
    levels = [n.noise_level for n in grid.noisy] + [0.0]
    times = {n.noise_level: n.t for n in grid.noisy}

    def denoised(y, sigma):
        t = times.get(sigma)
        t = float(sde.time_at_noise_level(torch.tensor(sigma, dtype=D))) if t is None else t
        tt = torch.full((y.shape[0],), t, dtype=D)
        alpha = float(sde.alpha(tt[:1]))
        return gm.denoise(alpha * y, tt, sde)

    def heun(y, s, s_next):
        d = (y - denoised(y, s)) / s
        y_next = y + (s_next - s) * d
        if s_next == 0:
            return y_next
        return y + (s_next - s) * (d / 2 + (y_next - denoised(y_next, s_next)) / s_next / 2)

    restart = {min(range(len(levels)), key=lambda j: abs(levels[j] - lo)): (lo, hi, k, n) for lo, hi, k, n in intervals}
    draws, y = list(draws), x_T / grid.noisy[0].scale
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        y = heun(y, s, s_next)
        if i + 1 in restart:
            _, hi, k, n = restart[i + 1]
            inner = karras(hi, levels[i + 1], n)
            for _ in range(k):
                y = y + draws.pop(0) * math.sqrt(inner[0] ** 2 - inner[-1] ** 2)
                for a, b in zip(inner, inner[1:]):
                    y = heun(y, a, b)
    assert not draws
    return y


@pytest.mark.parametrize("intervals", [PRESETS["cifar10_vp"], PRESETS["cifar10_edm"],
                                       [(0.06, 0.30, 3, 4), (0.9, 3.0, 2, 3), (5.0, 12.0, 1, 5)]], ids=str)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_restart_is_the_published_algorithm(sde_name, intervals):
    """On 18 Karras main levels (the paper's CIFAR-10 setting), for the same draws; float64 on both sides, the same
    operations up to the order of additions: ≤ 1e-11 relative (measured ≤ 1e-14)."""
    forward, gm = SDES[sde_name](), mixture()
    grid = time_grid(forward, 18, spacing="karras")
    x_T = forward.prior_sample((64, 2), generator=gen(0), dtype=D)
    noise = RecordedNoise(gen(1), x_T)
    solver = sgm.samplers.solver("restart", intervals=[tuple(i) for i in intervals])
    out = integrate(solver, gm.score_fn(forward), forward, x_T, grid, noise=noise)
    assert out.nfe == solver.nfe(18) == 2 * 18 - 1 + sum(k * 2 * (n - 1) for _, _, k, n in intervals)
    expected = published(gm, forward, x_T, grid, intervals, [z for _, _, z in noise.draws])
    assert float((out.x - expected).norm() / expected.norm()) < 1e-11


def test_the_papers_imagenet_configuration_spends_203_evaluations():
    """Xu et al.'s ImageNet-64 run (36 main steps, five intervals): NFE 203, as the paper reports."""
    solver = sgm.samplers.solver("restart", intervals="imagenet64")
    assert solver.nfe(36) == 203 and solver.steps_for_nfe(203) == 36 and solver.steps_for_nfe(202) == 35
    forward, gm = sgm.VESDE(), mixture()
    out = sgm.sample(gm.score_fn(forward), forward, (4, 2), "restart", steps=36, intervals="imagenet64", dtype=D)
    assert out.nfe == 203


@pytest.mark.parametrize("options", [{"intervals": []}, {"repeats": 0}])
def test_no_restart_is_edms_heun(options):
    forward, gm = sgm.VPSDE(), mixture()
    x = forward.prior_sample((32, 2), generator=gen(0), dtype=D)
    grid = time_grid(forward, 12, spacing="karras")
    a = sgm.samplers.get("restart")(gm.score_fn(forward), forward, x, grid, **options)
    b = sgm.samplers.get("heun")(gm.score_fn(forward), forward, x, grid)
    assert a.nfe == b.nfe == 23 and not sgm.samplers.solver("restart", **options).stochastic
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)


def test_a_jump_is_named_only_where_it_is_an_increment_of_the_one_path():
    """The first jump over an interval names ``(t(σ_max), t(node))``; its repeats, and an interval overlapping one named
    before (the paper's Stable Diffusion configuration at guidance 2: [1, 9] after [5, 10]), are independent draws."""
    forward, gm = sgm.VESDE(), mixture()
    grid = time_grid(forward, 20, spacing="karras")
    x = forward.prior_sample((4, 2), generator=gen(0), dtype=D)
    noise = RecordedNoise(gen(1), x)
    integrate(sgm.samplers.solver("restart", intervals=[(1.0, 9.0, 2, 5), (5.0, 10.0, 2, 5)]), gm.score_fn(forward),
              forward, x, grid, noise=noise)
    node = lambda s: min(grid.noisy[1:], key=lambda n: abs(n.noise_level - s))  # noqa: E731
    top = float(forward.time_at_noise_level(torch.tensor(10.0, dtype=D)))
    assert [(t0, t1) for t0, t1, _ in noise.draws] == [(pytest.approx(top, rel=1e-12), node(5.0).t), (None, None),
                                                       (None, None), (None, None)]


@pytest.mark.parametrize("options, error, match", [
    ({"intervals": "cifar100"}, ValueError, "intervals must be one of the presets"),
    ({"intervals": [(0.3, 0.06, 2, 3)]}, ValueError, "sigma_min < sigma_max"),
    ({"intervals": [(0.06, 0.3, 2)]}, TypeError, "intervals must be"),
    ({"intervals": [(0.06, 0.3, 2, 1)]}, ValueError, "levels"),
    ({"intervals": [(-0.06, 0.3, 2, 3)]}, ValueError, "sigma_min"),
    ({"repeats": -1}, ValueError, "repeats"), ({"repeats": 1.5}, TypeError, "repeats"),
    ({"inner_steps": 1}, ValueError, "inner_steps"), ({"s_noise": 0.0}, ValueError, "s_noise"),
])
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        sgm.samplers.solver("restart", **options)


def test_an_interval_above_the_grid_is_refused_before_any_work():
    calls = []
    gm = mixture()

    def score(x, t):
        calls.append(t)
        return gm.score(x, t, sgm.VESDE())

    with pytest.raises(ValueError, match="sigma_max=60.0, above the grid's first noise level"):
        sgm.sample(score, sgm.VESDE(), (4, 2), "restart", steps=10, intervals=[(0.1, 60.0, 1, 3)])
    assert calls == []


def test_an_interval_snaps_to_a_node_below_its_top():
    """The jump goes up from the node to σ_max: where the node nearest σ_min lies above σ_max (a coarse grid), the
    interval snaps to the nearest node below σ_max, and the run is the published one with σ_min at that node."""
    gm, sde = mixture(), sgm.VESDE()
    x_T = sde.prior_sample((16, 2), generator=gen(1), dtype=D)
    grid = time_grid(sde, 6, "karras")
    levels = [n.noise_level for n in grid.noisy]
    lo, hi = levels[3] * 0.9, levels[3] * 0.95  # nearest node to σ_min: levels[3], above σ_max
    solver = sgm.samplers.solver("restart", intervals=[(lo, hi, 1, 3)])
    noise = RecordedNoise(gen(2), x_T)
    ours = integrate(solver, gm.score_fn(sde), sde, x_T, grid, noise=noise)
    ref = published(gm, sde, x_T, grid, [(levels[4], hi, 1, 3)], [z for *_, z in noise.draws])
    assert torch.allclose(ours.x, ref * grid.nodes[-1].scale, rtol=1e-10, atol=1e-10)


def test_an_interval_below_every_node_is_refused_before_any_work():
    """On SD3's shifted clock a 4-level flow grid's lowest node has σ/α ≈ 1.0, above the interval's σ_max = 0.3: no node to jump up from, refused by name before any evaluation (it
    was a failed noise draw over an inverted interval)."""
    calls = []
    gm = mixture()
    sde = sgm.RectifiedFlow(3.0)

    def model(x, t):
        calls.append(t)
        return gm.denoise(x, t, sde)

    with pytest.raises(ValueError, match="sigma_max=0.3, but no noisy node after the first lies below it"):
        sgm.sample(sgm.ScoreModel(model, sde, "x0"), sde, (4, 2), "restart", steps=4, spacing="flow",
                   intervals=[(0.06, 0.3, 1, 3)])
    assert calls == []
