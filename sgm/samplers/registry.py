"""The sampler registry and the one entry point ``sample``."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..sde import SDE, _check_steps
from .base import SamplerOutput, check_state
from .grid import check_eps, check_spacing, time_grid
from .langevin import langevin, pc
from .predictors import ancestral, ddim, euler_maruyama, reverse_diffusion
from .probability_flow import ode
from .reverse_sde import sde

__all__ = ["SAMPLERS", "available", "get", "sample"]

SAMPLERS: dict[str, Callable[..., SamplerOutput]] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "ddim": ddim,
    "ode": ode,
    "sde": sde,
    "langevin": langevin,
    "pc": pc,
}


def available() -> list[str]:
    """The names ``sample`` accepts."""
    return sorted(SAMPLERS)


def get(name: str) -> Callable[..., SamplerOutput]:
    """The sampler function registered as ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available())}")
    return SAMPLERS[name]


def options(name: str) -> list[str]:
    """The keyword options of sampler ``name`` (beyond ``generator`` and ``progress``)."""
    params = inspect.signature(get(name)).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("generator", "progress")]


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise TypeError(f"shape must be a non-empty tuple of ints (batch, ...), got {shape!r}")
    if any(n < 1 for n in shape):
        raise ValueError(f"shape must have positive sizes, got {tuple(shape)}")
    return tuple(shape)


def sample(score, sde: SDE, shape, sampler: str = "euler_maruyama", steps: int = 500, *,
           generator: torch.Generator | None = None, spacing: str = "uniform", eps: float = 1e-3,
           denoise: bool = True, train_steps: int = 1000, x_init: torch.Tensor | None = None,
           dtype: torch.dtype | None = None, device=None, progress: bool = False, **options_) -> SamplerOutput:
    """Draw samples of ``shape`` by solving ``sde`` backwards with the score function ``score(x, t)``.

    ``steps`` noise levels on a ``spacing`` grid from ``T`` to ``eps`` (see ``sgm.samplers.grid``), ending
    with Tweedie's denoising step when ``denoise``. ``x_T`` is ``x_init`` or a prior draw from
    ``generator`` (drawn first, then the sampler's noise in step order). ``options_`` go to the sampler
    (``sgm.samplers.options(name)`` lists them). Returns ``(x, nfe)``.
    """
    fn = get(sampler)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sgm SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    shape = _check_shape(shape)
    steps = _check_steps("steps", steps)
    check_eps(eps, sde.T)
    check_spacing(spacing)
    unknown = sorted(set(options_) - set(options(sampler)))
    if unknown:
        raise TypeError(f"sampler {sampler!r} takes no option(s) {unknown}; its options: {options(sampler)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if x_init is not None:
        x_init = check_state(x_init)
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape}, got {tuple(x_init.shape)}")
        dtype = x_init.dtype if dtype is None else dtype
        device = x_init.device if device is None else device
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    grid = time_grid(sde, steps, spacing, eps, denoise, train_steps)
    if x_init is None:
        x = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    else:
        x = x_init.to(dtype=dtype, device=device)
    return fn(score, sde, x, grid, generator=generator, progress=progress, **options_)
