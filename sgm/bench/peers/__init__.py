"""The peers: other libraries' samplers on the same problems, from the same draw ``z``, driven by the exact model.

Each peer library is one module here, named in ``PEERS``, with ``available()`` (whether the library is
installed) and the legs it runs: ``rows(problem, nfes)`` (the comparison rows, ``side`` the library's name: the map
error of every deterministic configuration a user could pick at each budget), ``stochastic_rows(problem, nfes,
judge, seed)`` (every stochastic configuration at each budget, scored by ``judge(x)``, noise seeded ``seed``) and,
with ``rows``, ``rerun(row, problem)`` (the configuration and budget of one of its rows on another problem: the
same configuration on another batch of draws), with ``stochastic_rows``, ``stochastic_rerun(row, problem, judge,
seed)`` (the same for a stochastic row). A new library is a new module and its entry in ``PEERS``.
"""
from __future__ import annotations

from importlib import import_module

__all__ = ["PEERS", "installed", "peer_rows", "stochastic_peer_rows", "rerun", "stochastic_rerun"]

PEERS = ("diffusers", "diffusers_flow", "k_diffusion")


def installed(names=PEERS) -> list:
    """The modules of ``names`` (of ``PEERS``) whose library is installed."""
    unknown = set(names) - set(PEERS)
    if unknown:
        raise ValueError(f"peers must be among {PEERS}, got {sorted(unknown)}")
    modules = [import_module(f"{__name__}.{name}") for name in names]
    return [m for m in modules if m.available()]


def peer_rows(problem, nfes, names=PEERS) -> list[dict]:
    """The comparison rows on ``problem`` at the budgets ``nfes`` of every installed peer of ``names``."""
    return [row for module in installed(names) if hasattr(module, "rows") for row in module.rows(problem, nfes)]


def stochastic_peer_rows(problem, nfes, judge, seed: int, names=PEERS) -> list[dict]:
    """The stochastic rows on ``problem`` at the budgets ``nfes`` of every installed peer of ``names``, scored by
    ``judge``."""
    return [row for module in installed(names) if hasattr(module, "stochastic_rows")
            for row in module.stochastic_rows(problem, nfes, judge, seed)]


def rerun(row: dict, problem) -> dict | None:
    """The comparison row ``row`` of a peer run again on ``problem`` (``row["side"]`` names its module: the
    comparison's peer rows are ``diffusers``')."""
    return import_module(f"{__name__}.{row['side']}").rerun(row, problem)


def stochastic_rerun(row: dict, problem, judge, seed: int) -> dict | None:
    """The stochastic row ``row`` of a peer run again on ``problem``, scored by ``judge``, noise seeded ``seed``
    (``row["side"]`` names its library: ``"k-diffusion"`` is the module ``k_diffusion``)."""
    return import_module(f"{__name__}.{row['side'].replace('-', '_')}").stochastic_rerun(row, problem, judge, seed)
