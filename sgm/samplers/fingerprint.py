"""Which model a calibrated object (a learned correction, an optimised grid) was made for: a small record of the model
and a check against it.

``fingerprint(model, sde, shape, dtype)`` records the model's class (module and qualified name; for a plain function
its own name), the parameter count of its weights (the ``torch.nn.Module`` that is the model or its ``net``, as in
``sgm.ScoreModel``; 0 for a plain function), one number per weight tensor (its projection on a fixed Gaussian
direction: two networks of one architecture differ there even where their outputs agree, as at a zero-initialised
last layer), the kind it predicts, the sample ``shape`` and ``dtype``, and a probe: the model's outputs on a fixed
batch of ``PROBE_BATCH`` states ``√(α² + σ²)·z`` (``z`` from the fixed seed ``PROBE_SEED``) at the times
``eps + f·(T - eps)`` for ``f`` in ``PROBE_TIMES``, each reduced to two numbers (its inner product with a fixed Gaussian
direction, and its norm). ``check_model(recorded, model, sde)`` raises ``ValueError`` naming what differs: class,
parameter count, kind, weights or probe (relative tolerance ``PROBE_RTOL``, which float rounding across devices
passes and other weights or another mixture do not). A probe costs ``len(PROBE_TIMES)`` model calls on
``PROBE_BATCH`` states, outside any evaluation count. ``batch_fingerprint(model, sde, shape, dtype)`` is the record a
calibration takes of its model before any work, for its batch ``shape = (n, *dims)`` of draws (``sgm.sample``'s
convention): the probe on samples of shape ``dims`` refuses, naming ``shape``, a model that fails on them or does not
return their shape, as when a per-sample shape is given for the batch shape.
"""
from __future__ import annotations

import math

import torch

from ..paths import GaussianPath
from ..predictions import predicts

__all__ = ["fingerprint", "batch_fingerprint", "check_model", "PROBE_SEED", "PROBE_BATCH", "PROBE_TIMES", "PROBE_RTOL"]

PROBE_SEED, PROBE_BATCH, PROBE_TIMES, PROBE_RTOL = 2024, 4, (0.2, 0.5, 0.8), 1e-4


def _class_name(model) -> str:
    kind = model if (callable(model) and hasattr(model, "__qualname__")
                     and not isinstance(model, torch.nn.Module)) else type(model)
    return f"{getattr(kind, '__module__', '?')}.{kind.__qualname__}"


def _module(model):
    """The ``torch.nn.Module`` holding the model's weights: the model itself or its ``net``; ``None``."""
    for candidate in (model, getattr(model, "net", None)):
        if isinstance(candidate, torch.nn.Module):
            return candidate
    return None


def _parameter_count(model) -> int:
    module = _module(model)
    return 0 if module is None else int(sum(p.numel() for p in module.parameters()))


def _weights(model) -> list[float]:
    """One number per weight tensor: its projection on a fixed Gaussian direction (seed ``PROBE_SEED + 1``)."""
    module = _module(model)
    if module is None:
        return []
    g = torch.Generator().manual_seed(PROBE_SEED + 1)
    return [float((p.detach().to("cpu", torch.float64).flatten()
                   * torch.randn(p.numel(), generator=g, dtype=torch.float64)).sum()) for p in module.parameters()]


def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    module = _module(model)
    parameter = None if module is None else next(iter(module.parameters()), None)
    return torch.device("cpu") if parameter is None else parameter.device


@torch.no_grad()
def fingerprint(model, sde: GaussianPath, shape, dtype: torch.dtype = torch.float64, device=None) -> dict:
    """The record of ``model`` on ``sde`` for samples of ``shape`` in ``dtype`` (JSON values; see the module)."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    device = _model_device(model, device)
    g = torch.Generator().manual_seed(PROBE_SEED)
    z = torch.randn((PROBE_BATCH, *shape), generator=g, dtype=torch.float64)
    probe = []
    for f in PROBE_TIMES:
        t = torch.full((PROBE_BATCH,), sde.default_eps + f * (sde.T - sde.default_eps), dtype=torch.float64)
        alpha, sigma = (float(v[0]) for v in sde.marginal(t[:1]))
        x = math.sqrt(alpha**2 + sigma**2) * z
        out = model(x.to(dtype=dtype, device=device), t.to(dtype=dtype, device=device)).to(torch.float64).cpu()
        if out.shape != x.shape:
            raise ValueError(f"model(x, t) must return x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
        direction = torch.randn(out.shape, generator=g, dtype=torch.float64)
        probe += [float((out * direction).sum()), float(out.norm())]
    return {"class": _class_name(model), "parameters": _parameter_count(model), "predicts": predicts(model),
            "probe": probe, "weights": _weights(model), "shape": list(shape), "dtype": str(dtype).replace("torch.", "")}


def batch_fingerprint(model, sde: GaussianPath, shape: tuple, dtype: torch.dtype = torch.float64, device=None) -> dict:
    """``fingerprint`` of ``model`` for the samples of the batch ``shape = (n, *dims)``; ``ValueError`` naming
    ``shape`` when the model fails on samples of shape ``dims`` or does not return their shape."""
    try:
        return fingerprint(model, sde, shape[1:], dtype, device)
    except (ValueError, RuntimeError, IndexError) as e:
        raise ValueError(f"shape={tuple(shape)} is the batch shape (n, *dims) of the calibration draws, as in "
                         f"sgm.sample, but the model does not take samples of shape {tuple(shape[1:])} ({e}); for n "
                         f"draws of samples of shape {tuple(shape)} give shape=(n, {', '.join(map(str, shape))})"
                         ) from e


def check_model(recorded: dict | None, model, sde: GaussianPath, device=None, *, what: str = "it") -> None:
    """Raise ``ValueError`` when ``model`` is not the model ``recorded`` (``None``: made for no model in particular,
    accepted for any); ``what`` names the calibrated object in the message."""
    if recorded is None:
        return
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    dtype = getattr(torch, str(recorded.get("dtype", "float64")))
    mine = fingerprint(model, sde, tuple(recorded["shape"]), dtype, device)
    for key in ("class", "parameters", "predicts"):
        if mine[key] != recorded.get(key):
            raise ValueError(f"{what} was calibrated for another model: its {key} is {recorded.get(key)!r}, this "
                             f"model's {mine[key]!r}; calibrate again for this model")
    for key, differs in (("weights", "its weights differ"), ("probe", "its outputs on the probe batch differ")):
        if key not in recorded:  # an older record without the weight projections checks the probe alone
            continue
        a, b = mine[key], recorded[key]
        scale = max((abs(v) for v in b), default=0.0)
        if len(a) != len(b) or any(not math.isclose(u, v, rel_tol=PROBE_RTOL, abs_tol=PROBE_RTOL * scale)
                                   for u, v in zip(a, b)):
            raise ValueError(f"{what} was calibrated for another model: {differs} ({b[:6]} recorded, {a[:6]} now); "
                             "calibrate again for this model")
