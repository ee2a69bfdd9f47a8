"""EDM2's post-hoc EMA sweep on digits: one U-Net run with power-function EMA snapshots, then the classifier-Fréchet
distance of the samples of every reconstructed EMA length.

The run tracks the power-function EMAs of relative std 0.05 and 0.10 and saves both every ``--snapshot-every`` steps
(``TrainConfig(ema_stds=..., snapshot_every=...)``). After training, the EMA of each relative std in ``--stds``
is reconstructed from the snapshots (``sgm.ema.posthoc_weights``) and sampled with the same ``x_T`` for every
length (deterministic probability-flow ODE, Heun); the samples are judged by the Fréchet distance in the features
of a digits classifier against half of the real digits, beside the real-vs-real floor, the raw weights and the
classic EMA the run samples from. Writes ``OUT/result.json`` (after each point) and the figure.

    OMP_NUM_THREADS=1 python benchmarks/posthoc_ema_digits.py [--steps 3000] [--out runs/posthoc_digits]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import sgm  # noqa: E402
from sgm import metrics  # noqa: E402
from sgm.config import build_model, build_net  # noqa: E402
from sgm.data import load_digits  # noqa: E402
from sgm.ema import SNAPSHOTS, posthoc_weights  # noqa: E402
from sgm.nets import train_digits_classifier  # noqa: E402
from sgm.plotting import save_image_grid  # noqa: E402
from sgm.train import TrainConfig, Trainer  # noqa: E402

STDS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.10, 0.13, 0.17, 0.21, 0.25)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--stds", type=float, nargs="+", default=list(STDS))
    parser.add_argument("--seeds", type=int, default=2, help="x_T draws per point (the spread is shown)")
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--out", default="runs/posthoc_digits")
    parser.add_argument("--figure", default="docs/posthoc_ema_digits.png")
    args = parser.parse_args()

    images, labels = load_digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    classifier = train_digits_classifier(images[perm[:1500]], labels[perm[:1500]])
    half = len(images) // 2
    reference, held = images[perm[:half]], images[perm[half:2 * half]]
    floor = metrics.frechet_distance(held, reference, features=classifier.features)

    config = TrainConfig(data="digits", steps=args.steps, batch_size=args.batch_size, lr=1e-3, warmup=200,
                         channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), dropout=0.1,
                         ema_decay=0.999, ema_stds=(0.05, 0.10), snapshot_every=args.snapshot_every,
                         checkpoint_every=500, sample_every=args.steps, log_every=50, out_dir=args.out,
                         progress=False)
    trainer = Trainer(config)
    trainer.resume()
    t0, start = time.perf_counter(), trainer.step
    trainer.fit(resume=False)
    train_minutes = (time.perf_counter() - t0) / 60
    print(f"trained steps {start}→{trainer.step} in {train_minutes:.1f} min", flush=True)

    result_path = os.path.join(args.out, "result.json")
    result = {"steps": trainer.step, "batch_size": args.batch_size, "snapshot_every": args.snapshot_every,
              "train_minutes_this_session": train_minutes, "frechet_floor": floor, "points": []}

    def judge(name: str, std, net) -> dict:
        model = build_model(net.eval(), trainer.config)
        fds, t0 = [], time.perf_counter()
        for seed in range(args.seeds):
            with torch.no_grad():
                x = sgm.sample(model, trainer.sde, (half, 1, 8, 8), sampler="ode", method="heun2",
                               steps=args.sample_steps, generator=torch.Generator().manual_seed(100 + seed)).x
            fds.append(metrics.frechet_distance(x.clamp(-1, 1), reference, features=classifier.features))
        point = {"weights": name, "std": std, "frechet": fds, "seconds": time.perf_counter() - t0}
        result["points"].append(point)
        with open(result_path, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(point), flush=True)
        return x

    net = build_net(trainer.config, trainer.data_shape)
    judge("raw weights", None, trainer.net)
    judge(f"classic EMA, decay {config.ema_decay} (what the run samples from)", None, trainer.ema.model)
    samples = {}
    for std in args.stds:
        weights, _ = posthoc_weights(os.path.join(args.out, SNAPSHOTS), std)
        net.load_state_dict(weights)
        samples[std] = judge("post-hoc", std, net)
    best = min((p for p in result["points"] if p["std"] is not None), key=lambda p: sum(p["frechet"]))
    save_image_grid(samples[best["std"]][:100].clamp(-1, 1), os.path.join(args.out, "best_samples.png"), nrow=10,
                    title=f"post-hoc EMA σ_rel = {best['std']}")
    figure(result, args.figure)


def figure(result: dict, path: str) -> None:
    posthoc = [p for p in result["points"] if p["std"] is not None]
    stds = [p["std"] for p in posthoc]
    mean = [sum(p["frechet"]) / len(p["frechet"]) for p in posthoc]
    fig, ax = plt.subplots(figsize=(8, 4))
    for p in posthoc:
        ax.plot([p["std"]] * len(p["frechet"]), p["frechet"], ".", color="C0", alpha=0.5)
    ax.plot(stds, mean, "o-", color="C0", label="post-hoc EMA (mean of the x_T draws)")
    for p, color in zip((q for q in result["points"] if q["std"] is None), ("C3", "C2")):
        ax.axhline(sum(p["frechet"]) / len(p["frechet"]), color=color, ls=":", label=p["weights"])
    ax.axhline(result["frechet_floor"], color="gray", ls="--", label="real vs real")
    ax.set(xlabel="relative EMA length σ_rel", ylabel="Fréchet distance (digits-classifier features)",
           title=f"post-hoc EMA sweep, U-Net on 8×8 digits, {result['steps']} steps (CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
