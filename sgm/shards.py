"""Many samples in ``.npz`` shards, written as they are drawn, resumable, and split over ``torchrun``'s processes.

``n`` samples are cut into ``ceil(n / shard_size)`` shards; shard ``k`` holds samples ``k·shard_size`` onwards
(``samples``: float32 ``(size, *shape)``, as ``sgm sample`` writes them). Sample ``i`` is drawn from its own
stream, seeded ``stream_seed(seed, i)`` (``sgm.sample(..., seeds=...)``), so it is the same whatever the shard
size, the batch, the number of processes or which process drew it (for samplers that act sample by sample;
see ``sgm.samplers.solver``). Process ``r`` of ``N`` draws the shards ``k ≡ r (mod N)``. Each shard is written to a
temporary file and renamed, so a crash leaves only whole shards; running the same command again skips them.
``shards.json`` records the settings and a run with other settings is refused.
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed
from .checks import integer
from .checkpoint import write_atomic
from .samplers import sample
from .paths import SDE

__all__ = ["sample_shards", "sample_seeds", "shard_path", "MANIFEST"]

MANIFEST = "shards.json"


def shard_path(out_dir: str, k: int) -> str:
    return os.path.join(out_dir, f"shard_{k:05d}.npz")


def sample_seeds(seed: int, first: int, count: int) -> list[int]:
    """The per-sample seeds of samples ``first … first + count - 1`` of a run seeded ``seed``."""
    return [distributed.stream_seed(seed, i) for i in range(first, first + count)]


def _check_manifest(out_dir: str, manifest: dict) -> None:
    """Refuse a folder whose shards were drawn with other settings; process 0 writes the record."""
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differ = sorted(k for k in set(saved) | set(manifest) if saved.get(k) != manifest.get(k))
        if differ:
            raise ValueError(f"{out_dir} holds shards drawn with other settings (differs in {differ}: "
                             f"{ {k: saved.get(k) for k in differ} }); use another folder or remove it")
    elif distributed.is_main():
        write_atomic(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def sample_shards(score: Callable[[Tensor, Tensor], Tensor], sde: SDE, shape: tuple[int, ...], n: int, out_dir: str,
                  shard_size: int = 1000, seed: int = 0, sampler: str = "ode", steps: int | None = 100, device="cpu",
                  dtype=torch.float32, progress: bool = True, record: dict | None = None, nfe: int | None = None,
                  **options) -> list[str]:
    """Draw ``n`` samples of event shape ``shape`` into ``out_dir``'s shards (this process's share, skipping
    shards already there) and return every shard's path once all processes are done (``steps`` noise levels, or a
    budget of ``nfe`` evaluations: ``sgm.sample``'s). ``record``: more settings (e.g. the checkpoint) that a resumed
    run must share."""
    n, shard_size = integer("n", n), integer("shard_size", shard_size)
    os.makedirs(out_dir, exist_ok=True)
    steps = None if nfe is not None else steps
    manifest = {"n": n, "shard_size": shard_size, "seed": seed, "sampler": sampler, "steps": steps, "nfe": nfe,
                "options": {k: options[k] for k in sorted(options)}, "shape": list(shape), "dtype": str(dtype),
                **(record or {})}
    _check_manifest(out_dir, json.loads(json.dumps(manifest)))
    rank, world_size = distributed.world()
    count = math.ceil(n / shard_size)
    todo = [k for k in range(rank, count, world_size) if not os.path.exists(shard_path(out_dir, k))]
    for k in tqdm(todo, desc=f"shards (process {rank})", disable=not (progress and rank == 0), unit="shard"):
        first, size = k * shard_size, min(shard_size, n - k * shard_size)
        with torch.no_grad():
            x = sample(score, sde, (size,) + tuple(shape), sampler=sampler, steps=steps, nfe=nfe,
                       seeds=sample_seeds(seed, first, size), device=device, dtype=dtype, **options).x
        array = x.detach().cpu().numpy()
        write_atomic(shard_path(out_dir, k), lambda f: np.savez(f, samples=array))
    distributed.barrier()
    return [shard_path(out_dir, k) for k in range(count)]
