"""Time grids: where a sampler stops on its way from the prior to the data.

A grid is a list of nodes ``t_0 > t_1 > … > t_M``, each with its marginal ``(scale_k, std_k) = (α, σ)(t_k)``
(``x_{t_k} = scale_k·x_0 + std_k·z``) and the derivatives ``(α', σ')`` there (``d_scale, d_std``: a velocity needs
them). With ``denoise=True`` the last node is the data itself (``scale = 1, std = 0``); the step into it is
Tweedie's ``x̂_0``. The first node may have ``scale = 0`` (the exact top of rectified flow: ``λ = -∞``).

``steps`` is the number of noisy nodes (noise levels); a one-evaluation-per-step sampler with
``denoise=True`` spends exactly ``steps`` score evaluations.

Spacings:
- ``uniform``:   ``t_k = t_max + (eps - t_max)·k/(steps-1)`` (``t_max = T`` unless given);
- ``quadratic``: ``t_k = eps + (t_max - eps)·(1 - k/(steps-1))²`` (denser near the data, as in DDIM);
- ``logsnr``:    uniform in the half log-SNR ``λ = log(scale/std) = -log σ`` from ``λ(t_max)`` to ``λ(eps)``
  (DPM-Solver's default). ``σ = std/scale`` is then log-uniform: these are NCSN's geometric noise levels on
  every SDE (uniform in t on VE), so ``geometric`` names the same grid;
- ``karras``:    ``σ_k = (σ_max^{1/ρ} + k/(steps-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``, ``ρ = rho = 7`` by default
  (Karras et al., 2022);
- ``flow``:      ``t_k = t_max - (t_max - eps)·k/steps``, ``k < steps``: the uniform grid of ``steps + 1`` levels
  without its last, the grid of diffusers' flow-matching schedulers (``use_flow_sigmas``; SD3's on a shifted path),
  whose last noise level is about ``t_max/steps``. Where ``α(t_max) = 0`` the first node moves to the noise level
  ``(1 - δ)/δ``, ``δ = FLOW_TOP_OFFSET = 1e-6`` (rectified flow's ``σ = 1 - δ``, as diffusers), so that an
  exponential integrator's first step spans a finite ``λ`` (``x_T`` from the prior is taken as the state there);
- ``leading`` / ``trailing``: DDPM timestep sub-sequences of ``sde.discretize(train_steps)``
  (``i_k = k·⌊N/steps⌋`` and ``i_k = round(N - k·N/steps) - 1``), with the chain's own
  ``(scale, std)`` so that DDPM and DDIM are reproduced exactly. ``eps`` does not apply to them.

On a path whose noise level is infinite at ``t_max`` (``α = 0``: rectified flow at ``t = 1``) ``logsnr``,
``geometric`` and ``karras`` keep ``t_max`` as the first node and space the other ``steps - 1`` nodes from the noise
level of the uniform grid's second node, ``t_max - (t_max - eps)/(steps - 1)``, down to ``eps``.

A grid records the path it was made for (``grid.sde``, its ``repr``: class and parameters, a table path's digest),
since its nodes carry that path's marginal; ``integrate`` refuses a grid made for another path. ``grid.save(path)``
writes it as JSON (nodes as exact float reprs, the path, and ``info``: how it was made, e.g. by ``optimize_grid``) and
``TimeGrid.load(path, sde)`` reads it back, refusing a file made for another SDE.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import torch

from ..checks import choice, flag, integer, positive, real
from ..paths import DiscreteChain, GaussianPath
from .fingerprint import check_model

__all__ = ["Node", "TimeGrid", "time_grid", "check_grid", "build_grid", "GridArguments", "SPACINGS", "FAMILIES",
           "path_family"]

KARRAS_RHO = 7.0
FLOW_TOP_OFFSET = 1e-6  # the flow grid's first node on a path with α(T) = 0: σ = 1 - δ on rectified flow
SPACINGS = ("uniform", "quadratic", "logsnr", "geometric", "karras", "flow", "leading", "trailing")


class Transition(NamedTuple):
    """The forward move from a node ``b`` to a noisier node ``a`` of one Gaussian path and DDPM's posterior of it:

        x_a = r·x_b + √v·z,   r = scale_a/scale_b,   v = std_a² − r² std_b²,
        q(x_b | x_a, x_0) = N(c_x·x_a + c_0·x_0, β̃),   c_x = r std_b²/std_a²,   c_0 = scale_b v/std_a²,
        β̃ = std_b² v/std_a²

    (on DDPM's chain ``r = √α_i``, ``v = β_i``; on VE ``r = 1``, ``v = σ_a² − σ_b²``; from rectified flow's exact
    top ``r = 0``, ``v = std_a²``). The fields are floats, or tensors when built from tensors (``between``)."""

    r: float
    v: float
    c_x: float
    c_0: float
    posterior_var: float

    @classmethod
    def between(cls, scale_a, std_a, scale_b, std_b) -> "Transition":
        r = scale_a / scale_b
        v = std_a**2 - r**2 * std_b**2
        return cls(r, v, r * std_b**2 / std_a**2, scale_b * v / std_a**2, std_b**2 * v / std_a**2)


class Node(NamedTuple):
    t: float
    scale: float
    std: float
    d_scale: Optional[float] = None  # α'(t); None on a data node or a node of unknown derivatives
    d_std: Optional[float] = None    # σ'(t)

    @property
    def is_data(self) -> bool:
        return self.std == 0.0

    @property
    def noise_level(self) -> float:
        """The noise level ``std/scale`` (0 at the data node, ``inf`` where ``scale = 0``)."""
        return self.std / self.scale if self.scale > 0 else math.inf

    @property
    def lam(self) -> float:
        """The half log-SNR ``λ = log(scale/std)`` (``+inf`` at the data node, ``-inf`` where ``scale = 0``)."""
        if self.std == 0:
            return math.inf
        return math.log(self.scale / self.std) if self.scale > 0 else -math.inf

    def transition(self, b: "Node") -> Transition:
        """The forward move from the less noisy node ``b`` to this one (``Transition``)."""
        return Transition.between(self.scale, self.std, b.scale, b.std)


DATA_NODE = Node(0.0, 1.0, 0.0)
GRID_FORMAT = "sgm.TimeGrid"
GRID_VERSION = 2  # version 1 held [t, scale, std] nodes; version 2 adds [d_scale, d_std] (null when unknown)


def path_nodes(sde: GaussianPath, times: torch.Tensor) -> list[Node]:
    """Nodes at the float64 ``times`` with the path's ``(α, σ, α', σ')``."""
    values = (times, sde.alpha(times), sde.sigma(times), sde.d_alpha(times), sde.d_sigma(times))
    return [Node(*v) for v in zip(*(torch.as_tensor(v, dtype=torch.float64).tolist() for v in values))]


