"""FID, KID and Inception Score of image samples against a reference set (``sgm eval``).

Inputs are a folder of images, a folder of ``.npz`` shards (as ``sgm sample --n`` writes them), an ``.npz``
file holding images (``samples`` as sgm writes them: float ``(N, C, H, W)`` in ``[-1, 1]``; or the first array,
e.g. a ``uint8`` ``(N, H, W, C)`` reference batch), or an ``.npz`` of precomputed statistics (``mu``, ``sigma``:
FID only). ``uint8`` images are read as ``[0, 255]``; float images in the ``value_range`` given, or by default
(``"auto"``) as ``[-1, 1]`` (sgm's samples) when they hold a negative value, ``[0, 1]`` when they lie in it, and
refused otherwise — the range used is reported (``Stats.source``), and non-finite values are refused naming the
first one. Images go to ``[0, 1]`` RGB and through the FID Inception network (``sgm.nets.inception``, weights
from a local file); FID is the Fréchet distance of Gaussians fitted to the 2048 pooled features, KID the
cubic-kernel MMD² on those features, IS from the 1008 logits (``sgm.metrics``). ``.npz`` files are read with
``allow_pickle=False``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import metrics

__all__ = ["load_images", "read_input", "stats_of", "load_input", "features", "Stats", "evaluate", "VALUE_RANGES"]


@dataclass
class Stats:
    """Mean and covariance of a set's features (what FID needs), the features themselves when known, and how the
    set was read."""
    mu: Tensor
    sigma: Tensor
    features: Tensor | None = None
    logits: Tensor | None = None
    source: str = ""

    @classmethod
    def of(cls, feats: Tensor, logits: Tensor | None = None, source: str = "") -> "Stats":
        feats = feats.to(torch.float64)
        return cls(feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], -1), feats, logits, source)

    def save(self, path: str) -> None:
        np.savez(path, mu=self.mu.numpy(), sigma=self.sigma.numpy())


VALUE_RANGES = {"-1:1": (-1.0, 1.0), "0:1": (0.0, 1.0), "0:255": (0.0, 255.0)}


def _value_range(x: np.ndarray, where: str, value_range: str) -> tuple[float, float]:
    """The range ``x``'s values are read in (see the module docstring)."""
    if x.dtype == np.uint8:
        return 0.0, 255.0
    if value_range != "auto":
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be 'auto' or one of {tuple(VALUE_RANGES)}, got {value_range!r}")
        return VALUE_RANGES[value_range]
    low, high = float(x.min()), float(x.max())
    if low < 0:
        return -1.0, 1.0
    if high <= 1:
        return 0.0, 1.0
    raise ValueError(f"{where}: float images with values in [{low:g}, {high:g}] are neither sgm's [-1, 1] nor [0, 1]; "
                     f"give their range (value_range / sgm eval --value-range, e.g. 0:255)")


