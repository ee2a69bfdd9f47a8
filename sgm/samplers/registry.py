"""The sampler registry: each name's solver factory and what the rest of sgm reads about it; the per-name sampler
functions and the one entry point ``sample``.

An ``Entry`` holds a solver factory ``factory(**options) -> Solver`` (a ``Solver`` class or a function; its keyword
parameters are the sampler's options) and its metadata:

- ``summary``: its line in the docs table (``markdown_table``);
- ``spacing``: the default grid (``sample`` uses it unless told): one spacing, or one per path family
  (``{"vp": …, "ve": …, "rf": …}``, ``grid.path_family``), the best measured for the sampler
  (``benchmarks/default_spacing.py``; docs/samplers.md);
- ``steps``, ``options``: a step count and options at which it draws an exact-score mixture to within Monte-Carlo
  error at n = 10⁴ (the distribution tests and the demo use them);
- ``smoke``: cheap valid options for quick runs at few steps;
- ``curves``: the option sets the benchmark draws NFE curves of; ``sweep``: the option axes its comparison sweeps;
- ``stochastic``: option sets under which a sampler that is deterministic by default draws noise (DDIM's η, EDM's
  churn), so that the stochastic tests and benchmarks run it too.

``configurations(name)`` lists the option sets every registry-driven test runs: the smoke options, each valid
combination of the sweep axes and each stochastic set (over the smoke options).

The tests, the benchmark, the demo and the docs table read the entries, so adding a solver is one module and one
entry in ``SAMPLERS``.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from ..checks import integer, shape as check_shape
from ..device import resolve_device
from ..paths import GaussianPath
from .base import SamplerOutput, check_state
from .ancestral_steps import DPMPP2SAncestral, EulerAncestral
from .deis import DEIS, IPNDM
from .dpm import DPMSolver
from .dpm_v3 import DPMSolverV3
from .dpm_sde import DPMSolverSDE
from .edm import Heun
from .er_sde import ERSDE
from .grid import FAMILIES, KARRAS_RHO, SPACINGS, TimeGrid, build_grid, check_grid, path_family
from .langevin import AnnealedLangevin, PredictorCorrector
from .noise import Noise, make_noise
from .predictors import DDIM, Ancestral, EulerMaruyama, ReverseDiffusion
from .probability_flow import ode_solver
from .restart import Restart
from .reverse_sde import SDE_METHODS, TorchSDE
from .sa_solver import SASolver
from .solver import Callback, Solver, check_run, integrate, run_checked
from .uni_pc import UniPC

__all__ = ["Entry", "SAMPLERS", "available", "entry", "configurations", "declaring", "get", "options", "solver",
           "sample", "budget_grid", "markdown_table"]


@dataclass(frozen=True)
class Entry:
    """A registered sampler (see the module docstring)."""

    factory: Callable[..., Solver]
    summary: str
    spacing: str | Mapping[str, str] = "uniform"
    steps: int = 100
    options: Mapping[str, Any] = field(default_factory=dict)
    smoke: Mapping[str, Any] = field(default_factory=dict)
    curves: tuple = ({},)
    sweep: Mapping[str, tuple] = field(default_factory=dict)
    stochastic: tuple = ()

    def __post_init__(self):
        spacings = self.spacing if isinstance(self.spacing, Mapping) else {family: self.spacing for family in FAMILIES}
        if set(spacings) != set(FAMILIES) or any(s not in SPACINGS for s in spacings.values()):
            raise ValueError(f"spacing must be one of {SPACINGS} or a mapping of {FAMILIES} to them, "
                             f"got {self.spacing!r}")
        object.__setattr__(self, "spacing", MappingProxyType(dict(spacings)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "smoke", MappingProxyType(dict(self.smoke)))
        object.__setattr__(self, "curves", tuple(MappingProxyType(dict(c)) for c in self.curves))
        object.__setattr__(self, "sweep", MappingProxyType(dict(self.sweep)))
        object.__setattr__(self, "stochastic", tuple(MappingProxyType(dict(c)) for c in self.stochastic))

    def default_spacing(self, sde: GaussianPath) -> str:
        """The default grid on path ``sde`` (its family's)."""
        return self.spacing[path_family(sde)]

    @property
    def deterministic(self) -> bool:
        """Whether the sampler with its default options is deterministic (some options make it stochastic)."""
        return not self.factory().stochastic


# Default grids: the best of uniform / quadratic / logsnr / karras / flow measured per path family at 5–200 NFE on
# mixtures no test uses (OMP_NUM_THREADS=1 python benchmarks/default_spacing.py --budgets 5 10 20 50 100 200; a
# spacing replaces the former default where it is at least 5% ahead; docs/samplers.md has the table).
# - The ve family (α ≡ 1) keeps its grids off flow: on EDM's σ = t the flow grid is uniform in σ and ends at
#   σ = T/steps (1.6 at 50 steps; 6.4–97× the best there, --paths edm), though on VE, whose σ is geometric in t,
#   it measured ahead for eight samplers.
# - The samplers that need α > 0 keep uniform on rectified flow: their drift α'/α = -10⁶ at flow's first node would
#   blow up, and from the exact top they are refused by name (give t_max).
# - dpm_solver_v3's defaults are measured with its EMS (benchmarks/default_spacing.py --ems): on rectified flow the
#   EMS table starts below the flow grid's first node, and of the grids inside it uniform is best.
SAMPLERS: dict[str, Entry] = {
    "euler_maruyama": Entry(EulerMaruyama, "Euler–Maruyama on the reverse SDE", steps=500,
                            spacing={"vp": "flow", "ve": "karras", "rf": "uniform"}),
    "reverse_diffusion": Entry(ReverseDiffusion, "Song et al.'s reverse-diffusion predictor", steps=500,
                               spacing={"vp": "flow", "ve": "karras", "rf": "uniform"}),
    "ancestral": Entry(Ancestral, "ancestral sampling (DDPM, SMLD): β̃, β or Analytic-DPM's variance", steps=500,
                       spacing={"vp": "flow", "ve": "karras", "rf": "flow"},
                       sweep={"variance": ("posterior", "beta")}),
    "ddim": Entry(DDIM, "DDIM (η = 0: the first-order exponential integrator of the probability-flow ODE)",
                  steps=500, spacing={"vp": "flow", "ve": "karras", "rf": "flow"}, stochastic=({"eta": 0.5},)),
    "ode": Entry(ode_solver, "the probability-flow ODE: torchdiffeq's adaptive methods or fixed-step Runge–Kutta",
                 steps=2, options={"rtol": 1e-6, "atol": 1e-6}, smoke={"method": "heun2"},
                 spacing={"vp": "quadratic", "ve": "karras", "rf": "flow"},
                 curves=({"method": "euler"}, {"method": "heun2"}, {"method": "rk4"}),
                 sweep={"method": ("euler", "midpoint", "heun2", "heun3", "rk4")}),
    "sde": Entry(TorchSDE, "the reverse SDE by torchsde (Euler, Milstein, SRK; fixed or adaptive steps)", steps=500,
                 sweep={"method": SDE_METHODS}),
    # NCSN's geometric levels: at 5–50 NFE other grids measure better, but the hundreds of levels annealed Langevin
    # needs to match a mixture (its defaults at 400 here) relax only on geometric levels (docs/samplers.md)
    "langevin": Entry(AnnealedLangevin, "annealed Langevin dynamics over the grid's noise levels (NCSN)",
                      spacing="geometric", steps=400, smoke={"n_steps_each": 2}),
    "pc": Entry(PredictorCorrector, "predictor–corrector: a one-step predictor, then Langevin corrector steps",
                steps=500, spacing={"vp": "flow", "ve": "karras", "rf": "uniform"}),
    "dpm_solver": Entry(DPMSolver, "DPM-Solver (ε̂) / DPM-Solver++ (x̂₀), orders 1–3, multistep or singlestep",
                        spacing={"vp": "quadratic", "ve": "logsnr", "rf": "flow"}, steps=50,
                        sweep={"order": (1, 2, 3), "method": ("multistep", "singlestep"),
                               "prediction": ("x0", "eps")}),
    "dpm_solver_v3": Entry(DPMSolverV3, "DPM-Solver-v3: the ODE in the parameterisation of the model's empirical "
                           "statistics (`ems`; without: DPM-Solver++'s), multistep predictor–corrector",
                           spacing={"vp": "quadratic", "ve": "logsnr", "rf": "uniform"}, steps=50,
                           sweep={"order": (1, 2, 3)}),
    "unipc": Entry(UniPC, "UniPC: the UniP predictor and the UniC corrector at no extra evaluation",
                   spacing={"vp": "quadratic", "ve": "logsnr", "rf": "flow"}, steps=50,
                   sweep={"order": (1, 2, 3), "variant": ("bh1", "bh2")}),
    "deis": Entry(DEIS, "DEIS: exponential Adams–Bashforth with ε̂ extrapolated in λ or ρ", spacing="karras",
                  steps=100, sweep={"order": (1, 2, 3), "variable": ("lambda", "rho")}),
    "ipndm": Entry(IPNDM, "improved PNDM: Adams–Bashforth in ρ with the fixed weights of equal steps",
                   spacing={"vp": "quadratic", "ve": "karras", "rf": "flow"}, steps=100,
                   sweep={"max_order": (1, 2, 3, 4)}),
    "dpm_solver_sde": Entry(DPMSolverSDE, "SDE-DPM-Solver++ 1/2M/3M (η-scaled exponent) and DPM-Solver++(2S) SDE",
                            spacing={"vp": "flow", "ve": "logsnr", "rf": "flow"}, steps=100,
                            sweep={"order": (1, 2, 3), "method": ("multistep", "singlestep"),
                                   "solver_type": ("midpoint", "heun")}),
    "euler_ancestral": Entry(EulerAncestral, "k-diffusion's Euler–ancestral: Euler in σ down to σ↓, noise up",
                             spacing={"vp": "flow", "ve": "karras", "rf": "flow"}, steps=500),
    "dpmpp_2s_ancestral": Entry(DPMPP2SAncestral, "k-diffusion's DPM-Solver++(2S) ancestral: 2S down to σ↓, noise up",
                                spacing={"vp": "flow", "ve": "karras", "rf": "flow"}, steps=100),
    "heun": Entry(Heun, "EDM's sampler: Heun's method in σ on x/α with optional churn (Algorithm 2)",
                  spacing={"vp": "flow", "ve": "karras", "rf": "flow"}, steps=100, stochastic=({"churn": 1.0},)),
    # every corrector order: diffusers' SA-Solver pairs (1, 1), (2, 2), (3, 3) run in the stochastic leg, and (1, 1),
    # (3, 3) were sgm's best at 16-D, 20 NFE once swept (docs/benchmark.md); both second order conditions: the exact
    # one leads on most grids, diffusers' h/2 on some (16-D VP, 10 NFE, 2/2 on trailing: 0.025 against 0.075)
    "sa_solver": Entry(SASolver, "SA-Solver: stochastic Adams predictor and corrector on x̂₀, orders 1–4, "
                                 "stochasticity τ(t)", spacing={"vp": "flow", "ve": "logsnr", "rf": "flow"},
                       steps=100,
                       sweep={"predictor_order": (1, 2, 3, 4), "corrector_order": (0, 1, 2, 3, 4),
                              "few_step_modification": (False, True)}),
    "er_sde": Entry(ERSDE, "ER-SDE-Solver: the extended reverse-time SDE of a noise-scale function, orders 1–3",
                    spacing={"vp": "uniform", "ve": "karras", "rf": "karras"}, steps=100, smoke={"order": 1},
                    sweep={"order": (1, 2, 3), "noise_scale": ("er_sde_5", "er_sde_1", "reverse_sde")}),
    "restart": Entry(Restart, "Restart sampling: EDM's Heun with forward re-noising jumps and Heun inner steps over "
                              "restart intervals", spacing={"vp": "uniform", "ve": "karras", "rf": "uniform"},
                     steps=200, smoke={"repeats": 1, "inner_steps": 3},
                     sweep={"intervals": ("cifar10_vp", "cifar10_edm", "stable_diffusion")}),
}


def available() -> list[str]:
    """The names ``sample`` accepts."""
    return sorted(SAMPLERS)


def entry(name: str) -> Entry:
    """The registry entry of sampler ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available())}")
    return SAMPLERS[name]


def configurations(name: str) -> list[dict]:
    """The option sets registry-driven tests run ``name`` with: its smoke options, then those updated by each valid
    combination of its sweep axes and by each of its stochastic option sets (invalid ones, a ValueError/TypeError
    from the solver, left out; no set twice)."""
    e = entry(name)
    sweeps = [dict(zip(e.sweep, values)) for values in itertools.product(*e.sweep.values())]
    out = []
    for extra in [{}] + sweeps + [dict(c) for c in e.stochastic]:
        options_ = {**e.smoke, **extra}
        try:
            solver(name, **options_)
        except (ValueError, TypeError):
            continue
        if options_ not in out:
            out.append(options_)
    return out


def declaring(kind: str) -> list[tuple[str, dict]]:
    """``(name, options)`` of every registered configuration (``configurations``) whose solver declares a ``kind``
    order (``"ode"``, ``"strong"``, ``"weak"``: ``Solver.orders``), one per distinct solver: the order tests and
    benchmarks run these."""
    if kind not in ("ode", "strong", "weak"):
        raise ValueError(f"kind must be 'ode', 'strong' or 'weak', got {kind!r}")
    out, seen = [], set()
    for name in available():
        for options_ in configurations(name):
            s = solver(name, **options_)
            if s.orders.get(kind) is not None and repr(s) not in seen:
                seen.add(repr(s))
                out.append((name, options_))
    return out


def _factory(name: str) -> Callable[..., Solver]:
    return entry(name).factory


def options(name: str) -> list[str]:
    """The keyword options of sampler ``name``."""
    params = inspect.signature(_factory(name)).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def solver(name: str, **options_) -> Solver:
    """The solver registered as ``name`` with the given options; it declares its orders, ``evals_per_step``,
    ``stochastic``, ``needs`` and ``nfe(steps)``."""
    factory = _factory(name)
    unknown = sorted(set(options_) - set(options(name)))
    if unknown:
        raise TypeError(f"sampler {name!r} takes no option(s) {unknown}; its options: {options(name)}")
    return factory(**options_)


def _orders(s: Solver) -> str:
    labels = {"ode": "ODE", "strong": "strong", "weak": "weak"}
    declared = [f"{labels[kind]} {value:g}" for kind, value in s.orders.items() if value is not None]
    return ", ".join(declared) if declared else "—"


def markdown_table() -> str:
    """The sampler table of docs/samplers.md, from the registry: name, summary, options, evaluations per step,
    declared orders and default grid (of the default options)."""
    rows = ["| sampler | what | options | evaluations per step | declared orders | default grid (per path family) |",
            "|---|---|---|---|---|---|"]
    for name in available():
        e, s = entry(name), solver(name)
        per_step = "adaptive" if s.evals_per_step is None else str(s.evals_per_step)
        opts = ", ".join(f"`{o}`" for o in options(name)) or "—"
        grids = ", ".join(f"{f} `{e.spacing[f]}`" for f in FAMILIES) if len(set(e.spacing.values())) > 1 \
            else f"`{e.spacing['vp']}`"
        rows.append(f"| `{name}` | {e.summary} | {opts} | {per_step} | {_orders(s)} | {grids} |")
    return "\n".join(rows) + "\n"


def get(name: str) -> Callable[..., SamplerOutput]:
    """The sampler function ``fn(score, sde, x, grid, *, generator=None, progress=False, callback=None,
    noise=None, **options) -> (x, nfe)`` of ``name``: ``integrate`` with ``solver(name, **options)``."""
    factory = _factory(name)

    def run(score, sde: GaussianPath, x: torch.Tensor, grid: TimeGrid, *, generator: torch.Generator | None = None,
            progress: bool = False, callback: Callback | None = None, noise: Noise | str | None = None,
            **options_) -> SamplerOutput:
        return integrate(solver(name, **options_), score, sde, x, grid, generator=generator, progress=progress,
                         callback=callback, noise=noise)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"{factory.__doc__}\n\nOptions: {', '.join(options(name))}."
    return run


def budget_grid(method: Solver, sde: GaussianPath, nfe: int, spacing: str, eps=None, denoise: bool = True,
                train_steps: int = 1000, rho: float = KARRAS_RHO, t_max=None) -> TimeGrid:
    """The grid of the most noise levels on which ``method`` spends at most ``nfe`` evaluations (``grid_nfe``:
    exact, including a cheaper step from pure noise); ``ValueError`` when none fits or the solver is adaptive."""
    nfe = integer("nfe", nfe)
    if method.evals_per_step is None:
        raise ValueError(f"nfe is a budget for a fixed-step sampler; {method.name} chooses its own steps (give rtol "
                         "and atol instead)")
    steps = method.steps_for_nfe(nfe, denoise)
    if steps is None:
        raise ValueError(f"nfe={nfe} is below the fewest evaluations {method.name} can spend ({method.nfe(2, denoise)}"
                         f" for 2 noise levels)")
    args = check_grid(sde, steps, spacing, eps, denoise, train_steps, rho, t_max)
    grid = build_grid(args)
    # a solver whose step from pure noise costs less may fit one more level (a chain's spacing: up to all its steps)
    while not (spacing in ("leading", "trailing") and len(grid.noisy) == args.train_steps):
        more = build_grid(args._replace(steps=len(grid.noisy) + 1))
        if method.grid_nfe(more) > nfe:
            return grid
        grid = more
    return grid


def sample(score, sde: GaussianPath, shape, sampler: str | None = None, steps: int | None = None, *,
           nfe: int | None = None, generator: torch.Generator | None = None, spacing: str | None = None,
           eps: float | None = None,
           denoise: bool = True, train_steps: int = 1000, rho: float = KARRAS_RHO, t_max: float | None = None,
           grid: TimeGrid | None = None, x_init: torch.Tensor | None = None, dtype: torch.dtype | None = None,
           device=None, progress: bool = False, callback: Callback | None = None, seeds=None,
           noise: Noise | str | None = None, correction=None, **options_) -> SamplerOutput:
    """Draw samples of ``shape`` by solving the path ``sde`` backwards with the model ``score(x, t)`` (a score
    function, or any model declaring what it ``predicts``: see ``sgm.predictions``).

    ``steps`` noise levels (default 500), or the most the sampler can take within a budget of ``nfe`` model
    evaluations (exclusive with ``steps``), on a ``spacing`` grid (the sampler's registered default unless given)
    from ``t_max`` (``T``) to ``eps`` (the path's ``default_eps``; see ``sgm.samplers.grid``; ``rho`` for ``karras``),
    ending with Tweedie's denoising step when ``denoise`` — or any ready ``grid`` (a ``TimeGrid``: user-made,
    precomputed, optimised) instead; a ``grid`` takes none of ``steps``, ``nfe``, ``spacing``, ``eps``, ``rho``,
    ``t_max``. ``x_T`` is ``x_init`` or a prior draw from ``generator``
    (drawn first, then the sampler's noise in step order). ``callback(x, node, prediction)`` runs after each
    step (see ``integrate``). ``options_`` go to the sampler (``sgm.samplers.options(name)`` lists them).
    ``seeds`` (one int per sample, instead of ``generator``): sample ``i`` draws its ``x_T`` and all its noise
    from its own stream seeded ``seeds[i]`` (``SeededNoise``), so it does not depend on the batch it is in.
    ``noise="brownian"``: the solver's draws over an interval of time are increments of one Brownian path per sample
    (``BrownianNoise`` of the generator, after ``x_T``, or of the seeds), the same path whatever the steps; or a
    ``Noise`` object (``BrownianNoise(seeds, tol=…)``, …) as the run's only randomness, ``x_T`` its first draw.
    ``sampler`` is ``euler_maruyama`` unless given. ``correction`` (a learned ``sgm.samplers.corrections.Correction``,
    checked against the model and the path first) fixes the sampler, its options and, when it was calibrated on one,
    the grid; it spends no more evaluations than the sampler on that grid.
    Returns ``(x, nfe)``.
    """
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath: VPSDE, VESDE, RectifiedFlow, …), "
                        f"got {type(sde).__name__}")
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    shape = check_shape("shape", shape)
    if correction is not None:
        from .corrections import Correction
        if not isinstance(correction, Correction):
            raise TypeError(f"correction must be an sgm Correction (sgm.samplers.corrections), got "
                            f"{type(correction).__name__}")
        if sampler is not None and sampler != correction.sampler:
            raise ValueError(f"correction is for sampler {correction.sampler!r}, not sampler={sampler!r}; give one")
        if options_:
            raise ValueError(f"a correction fixes the sampler's options ({dict(correction.options)}); "
                             f"{sorted(options_)} would be ignored")
        correction.check(score, sde)
        sampler, method = correction.sampler, correction.solver()
        if correction.grid is not None:
            if grid is not None:
                raise ValueError("this correction was calibrated on its own grid (correction.grid); give no grid")
            grid = correction.grid
    else:
        sampler = "euler_maruyama" if sampler is None else sampler
        method = solver(sampler, **options_)
    if steps is not None and nfe is not None:
        raise ValueError("give steps (noise levels) or nfe (a budget of model evaluations), not both")
    if grid is None:
        spacing = entry(sampler).default_spacing(sde) if spacing is None else spacing
        if nfe is not None:
            grid = budget_grid(method, sde, nfe, spacing, eps, denoise, train_steps, rho, t_max)
        else:
            grid = build_grid(check_grid(sde, 500 if steps is None else steps, spacing, eps, denoise, train_steps,
                                         rho, t_max))
    elif not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    else:
        given = [k for k, v in (("steps", steps), ("nfe", nfe), ("spacing", spacing), ("eps", eps),
                                ("t_max", t_max)) if v is not None] + (["rho"] if rho != KARRAS_RHO else [])
        if given:
            raise ValueError(f"a ready grid fixes the nodes: {', '.join(given)} would be ignored; give them or the "
                             "grid, not both")
        if grid.noisy[0].t > sde.T:
            raise ValueError(f"grid starts at t={grid.noisy[0].t}, after the SDE's T={sde.T}")
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
    device = (generator.device if generator is not None else torch.device("cpu")) if device is None \
        else resolve_device(device)
    grid.check_model(score, sde, device)  # refused: a grid for another path, an optimised one for another model
    check_run(method, grid, callback)
    like = torch.empty(shape, dtype=dtype, device=device)
    if seeds is None and not isinstance(noise, Noise):
        # x_T from the generator first, then the noise made from it (a Brownian path's entropy after x_T)
        x = x_init.to(dtype=dtype, device=device) if x_init is not None else \
            sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
        noise = make_noise(noise, generator, None, like, sde.T)
    else:
        noise = make_noise(noise, generator, seeds, like, sde.T)
        # x_T ~ N(0, prior_std² I), as prior_sample, the noise's first draw (row i from stream i with seeds)
        x = x_init.to(dtype=dtype, device=device) if x_init is not None else sde.prior_std * noise()
    return run_checked(method, score, sde, x, grid, noise, progress, callback)
