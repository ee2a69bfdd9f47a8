"""Step-count-vs-quality sweeps: every sampler over a grid of score-evaluation budgets (NFE).

On exact-score targets (an 8-mode ring in 2-D and a 5-component mixture in 16-D), for VP and VE, each sampler
runs at each NFE in ``NFE_GRID`` (its steps chosen to spend that budget) and the adaptive ODE over
``TOLERANCES``, all from the same ``x_T`` and seeds. Each run records NFE, wall time, SW₂, MMD², energy
distance, Fréchet distance (raw coordinates), the exact NLL and the mode-weight error against a fresh target
sample, and for deterministic samplers the map error ``mean ‖x - x_ref‖`` against dopri5 at rtol = atol = 1e-9.
The Monte-Carlo floor of each metric (target against target, same sizes) is recorded and drawn on every figure,
and so is the value of the exact flow map of this ``x_T`` (the dopri5 reference): the limit the deterministic
samplers converge to, one draw away from the floor.

With a checkpoint of a digits model, the same sweep runs on it, judged by a classifier trained on the real
digits (Fréchet distance in its features, confident fraction). With diffusers installed, its DDPM, DDIM, Euler,
Heun, DPM-Solver++ and UniPC schedulers run on the same DDPM chain (trailing timesteps), driven by the exact noise
predictor ``ε(x, i) = -std_i·∇ log p_i(x)`` from the same ``x_T``, beside sgm's samplers on that chain; the
deterministic ones get a map error against the chain's exact flow map (``chain_flow_map``).

Writes ``results.csv``, ``results.json`` (rows, floors, seeds, versions) and figures to ``out_dir``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import __version__, metrics
from .plotting import nfe_curves, scatter_panels
from .samplers import SamplerDiverged, ode, sample
from .samplers.grid import time_grid
from .score import ScoreModel
from .sde import SDE, VESDE, VPSDE
from .targets import GaussianMixture, random_mixture, ring_mixture

__all__ = ["NFE_GRID", "QUICK_NFE", "TOLERANCES", "RUNS", "steps_for_nfe", "run_sweep", "main"]

NFE_GRID = (5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_NFE = (5, 10, 20, 50, 100)
TOLERANCES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
QUICK_TOLERANCES = (1e-2, 1e-4)


@dataclass(frozen=True)
class Run:
    """A sampler with fixed options; ``per_step`` evaluations per step and ``extra`` more in all."""

    label: str
    sampler: str
    options: dict = field(default_factory=dict)
    per_step: int = 1
    extra: int = 0
    deterministic: bool = False


# NFE(steps): one-evaluation samplers spend `steps`; a Runge–Kutta method of s stages s·(steps-1) + 1;
# pc 2·(steps-1) + 1; Langevin with 5 steps per level 5·steps + 1 (each adds the final Tweedie evaluation).
RUNS = (
    Run("euler_maruyama", "euler_maruyama"),
    Run("reverse_diffusion", "reverse_diffusion"),
    Run("ancestral", "ancestral"),
    Run("sde (torchsde euler)", "sde"),
    Run("ddim", "ddim", deterministic=True),
    Run("ode euler", "ode", {"method": "euler"}, deterministic=True),
    Run("ode heun2", "ode", {"method": "heun2"}, 2, -1, deterministic=True),
    Run("ode rk4", "ode", {"method": "rk4"}, 4, -3, deterministic=True),
    Run("pc (reverse diffusion + langevin)", "pc", {}, 2, -1),
    Run("langevin (annealed, 5/level)", "langevin", {"n_steps_each": 5, "spacing": "geometric"}, 5, 1),
)


def steps_for_nfe(run: Run, nfe: int) -> int | None:
    """The steps that spend ``nfe`` evaluations (rounded down), or None when the budget is below two steps."""
    steps = (nfe - run.extra) // run.per_step
    return steps if steps >= (1 if run.per_step > 1 and run.extra > 0 else 2) else None


def _budgeted(nfes):
    """``(run, nfe, steps)`` for every sampler run and every budget it can spend."""
    for run in RUNS:
        for nfe in nfes:
            steps = steps_for_nfe(run, nfe)
            if steps is not None:
                yield run, nfe, steps


PAIRWISE_N = 1000  # MMD² and the energy distance cost O(n²): they use the first PAIRWISE_N samples of each set


def _metrics(x: Tensor, reference: Tensor, target: GaussianMixture, generator: torch.Generator) -> dict:
    x = x.reshape(x.shape[0], -1)
    x_pairs, reference_pairs = x[:PAIRWISE_N], reference[:PAIRWISE_N]
    return {"sw2": metrics.sliced_wasserstein(x, reference, 256, generator),
            "mmd2": metrics.mmd(x_pairs, reference_pairs),
            "energy": metrics.energy_distance(x_pairs, reference_pairs),
            "frechet": metrics.frechet_distance(x, reference),
            "nll": metrics.nll(x, target),
            "mode_error": metrics.mode_weight_error(x, target)}


METRICS = ("sw2", "mmd2", "energy", "frechet", "nll", "mode_error", "map_error")


def _judge(x: Tensor | None, reference: Tensor, target: GaussianMixture, seed: int,
           x_ref: Tensor | None = None) -> dict:
    """A run's metrics (the map error only with the reference map ``x_ref``). A run that diverged (``x`` None:
    the score went non-finite; or a NaN/inf among the samples) gets NaN for every metric and ``diverged``."""
    if x is None or not bool(torch.isfinite(x).all()):
        return {**dict.fromkeys(METRICS, float("nan")), "diverged": True}
    row = _metrics(x, reference, target, torch.Generator().manual_seed(seed + 3))
    row["map_error"] = float((x - x_ref).norm(dim=1).mean()) if x_ref is not None else float("nan")
    return {**row, "diverged": False}


def _floors(target: GaussianMixture, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    a, b = target.sample(n, generator=g), target.sample(n, generator=g)
    return _metrics(a, b, target, g)


def _targets(quick: bool) -> dict:
    return {"2d ring": ring_mixture(), "16d mixture": random_mixture(16, seed=0)} if not quick else \
        {"2d ring": ring_mixture()}


def run_sweep(out_dir: str, quick: bool = False, n: int | None = None, seed: int = 0,
              checkpoint: str | None = None, peers: bool = True, progress: bool = True) -> list[dict]:
    """Run the whole sweep, write its files to ``out_dir`` and return the rows."""
    os.makedirs(out_dir, exist_ok=True)
    n = n or (1000 if quick else 4000)
    nfes, tolerances = (QUICK_NFE, QUICK_TOLERANCES) if quick else (NFE_GRID, TOLERANCES)
    rows, floors, flow_maps, t_start = [], {}, {}, time.perf_counter()
    for target_name, target in _targets(quick).items():
        for sde_name, sde in (("vp", VPSDE()), ("ve", VESDE())):
            key = f"{target_name} / {sde_name}"
            floors[key] = _floors(target, n, seed + 1)
            reference = target.sample(n, generator=torch.Generator().manual_seed(seed + 2))
            score = target.score_fn(sde)
            x_T = sde.prior_sample((n, target.dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
            x_ref = ode(score, sde, x_T, time_grid(sde, 2), rtol=1e-9, atol=1e-9).x
            flow_maps[key] = _metrics(x_ref, reference, target, torch.Generator().manual_seed(seed + 3))
            scatter = []
            for run, nfe, steps in _budgeted(nfes):
                x, row = _one_run(score, sde, x_T, run.sampler, steps, dict(run.options), seed, progress)
                row.update(target=target_name, sde=sde_name, sampler=run.label, nfe_budget=nfe, steps=steps)
                row.update(_judge(x, reference, target, seed, x_ref if run.deterministic else None))
                if target.dim == 2 and nfe in (10, 50, 200) and not row["diverged"]:
                    scatter.append((f"{run.label}\nNFE {row['nfe']}", x))
                rows.append(row)
            for tol in tolerances:
                x, row = _one_run(score, sde, x_T, "ode", 2, {"method": "dopri5", "rtol": tol, "atol": tol}, seed,
                                  progress)
                row.update(target=target_name, sde=sde_name, sampler="ode dopri5 (adaptive)", nfe_budget=None,
                           steps=None, tolerance=tol)
                row.update(_judge(x, reference, target, seed, x_ref))
                rows.append(row)
            if scatter:
                scatter_panels(scatter, os.path.join(out_dir, f"scatter_{_slug(key)}.png"), target.log_prob, limits=6.0,
                               columns=6)
            if peers and sde_name == "vp":
                rows.extend(peer_rows(target, target_name, n, nfes, reference, seed, progress))
            print(f"{key}: {sum(r['target'] == target_name and r['sde'].startswith(sde_name) for r in rows)} runs, "
                  f"{time.perf_counter() - t_start:.0f}s so far", flush=True)
    if checkpoint:
        rows.extend(checkpoint_rows(checkpoint, nfes, seed, progress))
    meta = {"seed": seed, "n": n, "quick": quick, "nfe_grid": list(nfes), "tolerances": list(tolerances),
            "floors": floors, "flow_map": flow_maps, "seconds": time.perf_counter() - t_start, "versions": _versions()}
    _write(out_dir, rows, meta)
    return rows


def _one_run(score, sde: SDE, x_T: Tensor, sampler: str, steps: int, options: dict, seed: int,
             progress: bool) -> tuple[Tensor | None, dict]:
    """The samples of one timed run from ``x_T`` (None if it diverged), and its row's NFE and seconds."""
    g = torch.Generator().manual_seed(seed + 10)
    t0 = time.perf_counter()
    try:
        out = sample(score, sde, tuple(x_T.shape), sampler=sampler, steps=steps, generator=g, x_init=x_T,
                     progress=progress, **options)
    except SamplerDiverged:
        return None, {"nfe": None, "seconds": time.perf_counter() - t0}
    return out.x, {"nfe": out.nfe, "seconds": time.perf_counter() - t0}


