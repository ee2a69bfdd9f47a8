"""Noise sources: the counter-based per-sample streams are the documented formula and pass statistical tests of
normality and independence; Brownian noise is one Brownian path per sample (the covariance min(s, t), a fixed
function of time, independent of the batch); bad input is refused by name."""
import math

import pytest
import torch

import sgm
from sgm.samplers import BrownianNoise, Noise, SeededNoise
from sgm.samplers.noise import GOLDEN, counter_normals, levels_for, splitmix64, stream_keys
from conftest import gen

D = torch.float64
U64 = (1 << 64) - 1


def reference_normal(seed: int, tag: int, draw: int, j: int, numel: int) -> float:
    """Element ``j`` of draw ``draw`` of seed ``seed``'s stream ``tag``, transcribed from the module docstring in
    Python integers (SplitMix64 written out again, not imported)."""
    def mix(z):
        z &= U64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
        return z ^ (z >> 31)

    key = mix(mix((seed + 1) * 0x9E3779B97F4A7C15) + tag * 0x9E3779B97F4A7C15)
    pairs = (numel + 1) // 2
    p = j if j < pairs else j - pairs
    h = mix(key ^ ((((draw << 32) + p) * 0x9E3779B97F4A7C15) & U64))
    u, theta = ((h >> 32) + 0.5) / 2**32, 2 * math.pi * (h & 0xFFFFFFFF) / 2**32
    r = math.sqrt(-2 * math.log(u))
    return r * math.cos(theta) if j < pairs else r * math.sin(theta)


def test_splitmix64_is_the_published_generator():
    """SplitMix64 (Vigna's splitmix64.c) from state 0 is ``mix(k·γ)``, k = 1, 2, …: its first outputs are the
    published ones."""
    assert [splitmix64(k * GOLDEN) for k in (1, 2, 3, 4)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]


@pytest.mark.parametrize("numel", [1, 2, 5, 8])
def test_counter_normals_are_the_documented_formula(numel):
    seeds, draws = [0, 1, 7, 2**40 + 3, 2**63 - 1], [0, 3, 2**20 + 5]
    for draw in draws:
        for dtype, tol in ((D, 1e-12), (torch.float32, 2e-5)):
            z = counter_normals(stream_keys(seeds, 1), draw, numel, dtype)
            assert z.shape == (len(seeds), numel) and z.dtype == dtype
            expected = torch.tensor([[reference_normal(s, 1, draw, j, numel) for j in range(numel)] for s in seeds],
                                    dtype=D)
            torch.testing.assert_close(z.to(D), expected, rtol=tol, atol=tol)


def _normals():
    """1000 seeds × 20 draws × 50 elements = 10⁶ float64 normals, indexed [draw, seed, element]."""
    keys = stream_keys(range(1000), 1)
    return torch.stack([counter_normals(keys, c, 50, D) for c in range(20)])


def test_counter_normals_have_the_normal_law():
    """Moments within 5 standard errors of N(0, 1)'s; the Kolmogorov–Smirnov distance to Φ below its 0.1% point
    1.95/√N; χ² of Φ(z) in 100 equiprobable bins below 99 + 5·√198 (its mean plus 5 sd). All deterministic: the
    bounds are tail points a correct generator passes with probability > 0.999 each."""
    z = _normals().flatten()
    n = z.numel()
    m, v = float(z.mean()), float(z.var())
    c = (z - m) / math.sqrt(v)
    skew, kurt = float((c**3).mean()), float((c**4).mean()) - 3
    assert abs(m) < 5 / math.sqrt(n) and abs(v - 1) < 5 * math.sqrt(2 / n)
    assert abs(skew) < 5 * math.sqrt(6 / n) and abs(kurt) < 5 * math.sqrt(24 / n)
    u = torch.special.ndtr(z.sort().values)
    i = torch.arange(1, n + 1, dtype=D)
    ks = float(torch.maximum(i / n - u, u - (i - 1) / n).max())
    assert ks < 1.95 / math.sqrt(n), ks
    counts = torch.bincount((u * 100).long().clamp_(max=99), minlength=100).to(D)
    chi2 = float(((counts - n / 100) ** 2 / (n / 100)).sum())
    assert chi2 < 99 + 5 * math.sqrt(198), chi2
    assert float(z.abs().max()) < 6.8  # 32-bit uniforms: |z| <= √(-2 ln 2^-33) = 6.76


