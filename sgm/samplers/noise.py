"""Where the samplers' randomness comes from: ``noise(t0, t1)`` is a standard normal shaped like the state.

A solver names the interval of path time ``[t1, t0]`` each draw drives (``t0 > t1``: the transition or sub-step it
makes), or none for a draw that is not a Brownian increment (a corrector's, a Langevin step's). A noise source
answers:

- ``Noise(generator)``: one ``randn`` of the state's shape per call, in call order (the interval is ignored);
- ``SeededNoise(seeds)``: the same order, row ``i`` from its own counter-based stream of seed ``seeds[i]``, so a
  sample is the same whatever batch it is drawn in (below);
- ``BrownianNoise(generator | seeds, tol=1e-4)``: one Brownian path ``W`` per sample over path time ``[0, T]``, and
  ``noise(t0, t1) = (W(t0) - W(t1))/√(t0 - t1)``; so runs of 10, 20 or 1000 steps from the same source are driven by
  the same path (strong errors are measurable, NFE curves share their noise). A draw with no interval comes from the
  generator in call order (``Noise``'s) or from the per-sample streams (``SeededNoise``'s).

Noise order: ``sgm.sample`` draws ``x_T`` first (one draw of the full shape), then the solver's draws in the order
its updates are made; ``BrownianNoise(generator)`` takes one 64-bit draw from the generator when it is made (by
``sgm.sample(noise="brownian")``: after ``x_T``).

**Counter-based streams** (``SeededNoise``, and the per-sample Brownian paths). Element ``j`` of draw ``c`` of the
sample with seed ``s`` in stream ``tag`` is a fixed function of ``(s, tag, c, j)``, computed for the whole batch at
once in int64 arithmetic (one ``randn``'s cost, not a Python loop over samples). With ``mix`` SplitMix64's
finaliser (Stafford's mix 13, a bijection of 64-bit words) and ``γ = 0x9E3779B97F4A7C15`` (all mod 2⁶⁴):

    key = mix(mix((s + 1)·γ) + tag·γ),          h = mix(key XOR (c·2³² + p)·γ)           (pair p = 0 … P - 1)
    u = (⌊h/2³²⌋ + ½)/2³²,  θ = 2π (h mod 2³²)/2³²,   element p = √(-2 ln u) cos θ,  element P + p = √(-2 ln u) sin θ

(Box–Muller; ``P = ⌈D/2⌉`` pairs for ``D`` elements per sample). A sample's stream does not depend on its batch, its
device (to the rounding of ``log``, ``cos``, ``sin``) or the order of the batch. Uniforms have 32 bits, so no normal
exceeds 6.7 in size (a probability of 2·10⁻¹¹ under N(0, 1)). ``tests/test_noise.py`` checks the formula against a
pure-Python transcription and the normals' moments, their distribution (Kolmogorov–Smirnov and χ² on the uniforms)
and their independence across seeds, draws and elements.

**Brownian paths** (``BrownianNoise``): a virtual Brownian tree (Li et al. 2020; as diffrax's
``VirtualBrownianTree``, k-diffusion's ``BrownianTreeNoiseSampler``) whose values are computed on demand from the
seed, so memory stays bounded and ``W(t)`` is a fixed function of ``t``. ``W(T) = √T·Z`` and each interval
``[s, u]`` of the tree is split at ``m`` by the Brownian bridge

    W(m) = W(s) + (m - s)/(u - s)·(W(u) - W(s)) + √((m - s)(u - m)/(u - s))·Z_node,

with one standard normal per node: ``[0, u]`` at ``u/2`` (octaves ``[T 2^-(k+1), T 2^-k]``, 40 deep) and an octave's
intervals at the geometric mean ``√(s u)``, ``L = ⌈log2(ln 2/tol)⌉`` levels deep, so that the leaves have a relative
width ``ln(u/s) ≤ tol`` at every scale (grids uniform in λ or σ are as well resolved near the data as grids uniform
in t near ``T``). Inside a leaf, ``W(t)`` is the bridge with one more normal per leaf (diffrax's "sqrt" spline), so
every ``W(t)`` has the exact N(0, t) law, and the ``W`` at any set of times of which no two lie inside one leaf —
e.g. times whose ratios are all at least ``e^tol`` — is exactly a Brownian motion's. A query costs the normals of
the levels below the last query's branch (about ``L - log2(Δ log t/ln 2) + 1``): measured in
``benchmarks/noise_speed.py``. With a generator each node's normals are one ``randn`` from a generator seeded by
``(entropy, node)``; with seeds they come from the counter-based streams (tag 2; draws with no interval use tag 1).
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch
from torch import Tensor

import torchsde

from ..checks import positive
from ..device import randn

__all__ = ["Noise", "SeededNoise", "BrownianNoise", "make_noise", "splitmix64", "counter_normals", "stream_keys"]

_U64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
FREE, TREE = 1, 2  # stream tags: draws with no interval; the Brownian tree's node normals


def _signed(c: int) -> int:
    """A 64-bit word as the int64 torch stores."""
    c &= _U64
    return c - (1 << 64) if c >> 63 else c


def splitmix64(z: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2⁶⁴):
    ``z ^= z >> 30; z *= C1; z ^= z >> 27; z *= C2; z ^= z >> 31``."""
    z &= _U64
    z = ((z ^ (z >> 30)) * _C1) & _U64
    z = ((z ^ (z >> 27)) * _C2) & _U64
    return z ^ (z >> 31)