# --- diffusers on the DDPM chain --------------------------------------------------------------------
# Every scheduler takes trailing timesteps (999, … down to 0), as sgm's chain samplers here do; diffusers' default
# "linspace" spacing repeats a timestep at 1000 steps, which gives the multistep solvers a zero step and NaN.
PEER_SCHEDULERS = {
# Values: (class name, options, deterministic).
    "diffusers DDPM": ("DDPMScheduler", {"clip_sample": False}, False),
    "diffusers DDIM": ("DDIMScheduler", {"clip_sample": False}, True),
    "diffusers Euler": ("EulerDiscreteScheduler", {}, True),
    "diffusers Heun": ("HeunDiscreteScheduler", {}, True),
    "diffusers DPM-Solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, True),
    "diffusers UniPC": ("UniPCMultistepScheduler", {}, True),
}


def chain_eps_model(target: GaussianMixture, chain) -> callable:
    """The exact noise predictor of the DDPM chain: ``ε(x, i) = -std_i ∇ log p_i(x)`` at integer timestep ``i``;
    at a fractional ``i`` (Heun's midpoints) the chain's ``σ_i = std_i/scale_i`` is interpolated linearly, as
    diffusers does."""
    sigmas = (chain.std / chain.scale).numpy()

    def eps(x: Tensor, i) -> Tensor:
        sigma = float(np.interp(float(i), np.arange(len(sigmas)), sigmas))
        scale = 1 / math.sqrt(1 + sigma**2)
        return -(sigma * scale) * target.perturbed_score(x, scale, sigma * scale)

    return eps


