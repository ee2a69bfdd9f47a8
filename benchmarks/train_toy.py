"""Train an MLP score network on each generated 2-D set on the CPU, then judge its samples by SW₂ against the data.

For each set and each training seed: train for ``--steps`` (timed from the run's loss.csv, so an interrupted run
resumed later reports its total), then from the EMA weights draw ``--n`` samples with Euler–Maruyama and with a
deterministic sampler (``--deterministic``: ``ddim`` or ``ode``) at each of ``--sample-steps``, and report
SW₂(samples, fresh data) as mean ± sd over the seeds, beside the Monte-Carlo floor SW₂(data, fresh data) at the
same sizes (each averaged over 5 fresh data draws and the same 512 projections). The last line per set is the
ratio deterministic / Euler–Maruyama at ``--judge-steps`` (the target: ≤ 1.5). Writes ``result.json`` and one
scatter panel per set (first seed, deterministic sampler at the judged steps) to ``--figure``.

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
    results, panels = {}, []
    for name in args.sets.split(","):
        runs = {(s, k): [] for s in samplers for k in args.sample_steps}
        minutes, floor = [], None
        for seed in args.seeds:
            config = TrainConfig(data=name, steps=args.steps, batch_size=512, lr=2e-3, warmup=200, ema_decay=0.995,
                                 prediction=args.prediction, weighting=weighting, sigma_data=args.sigma_data,
                                 width=args.width, depth=args.depth, seed=seed, checkpoint_every=args.steps,
                                 sample_every=args.steps, out_dir=os.path.join(args.out, f"{name}_seed{seed}"),
                                 progress=False)
            trainer = Trainer(config)
            trainer.fit()
            with open(os.path.join(config.out_dir, "loss.csv")) as f:
                minutes.append(float(list(csv.DictReader(f))[-1]["seconds"]) / 60)
            for sampler in samplers:
                for k in args.sample_steps:
                    x = trainer.sample(args.n, sampler=sampler, steps=k)
                    sw, floor = judge(x, name, args.n)
                    runs[sampler, k].append(sw)
                    print(f"  {name} seed {seed} {sampler:<15}{k:>6} steps  SW2 {sw:.4f}  (floor {floor:.4f})",
                          flush=True)
                    if seed == args.seeds[0] and sampler == args.deterministic and k == args.judge_steps:
                        panels.append((f"{name}: {sampler} {k} steps\nSW₂ {sw:.3f} (floor {floor:.3f})", x))
        results[name] = {"minutes": minutes, "floor": floor, "sw2": {f"{s} {k}": v for (s, k), v in runs.items()}}
        print(f"{name}: floor {floor:.4f}, training {statistics.mean(minutes):.1f} min per seed")
        print(f"  {'steps':>6}" + "".join(f"{s:>22}" for s in samplers))
        for k in args.sample_steps:
            print(f"  {k:>6}" + "".join(f"{mean_sd(runs[s, k]):>22}" for s in samplers))
        if args.judge_steps in args.sample_steps:
            ratio = statistics.mean(runs[args.deterministic, args.judge_steps]) / statistics.mean(
                runs["euler_maruyama", args.judge_steps])
            results[name]["ratio"] = ratio
            print(f"  {args.deterministic} / euler_maruyama at {args.judge_steps} steps: {ratio:.2f} "
                  f"({'within' if ratio <= 1.5 else 'NOT within'} 1.5)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    if panels:
        torch.save(panels, os.path.join(args.out, "panels.pt"))  # (title, samples) of each panel, to redraw
        scatter_panels(panels, args.figure, limits=3.5, columns=len(panels))


if __name__ == "__main__":
    main()
