"""Train an MLP score network on each generated 2-D set on the CPU, then compare its samples to the data.

For each set: train for ``--steps`` (timed; the time comes from the run's loss.csv, so an interrupted run
resumed later reports its total), draw ``--n`` samples from the EMA weights with ``--sampler`` (default
Euler–Maruyama, 500 steps), and report SW₂(samples, fresh data) beside the Monte-Carlo floor SW₂(data, fresh
data) at the same sizes (each averaged over 5 fresh data draws and the same 512 projections), and their ratio.
Writes one scatter panel per set to docs/toy_samples.png.

    python benchmarks/train_toy.py [--steps 4000] [--n 5000]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", default="runs/toy")
    parser.add_argument("--figure", default="docs/toy_samples.png")
    parser.add_argument("--sets", default=",".join(TOY_SETS))
    parser.add_argument("--sampler", default="euler_maruyama")
    parser.add_argument("--sample-steps", type=int, default=500)
    args = parser.parse_args()
    print(f"sampler {args.sampler}, {args.sample_steps} steps, {args.n} samples")
    print(f"{'set':<14}{'minutes':>8}{'SW2':>9}{'floor':>9}{'ratio':>7}")
    panels, results = [], {}
    for name in args.sets.split(","):
        config = TrainConfig(data=name, steps=args.steps, batch_size=512, lr=2e-3, warmup=200, ema_decay=0.995,
                             checkpoint_every=args.steps, sample_every=args.steps, out_dir=os.path.join(args.out, name),
                             progress=False)
        trainer = Trainer(config)
        trainer.fit()
        with open(os.path.join(config.out_dir, "loss.csv")) as f:
            minutes = float(list(csv.DictReader(f))[-1]["seconds"]) / 60
        x = trainer.sample(args.n, sampler=args.sampler, steps=args.sample_steps)
        sw, floor = [], []
        for k in range(5):
            fresh = toy_2d(name, args.n, torch.Generator().manual_seed(1000 + k))
            other = toy_2d(name, args.n, torch.Generator().manual_seed(2000 + k))
            sw.append(metrics.sliced_wasserstein(x, fresh, 512, torch.Generator().manual_seed(k)))
            floor.append(metrics.sliced_wasserstein(other, fresh, 512, torch.Generator().manual_seed(k)))
        sw, floor = statistics.mean(sw), statistics.mean(floor)
        results[name] = {"minutes": minutes, "sw2": sw, "floor": floor, "ratio": sw / floor, "steps": args.steps}
        print(f"{name:<14}{minutes:>8.2f}{sw:>9.4f}{floor:>9.4f}{sw / floor:>7.2f}", flush=True)
        panels.append((f"{name}: SW₂ {sw:.3f} (floor {floor:.3f})", x))
    scatter_panels(panels, args.figure, limits=3.5, columns=len(panels))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
