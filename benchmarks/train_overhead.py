"""The cost of one DSM training step over a bare forward + backward + optimiser step of the same network.

The bare step is ``loss = (net(x, t) - target)².mean(); loss.backward(); opt.step()`` on a fixed batch with
AdamW. The DSM step is ``Trainer.train_step``: batch indices, times and noise drawn, the perturbation, the
parameterisation, the weighted loss, the non-finite check, gradient clipping, the scheduler and the EMA.
Steps alternate between the two; the table gives median times and the median of the paired ratios.

    python benchmarks/train_overhead.py [--repeats 30]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} alternating steps")
    print(f"{'network':<32}{'DSM ms':>9}{'bare ms':>9}{'ratio':>8}")
    for name, kw in CASES.items():
        trainer = Trainer(TrainConfig(out_dir="/tmp/sgm-overhead", progress=False, **kw))
        net = trainer.net
        bare_opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
        x = trainer.data[: trainer.config.batch_size]
        t = torch.rand(x.shape[0])
        target = torch.randn_like(x)

        def bare():
            loss = (net(x, t) - target).pow(2).mean()
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

        for _ in range(3):
            trainer.train_step()
            bare()
        dsm_times, bare_times = [], []
        for _ in range(args.repeats):
            for fn, out in ((trainer.train_step, dsm_times), (bare, bare_times)):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        ratio = statistics.median(a / b for a, b in zip(dsm_times, bare_times))
        print(f"{name:<32}{1e3 * statistics.median(dsm_times):>9.2f}{1e3 * statistics.median(bare_times):>9.2f}"
              f"{ratio:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