@dataclass(frozen=True)
class TimeGrid:
    """Nodes in sampling order (noise decreasing); ``nodes[-1].is_data`` when it ends with denoising.

    ``sde``: the ``repr`` of the path whose marginal the nodes carry (``None``: unknown, accepted with any path);
    ``info``: a read-only record of how the grid was made (JSON values; not part of equality).
    """

    nodes: tuple[Node, ...]
    sde: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.sde is not None and not isinstance(self.sde, str):
            raise TypeError(f"sde must be the path's repr (a str) or None, got {type(self.sde).__name__}")
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
        if any(n.scale <= 0 for n in self.noisy[1:]):
            raise ValueError("only the first node may have scale 0 (the exact top of a path with α(T) = 0)")

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

    def check_sde(self, sde: GaussianPath) -> None:
        """Raise ``ValueError`` when the grid was made for a path other than ``sde`` (its nodes carry that path's
        ``(scale, std)``, so a run with ``sde`` would mix two processes)."""
        if self.sde is not None and self.sde != repr(sde):
            raise ValueError(f"grid was made for {self.sde}, not for sde={sde!r}; "
                             f"build or optimise a grid for this path")

    def as_dict(self) -> dict:
        """The grid as JSON values: ``format``, ``version``, ``sde``, nodes ``[t, scale, std, d_scale, d_std]``,
        ``info`` (what ``save`` writes; ``from_dict`` reads it)."""
        return {"format": GRID_FORMAT, "version": GRID_VERSION, "sde": self.sde,
                "nodes": [list(n) for n in self.nodes], "info": dict(self.info)}

    def check_model(self, model, sde: GaussianPath, device=None) -> None:
        """Raise ``ValueError`` when the grid was made for another path than ``sde`` or calibrated for another model
        than ``model`` (``info["model"]``: the fingerprint ``optimize_grid`` records — class, parameter count,
        predicted kind and outputs on a fixed probe batch, see ``sgm.samplers.fingerprint``). A grid without
        a fingerprint is accepted for any model."""
        self.check_sde(sde)
        check_model(self.info.get("model"), model, sde, device, what="grid")

    def save(self, path: str | os.PathLike) -> None:
        """Write the grid to ``path`` as JSON: nodes ``[t, scale, std, d_scale, d_std]`` (floats round-trip exactly),
        ``sde``, ``info``."""
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=1, allow_nan=False)

    @classmethod
    def load(cls, path: str | os.PathLike, sde: GaussianPath | None = None, model=None) -> "TimeGrid":
        """Read a grid written by ``save``; with ``sde``, refuse (``ValueError``) a grid made for another path, and with
        ``model`` too, one calibrated for another model (``check_model``)."""
        if model is not None and sde is None:
            raise ValueError("TimeGrid.load(path, model=...) needs the path too: TimeGrid.load(path, sde, model)")
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)!r} is not a grid file (invalid JSON: {e})") from None
        grid = cls.from_dict(data, sde, source=repr(os.fspath(path)))
        if model is not None:
            grid.check_model(model, sde)
        return grid

    @classmethod
    def from_dict(cls, data, sde: GaussianPath | None = None, source: str = "grid") -> "TimeGrid":
        """The grid of ``as_dict``'s values (``source`` names them in errors); with ``sde``, refuse (``ValueError``) a
        grid made for another path."""
        if sde is not None and not isinstance(sde, GaussianPath):
            raise TypeError(f"sde must be an sgm path or None, got {type(sde).__name__}")
        if not isinstance(data, dict) or data.get("format") != GRID_FORMAT:
            raise ValueError(f"{source} is not an sgm time grid file (no format {GRID_FORMAT!r})")
        if data.get("version") not in (1, GRID_VERSION):
            raise ValueError(f"{source} has grid format version {data.get('version')!r}; "
                             f"this sgm reads versions 1 and {GRID_VERSION}")
        nodes = data.get("nodes")

        def number(v, optional: bool) -> bool:
            return (optional and v is None) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and math.isfinite(v))

        if not isinstance(nodes, list) or not all(
                isinstance(n, list) and len(n) in (3, 5) and all(number(v, k >= 3) for k, v in enumerate(n))
                for n in nodes):
            raise ValueError(f"{source}: nodes must be a list of finite [t, scale, std(, d_scale, d_std)]")
        if any(n[1] < 0 or n[2] < 0 for n in nodes):
            raise ValueError(f"{source}: every node needs scale >= 0 and std >= 0")
        grid = cls(tuple(Node(*(None if v is None else float(v) for v in n)) for n in nodes), data.get("sde"),
                   data.get("info") or {})
        if sde is not None:
            grid.check_sde(sde)
        return grid

    @classmethod
    def from_times(cls, sde: GaussianPath, times: Sequence[float], denoise: bool = True) -> "TimeGrid":
        """Nodes at the given decreasing continuous times, with the path's marginal and its derivatives at each."""
        t = torch.as_tensor(list(map(float, times)), dtype=torch.float64)
        if t.dim() != 1 or t.numel() < 1:
            raise ValueError("times must be a non-empty 1-D sequence")
        if float(t.max()) > sde.T or float(t.min()) <= 0:
            raise ValueError(f"times must lie in (0, T={sde.T}], got [{float(t.min())}, {float(t.max())}]")
        return cls(tuple(path_nodes(sde, t)) + ((DATA_NODE,) if denoise else ()), repr(sde))

    @classmethod
    def from_chain(cls, chain: DiscreteChain, indices: Sequence[int], denoise: bool = True,
                   sde: GaussianPath | None = None) -> "TimeGrid":
        """Nodes at the given decreasing timesteps of a discrete chain, with the chain's ``(scale, std)``. With the
        path ``sde`` the nodes get the derivatives of the path's moment equations at their time applied to the
        chain's marginal, ``d_scale = f·scale``, ``d_std = (f·std² + ½g²)/std`` (the path's ``α', σ'`` on a node of the
        path itself; at a node of scale 0, where both are ``0·∞``, the path's ``α', σ'``), and the grid records the
        path."""
        idx = [integer("index", i, 0, len(chain) - 1) for i in indices]
        t = torch.tensor([float(chain.t[i]) for i in idx], dtype=torch.float64)
        scale, std = chain.scale[idx].to(torch.float64), chain.std[idx].to(torch.float64)
        if sde is None:
            nodes = [Node(*v) for v in zip(t.tolist(), scale.tolist(), std.tolist())]
        else:
            f, g2 = sde.drift_coefficient(t), sde.diffusion_squared(t)
            d_scale, d_std = f * scale, (f * std**2 + 0.5 * g2) / std
            # a node of scale 0 (the exact top of a path with α(T) = 0) makes both 0·∞: the path's own α', σ' there
            top = scale == 0
            d_scale = torch.where(top, sde.d_alpha(t).to(torch.float64), d_scale)
            d_std = torch.where(top, sde.d_sigma(t).to(torch.float64), d_std)
            nodes = [Node(*v) for v in zip(t.tolist(), scale.tolist(), std.tolist(), d_scale.tolist(), d_std.tolist())]
        return cls(tuple(nodes) + ((DATA_NODE,) if denoise else ()), None if sde is None else repr(sde))


