"""The ``sgm`` command (also ``python -m sgm``).

- ``sgm demo``: every sampler on a 2-D ring mixture with its exact score, one panel each, to a PNG.
- ``sgm train``: denoising score matching on a dataset; restarting the same command resumes; under
  ``torchrun --nproc_per_node N -m sgm train ...`` it trains with DDP over N processes.
- ``sgm reflow TEACHER``: a rectified flow trained on the teacher checkpoint's own (noise, sample) pairs
  (``sgm.reflow``); restarting the same command resumes.
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
import dataclasses
import os
import re
import sys
import time

import torch

from . import distributed, metrics
from .config import PATHS, TENSOR_DATA, TrainConfig, make_path, path_parameters
from .plotting import scatter_panels
from .samplers import available, sample
from .paths import GaussianPath
from .samplers.registry import entry as sampler_entry, options as sampler_options, solver as sampler_solver
from .targets import ring_mixture

__all__ = ["main", "UsageError", "add_config_arguments", "config_from_args"]


class UsageError(Exception):
    """An expected failure of a command: ``main`` prints its message as one line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sgm sample: error: argument --n: ... (sgm sample --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

def demo_runs(forward: GaussianPath) -> dict[str, dict]:
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
    _figure_output(args.out)
    target, forward = ring_mixture(), make_path(args.sde)
    g = torch.Generator().manual_seed(args.seed)
    reference = target.sample(args.n, generator=g)
    g_floor = torch.Generator().manual_seed(args.seed + 1)  # its own stream: the samplers' draws stay as they were
    floor = metrics.sliced_wasserstein(target.sample(args.n, generator=g_floor),
                                       target.sample(args.n, generator=g_floor), generator=g_floor)
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
    from .train import Trainer

    config = config_from_args(args)
    return _fit(config, lambda: Trainer(config))


REFLOW_DEFAULTS = dict(sde="rectified-flow", prediction="velocity", weighting="native")


def reflow_command(args: argparse.Namespace) -> int:
    """``sgm reflow TEACHER``: ``--n-pairs`` standard normal ``z`` drawn with ``--seed``, their pairs
    ``(z, Φ(z))`` by the teacher's flow map, a rectified-flow model trained on them (``sgm.reflow``); resumable."""
    from .checkpoint import model_from_checkpoint
    from .device import resolve_device
    from .reflow import prepare

    config = config_from_args(args, TrainConfig(**REFLOW_DEFAULTS), reflow=True)
    device = distributed.local_device(resolve_device(config.device))
    teacher, _, shape = model_from_checkpoint(args.teacher, device=device)
    noise = torch.randn((args.n_pairs,) + shape, generator=torch.Generator().manual_seed(config.seed))
    return _fit(config, lambda: prepare(teacher, teacher.sde, config, noise.to(device), tol=args.tol))


def _fit(config: TrainConfig, make_trainer) -> int:
    """Make the trainer, resume it, train it to ``config.steps``; the exit status (an interruption: ``128 +``
    its signal)."""
    from .train import Interrupted, TrainingDiverged

    with distributed.session(config.device) as (rank, world_size):  # under torchrun: one of world_size processes
        trainer = make_trainer()
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
            print(f"sgm train: training stopped: {err}", file=sys.stderr)
            return 1
        except Interrupted as err:
            print(f"sgm train: {err}: run the same command to resume", file=sys.stderr)
            return 128 + err.signum
        except KeyboardInterrupt:
            print(f"sgm train: interrupted at step {trainer.step}; {trainer.path} holds the last checkpoint: run the "
                  f"same command to resume", file=sys.stderr)
            return 130
    if rank == 0:
        print(f"wrote {trainer.path} and {trainer.log_path}")
    return 0


def config_from_args(args: argparse.Namespace, defaults: TrainConfig | None = None,
                     reflow: bool = False) -> TrainConfig:
    """The run's config: the one saved in ``--out-dir``'s checkpoint when there is one (else ``defaults``), with
    the flags given on the command line — and only those — changed; checked (``TrainConfig.validate``), its
    errors naming the flag. A run on a tensor (``data="tensor"``) resumes only as a reflow run."""
    from .checkpoint import saved_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    path_args = {k[len(_PATH_ARG):]: v for k, v in vars(args).items() if k.startswith(_PATH_ARG)}
    saved = saved_config(given.get("out_dir", TrainConfig.out_dir))
    if saved is not None and saved.data == TENSOR_DATA and not reflow:
        raise UsageError(f"{saved.out_dir if 'out_dir' not in given else given['out_dir']} was trained on a tensor "
                         f"given in Python (Trainer(config, data=...)); resume it there, with the same tensor")
    base = saved or defaults or TrainConfig()
    sde = given.get("sde", base.sde)
    wrong = [k for k in path_args if k not in PATHS[sde].params]
    if wrong:
        takes = [f"--{p.replace('_', '-')}" for p in PATHS[sde].params]
        raise UsageError(f"--{wrong[0].replace('_', '-')} does not apply to --sde {sde} "
                         f"({'/'.join(takes) + ' do' if takes else 'it takes no parameters'})")
    sde_args = {**(base.sde_args if sde == base.sde else {}), **path_args}
    try:
        return base.replace(**given, sde_args=sde_args).validate()
    except ValueError as err:  # the field named first: say it as the flag the user typed
        raise UsageError(re.sub(r"^(\w+)", lambda m: f"--{m.group(1).replace('_', '-')}" if m.group(1) in names
                                else m.group(1), str(err))) from None


_PATH_ARG = "path_arg:"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainConfig`` field (its name with dashes), from the field's metadata (help, choices,
    default), and one per path parameter (``sde_args``); none has an argparse default, so the namespace holds only
    the flags given."""
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta["cli"]:
            continue
        kind = str(f.type).replace(" | None", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        text = meta["help"] if default is None else f"{meta['help']} (default: {shown if shown != '' else 'none'})"
        flags = [f"--{f.name.replace('_', '-')}"] + ([meta["flag"]] if meta["flag"] else [])
        if kind == "bool":
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=text)
            continue
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        parse = {"int": int, "float": float, "str": str, "tuple[int, ...]": _list_of(int),
                 "tuple[float, ...]": _list_of(float)}[kind]
        parser.add_argument(*flags, dest=f.name, type=parse, choices=choices, default=argparse.SUPPRESS, help=text,
                            metavar=None if choices else f.name.upper())
    for param, paths in path_parameters().items():
        defaults = ", ".join(f"{path}: {default}" for path, default in paths)
        parser.add_argument(f"--{param.replace('_', '-')}", dest=_PATH_ARG + param, type=float,
                            default=argparse.SUPPRESS, metavar=param.upper(),
                            help=f"the path's {param} (default: {defaults})")


def _list_of(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, e.g. 1,2,2; got "
                                             f"{text!r}") from None

    parse.__name__ = f"list of {kind.__name__}s"
    return parse


def sample_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import model_from_checkpoint
    from .device import resolve_device
    from .shards import sample_seeds

    device = distributed.local_device(resolve_device(args.device))
    figure, tensors, arrays = _sample_outputs(args.out)
    options = _sampler_options(args.sampler, args.option)
    if args.steps is not None and args.nfe is not None:
        raise UsageError("give --steps (noise levels) or --nfe (a budget of model evaluations), not both")
    if sampler_solver(args.sampler, **options).adaptive:
        if args.steps is not None:
            raise UsageError(f"--steps {args.steps}: sampler {args.sampler!r} with these options is adaptive and "
                             f"chooses its own steps (set --option rtol=…/atol=…); for fixed steps give --option "
                             f"method=heun2")
    elif args.steps is None and args.nfe is None:
        args.steps = 100
    model, config, shape = model_from_checkpoint(args.checkpoint, ema=not args.raw_weights, device=device)
    score = _conditioned(model, args.label, args.guidance)
    t0 = time.perf_counter()
    if args.shard_dir or args.n > args.shard_size:
        x, spent, where = _sample_shards(args, score, model.sde, shape, device, options)
    else:
        with torch.no_grad():
            out = sample(score, model.sde, (args.n,) + shape, sampler=args.sampler, steps=args.steps, nfe=args.nfe,
                         seeds=sample_seeds(args.seed, 0, args.n),
                         device=device, dtype=torch.float32, progress=not args.no_progress, **options)
        x, spent, where = out.x.cpu(), f"{out.nfe} NFE", ""
    seconds = time.perf_counter() - t0
    if not distributed.is_main():
        return 0
    written = _write_samples(x, figure, tensors, arrays, f"{args.sampler}, {spent}",
                             _reference_data(config, shape, args.show), args.show)
    print(f"{args.n} samples with {args.sampler} {where or f'({spent})'} in {seconds:.2f}s on {model.sde!r}; "
          f"wrote {', '.join(written)}")
    return 0


def _sampler_options(name: str, pairs: list[tuple[str, str]]) -> dict:
    """``--option KEY=VALUE`` pairs as the sampler's options, checked by building its solver before any work."""
    options = {k: _parse_value(v) for k, v in pairs}
    unknown = sorted(set(options) - set(sampler_options(name)))
    if unknown:
        raise UsageError(f"--option {unknown[0]}: sampler {name!r} takes no such option; its options: "
                         f"{', '.join(sampler_options(name)) or 'none'}")
    if options.get("variance") == "analytic":
        raise UsageError("--option variance=analytic needs a Γ estimate (gamma), which the command line cannot "
                         "build; in Python pass gamma=sgm.likelihood.estimate_gamma(...) to sgm.sample")
    try:
        sampler_solver(name, **options)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--option: {err}") from None
    return options


