"""The stochastic leg: sgm's stochastic samplers and the peers' on an exact problem, screened on one batch of draws
and the finalists confirmed on a fresh, larger one.

1. **Screening** (``screen_rows``): every configuration of ``runs.stochastic_configs`` on every spacing and every
   stochastic configuration of the installed peers, at each budget, from the problem's ``x_T`` (``n`` draws), noise
   seeded ``seed + 10``, scored by ``judge.judge_stochastic`` against one target sample drawn from ``seed + 2``.
2. **Finalists** (``finalists``): per target, path, budget and side of the goal (sgm; the peers, all libraries
   together) the ``k`` finite rows within the budget of least ``report.STOCHASTIC_GOAL_METRIC`` (a diffusers row
   that repeats another's schedule, ``same_as``, is not distinct). With a ``shortlist`` of more than ``k``, the ``shortlist`` best are first
   run again on ``n_confirm`` fresh draws from ``seed + SHORTLIST_SEED`` and the ``k`` finalists are the best there:
   at the screening's ``n`` the errors of the good configurations lie within the floor of each other, so its ``k``
   best are partly its luckiest.
3. **Confirmation** (``confirm_rows``): each finalist run again on a fresh problem of ``n_confirm`` draws from
   ``seed + CONFIRM_SEED`` (its own ``x_T``, noise and target sample) and scored there, with its strong error
   (``strong.with_strong_errors``). The goal table is read from these rows alone: the least of ~270 sgm errors
   against the least of ~160 peer errors per cell, each scored on the draws that chose it, is a minimum of noisy values biased
   down by the number of candidates (on the 2-D ring at n = 2000 every side's best lay below the error of 2000 exact
   samples), while a finalist's error on fresh draws is an unbiased draw of its own. The floor beside it
   (``judge.stochastic_floors`` at ``n_confirm``) is the error of exact samples: the part of a value that is noise.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import GaussianMixture
from .judge import judge_stochastic, stochastic_floors
from .peers import stochastic_peer_rows, stochastic_rerun
from .problems import TRAIN_STEPS, make_problem
from .report import STOCHASTIC_GOAL_METRIC
from .runs import CHAIN_SPACINGS, sgm_row, sgm_rows, stochastic_configs
from .strong import with_strong_errors

__all__ = ["FINALISTS", "SHORTLIST", "CONFIRM_N", "CONFIRM_SEED", "SHORTLIST_SEED", "Leg", "screen_rows", "finalists", "confirm_rows", "choose_finalists",
           "run_leg"]

FINALISTS = 3  # configurations per target, path, budget and side confirmed on fresh draws
SHORTLIST = 10  # configurations per target, path, budget and side rescored on fresh draws to choose the finalists
CONFIRM_N = 20000  # draws of the confirmation problem
CONFIRM_SEED = 1000  # its seed is the leg's seed + CONFIRM_SEED
SHORTLIST_SEED = 500  # the shortlist's draws: the leg's seed + SHORTLIST_SEED


def _judge(problem, seed: int):
    reference = problem.target.sample(problem.z.shape[0], generator=torch.Generator().manual_seed(seed + 2))

    def judge(x):
        return judge_stochastic(x, reference, problem.target, seed)

    return judge


def screen_rows(problem, nfes, seed: int = 0, peers=()) -> list[dict]:
    """Step 1 of the module docstring on ``problem`` at the budgets ``nfes``; ``peers``: the peer modules' names."""
    judge = _judge(problem, seed)
    rows = sgm_rows(problem, nfes, stochastic_configs(), judge, seed)
    return rows + (stochastic_peer_rows(problem, nfes, judge, seed + 10, peers) if peers else [])


def _group(row: dict) -> str:
    return "sgm" if row["side"] == "sgm" else "peers"