def test_counter_normals_are_independent_across_seeds_draws_and_elements():
    """Correlations (of z and of z², which Box–Muller pairs would betray by a shared radius) between neighbouring
    seeds, draws, elements and the two halves of a Box–Muller pair are within 5/√M of 0, and the joint law of
    neighbouring seeds' Φ(z) passes χ² on a 10×10 grid (99 + 5·√198)."""
    z = _normals()

    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm())), a.numel()

    pairs = {"seeds": (z[:, :-1], z[:, 1:]), "draws": (z[:-1], z[1:]), "elements": (z[..., :-1], z[..., 1:]),
             "cos/sin halves": (z[..., :25], z[..., 25:]), "seeds 0 and 500": (z[:, :500], z[:, 500:])}
    for label, (a, b) in pairs.items():
        for power in (1, 2):
            r, m = corr(a**power, b**power)
            assert abs(r) < 5 / math.sqrt(m), (label, power, r)
    u = torch.special.ndtr(z)
    cell = (u[:, :-1] * 10).long().clamp_(max=9) * 10 + (u[:, 1:] * 10).long().clamp_(max=9)
    counts = torch.bincount(cell.flatten(), minlength=100).to(D)
    expected = cell.numel() / 100
    assert float(((counts - expected) ** 2 / expected).sum()) < 99 + 5 * math.sqrt(198)


def test_seeded_noise_rows_are_their_seeds_streams_in_call_order():
    """Row i of SeededNoise's c-th draw is ``counter_normals`` of seeds[i] (stream 1, draw c), whatever the batch:
    the same seed in two batches of other sizes and orders gives the same row."""
    a = SeededNoise([3, 9, 4], torch.empty(3, 2, 2, dtype=D))
    b = SeededNoise([4, 3], torch.empty(2, 2, 2, dtype=D))
    for c in range(3):
        za, zb = a(), b()
        assert za.shape == (3, 2, 2)
        torch.testing.assert_close(za.reshape(3, 4), counter_normals(stream_keys([3, 9, 4], 1), c, 4, D),
                                   rtol=0, atol=0)
        assert torch.equal(za[0], zb[1]) and torch.equal(za[2], zb[0])
    assert torch.equal(a(1.0, 0.5), counter_normals(stream_keys([3, 9, 4], 1), 3, 4, D).reshape(3, 2, 2))


def _w(noise, times):
    """W at ``times`` from a bound BrownianNoise, as ``noise(t, 0)·√t`` (W(0) = 0)."""
    return torch.stack([noise(t, 0.0) * math.sqrt(t) for t in times])


# times on both sides of octave boundaries (T·2^-k), inside and at the ends of leaves, near 0 and at T
TIMES = [1.0, 0.999, 0.75, 0.5000001, 0.5, 0.4999999, 0.3, 0.25, 0.1, 0.0625, 0.01, 1e-3, 1e-5]


@pytest.mark.parametrize("source", ["seeds", "generator"])
def test_brownian_noise_has_the_covariance_of_brownian_motion(source):
    """Over 20 000 paths the sample covariance of (W(t_1), …, W(t_13)) is min(t_i, t_j) within 5 standard errors
    (the sd of a product's mean, √((t_i t_j + min²)/n)), the path's values at times inside one leaf included."""
    n = 20_000
    x = torch.empty(n, 1, dtype=D)
    noise = BrownianNoise(range(n) if source == "seeds" else gen(0)).bind(x, 1.0)
    w = _w(noise, TIMES)[..., 0]
    t = torch.tensor(TIMES, dtype=D)
    cov = w @ w.T / n
    se = torch.sqrt((t[:, None] * t[None, :] + torch.minimum(t[:, None], t[None, :]) ** 2) / n)
    err = (cov - torch.minimum(t[:, None], t[None, :])).abs() / se
    assert float(err.max()) < 5, err.max()


def test_normalised_increments_are_independent_standard_normals():
    """The normalised increments over a 100-step grid, 2000 paths of 2 elements: each step's are N(0, 1) (pooled KS
    against Φ below 1.95/√N) and neighbouring steps' are uncorrelated (within 5/√M)."""
    x = torch.empty(2000, 2, dtype=D)
    noise = BrownianNoise(range(2000)).bind(x, 1.0)
    ts = torch.linspace(1.0, 1e-3, 101, dtype=D).tolist()
    z = torch.stack([noise(a, b) for a, b in zip(ts[:-1], ts[1:])])
    u = torch.special.ndtr(z.flatten().sort().values)
    n = u.numel()
    i = torch.arange(1, n + 1, dtype=D)
    assert float(torch.maximum(i / n - u, u - (i - 1) / n).max()) < 1.95 / math.sqrt(n)
    r = float((z[:-1] * z[1:]).mean() / (z[:-1].std() * z[1:].std()))
    assert abs(r) < 5 / math.sqrt(z[1:].numel())


