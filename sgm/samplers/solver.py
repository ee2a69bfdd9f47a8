"""The solver protocol (version 2) and the one loop that runs every solver.

A solver walks a ``TimeGrid`` from the prior to the data. It declares

- ``ode_order``: the order of its deterministic map error (``None`` for a stochastic solver);
  ``strong_order`` and ``weak_order``: its pathwise and distributional orders as an SDE solver (``None`` for a
  deterministic one) — separate from any ``order`` *option* (DPM-Solver's "3M" is of second order, say); the
  order tests read these declarations;
- ``evals_per_step``: model evaluations per transition between noisy nodes (``None`` when adaptive), and
  ``final_evals``: evaluations its ``finish`` spends at the last noisy node;
- ``stochastic``: whether it draws noise; ``samplewise``: whether each sample's update reads that sample alone (then
  per-sample seeds make a sample independent of its batch; not so for a batch-averaged step size or a step-size
  control over the batch);
- ``needs``: what it needs of the path and grid — ``"positive_alpha"``: ``α > 0`` at every node it steps from
  (a finite SDE drift; not the exact top of rectified flow), checked by ``integrate`` before any work;

and provides ``init(x, grid) -> state`` and ``step(model, x, a, b, state, noise) -> (x, state)`` for a
transition from node ``a`` to the less noisy node ``b`` (optionally ``finish``, run once at the last noisy
node, ``denoise``, the step into the data node (Tweedie's ``x̂_0`` unless a wrapper adjusts it), and
``stepping_grid``, the nodes it steps on when that is not the whole grid). **A state is a value**: a
solver returns a new state and never changes the one it was given (tuples and named tuples, not lists or dicts),
so a wrapper may run a step again from a saved state (RePaint's resampling, guidance, a learned correction).

``integrate`` owns what every solver shares: input checks, the counted and checked model calls, the progress
bar, the per-step ``callback(x, node, prediction)``, the check that the state stays plausible (``SamplerDiverged``
once ``max |x|`` exceeds ``PLAUSIBLE·max(1, prior_std)`` or is not finite: no model sgm trains or targets puts its
samples there, and a diverging guidance or inverse-problem correction gets there long before it overflows) and the
final denoising step (Tweedie's ``x̂_0`` at the last noisy node, one evaluation, into a grid's data node).

The model is seen through ``Model``: one call ``model(x, node)`` gives a ``Prediction`` (``sgm.predictions``) in
the model's native kind (score, ε, x̂_0, v or velocity), from which a solver reads the kinds its update is written
in (``prediction.x0``, ``.eps``, ``.score``, ``.velocity``, or one fused ``prediction.combine(...)``), so that no
solver converts, and none divides by ``α`` where the model's own output does not need it.

Noise (``sgm.samplers.noise``): a solver asks ``noise(t0, t1)`` for each standard normal it uses, naming the
interval of path time ``[t1, t0]`` (``t0 > t1``) the draw drives (the transition's ``a.t, b.t``, a sub-step's, or
none for a draw that is not a Brownian increment, such as a corrector's); ``Noise`` answers from a generator in call
order, ``SeededNoise`` from per-sample streams, a ``BrownianNoise`` with the normalised increment
``(W(t0) - W(t1))/√(t0 - t1)`` of one Brownian path per sample. Two draws over one interval are then the same
number, and draws over overlapping intervals are correlated as the path's increments are: name the interval each
draw drives, and none for one that must be independent of the path.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..paths import GaussianPath
from ..predictions import Prediction
from .base import CheckedScore, SamplerDiverged, SamplerOutput, check_state
from .grid import Node, TimeGrid, path_nodes
from .noise import Noise, make_noise

__all__ = ["Prediction", "Model", "Solver", "integrate", "check_run", "run_checked", "run_differentiable", "Callback",
           "NEEDS", "PLAUSIBLE"]

NEEDS = ("positive_alpha",)
PLAUSIBLE = 1e6  # a state beyond PLAUSIBLE·max(1, prior_std) in magnitude has diverged


class Model:
    """A model seen by solvers: ``model(x, node) -> Prediction`` in the model's native kind, counted (``nfe``) and
    checked. ``node`` is a grid ``Node`` or a continuous time (a float), whose node then carries the path's
    ``(α, σ, α', σ')``. ``last`` is the most recent prediction."""

    def __init__(self, score, sde: GaussianPath, bar=None):
        self.score = score if isinstance(score, CheckedScore) else CheckedScore(score)
        own = getattr(self.score.score, "sde", None)  # a ScoreModel knows the path it was trained on
        if isinstance(own, GaussianPath) and own != sde:
            raise ValueError(f"the model was made for {own!r}, but sde is {sde!r}: it would solve another process's "
                             f"reverse; sample with the model's own path (model.sde)")
        self.kind = self.score.predicts
        self.sde, self.bar, self.last = sde, bar, None

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def node(self, t: float) -> Node:
        """The node at continuous time ``t``, with the path's marginal and derivatives."""
        return path_nodes(self.sde, torch.tensor([float(t)], dtype=torch.float64))[0]

    def __call__(self, x: Tensor, node) -> Prediction:
        node = node if isinstance(node, Node) else self.node(node)
        self.last = Prediction.at_node(x, node, self.kind, self.score(x, node.t))
        if self.bar is not None:
            self.bar.update()
        return self.last


