"""FID, KID and Inception Score of image samples against a reference set (``sgm eval``).

Inputs are a folder of images, a folder of ``.npz`` shards (as ``sgm sample --n`` writes them), an ``.npz``
file holding images (``samples`` as sgm writes them: float ``(N, C, H, W)`` in ``[-1, 1]``; or the first array,
e.g. a ``uint8`` ``(N, H, W, C)`` reference batch), or an ``.npz`` of precomputed statistics (``mu``, ``sigma``:
FID only). Images go to ``[0, 1]`` RGB and through the FID Inception network (``sgm.nets.inception``, weights
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

__all__ = ["load_images", "load_input", "features", "Stats", "evaluate"]


@dataclass
class Stats:
    """Mean and covariance of a set's features (what FID needs), and the features themselves when known."""
    mu: Tensor
    sigma: Tensor
    features: Tensor | None = None
    logits: Tensor | None = None

    @classmethod
    def of(cls, feats: Tensor, logits: Tensor | None = None) -> "Stats":
        feats = feats.to(torch.float64)
        return cls(feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], -1), feats, logits)

    def save(self, path: str) -> None:
        np.savez(path, mu=self.mu.numpy(), sigma=self.sigma.numpy())


def _unit_rgb(x: np.ndarray, where: str) -> Tensor:
    """Images as float ``(N, 3, H, W)`` in ``[0, 1]``: ``uint8`` is divided by 255, floats are taken to be in
    ``[-1, 1]`` (sgm's convention); channels-last is moved first; grey is repeated to RGB."""
    if x.ndim != 4:
        raise ValueError(f"{where}: expected images (N, C, H, W) or (N, H, W, C), got an array of shape {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{where}: images need 1 or 3 channels, got shape {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.to(torch.float32) / 255 if x.dtype == np.uint8 else ((t.to(torch.float32) + 1) / 2).clamp(0, 1)
    return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t


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


def load_images(path: str) -> Tensor:
    """The images at ``path`` (folder of images or of ``.npz`` shards, or an ``.npz``) in ``[0, 1]`` RGB."""
    from .data import load_image_folder

    if os.path.isdir(path):
        shards = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
        if not shards:
            return (load_image_folder(path, channels=3) + 1) / 2
        return torch.cat([_unit_rgb(_images_of(_read_npz(os.path.join(path, f)), f), os.path.join(path, f))
                          for f in shards])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no samples at {path!r} (a folder of images or .npz shards, or an .npz file)")
    return _unit_rgb(_images_of(_read_npz(path), path), path)


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


def load_input(path: str, net: nn.Module, batch_size: int = 100, device="cpu", progress: bool = False) -> Stats:
    """``Stats`` of the set at ``path``: read from an ``.npz`` holding ``mu`` and ``sigma``, else computed."""
    if os.path.isfile(path) and path.endswith(".npz"):
        arrays = _read_npz(path)
        if {"mu", "sigma"} <= set(arrays):
            return Stats(torch.from_numpy(arrays["mu"]).double(), torch.from_numpy(arrays["sigma"]).double())
    images = load_images(path)
    if len(images) < 2:
        raise ValueError(f"{path}: needs at least 2 images, got {len(images)}")
    return Stats.of(*features(images, net, batch_size, device, progress))


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