FAMILIES = ("vp", "ve", "rf")


def path_family(sde: GaussianPath) -> str:
    """Which family's measured default grids suit a path: ``"ve"`` where ``α ≡ 1`` (VE, EDM), ``"rf"`` where
    ``α + σ ≡ 1`` (rectified flow and its shifts), ``"vp"`` otherwise (VP, sub-VP, cosine, a table, …)."""
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64) * sde.T
    alpha, sigma = sde.marginal(t)
    if bool(torch.allclose(alpha, torch.ones_like(alpha))):
        return "ve"
    if bool(torch.allclose(alpha + sigma, torch.ones_like(alpha))):
        return "rf"
    return "vp"


def check_eps(eps, sde: GaussianPath, t_max: float | None = None) -> float:
    """``eps`` (``None``: the path's ``default_eps``) in ``(0, t_max)``."""
    top = sde.T if t_max is None else t_max
    eps = sde.default_eps if eps is None else real("eps", eps)
    if not 0 < eps < top:
        raise ValueError(f"eps must lie in (0, {'T' if t_max is None else 't_max'}={top}), got {eps}")
    return eps


def check_t_max(t_max, sde: GaussianPath) -> float:
    """``t_max`` (``None``: ``T``) in ``(0, T]``."""
    return sde.T if t_max is None else real("t_max", t_max, 0.0, sde.T, open_low=True)