def _write_samples(x: torch.Tensor, figure: str | None, tensors: str | None, arrays: str | None, title: str,
                   reference, show: int) -> list[str]:
    """The samples to the files ``--out`` asked for (``_sample_outputs``); returns their paths, the figure first."""
    import numpy as np

    from .plotting import save_samples

    written = []
    if figure:
        save_samples(x[:show], figure, title, reference=reference)
        written.append(figure)
    if tensors:
        torch.save(x, tensors)
        written.append(tensors)
    if arrays:
        np.savez_compressed(arrays, samples=x.numpy())
        written.append(arrays)
    return written


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
    return os.path.splitext(out)[0] + "_shards"


def _sample_shards(args: argparse.Namespace, score, sde, shape: tuple, device, options: dict):
    """``args.n`` samples into ``.npz`` shards (resumable, shared by torchrun's processes); returns, on process 0,
    all of them read back for ``--out`` (None elsewhere), the steps spent and where the shards are."""
    import numpy as np

    from .shards import sample_shards

    out_dir = args.shard_dir or _default_shard_dir(args.out)
    paths = sample_shards(score, sde, shape, args.n, out_dir, args.shard_size, args.seed, args.sampler,
                          args.steps, device, progress=not args.no_progress, nfe=args.nfe,
                          record={"checkpoint": os.path.abspath(args.checkpoint), "raw_weights": args.raw_weights},
                          **options)
    x = None
    if distributed.is_main():
        parts = []
        for path in paths:
            with np.load(path, allow_pickle=False) as f:
                parts.append(torch.from_numpy(f["samples"]))
        x = torch.cat(parts)
    spent = f"{args.nfe} NFE" if args.nfe else f"{args.steps} steps" if args.steps else "adaptive steps"
    return x, spent, f"in {len(paths)} shards in {out_dir}"


