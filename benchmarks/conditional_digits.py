"""A class-conditional U-Net on scikit-learn's 8×8 digits (CPU), guidance's trade-off curve, a grid per class, and
inpainting.

Trains the digits classifier that judges samples (as benchmarks/train_digits.py), then a conditional U-Net with
label dropout (classifier-free guidance in one network). For each guidance scale w it draws ``--n-per-class``
samples of every class with classifier-free guidance (DDIM) and reports the fraction the classifier assigns to
the asked class and the Fréchet distance in its features to real digits (beside the real-vs-real floor). Writes
docs/guidance_digits_tradeoff.png (both against w), docs/guidance_digits_grid.png (one row per class) and
docs/inpainting_digits.png (the top half known: masked input, replacement and ΠGDM samples from the unconditional
score, truth).

    python benchmarks/conditional_digits.py [--steps 3000] [--out runs/digits_cond]
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
from sgm.data import load_digits  # noqa: E402
from sgm.guidance import classifier_free  # noqa: E402
from sgm.inverse import LinearObservation, inpainting, posterior_score, replacement  # noqa: E402
from sgm.nets import train_digits_classifier  # noqa: E402
from sgm.plotting import save_image_grid  # noqa: E402
from sgm.train import TrainConfig, Trainer, build_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="runs/digits_cond")
    parser.add_argument("--n-per-class", type=int, default=90)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--channels", type=int, default=32, help="the U-Net's base channel count")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()

    images, labels = load_digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    classifier = train_digits_classifier(images[perm[:1500]], labels[perm[:1500]])
    with torch.no_grad():
        accuracy = float((classifier(images[perm[1500:]]).argmax(1) == labels[perm[1500:]]).float().mean())
    print(f"classifier: held-out accuracy {accuracy:.3f}", flush=True)

    config = TrainConfig(data="digits", conditional=True, label_dropout=0.1, steps=args.steps, batch_size=128,
                         lr=1e-3, warmup=200, channels=args.channels, channel_mult=(1, 2), num_res_blocks=1,
                         attn_levels=(1,), dropout=0.1, ema_decay=0.999, checkpoint_every=500, sample_every=args.steps,
                         out_dir=args.out, progress=False)
    # the model sees the classifier's 1500 training digits only: perm[1500:] stays held out (likelihoods)
    trainer = Trainer(config, images[perm[:1500]], labels[perm[:1500]])
    trainer.resume()
    t0 = time.perf_counter()
    trainer.fit(resume=False)
    print(f"trained to step {trainer.step} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    model = build_model(trainer.ema.model, trainer.config)  # with the σ_d measured from the data

    half = len(images) // 2
    reference, held = images[perm[:half]], images[perm[half:2 * half]]
    floor = metrics.frechet_distance(held, reference, features=classifier.features)
    y = torch.arange(10).repeat_interleave(args.n_per_class)
    rows, grids = [], {}
    for w in args.guidance:
        t0 = time.perf_counter()
        x = sgm.sample(classifier_free(model, y, w), trainer.sde, (len(y), 1, 8, 8), sampler="ddim",
                       steps=args.sample_steps, generator=torch.Generator().manual_seed(1)).x.clamp(-1, 1)
        with torch.no_grad():
            hit = float((classifier(x).argmax(1) == y).float().mean())
        fd = metrics.frechet_distance(x[:half], reference, features=classifier.features)
        rows.append({"guidance": w, "class_accuracy": hit, "frechet": fd, "seconds": time.perf_counter() - t0})
        grids[w] = x
        print(json.dumps(rows[-1]), flush=True)

    os.makedirs(args.docs, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ws = [r["guidance"] for r in rows]
    ax[0].plot(ws, [r["class_accuracy"] for r in rows], "o-")
    ax[0].set(xlabel="guidance scale w", ylabel="fraction classified as the asked class", ylim=(0, 1.02))
    ax[1].plot(ws, [r["frechet"] for r in rows], "o-", label="samples")
    ax[1].axhline(floor, color="gray", ls="--", label="real vs real")
    ax[1].set(xlabel="guidance scale w", ylabel="Fréchet distance (classifier features)")
    ax[1].legend()
    fig.suptitle(f"classifier-free guidance, conditional U-Net on 8×8 digits ({trainer.step} steps, CPU)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.docs, "guidance_digits_tradeoff.png"), dpi=120)
    w_grid = 1.0 if 1.0 in grids else args.guidance[0]
    per_class = grids[w_grid].reshape(10, args.n_per_class, 1, 8, 8)[:, :10].reshape(100, 1, 8, 8)
    save_image_grid(per_class, os.path.join(args.docs, "guidance_digits_grid.png"), nrow=10,
                    title=f"one row per class, w = {w_grid}")

    # Inpainting: the top half of held-out digits known, from the unconditional ("no label") score.
    truth = images[perm[1500:1510]]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    A = inpainting(mask).float()
    obs = LinearObservation(A, truth.reshape(10, -1) @ A.T, 0.05, (1, 8, 8))
    shape = (10, 1, 8, 8)
    x_rep = sgm.sample(model, trainer.sde, shape, sampler="ancestral", steps=200, callback=replacement(
        obs, torch.Generator().manual_seed(3)), generator=torch.Generator().manual_seed(2)).x.clamp(-1, 1)
    x_pi = sgm.sample(posterior_score(model, trainer.sde, obs), trainer.sde, shape, sampler="ancestral", steps=200,
                      generator=torch.Generator().manual_seed(2)).x.clamp(-1, 1)
    masked = torch.where(mask, truth, torch.full_like(truth, -1.0))
    save_image_grid(torch.cat([masked, x_rep, x_pi, truth]), os.path.join(args.docs, "inpainting_digits.png"),
                    nrow=10, title="rows: known top half, replacement, ΠGDM, truth")
    result = {"classifier_accuracy": accuracy, "steps": trainer.step, "frechet_floor": floor, "guidance": rows}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