def _unit_rgb(x: np.ndarray, where: str, value_range: str = "auto") -> tuple[Tensor, tuple[float, float]]:
    """Images as float ``(N, 3, H, W)`` in ``[0, 1]`` and the range they were read in; channels-last is moved
    first; grey is repeated to RGB."""
    from .data import check_finite

    if x.ndim != 4:
        raise ValueError(f"{where}: expected images (N, C, H, W) or (N, H, W, C), got an array of shape {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{where}: images need 1 or 3 channels, got shape {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.is_floating_point():
        check_finite(t, where)
    low, high = _value_range(x, where, value_range)
    t = ((t.to(torch.float32) - low) / (high - low)).clamp(0, 1)
    return (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t), (low, high)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz of arrays ({err})") from None


def _images_of(arrays: dict[str, np.ndarray], path: str) -> np.ndarray:
    if not arrays:
        raise ValueError(f"{path}: holds no arrays")
    return arrays["samples"] if "samples" in arrays else arrays[sorted(arrays)[0]]


def load_images(path: str, value_range: str = "auto") -> Tensor:
    """The images at ``path`` (folder of images or of ``.npz`` shards, or an ``.npz``) in ``[0, 1]`` RGB."""
    return _load_images(path, value_range)[0]


def _load_images(path: str, value_range: str = "auto") -> tuple[Tensor, str]:
    """The images at ``path`` and a description of how they were read."""
    from .data import load_image_folder

    if os.path.isdir(path):
        shards = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
        if not shards:
            x = (load_image_folder(path, channels=3) + 1) / 2
            return x, f"{len(x)} image files"
        raw = np.concatenate([_images_of(_read_npz(os.path.join(path, f)), f) for f in shards])
        x, (low, high) = _unit_rgb(raw, f"{path} ({len(shards)} shards)", value_range)
        return x, f"{len(x)} images in {len(shards)} shards, read as [{low:g}, {high:g}]"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no samples at {path!r} (a folder of images or .npz shards, or an .npz file)")
    x, (low, high) = _unit_rgb(_images_of(_read_npz(path), path), path, value_range)
    return x, f"{len(x)} images, read as [{low:g}, {high:g}]"


@torch.no_grad()
def features(images: Tensor, net: nn.Module, batch_size: int = 100, device="cpu",
             progress: bool = False) -> tuple[Tensor, Tensor]:
    """``net``'s ``(features, logits)`` of ``images`` in batches, as float64 on the CPU."""
    feats, logits = [], []
    for chunk in tqdm(images.split(batch_size), desc="features", disable=not progress, leave=False):
        f, l = net(chunk.to(device))
        feats.append(f.double().cpu())
        logits.append(l.double().cpu())
    return torch.cat(feats), torch.cat(logits)


def read_input(path: str, value_range: str = "auto") -> Stats | tuple[Tensor, str]:
    """The set at ``path`` checked and read: ``Stats`` from an ``.npz`` holding ``mu`` and ``sigma``, else its
    images in ``[0, 1]`` RGB with a description of how they were read (float images in ``value_range``)."""
    if os.path.isfile(path) and path.endswith(".npz"):
        arrays = _read_npz(path)
        if {"mu", "sigma"} <= set(arrays):
            return Stats(torch.from_numpy(arrays["mu"]).double(), torch.from_numpy(arrays["sigma"]).double(),
                         source="feature statistics")
    images, source = _load_images(path, value_range)
    if len(images) < 2:
        raise ValueError(f"{path}: needs at least 2 images, got {len(images)}")
    return images, source


def stats_of(read: Stats | tuple[Tensor, str], net: nn.Module, batch_size: int = 100, device="cpu",
             progress: bool = False) -> Stats:
    """``Stats`` of what ``read_input`` read: its features through ``net`` (statistics as they are)."""
    if isinstance(read, Stats):
        return read
    images, source = read
    return Stats.of(*features(images, net, batch_size, device, progress), source=source)


def load_input(path: str, net: nn.Module, batch_size: int = 100, device="cpu", progress: bool = False,
               value_range: str = "auto") -> Stats:
    """``Stats`` of the set at ``path`` (``read_input``, then ``stats_of``)."""
    return stats_of(read_input(path, value_range), net, batch_size, device, progress)


def evaluate(samples: Stats, reference: Stats, kid_subsets: int = 100, kid_subset_size: int = 1000,
             is_splits: int = 10, seed: int = 0) -> dict[str, float]:
    """``{"fid", "kid", "kid_std", "is", "is_std"}`` (KID when both sets have features, IS when ``samples``
    has logits)."""
    if samples.mu.shape != reference.mu.shape:
        raise ValueError(f"samples and reference have features of sizes {tuple(samples.mu.shape)} and "
                         f"{tuple(reference.mu.shape)}")
    both = samples.features is not None and reference.features is not None
    if both:
        fid = metrics.frechet_of_features(samples.features, reference.features)
    elif samples.features is not None:
        fid = metrics.frechet_to_gaussian(samples.features, reference.mu, reference.sigma)
    else:
        fid = metrics.gaussian_frechet(samples.mu, samples.sigma, reference.mu, reference.sigma)
    out = {"fid": fid}
    if both:
        g = torch.Generator().manual_seed(seed)
        out["kid"], out["kid_std"] = metrics.kid(samples.features, reference.features, kid_subsets, kid_subset_size, g)
    if samples.logits is not None:
        out["is"], out["is_std"] = metrics.inception_score(samples.logits, min(is_splits, len(samples.logits)))
    return out
