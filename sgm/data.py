"""Datasets: generated 2-D sets, scikit-learn's bundled 8×8 digits, and loaders for local MNIST, CIFAR-10
and image folders. Images come back as float32 ``(N, C, H, W)`` in ``[-1, 1]``; 2-D sets as ``(N, 2)``.

Nothing is downloaded: the real-data loaders read files already on disk, in their published formats
(MNIST's idx files, optionally gzipped; CIFAR-10's python pickle batches, read by an unpickler that builds
nothing but the documented dict of arrays, lists, bytes and ints; any PNG/JPEG/BMP/GIF folder, also as an
``ImageFolder`` that decodes each image when it is asked for).

Training sets are checked once (``check_finite``: the first non-finite value by index) and identified by
``fingerprint`` (shape, dtype and a SHA-256 of the values), which a resumed run compares with its checkpoint's.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .checks import choice, integer
from .targets import ring_mixture

__all__ = ["TOY_SETS", "toy_2d", "LabelledImages", "FolderImages", "load_digits", "load_mnist", "load_cifar10",
           "load_image_folder", "ImageFolder",
           "load_dataset", "DATASETS", "FILE_DATASETS", "check_finite", "fingerprint"]

TOY_SETS = ("moons", "swiss_roll", "8gaussians", "checkerboard")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of a generated 2-D set, roughly zero-mean with unit-order spread.

    - ``moons``: two interleaved half circles with N(0, 0.1²) noise, scaled by 2 about their centre;
    - ``swiss_roll``: ``(φ cos φ, φ sin φ)/5``, ``φ ~ U(1.5π, 4.5π)``, plus N(0, 0.1²);
    - ``8gaussians``: 8 equal Gaussians of std 0.3 on a circle of radius 2 (``sgm.targets.ring_mixture``);
    - ``checkerboard``: uniform on the black squares of a 4×4 board on [-2, 2]².
    """
    choice("name", name, TOY_SETS)
    n = integer("n", n)

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


class LabelledImages(NamedTuple):
    """A labelled image set: ``images`` ``(N, C, H, W)`` in [-1, 1] and integer ``labels`` ``(N,)``."""

    images: Tensor
    labels: Tensor


