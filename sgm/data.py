"""Datasets: generated 2-D sets, scikit-learn's bundled 8×8 digits, and loaders for local MNIST, CIFAR-10
and image folders. Images come back as float32 ``(N, C, H, W)`` in ``[-1, 1]``; 2-D sets as ``(N, 2)``.

Nothing is downloaded: the real-data loaders read files already on disk, in their published formats
(MNIST's idx files, optionally gzipped; CIFAR-10's python pickle batches; any PNG/JPEG/BMP/GIF folder).
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct

import numpy as np
import torch
from torch import Tensor

from .targets import ring_mixture

__all__ = ["TOY_SETS", "toy_2d", "load_digits", "load_mnist", "load_cifar10", "load_image_folder", "load_dataset",
           "DATASETS"]

TOY_SETS = ("moons", "swiss_roll", "8gaussians", "checkerboard")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of a generated 2-D set, roughly zero-mean with unit-order spread.

    - ``moons``: two interleaved half circles with N(0, 0.1²) noise, scaled by 2 about their centre;
    - ``swiss_roll``: ``(φ cos φ, φ sin φ)/5``, ``φ ~ U(1.5π, 4.5π)``, plus N(0, 0.1²);
    - ``8gaussians``: 8 equal Gaussians of std 0.3 on a circle of radius 2 (``sgm.targets.ring_mixture``);
    - ``checkerboard``: uniform on the black squares of a 4×4 board on [-2, 2]².
    """
    if name not in TOY_SETS:
        raise ValueError(f"name must be one of {TOY_SETS}, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")

    def rand(*shape):
        return torch.rand(shape, generator=generator)

    def randn(*shape):
        return torch.randn(shape, generator=generator)

    if name == "moons":
        upper = rand(n) < 0.5
        phi = math.pi * rand(n)
        x = torch.where(upper, phi.cos(), 1 - phi.cos())
        y = torch.where(upper, phi.sin(), 0.5 - phi.sin())
        return 2 * (torch.stack([x - 0.5, y - 0.25], 1) + 0.1 * randn(n, 2))
    if name == "swiss_roll":
        phi = math.pi * (1.5 + 3 * rand(n))
        return torch.stack([phi * phi.cos(), phi * phi.sin()], 1) / 5 + 0.1 * randn(n, 2)
    if name == "8gaussians":
        return ring_mixture(8, 2.0, 0.3, dtype=torch.float32).sample(n, generator=generator)
    # checkerboard: a cell (i, j) of the 4×4 board with i + j even, then a uniform point inside it
    cell = torch.randint(8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    return torch.stack([col, row], 1).float() - 2 + rand(n, 2)


def _to_unit_range(images: np.ndarray, top: float) -> Tensor:
    """``uint8``-like images in ``[0, top]`` to float32 in ``[-1, 1]``."""
    return torch.from_numpy(images.astype(np.float32) * (2.0 / top) - 1.0)


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 images, 17 grey levels): ``(N, 1, 8, 8)`` in [-1, 1] and labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _to_unit_range(bunch.images[:, None], 16.0), torch.from_numpy(bunch.target).long()


def _existing(path: str, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file or folder {path!r}")
    return path


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for an idx file")
    got, n = struct.unpack(">II", data[:8])
    if got != magic:
        raise ValueError(f"{path}: idx magic number {got}, expected {magic}")
    dims = (n,) + (struct.unpack(">II", data[8:16]) if magic == 2051 else ())
    offset = 16 if magic == 2051 else 8
    size = int(np.prod(dims))
    if len(data) - offset != size:
        raise ValueError(f"{path}: expected {size} bytes of data for shape {dims}, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_mnist(folder: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """MNIST (or Fashion-MNIST) from its idx files in ``folder``: ``(N, 1, 28, 28)`` in [-1, 1] and labels.

    Reads ``{train,t10k}-images-idx3-ubyte`` and ``-labels-idx1-ubyte``, each optionally ``.gz``.
    """
    folder = _existing(folder, "MNIST folder")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"

    def find(stem: str) -> str:
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
        raise FileNotFoundError(f"MNIST folder {folder!r} has no {stem} (or {stem}.gz)")

    images = _read_idx(find(f"{prefix}-images-idx3-ubyte"), 2051)
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"), 2049)
    if len(images) != len(labels):
        raise ValueError(f"MNIST folder {folder!r}: {len(images)} images but {len(labels)} labels")
    return _to_unit_range(images[:, None], 255.0), torch.from_numpy(labels.astype(np.int64))


def load_cifar10(folder: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """CIFAR-10 from its python pickle batches in ``folder`` (``data_batch_1`` … ``data_batch_5``, ``test_batch``):
    ``(N, 3, 32, 32)`` in [-1, 1] and labels."""
    folder = _existing(folder, "CIFAR-10 folder")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    paths = [os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))]
    if not paths:
        raise FileNotFoundError(f"CIFAR-10 folder {folder!r} has none of {names}")
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data, lab = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise ValueError(f"{path}: expected data (N, 3072) with N labels, got {data.shape} and {len(lab)}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return _to_unit_range(np.concatenate(images), 255.0), torch.from_numpy(np.concatenate(labels))


def load_image_folder(folder: str, size: int | None = None, channels: int = 3, labels: bool = False):
    """Every image file under ``folder`` (sorted), as ``(N, channels, H, W)`` in [-1, 1], resized to ``size``×``size``
    (bilinear) when given; otherwise all images must share one size. With ``labels``, returns ``(images, labels,
    class_names)``: each image's class is its top-level sub-folder, classes numbered in sorted name order."""
    from PIL import Image, UnidentifiedImageError

    folder = _existing(folder, "image folder")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"image folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    if labels:
        parts = [os.path.relpath(f, folder).split(os.sep) for f in files]
        loose = [os.path.join(folder, *p) for p in parts if len(p) == 1]
        if loose:
            raise ValueError(f"image folder {folder!r}: labels come from sub-folders, but {loose[0]} is not in one")
        names = sorted({p[0] for p in parts})
        classes = torch.tensor([names.index(p[0]) for p in parts], dtype=torch.long)
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if size is not None:
                    img = img.resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from err
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {folder!r} differ in size ({sorted(shapes)[:3]}…); pass size= to resize them")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)
    images = _to_unit_range(stacked, 255.0)
    return (images, classes, names) if labels else images


DATASETS = TOY_SETS + ("digits", "mnist", "cifar10", "folder")


def load_dataset(name: str, path: str | None = None, n: int = 50_000, seed: int = 0, size: int | None = None,
                 labels: bool = False):
    """The training tensor of a named dataset: a toy set (``n`` points drawn with ``seed``), ``digits``, or
    ``mnist`` / ``cifar10`` / ``folder`` read from ``path``. With ``labels``, ``(data, labels)`` (the image sets;
    a folder's classes are its sub-folders); toy sets have no labels."""
    if name in TOY_SETS:
        if labels:
            raise ValueError(f"dataset {name!r} has no class labels (labelled: digits, mnist, cifar10, folder)")
        return toy_2d(name, n, torch.Generator().manual_seed(seed))
    if name == "digits":
        return load_digits() if labels else load_digits()[0]
    if name in ("mnist", "cifar10", "folder"):
        if path is None:
            raise ValueError(f"dataset {name!r} needs a path to its files")
        if name == "mnist":
            return load_mnist(path) if labels else load_mnist(path)[0]
        if name == "cifar10":
            return load_cifar10(path) if labels else load_cifar10(path)[0]
        return load_image_folder(path, size, labels=True)[:2] if labels else load_image_folder(path, size)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
