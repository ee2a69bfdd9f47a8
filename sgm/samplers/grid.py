"""Time grids: where a sampler stops on its way from the prior to the data.

A grid is a list of nodes ``t_0 > t_1 > … > t_M``, each with its marginal ``(scale_k, std_k)``
(``x_{t_k} = scale_k·x_0 + std_k·z``). With ``denoise=True`` the last node is the data itself
(``scale = 1, std = 0``); the step into it is Tweedie's ``x_0 = (x + std² s)/scale``.

``steps`` is the number of noisy nodes (noise levels); a one-evaluation-per-step sampler with
``denoise=True`` spends exactly ``steps`` score evaluations.

Spacings:
- ``uniform``:   ``t_k = T + (eps - T)·k/(steps-1)``;
- ``quadratic``: ``t_k = eps + (T - eps)·(1 - k/(steps-1))²`` (denser near the data, as in DDIM);
- ``logsnr``:    uniform in the half log-SNR ``λ = log(scale/std) = -log σ`` from ``λ(T)`` to ``λ(eps)``
  (DPM-Solver's default). ``σ = std/scale`` is then log-uniform: these are NCSN's geometric noise levels on
  every SDE (uniform in t on VE), so ``geometric`` names the same grid;
- ``karras``:    ``σ_k = (σ_max^{1/ρ} + k/(steps-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``, ``ρ = rho = 7`` by default
  (Karras et al., 2022);
- ``leading`` / ``trailing``: DDPM timestep sub-sequences of ``sde.discretize(train_steps)``
  (``i_k = k·⌊N/steps⌋`` and ``i_k = round(N - k·N/steps) - 1``), with the chain's own
  ``(scale, std)`` so that DDPM and DDIM are reproduced exactly. ``eps`` does not apply to them.

A grid records the SDE it was made for (``grid.sde``, its ``repr``: class and parameters), since its nodes carry
that SDE's marginal; ``integrate`` refuses a grid made for another SDE. ``grid.save(path)`` writes it as JSON
(nodes as exact float reprs, the SDE, and ``info``: how it was made, e.g. by ``optimize_grid``) and
``TimeGrid.load(path, sde)`` reads it back, refusing a file made for another SDE.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import torch

from ..sde import SDE, DiscreteChain, _check_steps, _positive, _real

__all__ = ["Node", "TimeGrid", "time_grid", "SPACINGS"]

KARRAS_RHO = 7.0
SPACINGS = ("uniform", "quadratic", "logsnr", "geometric", "karras", "leading", "trailing")


class Node(NamedTuple):
    t: float
    scale: float
    std: float

    @property
    def is_data(self) -> bool:
        return self.std == 0.0

    @property
    def sigma(self) -> float:
        """The noise level ``σ = std/scale`` (0 at the data node)."""
        return self.std / self.scale

    @property
    def lam(self) -> float:
        """The half log-SNR ``λ = log(scale/std) = -log σ`` (``+inf`` at the data node)."""
        return math.log(self.scale / self.std) if self.std > 0 else math.inf


GRID_FORMAT = "sgm.TimeGrid"
GRID_VERSION = 1


@dataclass(frozen=True)
class TimeGrid:
    """Nodes in sampling order (noise decreasing); ``nodes[-1].is_data`` when it ends with denoising.

    ``sde``: the ``repr`` of the SDE whose marginal the nodes carry (``None``: unknown, accepted with any SDE);
    ``info``: a read-only record of how the grid was made (JSON values; not part of equality).
    """

    nodes: tuple[Node, ...]
    sde: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.sde is not None and not isinstance(self.sde, str):
            raise TypeError(f"sde must be the SDE's repr (a str) or None, got {type(self.sde).__name__}")
        if not isinstance(self.info, Mapping):
            raise TypeError(f"info must be a mapping, got {type(self.info).__name__}")
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))
        if len(self.noisy) < 1:
            raise ValueError("a time grid needs at least one noisy node")
        times = [n.t for n in self.noisy]
        if any(a <= b for a, b in zip(times, times[1:])):
            raise ValueError(f"grid times must strictly decrease, got {times}")
        if any(n.is_data for n in self.nodes[:-1]):
            raise ValueError("only the last node may be the data node (std 0)")

    @property
    def noisy(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not n.is_data)

    @property
    def denoise(self) -> bool:
        return self.nodes[-1].is_data

    def steps(self) -> Iterator[tuple[Node, Node]]:
        """The transitions ``(a, b)`` from node ``a`` to the next, less noisy, node ``b``."""
        return zip(self.nodes[:-1], self.nodes[1:])

    def __len__(self) -> int:
        return len(self.nodes) - 1

    def check_sde(self, sde: SDE) -> None:
        """Raise ``ValueError`` when the grid was made for an SDE other than ``sde`` (its nodes carry that
        SDE's ``(scale, std)``, so a run with ``sde`` would mix two processes)."""
        if self.sde is not None and self.sde != repr(sde):
            raise ValueError(f"grid was made for {self.sde}, not for sde={sde!r}; build or optimise a grid for this SDE")

    def save(self, path: str | os.PathLike) -> None:
        """Write the grid to ``path`` as JSON: nodes ``[t, scale, std]`` (floats round-trip exactly), ``sde``, ``info``."""
        data = {"format": GRID_FORMAT, "version": GRID_VERSION, "sde": self.sde,
                "nodes": [list(n) for n in self.nodes], "info": dict(self.info)}
        with open(path, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)

    @classmethod
    def load(cls, path: str | os.PathLike, sde: SDE | None = None) -> "TimeGrid":
        """Read a grid written by ``save``; with ``sde``, refuse (``ValueError``) a grid made for another SDE."""
        if sde is not None and not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sgm SDE or None, got {type(sde).__name__}")
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)!r} is not a grid file (invalid JSON: {e})") from None
        if not isinstance(data, dict) or data.get("format") != GRID_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not an sgm time grid file (no format {GRID_FORMAT!r})")
        if data.get("version") != GRID_VERSION:
            raise ValueError(f"{os.fspath(path)!r} has grid format version {data.get('version')!r}; "
                             f"this sgm reads version {GRID_VERSION}")
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not all(
                isinstance(n, list) and len(n) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and math.isfinite(v) for v in n) for n in nodes):
            raise ValueError(f"{os.fspath(path)!r}: nodes must be a list of finite [t, scale, std] triples")
        if any(n[1] <= 0 or n[2] < 0 for n in nodes):
            raise ValueError(f"{os.fspath(path)!r}: every node needs scale > 0 and std >= 0")
        grid = cls(tuple(Node(*map(float, n)) for n in nodes), data.get("sde"), data.get("info") or {})
        if sde is not None:
            grid.check_sde(sde)
        return grid

    @classmethod
    def from_times(cls, sde: SDE, times: Sequence[float], denoise: bool = True) -> "TimeGrid":
        """Nodes at the given decreasing continuous times, with the SDE's marginal at each."""
        t = torch.as_tensor(list(map(float, times)), dtype=torch.float64)
        if t.dim() != 1 or t.numel() < 1:
            raise ValueError("times must be a non-empty 1-D sequence")
        if float(t.max()) > sde.T or float(t.min()) <= 0:
            raise ValueError(f"times must lie in (0, T={sde.T}], got [{float(t.min())}, {float(t.max())}]")
        scale, std = sde.marginal(t)
        nodes = [Node(*v) for v in zip(t.tolist(), scale.tolist(), std.tolist())]
        return cls(tuple(nodes) + ((Node(0.0, 1.0, 0.0),) if denoise else ()), repr(sde))

    @classmethod
    def from_chain(cls, chain: DiscreteChain, indices: Sequence[int], denoise: bool = True) -> "TimeGrid":
        """Nodes at the given decreasing timesteps of a discrete chain, with the chain's ``(scale, std)``."""
        idx = [int(i) for i in indices]
        if any(i < 0 or i >= len(chain) for i in idx):
            raise ValueError(f"indices must lie in [0, {len(chain) - 1}], got {idx}")
        nodes = [Node(float(chain.t[i]), float(chain.scale[i]), float(chain.std[i])) for i in idx]
        return cls(tuple(nodes) + ((Node(0.0, 1.0, 0.0),) if denoise else ()))


