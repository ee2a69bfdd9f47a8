"""The ``sgm`` command (also ``python -m sgm``).

- ``sgm demo``: every sampler on a 2-D ring mixture with its exact score, one panel each, to a PNG.
- ``sgm train``: denoising score matching on a dataset; restarting the same command resumes.
- ``sgm sample``: any sampler on a trained checkpoint; writes a scatter plot or image grid and the samples.
- ``sgm bench``: the step-count-vs-quality sweep (``sgm.bench``).

Expected failures (a bad argument, a missing or foreign file, a refused setting) end in one line on stderr naming
what is wrong and exit status 2, never a traceback: argparse's own errors, ``UsageError`` raised by a command, and
the library's ``ValueError`` / ``OSError`` (with ``CheckpointError`` and ``SamplerDiverged``), caught in ``main``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import metrics
from .plotting import scatter_panels
from .samplers import available, sample
from .samplers.registry import options as sampler_options
from .sde import SDE, SubVPSDE, VESDE, VPSDE
from .targets import ring_mixture

__all__ = ["main", "make_sde", "UsageError"]


class UsageError(Exception):
    """An expected failure of a command: ``main`` prints its message as one line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sgm sample: error: argument --n: ... (sgm sample --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

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
    g_floor = torch.Generator().manual_seed(args.seed + 1)  # its own stream: the samplers' draws stay as they were
    floor = metrics.sliced_wasserstein(target.sample(args.n, generator=g_floor), target.sample(args.n, generator=g_floor),
                                       generator=g_floor)
    panels = [(f"target ({target.n_components} modes)\nSW₂ floor {floor:.3f}", reference)]
    print(f"{args.sde.upper()} SDE, exact score; SW2 floor (target vs target, {args.n} each): {floor:.4f}")
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
    path = scatter_panels(panels, args.out, density=target.log_prob, limits=6.0, columns=5,
                          suptitle=f"every sampler on the {target.n_components}-mode ring from its exact score, "
                                   f"{args.sde.upper()} SDE; SW₂ against a fresh target sample (floor {floor:.3f})")
    print(f"wrote {path}")
    return 0


def train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, Trainer, TrainingDiverged

    fields = {f: getattr(args, f) for f in TRAIN_OPTIONS if getattr(args, f) is not None}
    fields["progress"] = not args.no_progress
    fields["ema_warmup"] = not args.no_ema_warmup
    sde_args = _sde_args(args)
    if sde_args:
        fields["sde_args"] = sde_args
    config = TrainConfig(**fields)
    trainer = Trainer(config)
    resumed = trainer.resume()
    print(f"{'resuming' if resumed else 'starting'} {config.out_dir} at step {trainer.step} of {config.steps} "
          f"on {trainer.device}; {sum(p.numel() for p in trainer.net.parameters()):,} parameters")
    for key, (old, new) in trainer.changed.items():
        print(f"changed on resume: {key} {old!r} -> {new!r} (applied from step {trainer.step}; saved in the config)")
    try:
        trainer.fit(resume=False)
    except TrainingDiverged as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {trainer.step}; {trainer.path} holds it: run the same command to resume",
              file=sys.stderr)
        return 130
    print(f"wrote {trainer.path} and {trainer.log_path}")
    return 0