def _fail(command: str, err: Exception) -> int:
    """An expected failure as one line on stderr, exit code 2."""
    print(f"sgm {command}: error: {err}", file=sys.stderr)
    return 2


def export_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, export

    try:
        out = export(args.checkpoint, args.out, args.ema_std, args.ema_step)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        return _fail("export", err)
    what = "EMA weights" if args.ema_std is None else f"post-hoc EMA (std {args.ema_std}) weights"
    print(f"wrote {out} ({what} and config of {args.checkpoint})")
    return 0


def eval_samples(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .evaluate import evaluate, read_input, stats_of
    from .nets.inception import load_inception
    from .device import resolve_device

    try:
        device = resolve_device(args.device)
        inputs = [read_input(p, args.value_range) for p in (args.samples, args.reference)]  # checked before work
        net = load_inception(args.inception, device)
        samples, reference = (stats_of(read, net, args.batch_size, device, progress=True) for read in inputs)
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
    print(f"{text}  (samples: {samples.source}; reference: {reference.source})")
    return 0


FIGURE_EXTENSIONS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _sample_outputs(out: str) -> tuple[str | None, str | None, str | None]:
    """The (figure, .pt, .npz) files ``--out`` asks for, its folder made first: ``x.npz`` or ``x.pt`` only that
    file; a figure name (``x.png`` …) the figure with ``x.pt`` and ``x.npz`` beside it; no extension all three."""
    stem, ext = os.path.splitext(out)
    if ext.lower() not in FIGURE_EXTENSIONS + (".pt", ".npz", ""):
        raise UsageError(f"--out {out!r}: the extension must be one of {', '.join(FIGURE_EXTENSIONS)}, .pt, .npz "
                         f"or none (all three)")
    _writable_folder(out)
    if ext.lower() in (".pt", ".npz"):
        return None, (out if ext.lower() == ".pt" else None), (out if ext.lower() == ".npz" else None)
    return (out if ext else stem + ".png"), stem + ".pt", stem + ".npz"


def _writable_folder(out: str) -> None:
    """Make ``out``'s folder and check that a file can be written there, before any work (a ``UsageError``
    naming ``--out`` otherwise)."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(f"--out {out!r}: cannot write in {folder} ({err.strerror or err})") from None


def _figure_output(out: str) -> str:
    """``--out`` of a command that writes one figure: a figure extension and a folder it can write in."""
    if os.path.splitext(out)[1].lower() not in FIGURE_EXTENSIONS:
        raise UsageError(f"--out {out!r}: the extension must be one of {', '.join(FIGURE_EXTENSIONS)}")
    _writable_folder(out)
    return out


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


def _parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .evaluate import VALUE_RANGES

    parser = _Parser(prog="sgm", description="sgm: score-based generative modelling with SDEs "
                                     "and ODEs (demo, train, reflow, sample, export, eval, bench)")
    parser.add_argument("--version", action="version", version=f"sgm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="sample an 8-mode ring mixture with its exact score, one panel per sampler",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sde", default="vp", choices=tuple(PATHS), help="forward path")
    p.add_argument("--n", type=_positive_int, default=2000, help="samples per sampler")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--out", default="outputs/demo.png", help="the PNG to write")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=demo)

    p = sub.add_parser("train", help="train a score network by denoising score matching (resumes if it can)",
                       description="Train a score network by denoising score matching. Run the same command again "
                                   "to resume: the run keeps every saved setting, and only the flags given change.")
    add_config_arguments(p)
    p.set_defaults(func=train)

    p = sub.add_parser("reflow", help="reflow a trained checkpoint: a rectified flow trained on its own (noise, "
                       "sample) pairs (resumes if it can)",
                       description="Reflow (2-rectified flow): draw --n-pairs noises z, map each through the "
                                   "teacher's probability-flow ODE (dopri5 at --tol) to x_0, train a rectified-flow "
                                   "model on the straight lines from x_0 to z. The training flags are sgm train's "
                                   f"(defaults here: {', '.join(f'--{k} {v}' for k, v in REFLOW_DEFAULTS.items())}); "
                                   "run the same command again to resume.")
    p.add_argument("teacher", help="the teacher: a checkpoint.pt written by sgm train, or a .safetensors")
    p.add_argument("--n-pairs", type=_positive_int, default=10_000, help="pairs to generate (default: 10000)")
    p.add_argument("--tol", type=float, default=1e-6, help="rtol = atol of the teacher's dopri5 (default: 1e-6)")
    add_config_arguments(p)
    p.set_defaults(func=reflow_command)

    p = sub.add_parser("sample", help="sample a trained checkpoint with any sampler",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.pt written by sgm train, or a .safetensors from sgm export")
    p.add_argument("--sampler", default="ode", choices=available(), help="sampler")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampler steps (noise levels; 100 unless --nfe is given); an adaptive solver (the default ode, "
                        "with dopri5) chooses its own and refuses --steps")
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
    p.add_argument("--ema-std", type=float, default=None,
                   help="reconstruct the power-function EMA of this relative std (e.g. 0.1) from the run's snapshots "
                        "(sgm train --ema-stds ... --snapshot-every N) instead of exporting the EMA")
    p.add_argument("--ema-step", type=_positive_int, default=None,
                   help="the step of the reconstructed EMA (default: the last snapshot's)")
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
    p.add_argument("--value-range", default="auto", choices=("auto",) + tuple(VALUE_RANGES),
                   help="the range of float images (uint8 ones are 0:255); auto: -1:1 (sgm's samples) when they "
                        "hold a negative value, 0:1 when they lie in it, refused otherwise")
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
