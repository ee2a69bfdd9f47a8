"""The ``sgm`` command (also ``python -m sgm``).

- ``sgm demo``: every sampler on a 2-D ring mixture with its exact score, one panel each, to a PNG.
- ``sgm train``: denoising score matching on a dataset; restarting the same command resumes; under
  ``torchrun --nproc_per_node N -m sgm train ...`` it trains with DDP over N processes.
- ``sgm sample``: any sampler on a trained checkpoint; writes a scatter plot or image grid and the samples
  (many samples: ``.npz`` shards as they are drawn, resumable, shared by torchrun's processes).
- ``sgm export``: a checkpoint's EMA weights and config as a ``.safetensors`` file (no pickle) to share.
- ``sgm eval``: FID, KID and Inception Score of samples against a reference (Inception weights from a local file).
- ``sgm bench``: the step-count-vs-quality sweep (``sgm.bench``).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import distributed, metrics
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
    fields["tensorboard"] = args.tensorboard
    config = TrainConfig(**fields)
    with distributed.session(config.device) as (rank, world_size):  # under torchrun: one of world_size processes
        try:
            trainer = Trainer(config)
            resumed = trainer.resume()
            if rank == 0:
                print(f"{'resuming' if resumed else 'starting'} {config.out_dir} at step {trainer.step} of "
                      f"{config.steps} on {trainer.device} ×{world_size}; "
                      f"{sum(p.numel() for p in trainer.net.parameters()):,} parameters")
            trainer.fit(resume=False)
        except TrainingDiverged as err:
            print(f"training stopped: {err}", file=sys.stderr)
            return 1
    if rank == 0:
        print(f"wrote {trainer.path} and {trainer.log_path}")
    return 0


def sample_checkpoint(args: argparse.Namespace) -> int:
    import os

    import numpy as np

    from .plotting import save_samples
    from .shards import sample_seeds
    from .train import resolve_device

    device = distributed.local_device(resolve_device(args.device))
    loaded = _load_model(args.checkpoint, not args.raw_weights, device)
    if isinstance(loaded, int):
        return loaded
    model, config, shape = loaded
    options = dict(kv.split("=", 1) for kv in args.option)
    options = {k: _parse_value(v) for k, v in options.items()}
    try:
        score = _conditioned(model, args.label, args.guidance)
    except ValueError as err:
        return _fail("sample", err)
    if args.shard_dir or args.n > args.shard_size:
        return _sample_shards(args, score, model.sde, shape, device, options)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample(score, model.sde, (args.n,) + shape, sampler=args.sampler, steps=args.steps,
                     seeds=sample_seeds(args.seed, 0, args.n),
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


def sample_command(args: argparse.Namespace) -> int:
    """``sgm sample``: under torchrun, every process draws its share of the shards."""
    with distributed.session(args.device) as (_, world_size):
        if world_size > 1 and not args.shard_dir:
            args.shard_dir = _default_shard_dir(args.out)
        return sample_checkpoint(args)


def _default_shard_dir(out: str) -> str:
    import os

    return os.path.splitext(out)[0] + "_shards"


def _sample_shards(args: argparse.Namespace, score, sde, shape: tuple, device, options: dict) -> int:
    """``args.n`` samples into ``.npz`` shards (resumable); process 0 then draws the figure of the first ones."""
    import os

    import numpy as np

    from .plotting import save_samples
    from .shards import sample_shards

    out_dir = args.shard_dir or _default_shard_dir(args.out)
    t0 = time.perf_counter()
    try:
        paths = sample_shards(score, sde, shape, args.n, out_dir, args.shard_size, args.seed, args.sampler,
                              args.steps, device, progress=not args.no_progress,
                              record={"checkpoint": os.path.abspath(args.checkpoint), "raw_weights": args.raw_weights},
                              **options)
    except ValueError as err:
        return _fail("sample", err)
    if distributed.is_main():
        shown, left = [], args.show
        for path in paths:
            if left <= 0:
                break
            with np.load(path, allow_pickle=False) as f:
                shown.append(torch.from_numpy(f["samples"][:left]))
            left -= len(shown[-1])
        save_samples(torch.cat(shown), args.out, f"{args.sampler}, {args.steps} steps")
        print(f"{args.n} samples with {args.sampler} in {len(paths)} shards in {out_dir} "
              f"({time.perf_counter() - t0:.2f}s); wrote {args.out}")
    return 0


def _fail(command: str, err: Exception) -> int:
    """An expected failure as one line on stderr, exit code 2."""
    print(f"sgm {command}: error: {err}", file=sys.stderr)
    return 2


def _load_model(path: str, ema: bool, device):
    """``model_from_checkpoint``, or exit code 2 with a one-line error for a missing, corrupt or unsafe file."""
    from .checkpoint import CheckpointError, model_from_checkpoint

    try:
        return model_from_checkpoint(path, ema=ema, device=device)
    except (CheckpointError, FileNotFoundError) as err:
        return _fail("sample", err)


def export_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, export

    try:
        out = export(args.checkpoint, args.out)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        return _fail("export", err)
    print(f"wrote {out} (EMA weights and config of {args.checkpoint})")
    return 0


def eval_samples(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .evaluate import evaluate, load_input
    from .nets.inception import load_inception
    from .train import resolve_device

    try:
        device = resolve_device(args.device)
        net = load_inception(args.inception, device)
        samples, reference = (load_input(p, net, args.batch_size, device) for p in (args.samples, args.reference))
        if args.save_reference_stats:
            reference.save(args.save_reference_stats)
        scores = evaluate(samples, reference, kid_subset_size=args.kid_subset_size)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        return _fail("eval", err)
    text = f"FID {scores['fid']:.4f}"
    if "kid" in scores:
        text += f"  KID {scores['kid']:.6f} ± {scores['kid_std']:.6f}"
    if "is" in scores:
        text += f"  IS {scores['is']:.4f} ± {scores['is_std']:.4f}"
    print(text)
    return 0


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
    "steps": (int, "training steps"), "batch_size": (int, "global batch size (split over torchrun's processes)"),
    "lr": (float, "learning rate"),
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
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the scalars and sample figures to OUT_DIR/tensorboard")
    p.set_defaults(func=train)

    p = sub.add_parser("sample", help="sample a trained checkpoint with any sampler")
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train, or a .safetensors from sgm export")
    p.add_argument("--sampler", default="ode", choices=available())
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="samples to draw (under torchrun write --num-samples: torchrun takes --n for its own)")
    p.add_argument("--seed", type=int, default=0,
                   help="sample i is drawn from its own stream seeded by (seed, i): the same in any batch or shard")
    p.add_argument("--device", default="auto")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, e.g. --option method=heun2 (repeatable)")
    p.add_argument("--out", default="outputs/samples.png", help="the figure; samples go beside it as .pt and .npz")
    p.add_argument("--show", type=int, default=2000, help="at most this many samples in the figure")
    p.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--label", type=int, default=None, help="sample this class (a conditional checkpoint)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w: (1+w)·s(x|y) - w·s(x); with --label")
    p.add_argument("--shard-dir", default=None,
                   help="write .npz shards here (resumable; default OUT_shards/ when --n exceeds --shard-size "
                        "or under torchrun, where the processes share the shards)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=sample_command)

    p = sub.add_parser("export", help="write a checkpoint's EMA weights and config to a .safetensors file to share")
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train")
    p.add_argument("out", help="the .safetensors file to write")
    p.set_defaults(func=export_checkpoint)

    p = sub.add_parser("eval", help="FID, KID and Inception Score of samples against a reference set")
    p.add_argument("samples", help="a folder of images or .npz shards, an .npz of images, or an .npz of mu/sigma")
    p.add_argument("reference", help="the same kinds of input as samples")
    p.add_argument("--inception", default=None,
                   help="the FID Inception weights (pt_inception-2015-12-05-6726825d.pth); default "
                        "$SGM_INCEPTION_WEIGHTS or ~/.cache/torch/hub/checkpoints/; nothing is downloaded")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--save-reference-stats", default=None, metavar="NPZ",
                   help="write the reference's mu and sigma here, to pass as REFERENCE next time")
    p.set_defaults(func=eval_samples)

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
