"""The peers: other libraries' samplers on the same problems, from the same draw ``z``, driven by the exact model.

Each peer library is one module here, named in ``PEERS``, with ``available()`` (whether the library is
installed), ``rows(problem, nfes)`` (its comparison rows, ``side`` the library's name: the map error of every
configuration a user could pick at each budget) and ``rerun(row, problem)`` (the configuration and budget of one
of its rows on another problem: the same configuration on another batch of draws). A new library is a new module
and its entry in ``PEERS``.
"""
from __future__ import annotations

from importlib import import_module

__all__ = ["PEERS", "installed", "peer_rows", "rerun"]

PEERS = ("diffusers",)


def installed() -> list:
    """The modules of ``PEERS`` whose library is installed."""
    modules = [import_module(f"{__name__}.{name}") for name in PEERS]
    return [m for m in modules if m.available()]


def peer_rows(problem, nfes) -> list[dict]:
    """Every installed peer's rows on ``problem`` at the budgets ``nfes``."""
    return [row for module in installed() for row in module.rows(problem, nfes)]


def rerun(row: dict, problem) -> dict | None:
    """The peer row ``row`` (``row["side"]`` names its library) run again on ``problem``."""
    return import_module(f"{__name__}.{row['side']}").rerun(row, problem)