def sample_checkpoint(args: argparse.Namespace) -> int:
    import numpy as np

    from .plotting import save_samples
    from .train import model_from_checkpoint, resolve_device

    device = resolve_device(args.device)
    figure, tensors, arrays = _sample_outputs(args.out)
    model, config, shape = model_from_checkpoint(args.checkpoint, ema=not args.raw_weights, device=device)
    options = {k: _parse_value(v) for k, v in args.option}
    unknown = sorted(set(options) - set(sampler_options(args.sampler)))
    if unknown:
        raise UsageError(f"--option {unknown[0]}: sampler {args.sampler!r} takes no such option; its options: "
                         f"{', '.join(sampler_options(args.sampler)) or 'none'}")
    g = torch.Generator(device).manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample(model, model.sde, (args.n,) + shape, sampler=args.sampler, steps=args.steps, generator=g,
                     device=device, dtype=torch.float32, progress=not args.no_progress, **options)
    seconds = time.perf_counter() - t0
    x = out.x.cpu()
    written = []
    if tensors:
        torch.save(x, tensors)
        written.append(tensors)
    if arrays:
        np.savez_compressed(arrays, samples=x.numpy())
        written.append(arrays)
    if figure:
        data = _reference_data(config, shape, args.show)
        save_samples(x[: args.show], figure, f"{args.sampler}, {out.nfe} NFE", reference=data)
        written.insert(0, figure)
    print(f"{args.n} samples with {args.sampler} ({out.nfe} NFE) in {seconds:.2f}s; wrote {', '.join(written)}")
    return 0


FIGURE_EXTENSIONS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _sample_outputs(out: str) -> tuple[str | None, str | None, str | None]:
    """The (figure, .pt, .npz) files ``--out`` asks for, its folder made first: ``x.npz`` or ``x.pt`` only that
    file; a figure name (``x.png`` …) the figure with ``x.pt`` and ``x.npz`` beside it; no extension all three."""
    stem, ext = os.path.splitext(out)
    if ext.lower() not in FIGURE_EXTENSIONS + (".pt", ".npz", ""):
        raise UsageError(f"--out {out!r}: the extension must be one of {', '.join(FIGURE_EXTENSIONS)}, .pt, .npz "
                         f"or none (all three)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if ext.lower() in (".pt", ".npz"):
        return None, (out if ext.lower() == ".pt" else None), (out if ext.lower() == ".npz" else None)
    return (out if ext else stem + ".png"), stem + ".pt", stem + ".npz"


def _reference_data(config, shape: tuple, n: int):
    """A draw of the training data to overlay on a 2-D scatter (None for images or data that is not generated)."""
    from .data import TOY_SETS, toy_2d

    if shape != (2,) or config.data not in TOY_SETS:
        return None
    return toy_2d(config.data, n, torch.Generator().manual_seed(config.seed + 2))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _device(text: str) -> str:
    from .device import resolve_device

    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. method=heun2), got {text!r}")
    return key, value


def _sde_args(args: argparse.Namespace) -> dict:
    """``--beta-min/--beta-max`` (vp, subvp) and ``--sigma-min/--sigma-max`` (ve) as the config's ``sde_args``."""
    given = {k: getattr(args, k) for k in ("beta_min", "beta_max", "sigma_min", "sigma_max") if getattr(args, k) is not None}
    sde = args.sde or "vp"
    wrong = [k for k in given if k.startswith("sigma" if sde != "ve" else "beta")]
    if wrong:
        raise UsageError(f"--{wrong[0].replace('_', '-')} does not apply to --sde {sde} "
                         f"({'--sigma-min/--sigma-max' if sde == 've' else '--beta-min/--beta-max'} do)")
    return given


def _parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


