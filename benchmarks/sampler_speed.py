"""Per-step cost of each fixed-step sampler's loop against a hand-written loop of the same update.

The score is near free (``s = -x``), so the time is the sampler's own work: the update, its noise draw, and
sgm's loop (``integrate``: checks, counted and checked model calls, the per-step ``Prediction``). Each
hand-written loop is the update as a user would write it in plain torch over the same grid's nodes. Both run on
the same batch (default 256×3×32×32, float32) and the same grid (``denoise=False``); the table gives medians
over alternating repeats and the median of the paired ratios (the goal: at most 1.2).

Rows are ``HAND_LOOPS``: ``(label, sampler, options, hand)`` with ``hand(sde, grid, generator) -> fn(x)``. Add a
row for a new solver there. Registered fixed-step samplers without a row are listed at the end.

    python benchmarks/sampler_speed.py [--batch 256] [--steps 50] [--repeats 7] [--samplers NAME ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import sgm
from sgm.samplers import time_grid
from sgm.samplers.deis import deis_coefficients
from sgm.samplers.langevin import AnnealedLangevin
from sgm.samplers.probability_flow import TABLEAUS


def near_free_score(x, t):
    return -x


def _randn(generator):
    return lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)


def _pairs(grid):
    noisy = grid.noisy
    return list(zip(noisy[:-1], noisy[1:]))


def _transition(a, b):
    r = a.scale / b.scale
    return r, a.std**2 - r**2 * b.std**2


def euler_maruyama(sde, grid, generator):
    randn = _randn(generator)

    def loop(x):
        for a, b in _pairs(grid):
            h = a.t - b.t
            beta = sde.beta_min + a.t / sde.T * (sde.beta_max - sde.beta_min)
            s = near_free_score(x, None)
            x = x + h * (0.5 * beta * x + beta * s) + math.sqrt(beta * h) * randn(x)
        return x
    return loop


def reverse_diffusion(sde, grid, generator):
    randn = _randn(generator)

    def loop(x):
        for a, b in _pairs(grid):
            r, v = _transition(a, b)
            x = (2 - r) * x + v * near_free_score(x, None) + math.sqrt(v) * randn(x)
        return x
    return loop


def ancestral(sde, grid, generator):
    randn = _randn(generator)

    def loop(x):
        for a, b in _pairs(grid):
            r, v = _transition(a, b)
            x = (x + v * near_free_score(x, None)) / r + math.sqrt(b.std**2 * v / a.std**2) * randn(x)
        return x
    return loop


def ddim(sde, grid, generator):
    def loop(x):
        for a, b in _pairs(grid):
            eps = -a.std * near_free_score(x, None)
            x0 = (x - a.std * eps) / a.scale
            x = b.scale * x0 + b.std * eps
        return x
    return loop


def runge_kutta(method):
    """The probability-flow velocity ``v = -½β(t)(x + s)`` (VP) stepped by ``method``'s tableau, written out."""
    c, a_rows, b_weights = TABLEAUS[method]

    def hand(sde, grid, generator):
        def velocity(x, t):
            beta = sde.beta_min + t / sde.T * (sde.beta_max - sde.beta_min)
            return -0.5 * beta * (x + near_free_score(x, None))

        def loop(x):
            for a, b in _pairs(grid):
                h = b.t - a.t
                ks = []
                for ci, row in zip(c, a_rows):
                    xi = x + sum(h * aij * k for aij, k in zip(row, ks) if aij) if ks and any(row) else x
                    ks.append(velocity(xi, a.t + ci * h))
                x = x + sum(h * bi * k for bi, k in zip(b_weights, ks) if bi)
            return x
        return loop
    return hand


