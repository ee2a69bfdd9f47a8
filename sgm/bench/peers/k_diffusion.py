"""k-diffusion's stochastic samplers as peers of the stochastic leg, driven by the exact denoiser.

**The file.** k-diffusion's samplers live in one file, ``k_diffusion/sampling.py``, whose package imports
(torchvision, kornia, wandb, …) sgm does not need; ``sampling_file`` finds it — the ``SGM_K_DIFFUSION`` environment
variable (a path to ``sampling.py``), else the installed ``k_diffusion`` package's copy (``pip install --no-deps
k-diffusion``), found without running the package's ``__init__`` — and ``load`` runs that file alone, as the
module ``_k_diffusion.sampling`` of a stand-in package whose ``utils`` has the one helper the file uses
(``append_dims``). Without the file the peer is not ``available``.

**The runs.** Each sampler of ``SAMPLERS`` on each schedule of ``SCHEDULES`` (Karras, ρ = 7, and exponential σ)
between the problem chain's lowest and highest noise levels, with a final ``σ = 0``. In k-diffusion's variables
``x̃ = x/α`` every path is the VE one, ``x̃ = x₀ + σε``, and the exact denoiser is Tweedie's
``D(x̃, σ) = x̃ + σ² ∇log p_σ(x̃)``, ``p_σ = p₀ * N(0, σ²I)``. A run starts as k-diffusion's users start, from
``x̃ = σ_max·z`` (the problem's ``z``), and draws its noise from k-diffusion's own ``BrownianTreeNoiseSampler``
seeded ``seed`` — the default of its SDE samplers; the ancestral ones use it too (their draws, increments over
disjoint intervals, are then independent normals, as their default ``randn_like``), so every run is reproducible.
The steps for a budget are the most whose run makes at most ``nfe`` denoiser calls (``calls``, counted on a dry run:
a second-order step costs 2, a last step to ``σ = 0`` 1).

**The strong error** (``strong_error``, ``bench.strong``): a run of the first ``m`` draws against the same sampler and
schedule within the reference budget, both with the tree of one seed over those ``m`` draws: the tree spans the
chain's ``[σ_min, σ_max]`` whatever the step count, so both runs see one Brownian path.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..judge import STOCHASTIC_METRICS, failed, rms_distance
from ..problems import Problem

__all__ = ["ENV", "SAMPLERS", "SCHEDULES", "Config", "sampling_file", "available", "load", "configs", "sigmas",
           "calls", "steps_for_nfe", "denoiser", "run", "stochastic_rows", "stochastic_rerun", "strong_error"]

ENV = "SGM_K_DIFFUSION"
SAMPLERS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")
SCHEDULES = ("karras", "exponential")
_MODULE = "_k_diffusion.sampling"


@dataclass(frozen=True)
class Config:
    """One k-diffusion configuration: its row ``label``, the function ``sample_{sampler}`` and the ``schedule``."""

    label: str
    sampler: str
    schedule: str


def sampling_file() -> Path | None:
    """k-diffusion's ``sampling.py``: ``$SGM_K_DIFFUSION``, else the installed package's; None if neither exists."""
    if os.environ.get(ENV):
        path = Path(os.environ[ENV])
        return path if path.is_file() else None
    try:
        spec = importlib.util.find_spec("k_diffusion")  # a top-level package's spec: its __init__ does not run
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "sampling.py"
    return path if path.is_file() else None


def available() -> bool:
    """Whether k-diffusion's ``sampling.py`` is found and loads (its imports: scipy, torchdiffeq, torchsde, tqdm)."""
    try:
        load()
    except (ImportError, OSError, SyntaxError):
        return False
    return True


def _append_dims(x: Tensor, dims: int) -> Tensor:
    """``x`` with trailing singleton dimensions up to ``dims`` (the only helper ``sampling.py`` takes from utils)."""
    if x.ndim > dims:
        raise ValueError(f"x has {x.ndim} dimensions, more than {dims}")
    return x.reshape(tuple(x.shape) + (1,) * (dims - x.ndim))


def load() -> types.ModuleType:
    """k-diffusion's ``sampling.py`` run alone as ``_k_diffusion.sampling`` (once; ``ImportError`` if not found)."""
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    path = sampling_file()
    if path is None:
        raise ImportError(f"k-diffusion's sampling.py not found: set {ENV} to its path or pip install --no-deps "
                          "k-diffusion")
    package = types.ModuleType("_k_diffusion")
    package.__path__ = []
    package.utils = types.SimpleNamespace(append_dims=_append_dims)
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_k_diffusion"] = package
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["_k_diffusion"]
        raise
    sys.modules[_MODULE] = module
    return module


def configs() -> list[Config]:
    """Every sampler of ``SAMPLERS`` on every schedule of ``SCHEDULES``; [] when k-diffusion is not available."""
    if not available():
        return []
    return [Config(f"k-diffusion {s}, {schedule}", s, schedule) for s in SAMPLERS for schedule in SCHEDULES]


