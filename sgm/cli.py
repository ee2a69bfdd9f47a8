"""The ``sgm`` command (also ``python -m sgm``).

- ``sgm demo``: every sampler on a 2-D ring mixture with its exact score, one panel each, to a PNG.
- ``sgm train``: denoising score matching on a dataset; restarting the same command resumes; under
  ``torchrun --nproc_per_node N -m sgm train ...`` it trains with DDP over N processes.
- ``sgm sample``: any sampler on a trained checkpoint; writes a scatter plot or image grid and the samples
  (many samples: ``.npz`` shards as they are drawn, resumable, shared by torchrun's processes).
- ``sgm export``: a checkpoint's EMA weights and config as a ``.safetensors`` file (no pickle) to share.
- ``sgm eval``: FID, KID and Inception Score of samples against a reference (Inception weights from a local file).
- ``sgm bench``: the step-count-vs-quality sweep (``sgm.bench.sweep``).

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

from . import distributed, metrics
from .plotting import scatter_panels
from .samplers import available, sample
from .samplers.registry import entry as sampler_entry, options as sampler_options, solver as sampler_solver
from .paths import SDE
from .train import SDE_CLASSES
from .targets import ring_mixture

__all__ = ["main", "make_sde", "UsageError"]


class UsageError(Exception):
    """An expected failure of a command: ``main`` prints its message as one line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sgm sample: error: argument --n: ... (sgm sample --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

SDE_NAMES = SDE_CLASSES

def make_sde(name: str) -> SDE:
    if name not in SDE_NAMES:
        raise ValueError(f"sde must be one of {sorted(SDE_NAMES)}, got {name!r}")
    return SDE_NAMES[name]()


def demo_runs(forward: SDE) -> dict[str, dict]:
    """The demo's runs: every registered sampler with ``sample``'s keywords from its registry entry (steps, options,
    default grid), started just below the top where the path's ``α(T) = 0`` and the sampler needs ``α > 0``."""
    top_is_noise = float(forward.alpha(torch.tensor([forward.T], dtype=torch.float64))) == 0
    runs = {}
    for name in available():
        entry = sampler_entry(name)
        needs_drift = "positive_alpha" in sampler_solver(name, **entry.options).needs
        runs[name] = {"steps": entry.steps, "t_max": forward.T * (1 - 1e-3) if top_is_noise and needs_drift else None,
                      **entry.options}
    return runs


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
    model = target.prediction_fn(forward, "x0")  # exact x̂₀: every sampler starts from every path's top
    for name, run in demo_runs(forward).items():
        t0 = time.perf_counter()
        out = sample(model, forward, (args.n, 2), sampler=name, generator=g, dtype=torch.float64,
                     progress=args.progress, **run)
        seconds = time.perf_counter() - t0
        label = f"{name}, {sampler_entry(name).default_spacing(forward)}"
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
    if args.conditional:
        fields["conditional"] = True
    fields["tensorboard"] = args.tensorboard
    fields["ema_warmup"] = not args.no_ema_warmup
    sde_args = _sde_args(args)
    if sde_args:
        fields["sde_args"] = sde_args
    config = TrainConfig(**fields)
    with distributed.session(config.device) as (rank, world_size):  # under torchrun: one of world_size processes
        trainer = Trainer(config)
        resumed = trainer.resume()
        if rank == 0:
            print(f"{'resuming' if resumed else 'starting'} {config.out_dir} at step {trainer.step} of "
                  f"{config.steps} on {trainer.device} ×{world_size}; "
                  f"{sum(p.numel() for p in trainer.net.parameters()):,} parameters")
            for key, (old, new) in trainer.changed.items():
                print(f"changed on resume: {key} {old!r} -> {new!r} (applied from step {trainer.step}; saved in the "
                      f"config)")
        try:
            trainer.fit(resume=False)
        except TrainingDiverged as err:
            print(f"training stopped: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ninterrupted at step {trainer.step}; {trainer.path} holds it: run the same command to resume",
                  file=sys.stderr)
            return 130
    if rank == 0:
        print(f"wrote {trainer.path} and {trainer.log_path}")
    return 0


def sample_checkpoint(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import model_from_checkpoint
    from .device import resolve_device
    from .plotting import save_samples
    from .shards import sample_seeds

    device = distributed.local_device(resolve_device(args.device))
    figure, tensors, arrays = _sample_outputs(args.out)
    model, config, shape = model_from_checkpoint(args.checkpoint, ema=not args.raw_weights, device=device)
    options = {k: _parse_value(v) for k, v in args.option}
    unknown = sorted(set(options) - set(sampler_options(args.sampler)))
    if unknown:
        raise UsageError(f"--option {unknown[0]}: sampler {args.sampler!r} takes no such option; its options: "
                         f"{', '.join(sampler_options(args.sampler)) or 'none'}")
    score = _conditioned(model, args.label, args.guidance)
    if args.steps is not None and args.nfe is not None:
        raise UsageError("give --steps (noise levels) or --nfe (a budget of model evaluations), not both")
    if args.steps is None and args.nfe is None:
        args.steps = 100
    if args.shard_dir or args.n > args.shard_size:
        return _sample_shards(args, score, model.sde, shape, device, options, figure)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sample(score, model.sde, (args.n,) + shape, sampler=args.sampler, steps=args.steps, nfe=args.nfe,
                     seeds=sample_seeds(args.seed, 0, args.n),
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


def _sample_shards(args: argparse.Namespace, score, sde, shape: tuple, device, options: dict, figure: str | None) -> int:
    """``args.n`` samples into ``.npz`` shards (resumable); process 0 then draws the figure of the first ones."""
    import os

    import numpy as np

    from .plotting import save_samples
    from .shards import sample_shards

    out_dir = args.shard_dir or _default_shard_dir(args.out)
    t0 = time.perf_counter()
    paths = sample_shards(score, sde, shape, args.n, out_dir, args.shard_size, args.seed, args.sampler,
                          args.steps, device, progress=not args.no_progress, nfe=args.nfe,
                          record={"checkpoint": os.path.abspath(args.checkpoint), "raw_weights": args.raw_weights},
                          **options)
    if distributed.is_main() and figure:
        shown, left = [], args.show
        for path in paths:
            if left <= 0:
                break
            with np.load(path, allow_pickle=False) as f:
                shown.append(torch.from_numpy(f["samples"][:left]))
            left -= len(shown[-1])
        save_samples(torch.cat(shown), figure, f"{args.sampler}, " + (f"{args.nfe} NFE" if args.nfe else
                                                                         f"{args.steps} steps"))
    if distributed.is_main():
        print(f"{args.n} samples with {args.sampler} in {len(paths)} shards in {out_dir} "
              f"({time.perf_counter() - t0:.2f}s){'; wrote ' + figure if figure else ''}")
    return 0


def _fail(command: str, err: Exception) -> int:
    """An expected failure as one line on stderr, exit code 2."""
    print(f"sgm {command}: error: {err}", file=sys.stderr)
    return 2


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
    from .device import resolve_device

    try:
        device = resolve_device(args.device)
        net = load_inception(args.inception, device)
        samples, reference = (load_input(p, net, args.batch_size, device, progress=True)
                              for p in (args.samples, args.reference))
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
    "label_dropout": (float, "rate of training without the label (for classifier-free guidance), default 0.1"),
    "steps": (int, "training steps"), "batch_size": (int, "global batch size (split over torchrun's processes)"),
    "lr": (float, "learning rate"), "weight_decay": (float, "AdamW weight decay"),
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
    p.add_argument("--conditional", action="store_true", default=None,
                   help="class-conditional training on the dataset's labels")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the scalars and sample figures to OUT_DIR/tensorboard")
    p.set_defaults(func=train)

    p = sub.add_parser("sample", help="sample a trained checkpoint with any sampler",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train, or a .safetensors from sgm export")
    p.add_argument("--sampler", default="ode", choices=available(), help="sampler")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampler steps (noise levels; 100 unless --nfe is given)")
    p.add_argument("--nfe", type=_positive_int, default=None,
                   help="a budget of model evaluations instead of --steps: the most noise levels the sampler can "
                        "take within it")
    p.add_argument("--n", "--num-samples", dest="n", type=_positive_int, default=64,
                   help="samples to draw (under torchrun write --num-samples: torchrun takes --n for its own)")
    p.add_argument("--seed", type=int, default=0,
                   help="sample i is drawn from its own stream seeded by (seed, i): the same in any batch or shard")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, e.g. --option method=heun2 (repeatable)")
    p.add_argument("--out", default="outputs/samples.png",
                   help="a figure (.png, .pdf, .svg, .jpg) with the samples beside it as .pt and .npz; or only a "
                        ".pt or .npz; or a name without extension for all three")
    p.add_argument("--show", type=_positive_int, default=2000, help="at most this many samples in the figure")
    p.add_argument("--raw-weights", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--label", type=int, default=None, help="sample this class (a conditional checkpoint)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w: (1+w)·s(x|y) - w·s(x); with --label")
    p.add_argument("--shard-dir", default=None,
                   help="write .npz shards here (resumable; default OUT_shards/ when --n exceeds --shard-size "
                        "or under torchrun, where the processes share the shards)")
    p.add_argument("--shard-size", type=_positive_int, default=1000, help="samples per shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=sample_command)

    p = sub.add_parser("export", help="write a checkpoint's EMA weights and config to a .safetensors file to share")
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train")
    p.add_argument("out", help="the .safetensors file to write")
    p.set_defaults(func=export_checkpoint)

    p = sub.add_parser("eval", help="FID, KID and Inception Score of samples against a reference set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("samples", help="a folder of images or .npz shards, an .npz of images, or an .npz of mu/sigma")
    p.add_argument("reference", help="the same kinds of input as samples")
    p.add_argument("--inception", default=None,
                   help="the FID Inception weights (pt_inception-2015-12-05-6726825d.pth); default "
                        "$SGM_INCEPTION_WEIGHTS or ~/.cache/torch/hub/checkpoints/; nothing is downloaded")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="images per forward pass")
    p.add_argument("--kid-subset-size", type=_positive_int, default=1000, help="KID subset size")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--save-reference-stats", default=None, metavar="NPZ",
                   help="write the reference's mu and sigma here, to pass as REFERENCE next time")
    p.set_defaults(func=eval_samples)

    from .bench import sweep  # the harness loads only with the command line, never with ``import sgm``

    p = sub.add_parser("bench", help="sweep every sampler over NFE on exact-score mixtures (and peers, a checkpoint)")
    sweep.add_arguments(p)
    p.set_defaults(func=sweep.run_from_args)
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
