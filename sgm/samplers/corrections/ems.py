"""DPM-Solver-v3's empirical model statistics (EMS; Zheng et al., NeurIPS 2023), computed on the model's own
probability-flow trajectories from prior draws (no data).

On ``steps + 1`` half log-SNRs ``λ_0 < … < λ_K`` uniform from ``λ(t_max)`` (``T``, or just below an ``α = 0`` top) to
``λ(eps)``, the trajectories ``x_λ`` of ``n`` prior draws (the teacher: ``ode``'s dopri5 at ``rtol = atol =
reference_tol`` from each ``λ_k`` to the next) give, element by element (see ``sgm.samplers.dpm_v3``),

    l_k = mean_i  v_i ⊙ σ_k (∇_x ε̂(x_k^i, λ_k) v_i)        (Hutchinson: Rademacher v, E[v ⊙ J v] = diag J; exact for a
                                                            diagonal Jacobian)
    f_k^i = (σ_k ε̂(x_k^i) - l_k ⊙ x_k^i)/α_k,    f^(1)_k = df/dλ along each trajectory (2nd-order finite differences)
    s_k = Cov_i(f^(1)_k, f_k)/Var_i(f_k),    b_k = mean_i f^(1)_k - s_k mean_i f_k     (s_k = 0 where Var f vanishes)

the minimisers of ``E‖σ∇ε̂ - diag l‖²_F`` and ``E‖f^(1) - s f - b‖²`` under the model's own marginals ``p_λ``.
Their cost: the teacher's evaluations plus, per table point, one evaluation and one Jacobian–vector product (counted
as one more evaluation) of the batch. ``ems`` returns a ``Correction`` for the ``dpm_solver_v3`` sampler (with
``options``) that runs on any grid within its λ range.
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from ...checks import integer, positive, shape as check_shape
from ...paths import GaussianPath
from ...predictions import predict
from ..base import CheckedScore
from ..dpm_v3 import EMS
from ..fingerprint import batch_fingerprint
from ..grid import check_eps
from ..probability_flow import AdaptiveODE
from ..registry import solver as make_solver
from ..solver import Model
from .base import Correction, finish_record, register_method

__all__ = ["ems", "ems_statistics", "TOP_FRACTION"]

TOP_FRACTION = 1e-3  # on a path with α(T) = 0 the table starts at t = T - TOP_FRACTION·(T - eps)


def _eps_and_jvp(model, sde: GaussianPath, x: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``ε̂(x, t)`` and ``(∇_x ε̂) v``."""
    def fn(y):
        return predict(model, sde, y, t).eps
    try:
        return torch.func.jvp(fn, (x,), (v,))
    except (RuntimeError, TypeError, NotImplementedError):
        return torch.autograd.functional.jvp(fn, x, v)


def ems_statistics(score, sde: GaussianPath, x_T: Tensor, lams: Tensor, generator: torch.Generator | None = None,
                   tol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor, int]:
    """``l, s, b`` of shape ``(len(lams), *sample shape)`` on the increasing λ table ``lams`` from the draws ``x_T``
    at ``T`` (see the module docstring), and the evaluations spent (a Jacobian–vector product counted as one)."""
    checked = CheckedScore(score)
    model = Model(checked, sde)
    times = sde.time_at_lam(lams.to(torch.float64)).tolist()
    alphas, sigmas = (v.tolist() for v in sde.marginal(torch.tensor(times, dtype=torch.float64)))
    flow = AdaptiveODE("dopri5", tol, tol)
    step = float(lams[1] - lams[0])
    K = len(times)
    ls, ss, bs = [], [None] * K, [None] * K
    window = []  # the last three (k, f)

    def regress(k: int, f: Tensor, df: Tensor) -> None:
        mf, mdf = f.mean(0), df.mean(0)
        var = ((f - mf) ** 2).mean(0)
        cov = ((f - mf) * (df - mdf)).mean(0)
        scale = (f**2).mean(0)
        s = torch.where(var > 1e-12 * scale + 1e-300, cov / var.clamp_min(1e-300), torch.zeros_like(var))
        ss[k], bs[k] = s, mdf - s * mf

    x, previous, jvps = x_T, model.node(float(sde.T)), 0
    for k, t in enumerate(times):
        if t != previous.t:
            node = model.node(t)
            x, previous = flow.step(model, x, previous, node, None, None)[0], node
        v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            eps, jv = _eps_and_jvp(checked.score, sde, x, tt, v)
        eps, jv = eps.detach(), jv.detach()
        jvps += 2
        l = (v * sigmas[k] * jv).mean(0)
        ls.append(l)
        window = (window + [(k, (sigmas[k] * eps - l * x) / alphas[k])])[-3:]
        if len(window) == 3:
            (k0, f0), (k1, f1), (k2, f2) = window
            if k0 == 0:
                regress(0, f0, (-3 * f0 + 4 * f1 - f2) / (2 * step))
            regress(k1, f1, (f2 - f0) / (2 * step))
            if k2 == K - 1:
                regress(k2, f2, (3 * f2 - 4 * f1 + f0) / (2 * step))
    return torch.stack(ls), torch.stack(ss), torch.stack(bs), checked.nfe + jvps