def check_spacing(spacing) -> str:
    return choice("spacing", spacing, SPACINGS)


class GridArguments(NamedTuple):
    """``time_grid``'s arguments, checked, with the defaults filled in (``eps``, ``t_max``)."""
    sde: GaussianPath
    steps: int
    spacing: str
    eps: float
    denoise: bool
    train_steps: int
    rho: float
    t_max: float


def check_grid(sde: GaussianPath, steps: int, spacing: str = "uniform", eps: float | None = None,
               denoise: bool = True, train_steps: int = 1000, rho: float = KARRAS_RHO,
               t_max: float | None = None) -> GridArguments:
    """``time_grid``'s arguments checked, each error naming its argument: what ``build_grid`` takes."""
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath), got {type(sde).__name__}")
    steps = integer("steps", steps)
    t_max = check_t_max(t_max, sde)
    eps = check_eps(eps, sde, t_max)
    check_spacing(spacing)
    rho = positive("rho", rho)
    flag("denoise", denoise)
    if spacing in ("leading", "trailing"):
        train_steps = integer("train_steps", train_steps)
        if steps > train_steps:
            raise ValueError(f"steps must be <= train_steps={train_steps} for spacing={spacing!r}, got {steps}")
    return GridArguments(sde, steps, spacing, eps, denoise, train_steps, rho, t_max)


