"""The ``sgm`` command (also ``python -m sgm``).

- ``sgm demo``: every sampler on a 2-D ring mixture with its exact score, one panel each, to a PNG.
- ``sgm train``: denoising score matching on a dataset; restarting the same command resumes.
- ``sgm sample``: any sampler on a trained checkpoint; writes a scatter plot or image grid and the samples.
- ``sgm bench``: the step-count-vs-quality sweep (``sgm.bench``).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import metrics
from .plotting import scatter_panels
from .samplers import available, sample
from .sde import SDE, SubVPSDE, VESDE, VPSDE
from .targets import ring_mixture

__all__ = ["main", "make_sde"]

SDE_NAMES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}

# The demo's (sampler, steps, options): a few score evaluations for the ODE samplers, more for the SDE ones.
DEMO_RUNS = (
    ("ode", 2, {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4}),
    ("ode", 20, {"method": "heun2"}),
    ("ddim", 20, {}),
    ("ancestral", 200, {}),
    ("euler_maruyama", 200, {}),
    ("reverse_diffusion", 200, {}),
    ("sde", 200, {}),
    ("pc", 100, {}),
    ("langevin", 100, {"n_steps_each": 5, "spacing": "geometric"}),
)


def make_sde(name: str) -> SDE:
    if name not in SDE_NAMES:
        raise ValueError(f"sde must be one of {sorted(SDE_NAMES)}, got {name!r}")
    return SDE_NAMES[name]()


def demo(args: argparse.Namespace) -> int:
    target, forward = ring_mixture(), make_sde(args.sde)
    g = torch.Generator().manual_seed(args.seed)
    reference = target.sample(args.n, generator=g)
    panels = [(f"target ({target.n_components} modes)", reference)]
    print(f"{'sampler':<28}{'NFE':>6}{'SW2':>9}{'modes err':>11}{'seconds':>9}")
    for name, steps, options in DEMO_RUNS:
        t0 = time.perf_counter()
        out = sample(target.score_fn(forward), forward, (args.n, 2), sampler=name, steps=steps, generator=g,
                     dtype=torch.float64, progress=args.progress, **options)
        seconds = time.perf_counter() - t0
        label = name if "method" not in options else f"{name} ({options['method']})"
        sw = metrics.sliced_wasserstein(out.x, target.sample(args.n, generator=g), generator=g)
        mw = metrics.mode_weight_error(out.x, target)
        print(f"{label:<28}{out.nfe:>6}{sw:>9.4f}{mw:>11.4f}{seconds:>9.2f}")
        panels.append((f"{label}\nNFE {out.nfe}, SW₂ {sw:.3f}", out.x))
    path = scatter_panels(panels, args.out, density=target.log_prob, limits=6.0, columns=5)
    print(f"wrote {path}")
    return 0


def train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, Trainer, TrainingDiverged

    fields = {f: getattr(args, f) for f in TRAIN_OPTIONS if getattr(args, f) is not None}
    fields["progress"] = not args.no_progress
    if args.conditional:
        fields["conditional"] = True
    config = TrainConfig(**fields)
    try:
        trainer = Trainer(config)
        resumed = trainer.resume()
        print(f"{'resuming' if resumed else 'starting'} {config.out_dir} at step {trainer.step} of {config.steps} "
              f"on {trainer.device}; {sum(p.numel() for p in trainer.net.parameters()):,} parameters")
        trainer.fit(resume=False)
    except TrainingDiverged as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    print(f"wrote {trainer.path} and {trainer.log_path}")
    return 0


def sample_checkpoint(args: argparse.Namespace) -> int:
    import os

    import numpy as np

    from .plotting import save_samples
    from .train import model_from_checkpoint, resolve_device

    device = resolve_device(args.device)
    model, config, shape = model_from_checkpoint(args.checkpoint, ema=not args.raw_weights, device=device)
    options = dict(kv.split("=", 1) for kv in args.option)
    options = {k: _parse_value(v) for k, v in options.items()}
    try:
        score = _conditioned(model, args.label, args.guidance)
    except ValueError as err:
        print(f"sgm sample: error: {err}", file=sys.stderr)
        return 2
    g = torch.Generator(device).manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample(score, model.sde, (args.n,) + shape, sampler=args.sampler, steps=args.steps, generator=g,
                     device=device, dtype=torch.float32, progress=not args.no_progress, **options)
    seconds = time.perf_counter() - t0
    x = out.x.cpu()
    stem = os.path.splitext(args.out)[0]
    torch.save(x, stem + ".pt")
    np.savez_compressed(stem + ".npz", samples=x.numpy())
    save_samples(x[: args.show], args.out, f"{args.sampler}, {out.nfe} NFE")
    print(f"{args.n} samples with {args.sampler} ({out.nfe} NFE) in {seconds:.2f}s; wrote {args.out}, "
          f"{stem}.pt and {stem}.npz")
    return 0


def _conditioned(model, label: int | None, guidance: float | None):
    """The score to sample: the model itself, its class ``label``, or classifier-free guidance at ``guidance``."""
    from .guidance import classifier_free

    if label is None:
        if guidance is not None:
            raise ValueError("--guidance needs --label (the class to guide towards)")
        return model
    if model.n_classes is None:
        raise ValueError(f"--label {label} given, but the checkpoint's model is unconditional (trained without "
                         f"--conditional)")
    if not 0 <= label < model.n_classes:
        raise ValueError(f"--label must lie in [0, {model.n_classes - 1}], got {label}")
    return model.conditional(label) if not guidance else classifier_free(model, label, guidance)


def _parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


# TrainConfig fields the command line sets (name: type, help)
TRAIN_OPTIONS = {
    "data": (str, "moons, swiss_roll, 8gaussians, checkerboard, digits, mnist, cifar10 or folder"),
    "data_path": (str, "folder of the mnist / cifar10 / folder data"),
    "image_size": (int, "resize folder images to this size"),
    "sde": (str, "vp, subvp or ve"),
    "prediction": (str, "eps, score, x0 or v"),
    "weighting": (str, "std2 or likelihood"),
    "net": (str, "auto, mlp or unet"),
    "width": (int, "MLP width"), "depth": (int, "MLP residual blocks"),
    "channels": (int, "U-Net base channels"), "num_res_blocks": (int, "U-Net blocks per level"),
    "dropout": (float, "dropout"),
    "label_dropout": (float, "rate of training without the label (for classifier-free guidance), default 0.1"),
    "steps": (int, "training steps"), "batch_size": (int, "batch size"), "lr": (float, "learning rate"),
    "warmup": (int, "warm-up steps"), "grad_clip": (float, "gradient-norm clip"), "ema_decay": (float, "EMA decay"),
    "seed": (int, "seed"), "device": (str, "auto, cpu or cuda"), "out_dir": (str, "the run's folder"),
    "checkpoint_every": (int, "steps between checkpoints"), "sample_every": (int, "steps between sample grids"),
    "n_samples": (int, "samples per grid"), "sample_steps": (int, "ODE steps for the grids"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="sample an 8-mode ring mixture with its exact score, one panel per sampler")
    p.add_argument("--sde", default="vp", choices=sorted(SDE_NAMES))
    p.add_argument("--n", type=int, default=2000, help="samples per sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/demo.png", help="the PNG to write")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=demo)

    p = sub.add_parser("train", help="train a score network by denoising score matching (resumes if it can)")
    for name, (kind, text) in TRAIN_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=text)
    p.add_argument("--channel-mult", dest="channel_mult", type=lambda v: tuple(int(c) for c in v.split(",")),
                   default=None, help="U-Net channel multipliers, e.g. 1,2,2")
    p.add_argument("--attn-levels", dest="attn_levels", type=lambda v: tuple(int(c) for c in v.split(",") if c),
                   default=None, help="U-Net levels with self-attention, e.g. 1")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="class-conditional training on the dataset's labels")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train)

    p = sub.add_parser("sample", help="sample a trained checkpoint with any sampler")
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train")
    p.add_argument("--sampler", default="ode", choices=available())
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, e.g. --option method=heun2 (repeatable)")
    p.add_argument("--out", default="outputs/samples.png", help="the figure; samples go beside it as .pt and .npz")
    p.add_argument("--show", type=int, default=2000, help="at most this many samples in the figure")
    p.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--label", type=int, default=None, help="sample this class (a conditional checkpoint)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w: (1+w)·s(x|y) - w·s(x); with --label")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=sample_checkpoint)

    from . import bench

    p = sub.add_parser("bench", help="sweep every sampler over NFE on exact-score mixtures (and peers, a checkpoint)")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
