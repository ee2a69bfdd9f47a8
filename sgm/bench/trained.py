"""The trained-network leg: sgm's deterministic samplers against diffusers' schedulers, all driven by one trained
digits U-Net from the same ``x_T`` (``python benchmarks/trained_digits.py --checkpoint PATH``).

**The problem** (``trained_problems``): the model on its path (``t ∈ [eps, T]``; VP for sgm's digits runs) and
two disjoint batches of draws ``z ~ N(0, I)``: the evaluation batch (``n`` from ``seed``) and the screening batch
(``n_screen`` from ``seed + 1``), ``x_T = prior_std·z``. For both, the reference is the network's own
probability-flow map ``x_ref = Φ(x_T)``: dopri5 at ``rtol = atol = tol`` from ``T`` to ``eps``, then Tweedie's step
(``samplers.optimize.flow_map``), cached under ``cache_dir`` by the checkpoint's digest, the draws and ``tol``. Its
own error is measured on the first ``REFERENCE_CHECK`` evaluation draws against a run at ``tol/10``.

**The peers' chain** is the path itself at ``t_i = T(i+1)/N``, ``N = 1000`` (``path_chain``): diffusers gets
``trained_betas`` from its ``ᾱ_i = α(t_i)²``, so its top noise level is ``σ(T)``, sgm's start, and at each call
the network is evaluated at the time ``t(σ)`` of the noise level the scheduler integrates with (``eps_at``).

**The protocol** (``run_leg``): every configuration runs on the screening batch, scored by map error — sgm's
``SAMPLERS`` over their options on every spacing (their default grid among them), every configuration of
diffusers (``peers.diffusers.configs``). At each budget the ``k`` best distinct configurations of each side
(and sgm's best on its default grid) run again on the evaluation batch, scored by the map error and by
``judge.classifier_scores``: the Fréchet distance in the digits classifier's features against the 1797 real
digits. Choosing the finalists on draws disjoint from the evaluation batch keeps the table free of selection bias;
a method calibrated on prior draws (an optimised grid, a learned correction: ``run_leg(calibrated=...)``,
``calibrated.leg_family``) calibrates on the screening batch itself (``screening_draws``) and adds its rows to the
finals. Eight screening draws are enough for that (``benchmarks/trained_screen_draws.py``, ipndm at 10 NFE,
held-out map error on 64 draws: uncorrected 0.150; the descent's grid 0.104 from 8 draws, 0.110 from 32; PAS 0.144
from 8, 0.133 from 32, at 2–4× the cost), so ``n_screen`` stays 8.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from .. import samplers
from ..checks import integer, real
from ..paths import DiscreteChain, GaussianPath
from ..predictions import predict
from ..samplers.grid import path_family
from ..samplers.optimize import flow_map, map_error
from . import peers, report
from .calibrated import CORRECTIONS, OPTIMIZERS, TRAINED_CORRECTIONS, Draws, check_methods, leg_family
from .judge import classifier_scores, judge_map
from .problems import TRAIN_STEPS, Variant
from .runs import CHAIN_SPACINGS, sgm_configs, sgm_row, sgm_rows

__all__ = ["SAMPLERS", "REFERENCE_CHECK", "TrainedProblem", "path_chain", "trained_problems", "checkpoint_problems",
           "leg_configs", "screening_draws", "finalists", "run_leg", "leg_table", "table_markdown", "COLUMNS", "main"]

# sgm's samplers in the leg and the option values kept (the others: every value of the entry's sweep axes)
SAMPLERS = {"ddim": {}, "dpm_solver": {"order": (2, 3)}, "unipc": {"order": (2, 3)}, "deis": {"order": (2, 3)},
            "ipndm": {"max_order": (4,)}, "heun": {}, "ode": {"method": ("rk4",)}}
REFERENCE_CHECK = 4


@dataclass(frozen=True, eq=False)
class TrainedProblem:
    """A model on its path with one batch of draws: the runs' and the peers' problem (``problems`` module
    docstring). ``classifier`` and ``images`` (optional): rows are also scored by ``judge.classifier_scores``."""

    target_name: str
    sde_name: str
    model: Callable
    sde: GaussianPath
    chain: DiscreteChain
    z: Tensor
    x_T: Tensor
    x_ref: Tensor
    classifier: Callable | None = None
    images: Tensor | None = None

    @property
    def variants(self) -> tuple:
        """The one path sgm's side runs on: the model's own, for every spacing."""
        return (Variant("", self.sde, self.sde),)

    def model_for(self, variant: Variant, on_chain: bool):
        """The network runs at any time: the model on its path for every spacing."""
        return self.model, self.sde

    def eps_at(self, x: Tensor, sigma: float) -> Tensor:
        """The model's ε at the time ``t(σ)`` of noise level ``sigma`` on its path."""
        t = self.sde.time_at_noise_level(torch.tensor([sigma], dtype=torch.float64))
        return predict(self.model, self.sde, x, torch.full((x.shape[0],), float(t), dtype=x.dtype)).eps

    def judge(self, x: Tensor, nfe: int, t0: float) -> dict:
        """The map error against ``x_ref`` (``judge.judge_map``) and, with a classifier, its scores."""
        row = judge_map(x, self.x_ref, nfe, t0)
        if self.classifier is not None and not row["diverged"]:
            row.update(classifier_scores(x, self.classifier, self.images))
        return row


