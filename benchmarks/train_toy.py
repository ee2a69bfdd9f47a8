"""Train an MLP score network on each generated 2-D set on the CPU, then judge its samples by SW₂ against the data.

For each set and each training seed: train for ``--steps`` (timed from the run's loss.csv, so an interrupted run
resumed later reports its total), then from the EMA weights draw ``--n`` samples with Euler–Maruyama and with a
deterministic sampler (``--deterministic``: ``ddim`` or ``ode``) at each of ``--sample-steps``, and report
SW₂(samples, fresh data) as mean ± sd over the seeds, beside the Monte-Carlo floor SW₂(data, fresh data) at the
same sizes (each averaged over 5 fresh data draws and the same 512 projections). The last line per set is the
ratio deterministic / Euler–Maruyama at ``--judge-steps`` (the target: ≤ 1.5). Seeds run outermost and after each
run ``result.json`` and the Markdown table ``table.md`` in ``--out`` are rewritten, so a run stopped early leaves
every set judged at the seeds it finished; one scatter panel per set (first seed, deterministic sampler at the
judged steps) goes to ``--figure`` once the first seed is done.

    OMP_NUM_THREADS=1 python benchmarks/train_toy.py [--steps 4000] [--n 5000] [--seeds 0,1,2]
        [--sample-steps 1000,2000,4000,8000] [--prediction edm]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics

import torch

from sgm import metrics
from sgm.data import TOY_SETS, toy_2d
from sgm.plotting import scatter_panels
from sgm.train import TrainConfig, Trainer


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def judge(x, name: str, n: int) -> tuple[float, float]:
    """SW₂(x, fresh data) and the floor SW₂(data, fresh data), each averaged over 5 fresh draws."""
    sw, floor = [], []
    for k in range(5):
        fresh = toy_2d(name, n, torch.Generator().manual_seed(1000 + k))
        other = toy_2d(name, n, torch.Generator().manual_seed(2000 + k))
        sw.append(metrics.sliced_wasserstein(x, fresh, 512, torch.Generator().manual_seed(k)))
        floor.append(metrics.sliced_wasserstein(other, fresh, 512, torch.Generator().manual_seed(k)))
    return statistics.mean(sw), statistics.mean(floor)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def report(args, samplers, runs, minutes, floors) -> None:
    """Writes ``result.json`` and the Markdown table ``table.md`` for the runs finished so far, and prints the table."""
    results, lines = {}, ["| set | seeds | SW₂ floor | steps | " + " | ".join(samplers) + " |",
                          "|---|---|---|---|" + "---|" * len(samplers)]
    for name, sw in runs.items():
        if not minutes[name]:
            continue
        results[name] = {"minutes": minutes[name], "floor": floors[name],
                         "sw2": {f"{s} {k}": v for (s, k), v in sw.items()}}
        for k in args.sample_steps:
            lines.append(f"| {name} | {len(minutes[name])} | {floors[name]:.4f} | {k} | "
                         + " | ".join(mean_sd(sw[s, k]) for s in samplers) + " |")
        if args.judge_steps in args.sample_steps:
            ratio = statistics.mean(sw[args.deterministic, args.judge_steps]) / statistics.mean(
                sw["euler_maruyama", args.judge_steps])
            results[name]["ratio"] = ratio
            lines.append(f"| {name} | | | {args.deterministic} / euler_maruyama at {args.judge_steps}: {ratio:.2f} "
                         f"({'within' if ratio <= 1.5 else 'NOT within'} 1.5) | "
                         f"training {statistics.mean(minutes[name]):.1f} min per seed |" + " |" * (len(samplers) - 1))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="training steps")
    parser.add_argument("--n", type=int, default=5000, help="samples judged per run")
    parser.add_argument("--seeds", type=ints, default=[0, 1, 2], help="training seeds, e.g. 0,1,2")
    parser.add_argument("--sets", default=",".join(TOY_SETS))
    parser.add_argument("--sample-steps", type=ints, default=[1000, 2000, 4000, 8000])
    parser.add_argument("--deterministic", default="ddim", choices=("ddim", "ode"))
    parser.add_argument("--judge-steps", type=int, default=4000, help="steps at which deterministic/EM is judged")
    parser.add_argument("--prediction", default="edm", help="the network's parameterisation (eps, x0, v, edm, ...)")
    parser.add_argument("--weighting", default=None, help="loss weighting (default: edm for edm, else std2)")
    parser.add_argument("--sigma-data", type=float, default=1.0, help="σ_d of the edm preconditioning")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--out", default="runs/toy")
    parser.add_argument("--figure", default="docs/toy_samples.png")
    args = parser.parse_args()
    weighting = args.weighting or ("edm" if args.prediction == "edm" else "std2")
    samplers = ("euler_maruyama", args.deterministic)
    print(f"{args.prediction} network {args.width}×{args.depth}, {weighting} weighting, {args.steps} training steps, "
          f"{args.n} samples, seeds {args.seeds}", flush=True)
    names = args.sets.split(",")
    runs = {name: {(s, k): [] for s in samplers for k in args.sample_steps} for name in names}
    minutes, floors, panels = {name: [] for name in names}, {}, []
    os.makedirs(args.out, exist_ok=True)
    for seed in args.seeds:  # seeds outermost: a run stopped early still has every set at the seeds it finished
        for name in names:
            config = TrainConfig(data=name, steps=args.steps, batch_size=512, lr=2e-3, warmup=200, ema_decay=0.995,
                                 prediction=args.prediction, weighting=weighting, sigma_data=args.sigma_data,
                                 width=args.width, depth=args.depth, seed=seed, checkpoint_every=args.steps,
                                 sample_every=args.steps, out_dir=os.path.join(args.out, f"{name}_seed{seed}"),
                                 progress=False)
            trainer = Trainer(config)
            trainer.fit()
            with open(os.path.join(config.out_dir, "loss.csv")) as f:
                minutes[name].append(float(list(csv.DictReader(f))[-1]["seconds"]) / 60)
            for sampler in samplers:
                for k in args.sample_steps:
                    x = trainer.sample(args.n, sampler=sampler, steps=k)
                    sw, floors[name] = judge(x, name, args.n)
                    runs[name][sampler, k].append(sw)
                    print(f"  {name} seed {seed} {sampler:<15}{k:>6} steps  SW2 {sw:.4f}  (floor {floors[name]:.4f})",
                          flush=True)
                    if seed == args.seeds[0] and sampler == args.deterministic and k == args.judge_steps:
                        panels.append((f"{name}: {sampler} {k} steps\nSW₂ {sw:.3f} (floor {floors[name]:.3f})", x))
            report(args, samplers, runs, minutes, floors)
        if seed == args.seeds[0] and panels:  # the figure is the first seed's: drawn as soon as it is complete
            torch.save(panels, os.path.join(args.out, "panels.pt"))  # (title, samples) of each panel, to redraw
            scatter_panels(panels, args.figure, limits=3.5, columns=len(panels))


if __name__ == "__main__":
    main()
