"""Measured orders and spacings of the stochastic exponential integrators (dpm_solver_sde, euler_ancestral,
dpmpp_2s_ancestral), with the exact score (float64): the numbers behind their declared orders and registry entries.

- ``weak``: weak error ``|E x - m| + |Var x - v|`` at ``eps`` (no denoising) against the exact moments, from exact
  ``p_T`` draws, as the least-squares slope over 16 … 256 steps. On a Gaussian target the samplers are affine in
  ``(x_T, z_1, z_2, …)``, so their output moments are computed exactly (no Monte Carlo): run on ``x_T = 0``, ``x_T = 1``
  and one unit draw at a time. On a 1-D two-mode mixture (as
  ``tests/test_convergence.py::test_weak_order_on_a_mixture``), by Monte Carlo with ``--n`` samples.
- ``strong``: ``E ‖x_K - x_ref‖`` against the same solver at ``--fine`` steps on the same Brownian path per sample
  (``torchsde.BrownianInterval`` over path time; a draw for ``[t1, t0]`` is the normalised increment), 2-D mixture.
- ``spacing``: SW₂ to the target (n = 10⁴, over the Monte-Carlo floor) at 10, 20, 50 and 100 steps on each spacing.

    python benchmarks/stochastic_exponential.py [--only weak|strong|spacing]
"""
from __future__ import annotations

import argparse
import math

import torch

import sgm
from sgm import metrics
from sgm.samplers import Noise, integrate, time_grid

D = torch.float64
SDES = {"vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE}
SAMPLERS = [("dpm_solver_sde", {"order": 1}), ("dpm_solver_sde", {"order": 2}),
            ("dpm_solver_sde", {"order": 2, "solver_type": "heun"}), ("dpm_solver_sde", {"order": 3}),
            ("dpm_solver_sde", {"method": "singlestep"}), ("euler_ancestral", {}), ("dpmpp_2s_ancestral", {}),
            ("dpm_solver_sde", {"order": 2, "eta": 0.5}), ("euler_ancestral", {"eta": 0.5}), ("ancestral", {})]


def slope(steps, errors):
    xs, ys = [math.log(s) for s in steps], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def label(name, options):
    return name + "".join(f" {k}={v}" for k, v in options.items())


class UnitDraws(Noise):
    """The ``j``-th draw is 1 in row ``2 + j`` and 0 elsewhere: rows 0 and 1 carry ``x_T = 0, 1`` without noise."""

    def __init__(self, x):
        super().__init__(None, x)
        self.calls = 0

    def __call__(self, t0=None, t1=None, *, like=None):
        z = torch.zeros(self.shape, dtype=self.dtype)
        z[2 + self.calls] = 1.0
        self.calls += 1
        return z


class BrownianUnitDraws(Noise):
    """The draws of one Brownian path over path time, as coefficients on independent unit normals ``ξ_j`` (row
    ``2 + j``): ``W(T) = √T ξ_0``, and each new time a Brownian-bridge point between its known neighbours. A draw for
    ``[t1, t0]`` is ``(W(t0) - W(t1))/√(t0 - t1)``, correlated with every overlapping draw as Brownian increments are
    (``dpm_solver_sde``'s singlestep asks for ``[t_u, t_a]`` and ``[t_b, t_a]``)."""

    def __init__(self, x, T=1.0):
        super().__init__(None, x)
        self.calls, self.points = 1, {0.0: torch.zeros(x.shape[0], dtype=D)}
        top = torch.zeros(x.shape[0], dtype=D)
        top[2] = math.sqrt(T)
        self.points[float(T)] = top

    def w(self, t):
        if t not in self.points:
            lo = max(k for k in self.points if k < t)
            hi = min(k for k in self.points if k > t)
            c = self.points[lo] + (t - lo) / (hi - lo) * (self.points[hi] - self.points[lo])
            c[2 + self.calls] = math.sqrt((t - lo) * (hi - t) / (hi - lo))
            self.calls += 1
            self.points[t] = c
        return self.points[t]

    def __call__(self, t0=None, t1=None, *, like=None):
        return ((self.w(t0) - self.w(t1)) / math.sqrt(t0 - t1)).reshape(self.shape)


def exact_moments(solver, path, mu, s, grid, draws, brownian=False):
    """Mean and variance of the sampler's output on the Gaussian data ``N(μ, s²)`` from ``x_T ~ p_T``, exactly."""
    gm = sgm.GaussianMixture([[mu]], [s], dtype=D)
    x = torch.zeros(2 + draws, 1, dtype=D)
    x[1] = 1.0
    noise = BrownianUnitDraws(x, path.T) if brownian else UnitDraws(x)
    out = integrate(solver, gm.score_fn(path), path, x, grid, noise=noise).x[:, 0]
    o, m = out[0], out[1] - out[0]
    a_T, s_T = grid.noisy[0].scale, grid.noisy[0].std
    mean_T, var_T = a_T * mu, a_T**2 * s**2 + s_T**2
    return float(o + m * mean_T), float(m**2 * var_T + ((out[2:2 + noise.calls] - o) ** 2).sum())


def weak(steps=(16, 32, 64, 128, 256), n=1_000_000):
    mu, s = 0.7, 0.4
    print(f"{'sde':<6}{'spacing':<9}{'sampler':<42}{'gauss':>7}{'mixture':>8}   exact weak errors (Gaussian) at "
          f"{', '.join(map(str, steps))}; mixture (n = {n}) at 16, 32, 64")
    gm = sgm.GaussianMixture([[-2.0], [1.5]], [0.4, 0.6], [0.3, 0.7], dtype=D)
    for sde_name, cls in SDES.items():
        path = cls()
        g = torch.Generator().manual_seed(3)
        x_T = path.perturb(gm.sample(n, generator=g), torch.full((n,), path.T, dtype=D), generator=g)
        m_mix, c_mix = gm.moments(1e-3, path)
        for spacing in ("uniform", "logsnr"):
            for name, options in SAMPLERS:
                solver = sgm.samplers.solver(name, **options)
                errors = []
                for k in steps:
                    grid = time_grid(path, k + 1, spacing, denoise=False)
                    mean, var = exact_moments(solver, path, mu, s, grid, 2 * k + 2)
                    a, sd = grid.noisy[-1].scale, grid.noisy[-1].std
                    errors.append(abs(mean - a * mu) + abs(var - (a**2 * s**2 + sd**2)))
                mix = []
                if spacing == "uniform":  # as tests/test_convergence.py::test_weak_order_on_a_mixture
                    for k in steps[:3]:
                        x = integrate(solver, gm.score_fn(path), path, x_T, time_grid(path, k + 1, denoise=False),
                                      generator=torch.Generator().manual_seed(k)).x
                        mix.append(float((x.mean() - m_mix[0]).abs() + (x.var() - c_mix[0, 0]).abs()))
                mix_slope = f"{slope(steps[:3], mix):>8.2f}" if mix else f"{'':>8}"
                print(f"{sde_name:<6}{spacing:<9}{label(name, options):<42}{slope(steps, errors):>7.2f}{mix_slope}   "
                      + " ".join(f"{e:.1e}" for e in errors)
                      + ("; " + " ".join(f"{e:.1e}" for e in mix) if mix else ""),
                      flush=True)


class Brownian(Noise):
    """One Brownian path per sample over path time ``[0, T]``: the draw for ``[t1, t0]`` is
    ``(W(t0) - W(t1))/√(t0 - t1)``; a draw naming no interval (a Langevin move, a repeated restart jump) comes from
    a generator seeded ``seed + 1``, the same at every step count."""

    def __init__(self, x, seed, T=1.0):
        import torchsde

        super().__init__(torch.Generator(x.device).manual_seed(seed + 1), x)
        self.bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=tuple(x.shape), dtype=x.dtype, entropy=seed,
                                            tol=1e-12, halfway_tree=True)

    def __call__(self, t0=None, t1=None, *, like=None):
        if t0 is None:
            return super().__call__(like=like)
        return self.bm(t1, t0) / math.sqrt(t0 - t1)