class Solver:
    """Base of every solver (see the module docstring for the protocol)."""

    name: str = "solver"
    ode_order: Optional[int] = None
    strong_order: Optional[float] = None
    weak_order: Optional[float] = None
    evals_per_step: Optional[int] = 1
    final_evals: int = 0
    stochastic: bool = False
    samplewise: bool = True
    adaptive: bool = False  # chooses its own steps between the grid's ends
    needs: frozenset = frozenset()

    def check(self, grid: TimeGrid) -> None:
        """Refuse (``ValueError``) a grid this solver cannot run on, before any work (see ``needs``)."""
        first = self.stepping_grid(grid).noisy[0]
        if "positive_alpha" in self.needs and first.scale <= 0:
            raise ValueError(f"{self.name} needs α > 0 at its first node (a finite SDE drift), but the grid starts "
                             f"at t={first.t} where α = 0 (the exact top of the path); start below it "
                             "(sgm.sample(..., t_max=...)) or use a sampler that starts from pure noise (ddim, "
                             "ancestral, dpm_solver, unipc, deis, ipndm, heun, ode)")

    def init(self, x: Tensor, grid: TimeGrid) -> Any:
        """The first state, a value carried from step to step (history of predictions, step counters); ``None`` by
        default."""
        return None

    def step(self, model: Model, x: Tensor, a: Node, b: Node, state: Any, noise: Noise) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def finish(self, model: Model, x: Tensor, node: Node, state: Any, noise: Noise) -> Tensor:
        """Work at the last noisy node before the final denoising (annealed Langevin's last level); none by default."""
        return x

    def denoise(self, model: Model, x: Tensor, node: Node, state: Any) -> Tensor:
        """The transition from the last noisy node into the data node: Tweedie's ``x̂_0`` there (one evaluation) by
        default; a wrapper may adjust it (a learned correction of the last step, ``sgm.samplers.corrections``)."""
        return model(x, node).x0

    def stepping_grid(self, grid: TimeGrid) -> TimeGrid:
        """The nodes the solver steps on; the whole grid by default (adaptive drivers keep its ends)."""
        return grid

    def nfe(self, steps: int, denoise: bool = True) -> int | None:
        """Score evaluations on a grid of ``steps`` noisy nodes: ``evals_per_step·(steps - 1) + final_evals``
        plus one for the final denoising; ``None`` for adaptive solvers."""
        if self.evals_per_step is None:
            return None
        return self.evals_per_step * (steps - 1) + self.final_evals + int(denoise)

    def grid_nfe(self, grid: TimeGrid) -> int | None:
        """The evaluations a run on ``grid`` spends: ``nfe(noisy nodes, denoise)`` (a solver whose step from pure
        noise costs less says so)."""
        return self.nfe(len(grid.noisy), grid.denoise)

    def steps_for_nfe(self, nfe: int, denoise: bool = True) -> int | None:
        """The most noisy nodes whose run spends at most ``nfe`` evaluations (at least 2), or ``None``."""
        if self.evals_per_step is None:
            return None
        steps = (nfe - self.final_evals - int(denoise)) // self.evals_per_step + 1
        return steps if steps >= 2 else None

    @property
    def orders(self) -> dict:
        """The declared orders: ``{"ode": …}`` for a deterministic solver, ``{"strong": …, "weak": …}`` otherwise."""
        if self.stochastic:
            return {"strong": self.strong_order, "weak": self.weak_order}
        return {"ode": self.ode_order}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


