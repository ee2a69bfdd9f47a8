"""The sweep and its command (``sgm bench``, ``python benchmarks/sweep.py``): for each target and path, the curves
(VP and VE: every sampler at each budget of ``NFE_GRID``, the adaptive ODE over ``TOLERANCES``, all metrics), the
comparison (VP, VE and rectified flow: every deterministic configuration of sgm and of each installed peer at each
budget of ``COMPARE_NFE``, map error and SW₂), the stochastic leg (VP and VE: every stochastic configuration of sgm
and of each installed peer at each budget of ``STOCHASTIC_NFE``, distribution error against the exact target) and
the cross-path comparison (``--only paths``: sgm's every configuration on VP, VE, EDM's path and rectified flow at
each budget of ``PATH_NFE``, each path's best against its own exact map), then the report."""
from __future__ import annotations

import json
import os
import time

import torch

from . import report
from .judge import distribution_metrics, floors
from .peers import PEERS, peer_rows
from .problems import PATHS, TARGETS, Problem, make_problem, make_targets
from .calibrated import CORRECTIONS, OPTIMIZERS, Draws, calibrated_rows, check_methods
from .runs import checkpoint_rows, curve_rows, sgm_rows
from .stochastic import CONFIRM_N, run_leg

__all__ = ["NFE_GRID", "QUICK_NFE", "TOLERANCES", "QUICK_TOLERANCES", "COMPARE_NFE", "QUICK_COMPARE_NFE", "PATH_NFE",
           "STOCHASTIC_NFE", "QUICK_STOCHASTIC_NFE", "STOCHASTIC_N", "QUICK_CONFIRM_N", "CURVE_SDES", "COMPARE_SDES",
           "STOCHASTIC_SDES", "JOBS", "CALIBRATION_N", "compare_rows", "calibration_draws", "path_rows", "run_sweep",
           "add_arguments", "check_checkpoint", "run_from_args", "main"]

