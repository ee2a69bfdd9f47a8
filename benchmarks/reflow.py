"""Reflow on a 2-D mixture: straightness and few-step map error of 1-rectified flow and of its reflow (2-RF).

Target: the 8-mode ring (``sgm.ring_mixture``: radius 4, std 0.3). Three flows on ``RectifiedFlow()``:

- ``exact 1-RF``: the mixture's exact velocity (the ideal flow-matching model);
- ``1-RF``: an MLP velocity model trained by conditional flow matching (``prediction="velocity"``,
  ``weighting="native"``, independent coupling) on ``--n-data`` samples for ``--steps``;
- ``2-RF``: the same network trained for ``--steps`` by ``sgm.reflow.reflow`` on ``--n-pairs`` pairs
  ``(z, Φ₁(z))`` of the trained 1-RF (dopri5 at tol 1e-6), from scratch.

On ``--n-eval`` fresh ``z ~ N(0, I)`` each flow reports its straightness ``S`` (``sgm.reflow.straightness``, RK4 on 64
steps), the map error ``(1/n)Σ‖Φ_N(z) - Φ(z)‖`` of Euler with ``N`` = 2, 4, 8 NFE (``ode``/``euler`` with an ``nfe``
budget; the last evaluation is the final denoising step) against its own exact map ``Φ`` (dopri5 at tol 1e-6), the
2-RF's error against the 1-RF teacher's map (what the few steps stand in for), and SW₂ of the Euler samples against a
fresh target sample (512 projections; the floor is target against target at the same size).

    OMP_NUM_THREADS=1 python benchmarks/reflow.py [--steps 2000] [--n-pairs 8000] [--n-eval 1000] [--out outputs/reflow]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import Tensor

import sgm
from sgm import metrics
from sgm.reflow import pairs, reflow, straightness
from sgm.score import ScoreModel
from sgm.train import TrainConfig, Trainer

PATH = sgm.RectifiedFlow()
NFES = (2, 4, 8)


def config(args, out_dir: str) -> TrainConfig:
    return TrainConfig(sde="rectified-flow", prediction="velocity", weighting="native", steps=args.steps, width=128,
                       depth=3, batch_size=256, lr=1e-3, warmup=100, lr_schedule="cosine", ema_decay=0.999,
                       out_dir=out_dir, progress=False, sample_every=10 ** 9, checkpoint_every=10 ** 9,
                       n_samples=4, sample_steps=2, seed=args.seed, device="cpu")


def ema_model(trainer: Trainer) -> ScoreModel:
    return ScoreModel(trainer.ema.model.eval(), PATH, "velocity")


@torch.no_grad()
def measure(model, z: Tensor, fresh: Tensor, teacher_map: Tensor | None) -> tuple[dict, Tensor]:
    """The flow's row of the table (module docstring) and its exact map of ``z``."""
    exact = pairs(model, PATH, z, tol=1e-6)
    row = {"S": straightness(model, PATH, z), "sw2_exact_map": metrics.sliced_wasserstein(
        exact, fresh, 512, torch.Generator().manual_seed(0))}
    for nfe in NFES:
        out = sgm.sample(model, PATH, tuple(z.shape), sampler="ode", method="euler", nfe=nfe, spacing="uniform",
                         x_init=z)  # Euler from the exact top t = 1, as the table was measured
        row[f"nfe{nfe}"] = {"nfe": out.nfe, "map_error": float((out.x - exact).norm(dim=1).mean()),
                            "sw2": metrics.sliced_wasserstein(out.x, fresh, 512, torch.Generator().manual_seed(0))}
        if teacher_map is not None:
            row[f"nfe{nfe}"]["vs_teacher"] = float((out.x - teacher_map).norm(dim=1).mean())
    return row, exact


def table(results: dict, floor: float) -> str:
    head = ("| flow | S | " + " | ".join(f"map error {n} NFE" for n in NFES) + " | "
            + " | ".join(f"SW₂ {n} NFE" for n in NFES) + " | SW₂ exact map |")
    lines = [head, "|---" * (3 + 2 * len(NFES)) + "|"]
    for name, row in results.items():
        errors = [f"{row[f'nfe{n}']['map_error']:.3f}" + (f" ({row[f'nfe{n}']['vs_teacher']:.3f})"
                                                         if "vs_teacher" in row[f"nfe{n}"] else "") for n in NFES]
        sw = [f"{row[f'nfe{n}']['sw2']:.3f}" for n in NFES]
        lines.append(f"| {name} | {row['S']:.4f} | " + " | ".join(errors) + " | " + " | ".join(sw)
                     + f" | {row['sw2_exact_map']:.3f} |")
    return "\n".join(lines) + f"\n\nSW₂ floor (target against target, same size): {floor:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n-data", type=int, default=20_000)
    p.add_argument("--n-pairs", type=int, default=8000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/reflow")
    args = p.parse_args()
    target = sgm.ring_mixture()
    g = torch.Generator().manual_seed(args.seed)
    data = target.sample(args.n_data, generator=g).float()
    t0 = time.perf_counter()
    first = Trainer(config(args, os.path.join(args.out, "rf1")), data=data)
    first.fit()
    t1 = time.perf_counter()
    teacher = ema_model(first)
    noise = torch.randn(args.n_pairs, 2, generator=g).float()
    second = reflow(teacher, PATH, config(args, os.path.join(args.out, "rf2")), noise, tol=1e-6)
    t2 = time.perf_counter()
    z = torch.randn(args.n_eval, 2, generator=g)
    fresh, other = (target.sample(args.n_eval, generator=g).float() for _ in range(2))
    floor = metrics.sliced_wasserstein(other, fresh, 512, torch.Generator().manual_seed(0))
    results = {}
    results["exact 1-RF"], _ = measure(target.prediction_fn(PATH, "velocity"), z, fresh, None)
    results["1-RF"], teacher_map = measure(teacher, z, fresh, None)
    results["2-RF"], _ = measure(ema_model(second), z, fresh, teacher_map)
    text = table(results, floor)
    print(text)
    print(f"training: 1-RF {t1 - t0:.0f}s, pairs + 2-RF {t2 - t1:.0f}s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"args": vars(args), "floor": floor, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