def ems(score, sde: GaussianPath, shape, *, steps: int = 120, generator: torch.Generator | None = None,
        eps: float | None = None, t_max: float | None = None, reference_tol: float = 1e-8,
        dtype: torch.dtype = torch.float64, device=None, **options) -> Correction:
    """The EMS of the model ``score`` on ``sde`` from the prior draws of the batch ``shape = (n, *dims)`` from
    ``generator`` on ``steps + 1`` λ-uniform points from ``λ(t_max)`` to ``λ(eps)`` (see the module docstring), as a
    ``Correction`` for ``dpm_solver_v3`` with ``options`` (its ``order``, ``p_pseudo``, ``use_corrector``,
    ``c_pseudo``, ``lower_order_final``)."""
    started = time.perf_counter()
    if not callable(score):
        raise TypeError(f"score must be callable as score(x, t), got {type(score).__name__}")
    if not isinstance(sde, GaussianPath):
        raise TypeError(f"sde must be an sgm path (GaussianPath), got {type(sde).__name__}")
    shape = check_shape("shape", shape)
    n, steps = integer("shape[0]", shape[0], 2), integer("steps", steps, 2)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    eps = check_eps(eps, sde)
    reference_tol = positive("reference_tol", reference_tol)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if "ems" in options:
        raise TypeError("ems() computes the statistics; give dpm_solver_v3's other options only")
    make_solver("dpm_solver_v3", **options)  # the options are checked before any work
    if t_max is None:
        alpha_T = float(sde.alpha(torch.tensor([sde.T], dtype=torch.float64))[0])
        t_max = sde.T if alpha_T > 0 else sde.T - TOP_FRACTION * (sde.T - eps)
    t_max = positive("t_max", t_max)
    if not eps < t_max <= sde.T:
        raise ValueError(f"t_max must lie in (eps={eps}, T={sde.T}], got {t_max}")
    lo, hi = (float(v) for v in sde.lam(torch.tensor([t_max, eps], dtype=torch.float64)))
    if not math.isfinite(lo):
        raise ValueError(f"t_max={t_max} is the top of the path (α = 0): give t_max below it")
    lams = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    model = batch_fingerprint(score, sde, shape, dtype, device)
    x_T = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    l, s, b, spent = ems_statistics(score, sde, x_T, lams, generator, reference_tol)
    statistics = EMS(lams, l.to(torch.float64).cpu(), s.to(torch.float64).cpu(), b.to(torch.float64).cpu())
    record = {"n": n, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "reference_nfe": 0,
              "started": started}
    info = finish_record(record, spent)
    info.update(method="DPM-Solver-v3's empirical model statistics (Zheng et al. 2023)", steps=steps, eps=eps,
                t_max=t_max, reference=f"dopri5 rtol=atol={reference_tol:g} from table point to table point")
    params = {"lams": lams.tolist(), "l": statistics.l.tolist(), "s": statistics.s.tolist(), "b": statistics.b.tolist()}
    return Correction("dpm_solver_v3", "dpm_solver_v3", options, params, None, False, repr(sde), model, info)


def build(correction: Correction):
    p = correction.params
    return make_solver("dpm_solver_v3", ems=EMS(p["lams"], p["l"], p["s"], p["b"]), **correction.options)


register_method("dpm_solver_v3", build)