# callback(x, node, prediction) -> x' or None: called after each transition with the state at `node` and the
# latest model prediction; a tensor it returns replaces the state (guidance, inpainting, projections).
Callback = Callable[[Tensor, Node, Prediction], Optional[Tensor]]


def _check_plausible(x: Tensor, node: Node, bound: float) -> None:
    """``SamplerDiverged`` when the state is not finite or beyond ``bound`` in magnitude (one reduction)."""
    largest = float(x.detach().abs().amax())  # detached: LD3 integrates with its graph
    if not largest <= bound:
        raise SamplerDiverged(f"the sampler's state left the plausible range at t={node.t:.6g}: max |x| = "
                              f"{largest:.3g} > {bound:.3g} (PLAUSIBLE·max(1, prior_std))")


def _apply(callback: Callback | None, x: Tensor, node: Node, prediction: Prediction | None) -> Tensor:
    if callback is None:
        return x
    out = callback(x, node, prediction)
    if out is None:
        return x
    if not isinstance(out, Tensor) or out.shape != x.shape:
        raise ValueError(f"callback must return None or a tensor of shape {tuple(x.shape)}, got "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    return out


def integrate(solver: Solver, score, sde: GaussianPath, x: Tensor, grid: TimeGrid, *,
              generator: torch.Generator | None = None, progress: bool = False, callback: Callback | None = None,
              noise: Noise | str | None = None) -> SamplerOutput:
    """Run ``solver`` over ``grid`` from ``x`` (the state at the grid's first node) with the model ``score(x, t)``
    (a score function, or any model declaring what it ``predicts``); the transition into a data node is Tweedie's
    step. Noise comes from ``generator`` (``noise=None``: in call order; ``noise="brownian"``: one Brownian path per
    sample), or from a ``noise`` object alone (``SeededNoise``, ``BrownianNoise``, …). Returns ``(x, nfe)``."""
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an sgm Solver, got {type(solver).__name__}")
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath: VPSDE, VESDE, RectifiedFlow, …), "
                        f"got {type(sde).__name__}")
    x = check_state(x)
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    grid.check_sde(sde)
    check_run(solver, grid, callback)
    return run_checked(solver, score, sde, x, grid, make_noise(noise, generator, None, x, sde.T), progress, callback)


def check_run(solver: Solver, grid: TimeGrid, callback: Callback | None) -> None:
    """What ``integrate`` checks beyond the types of its arguments: the grid suits the solver, the callback is
    callable."""
    solver.check(grid)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(x, node, prediction), got {type(callback).__name__}")


@torch.no_grad()
def run_checked(solver: Solver, score, sde: GaussianPath, x: Tensor, grid: TimeGrid, noise: Noise,
                progress: bool = False, callback: Callback | None = None) -> SamplerOutput:
    """``integrate``'s loop on arguments an entry point has checked (``integrate`` itself, ``sgm.sample``)."""
    return _loop(solver, score, sde, x, grid, noise, progress, callback)


def run_differentiable(solver: Solver, score, sde: GaussianPath, x: Tensor, grid: TimeGrid) -> SamplerOutput:
    """``integrate``'s loop for a deterministic ``solver`` with autograd on: the output keeps the graph back to ``x``,
    to the model's weights and to any tensor the solver's steps use (the calibrations that differentiate through a
    run: LD3's latents, S4S's coefficients)."""
    check_run(solver, grid, None)
    with torch.enable_grad():
        return _loop(solver, score, sde, x, grid, make_noise(None, None, None, x, sde.T))


def _loop(solver: Solver, score, sde: GaussianPath, x: Tensor, grid: TimeGrid, noise: Noise,
          progress: bool = False, callback: Callback | None = None) -> SamplerOutput:
    total = solver.grid_nfe(grid)
    with tqdm(total=total, desc=solver.name, unit="nfe", disable=not progress, leave=False) as bar:
        model = Model(score, sde, bar)
        state = solver.init(x, grid)
        last, bound = grid.noisy[-1], PLAUSIBLE * max(1.0, sde.prior_std)
        for a, b in solver.stepping_grid(grid).steps():
            if b.is_data:
                break
            x, state = solver.step(model, x, a, b, state, noise)
            x = _apply(callback, x, b, model.last)
            _check_plausible(x, b, bound)
        x = solver.finish(model, x, last, state, noise)
        if grid.denoise:
            x = _apply(callback, solver.denoise(model, x, last, state), grid.nodes[-1], model.last)
        model.score.check()  # the finite flags an accelerator kept
    return SamplerOutput(x, model.nfe)