@pytest.mark.parametrize("source", ["seeds", "generator"])
def test_one_source_is_one_path_whatever_the_steps(source):
    """Two runs of one BrownianNoise object: the increment over a coarse step is the sum of the increments over the
    fine steps inside it, to rounding, whatever order the steps are asked in."""
    x = torch.empty(16, 3, dtype=D)
    spec = BrownianNoise(range(16) if source == "seeds" else gen(4))
    coarse, fine = spec.bind(x, 1.0), spec.bind(x, 1.0)
    ts = torch.linspace(1.0, 1e-3, 41, dtype=D).tolist()
    inc = {(a, b): fine(a, b) * math.sqrt(a - b) for a, b in zip(ts[:-1], ts[1:])}
    for k in range(0, 40, 8):
        a, b = ts[k], ts[k + 8]
        total = sum(inc[(ts[j], ts[j + 1])] for j in range(k, k + 8))
        torch.testing.assert_close(coarse(a, b) * math.sqrt(a - b), total, rtol=0, atol=1e-13)
    torch.testing.assert_close(coarse(ts[5], ts[3 * 8]), fine(ts[5], ts[3 * 8]), rtol=0, atol=0)


def test_per_sample_brownian_paths_do_not_depend_on_the_batch():
    whole = BrownianNoise(range(20)).bind(torch.empty(20, 2, dtype=D), 1.0)
    part = BrownianNoise(range(13, 20)).bind(torch.empty(7, 2, dtype=D), 1.0)
    for a, b in ((1.0, 0.7), (0.7, 0.69), (0.3, 0.001)):
        assert torch.equal(whole(a, b)[13:], part(a, b))
    assert torch.equal(whole()[13:], part())  # a draw with no interval: the seeds' streams, call by call


def test_generator_source_draws_with_no_interval_in_call_order():
    """BrownianNoise(g) takes one 64-bit draw from g when made; a draw with no interval is then g's next randn."""
    g, h = gen(7), gen(7)
    noise = BrownianNoise(g).bind(torch.empty(4, 2, dtype=D), 1.0)
    torch.randint(2**63 - 1, (1,), generator=h)
    assert torch.equal(noise(), torch.randn(4, 2, generator=h, dtype=D))


def test_tol_sets_the_depth_of_the_leaves():
    """Leaves of relative width ln 2 / 2^L ≤ tol; tol=1e-4 (default) gives L = 13 (ln 2/2^13 = 8.5e-5)."""
    assert levels_for(1e-4) == 13 and levels_for(math.log(2)) == 0
    for tol in (1e-2, 1e-4, 1e-6):
        assert math.log(2) / 2 ** levels_for(tol) <= tol < math.log(2) / 2 ** (levels_for(tol) - 1)


def test_bad_noise_input_is_refused_by_name():
    x = torch.empty(3, 2, dtype=D)
    noise = BrownianNoise(range(3)).bind(x, 1.0)
    with pytest.raises(ValueError, match="t0 > t1"):
        noise(0.5, 0.5)
    with pytest.raises(ValueError, match="t0 > t1"):
        Noise(gen(0), x)(0.2, 0.5)  # checked for every source, so a solver's mistake shows with plain noise too
    with pytest.raises(TypeError, match="both ends"):
        noise(0.5)
    with pytest.raises(ValueError, match="horizon T=1.0"):
        noise(1.5, 0.5)
    with pytest.raises(ValueError, match="not tied to a state"):
        BrownianNoise(range(3))()
    with pytest.raises(ValueError, match="one seed per sample"):
        BrownianNoise(range(2)).bind(x, 1.0)
    with pytest.raises(ValueError, match="seeds must be ints"):
        SeededNoise([0, -1])
    with pytest.raises(TypeError, match="seeds must be a sequence"):
        BrownianNoise(3)
    for tol in (0, 1.5, -1):
        with pytest.raises(ValueError, match="tol"):
            BrownianNoise(gen(0), tol=tol)
    score, sde = sgm.ring_mixture().score_fn(sgm.VPSDE()), sgm.VPSDE()
    with pytest.raises(ValueError, match="noise must be None, 'brownian' or an sgm Noise"):
        sgm.sample(score, sde, (3, 2), "euler_maruyama", 3, noise="white")
    with pytest.raises(TypeError, match="noise must be None, 'brownian' or an sgm Noise"):
        sgm.sample(score, sde, (3, 2), "euler_maruyama", 3, noise=torch.randn(3, 2))
    with pytest.raises(ValueError, match="only source of randomness"):
        sgm.sample(score, sde, (3, 2), "euler_maruyama", 3, noise=BrownianNoise(range(3)), generator=gen(0))
    with pytest.raises(ValueError, match="not both"):
        sgm.sample(score, sde, (3, 2), "euler_maruyama", 3, noise="brownian", seeds=[0, 1, 2], generator=gen(0))
