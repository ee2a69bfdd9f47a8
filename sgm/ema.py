"""Averages of the weights along training: the classic EMA, EDM2's power-function EMA, and the post-hoc
reconstruction of any power-function EMA from saved snapshots (Karras et al., 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", §3 and App. C).

Classic: ``θ̄ ← d_k θ̄ + (1 - d_k) θ`` after optimiser step ``k`` (counted from 1), with diffusers' warm-up
``d_k = min(decay, (1 + k)/(10 + k))`` (``warmup=True``) or ``d_k = decay``.

Power function of exponent ``γ``: after step ``t``, ``θ̂_t = β_t θ̂_{t-1} + (1 - β_t) θ_t`` with
``β_t = (1 - 1/t)^(γ+1)``. Unrolled, ``θ̂_t = Σ_{i≤t} w_i θ_i`` with

    w_i = (i^(γ+1) - (i-1)^(γ+1)) / t^(γ+1),

the profile ``p_t(τ) = (γ+1) τ^γ / t^(γ+1)`` on ``[0, t]`` integrated over each step ``(i-1, i]``: no share of
the initial weights, and an averaging window that grows with the run. Its length is the relative standard
deviation of ``τ/t`` under ``p_t``,

    σ_rel = √((γ+1) / ((γ+2)² (γ+3))),

inverted by the largest real root of ``γ³ + 7γ² + (16 - σ_rel⁻²)γ + 12 - σ_rel⁻² = 0`` (σ_rel 0.05: γ = 16.97;
0.10: γ = 6.94).

Post hoc: snapshots ``θ̂^(k)`` of profiles ``p_k = (γ_k, t_k)`` approximate a target profile ``q = (γ, t)`` by
``Σ_k c_k p_k`` with the least ``∫ (Σ_k c_k p_k - q)² dτ``: ``A c = b`` with ``A_jk = ⟨p_j, p_k⟩``,
``b_j = ⟨p_j, q⟩`` and, for profiles ``a, b``,

    ⟨p_a, p_b⟩ = (γ_a+1)(γ_b+1) / (γ_a+γ_b+1) · min(t_a, t_b)^(γ_a+γ_b+1) / (t_a^(γ_a+1) t_b^(γ_b+1));

``c`` is scaled to sum to 1 and the reconstruction is ``Σ_k c_k θ̂^(k)`` (from the snapshots at or before ``t``).
Times count optimiser steps.
"""
from __future__ import annotations

import copy
import os
import re

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["EMA", "PowerEMA", "flatten_parameters", "std_to_exponent", "exponent_to_std", "posthoc_coefficients",
           "profile_inner", "snapshot_path", "list_snapshots", "posthoc_weights", "SNAPSHOT_FORMAT", "SNAPSHOTS"]

SNAPSHOT_FORMAT = "sgm-phema-1"
SNAPSHOTS = "snapshots"
_SNAPSHOT_NAME = re.compile(r"^phema-(\d+\.\d+)-(\d+)\.safetensors$")


