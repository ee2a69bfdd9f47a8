"""Argument checks shared by every public entry point: each raises ``TypeError`` for the wrong kind of value and
``ValueError`` for a value outside its range, naming the argument and the accepted range.

Integers are anything ``operator.index`` accepts (``int``, numpy and 0-d integer torch scalars), never a ``bool``;
reals are ``int``/``float``/numpy scalars or one-element tensors, finite unless said otherwise.
"""
from __future__ import annotations

import math
import operator
from numbers import Real
from typing import Sequence

import torch

__all__ = ["integer", "real", "positive", "nonnegative", "choice", "flag", "shape"]


def integer(name: str, value, low: int | None = 1, high: int | None = None) -> int:
    """``value`` as a Python ``int`` in ``[low, high]`` (either end ``None``: unbounded)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def real(name: str, value, low: float | None = None, high: float | None = None, *, open_low: bool = False,
         infinite: bool = False) -> float:
    """``value`` as a ``float`` in ``[low, high]`` (``(low, high]`` with ``open_low``); ``+inf`` is accepted only
    with ``infinite``; NaN never."""
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)) or (
            isinstance(value, torch.Tensor) and value.numel() != 1):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not (infinite and value > 0)):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (open_low and value == low)):
        raise ValueError(f"{name} must be {'>' if open_low else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def positive(name: str, value) -> float:
    """A finite real ``> 0``."""
    return real(name, value, 0.0, open_low=True)


def nonnegative(name: str, value, infinite: bool = False) -> float:
    """A real ``>= 0`` (``+inf`` allowed with ``infinite``)."""
    return real(name, value, 0.0, infinite=infinite)


def choice(name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def flag(name: str, value) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def shape(name: str, value) -> tuple[int, ...]:
    """A non-empty tuple (or list, ``torch.Size``) of positive integers."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{name} must be a non-empty tuple of ints, got {value!r}")
    try:
        return tuple(integer(name, n) for n in value)
    except TypeError:
        raise TypeError(f"{name} must be a non-empty tuple of ints, got {value!r}") from None
    except ValueError:
        raise ValueError(f"{name} must have positive sizes, got {tuple(value)}") from None