def langevin(sde, grid, generator, n_each=1):
    randn = _randn(generator)
    noisy = grid.noisy
    # annealed Langevin's default step per level, computed beforehand (by the solver's own rule, whichever it is)
    steps = AnnealedLangevin(n_steps_each=n_each).init(None, grid)
    deltas = [steps[node] for node in noisy]

    def loop(x):
        for prev, node, delta in zip((noisy[0],) + noisy[:-1], noisy, deltas):
            x = x * (node.scale / prev.scale)
            for _ in range(n_each):
                x = x + delta * near_free_score(x, None) + math.sqrt(2 * delta) * randn(x)
        return x
    return loop


def pc(sde, grid, generator, snr=0.16):
    randn = _randn(generator)

    def loop(x):
        for a, b in _pairs(grid):
            r, v = _transition(a, b)
            x = (2 - r) * x + v * near_free_score(x, None) + math.sqrt(v) * randn(x)
            s, z = near_free_score(x, None), randn(x)
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()
            delta = 2 * r**2 * (snr * ratio) ** 2
            x = x + delta * s + (2 * delta).sqrt() * z
        return x
    return loop


def _x0(x, a):
    return (x + a.std**2 * near_free_score(x, None)) / a.scale


def dpm_solver_2m(sde, grid, generator):
    """DPM-Solver++(2M): x_b = (σ_b/σ_a) x - α_b (e^{-h} - 1)(x̂_0 + (x̂_0 - x̂_0')/(2r))."""
    def loop(x):
        prev = None
        for a, b in _pairs(grid):
            m, h = _x0(x, a), b.lam - a.lam
            d = m if prev is None else m + (m - prev[1]) * (h / (2 * (a.lam - prev[0])))
            x = (b.std / a.std) * x - (b.scale * math.expm1(-h)) * d
            prev = (a.lam, m)
        return x
    return loop


def unipc_2(sde, grid, generator):
    """UniPC-2, B(h) = 1 - e^{-h}, x̂_0 prediction: UniP-2 (ρ = 1/2) and UniC (ρ from its order conditions)."""
    def phis(h):  # h φ_1(-h), h φ_2(-h), h φ_3(-h) in closed form
        p1 = -math.expm1(-h)
        p2 = (math.exp(-h) - 1 + h) / h
        return p1, p2, 1 / 2 - p2 / h

    def loop(x):
        hist, last = [], None  # hist: (λ, x̂_0) newest first; last: (corrected x, node, order) of the previous step
        for a, b in _pairs(grid):
            m = _x0(x, a)
            if last is not None:
                xs, s, p = last
                h = a.lam - s.lam
                p1, p2, p3 = phis(h)
                if p == 1:
                    corr = 0.5 * (m - hist[0][1])
                else:
                    r1 = (hist[1][0] - s.lam) / h  # rows: ρ1 + ρ2 = p2/p1, r1 ρ1 + ρ2 = 2 p3/p1
                    rho1 = (p2 - 2 * p3) / p1 / (1 - r1)
                    rho2 = p2 / p1 - rho1
                    corr = rho1 * (hist[1][1] - hist[0][1]) / r1 + rho2 * (m - hist[0][1])
                x = (a.std / s.std) * xs + a.scale * (p1 * hist[0][1] + p1 * corr)
            hist = [(a.lam, m)] + hist[:1]
            h = b.lam - a.lam
            p1 = -math.expm1(-h)
            order = min(2, len(hist))
            pred = p1 * m if order == 1 else p1 * m + p1 * 0.5 * (hist[1][1] - m) * (h / (hist[1][0] - a.lam))
            last = (x, a, order)
            x = (b.std / a.std) * x + b.scale * pred
        return x
    return loop


def heun(sde, grid, generator):
    """EDM's Algorithm 2 in σ on x/scale (no churn)."""
    def loop(x):
        for a, b in _pairs(grid):
            h = b.noise_level - a.noise_level
            d = -a.std * near_free_score(x, None)
            y = x / a.scale
            d2 = -b.std * near_free_score(b.scale * (y + h * d), None)
            x = b.scale * (y + 0.5 * h * (d + d2))
        return x
    return loop