def strong(steps=(16, 32, 64, 128, 256), fine=4096, n=500):
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    print(f"\n{'sde':<6}{'spacing':<9}{'sampler':<42}{'strong':>7}   E|x - x_ref| at {', '.join(map(str, steps))} "
          f"(reference: {fine} steps, same Brownian path, n = {n})")
    for sde_name, cls in SDES.items():
        path = cls()
        x_T = path.prior_sample((n, 2), generator=torch.Generator().manual_seed(1), dtype=D)
        for spacing in ("uniform", "logsnr"):
            for name, options in SAMPLERS:
                solver = sgm.samplers.solver(name, **options)
                run = lambda k: integrate(solver, gm.score_fn(path), path, x_T,  # noqa: E731
                                          time_grid(path, k + 1, spacing, denoise=False), noise=Brownian(x_T, 5)).x
                ref = run(fine)
                errors = [float((run(k) - ref).norm(dim=1).mean()) for k in steps]
                print(f"{sde_name:<6}{spacing:<9}{label(name, options):<42}{slope(steps, errors):>7.2f}   "
                      + " ".join(f"{e:.1e}" for e in errors), flush=True)


def spacing_table(budgets=(10, 20, 50, 100), n=10_000):
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    ring = sgm.ring_mixture()
    print(f"\nSW₂ / floor (n = {n}) at {', '.join(map(str, budgets))} steps")
    for target_name, target in (("3 modes", gm), ("ring", ring)):
        floor = metrics.floor(metrics.sliced_wasserstein, target, n)
        ref = target.sample(n, generator=torch.Generator().manual_seed(2))
        for sde_name, cls in SDES.items():
            path = cls()
            for name, options in SAMPLERS[:7]:
                for spacing in ("uniform", "quadratic", "logsnr", "karras"):
                    ratios = []
                    for k in budgets:
                        x = sgm.sample(target.score_fn(path), path, (n, 2), name, steps=k, spacing=spacing,
                                       generator=torch.Generator().manual_seed(1), dtype=D, **options).x
                        ratios.append(metrics.sliced_wasserstein(x, ref) / floor)
                    print(f"{target_name:<8}{sde_name:<6}{label(name, options):<42}{spacing:<10}"
                          + " ".join(f"{r:6.2f}" for r in ratios), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("weak", "strong", "spacing"), default=None)
    parser.add_argument("--n", type=int, default=1_000_000, help="samples for the mixture's weak errors")
    args = parser.parse_args()
    if args.only in (None, "weak"):
        weak(n=args.n)
    if args.only in (None, "strong"):
        strong()
    if args.only in (None, "spacing"):
        spacing_table()


if __name__ == "__main__":
    main()
