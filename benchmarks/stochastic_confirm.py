"""The stochastic leg's finalists confirmed again, on more fresh draws than the leg's own confirmation.

Reads the screening rows of a ``sgm bench --only stochastic`` run (``results.json``), takes each side's ``--k`` best
per target, path and budget (``bench.stochastic.choose_finalists``, through a ``--shortlist`` rescored on ``--n``
fresh draws), runs them on a fresh problem of ``--n`` draws from
``--seed`` (``bench.stochastic.confirm_rows``, no strong column) and prints the goal table
(``report.stochastic_markdown``) with the floors of ``--n`` exact samples. Where a leg's best values lie at the
floor of its confirmation (the 2-D ring at 20000 draws: the Fréchet distance of the moments of exact samples,
≈ tr C/n, is then as large as the samplers' errors), a larger ``n`` is what resolves them.

    OMP_NUM_THREADS=1 python benchmarks/stochastic_confirm.py RESULTS.json [--n 1000000] [--k 3] [--shortlist 10] [--seed 2000]
"""
from __future__ import annotations

import argparse
import json
import time

from sgm.bench import report
from sgm.bench.judge import stochastic_floors
from sgm.bench.problems import TARGETS, make_problem
from sgm.bench.stochastic import SHORTLIST, choose_finalists, confirm_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json of a run with the stochastic leg")
    parser.add_argument("--n", type=int, default=1_000_000, help="draws of the confirmation problem")
    parser.add_argument("--k", type=int, default=3, help="finalists per target, path, budget and side")
    parser.add_argument("--seed", type=int, default=2000, help="the confirmation problem's seed")
    parser.add_argument("--shortlist", type=int, default=SHORTLIST,
                        help="configurations per side rescored on --n fresh draws (seed --seed - 1000 + 500) to choose "
                        "the --k finalists (no rescoring when <= --k)")
    args = parser.parse_args(argv)
    for name, value, least in (("--n", args.n, 2), ("--k", args.k, 1), ("--shortlist", args.shortlist, 0)):
        if value < least:
            parser.error(f"{name} must be an integer >= {least}, got {value}")
    try:
        with open(args.results) as f:
            screened = json.load(f).get("stochastic", [])
    except (OSError, ValueError) as e:
        parser.error(f"results: cannot read {args.results}: {e}")
    if not screened:
        parser.error(f"results: {args.results} has no stochastic rows (run sgm bench --only stochastic)")
    t0, confirmed, floors = time.perf_counter(), [], {}
    for target_name, sde_name in dict.fromkeys((r["target"], r["sde"]) for r in screened):
        target = TARGETS[target_name]()
        done = [r for r in screened if (r["target"], r["sde"]) == (target_name, sde_name)]
        rows = choose_finalists(done, target_name, target, sde_name, args.n, args.seed - 1000, args.k, args.shortlist)
        problem = make_problem(target_name, target, sde_name, args.n, args.seed, flow_map=False)
        confirmed += confirm_rows(rows, problem, args.seed, strong=False)
        floors[f"{target_name} / {sde_name}"] = stochastic_floors(target, args.n, args.seed + 1)
        print(f"{target_name} / {sde_name}: {len(rows)} finalists, {time.perf_counter() - t0:.0f}s so far", flush=True)
    goal = report.goal_table(confirmed, report.STOCHASTIC_GOAL_NFE, ("diffusers", "k-diffusion"),
                             report.STOCHASTIC_GOAL_METRIC)
    print(report.stochastic_markdown(goal, floors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
