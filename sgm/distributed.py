"""Several processes under ``torchrun``: the process group, this process's rank, and per-rank random streams.

``torchrun --nproc_per_node N -m sgm ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address in each process's environment; ``setup`` joins the group (NCCL when the processes use CUDA, gloo on
CPU) and pins each process to GPU ``LOCAL_RANK``. Without ``torchrun`` (or with one process) nothing is
set up, and ``world()`` is ``(0, 1)``.

Training draws no randomness from a stateful stream: step ``s`` on rank ``r`` of a run seeded ``seed`` draws
from generators seeded with ``stream_seed(seed, s, r)`` (NumPy's ``SeedSequence``, whose outputs for
different keys are statistically independent). A checkpoint therefore needs no RNG state, resumes exactly
with the same number of processes, and resumes (with different but equally distributed draws) with any other.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["world", "is_main", "setup", "teardown", "session", "barrier", "mean_over_ranks", "max_over_ranks",
           "stream_seed", "local_device"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: str = "auto") -> bool:
    """Join the process group ``torchrun`` describes in the environment (NCCL for CUDA, gloo otherwise);
    ``False`` (and nothing done) when there is no such group or it has one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda:")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """This process's GPU (``cuda:LOCAL_RANK``) when several processes share a CUDA machine; else ``device``."""
    if world()[1] > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "auto"):
    """``setup`` on entry, and on exit leave the group this call joined: after a barrier when the body finished, so
    that no process closes its gloo connections while another still reads them (a peer's closed socket aborts the
    reading process); at once when the body raised, so that a failing process exits and ``torchrun`` stops the
    others instead of waiting in a barrier."""
    joined = setup(device)
    try:
        yield world()
    except BaseException:
        if joined:
            teardown()
        raise
    if joined:
        barrier()
        teardown()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (``value`` itself with one)."""
    if world()[1] == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world()[1]


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every process's ``value`` (``value`` itself with one); the tensor lives on ``device`` (the
    backend's: CUDA for NCCL)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def stream_seed(*key: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` from integers ``(seed, step, rank, ...)``."""
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in key):
        raise ValueError(f"stream_seed takes non-negative ints, got {key!r}")
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