def _multistep(coefficients):
    """``x_b = (scale_b/scale_a) x + scale_b Σ_j c_j ε̂_j`` over the last ε̂'s, with ``coefficients(pairs)``."""
    def hand(sde, grid, generator):
        pairs = _pairs(grid)
        cs = coefficients(grid.noisy, pairs)

        def loop(x):
            history = []
            for (a, b), c in zip(pairs, cs):
                history = [-a.std * near_free_score(x, None)] + history[: len(c) - 1]
                x = (b.scale / a.scale) * x + sum(b.scale * cj * e for cj, e in zip(c, history))
            return x
        return loop
    return hand


AB = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
deis = _multistep(lambda noisy, pairs: [deis_coefficients(tuple(noisy[max(k - 2, 0):k + 1][::-1]), b)
                                        for k, (a, b) in enumerate(pairs)])
ipndm = _multistep(lambda noisy, pairs: [[(b.noise_level - a.noise_level) * w for w in AB[min(k, 3)]]
                                         for k, (a, b) in enumerate(pairs)])


# (label, sampler, options, hand(sde, grid, generator) -> loop(x))
HAND_LOOPS = [
    ("euler_maruyama", "euler_maruyama", {}, euler_maruyama),
    ("reverse_diffusion", "reverse_diffusion", {}, reverse_diffusion),
    ("ancestral", "ancestral", {}, ancestral),
    ("sde (torchsde euler)", "sde", {}, euler_maruyama),
    ("ddim", "ddim", {}, ddim),
    *[(f"ode {m}", "ode", {"method": m}, runge_kutta(m)) for m in TABLEAUS],
    ("langevin", "langevin", {"n_steps_each": 1}, langevin),
    ("pc", "pc", {}, pc),
    ("dpm_solver (++ 2M)", "dpm_solver", {"order": 2, "lower_order_final": False}, dpm_solver_2m),
    ("unipc (bh2, 2)", "unipc", {"order": 2, "variant": "bh2", "lower_order_final": False}, unipc_2),
    ("heun", "heun", {}, heun),
    ("deis", "deis", {}, deis),
    ("ipndm", "ipndm", {}, ipndm),
]


def paired_times(fn_a, fn_b, repeats):
    """Run a and b alternately ``repeats`` times (after one warm-up each); their median times and median ratio."""
    fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb), statistics.median(a / b for a, b in zip(ta, tb))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samplers", nargs="*", default=None, help="sampler names to time (default: every row)")
    args = parser.parse_args()
    sde, shape = sgm.VPSDE(), (args.batch, 3, 32, 32)
    grid = time_grid(sde, args.steps, denoise=False)
    x_T = torch.randn(shape)
    print(f"batch {shape}, float32, {args.steps} noise levels, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} alternating repeats")
    print(f"{'sampler':<24}{'evals/step':>11}{'sgm ms/step':>12}{'hand ms/step':>14}{'ratio':>8}")
    for label, name, options, hand in HAND_LOOPS:
        if args.samplers and name not in args.samplers:
            continue
        solver = sgm.samplers.solver(name, **options)
        fn = sgm.samplers.get(name)
        gen = torch.Generator().manual_seed(0)
        loop = hand(sde, grid, torch.Generator().manual_seed(0))
        t_sgm, t_hand, ratio = paired_times(lambda: fn(near_free_score, sde, x_T, grid, generator=gen, **options),
                                            lambda: loop(x_T), args.repeats)
        n = args.steps - 1
        print(f"{label:<24}{solver.evals_per_step:>11}{1e3 * t_sgm / n:>12.3f}{1e3 * t_hand / n:>14.3f}"
              f"{ratio:>8.2f}", flush=True)
    covered = {name for _, name, _, _ in HAND_LOOPS}
    missing = [name for name in sgm.samplers.available()
               if name not in covered and sgm.samplers.solver(name).evals_per_step is not None]
    if missing:
        print(f"fixed-step samplers without a hand-written loop here: {', '.join(missing)}")


if __name__ == "__main__":
    main()