def sigmas(schedule: str, steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """k-diffusion's ``steps`` noise levels of ``schedule`` from ``sigma_max`` down to ``sigma_min``, then 0
    (float64)."""
    kd = load()
    if schedule == "karras":
        return kd.get_sigmas_karras(steps, sigma_min, sigma_max, rho=7.0).double()
    if schedule == "exponential":
        return kd.get_sigmas_exponential(steps, sigma_min, sigma_max).double()
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def calls(config: Config, levels: Tensor) -> int:
    """The denoiser calls of ``config``'s sampler on the noise levels ``levels``, counted on a dry run (one sample,
    zero denoiser and noise)."""
    count = 0

    def zero(x, sigma):
        nonlocal count
        count += 1
        return torch.zeros_like(x)

    x = torch.zeros(1, 1, dtype=torch.float64)
    getattr(load(), f"sample_{config.sampler}")(zero, x, levels, disable=True,
                                                noise_sampler=lambda s, s_next: torch.zeros_like(x))
    return count


def steps_for_nfe(config: Config, nfe: int, sigma_min: float, sigma_max: float) -> int | None:
    """The most steps (noise levels before the final 0) whose run costs at most ``nfe`` calls; None if 1 costs
    more."""
    for steps in range(nfe, 0, -1):
        if calls(config, sigmas(config.schedule, steps, sigma_min, sigma_max)) <= nfe:
            return steps
    return None


def denoiser(target):
    """The exact denoiser ``D(x̃, σ) = x̃ + σ² ∇log p_σ(x̃)`` of ``target`` (k-diffusion's model; one σ per call)."""

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        s = float(sigma.reshape(-1)[0])
        return x + s**2 * target.perturbed_score(x, 1.0, s)

    return model


def run(config: Config, problem: Problem, nfe: int, seed: int, z: Tensor | None = None) -> tuple[Tensor, int, int]:
    """One run of ``config`` within ``nfe`` calls from ``x̃ = σ_max·z`` (default ``problem.z``), its Brownian tree
    seeded ``seed``: the samples, the steps and the calls made. ``ValueError`` when the budget buys no step."""
    kd, chain = load(), problem.chain
    sigma_min, sigma_max = float(chain.sigmas[0]), float(chain.sigmas[-1])
    steps = steps_for_nfe(config, nfe, sigma_min, sigma_max)
    if steps is None:
        raise ValueError(f"nfe={nfe} buys no step of {config.label}")
    levels = sigmas(config.schedule, steps, sigma_min, sigma_max)
    x = (problem.z if z is None else z) * levels[0]
    noise = kd.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed)
    count, exact = 0, denoiser(problem.target)

    def model(x_, sigma):
        nonlocal count
        count += 1
        return exact(x_, sigma)

    with warnings.catch_warnings():  # torchsde: the float32 ends of the tree's interval
        warnings.filterwarnings("ignore", "Should have", UserWarning)
        x = getattr(kd, f"sample_{config.sampler}")(model, x, levels, disable=True, noise_sampler=noise)
    return x, steps, count


def stochastic_rows(problem: Problem, nfes, judge, seed: int) -> list[dict]:
    """Every configuration at every budget on ``problem``, each scored by ``judge(x)`` (``STOCHASTIC_METRICS`` and
    ``diverged``), its noise seeded ``seed``; a run that raises is a diverged row with the error. None on a problem
    off VP and VE (rectified flow's chain ends at σ = ∞, no level for ``x̃ = σ_max·z``)."""
    if problem.sde_name not in ("vp", "ve"):
        return []
    return [_stochastic_row(config, problem, nfe, judge, seed) for config in configs() for nfe in nfes]


def stochastic_rerun(done: dict, problem: Problem, judge, seed: int) -> dict:
    """The configuration and budget of the stochastic row ``done`` (by its label) run again on ``problem``."""
    config = next(c for c in configs() if c.label == done["sampler"])
    return _stochastic_row(config, problem, done["nfe_budget"], judge, seed)


def _stochastic_row(config: Config, problem: Problem, nfe: int, judge, seed: int) -> dict:
    row = {"target": problem.target_name, "sde": problem.sde_name, "side": "k-diffusion", "sampler": config.label,
           "nfe_budget": nfe}
    t0 = time.perf_counter()
    try:
        x, steps, spent = run(config, problem, nfe, seed)
    except Exception as e:  # a run that breaks down is a row, not a crash
        return {**row, **failed(e, t0, keys=STOCHASTIC_METRICS)}
    return {**row, "steps": steps, "nfe": spent, "seconds": time.perf_counter() - t0, **judge(x)}


def strong_error(config: Config, problem: Problem, nfe: int, seed: int, samples: int, reference_nfe: int,
                 cache: dict | None = None) -> dict:
    """``strong_error`` (``bench.strong.rms_distance``) and ``strong_reference_steps`` of ``config`` within ``nfe``
    calls: the first ``samples`` draws against the run within ``reference_nfe`` calls, one tree seeded ``seed``;
    ``cache`` keeps each reference for the other budgets."""
    z, cache = problem.z[:samples], {} if cache is None else cache
    key = ("k-diffusion", config.label)
    if key not in cache:
        cache[key] = run(config, problem, reference_nfe, seed, z)[:2]
    ref, steps = cache[key]
    x = run(config, problem, nfe, seed, z)[0]
    return {"strong_error": rms_distance(x, ref), "strong_reference_steps": steps}
