"""The fast stochastic samplers (SA-Solver, ER-SDE-Solver, Restart) and annealed Langevin, measured on exact-score
targets; docs/samplers.md quotes these runs.

- ``strong``: mean ‖x_N - x_ref‖ at ``eps`` over 1000 paths of one Brownian path per sample (torchsde's Brownian tree,
  queried by each draw's interval; draws that name no interval from a fixed stream), against 4096 steps of the same
  sampler, on the tests' 2-D mixture; the slope over 16–256 steps.
- ``weak``: ``|E x - m| + |Var x - v|`` at ``eps`` on a 1-D Gaussian target, where every sampler here is affine in
  ``(x_T, draws)``: the law of the output is computed exactly (one run on basis inputs), so the weak error carries no
  Monte-Carlo error; the slope over 16–256 λ-uniform steps (``exact_law``, also used by tests/test_stochastic_orders.py).
- ``spacing``: SW₂ over its Monte-Carlo floor (n = 5000) at NFE budgets on the uniform, quadratic, logsnr and karras
  grids, on the 2-D mixture and ``random_mixture(3, seed=7)``, ``random_mixture(8, seed=3)``, VP and VE; the geometric
  mean over the cases ranks the spacings.
- ``mixtures``: SW₂ / floor (median of 3 floor pairs) at n = 10⁴ on ``random_mixture(3, seed=s)``, VP, sub-VP and VE, at
  each sampler's registry steps and options (``--langevin u,spacing`` for annealed Langevin's step-size rules).

    PYTHONPATH=. python benchmarks/stochastic_samplers.py --only strong|weak|spacing|mixtures [--samplers ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import sgm
from sgm import metrics
from sgm.samplers import integrate, time_grid

D = torch.float64
SDES = {"vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE}
CASES = {  # (sampler, options): what is measured for each sampler
    "sa_solver": [{}, {"tau_window": None}, {"tau_window": None, "predictor_order": 1, "corrector_order": 0},
                  {"tau_window": None, "predictor_order": 2, "corrector_order": 2}],
    "er_sde": [{}, {"order": 1}, {"order": 2}, {"noise_scale": "reverse_sde"}],
    "restart": [{}],
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def slope(steps, errors) -> float:
    xs, ys = [math.log(s) for s in steps], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


class BrownianTree(sgm.samplers.Noise):
    """One Brownian path per sample over ``[0, T]`` (torchsde, a dyadic tree: the same path for any queries); a draw
    naming ``(t0, t1)`` is its normalised increment, a draw naming none comes from a fixed stream."""

    def __init__(self, x, T: float, seed: int):
        import torchsde

        super().__init__(gen(seed + 1), x)
        self.T = T
        self.bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=tuple(x.shape), dtype=x.dtype, entropy=seed, tol=1e-7,
                                            halfway_tree=True)

    def __call__(self, t0=None, t1=None, *, like=None):
        if t0 is None:
            return super().__call__(like=like)
        lo, hi = max(min(t0, t1), 0.0), min(max(t0, t1), self.T)
        return self.bm(lo, hi) / math.sqrt(hi - lo)


class _Basis(sgm.samplers.Noise):
    """Draw ``k`` is the unit vector of row ``2 + k`` (rows 0, 1: no noise, ``x_T`` = 0 and 1)."""

    def __init__(self, x):
        super().__init__(None, x)
        self.k = 0

    def __call__(self, t0=None, t1=None, *, like=None):
        z = torch.zeros(self.shape, dtype=self.dtype)
        z[2 + self.k] = 1.0
        self.k += 1
        return z


def exact_law(name: str, options: dict, sde, grid, mean_T: float, var_T: float, score) -> tuple[float, float]:
    """Mean and variance of a 1-D sampler's output from ``x_T ~ N(mean_T, var_T)``, for a score affine in ``x`` (a
    Gaussian target): the output is ``c + a x_T + Σ_k b_k ξ_k``, read off one run on basis inputs."""
    rows = 2 + 2 * len(grid.noisy) + 64  # more than any sampler here draws
    x = torch.zeros(rows, 1, dtype=D)
    x[1] = 1.0
    noise = _Basis(x)
    out = integrate(sgm.samplers.solver(name, **options), score, sde, x, grid, noise=noise).x[:, 0]
    if noise.k > rows - 2:
        raise RuntimeError(f"{name} drew {noise.k} times; make exact_law's batch larger")
    c, a, b = out[0], out[1] - out[0], out[2:2 + noise.k] - out[0]
    return float(a * mean_T + c), float(a**2 * var_T + (b**2).sum())


def gaussian_weak_error(name: str, options: dict, sde, steps: int, spacing: str = "logsnr", mu: float = 1.5,
                        s: float = 0.5, eps: float = 1e-3) -> float:
    """``|E x - m| + |Var x - v|`` at ``eps`` for the target ``N(mu, s²)``, exactly (``exact_law``)."""
    gm = sgm.GaussianMixture([[mu]], [s], [1.0], dtype=D)
    top, low = (torch.tensor([t], dtype=D) for t in (sde.T, eps))
    a_T, s_T = float(sde.alpha(top)), float(sde.sigma(top))
    m, v = exact_law(name, options, sde, time_grid(sde, steps + 1, spacing, eps=eps, denoise=False),
                     a_T * mu, a_T**2 * s**2 + s_T**2, gm.score_fn(sde))
    a, sd = float(sde.alpha(low)), float(sde.sigma(low))
    return abs(m - a * mu) + abs(v - a**2 * s**2 - sd**2)


def strong(names):
    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    steps = [16, 32, 64, 128, 256]
    for name in names:
        spacing = sgm.samplers.entry(name).spacing
        for options in CASES[name]:
            for sde_name in ("vp", "ve"):
                sde, t0 = SDES[sde_name](), time.perf_counter()
                x = sde.prior_sample((1000, 2), generator=gen(0), dtype=D)
                solver = sgm.samplers.solver(name, **options)
                run = lambda k: integrate(solver, gm.score_fn(sde), sde, x,  # noqa: E731
                                          time_grid(sde, k + 1, spacing, denoise=False),
                                          noise=BrownianTree(x, sde.T, 7)).x
                ref = run(4096)
                errors = [float((run(k) - ref).norm(dim=1).mean()) for k in steps]
                print(f"strong {name} {options} {spacing} {sde_name}: slope {slope(steps, errors):.2f} "
                      f"(declared {solver.strong_order}) {[f'{e:.3g}' for e in errors]} "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)


def weak(names):
    steps = [16, 32, 64, 128, 256]
    for name in names:
        for options in CASES[name]:
            for sde_name, cls in SDES.items():
                errors = [gaussian_weak_error(name, options, cls(), k) for k in steps]
                solver = sgm.samplers.solver(name, **options)
                print(f"weak {name} {options} logsnr {sde_name}: slope {slope(steps, errors):.2f}, "
                      f"64–256 {slope(steps[2:], errors[2:]):.2f} (declared {solver.weak_order}) "
                      f"{[f'{e:.2g}' for e in errors]}", flush=True)


def _two_d():
    return sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.5, 0.3, 0.2], [0.3, 0.5, 0.2], dtype=D)


def spacings(names, n: int = 5000):
    targets = {"2d": _two_d(), "3d seed 7": sgm.random_mixture(3, seed=7), "8d seed 3": sgm.random_mixture(8, seed=3)}
    budgets = {"restart": (20, 50, 100)}
    for name in names:
        logs = {}
        for tname, gm in targets.items():
            fl = metrics.sliced_wasserstein(gm.sample(n, generator=gen(10)), gm.sample(n, generator=gen(11)),
                                            n_projections=200, generator=gen(3))
            ref = gm.sample(n, generator=gen(2))
            for sde_name in ("vp", "ve"):
                sde = SDES[sde_name]()
                for nfe in budgets.get(name, (10, 20, 50)):
                    row = {}
                    for sp in ("uniform", "quadratic", "logsnr", "karras"):
                        x = sgm.sample(gm.score_fn(sde), sde, (n, gm.dim), name, nfe=nfe, spacing=sp,
                                       generator=gen(1), dtype=D).x
                        r = metrics.sliced_wasserstein(x, ref, n_projections=200, generator=gen(3)) / fl
                        row[sp] = r if math.isfinite(r) else 1e9
                        logs.setdefault(sp, []).append(math.log(row[sp]))
                    print(f"spacing {name} {tname} {sde_name} NFE {nfe}: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        print(f"spacing {name}: geometric mean of SW₂/floor "
              + ", ".join(f"{k} {math.exp(sum(v) / len(v)):.2f}" for k, v in logs.items()), flush=True)


def floor(gm, n: int) -> float:
    return statistics.median(metrics.sliced_wasserstein(gm.sample(n, generator=gen(10 + i)),
                                                        gm.sample(n, generator=gen(20 + i)), n_projections=200,
                                                        generator=gen(3)) for i in range(3))


def mixtures(names, seeds, n: int = 10_000, langevin=None):
    for name in names:
        entry = sgm.samplers.entry(name)
        options, spacing, steps = dict(entry.options), entry.spacing, entry.steps
        ratios = []
        for seed in seeds:
            gm = sgm.random_mixture(3, seed=seed)
            fl, row = floor(gm, n), []
            for sde_name, cls in SDES.items():
                sde = cls()
                grid = time_grid(sde, 400 if name == "langevin" else steps, spacing)
                opts = dict(options)
                if name == "langevin":
                    opts = {}
                    if langevin is not None:
                        u, sp = langevin
                        grid = time_grid(sde, 400, sp)
                        opts["step_size"] = 2 * u * grid.noisy[-1].std ** 2  # NCSN's rule: u = ε/(2 std_L²)
                x = sgm.sample(gm.score_fn(sde), sde, (n, 3), name, grid=grid, generator=gen(1), dtype=D, **opts).x
                row.append(metrics.sliced_wasserstein(x, gm.sample(n, generator=gen(2)), n_projections=200,
                                                      generator=gen(3)) / fl)
            ratios += row
            print(f"mixtures {name} {langevin or ''} seed {seed}: " + ", ".join(
                f"{s} {r:.2f}" for s, r in zip(SDES, row)), flush=True)
        print(f"mixtures {name} {langevin or ''}: mean {sum(ratios) / len(ratios):.2f}, max {max(ratios):.2f}",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("strong", "weak", "spacing", "mixtures"), required=True)
    parser.add_argument("--samplers", nargs="*", default=list(CASES))
    parser.add_argument("--seeds", default="1,2,4,5")
    parser.add_argument("--langevin", default=None, help="u,spacing: annealed Langevin's δ = u·std² on that grid")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only == "strong":
        strong(args.samplers)
    elif args.only == "weak":
        weak(args.samplers)
    elif args.only == "spacing":
        spacings(args.samplers)
    else:
        lv = None if args.langevin is None else (float(args.langevin.split(",")[0]), args.langevin.split(",")[1])
        mixtures(args.samplers, [int(s) for s in args.seeds.split(",")], langevin=lv)


if __name__ == "__main__":
    main()