class EMA:
    """``θ̄ ← d θ̄ + (1 - d) θ`` over a model's parameters (buffers copied).

    With ``warmup`` the decay at optimiser step ``k`` (counted from 1) is ``min(decay, (1 + k)/(10 + k))``, the
    warm-up of diffusers' ``EMAModel``: after ``k`` steps the initial weights keep a share ``∏ d_j`` that is
    ≈ 0 within the first steps instead of ``decay^k`` (0.74 after 300 steps at 0.999).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup, self.model = decay, warmup, _frozen_copy(model)

    def decay_at(self, step: int | None) -> float:
        return self.decay if step is None or not self.warmup else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        _lerp(self.model, model, 1 - self.decay_at(step))


def _frozen_copy(model: nn.Module) -> nn.Module:
    copied = copy.deepcopy(model).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    flatten_parameters(copied)
    return copied


def flatten_parameters(module: nn.Module) -> Tensor | None:
    """Make ``module``'s parameters views of one contiguous buffer, and return it, so that averaging them is one
    operation per average instead of one per tensor (the step's cost on small networks); None, and nothing done,
    when they differ in dtype or device. Moving the module afterwards (``.to``) undoes it, and averaging falls back
    to one operation per tensor."""
    params = list(module.parameters())
    if not params or len({(p.dtype, p.device) for p in params}) > 1:
        return None
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    module._flat_parameters = (flat, [p.data_ptr() for p in params])
    return flat


def _flat(module: nn.Module) -> Tensor | None:
    """The buffer ``flatten_parameters`` made for ``module``, if its parameters still are its views."""
    flat, pointers = module.__dict__.get("_flat_parameters", (None, None))
    return flat if flat is not None and [p.data_ptr() for p in module.parameters()] == pointers else None


def _lerp(average: nn.Module, model: nn.Module, weight: float) -> None:
    """``average ← average + weight (model - average)`` over the parameters; the buffers copied."""
    flat_average, flat_model = _flat(average), _flat(model)
    if flat_average is not None and flat_model is not None and flat_average.shape == flat_model.shape:
        flat_average.lerp_(flat_model, weight)
    else:
        torch._foreach_lerp_(list(average.parameters()), [p.detach() for p in model.parameters()], weight)
    for b_avg, b in zip(average.buffers(), model.buffers()):
        b_avg.copy_(b)


def exponent_to_std(gamma: float) -> float:
    """The relative std ``√((γ+1)/((γ+2)²(γ+3)))`` of the power-function profile of exponent ``γ``."""
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def std_to_exponent(std: float) -> float:
    """The exponent ``γ`` whose profile has relative std ``std``: the largest real root of
    ``γ³ + 7γ² + (16 - std⁻²)γ + 12 - std⁻²`` (``std`` in (0, 0.3): the relative std peaks at 0.300)."""
    if not 0 < std < 0.3:
        raise ValueError(f"std must lie in (0, 0.3) (a power-function EMA's relative std peaks at 0.300), got {std}")
    s = std**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


class PowerEMA:
    """Power-function EMAs of a model's parameters, one per relative std in ``stds`` (see the module docstring)."""

    def __init__(self, model: nn.Module, stds: tuple[float, ...]):
        self.stds = tuple(float(s) for s in stds)
        self.exponents = tuple(std_to_exponent(s) for s in self.stds)
        self.models = [_frozen_copy(model) for _ in self.stds]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimiser step ``step`` (from 1): ``β = (1 - 1/step)^(γ+1)``."""
        for gamma, average in zip(self.exponents, self.models):
            _lerp(average, model, 1 - (1 - 1 / step) ** (gamma + 1))

    def state_dict(self) -> dict:
        return {f"{std:.6g}": m.state_dict() for std, m in zip(self.stds, self.models)}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state) != sorted(f"{std:.6g}" for std in self.stds):
            raise ValueError(f"power-function EMAs of stds {sorted(state)} saved, this run tracks {self.stds}")
        for std, m in zip(self.stds, self.models):
            m.load_state_dict(state[f"{std:.6g}"])

    def save_snapshots(self, folder: str, step: int, write) -> None:
        """Write each average as ``folder/phema-STD-STEP.safetensors`` through ``write(path, writer)`` (atomic)."""
        from safetensors.torch import save

        for std, gamma, m in zip(self.stds, self.exponents, self.models):
            tensors = {k: v.detach().cpu().contiguous().clone() for k, v in m.state_dict().items()}
            metadata = {"format": SNAPSHOT_FORMAT, "std": repr(std), "exponent": repr(gamma), "step": str(step)}
            blob = save(tensors, metadata=metadata)
            write(snapshot_path(folder, std, step), lambda f, blob=blob: f.write(blob))


def snapshot_path(folder: str, std: float, step: int) -> str:
    return os.path.join(folder, f"phema-{std:.4f}-{step:08d}.safetensors")


def profile_inner(gamma_a, t_a, gamma_b, t_b) -> np.ndarray:
    """``⟨p_a, p_b⟩`` of two power-function profiles (broadcasting), computed in logs: ``t^(γ+1)`` overflows."""
    gamma_a, t_a, gamma_b, t_b = (np.asarray(v, dtype=np.float64) for v in (gamma_a, t_a, gamma_b, t_b))
    log = (np.log(gamma_a + 1) + np.log(gamma_b + 1) - np.log(gamma_a + gamma_b + 1)
           + (gamma_a + gamma_b + 1) * np.log(np.minimum(t_a, t_b)) - (gamma_a + 1) * np.log(t_a)
           - (gamma_b + 1) * np.log(t_b))
    return np.exp(log)


def posthoc_coefficients(gammas, steps, gamma: float, step: float) -> np.ndarray:
    """The ``c_k`` (summing to 1) that make ``Σ_k c_k p_k`` the least-squares fit of the profile ``(gamma, step)``
    from the snapshot profiles ``(gammas[k], steps[k])``."""
    gammas, steps = np.asarray(gammas, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    a = profile_inner(gammas[:, None], steps[:, None], gammas[None, :], steps[None, :])
    b = profile_inner(gammas, steps, gamma, step)
    c = np.linalg.solve(a, b)
    return c / c.sum()


def list_snapshots(folder: str) -> list[tuple[float, int, str]]:
    """``(std, step, path)`` of every snapshot file in ``folder``, by step then std."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no snapshot folder {folder!r} (train with ema_stds and snapshot_every)")
    found = []
    for name in os.listdir(folder):
        match = _SNAPSHOT_NAME.match(name)
        if match:
            found.append((float(match.group(1)), int(match.group(2)), os.path.join(folder, name)))
    return sorted(found, key=lambda s: (s[1], s[0]))


