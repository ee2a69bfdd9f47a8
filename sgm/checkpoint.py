"""Checkpoint files that cannot run code: atomic writes, ``weights_only`` reads, and safetensors export.

Two formats:

- ``checkpoint.pt`` (written by training): a ``torch.save`` of plain containers — ``dict``/``list``/``tuple`` of
  tensors, numbers, strings, booleans and ``None`` — with keys ``format``, ``step``, ``config``, ``data_shape``,
  ``model``, ``ema``, ``optimizer``, ``scheduler`` and, from format 3, ``data`` (the training set's fingerprint),
  ``power_ema``, ``log_variance`` (EDM2's learned uncertainty, or None), ``scaler`` and ``path`` (the path's name
  and every parameter, checked against the config when the weights are read; no RNG state: training
  draws from streams seeded by seed, step and rank, see ``sgm.distributed``). It is read with ``torch.load(..., weights_only=True)``:
  PyTorch's restricted unpickler builds only those types, so a file whose pickle names any other callable
  (an object whose ``__reduce__`` would run a shell command, say) is refused before anything in it runs.
- ``*.safetensors`` (written by ``export``): the EMA weights as raw tensors, with the run's config, data shape and
  path record (as in ``checkpoint.pt``, checked the same way) as JSON in the header's metadata. No pickle at all;
  for sharing a trained model.

Every failure to read — missing keys, a foreign or truncated file, pickled code, a newer format — is a
``CheckpointError`` whose message starts with the file's path.

Writes go to ``PATH.tmp-PID`` and are renamed into place; a process killed mid-write leaves that file behind, and
``remove_stale_temporaries`` (run when training starts) removes those whose process is gone.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from typing import BinaryIO, Callable, NamedTuple

import torch
from torch import Tensor

from .config import TrainConfig, build_model, build_net, make_path
from .score import ScoreModel

__all__ = ["CheckpointError", "write_atomic", "save_checkpoint", "load_checkpoint", "export", "read_weights",
           "TrainedModel", "model_from_checkpoint", "saved_config", "remove_stale_temporaries", "FORMAT_VERSION",
           "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
# 1 also held RNG states (byte tensors), which are now ignored: training draws from streams seeded by (seed, step,
# rank), so a format-1 run resumes, with new draws from then on; 3 added the data fingerprint, power EMAs, loss scale
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
SAFETENSORS_FORMAT = "sgm-ema-1"
NEEDED = ("format", "step", "config", "model", "ema", "optimizer", "scheduler", "data_shape")


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, unsafe to load, or does not match the run that tries to load it."""