def chain_flow_map(target: GaussianMixture, chain, x_T: Tensor) -> Tensor:
    """The map the deterministic schedulers approximate on ``chain``: ``x̄ = x/scale`` follows the probability
    flow ``dx̄/dσ = ε(x̄, σ) = -σ ∇ log p_σ(x̄)`` (Karras et al., 2022) from ``σ_{N-1}`` (``x̄ = x_T/scale_{N-1}``)
    down to ``σ = 0``. Solved as sgm's VE flow by dopri5 at rtol = atol = 1e-9 down to ``σ = 1e-4`` (Tweedie's last
    step then leaves an error of order ``σ²``)."""
    ve = VESDE(sigma_min=1e-4, sigma_max=float(chain.sigmas[-1]))
    return ode(target.score_fn(ve), ve, x_T / chain.scale[-1], time_grid(ve, 2, eps=1e-9), rtol=1e-9, atol=1e-9).x


def peer_rows(target, target_name, n, nfes, reference, seed, progress) -> list[dict]:
    """diffusers' schedulers and sgm's chain samplers on ``VPSDE().discretize(1000)``, same ``x_T``; [] without diffusers."""
    try:
        import diffusers
    except ImportError:
        return []
    sde, chain = VPSDE(), VPSDE().discretize(1000)
    eps = chain_eps_model(target, chain)
    x_T = torch.randn((n, target.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_ref = chain_flow_map(target, chain, x_T)
    rows = []
    for label, (cls_name, kwargs, deterministic) in PEER_SCHEDULERS.items():
        cls = getattr(diffusers, cls_name)
        for nfe in nfes:
            scheduler = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                            prediction_type="epsilon", timestep_spacing="trailing", **kwargs)
            steps = (nfe + 1) // 2 if cls_name == "HeunDiscreteScheduler" else nfe
            if steps > 1000 or (cls_name == "HeunDiscreteScheduler" and steps < 2):
                continue
            scheduler.set_timesteps(steps)
            g = torch.Generator().manual_seed(seed + 10)
            t0, calls = time.perf_counter(), 0
            x = x_T * float(scheduler.init_noise_sigma)
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(x, t)
                e = eps(model_in, t)
                calls += 1
                step_kwargs = {"generator": g} if cls_name in ("DDPMScheduler",) else {}
                x = scheduler.step(e.to(x.dtype), t, x, **step_kwargs).prev_sample
            rows.append(_peer_row(x, target, target_name, label, nfe, calls, time.perf_counter() - t0, reference, seed,
                                  x_ref if deterministic else None))
    score = ScoreModel(lambda x, i: eps(x, int(i[0])), sde, "eps", chain=chain)
    for label, sampler in (("sgm ddim (chain, trailing)", "ddim"), ("sgm ancestral (chain, trailing)", "ancestral")):
        for nfe in nfes:
            if nfe > 1000:
                continue
            t0 = time.perf_counter()
            out = sample(score, sde, (n, target.dim), sampler=sampler, steps=nfe, spacing="trailing", x_init=x_T,
                         generator=torch.Generator().manual_seed(seed + 10), progress=progress)
            rows.append(_peer_row(out.x, target, target_name, label, nfe, out.nfe, time.perf_counter() - t0,
                                  reference, seed, x_ref if sampler == "ddim" else None))
    return rows


def _peer_row(x, target, target_name, label, nfe, calls, seconds, reference, seed, x_ref) -> dict:
    row = {"target": target_name, "sde": "vp (DDPM chain)", "sampler": label, "nfe_budget": nfe, "steps": None,
           "nfe": calls, "seconds": seconds}
    return {**row, **_judge(x, reference, target, seed, x_ref)}


# --- a trained digits model ------------------------------------------------------------------------
def checkpoint_rows(path: str, nfes, seed: int, progress: bool, n: int = 1000) -> list[dict]:
    """Sweep a trained model from ``path``: Fréchet distance in a digits classifier's features and the fraction
    of samples it labels with probability > 0.9."""
    from .data import load_digits
    from .nets import train_digits_classifier
    from .train import model_from_checkpoint

    model, config, shape = model_from_checkpoint(path)
    images, labels = load_digits()
    classifier = train_digits_classifier(images, labels, seed=seed)
    rows = []
    for run, nfe, steps in _budgeted(nfes):
        g = torch.Generator().manual_seed(seed + 10)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = sample(model, model.sde, (n,) + shape, sampler=run.sampler, steps=steps, generator=g,
                         dtype=torch.float32, progress=progress, **run.options)
            x = out.x.clamp(-1, 1)
            confident = float((classifier(x).softmax(1).max(1).values > 0.9).float().mean())
        rows.append({"target": f"digits model ({path})", "sde": config.sde, "sampler": run.label, "nfe_budget": nfe,
                     "steps": steps, "nfe": out.nfe, "seconds": time.perf_counter() - t0,
                     "frechet_classifier": metrics.frechet_distance(x, images, features=classifier.features),
                     "confident": confident})
        print(f"digits model, {run.label} at NFE {out.nfe}: Fréchet {rows[-1]['frechet_classifier']:.1f}, "
              f"confident {confident:.3f} ({rows[-1]['seconds']:.0f}s)", flush=True)  # a network sweep takes minutes
    return rows


# --- output -----------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    """``"2d ring / vp"`` -> ``"2d_ring_vp"``: runs of other characters become one underscore."""
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())