def _snapshot_header(path: str, step: int) -> float:
    """The exponent a snapshot file records, after checking its format and that its step is the one its name says."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path}: not a readable EMA snapshot ({type(err).__name__}: {err})") from None
    if metadata.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{path}: not an sgm EMA snapshot (format {metadata.get('format')!r}, expected "
                         f"{SNAPSHOT_FORMAT!r})")
    if int(metadata["step"]) != step:
        raise ValueError(f"{path}: its name says step {step}, its metadata {metadata['step']}")
    return float(metadata["exponent"])


def posthoc_weights(folder: str, std: float, step: int | None = None) -> tuple[dict[str, Tensor], dict]:
    """The power-function EMA of relative std ``std`` at ``step`` (default: the last snapshot's), reconstructed
    from the snapshots in ``folder`` at or before ``step``; returns ``(state_dict, info)``, ``info`` holding the
    coefficient of each snapshot file. Reads one snapshot at a time and sums in float64."""
    from safetensors.torch import load_file

    gamma = std_to_exponent(std)
    snapshots = list_snapshots(folder)
    if not snapshots:
        raise FileNotFoundError(f"{folder!r} holds no EMA snapshots")
    step = snapshots[-1][1] if step is None else int(step)
    used = [s for s in snapshots if s[1] <= step]
    if not used:
        raise ValueError(f"step must be at least the first snapshot's step {snapshots[0][1]}, got {step}")
    exponents = [_snapshot_header(path, snap_step) for _, snap_step, path in used]
    coefficients = posthoc_coefficients(exponents, [s[1] for s in used], gamma, step)
    total: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for (_, _, path), c in zip(used, coefficients):
        weights = load_file(path)
        if total and set(weights) != set(total):
            raise ValueError(f"{path}: holds other tensors than {used[0][2]}")
        for k, v in weights.items():
            dtypes[k] = v.dtype
            total[k] = total[k] + float(c) * v.double() if k in total else float(c) * v.double()
    info = {"std": std, "exponent": gamma, "step": step,
            "coefficients": {os.path.basename(p): float(c) for (_, _, p), c in zip(used, coefficients)}}
    return {k: v.to(dtypes[k]) for k, v in total.items()}, info
