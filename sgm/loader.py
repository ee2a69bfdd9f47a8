"""Training batches: which samples and flips step ``s`` draws, fetched in the training process or by worker
processes, and moved to the device one batch at a time.

Step ``s`` on rank ``r`` of a run seeded ``seed`` draws its ``batch`` indices uniformly with replacement, then (with
``xflip``) a left-right flip per sample with probability 1/2, from a CPU generator seeded ``stream_seed(seed, s, r,
2)``. A batch is therefore a function of the step alone: the same with or without workers, in any order they finish,
and after a resume. The data stay where they are (in memory for tensors, on disk for an ``ImageFolder``); only
each batch is copied to the device (from pinned memory when workers feed a GPU).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch import Tensor

from .data import ImageFolder, check_finite, fingerprint
from .distributed import stream_seed

__all__ = ["InMemory", "Streamed", "StepBatches", "STD_SAMPLE"]

STD_SAMPLE = 4096  # images a streamed set's std is measured on


class InMemory:
    """A data tensor ``(N, ...)`` and its labels (or None), indexed a batch at a time."""

    def __init__(self, data: Tensor, labels: Tensor | None = None):
        if not isinstance(data, Tensor) or not data.is_floating_point() or data.dim() < 2 or len(data) < 2:
            raise ValueError(f"data must be a floating tensor holding at least 2 samples (N, ...), got "
                             f"{type(data).__name__} {tuple(getattr(data, 'shape', ()))}")
        self.data, self.labels = check_finite(data.detach().cpu()), None if labels is None else labels.detach().cpu()
        self.shape, self.dtype = tuple(data.shape[1:]), data.dtype

    def __len__(self) -> int:
        return len(self.data)

    def fetch(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.data[idx], None if self.labels is None else self.labels[idx]

    def std(self) -> float:
        return float(self.data.double().std())

    def fingerprint(self) -> dict:
        return fingerprint(self.data, self.labels)


class Streamed:
    """An ``ImageFolder`` whose images are decoded as batches ask for them (their labels held in memory)."""

    def __init__(self, images: ImageFolder):
        self.images, self.labels = images, images.labels
        self.shape, self.dtype = images.shape, torch.float32

    def __len__(self) -> int:
        return len(self.images)

    def fetch(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.images.images(idx.tolist()), None if self.labels is None else self.labels[idx]

    def std(self) -> float:
        """The std of up to ``STD_SAMPLE`` images spread evenly over the set (decoded images are always finite)."""
        idx = torch.linspace(0, len(self) - 1, min(len(self), STD_SAMPLE)).long().unique()
        return float(self.images.images(idx.tolist()).double().std())

    def fingerprint(self) -> dict:
        return self.images.fingerprint()


class StepBatches:
    """``batches(step) -> (x0, labels)``: this rank's ``batch`` samples of ``step`` (see the module docstring)."""

    def __init__(self, source, batch: int, seed: int, rank: int = 0, xflip: bool = False):
        if xflip and len(source.shape) != 3:
            raise ValueError(f"xflip flips images (C, H, W), got samples of shape {source.shape}")
        self.source, self.batch, self.seed, self.rank, self.xflip = source, batch, seed, rank, xflip

    def draw(self, step: int) -> tuple[Tensor, Tensor | None]:
        """Step ``step``'s indices and flip mask (None without ``xflip``)."""
        g = torch.Generator().manual_seed(stream_seed(self.seed, step, self.rank, 2))
        idx = torch.randint(len(self.source), (self.batch,), generator=g)
        return idx, (torch.rand(self.batch, generator=g) < 0.5) if self.xflip else None

    def __call__(self, step: int) -> tuple[Tensor, Tensor | None]:
        idx, flip = self.draw(step)
        x, y = self.source.fetch(idx)
        if flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y

    def __getitems__(self, steps: list[int]) -> tuple[Tensor, Tensor | None]:
        """What a ``DataLoader`` worker runs: the batch of the one step it is handed."""
        return self(steps[0])

    def __getitem__(self, step: int) -> tuple[Tensor, Tensor | None]:
        return self(step)

    def stream(self, start: int, workers: int = 0, pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor | None]]:
        """The batches of steps ``start, start + 1, …``: fetched here (``workers=0``) or by ``workers`` processes,
        two steps ahead each."""
        if workers == 0:
            return map(self, itertools.count(start))
        loader = torch.utils.data.DataLoader(self, batch_sampler=([s] for s in itertools.count(start)),
                                             num_workers=workers, collate_fn=_identity, pin_memory=pin_memory)
        return iter(loader)


def _identity(batch):
    return batch