def _mix_(z: Tensor, scratch: Tensor) -> Tensor:
    """``splitmix64`` in place on an int64 tensor read as 64-bit words, with ``scratch`` (a tensor like ``z``) for the
    shifted words (int64 products wrap mod 2⁶⁴; the shifts are made logical by masking the sign extension)."""
    for shift, factor in ((30, _C1), (27, _C2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=scratch).bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(scratch)
        if factor is not None:
            z.mul_(_signed(factor))
    return z


def check_seeds(seeds) -> list[int]:
    try:
        seeds = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be a sequence of ints, one per sample, got {type(seeds).__name__}") from None
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63 for s in seeds):
        raise ValueError(f"seeds must be ints in [0, 2**63), one per sample, got {seeds[:8]!r}"
                         f"{'…' if len(seeds) > 8 else ''}")
    return seeds


def _seeds_hash(seeds: list[int]) -> int:
    """A 63-bit seed from all the seeds (for what is drawn once for the batch)."""
    return int.from_bytes(hashlib.sha256(repr(seeds).encode()).digest()[:8], "little") >> 1


def stream_keys(seeds, tag: int, device=None) -> Tensor:
    """The ``(n, 1)`` int64 keys ``mix(mix((s + 1)·γ) + tag·γ)`` of the seeds' streams ``tag``."""
    keys = [_signed(splitmix64(splitmix64((s + 1) * GOLDEN) + tag * GOLDEN)) for s in seeds]
    return torch.tensor(keys, dtype=torch.int64, device=device).unsqueeze(1)


