"""The sampler registry, the per-name sampler functions and the one entry point ``sample``.

A registered name maps to a solver factory ``factory(**options) -> Solver`` (a ``Solver`` class or a function);
its keyword parameters are the sampler's options. Adding a solver is one module and one line in ``SAMPLERS``.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..device import resolve_device
from ..checks import integer
from ..paths import GaussianPath
from .base import SamplerOutput, check_state
from .grid import KARRAS_RHO, TimeGrid, time_grid
from .deis import DEIS, IPNDM
from .edm import Heun
from .langevin import AnnealedLangevin, PredictorCorrector
from .dpm import DPMSolver
from .predictors import DDIM, Ancestral, EulerMaruyama, ReverseDiffusion
from .probability_flow import ode_solver
from .reverse_sde import TorchSDE
from .solver import Callback, SeededNoise, Solver, integrate
from .uni_pc import UniPC

__all__ = ["SAMPLERS", "available", "get", "options", "solver", "sample"]

SAMPLERS: dict[str, Callable[..., Solver]] = {
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "ancestral": Ancestral,
    "ddim": DDIM,
    "ode": ode_solver,
    "sde": TorchSDE,
    "langevin": AnnealedLangevin,
    "pc": PredictorCorrector,
    "dpm_solver": DPMSolver,
    "unipc": UniPC,
    "deis": DEIS,
    "ipndm": IPNDM,
    "heun": Heun,
}


def available() -> list[str]:
    """The names ``sample`` accepts."""
    return sorted(SAMPLERS)


def _factory(name: str) -> Callable[..., Solver]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available())}")
    return SAMPLERS[name]


def options(name: str) -> list[str]:
    """The keyword options of sampler ``name``."""
    params = inspect.signature(_factory(name)).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def solver(name: str, **options_) -> Solver:
    """The solver registered as ``name`` with the given options; it declares ``order``, ``evals_per_step``,
    ``stochastic`` and ``nfe(steps)``."""
    factory = _factory(name)
    unknown = sorted(set(options_) - set(options(name)))
    if unknown:
        raise TypeError(f"sampler {name!r} takes no option(s) {unknown}; its options: {options(name)}")
    return factory(**options_)


def get(name: str) -> Callable[..., SamplerOutput]:
    """The sampler function ``fn(score, sde, x, grid, *, generator=None, progress=False, callback=None,
    **options) -> (x, nfe)`` of ``name``: ``integrate`` with ``solver(name, **options)``."""
    factory = _factory(name)

    def run(score, sde: GaussianPath, x: torch.Tensor, grid: TimeGrid, *, generator: torch.Generator | None = None,
            progress: bool = False, callback: Callback | None = None, **options_) -> SamplerOutput:
        return integrate(solver(name, **options_), score, sde, x, grid, generator=generator, progress=progress,
                         callback=callback)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"{factory.__doc__}\n\nOptions: {', '.join(options(name))}."
    return run


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(f"shape must be a non-empty tuple of ints (batch, ...), got {shape!r}")
    try:
        return tuple(integer("shape", n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be a non-empty tuple of ints (batch, ...), got {shape!r}") from None
    except ValueError:
        raise ValueError(f"shape must have positive sizes, got {tuple(shape)}") from None


def sample(score, sde: GaussianPath, shape, sampler: str = "euler_maruyama", steps: int = 500, *,
           generator: torch.Generator | None = None, spacing: str = "uniform", eps: float | None = None,
           denoise: bool = True, train_steps: int = 1000, rho: float = KARRAS_RHO, t_max: float | None = None,
           grid: TimeGrid | None = None, x_init: torch.Tensor | None = None, dtype: torch.dtype | None = None,
           device=None, progress: bool = False, callback: Callback | None = None, seeds=None,
           **options_) -> SamplerOutput:
    """Draw samples of ``shape`` by solving the path ``sde`` backwards with the model ``score(x, t)`` (a score
    function, or any model declaring what it ``predicts``: see ``sgm.predictions``).

    ``steps`` noise levels on a ``spacing`` grid from ``t_max`` (``T``) to ``eps`` (the path's ``default_eps``; see
    ``sgm.samplers.grid``; ``rho`` for ``karras``), ending with Tweedie's denoising step when ``denoise`` — or any
    ready ``grid`` (a ``TimeGrid``: user-made, precomputed, optimised) instead. ``x_T`` is ``x_init`` or a prior draw from ``generator``
    (drawn first, then the sampler's noise in step order). ``callback(x, node, prediction)`` runs after each
    step (see ``integrate``). ``options_`` go to the sampler (``sgm.samplers.options(name)`` lists them).
    ``seeds`` (one int per sample, instead of ``generator``): sample ``i`` draws its ``x_T`` and all its noise
    from its own stream seeded ``seeds[i]`` (``SeededNoise``), so it does not depend on the batch it is in.
    Returns ``(x, nfe)``.
    """
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath: VPSDE, VESDE, RectifiedFlow, …), "
                        f"got {type(sde).__name__}")
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    shape = _check_shape(shape)
    if grid is None:
        grid = time_grid(sde, steps, spacing, eps, denoise, train_steps, rho, t_max)
    elif not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    elif grid.noisy[0].t > sde.T:
        raise ValueError(f"grid starts at t={grid.noisy[0].t}, after the SDE's T={sde.T}")
    method = solver(sampler, **options_)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seeds is not None and generator is not None:
        raise ValueError("give seeds or a generator, not both")
    if x_init is not None:
        x_init = check_state(x_init)
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape}, got {tuple(x_init.shape)}")
        dtype = x_init.dtype if dtype is None else dtype
        device = x_init.device if device is None else device
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = (generator.device if generator is not None else torch.device("cpu")) if device is None \
        else resolve_device(device)
    if grid.info.get("model") is not None:  # an optimised grid is refused for another model than its own
        grid.check_model(score, sde, device)
    noise = None if seeds is None else SeededNoise(seeds, torch.empty(shape, dtype=dtype, device=device))
    if x_init is not None:
        x = x_init.to(dtype=dtype, device=device)
    elif noise is not None:
        x = sde.prior_std * noise()  # x_T ~ N(0, prior_std² I), as prior_sample, row i from stream i
    else:
        x = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    return integrate(method, score, sde, x, grid, generator=generator, progress=progress, callback=callback,
                     noise=noise)