def write_atomic(path: str, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` to a temporary file in ``path``'s folder, flushed to disk, then renamed to ``path``: a crash
    leaves the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_TEMPORARY = re.compile(r"\.tmp-(\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a file of our own pid was left by an earlier process that had it: we are not writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the ``*.tmp-PID`` files ``write_atomic`` left in ``folder`` (and its sub-folders) whose process is
    gone; returns their paths."""
    removed = []
    for root, _, names in os.walk(folder):
        for name in names:
            match = _TEMPORARY.search(name)
            if match and not _alive(int(match.group(1))):
                os.remove(os.path.join(root, name))
                removed.append(os.path.join(root, name))
    return removed


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` atomically (``write_atomic``)."""
    write_atomic(path, lambda f: torch.save(state, f))


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and then the JSON ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _exists(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a training checkpoint with ``weights_only=True``; ``CheckpointError`` naming the file otherwise."""
    _exists(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused: it is not a plain-tensor checkpoint (it may carry pickled code, "
                              f"which sgm never runs; {first})") from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not set(NEEDED) <= set(state):
        missing = sorted(set(NEEDED) - set(state if isinstance(state, dict) else ()))
        raise CheckpointError(f"{path}: not an sgm checkpoint (missing {missing})")
    if state["format"] not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, expected one of {READABLE_FORMATS}")
    return state


def export(checkpoint: str, out: str, ema_std: float | None = None, ema_step: int | None = None) -> str:
    """Write a training checkpoint's EMA weights, config and data shape to the safetensors file ``out``; with
    ``ema_std``, the power-function EMA of that relative std at ``ema_step`` (default: the last snapshot's)
    reconstructed post hoc from the run's snapshots (``sgm.ema.posthoc_weights``) instead."""
    from safetensors.torch import save

    from .ema import SNAPSHOTS, posthoc_weights

    if not out.endswith(".safetensors"):
        raise ValueError(f"out must end in .safetensors, got {out!r}")
    if ema_std is None and ema_step is not None:
        raise ValueError("ema_step needs ema_std (the post-hoc EMA to reconstruct)")
    state = load_checkpoint(checkpoint)
    weights, step, extra = state["ema"], int(state["step"]), {}
    if ema_std is not None:
        weights, info = posthoc_weights(os.path.join(os.path.dirname(os.path.abspath(checkpoint)), SNAPSHOTS),
                                        ema_std, ema_step)
        step, extra = info["step"], {"posthoc_ema": json.dumps(info)}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    metadata = {"format": SAFETENSORS_FORMAT, "config": json.dumps(state["config"]),
                "data_shape": json.dumps(list(state["data_shape"])), "step": str(step), **extra}
    if state.get("path") is not None:
        metadata["path"] = json.dumps(state["path"])
    write_atomic(out, lambda f: f.write(save(tensors, metadata=metadata)))
    return out


def _read_safetensors(path: str, device) -> tuple[dict[str, Tensor], dict, tuple, dict | None]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != SAFETENSORS_FORMAT:
                raise CheckpointError(f"{path}: a safetensors file, but not one written by sgm export "
                                      f"(format {metadata.get('format')!r}, expected {SAFETENSORS_FORMAT!r})")
            weights = {k: f.get_tensor(k) for k in f.keys()}
        recorded = json.loads(metadata["path"]) if "path" in metadata else None
        return weights, json.loads(metadata["config"]), tuple(json.loads(metadata["data_shape"])), recorded
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None


def read_weights(path: str, ema: bool = True, device="cpu") -> tuple[dict[str, Tensor], dict, tuple]:
    """``(state_dict, config dict, data shape)`` from a training checkpoint or an exported safetensors file."""
    _exists(path)
    if _is_safetensors(path):
        if not ema:
            raise CheckpointError(f"{path}: an exported file holds only the EMA weights")
        weights, config, shape, recorded = _read_safetensors(path, device)
        _check_path(path, recorded, config)
        return weights, config, shape
    state = load_checkpoint(path, map_location=device)
    _check_path(path, state.get("path"), state["config"])
    return state["ema" if ema else "model"], state["config"], tuple(state["data_shape"])


class TrainedModel(NamedTuple):
    """A saved run's ``model`` (a ``ScoreModel`` on its path), its ``config`` and the per-sample data ``shape``."""

    model: ScoreModel
    config: TrainConfig
    shape: tuple[int, ...]


def _check_path(path: str, recorded: dict | None, config_values: dict) -> None:
    """The path the file records (``{"name", "params"}``, every parameter of it) is the one its config builds;
    older files record none."""
    if recorded is None:
        return
    config = _config_of(path, config_values)
    built = make_path(config.sde, config.sde_args)
    if recorded.get("name") != config.sde or recorded.get("params") != dict(built.params()):
        raise CheckpointError(f"{path}: trained on the path {recorded}, but its config builds {config.sde!r} "
                              f"{built!r}")


def model_from_checkpoint(path: str, ema: bool = True, device="cpu") -> TrainedModel:
    """The score function of a saved run (EMA weights by default), its ``TrainConfig`` and the data shape;
    ``path`` is a training checkpoint or a file written by ``export``."""
    from .device import resolve_device

    device = resolve_device(device)
    weights, config, shape = read_weights(path, ema, device)
    config = _config_of(path, config)
    net = build_net(config, shape).to(device)
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the network its config builds ({err})") from None
    net.eval()
    return TrainedModel(build_model(net, config), config, shape)


def _config_of(path: str, values: dict) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config is not a TrainConfig ({err})") from None


def saved_config(out_dir: str) -> TrainConfig | None:
    """The config saved in ``out_dir``'s checkpoint (None if there is none): what a resumed run starts from."""
    path = os.path.join(out_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    return _config_of(path, load_checkpoint(path)["config"])
