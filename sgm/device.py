"""Which torch device a run uses (``"auto"``: CUDA when present, else the CPU; or a name checked before any work), and
the two things a device changes: where a generator's draws are made, and whether float64 exists there (not on MPS)."""
from __future__ import annotations

import torch

__all__ = ["resolve_device", "randn", "wide_float"]


def resolve_device(name="auto") -> torch.device:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (or a ``torch.device``) as a device this machine
    has; otherwise a ``ValueError`` naming the device and what is available."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"device must be a name such as 'cpu' or 'cuda:0', or a torch.device, "
                        f"got {type(name).__name__}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}") from None
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"device {name!r}: the CPU has no index {device.index}; use 'cpu'")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine; use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} asked for, but MPS is not available on this machine; use 'cpu'")
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    return device


def wide_float(device) -> torch.dtype:
    """float64 — or float32 on a device without float64 (MPS): the dtype for times and tables kept wide."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def randn(shape, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
          device=None) -> torch.Tensor:
    """``torch.randn`` of ``shape`` on ``device`` from ``generator``, wherever the generator lives: drawn on the
    generator's device and moved when they differ (a CPU generator feeding a GPU run gives the draws it gives on
    the CPU)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if generator is None or generator.device.type == device.type:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device)
