"""Class labels: the one check every layer applies to them (targets, networks, score models, guidance)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_class_labels"]


def check_class_labels(y, n_classes: int, batch: int | None = None, device=None) -> Tensor:
    """``y`` (an int or an integer tensor ``(batch,)``) as a ``long`` tensor of classes in ``[0, n_classes)``."""
    if isinstance(y, bool) or not isinstance(y, (int, Tensor)):
        raise TypeError(f"labels must be an int or an integer tensor, got {type(y).__name__}")
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.dim() == 0 and batch is not None:
        y = y.expand(batch)
    if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
        raise ValueError(f"labels must have shape ({batch if batch is not None else 'batch'},), got {tuple(y.shape)}")
    # The range is read on the CPU only: on an accelerator it would make the host wait for the device at every
    # call; there an out-of-range label trips the embedding's own device-side index check instead.
    if y.numel() and y.device.type == "cpu" and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes - 1}], got values in [{int(y.min())}, {int(y.max())}]")
    return y.long()
