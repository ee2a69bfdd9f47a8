"""What each noise source costs a stochastic sampler: Euler–Maruyama, timed with the run's noise from a batch
generator, per-sample seeds (``SeededNoise``: counter-based streams), Brownian paths from the generator and from
per-sample seeds (``BrownianNoise``), and — for the record — the per-sample ``torch.Generator`` loop ``SeededNoise``
was before (one ``randn`` per row).

Two problems: n = 2000 draws of the 2-D ring mixture with its exact score (200 steps), and a 256×3×32×32 float32
batch with a near-free score ``s = -x`` (50 steps), where the noise is nearly all the work. Repeats alternate between
the sources; the table gives each source's median time and the median over repeats of its ratio to the batch
generator's time in the same repeat.

    python benchmarks/noise_speed.py [--repeats 5] [--only 2d|image]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import sgm
from sgm.samplers import BrownianNoise, Noise


class TorchGeneratorPerSample(Noise):
    """The per-sample streams as they were: one ``torch.Generator`` per sample, a Python loop of ``randn`` per row."""

    def __init__(self, seeds, x=None):
        super().__init__(None, x)
        self.seeds = list(seeds)
        self.generators = None if x is None else [torch.Generator(x.device).manual_seed(s) for s in self.seeds]

    def _new(self, x, T):
        return type(self)(self.seeds, x)

    def _draw(self, shape):
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=self.dtype) for g in self.generators])


def near_free_score(x, t):
    return -x


def problems(only):
    sde = sgm.VPSDE()
    if only in (None, "2d"):
        yield "EM, 2-D ring mixture, n = 2000, 200 steps", sgm.ring_mixture().score_fn(sde), sde, (2000, 2), 200
    if only in (None, "image"):
        yield "EM, 256×3×32×32 float32, s = -x, 50 steps", near_free_score, sde, (256, 3, 32, 32), 50


SOURCES = ("generator", "seeds", "brownian (generator)", "brownian (seeds)", "torch.Generator per sample (before)")


def run(source, score, sde, shape, steps):
    n = shape[0]
    kw = {"generator": torch.Generator().manual_seed(0)} if source in ("generator", "brownian (generator)") else {}
    if source == "seeds":
        kw = {"seeds": range(n)}
    elif source == "brownian (generator)":
        kw["noise"] = "brownian"
    elif source == "brownian (seeds)":
        kw = {"noise": BrownianNoise(range(n))}
    elif source.startswith("torch.Generator"):
        kw = {"noise": TorchGeneratorPerSample(range(n))}
    start = time.perf_counter()
    sgm.sample(score, sde, shape, "euler_maruyama", steps, dtype=torch.float32, **kw)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("2d", "image"), default=None)
    parser.add_argument("--skip-before", action="store_true", help="leave out the old per-sample generator loop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources = SOURCES[:-1] if args.skip_before else SOURCES
    print(f"{'problem':<46}{'noise':<38}{'median s':>10}{'× generator':>13}")
    for label, score, sde, shape, steps in problems(args.only):
        times = {s: [] for s in sources}
        run("generator", score, sde, shape, 2)  # warm-up
        for _ in range(args.repeats):
            for s in sources:
                times[s].append(run(s, score, sde, shape, steps))
        for s in sources:
            ratio = statistics.median(t / g for t, g in zip(times[s], times["generator"]))
            print(f"{label:<46}{s:<38}{statistics.median(times[s]):>10.3f}{ratio:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