class FolderImages(NamedTuple):
    """An image folder's ``images`` and ``labels`` with its ``classes``: the sub-folder names in label order."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]


def _to_unit_range(images: np.ndarray, top: float) -> Tensor:
    """``uint8``-like images in ``[0, top]`` to float32 in ``[-1, 1]``."""
    return torch.from_numpy(images.astype(np.float32) * (2.0 / top) - 1.0)


def load_digits() -> LabelledImages:
    """scikit-learn's bundled 8×8 digits (1797 images, 17 grey levels): ``(N, 1, 8, 8)`` in [-1, 1] and labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return LabelledImages(_to_unit_range(bunch.images[:, None], 16.0), torch.from_numpy(bunch.target).long())


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
    return LabelledImages(_to_unit_range(images[:, None], 255.0), torch.from_numpy(labels.astype(np.int64)))


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-unpickling function, whatever module numpy keeps it in
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _CifarUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only: any other global a pickle names (a function it would call,
    a class it would make) is refused before anything runs."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return _CIFAR_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}, which a CIFAR-10 batch never does "
                                     f"(it may carry code, which sgm never runs)")


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` of one python batch: ``{b"data": uint8 array, b"labels": list
    of ints, ...}`` (the other keys, bytes and lists of bytes, are ignored); a ``ValueError`` naming the file
    otherwise."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels', got "
                         f"{type(batch).__name__} {sorted(batch)[:4] if isinstance(batch, dict) else ''})")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected b'data' a uint8 array (N, 3072), got {type(data).__name__} "
                         f"{getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v for v in labels):
        raise ValueError(f"{path}: expected b'labels' a list of {len(data)} non-negative ints")
    return data, np.asarray(labels, dtype=np.int64)


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
        data, lab = _read_cifar_batch(path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return LabelledImages(_to_unit_range(np.concatenate(images), 255.0), torch.from_numpy(np.concatenate(labels)))


class ImageFolder:
    """Every image file under ``folder`` (sorted by path), decoded when indexed: ``folder[i]`` is a float32
    ``(channels, H, W)`` tensor in ``[-1, 1]``, resized to ``size``×``size`` (bilinear) when given. With
    ``labels``, ``self.labels[i]`` is image ``i``'s class: its top-level sub-folder, classes numbered in sorted
    name order (``self.classes``). Without ``size`` every image must have the first one's size."""

    def __init__(self, folder: str, size: int | None = None, channels: int = 3, labels: bool = False):
        folder = _existing(folder, "image folder")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        size = None if size is None else integer("size", size)
        self.folder, self.size, self.channels = folder, size, channels
        self.files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f"image folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        self.labels = self.classes = None
        if labels:
            parts = [os.path.relpath(f, folder).split(os.sep) for f in self.files]
            loose = [os.path.join(folder, *p) for p in parts if len(p) == 1]
            if loose:
                raise ValueError(f"image folder {folder!r}: labels come from sub-folders, but {loose[0]} is not in one")
            self.classes = sorted({p[0] for p in parts})
            self.labels = torch.tensor([self.classes.index(p[0]) for p in parts], dtype=torch.long)
        self.shape = (channels,) + self._array(0).shape[:2]

    def __len__(self) -> int:
        return len(self.files)

    def _array(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if self.size is not None:
                    img = img.resize((self.size, self.size), Image.BILINEAR)
                return np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from err

    def images(self, indices) -> Tensor:
        """Images ``indices`` as one ``(len(indices), channels, H, W)`` batch."""
        arrays = [self._array(int(i)) for i in indices]
        for i, a in zip(indices, arrays):
            if a.shape[:2] != self.shape[1:]:
                raise ValueError(f"images in {self.folder!r} differ in size ({self.files[int(i)]} is "
                                 f"{a.shape[1]}×{a.shape[0]}, the first {self.shape[2]}×{self.shape[1]}); pass "
                                 f"size= to resize them")
        stacked = np.stack(arrays)
        return _to_unit_range(stacked[:, None] if self.channels == 1 else stacked.transpose(0, 3, 1, 2), 255.0)

    def __getitem__(self, i: int) -> Tensor:
        return self.images([i])[0]

    def fingerprint(self) -> dict:
        """Shape, dtype and a SHA-256 of every file's relative path and size (not their bytes: that would read
        the whole set at every start), with the labels."""
        h = hashlib.sha256(repr((self.size, self.channels)).encode())
        for path in self.files:
            h.update(f"{os.path.relpath(path, self.folder)}\0{os.path.getsize(path)}\0".encode())
        if self.labels is not None:
            h.update(self.labels.numpy().tobytes())
        return {"shape": [len(self)] + list(self.shape), "dtype": "float32", "sha256": h.hexdigest()}


def load_image_folder(folder: str, size: int | None = None, channels: int = 3, labels: bool = False):
    """Every image file under ``folder`` (sorted), as ``(N, channels, H, W)`` in [-1, 1], resized to ``size``×``size``
    (bilinear) when given; otherwise all images must share one size. With ``labels``,
    ``FolderImages``: each image's class is its top-level sub-folder, classes numbered in sorted name order."""
    images = ImageFolder(folder, size, channels, labels)
    x = images.images(range(len(images)))
    return FolderImages(x, images.labels, tuple(images.classes)) if labels else x


FILE_DATASETS = ("mnist", "cifar10", "folder")
DATASETS = TOY_SETS + ("digits",) + FILE_DATASETS


def check_finite(x: Tensor, what: str = "data") -> Tensor:
    """``x`` if every value is finite; else a ``ValueError`` naming the first non-finite value by its index."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{what} holds {int(bad.sum())} non-finite value(s); the first is {x[index].item()} at index "
                         f"{index if len(index) > 1 else index[0]}")
    return x


def fingerprint(x: Tensor, labels: Tensor | None = None) -> dict:
    """``{"shape", "dtype", "sha256"}`` of a tensor (and its labels): equal exactly when the values are."""
    h = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().cpu().long().numpy().tobytes())
    return {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""), "sha256": h.hexdigest()}


def load_dataset(name: str, path: str | None = None, n: int = 50_000, seed: int = 0, size: int | None = None,
                 labels: bool = False):
    """The training tensor of a named dataset: a toy set (``n`` points drawn with ``seed``), ``digits``, or
    ``mnist`` / ``cifar10`` / ``folder`` read from ``path``. With ``labels``, a ``LabelledImages`` (the image sets;
    a folder's classes are its sub-folders); toy sets have no labels."""
    if name in TOY_SETS:
        if labels:
            raise ValueError(f"dataset {name!r} has no class labels (labelled: digits, mnist, cifar10, folder)")
        return toy_2d(name, n, torch.Generator().manual_seed(seed))
    if name == "digits":
        return load_digits() if labels else load_digits().images
    if name in ("mnist", "cifar10", "folder"):
        if path is None:
            raise ValueError(f"dataset {name!r} needs a path to its files")
        if name == "mnist":
            return load_mnist(path) if labels else load_mnist(path).images
        if name == "cifar10":
            return load_cifar10(path) if labels else load_cifar10(path).images
        if labels:
            return LabelledImages(*load_image_folder(path, size, labels=True)[:2])
        return load_image_folder(path, size)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
