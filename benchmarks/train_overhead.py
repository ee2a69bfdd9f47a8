"""The cost of one DSM training step over a bare forward + backward + optimiser step of the same network.

The bare step is ``loss = (net(x, t) - target)².mean(); loss.backward(); opt.step()`` on a fixed batch with
AdamW. The DSM step is ``Trainer.train_step`` on the loader's next batch: the step's indices (and flips) drawn and
gathered, times and noise drawn, the perturbation, the parameterisation, the weighted loss, gradient clipping, the
scheduler and the EMA — with the defaults, and with the training menu on (``--options``: two power-function EMAs,
a cosine schedule, flips for images). Steps alternate between the kinds; the table gives median times and the
median of the paired ratios (goal ≤ 1.10). Times are the process's CPU time (``time.process_time``), so that other
processes on a shared machine do not count; run with one thread.

    OMP_NUM_THREADS=1 python benchmarks/train_overhead.py [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sgm.train import TrainConfig, Trainer

CASES = {
    "mlp (2-D toy, batch 256)": dict(data="moons", n_data=10_000),
    "mlp (2-D toy, batch 512)": dict(data="moons", n_data=10_000, batch_size=512),
    "unet (digits 8×8, batch 128)": dict(data="digits", batch_size=128, channels=32, channel_mult=(1, 2),
                                         num_res_blocks=1, attn_levels=(1,), dropout=0.1),
}
MENU = dict(ema_stds=(0.05, 0.1), lr_schedule="cosine")  # and xflip for images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} alternating steps")
    print(f"{'network':<32}{'bare ms':>9}{'DSM ms':>9}{'ratio':>8}{'menu ms':>9}{'ratio':>8}")
    for name, kw in CASES.items():
        menu = {**MENU, "xflip": kw["data"] == "digits"}
        trainers = [Trainer(TrainConfig(out_dir="/tmp/sgm-overhead", progress=False, **kw, **extra))
                    for extra in ({}, menu)]
        streams = [tr.batches.stream(0) for tr in trainers]
        net = trainers[0].net
        bare_opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
        x = trainers[0].batches(0)[0]
        t = torch.rand(x.shape[0])
        target = torch.randn_like(x)

        def bare():
            loss = (net(x, t) - target).pow(2).mean()
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

        steps = [lambda tr=tr, s=s: tr.train_step(next(s)) for tr, s in zip(trainers, streams)]
        for _ in range(3):
            bare()
            for step in steps:
                step()
        times = {"bare": [], "dsm": [], "menu": []}
        for _ in range(args.repeats):
            for key, fn in (("bare", bare), ("dsm", steps[0]), ("menu", steps[1])):
                t0 = time.process_time()
                fn()
                times[key].append(time.process_time() - t0)
        ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["bare"])) for k in ("dsm", "menu")}
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"{name:<32}{ms['bare']:>9.2f}{ms['dsm']:>9.2f}{ratio['dsm']:>8.3f}{ms['menu']:>9.2f}"
              f"{ratio['menu']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
