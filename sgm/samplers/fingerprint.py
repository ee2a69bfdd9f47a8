"""Which model a calibrated object (an optimised grid, a learned correction) was made for: a record of the model,
``fingerprint``, and a check against it, ``check_model`` (``TimeGrid.load(path, sde, model=…)``,
``grid.check_model(model, sde)`` and ``sgm.sample`` use it for ``grid.info["model"]``).

The fingerprint is the model's class (module and qualified name), its parameter count (of the model's
``torch.nn.Module`` or its ``net``; 0 for a plain function), the kind it predicts, a projection of each of its weight
tensors on a fixed Gaussian direction and a probe: its outputs on a fixed batch of ``PROBE_BATCH`` states
``√(α² + σ²)·z`` (``z`` from a fixed seed) at ``PROBE_TIMES`` fractions of ``[eps, T]``, reduced to two numbers per
time — the inner product with a fixed Gaussian direction and the norm. Two models match when class, parameter count
and kind are equal and the weight projections (where recorded) and the probe agree to a relative ``PROBE_RTOL``
(float rounding across devices and dtypes passes; other weights, another mixture or a retrained network do not).
Probing costs ``len(PROBE_TIMES)`` evaluations of ``PROBE_BATCH`` states, outside any calibration count.
"""
from __future__ import annotations

import math

import torch

from ..paths import GaussianPath
from ..predictions import predicts

__all__ = ["fingerprint", "check_model", "PROBE_SEED", "PROBE_BATCH", "PROBE_TIMES", "PROBE_RTOL"]

PROBE_SEED, PROBE_BATCH, PROBE_TIMES, PROBE_RTOL = 2024, 4, (0.2, 0.5, 0.8), 1e-4


def _name(model) -> str:
    named = model if callable(model) and hasattr(model, "__qualname__") and not isinstance(model, torch.nn.Module) \
        else type(model)
    return f"{getattr(named, '__module__', '?')}.{named.__qualname__}"


def _module(model):
    """The ``torch.nn.Module`` holding the model's weights: the model itself or its ``net`` (``sgm.ScoreModel``)."""
    for candidate in (model, getattr(model, "net", None)):
        if isinstance(candidate, torch.nn.Module):
            return candidate
    return None


def _parameters(model) -> int:
    module = _module(model)
    return 0 if module is None else int(sum(p.numel() for p in module.parameters()))


def _weights(model) -> list[float]:
    """One number per parameter tensor: its projection on a fixed Gaussian direction (two networks of one
    architecture differ here even where their outputs agree, as at a zero-initialised last layer)."""
    module = _module(model)
    if module is None:
        return []
    g = torch.Generator().manual_seed(PROBE_SEED + 1)
    return [float((p.detach().to("cpu", torch.float64).flatten()
                   * torch.randn(p.numel(), generator=g, dtype=torch.float64)).sum()) for p in module.parameters()]


def _device(model, device):
    if device is not None:
        return torch.device(device)
    module = _module(model)
    parameter = next(iter(module.parameters()), None) if module is not None else None
    return torch.device("cpu") if parameter is None else parameter.device


@torch.no_grad()
def fingerprint(model, sde: GaussianPath, shape, dtype: torch.dtype = torch.float64, device=None) -> dict:
    """The fingerprint of ``model`` on ``sde`` for samples of ``shape`` in ``dtype`` (see the module docstring)."""
    device = _device(model, device)
    g = torch.Generator().manual_seed(PROBE_SEED)
    z = torch.randn((PROBE_BATCH, *shape), generator=g, dtype=torch.float64)
    probe = []
    for f in PROBE_TIMES:
        t = torch.full((PROBE_BATCH,), sde.default_eps + f * (sde.T - sde.default_eps), dtype=torch.float64)
        alpha, sigma = sde.marginal(t[:1])
        x = float(torch.sqrt(alpha**2 + sigma**2)) * z
        out = model(x.to(dtype=dtype, device=device), t.to(dtype=dtype, device=device)).to(torch.float64).cpu()
        w = torch.randn(out.shape, generator=g, dtype=torch.float64)
        probe += [float((out * w).sum()), float(out.norm())]
    return {"class": _name(model), "parameters": _parameters(model), "predicts": predicts(model), "probe": probe,
            "weights": _weights(model), "shape": list(shape), "dtype": str(dtype).replace("torch.", "")}


def check_model(recorded: dict | None, model, sde: GaussianPath, what: str = "grid", device=None) -> None:
    """Raise ``ValueError`` naming what differs when ``model`` is not the model whose fingerprint is ``recorded``
    (``None``: an object that does not depend on the model, accepted for any); ``what`` names the calibrated object."""
    if recorded is None:
        return
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    dtype = getattr(torch, str(recorded.get("dtype", "float64")))
    mine = fingerprint(model, sde, tuple(recorded["shape"]), dtype, device)
    for key in ("class", "parameters", "predicts"):
        if mine[key] != recorded.get(key):
            raise ValueError(f"{what} was calibrated for another model ({key} {recorded.get(key)!r}, this model's "
                             f"{mine[key]!r}); calibrate again for this model")
    for key, how in (("probe", "its outputs on the probe batch"), ("weights", "its weights")):
        if key not in recorded:  # a record without weight projections checks the probe alone
            continue
        a, b = mine[key], recorded[key]
        scale = max((abs(v) for v in b), default=0.0)
        if len(a) != len(b) or any(not math.isclose(x, y, rel_tol=PROBE_RTOL, abs_tol=PROBE_RTOL * scale)
                                   for x, y in zip(a, b)):
            raise ValueError(f"{what} was calibrated for another model ({how} differ: {b[:6]} recorded, {a[:6]} "
                             "now); calibrate again for this model")