# TrainConfig fields the command line sets (name: type, help); choices in TRAIN_CHOICES, defaults from TrainConfig
TRAIN_OPTIONS = {
    "data": (str, "dataset"),
    "data_path": (str, "folder of the mnist / cifar10 / folder data"),
    "image_size": (int, "resize folder images to this size"),
    "n_data": (int, "how many points of a generated 2-D set"),
    "sde": (str, "forward SDE"),
    "prediction": (str, "what the network predicts"),
    "weighting": (str, "DSM loss weighting λ(t)"),
    "eps": (float, "smallest training time: t ~ U(eps, T)"),
    "sigma_data": (float, "σ_d of --prediction edm / --weighting edm (default: the training data's std)"),
    "net": (str, "network (auto: mlp for vectors, unet for images)"),
    "width": (int, "MLP width"), "depth": (int, "MLP residual blocks"),
    "channels": (int, "U-Net base channels"), "num_res_blocks": (int, "U-Net blocks per level"),
    "dropout": (float, "dropout"),
    "steps": (int, "training steps"), "batch_size": (int, "batch size"), "lr": (float, "learning rate"),
    "weight_decay": (float, "AdamW weight decay"),
    "warmup": (int, "warm-up steps"), "grad_clip": (float, "gradient-norm clip"), "ema_decay": (float, "EMA decay"),
    "seed": (int, "seed"), "device": (_device, "auto, cpu, cuda or cuda:N"), "out_dir": (str, "the run's folder"),
    "checkpoint_every": (int, "steps between checkpoints"),
    "checkpoint_minutes": (float, "minutes between checkpoints (also written on Ctrl-C)"),
    "sample_every": (int, "steps between sample grids"),
    "n_samples": (int, "samples per grid"), "sample_steps": (int, "ODE steps for the grids"),
}


def _train_choices() -> dict:
    from .data import DATASETS
    from .losses import WEIGHTINGS
    from .score import PREDICTIONS

    return {"data": DATASETS, "sde": tuple(SDE_NAMES), "prediction": PREDICTIONS, "weighting": WEIGHTINGS,
            "net": ("auto", "mlp", "unet")}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .train import TrainConfig

    parser = _Parser(prog="sgm", description="sgm: score-based generative modelling with SDEs "
                                     "and ODEs (demo, train, sample, bench)")
    parser.add_argument("--version", action="version", version=f"sgm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="sample an 8-mode ring mixture with its exact score, one panel per sampler",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sde", default="vp", choices=sorted(SDE_NAMES), help="forward SDE")
    p.add_argument("--n", type=_positive_int, default=2000, help="samples per sampler")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--out", default="outputs/demo.png", help="the PNG to write")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=demo)

    p = sub.add_parser("train", help="train a score network by denoising score matching (resumes if it can)")
    defaults, choices = TrainConfig(), _train_choices()
    for name, (kind, text) in TRAIN_OPTIONS.items():
        default = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, choices=choices.get(name),
                       help=f"{text} (default: {default})" if default is not None else text)
    for name, text in (("beta_min", "VP / sub-VP β_min (default: 0.1)"), ("beta_max", "VP / sub-VP β_max (default: 20)"),
                       ("sigma_min", "VE σ_min (default: 0.01)"), ("sigma_max", "VE σ_max (default: 50)")):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=None, help=text)
    p.add_argument("--no-ema-warmup", action="store_true", help="a constant EMA decay from the first step")
    p.add_argument("--channel-mult", dest="channel_mult", type=lambda v: tuple(int(c) for c in v.split(",")),
                   default=None, help="U-Net channel multipliers, e.g. 1,2,2")
    p.add_argument("--attn-levels", dest="attn_levels", type=lambda v: tuple(int(c) for c in v.split(",") if c),
                   default=None, help="U-Net levels with self-attention, e.g. 1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train)

    p = sub.add_parser("sample", help="sample a trained checkpoint with any sampler",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train")
    p.add_argument("--sampler", default="ode", choices=available(), help="sampler")
    p.add_argument("--steps", type=_positive_int, default=100, help="sampler steps")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, e.g. --option method=heun2 (repeatable)")
    p.add_argument("--out", default="outputs/samples.png",
                   help="a figure (.png, .pdf, .svg, .jpg) with the samples beside it as .pt and .npz; or only a "
                        ".pt or .npz; or a name without extension for all three")
    p.add_argument("--show", type=_positive_int, default=2000, help="at most this many samples in the figure")
    p.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=sample_checkpoint)

    from . import bench

    p = sub.add_parser("bench", help="sweep every sampler over NFE on exact-score mixtures (and peers, a checkpoint)")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sgm``; an expected failure (see the module's docstring) is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"sgm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