NFE_GRID = (5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_NFE = (5, 10, 20, 50)
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
QUICK_TOLERANCES = (1e-2, 1e-4)
COMPARE_NFE = QUICK_COMPARE_NFE = (5, 10, 20)
PATH_NFE = COMPARE_NFE  # the cross-path comparison's budgets (the same: it reuses the comparison's sgm runs)
STOCHASTIC_NFE = (5, 10, 20, 50)
QUICK_STOCHASTIC_NFE = (10, 20)  # the goal's budgets
STOCHASTIC_N = 2000  # draws per screening run of the stochastic leg (quick: 500)
QUICK_CONFIRM_N = 1000  # draws per confirmation run with --quick (else stochastic.CONFIRM_N)
CURVE_SDES = ("vp", "ve")  # the paths the curves run on
COMPARE_SDES = ("vp", "ve", "rf")  # the paths sgm is compared with its peers on
STOCHASTIC_SDES = ("vp", "ve")  # the paths of the stochastic leg
JOBS = ("curves", "compare", "stochastic", "paths")
CALIBRATION_N = 256  # prior draws each calibrated method of the comparison fits on


def compare_rows(problem: Problem, nfes, seed: int = 0, peers=True, optimise: bool = True,
                 optimizers=OPTIMIZERS, corrections=CORRECTIONS) -> list[dict]:
    """The comparison on ``problem``: sgm's fixed grids, its calibrated methods (with ``optimise``: the grids of the
    step ``optimizers`` and the learned ``corrections``, ``calibrated.calibrated_rows``, calibrated on 256 prior draws
    from ``seed + 20``, disjoint from ``x_T``) and the installed peers (``peers``: True for all of ``PEERS``, False
    for none, or a sequence of their names)."""
    fixed = sgm_rows(problem, nfes)
    rows = fixed + (calibrated_rows(problem, nfes, fixed, calibration_draws(seed), optimizers, corrections)
                    if optimise else [])
    names = _peer_names(peers)
    return rows + (peer_rows(problem, nfes, names) if names else [])


def calibration_draws(seed: int) -> Draws:
    """The comparison's calibration batch: 256 prior draws from ``seed + 20`` (``x_T`` is drawn from ``seed``)."""
    return Draws(CALIBRATION_N, seed + 20)


def path_rows(problem: Problem, nfes, seed: int = 0, optimise: bool = True, done: list[dict] = ()) -> list[dict]:
    """The cross-path comparison's runs on ``problem``: sgm's fixed grids and (with ``optimise``) the descent's grids
    at the budgets of ``nfes`` that ``done`` (sgm's comparison rows of the same problem, if it ran) does not hold,
    plus those rows."""
    have = {r["nfe_budget"] for r in done}
    todo = tuple(nfe for nfe in nfes if nfe not in have)
    fixed = sgm_rows(problem, todo) if todo else []
    return list(done) + fixed + (calibrated_rows(problem, todo, fixed, calibration_draws(seed), ("descent",), ())
                                 if optimise and todo else [])


def _peer_names(peers) -> tuple:
    """``peers`` as names of ``PEERS``: True for all, False (or None) for none, or a sequence of their names."""
    return PEERS if peers is True else tuple(peers or ())


def run_sweep(out_dir: str, quick: bool = False, n: int | None = None, seed: int = 0,
              checkpoint: str | None = None, peers=True, progress: bool = True, curves: bool = True,
              compare: bool = True, n_compare: int | None = None, targets=None, paths: bool = False,
              sdes=None, stochastic: bool = True, n_stochastic: int | None = None, n_confirm: int | None = None,
              stochastic_nfe=None,
              optimizers=OPTIMIZERS, corrections=CORRECTIONS, strong: bool = True) -> list[dict]:
    """Run the sweep, write its report to ``out_dir`` and return the curve rows (the comparison's rows, the goal
    table, the cross-path rows and table, the stochastic leg's rows and goal table are in ``results.json``).
    ``sdes``: the paths to run (default: all of ``problems.PATHS``; the curves run on those of ``CURVE_SDES``, the
    comparison on those of ``COMPARE_SDES``, the stochastic leg on those of ``STOCHASTIC_SDES``); ``paths``: the
    cross-path comparison on each of them; ``optimizers``, ``corrections``: the comparison's calibrated methods
    (``calibrated``; default all); ``n_stochastic``, ``n_confirm``: the stochastic leg's screening and confirmation
    draws (``bench.stochastic``); ``strong``: the confirmed rows' strong-error column (``bench.strong``). Seeds: the
    problem's draw ``seed``, the floors ``seed + 1``, the target sample the curves, the comparison and the stochastic
    leg are judged against ``seed + 2``, the curves' SW₂ directions ``seed + 3``, stochastic samplers' noise
    ``seed + 10`` (the strong error's per-sample seeds ``(seed + 10)·2²⁰ + i``), the calibrated methods' draws
    ``seed + 20``; the stochastic confirmation is the same from ``seed + stochastic.CONFIRM_SEED``."""
    optimizers, corrections = check_methods(optimizers, corrections)
    os.makedirs(out_dir, exist_ok=True)
    n_stochastic = n_stochastic or (min(n, STOCHASTIC_N) if n else (500 if quick else STOCHASTIC_N))
    n_confirm = n_confirm or (QUICK_CONFIRM_N if quick else CONFIRM_N)
    n = n or (500 if quick else 4000)
    n_compare = n_compare or min(n, 1000)
    nfes, tolerances = (QUICK_NFE, QUICK_TOLERANCES) if quick else (NFE_GRID, TOLERANCES)
    compare_nfes = QUICK_COMPARE_NFE if quick else COMPARE_NFE
    rows, compared, across, floor_metrics, flow_maps, t_start = [], [], [], {}, {}, time.perf_counter()
    stochastic_runs, confirmed, stochastic_floor_metrics = [], [], {}
    stochastic_nfe = tuple(stochastic_nfe or (QUICK_STOCHASTIC_NFE if quick else STOCHASTIC_NFE))
    sdes = tuple(sdes or PATHS)
    for target_name, target in make_targets(quick, targets).items():
        for sde_name in sdes:
            if not ((curves and sde_name in CURVE_SDES) or (compare and sde_name in COMPARE_SDES)
                    or (stochastic and sde_name in STOCHASTIC_SDES)):
                continue
            key = f"{target_name} / {sde_name}"
            if curves and sde_name in CURVE_SDES:
                problem = make_problem(target_name, target, sde_name, n, seed)
                floor_metrics[key] = floors(target, n, seed + 1)
                reference = target.sample(n, generator=torch.Generator().manual_seed(seed + 2))
                flow_maps[key] = distribution_metrics(problem.x_ref, reference, target,
                                                      torch.Generator().manual_seed(seed + 3))
                scatter_nfe = report.SCATTER_NFE if target.dim == 2 else ()
                result = curve_rows(problem, nfes, tolerances, reference, seed, progress, scatter_nfe)
                rows += result.rows
                if result.scatter:
                    report.scatter_figure(out_dir, target_name, sde_name, target, result.scatter)
            if compare and sde_name in COMPARE_SDES:
                compared += compare_rows(make_problem(target_name, target, sde_name, n_compare, seed), compare_nfes,
                                         seed, peers, not quick, optimizers, corrections)
            if stochastic and sde_name in STOCHASTIC_SDES:
                leg = run_leg(target_name, target, sde_name, stochastic_nfe, n_stochastic, n_confirm, seed,
                              _peer_names(peers), strong)
                stochastic_runs += leg.screened
                confirmed += leg.confirmed
                stochastic_floor_metrics[key] = leg.floors
            print(f"{key}: {time.perf_counter() - t_start:.0f}s so far", flush=True)
        for path_name in [p for p in PATHS if p in sdes] if paths else ():
            done = [r for r in compared if (r["target"], r["sde"], r["side"]) == (target_name, path_name, "sgm")]
            across += path_rows(make_problem(target_name, target, path_name, n_compare, seed), PATH_NFE, seed,
                                optimise=not quick, done=done)
            print(f"{target_name} / {path_name} (paths): {time.perf_counter() - t_start:.0f}s so far", flush=True)
    if checkpoint:
        rows.extend(checkpoint_rows(checkpoint, nfes, seed, progress))
    goal = report.goal_table(compared) if compared else []
    stochastic_goal = report.goal_table(confirmed, report.STOCHASTIC_GOAL_NFE, ("diffusers", "k-diffusion"),
                                        report.STOCHASTIC_GOAL_METRIC) if confirmed else []
    meta = {"seed": seed, "n": n, "n_compare": n_compare, "n_stochastic": n_stochastic,
            "n_confirm": n_confirm, "quick": quick,
            "nfe_grid": list(nfes), "compare_nfe": list(compare_nfes), "path_nfe": list(PATH_NFE) if paths else [],
            "stochastic_nfe": list(stochastic_nfe), "optimizers": list(optimizers),
            "corrections": list(corrections), "tolerances": list(tolerances), "floors": floor_metrics,
            "flow_map": flow_maps, "stochastic_floors": stochastic_floor_metrics,
            "seconds": time.perf_counter() - t_start, "versions": report.versions()}
    report.write(out_dir, rows, meta, compared, goal, across, report.path_table(across, PATH_NFE) if across else [],
                 stochastic_runs, confirmed, stochastic_goal)
    return rows


def add_arguments(parser) -> None:
    """``sgm bench``'s arguments on ``parser``."""
    parser.add_argument("--out", default="benchmarks/results", help="folder for results.csv/.json and figures")
    parser.add_argument("--quick", action="store_true", help="2-D only, NFE up to 50, 500 samples, the comparison "
                        "without optimised grids, no stochastic leg (unless --only stochastic: NFE 10, 20)")
    parser.add_argument("--n", type=int, default=None, help="samples per run (default 4000, the comparison 1000, the "
                        "stochastic leg 2000; 500 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="a trained digits checkpoint to sweep as well (a network "
                        "on a CPU: use with --quick, which took 9.4 min for the 8×8 U-Net on 2 cores)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries (diffusers) even if installed")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=None,
                        help="only these peer modules (default: all installed; diffusers_flow: the flow schedulers)")
    parser.add_argument("--progress", action="store_true", help="progress bars for each run")
    parser.add_argument("--targets", nargs="+", choices=tuple(TARGETS), default=None,
                        help="the targets to run (default: all; the 2-D ring with --quick)")
    parser.add_argument("--sdes", nargs="+", choices=PATHS, default=None,
                        help="the paths to run (default: all; the curves and the stochastic leg run on vp and ve, the "
                        "comparison on vp, ve and rf, the cross-path comparison on all four)")
    parser.add_argument("--n-stochastic", type=int, default=None,
                        help=f"samples per stochastic run (default min(--n, {STOCHASTIC_N}); 500 with --quick): the "
                        "goal's distribution errors need n of 10⁴ or more to stand above the exact sample's floor")
    parser.add_argument("--n-confirm", type=int, default=None,
                        help=f"draws per confirmation run of the stochastic leg's finalists (default {CONFIRM_N}; "
                        f"{QUICK_CONFIRM_N} with --quick), on draws disjoint from the screening's")
    parser.add_argument("--stochastic-nfe", type=int, nargs="+", default=None,
                        help=f"the stochastic leg's budgets (default {' '.join(map(str, STOCHASTIC_NFE))}; "
                        f"{' '.join(map(str, QUICK_STOCHASTIC_NFE))} with --quick)")
    parser.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), metavar="NAME",
                        help=f"the comparison's step optimisers (default all: {' '.join(OPTIMIZERS)}; none: no "
                        "optimised grids)")
    parser.add_argument("--corrections", nargs="*", default=list(CORRECTIONS), metavar="NAME",
                        help=f"the comparison's learned corrections (default all: {' '.join(CORRECTIONS)})")
    parser.add_argument("--no-strong", action="store_true", help="the stochastic leg without its strong-error column "
                        "(a fine-step reference run per configuration, of bench.strong.STRONG_SAMPLES draws)")
    parser.add_argument("--only", nargs="+", choices=JOBS, default=None,
                        help="run only these jobs (default: curves, compare and, without --quick, stochastic): the "
                        "curves (all metrics), the sgm-vs-peers comparison (map error, SW₂), the stochastic leg "
                        "(distribution error, sgm and peers), the cross-path comparison (every path's best sgm "
                        "configuration; with compare it reuses the comparison's sgm runs)")