def _versions() -> dict:
    import torchdiffeq
    import torchsde

    versions = {"sgm": __version__, "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
                "torchsde": torchsde.__version__, "numpy": np.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "threads": torch.get_num_threads()}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def _write(out_dir: str, rows: list[dict], meta: dict) -> None:
    keys = ["target", "sde", "sampler", "nfe_budget", "steps", "tolerance", "nfe", "seconds", "sw2", "mmd2", "energy",
            "frechet", "nll", "mode_error", "map_error", "diverged", "frechet_classifier", "confident"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=float)
    groups = sorted({(r["target"], r["sde"].split(" ")[0]) for r in rows if "sw2" in r})
    for target_name, sde_name in groups:
        group = [r for r in rows if r["target"] == target_name and r["sde"].split(" ")[0] == sde_name and "sw2" in r]
        floor = meta["floors"].get(f"{target_name} / {sde_name}", {})
        flow_map = meta["flow_map"].get(f"{target_name} / {sde_name}", {})
        for metric in ("sw2", "frechet", "map_error"):
            nfe_curves(group, metric, os.path.join(out_dir, f"{metric}_{_slug(target_name)}_{sde_name}.png"),
                       title=f"{target_name}, {sde_name.upper()}: {metric} against NFE", floor=floor.get(metric),
                       limit=flow_map.get(metric))
    digits = [r for r in rows if "frechet_classifier" in r]
    if digits:
        nfe_curves(digits, "frechet_classifier", os.path.join(out_dir, "digits_frechet.png"),
                   title="digits model: Fréchet (classifier features)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="sgm bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="benchmarks/results", help="folder for results.csv/.json and figures")
    parser.add_argument("--quick", action="store_true", help="2-D only, NFE up to 100, 1000 samples (under 2 min)")
    parser.add_argument("--n", type=int, default=None, help="samples per run (default 4000; 1000 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="a trained digits checkpoint to sweep as well (a network on a CPU: "
                        "use with --quick, which took 9.4 min for the 8×8 U-Net on 2 cores)")
    parser.add_argument("--no-peers", action="store_true", help="skip diffusers even if it is installed")
    parser.add_argument("--progress", action="store_true", help="progress bars for each run")


def check_checkpoint(path: str) -> None:
    """Before any sweep: ``path`` must be a readable sgm checkpoint of an 8×8 one-channel image model (the
    digits classifier judges its samples); otherwise a ``ValueError`` (``CheckpointError``) naming the file."""
    from .train import model_from_checkpoint

    _, config, shape = model_from_checkpoint(path)
    if tuple(shape) != (1, 8, 8):
        raise ValueError(f"--checkpoint {path}: a model of {config.data!r} samples of shape {tuple(shape)}; the "
                         f"checkpoint sweep judges digits models (1, 8, 8) with a digits classifier")


def run_from_args(args) -> int:
    if args.checkpoint:
        check_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    rows = run_sweep(args.out, quick=args.quick, n=args.n, seed=args.seed, checkpoint=args.checkpoint,
                     peers=not args.no_peers, progress=args.progress)
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f}s; wrote {args.out}/results.csv, results.json and figures")
    print(summary_table(rows, (10, 20)))
    return 0


def summary_table(rows: list[dict], budgets, metrics_shown=("sw2", "map_error")) -> str:
    """A markdown table of the given metrics at the given NFE budgets, one line per target, SDE and sampler
    (— where a sampler cannot spend that budget or has no such metric, e.g. a stochastic sampler's map error)."""
    head = [f"{m} @ {b}" for m in metrics_shown for b in budgets]
    lines = ["| target | SDE | sampler | " + " | ".join(head) + " |", "|---|---|---|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["target"], r["sde"], r["sampler"]) for r in rows if r.get("nfe_budget")))
    for key in keys:
        values = []
        for m in metrics_shown:
            for b in budgets:
                hit = [r.get(m) for r in rows if (r["target"], r["sde"], r["sampler"]) == key and r.get("nfe_budget") == b]
                values.append(f"{hit[0]:.3g}" if hit and hit[0] is not None and math.isfinite(hit[0]) else "—")
        lines.append("| " + " | ".join(key) + " | " + " | ".join(values) + " |")
    return "\n".join(lines)
