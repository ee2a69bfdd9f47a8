"""Which time grid each sampler should default to: every registered fixed-step sampler (default options) on each
fixed spacing, at NFE budgets 5/10/20/50, on exact-score mixtures no test uses, under VP, VE and rectified flow.

Error of a run: for a deterministic sampler the map error ``mean ‖x - Φ(x_T)‖`` against the exact probability-flow
map of the same prior draws (dopri5 at 1e-8 to eps, then Tweedie: ``sgm.samplers.optimize.flow_map``); for a
stochastic one the Fréchet distance between the samples' mean and covariance and the mixture's exact ones (its
Monte-Carlo floor is printed). Each cell (sampler, target, path, budget) divides every spacing's error by the
cell's best; a spacing's score is the geometric mean of its ratios over the cells, and the recommended default is
the spacing of least score (printed with the runner-up, so a near tie is visible). With ``--ems``
``dpm_solver_v3`` runs with its empirical model statistics (``corrections.ems`` of 256 prior draws per target and
path, as its users run it); a grid outside the statistics' λ range (the flow grid's top on rectified flow) is
refused and scores as diverged, as does a grid restart refuses (no node below an interval's ``σ_max``).

    OMP_NUM_THREADS=1 python benchmarks/default_spacing.py [--n 400] [--n-stochastic 4000] [--samplers NAME ...]
        [--paths vp ve rf edm] [--ems] [--budgets 5 10 20 50]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict

import torch

import sgm
from sgm import metrics
from sgm.samplers import SamplerDiverged
from sgm.samplers.corrections import ems
from sgm.samplers.optimize import flow_map, map_error

SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "flow")
BUDGETS = (5, 10, 20, 50)  # --budgets
D = torch.float64


def targets():
    """Mixtures the tests do not use (seeds 101–103) and the 8-mode ring."""
    return {"ring 2-D": sgm.ring_mixture(), "mixture 2-D": sgm.random_mixture(2, k=6, seed=101),
            "mixture 8-D": sgm.random_mixture(8, k=5, seed=102), "mixture 16-D": sgm.random_mixture(16, k=5, seed=103)}


def paths(names=None):
    """The paths measured: VP, VE and rectified flow, or those of ``names`` (``edm``: EDM's ``σ = t``, of VE's
    family, run only when named)."""
    every = {"vp": sgm.VPSDE(), "ve": sgm.VESDE(), "rf": sgm.RectifiedFlow(), "edm": sgm.EDMPath()}
    return {k: v for k, v in every.items() if (k in names if names else k != "edm")}


def _t_max(solver, path):
    top = float(path.alpha(torch.tensor([path.T], dtype=D)))
    return path.T * (1 - 1e-3) if top == 0 and "positive_alpha" in solver.needs else None


def error(name, solver, gm, path, nfe, spacing, x_T, reference, n_stochastic, seed, options):
    model = gm.prediction_fn(path, "x0")
    t_max = _t_max(solver, path)
    try:
        if solver.stochastic:
            x = sgm.sample(model, path, (n_stochastic, gm.dim), name, nfe=nfe, spacing=spacing, t_max=t_max,
                           generator=torch.Generator().manual_seed(seed), dtype=D, **options).x
            mean, cov = gm.moments()
            return metrics.gaussian_frechet(x.mean(0), torch.cov(x.T), mean, cov)
        x = sgm.sample(model, path, tuple(x_T.shape), name, nfe=nfe, spacing=spacing, t_max=t_max, x_init=x_T,
                       dtype=D, **options).x
        return map_error(x, reference)
    except SamplerDiverged:
        return math.inf
    except ValueError as e:  # a grid refused before any work: outside a correction's range, below restart's intervals
        print(f"refused, scored as diverged: {name} on {spacing} at {nfe} NFE: {e}", file=sys.stderr)
        return math.inf


def _options(name: str) -> dict:
    """A sampler's default options, or its smoke options where the default chooses its own steps (ode: dopri5)."""
    entry = sgm.samplers.entry(name)
    return {} if sgm.samplers.solver(name).evals_per_step is not None else dict(entry.smoke)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="prior draws per deterministic cell")
    parser.add_argument("--n-stochastic", type=int, default=4000, help="samples per stochastic cell")
    parser.add_argument("--samplers", nargs="*", default=None)
    parser.add_argument("--paths", nargs="*", choices=("vp", "ve", "rf", "edm"), default=None,
                        help="default: vp ve rf")
    parser.add_argument("--ems", action="store_true", help="dpm_solver_v3 with its EMS (as its users run it)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS),
                        help="NFE budgets (default 5 10 20 50)")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.budgets):
        parser.error(f"--budgets must be positive integers, got {args.budgets}")
    names = args.samplers or [n for n in sgm.samplers.available()
                              if sgm.samplers.solver(n, **_options(n)).evals_per_step]
    t0 = time.perf_counter()
    refs = {}
    for tname, gm in targets().items():
        for pname, path in paths(args.paths).items():
            x_T = path.prior_sample((args.n, gm.dim), generator=torch.Generator().manual_seed(7), dtype=D)
            refs[tname, pname] = x_T, flow_map(gm.prediction_fn(path, "x0"), path, x_T)[0]
    floors = {}
    for tname, gm in targets().items():
        x = gm.sample(args.n_stochastic, generator=torch.Generator().manual_seed(8))
        mean, cov = gm.moments()
        floors[tname] = metrics.gaussian_frechet(x.mean(0), torch.cov(x.T), mean, cov)
    print("Fréchet floor of exact samples:", ", ".join(f"{k} {v:.4f}" for k, v in floors.items()))
    print(f"{'sampler':<20}{'path':<5}" + "".join(f"{s:>11}" for s in SPACINGS)
          + "   best (geo-mean ratio to the cell's best)")
    overall = {}
    for name in names:
        options = _options(name)
        solver = sgm.samplers.solver(name, **options)
        ratios = defaultdict(list)
        per_path = defaultdict(lambda: defaultdict(list))
        for (tname, pname), (x_T, reference) in refs.items():
            gm, path = targets()[tname], paths(args.paths)[pname]
            if args.ems and name == "dpm_solver_v3":
                options = {"correction": ems(gm.prediction_fn(path, "x0"), path, (256, gm.dim), dtype=D,
                                             generator=torch.Generator().manual_seed(20))}
            for nfe in args.budgets:
                if solver.steps_for_nfe(nfe) is None:
                    continue
                errs = {s: error(name, solver, gm, path, nfe, s, x_T, reference, args.n_stochastic, 11, options)
                        for s in SPACINGS}
                best = min(errs.values())
                if not math.isfinite(best) or best <= 0:
                    continue
                for s, e in errs.items():
                    r = e / best if math.isfinite(e) else 1e3
                    ratios[s].append(math.log(r))
                    per_path[pname][s].append(math.log(r))
        score = {s: math.exp(sum(v) / len(v)) for s, v in ratios.items()}
        for pname, table in per_path.items():
            pscore = {s: math.exp(sum(v) / len(v)) for s, v in table.items()}
            print(f"{name:<20}{pname:<5}" + "".join(f"{pscore[s]:>11.3f}" for s in SPACINGS))
        ranked = sorted(score, key=score.get)
        overall[name] = ranked
        print(f"{name:<20}{'all':<5}" + "".join(f"{score[s]:>11.3f}" for s in SPACINGS)
              + f"   {ranked[0]} (then {ranked[1]} {score[ranked[1]] / score[ranked[0]]:.2f}×)", flush=True)
    print("\nrecommended defaults: " + ", ".join(f"{n}: {r[0]}" for n, r in overall.items()))
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