def time_grid(sde: GaussianPath, steps: int, spacing: str = "uniform", eps: float | None = None,
              denoise: bool = True, train_steps: int = 1000, rho: float = KARRAS_RHO,
              t_max: float | None = None) -> TimeGrid:
    """The grid of ``steps`` noise levels for ``sde`` from ``t_max`` (``T``) to ``eps`` (the path's
    ``default_eps``); see the module docstring for the spacings."""
    return build_grid(check_grid(sde, steps, spacing, eps, denoise, train_steps, rho, t_max))


def build_grid(args: GridArguments) -> TimeGrid:
    """``time_grid`` of arguments ``check_grid`` has checked (an entry point that checked them once calls this)."""
    sde, steps, spacing, eps, denoise, train_steps, rho, t_max = args
    if spacing == "flow":
        t = [t_max - (t_max - eps) * k / steps for k in range(steps)]
        if math.isinf(float(sde.noise_level(torch.tensor([t_max], dtype=torch.float64)))):
            level = torch.tensor([(1 - FLOW_TOP_OFFSET) / FLOW_TOP_OFFSET], dtype=torch.float64)
            t[0] = float(sde.time_at_noise_level(level))
        return TimeGrid.from_times(sde, t, denoise)
    if spacing in ("leading", "trailing"):
        if spacing == "leading":
            idx = [k * (train_steps // steps) for k in range(steps)][::-1]
        else:
            idx = [round(train_steps - k * train_steps / steps) - 1 for k in range(steps)]
        return TimeGrid.from_chain(sde.discretize(train_steps), idx, denoise, sde)
    u = torch.linspace(1, 0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    if spacing in ("logsnr", "geometric", "karras"):
        top = torch.tensor([t_max], dtype=torch.float64)
        infinite = steps > 1 and math.isinf(float(sde.noise_level(top)))
        if infinite:  # α(t_max) = 0: t_max first, the other nodes spaced from the uniform grid's second node
            top, u = top - (t_max - eps) / (steps - 1), u[1:] * (steps - 1) / max(steps - 2, 1)
            u = u if steps > 2 else torch.zeros(1, dtype=torch.float64)
        lo, hi = sde.noise_level(torch.cat([torch.tensor([eps], dtype=torch.float64), top])).tolist()
        if spacing == "karras":
            sigmas = (lo ** (1 / rho) + (hi ** (1 / rho) - lo ** (1 / rho)) * u) ** rho
        else:
            sigmas = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        t = torch.as_tensor(sde.time_at_noise_level(sigmas), dtype=torch.float64).clamp(eps, t_max)
        if infinite:
            t = torch.cat([torch.tensor([t_max], dtype=torch.float64), t])
            if steps > 2:
                t[1] = float(top)
        else:
            t[0] = t_max
        if steps > 1:
            t[-1] = eps
        return TimeGrid.from_times(sde, t.tolist(), denoise)
    if spacing == "quadratic":
        u = u**2
    return TimeGrid.from_times(sde, (eps + (t_max - eps) * u).tolist(), denoise)