def path_chain(sde: GaussianPath, n: int = TRAIN_STEPS) -> DiscreteChain:
    """The path's own marginals at ``t_i = T(i+1)/n``, ``i = 0 … n-1`` (top: ``σ(T)``)."""
    t = sde.T * torch.arange(1, n + 1, dtype=torch.float64) / n
    return DiscreteChain(t, *sde.marginal(t))


def _check_draws(n, n_screen, seed, tol) -> tuple:
    return (integer("n", n), integer("n_screen", n_screen), integer("seed", seed, low=0),
            real("tol", tol, 0.0, 1e-2, open_low=True))


def _draws(shape: tuple, n: int, seed: int, dtype) -> Tensor:
    return torch.randn((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def trained_problems(model, sde: GaussianPath, shape: tuple, n: int, n_screen: int, seed: int = 0, tol: float = 1e-5,
                     cache: str | None = None, name: str = "trained model", dtype=torch.float32, classifier=None,
                     images: Tensor | None = None) -> tuple[TrainedProblem, TrainedProblem, dict]:
    """The evaluation and screening problems of ``model`` on ``sde`` (module docstring) and the reference's
    ``info`` (its NFE, seconds, measured error, whether it came from ``cache``, a file path). ``classifier`` and
    ``images`` judge the evaluation rows."""
    n, n_screen, seed, tol = _check_draws(n, n_screen, seed, tol)
    z, z_screen = _draws(shape, n, seed, dtype), _draws(shape, n_screen, seed + 1, dtype)
    x_T, x_T_screen = sde.prior_std * z, sde.prior_std * z_screen
    if cache is not None and os.path.exists(cache):
        saved = torch.load(cache)
        x_ref, x_ref_screen, info = saved["x_ref"], saved["x_ref_screen"], {**saved["info"], "cached": True}
    else:
        t0 = time.perf_counter()
        with torch.no_grad():
            both, nfe = flow_map(model, sde, torch.cat([x_T, x_T_screen]), tol=tol)
            finer, finer_nfe = flow_map(model, sde, x_T[:REFERENCE_CHECK], tol=tol / 10)
        x_ref, x_ref_screen = both[:n], both[n:]
        info = {"tol": tol, "nfe": nfe, "seconds": time.perf_counter() - t0, "check_tol": tol / 10,
                "check_nfe": finer_nfe, "check_n": min(n, REFERENCE_CHECK),
                "error": map_error(x_ref[:REFERENCE_CHECK], finer), "cached": False}
        if cache is not None:
            os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
            torch.save({"x_ref": x_ref, "x_ref_screen": x_ref_screen, "info": info}, cache)
    chain = path_chain(sde)
    evaluation = TrainedProblem(name, path_family(sde), model, sde, chain, z, x_T, x_ref, classifier, images)
    screen = replace(evaluation, z=z_screen, x_T=x_T_screen, x_ref=x_ref_screen, classifier=None, images=None)
    return evaluation, screen, info


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _classifier(seed: int, cache_dir: str):
    """The digits classifier of ``seed`` (``nets.train_digits_classifier``, about 40 s on a core), cached."""
    from ..nets import DigitsClassifier, train_digits_classifier
    from ..data import load_digits

    images, labels = load_digits()
    path = os.path.join(cache_dir, f"digits_classifier_{seed}.pt")
    if os.path.exists(path):
        classifier = DigitsClassifier()
        classifier.load_state_dict(torch.load(path))
        return classifier.eval(), images
    classifier = train_digits_classifier(images, labels, seed=seed)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(classifier.state_dict(), path)
    return classifier, images


def checkpoint_problems(path: str, n: int, n_screen: int, seed: int = 0, tol: float = 1e-5,
                        cache_dir: str = "runs/bench_trained"):
    """``trained_problems`` of a digits checkpoint (EMA weights, loaded as ``sgm sample`` does), judged by the
    digits classifier; the reference cached in ``cache_dir`` under the checkpoint's digest."""
    from ..checkpoint import model_from_checkpoint
    from .sweep import check_checkpoint

    _check_draws(n, n_screen, seed, tol)
    check_checkpoint(path)
    model, _, shape = model_from_checkpoint(path)
    classifier, images = _classifier(seed, cache_dir)
    cache = os.path.join(cache_dir, f"reference_{_digest(path)}_n{n}_screen{n_screen}_seed{seed}_tol{tol:g}.pt")
    return trained_problems(model, model.sde, shape, n, n_screen, seed, tol, cache, f"digits U-Net ({path})",
                            classifier=classifier, images=images)


def screening_draws(n_screen: int, seed: int = 0, tol: float = 1e-5, dtype=torch.float32) -> Draws:
    """The screening batch of ``trained_problems(..., n_screen, seed, tol)`` as calibration draws: the calibrated
    families fit on exactly the draws that chose the finalists, disjoint from the evaluation batch."""
    return Draws(n_screen, seed + 1, dtype, tol)


def leg_configs() -> list[tuple[str, dict]]:
    """sgm's configurations in the leg: ``runs.sgm_configs()`` of the ``SAMPLERS`` with the option values kept."""
    return [(name, options) for name, options in sgm_configs() if name in SAMPLERS
            and all(options.get(key) in values for key, values in SAMPLERS[name].items())]


def _default_grid(row: dict, sde: GaussianPath) -> bool:
    """sgm's uncalibrated run on its sampler's default spacing (a correction on that spacing is not)."""
    return (row["side"] == "sgm" and not row.get("family")
            and row.get("spacing") == samplers.entry(row["name"]).default_spacing(sde))


def finalists(rows: list[dict], k: int, sde: GaussianPath) -> list[dict]:
    """At each side's each budget the ``k`` distinct finite rows of least map error (a diffusers row that repeats
    another's schedule, ``same_as``, is not distinct), and sgm's best on its default grid."""
    chosen = []
    for side, nfe in dict.fromkeys((r["side"], r["nfe_budget"]) for r in rows):
        hits = sorted((r for r in rows if (r["side"], r["nfe_budget"]) == (side, nfe) and not r["diverged"]
                       and "same_as" not in r), key=lambda r: r["map_error"])
        picked = hits[:k]
        default = [r for r in hits if _default_grid(r, sde)][:1]
        chosen += picked + [r for r in default if r not in picked]
    return chosen


def _rerun(row: dict, problem: TrainedProblem) -> dict | None:
    """The configuration and budget of the screening row ``row`` on ``problem``."""
    if row["side"] != "sgm":
        return peers.rerun(row, problem)
    model, path = problem.model_for(problem.variants[0], row["spacing"] in CHAIN_SPACINGS)
    return sgm_row(problem, model, path, row["name"], row["options"], row["nfe_budget"], row["steps"], row["sampler"],
                   {"spacing": row["spacing"], "train_steps": TRAIN_STEPS})


def run_leg(evaluation: TrainedProblem, screen: TrainedProblem, nfes=report.GOAL_NFE, k: int = 3,
            use_peers: bool = True, configs=None, calibrated=(), log=print) -> tuple[list[dict], list[dict]]:
    """The protocol of the module docstring: the screening rows of every configuration (sgm's ``configs``,
    default ``leg_configs()``; diffusers' with ``use_peers``) on ``screen`` and the finalists' rows on
    ``evaluation`` (``default_grid`` marks sgm's rows on the sampler's default spacing). Each function of
    ``calibrated`` (a step optimiser's or a learned correction's family) is called as ``f(evaluation, screen,
    finalists)`` with the screening rows of the finalists: it calibrates on ``screen``'s draws and returns its rows
    on ``evaluation`` (``problem.judge``'s scores), which join the finals."""
    k = integer("k", k)
    if not all(callable(f) for f in calibrated):
        raise TypeError(f"calibrated must hold callables f(evaluation, screen, finalists), got {calibrated!r}")
    t0 = time.perf_counter()
    with torch.no_grad():
        screened = sgm_rows(screen, nfes, leg_configs() if configs is None else configs)
        log(f"screened sgm: {len(screened)} runs ({time.perf_counter() - t0:.0f}s)")
        if use_peers:
            screened += peers.peer_rows(screen, nfes)
            log(f"screened the peers: {len(screened)} runs in all ({time.perf_counter() - t0:.0f}s)")
        final, chosen = [], finalists(screened, k, evaluation.sde)
        for row in chosen:
            again = _rerun(row, evaluation)
            if again is not None:
                final.append({**again, "screen_map_error": row["map_error"]})
                log(f"  {again['sampler']} at NFE {again['nfe']}: map error {again['map_error']:.4g}, Fréchet "
                    f"{again.get('frechet_classifier', float('nan')):.3g} ({time.perf_counter() - t0:.0f}s)")
        for family in calibrated:
            final += family(evaluation, screen, chosen)
    for row in screened + final:
        row["default_grid"] = _default_grid(row, evaluation.sde)
    return screened, final


def _best(rows: list[dict], side: str, nfe: int, key: str, default_only: bool = False) -> dict | None:
    hits = [r for r in rows if (r["side"], r["nfe_budget"]) == (side, nfe) and not r["diverged"]
            and r["nfe"] <= nfe and (r["default_grid"] or not default_only)]
    return min(hits, key=lambda r: r[key]) if hits else None


def leg_table(final: list[dict], nfes=report.GOAL_NFE) -> list[dict]:
    """Per budget: the best finalist of each side by map error (its Fréchet distance beside it), sgm / diffusers
    of both, the best of each side by Fréchet distance and sgm's best on its default grid."""
    table = []
    for nfe in nfes:
        theirs, ours = _best(final, "diffusers", nfe, "map_error"), _best(final, "sgm", nfe, "map_error")
        entry = {"nfe": nfe, "diffusers": theirs, "sgm": ours,
                 "diffusers_fd": _best(final, "diffusers", nfe, "frechet_classifier"),
                 "sgm_fd": _best(final, "sgm", nfe, "frechet_classifier"),
                 "sgm_default": _best(final, "sgm", nfe, "map_error", default_only=True)}
        for metric in ("map_error", "frechet_classifier"):
            entry[f"ratio_{metric}"] = ours[metric] / theirs[metric] if ours and theirs else float("nan")
        table.append(entry)
    return table


def _cell(row: dict | None, *metrics) -> str:
    if row is None:
        return " | ".join(["—"] * (len(metrics) + 1))
    return " | ".join([row["sampler"].removeprefix("diffusers ")] + [f"{row[m]:.3g}" for m in metrics])


def table_markdown(table: list[dict]) -> str:
    """``leg_table`` as two markdown tables: by map error (the goal: sgm / diffusers ≤ ``report.GOAL_RATIO``) and
    by Fréchet distance."""
    lines = ["| NFE | best diffusers | map error | FD | best sgm | map error | FD | sgm / diffusers (map) | "
             "sgm / diffusers (FD) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['nfe']} | {_cell(e['diffusers'], 'map_error', 'frechet_classifier')} | "
                     f"{_cell(e['sgm'], 'map_error', 'frechet_classifier')} | {e['ratio_map_error']:.3g} | "
                     f"{e['ratio_frechet_classifier']:.3g} |")
    lines += ["", "| NFE | least-FD diffusers | FD | least-FD sgm | FD | sgm on its default grid | map error | FD |",
              "|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['nfe']} | {_cell(e['diffusers_fd'], 'frechet_classifier')} | "
                     f"{_cell(e['sgm_fd'], 'frechet_classifier')} | "
                     f"{_cell(e['sgm_default'], 'map_error', 'frechet_classifier')} |")
    return "\n".join(lines)


COLUMNS = ["side", "sampler", "family", "method", "calibration", "nfe_budget", "steps", "nfe", "map_error",
           "frechet_classifier", "confident", "screen_map_error", "default_grid", "diverged", "seconds", "same_as",
           "error"]


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/trained_digits.py``: the leg on a digits checkpoint; writes ``screen.csv``,
    ``final.csv``, ``table.md`` and ``results.json`` to ``--out`` and prints the tables."""
    import argparse

    parser = argparse.ArgumentParser(prog="trained_digits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a digits checkpoint of sgm's trainer (make one with "
                        "`python benchmarks/train_digits.py` or `sgm train --data digits --out-dir runs/digits`)")
    parser.add_argument("--out", default="benchmarks/results/trained_digits")
    parser.add_argument("--cache", default="runs/bench_trained", help="where the reference and classifier are kept")
    parser.add_argument("--n", type=int, default=500, help="evaluation draws")
    parser.add_argument("--n-screen", type=int, default=8, help="screening draws (disjoint from the evaluation's)")
    parser.add_argument("--finalists", type=int, default=3, help="configurations per side and budget re-run")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(report.GOAL_NFE))
    parser.add_argument("--tol", type=float, default=1e-5, help="dopri5's rtol = atol for the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), metavar="NAME",
                        help=f"step optimisers calibrated on the screening batch (default all: {' '.join(OPTIMIZERS)})")
    parser.add_argument("--corrections", nargs="*", default=list(TRAINED_CORRECTIONS), metavar="NAME",
                        help=f"learned corrections calibrated on the screening batch (default: "
                        f"{' '.join(TRAINED_CORRECTIONS)}; of "
                        f"{' '.join(CORRECTIONS)})")
    args = parser.parse_args(argv)
    for nfe in args.nfe:
        integer("--nfe", nfe)
    integer("--finalists", args.finalists)
    check_methods(args.optimizers, args.corrections)
    t0 = time.perf_counter()
    evaluation, screen, info = checkpoint_problems(args.checkpoint, args.n, args.n_screen, args.seed, args.tol,
                                                   args.cache)
    print(f"reference: {info}", flush=True)
    family = leg_family(screening_draws(args.n_screen, args.seed, args.tol), args.optimizers, args.corrections)
    screened, final = run_leg(evaluation, screen, tuple(args.nfe), args.finalists, not args.no_peers,
                              calibrated=[family] if args.optimizers or args.corrections else [],
                              log=lambda s: print(s, flush=True))
    table = leg_table(final, tuple(args.nfe))
    reference = classifier_scores(evaluation.x_ref, evaluation.classifier, evaluation.images)
    os.makedirs(args.out, exist_ok=True)
    report.write_csv(os.path.join(args.out, "screen.csv"), COLUMNS, screened)
    report.write_csv(os.path.join(args.out, "final.csv"), COLUMNS, final)
    text = table_markdown(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    meta = {"args": vars(args), "reference": info, "reference_scores": reference,
            "seconds": time.perf_counter() - t0, "versions": report.versions()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "screen": screened, "final": final}, f, indent=1, default=str)
    print(text)
    print(f"the reference map itself: FD {reference['frechet_classifier']:.3g}, confident "
          f"{reference['confident']:.3f}; {len(screened)} screening and {len(final)} final runs in "
          f"{time.perf_counter() - t0:.0f}s")
    return 0