_PAIRS: dict = {}  # (P, device) -> p·γ for p < P, the pairs' part of the counter


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def counter_normals(keys: Tensor, draw: int, numel: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Draw ``draw`` of the streams of ``keys`` (``stream_keys``): ``(n, numel)`` standard normals by the formula in
    the module docstring, computed in float64 for float64 and in float32 otherwise, returned in ``dtype``."""
    pairs = (numel + 1) // 2
    cached = (pairs, keys.device)
    if cached not in _PAIRS:
        if len(_PAIRS) > 16:
            _PAIRS.clear()
        _PAIRS[cached] = torch.arange(pairs, dtype=torch.int64, device=keys.device) * _signed(GOLDEN)
    h = keys ^ (_PAIRS[cached] + _signed((draw << 32) * GOLDEN))
    scratch = torch.empty_like(h)
    _mix_(h, scratch)
    ct, n = _compute_dtype(dtype), keys.shape[0]
    radius = torch.empty((n, pairs), dtype=ct, device=keys.device)
    radius.copy_(torch.bitwise_right_shift(h, 32, out=scratch).bitwise_and_(0xFFFFFFFF))
    radius.add_(0.5).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()
    angle = torch.empty_like(radius).copy_(h.bitwise_and_(0xFFFFFFFF)).mul_(2 * math.pi * 2.0**-32)
    z = torch.cat([angle.cos().mul_(radius), angle.sin_().mul_(radius)], dim=1)
    z = z[:, :numel] if 2 * pairs != numel else z
    return z if ct == dtype else z.to(dtype)


class Noise:
    """Standard normal draws shaped like the state, from ``generator``, in call order: ``noise(t0, t1, like=None)``
    (the interval ``[t1, t0]`` is checked, then ignored). Without ``x`` it is a source that ``bind`` ties to a run's
    state; ``brownian`` says whether draws over an interval are increments of one path (``BrownianNoise``)."""

    brownian = False

    def __init__(self, generator: torch.Generator | None = None, x: Tensor | None = None):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.shape = self.dtype = self.device = None
        if x is not None:
            self.shape, self.dtype, self.device = x.shape, x.dtype, x.device

    def bind(self, x: Tensor, T: float) -> "Noise":
        """This source for a run from state ``x`` on a path of horizon ``T``: itself when made for ``x``'s shape, a
        fresh copy tied to ``x`` when made without a state."""
        if self.shape is None:
            bound = self._new(x, T)
            bound.shape, bound.dtype, bound.device = x.shape, x.dtype, x.device
            return bound
        if tuple(self.shape) != tuple(x.shape):
            raise ValueError(f"noise was made for states of shape {tuple(self.shape)}, got {tuple(x.shape)}")
        return self

    def _new(self, x: Tensor, T: float) -> "Noise":
        return type(self)(self.generator)

    def _shape(self, like: Tensor | None):
        if self.shape is None:
            raise ValueError("this noise source is not tied to a state yet: pass it to sgm.sample or integrate, or "
                             "make it with x")
        return self.shape if like is None else like.shape

    @staticmethod
    def _interval(t0, t1):
        if t0 is None and t1 is None:
            return None
        if t0 is None or t1 is None:
            raise TypeError(f"noise takes both ends of its interval (t0 > t1) or neither, got t0={t0}, t1={t1}")
        t0, t1 = float(t0), float(t1)
        if not t0 > t1 >= 0:
            raise ValueError(f"noise(t0, t1) drives the interval [t1, t0] of path time: it needs t0 > t1 >= 0, got "
                             f"t0={t0}, t1={t1}")
        return t0, t1

    def __call__(self, t0: float | None = None, t1: float | None = None, *, like: Tensor | None = None) -> Tensor:
        shape = self._shape(like)
        self._interval(t0, t1)
        return self._draw(shape)

    def _draw(self, shape) -> Tensor:
        return randn(shape, self.generator, self.dtype, self.device)  # a CPU generator's draws, moved to a GPU

    def brownian_interval(self, like: Tensor, ta: float, tb: float, levy_area: str = "none"):
        """A ``torchsde`` Brownian motion over ``τ ∈ [ta, tb]`` (τ = -t) for solvers that choose their own steps or
        need Lévy areas (``sde`` with ``srk`` or ``adaptive``): a ``BrownianInterval`` seeded by one ``randint`` draw
        from the generator, made afresh for each call."""
        generator = self.generator
        entropy = int(torch.randint(2**62, (1,), generator=generator,
                                    device="cpu" if generator is None else generator.device))
        return torchsde.BrownianInterval(t0=ta, t1=tb, size=like.shape, dtype=like.dtype, device=like.device,
                                         entropy=entropy, levy_area_approximation=levy_area)


class SeededNoise(Noise):
    """Per-sample streams: row ``i`` of draw ``c`` (the ``c``-th call, from 0) is ``counter_normals`` of
    ``seeds[i]`` (stream 1), so a sample does not depend on the batch it is drawn in."""

    def __init__(self, seeds, x: Tensor | None = None):
        self.seeds = check_seeds(seeds)
        super().__init__(None, None)
        self._batch_generator, self.calls, self.keys = None, 0, None
        if x is not None:
            self._tie(x)

    def _tie(self, x: Tensor):
        if len(self.seeds) != x.shape[0]:
            raise ValueError(f"seeds must hold one seed per sample ({x.shape[0]}), got {len(self.seeds)}")
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.keys = stream_keys(self.seeds, FREE, x.device)

    def _new(self, x: Tensor, T: float) -> "SeededNoise":
        return type(self)(self.seeds, x)

    @property
    def generator(self) -> torch.Generator:
        """A batch-wide generator, for solvers that draw a batch-wide Brownian path (``sde`` with ``srk`` or
        adaptive steps): seeded by a hash of all the seeds, so such samples depend on their batch."""
        if self._batch_generator is None:
            self._batch_generator = torch.Generator(self.device or "cpu").manual_seed(_seeds_hash(self.seeds))
        return self._batch_generator

    @generator.setter
    def generator(self, value):
        self._batch_generator = value  # None from Noise.__init__: made on first use

    def _draw(self, shape) -> Tensor:
        if shape[0] != len(self.seeds):
            raise ValueError(f"per-sample noise needs a leading batch of {len(self.seeds)}, got {tuple(shape)}")
        z = counter_normals(self.keys, self.calls, math.prod(shape[1:]), self.dtype)
        self.calls += 1
        return z.reshape(shape)


class _Frame:
    """An interval ``[s, u]`` of the Brownian tree with ``W(s)``, ``W(u)`` (``ws = None``: ``s = 0``, ``W = 0``);
    ``k`` the octave, ``h`` the heap index inside it (0 on the spine ``[0, T 2^-k]``); the split and the leaf normal
    are computed on first use."""

    __slots__ = ("s", "u", "ws", "wu", "k", "h", "m", "wm", "z")

    def __init__(self, s, u, ws, wu, k, h):
        self.s, self.u, self.ws, self.wu, self.k, self.h = s, u, ws, wu, k, h
        self.m = self.wm = self.z = None


def _bridge(s: float, u: float, ws, wu: Tensor, t: float, z: Tensor) -> Tensor:
    """``W(t) = W(s) + (t - s)/(u - s)·(W(u) - W(s)) + √((t - s)(u - t)/(u - s))·z`` (``ws = None``: ``W(s) = 0``)."""
    a, c = (t - s) / (u - s), math.sqrt(max((t - s) * (u - t), 0.0) / (u - s))
    if ws is None:
        return wu.mul(a).add_(z, alpha=c)
    return ws.mul(1 - a).add_(wu, alpha=a).add_(z, alpha=c)


class _BrownianTree:
    """``W(t)`` on ``[0, T]`` with ``W(0) = 0``: the virtual Brownian tree of the module docstring. ``normals(node)``
    gives a node's ``(n, D)`` standard normals; the descent to the last query is kept (the path from the root), so a
    query costs only the levels below the branch it shares with the last one."""

    SPINE = 40  # octaves [T 2^-(k+1), T 2^-k] for k < 40; [0, T 2^-40] is one leaf

    def __init__(self, T: float, levels: int, normals: Callable[[int], Tensor]):
        self.T, self.levels, self.normals = T, levels, normals
        self.path = [_Frame(0.0, T, None, normals(0).mul_(math.sqrt(T)), 0, 0)]
        self.recent: dict[float, Tensor] = {}

    def _node(self, k: int, h: int) -> int:
        return 1 + k * (2 << self.levels) + h

    def _leaf(self, f: _Frame) -> bool:
        return f.k == self.SPINE if f.h == 0 else f.h >= 1 << self.levels

    def _child(self, f: _Frame, t: float) -> _Frame:
        if f.m is None:
            f.m = f.u / 2 if f.h == 0 else math.sqrt(f.s * f.u)
            f.wm = _bridge(f.s, f.u, f.ws, f.wu, f.m, self.normals(self._node(f.k, f.h)))
        if t < f.m:
            return _Frame(f.s, f.m, f.ws, f.wm, f.k + 1, 0) if f.h == 0 else _Frame(f.s, f.m, f.ws, f.wm, f.k, 2 * f.h)
        return _Frame(f.m, f.u, f.wm, f.wu, f.k, 1) if f.h == 0 else _Frame(f.m, f.u, f.wm, f.wu, f.k, 2 * f.h + 1)

    def __call__(self, t: float) -> Tensor:
        if t in self.recent:
            return self.recent[t]
        path = self.path
        while not path[-1].s <= t <= path[-1].u:
            path.pop()
        f = path[-1]
        while True:
            if t == f.u:
                w = f.wu
                break
            if t == f.s:
                w = torch.zeros_like(f.wu) if f.ws is None else f.ws
                break
            if self._leaf(f):
                if f.z is None:
                    f.z = self.normals(self._node(f.k, f.h))
                w = _bridge(f.s, f.u, f.ws, f.wu, t, f.z)
                break
            f = self._child(f, t)
            path.append(f)
        if len(self.recent) >= 4:
            del self.recent[next(iter(self.recent))]
        self.recent[t] = w
        return w


def levels_for(tol: float) -> int:
    """The octave depth ``L = ⌈log2(ln 2/tol)⌉`` (at least 0) whose leaves have ``ln(u/s) ≤ tol``."""
    return max(0, math.ceil(math.log2(math.log(2) / tol)))


class BrownianNoise(Noise):
    """One Brownian path per sample over path time ``[0, T]`` (the module docstring): ``noise(t0, t1)`` is
    ``(W(t0) - W(t1))/√(t0 - t1)``; a draw with no interval comes from the generator in call order (batch) or from the
    per-sample streams (seeds). ``source``: a ``torch.Generator`` (or ``None``: torch's global one), whose one 64-bit
    draw now fixes the paths, or one seed per sample (paths independent of the batch). ``tol``: the leaves' relative
    width; the path is exactly Brownian at any times whose ratios are at least ``e^tol``."""

    brownian = True

    def __init__(self, source=None, x: Tensor | None = None, *, tol: float = 1e-4, T: float | None = None):
        self.tol = positive("tol", tol)
        if self.tol >= 1:
            raise ValueError(f"tol must be < 1 (the leaves' relative width), got {tol}")
        self.levels = levels_for(self.tol)
        if source is None or isinstance(source, torch.Generator):
            super().__init__(source, None)
            self.seeds = None
            g = source
            self.entropy = int(torch.randint(2**63 - 1, (1,), generator=g, device="cpu" if g is None else g.device))
        else:
            self.seeds = check_seeds(source)
            super().__init__(None, None)
            self.entropy = None
        self.free = self.tree = self.T = None
        self._levy = None
        if x is not None:
            self._tie(x, T)

    def _tie(self, x: Tensor, T: float | None):
        if T is None:
            raise TypeError("a BrownianNoise made with x needs the path's horizon T (the tree spans [0, T])")
        self.T = positive("T", T)
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        ct, n = _compute_dtype(x.dtype), x.shape[0]
        numel = math.prod(x.shape[1:])
        if self.seeds is None:
            self.free = Noise(self.generator, x)
            node_generator = torch.Generator(x.device)

            def normals(node: int) -> Tensor:
                node_generator.manual_seed(splitmix64(self.entropy ^ ((node + 1) * GOLDEN)) >> 1)
                return torch.randn((n, numel), generator=node_generator, dtype=ct, device=x.device)
        else:
            self.free = SeededNoise(self.seeds, x)
            keys = stream_keys(self.seeds, TREE, x.device)

            def normals(node: int) -> Tensor:
                return counter_normals(keys, node, numel, ct)
        self.tree = _BrownianTree(self.T, self.levels, normals)

    def _new(self, x: Tensor, T: float) -> "BrownianNoise":
        bound = object.__new__(type(self))
        bound.__dict__.update({k: v for k, v in self.__dict__.items()})
        bound._tie(x, T)
        return bound

    def bind(self, x: Tensor, T: float) -> "Noise":
        if self.shape is not None and self.T is not None and abs(float(T) - self.T) > 1e-12 * self.T:
            raise ValueError(f"this BrownianNoise spans [0, {self.T}], but the path's horizon is T={T}")
        return super().bind(x, T)

    def __call__(self, t0: float | None = None, t1: float | None = None, *, like: Tensor | None = None) -> Tensor:
        shape = self._shape(like)
        interval = self._interval(t0, t1)
        if interval is None:
            return self.free(like=like)
        if shape[0] != self.shape[0] or math.prod(shape) != math.prod(self.shape):
            raise ValueError(f"Brownian noise is drawn like the state {tuple(self.shape)} (or a reshape of it), got "
                             f"{tuple(shape)}")
        t0, t1 = interval
        if t0 > self.T * (1 + 1e-12):
            raise ValueError(f"noise(t0, t1): t0={t0} is after the path's horizon T={self.T}")
        t0 = min(t0, self.T)
        w = self.tree(t0).sub(self.tree(t1)).mul_(1 / math.sqrt(t0 - t1))
        return w.to(self.dtype).reshape(shape)

    def brownian_interval(self, like: Tensor, ta: float, tb: float, levy_area: str = "none"):
        """For ``sde`` with ``srk``, whose steps need space-time Lévy areas this tree does not make: one torchsde
        ``BrownianInterval`` (``halfway_tree``, so a fixed function of time) over ``τ ∈ [-T, 0]`` for the whole batch,
        from this source's entropy (with seeds, from a hash of them all), the same path for every step count. (Its
        increments are not this tree's: ``srk`` runs on a path of its own.)"""
        if self._levy is None or self._levy[0] != (tuple(like.shape), like.dtype, levy_area):
            entropy = self.entropy if self.seeds is None else _seeds_hash(self.seeds)
            path = torchsde.BrownianInterval(t0=-self.T, t1=0.0, size=like.shape, dtype=like.dtype,
                                             device=like.device, entropy=entropy, levy_area_approximation=levy_area,
                                             tol=1e-7 * self.T, halfway_tree=True)
            self._levy = ((tuple(like.shape), like.dtype, levy_area), path)
        return self._levy[1]


def make_noise(noise, generator: torch.Generator | None, seeds, x: Tensor, T: float) -> Noise:
    """The run's noise, tied to the state ``x`` on a path of horizon ``T``: ``noise`` ``None`` → ``Noise(generator)``
    or ``SeededNoise(seeds)``; ``"brownian"`` → ``BrownianNoise(generator or seeds)``; a ``Noise`` (without a
    generator or seeds beside it) → itself, bound to ``x``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seeds is not None and generator is not None:
        raise ValueError("give seeds or a generator, not both")
    if noise is None:
        source = Noise(generator) if seeds is None else SeededNoise(seeds)
    elif isinstance(noise, str):
        if noise != "brownian":
            raise ValueError(f"noise must be None, 'brownian' or an sgm Noise, got {noise!r}")
        source = BrownianNoise(generator if seeds is None else seeds)
    elif isinstance(noise, Noise):
        if generator is not None or seeds is not None:
            raise ValueError("a Noise object is the run's only source of randomness: give it without a generator or "
                             "seeds")
        source = noise
    else:
        raise TypeError(f"noise must be None, 'brownian' or an sgm Noise, got {type(noise).__name__}")
    return source.bind(x, T)
