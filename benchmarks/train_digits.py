"""Train a U-Net on scikit-learn's 8×8 digits on the CPU, then judge its samples with a separately trained classifier.

Reports the classifier's held-out accuracy on real digits, the training time, the fraction of generated digits
the classifier labels with probability > 0.9, the label histogram of the samples (and its total-variation
distance from uniform), and the Fréchet distance in the classifier's features between samples and real digits
beside the real-vs-real floor. Writes the sample grid to docs/digits_samples.png. The run is resumable: run the
same command again after an interruption.

    python benchmarks/train_digits.py [--steps 6000] [--out runs/digits]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from sgm import metrics
from sgm.data import load_digits
from sgm.nets import train_digits_classifier
from sgm.plotting import save_image_grid
from sgm.train import TrainConfig, Trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--n", type=int, default=1000, help="samples to judge (the Fréchet distance uses 898)")
    parser.add_argument("--sampler", default="ode")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--figure", default="docs/digits_samples.png")
    args = parser.parse_args()

    images, labels = load_digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1500], perm[1500:]
    t0 = time.perf_counter()
    classifier = train_digits_classifier(images[train_idx], labels[train_idx])
    with torch.no_grad():
        accuracy = float((classifier(images[test_idx]).argmax(1) == labels[test_idx]).float().mean())
    print(f"classifier: held-out accuracy {accuracy:.3f} ({len(test_idx)} digits), {time.perf_counter() - t0:.0f}s")

    config = TrainConfig(data="digits", steps=args.steps, batch_size=128, lr=1e-3, warmup=200, channels=32,
                         channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), dropout=0.1, ema_decay=0.999,
                         checkpoint_every=500, sample_every=1000, out_dir=args.out, progress=False)
    trainer = Trainer(config)
    trainer.resume()
    t0 = time.perf_counter()
    start = trainer.step
    trainer.fit(resume=False)
    train_seconds = time.perf_counter() - t0
    print(f"trained steps {start}→{trainer.step} in {train_seconds / 60:.1f} min "
          f"({(trainer.step - start) / max(train_seconds, 1e-9):.1f} steps/s)")

    t0 = time.perf_counter()
    x = trainer.sample(args.n, sampler=args.sampler, steps=args.sample_steps).clamp(-1, 1)
    sample_seconds = time.perf_counter() - t0
    with torch.no_grad():
        probs = classifier(x).softmax(1)
    confident = float((probs.max(1).values > 0.9).float().mean())
    hist = torch.bincount(probs.argmax(1), minlength=10).float() / args.n
    tv = 0.5 * float((hist - 0.1).abs().sum())
    # Samples and real digits against the same reference half of the real set, with as many of each:
    # the floor is the other real half, the best any generator can score at this size.
    half = len(images) // 2
    reference, held = images[perm[:half]], images[perm[half:2 * half]]
    fd = metrics.frechet_distance(x[:half], reference, features=classifier.features)
    floor = metrics.frechet_distance(held, reference, features=classifier.features)
    save_image_grid(x[:100], args.figure, nrow=10,
                    title=f"{args.sampler}, {args.sample_steps} steps, step {trainer.step}")
    result = {"classifier_accuracy": accuracy, "train_minutes": train_seconds / 60, "steps": trainer.step,
              "sample_seconds": sample_seconds, "confident_fraction": confident, "label_histogram": hist.tolist(),
              "label_tv_from_uniform": tv, "frechet": fd, "frechet_floor": floor}
    print(json.dumps(result, indent=1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
