"""The solver protocol and the one loop that runs every solver.

A solver walks a ``TimeGrid`` from the prior to the data. It declares

- ``order``: the order of its deterministic map error (the tests read it; weak order for stochastic solvers);
- ``evals_per_step``: score evaluations per transition between noisy nodes (``None`` when adaptive), and
  ``final_evals``: evaluations its ``finish`` spends at the last noisy node;
- ``stochastic``: whether it draws noise;

and provides ``init(x, grid) -> state`` and ``step(model, x, a, b, state, noise) -> (x, state)`` for a
transition from node ``a`` to the less noisy node ``b`` (optionally ``finish``, run once at the last noisy
node, and ``stepping_grid``, the nodes it steps on when that is not the whole grid).

``integrate`` owns what every solver shares: input checks, the counted and checked model calls, the progress
bar, the per-step ``callback(x, node, prediction)`` and the final denoising step (Tweedie's
``x̂_0 = (x + std² s)/scale`` at the last noisy node, one evaluation, into a grid's data node).

The model is seen through ``Model``: one call ``model(x, node)`` gives the score, ``ε̂ = -std·s`` and
``x̂_0 = (x + std²·s)/scale`` together (``Prediction``), so noise- and data-prediction solvers convert
nowhere else.

Noise order: ``sgm.sample`` draws ``x_T`` first (one ``randn`` of the full shape), then each step draws
``noise()`` (one ``randn`` of ``x``'s shape) per stochastic update, in the order the updates are made.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..sde import SDE
from .base import CheckedScore, SamplerOutput, check_state
from .grid import Node, TimeGrid

__all__ = ["Prediction", "Model", "Noise", "Solver", "integrate", "Callback"]


class Prediction:
    """The model's output at ``(x, node)``: ``score``, and on demand ``eps = -std·score`` and
    ``x0 = (x + std²·score)/scale`` (Tweedie's denoiser), each computed once."""

    __slots__ = ("x", "node", "score", "_eps", "_x0")

    def __init__(self, x: Tensor, node: Node, score: Tensor):
        self.x, self.node, self.score = x, node, score
        self._eps = self._x0 = None

    @property
    def eps(self) -> Tensor:
        if self._eps is None:
            self._eps = self.score * -self.node.std
        return self._eps

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            self._x0 = self.x.add(self.score, alpha=self.node.std**2).div_(self.node.scale)
        return self._x0


class Model:
    """A score function seen by solvers: ``model(x, node) -> Prediction``, counted (``nfe``) and checked.

    ``node`` is a grid ``Node`` or a continuous time (a float), whose node then carries the SDE's marginal.
    ``last`` is the most recent prediction.
    """

    def __init__(self, score, sde: SDE, bar=None):
        self.score = score if isinstance(score, CheckedScore) else CheckedScore(score)
        self.sde, self.bar, self.last = sde, bar, None

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def node(self, t: float) -> Node:
        """The node at continuous time ``t``, with ``(scale(t), std(t))`` of the SDE."""
        scale, std = self.sde.marginal(torch.tensor(float(t), dtype=torch.float64))
        return Node(float(t), float(scale), float(std))

    def __call__(self, x: Tensor, node) -> Prediction:
        node = node if isinstance(node, Node) else self.node(node)
        self.last = Prediction(x, node, self.score(x, node.t))
        if self.bar is not None:
            self.bar.update()
        return self.last


class Noise:
    """Standard normal draws shaped like the state, from ``generator``: ``noise()`` (or ``noise(like)``)."""

    def __init__(self, generator: torch.Generator | None, x: Tensor):
        self.generator, self.shape, self.dtype, self.device = generator, x.shape, x.dtype, x.device

    def __call__(self, like: Tensor | None = None) -> Tensor:
        shape = self.shape if like is None else like.shape
        return torch.randn(shape, generator=self.generator, dtype=self.dtype, device=self.device)


class Solver:
    """Base of every solver (see the module docstring for the protocol)."""

    name: str = "solver"
    order: int = 1
    evals_per_step: Optional[int] = 1
    final_evals: int = 0
    stochastic: bool = False

    def init(self, x: Tensor, grid: TimeGrid) -> Any:
        """State carried from step to step (history of predictions, step counters); ``None`` by default."""
        return None

    def step(self, model: Model, x: Tensor, a: Node, b: Node, state: Any, noise: Noise) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def finish(self, model: Model, x: Tensor, node: Node, state: Any, noise: Noise) -> Tensor:
        """Work at the last noisy node before the final denoising (annealed Langevin's last level); none by default."""
        return x

    def stepping_grid(self, grid: TimeGrid) -> TimeGrid:
        """The nodes the solver steps on; the whole grid by default (adaptive drivers keep its ends)."""
        return grid

    def nfe(self, steps: int, denoise: bool = True) -> int | None:
        """Score evaluations on a grid of ``steps`` noisy nodes: ``evals_per_step·(steps - 1) + final_evals``
        plus one for the final denoising; ``None`` for adaptive solvers."""
        if self.evals_per_step is None:
            return None
        return self.evals_per_step * (steps - 1) + self.final_evals + int(denoise)

    def steps_for_nfe(self, nfe: int, denoise: bool = True) -> int | None:
        """The most noisy nodes whose run spends at most ``nfe`` evaluations (at least 2), or ``None``."""
        if self.evals_per_step is None:
            return None
        steps = (nfe - self.final_evals - int(denoise)) // self.evals_per_step + 1
        return steps if steps >= 2 else None

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


# callback(x, node, prediction) -> x' or None: called after each transition with the state at `node` and the
# latest model prediction; a tensor it returns replaces the state (guidance, inpainting, projections).
Callback = Callable[[Tensor, Node, Prediction], Optional[Tensor]]


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


@torch.no_grad()
def integrate(solver: Solver, score, sde: SDE, x: Tensor, grid: TimeGrid, *, generator: torch.Generator | None = None,
              progress: bool = False, callback: Callback | None = None) -> SamplerOutput:
    """Run ``solver`` over ``grid`` from ``x`` (the state at the grid's first node) with the score function
    ``score(x, t)``; the transition into a data node is Tweedie's step. Returns ``(x, nfe)``."""
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be an sgm Solver, got {type(solver).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sgm SDE (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    x = check_state(x)
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    grid.check_sde(sde)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(x, node, prediction), got {type(callback).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    total = solver.nfe(len(grid.noisy), grid.denoise)
    with tqdm(total=total, desc=solver.name, unit="nfe", disable=not progress, leave=False) as bar:
        model, noise = Model(score, sde, bar), Noise(generator, x)
        state = solver.init(x, grid)
        last = grid.noisy[-1]
        for a, b in solver.stepping_grid(grid).steps():
            if b.is_data:
                break
            x, state = solver.step(model, x, a, b, state, noise)
            x = _apply(callback, x, b, model.last)
        x = solver.finish(model, x, last, state, noise)
        if grid.denoise:
            x = _apply(callback, model(x, last).x0, grid.nodes[-1], model.last)
    return SamplerOutput(x, model.nfe)
