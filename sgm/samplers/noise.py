"""Where the samplers' randomness comes from: ``noise(t0, t1)`` is a standard normal shaped like the state.

A solver names the interval of path time ``[t1, t0]`` each draw drives (``t0 > t1``: the transition or sub-step
it makes), or none for a draw that is not a Brownian increment (a corrector's, a Langevin step's). A noise source
answers:

- ``Noise(generator, x)``: one ``randn`` of the state's shape per call, in call order (the interval is ignored);
- ``SeededNoise(seeds, x)``: the same order, row ``i`` from its own stream seeded ``seeds[i]`` (as EDM's per-sample
  seeds), so a sample is the same whatever batch it is drawn in.

Noise order: ``sgm.sample`` draws ``x_T`` first (one draw of the full shape), then the solver's draws in the order
its updates are made.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from ..device import randn

__all__ = ["Noise", "SeededNoise"]


class Noise:
    """Standard normal draws shaped like the state, from ``generator``, in call order: ``noise(t0, t1, like=None)``."""

    def __init__(self, generator: torch.Generator | None, x: Tensor):
        self.generator, self.shape, self.dtype, self.device = generator, x.shape, x.dtype, x.device

    def __call__(self, t0: float | None = None, t1: float | None = None, *, like: Tensor | None = None) -> Tensor:
        shape = self.shape if like is None else like.shape
        return randn(shape, self.generator, self.dtype, self.device)  # a CPU generator's draws, moved to a GPU


class SeededNoise(Noise):
    """Per-sample streams: row ``i`` of every draw comes from ``torch.Generator(device).manual_seed(seeds[i])``."""

    def __init__(self, seeds, x: Tensor):
        seeds = list(seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63 for s in seeds):
            raise ValueError(f"seeds must be ints in [0, 2**63), got {seeds[:8]!r}{'…' if len(seeds) > 8 else ''}")
        if len(seeds) != x.shape[0]:
            raise ValueError(f"seeds must hold one seed per sample ({x.shape[0]}), got {len(seeds)}")
        super().__init__(None, x)
        self.seeds = seeds
        self.generators = [torch.Generator(x.device).manual_seed(s) for s in seeds]

    @property
    def generator(self) -> torch.Generator:
        """A batch-wide generator, for solvers that draw a batch-wide Brownian path (``sde`` with ``srk`` or
        adaptive steps): seeded by a hash of all the seeds, so such samples depend on their batch."""
        if self._batch_generator is None:
            digest = hashlib.sha256(repr(self.seeds).encode()).digest()
            seed = int.from_bytes(digest[:8], "little") >> 1
            self._batch_generator = torch.Generator(self.device).manual_seed(seed)
        return self._batch_generator

    @generator.setter
    def generator(self, value):
        self._batch_generator = value  # None from Noise.__init__: made on first use

    def __call__(self, t0: float | None = None, t1: float | None = None, *, like: Tensor | None = None) -> Tensor:
        shape = self.shape if like is None else like.shape
        if shape[0] != len(self.generators):
            raise ValueError(f"per-sample noise needs a leading batch of {len(self.generators)}, got {tuple(shape)}")
        return torch.stack([torch.randn(shape[1:], generator=g, dtype=self.dtype, device=self.device)
                            for g in self.generators])