def check_eps(eps, T: float) -> float:
    eps = _real("eps", eps)
    if not 0 < eps < T:
        raise ValueError(f"eps must lie in (0, T={T}), got {eps}")
    return eps


def check_spacing(spacing) -> str:
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return spacing


def time_grid(sde: SDE, steps: int, spacing: str = "uniform", eps: float = 1e-3, denoise: bool = True,
              train_steps: int = 1000, rho: float = KARRAS_RHO) -> TimeGrid:
    """The grid of ``steps`` noise levels for ``sde`` (see the module docstring for the spacings)."""
    steps = _check_steps("steps", steps)
    eps = check_eps(eps, sde.T)
    check_spacing(spacing)
    rho = _positive("rho", rho)
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be a bool, got {denoise!r}")
    if spacing in ("leading", "trailing"):
        train_steps = _check_steps("train_steps", train_steps)
        if steps > train_steps:
            raise ValueError(f"steps must be <= train_steps={train_steps} for spacing={spacing!r}, got {steps}")
        if spacing == "leading":
            idx = [k * (train_steps // steps) for k in range(steps)][::-1]
        else:
            idx = [round(train_steps - k * train_steps / steps) - 1 for k in range(steps)]
        return replace(TimeGrid.from_chain(sde.discretize(train_steps), idx, denoise), sde=repr(sde))
    u = torch.linspace(1, 0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    if spacing in ("logsnr", "geometric", "karras"):
        lo, hi = sde.noise_level(torch.tensor([eps, sde.T], dtype=torch.float64)).tolist()
        if spacing == "karras":
            sigmas = (lo ** (1 / rho) + (hi ** (1 / rho) - lo ** (1 / rho)) * u) ** rho
        else:
            sigmas = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        t = sde.time_at_noise_level(sigmas).clamp(eps, sde.T)
        t[0], t[-1] = sde.T, (eps if steps > 1 else sde.T)
        return TimeGrid.from_times(sde, t.tolist(), denoise)
    if spacing == "quadratic":
        u = u**2
    return TimeGrid.from_times(sde, (eps + (sde.T - eps) * u).tolist(), denoise)