def check_checkpoint(path: str) -> None:
    """Before any sweep: ``path`` must be a readable sgm checkpoint of an 8×8 one-channel image model (the
    digits classifier judges its samples); otherwise a ``ValueError`` (``CheckpointError``) naming the file."""
    from ..train import model_from_checkpoint

    _, config, shape = model_from_checkpoint(path)
    if tuple(shape) != (1, 8, 8):
        raise ValueError(f"--checkpoint {path}: a model of {config.data!r} samples of shape {tuple(shape)}; the "
                         f"checkpoint sweep judges digits models (1, 8, 8) with a digits classifier")


def run_from_args(args) -> int:
    """Run the sweep the parsed ``args`` ask for and print its summary and goal tables."""
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be an integer >= 1, got {args.n}")
    if args.n_stochastic is not None and args.n_stochastic < 2:
        raise ValueError(f"--n-stochastic must be an integer >= 2, got {args.n_stochastic}")
    if args.n_confirm is not None and args.n_confirm < 2:
        raise ValueError(f"--n-confirm must be an integer >= 2, got {args.n_confirm}")
    if args.stochastic_nfe is not None and min(args.stochastic_nfe) < 1:
        raise ValueError(f"--stochastic-nfe must be integers >= 1, got {args.stochastic_nfe}")
    check_methods(args.optimizers, args.corrections)
    if args.checkpoint:
        check_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    jobs = set(args.only or ("curves", "compare") + (() if args.quick else ("stochastic",)))
    rows = run_sweep(args.out, quick=args.quick, n=args.n, seed=args.seed, checkpoint=args.checkpoint,
                     peers=not args.no_peers and (args.peers or True), progress=args.progress, curves="curves" in jobs,
                     compare="compare" in jobs, targets=args.targets, paths="paths" in jobs, sdes=args.sdes,
                     stochastic="stochastic" in jobs, n_stochastic=args.n_stochastic,
                     n_confirm=args.n_confirm, stochastic_nfe=args.stochastic_nfe,
                     optimizers=args.optimizers, corrections=args.corrections, strong=not args.no_strong)
    with open(os.path.join(args.out, "results.json")) as f:
        results = json.load(f)
    goal, across = results["goal"], results["path_table"]
    print(f"{len(rows)} curve runs in {time.perf_counter() - t0:.0f}s; wrote {args.out}/results.csv, compare.csv, "
          f"goal.md, results.json and figures")
    if rows:
        print(report.summary_table(rows, (10, 20)))
    if goal:
        print(report.goal_markdown(goal))
    if across:
        print(report.path_markdown(across))
    if results["stochastic_goal"]:
        print(report.stochastic_markdown(results["stochastic_goal"], results["meta"]["stochastic_floors"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/sweep.py``: the same as ``sgm bench``."""
    import argparse

    parser = argparse.ArgumentParser(prog="sgm bench", description="Step-count-vs-quality sweeps: every sampler over "
                                     "score-evaluation budgets (NFE), and sgm against its peers.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