def finalists(rows: list[dict], k: int = FINALISTS) -> list[dict]:
    """Step 2 of the module docstring: at each target, path and budget the ``k`` distinct finite rows of least
    ``STOCHASTIC_GOAL_METRIC`` that spent at most the budget of sgm's side and ``k`` of the peers' together (the
    goal's two sides: as many finalists each, so that neither confirmed minimum is taken over more draws)."""
    chosen = []
    for key in dict.fromkeys((r["target"], r["sde"], r["nfe_budget"], _group(r)) for r in rows):
        hits = [r for r in rows if (r["target"], r["sde"], r["nfe_budget"], _group(r)) == key and not r["diverged"]
                and "same_as" not in r and r["nfe"] is not None and r["nfe"] <= r["nfe_budget"]]
        chosen += sorted(hits, key=lambda r: r[STOCHASTIC_GOAL_METRIC])[:k]
    return chosen


def _rerun(row: dict, problem, judge, seed: int) -> dict | None:
    if row["side"] != "sgm":
        return stochastic_rerun(row, problem, judge, seed + 10)
    variant = next(v for v in problem.variants if v.label == row["variant"])
    kw = {"spacing": row["spacing"], "train_steps": TRAIN_STEPS, "generator": torch.Generator().manual_seed(seed + 10)}
    return sgm_row(problem, *problem.model_for(variant, row["spacing"] in CHAIN_SPACINGS), row["name"],
                   row["options"], row["nfe_budget"], row["steps"], row["sampler"], kw, row["variant"], judge)


def confirm_rows(chosen: list[dict], problem, seed: int, strong: bool = True) -> list[dict]:
    """Step 3 of the module docstring: each row of ``chosen`` run again on ``problem`` (drawn from ``seed``), its
    screening error kept as ``screen_{STOCHASTIC_GOAL_METRIC}``; with ``strong``, each row's strong error."""
    judge, out = _judge(problem, seed), []
    for row in chosen:
        again = _rerun(row, problem, judge, seed)
        if again is not None:
            out.append({**again, f"screen_{STOCHASTIC_GOAL_METRIC}": row[STOCHASTIC_GOAL_METRIC]})
    return with_strong_errors(problem, out, seed) if strong else out


class Leg(NamedTuple):
    """``run_leg``'s result: the ``screened`` rows, the ``confirmed`` rows and the confirmation's ``floors``."""

    screened: list[dict]
    confirmed: list[dict]
    floors: dict


def choose_finalists(screened: list[dict], target_name: str, target: GaussianMixture, sde_name: str, n: int,
                     seed: int, k: int = FINALISTS, shortlist: int = SHORTLIST) -> list[dict]:
    """Step 2 of the module docstring: the ``k`` finalists of the ``screened`` rows, through the ``shortlist``
    rescored on ``n`` draws from ``seed + SHORTLIST_SEED`` when ``shortlist > k``."""
    if shortlist <= k:
        return finalists(screened, k)
    fresh = seed + SHORTLIST_SEED
    problem = make_problem(target_name, target, sde_name, n, fresh, flow_map=False)
    return finalists(confirm_rows(finalists(screened, shortlist), problem, fresh, strong=False), k)


def run_leg(target_name: str, target: GaussianMixture, sde_name: str, nfes, n: int, n_confirm: int, seed: int = 0,
            peers=(), strong: bool = True, k: int = FINALISTS, shortlist: int = SHORTLIST) -> Leg:
    """The three steps of the module docstring for ``target`` on the path ``sde_name``: screening on ``n`` draws from
    ``seed``, ``k`` finalists per side and budget (through the ``shortlist``), their confirmation on ``n_confirm``
    draws from ``seed + CONFIRM_SEED``, and the floors of ``n_confirm`` exact samples (from that seed + 1)."""
    screened = screen_rows(make_problem(target_name, target, sde_name, n, seed, flow_map=False), nfes, seed, peers)
    chosen = choose_finalists(screened, target_name, target, sde_name, n_confirm, seed, k, shortlist)
    fresh = seed + CONFIRM_SEED
    problem = make_problem(target_name, target, sde_name, n_confirm, fresh, flow_map=False)
    return Leg(screened, confirm_rows(chosen, problem, fresh, strong), stochastic_floors(target, n_confirm, fresh + 1))
