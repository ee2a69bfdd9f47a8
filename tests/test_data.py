"""Datasets: generated 2-D sets, the bundled digits, and the real-format loaders on files written here."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from sgm import data


@pytest.mark.parametrize("name", data.TOY_SETS)
def test_toy_sets_are_seeded_and_unit_scale(name):
    a = data.toy_2d(name, 5000, torch.Generator().manual_seed(0))
    b = data.toy_2d(name, 5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and torch.equal(a, b)
    assert bool((a.std(0) > 0.5).all() and (a.std(0) < 2.5).all() and (a.mean(0).abs() < 0.5).all())


def test_checkerboard_fills_only_black_squares():
    x = data.toy_2d("checkerboard", 20000, torch.Generator().manual_seed(0))
    cells = (x + 2).floor().long()
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    assert torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).nonzero().numel() == 8


def test_digits():
    images, labels = data.load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))


def write_idx(path, array, magic, compress=False):
    header = struct.pack(">II", magic, len(array)) + (struct.pack(">II", *array.shape[1:]) if array.ndim == 3 else b"")
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, 2051, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, 2049, compress)
    x, y = data.load_mnist(str(tmp_path))
    assert x.shape == (5, 1, 28, 28)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images / 127.5 - 1).float())
    assert y.tolist() == labels.tolist()


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.load_mnist(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(str(tmp_path))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), 2049)  # a labels magic on images
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2), 2049)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        data.load_mnist(str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 2, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="expected 1568 bytes"):
        data.load_mnist(str(tmp_path))


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, (4, 3072), dtype=np.uint8) for _ in range(2)]
    for i, batch in enumerate(raw, start=1):
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": batch, b"labels": list(range(i, i + 4)), b"batch_label": b"x"}, f)
    x, y = data.load_cifar10(str(tmp_path))
    assert x.shape == (8, 3, 32, 32) and y.tolist() == [1, 2, 3, 4, 2, 3, 4, 5]
    # row-major 3072 = 3 planes of 32×32 (R, G, B), as the CIFAR-10 page describes
    torch.testing.assert_close(x[0, 1, 0, 5], torch.tensor(raw[0][0, 1024 + 5] / 127.5 - 1, dtype=torch.float32))
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3: not a CIFAR-10 python batch"):
        data.load_cifar10(str(tmp_path))


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(3)]
    (tmp_path / "sub").mkdir()
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / ("sub" if i == 2 else ".") / f"img{i}.png")
    x = data.load_image_folder(str(tmp_path))
    assert x.shape == (3, 3, 6, 6)
    torch.testing.assert_close(x[0], torch.from_numpy(arrays[0].transpose(2, 0, 1) / 127.5 - 1).float())
    assert data.load_image_folder(str(tmp_path), size=4, channels=1).shape == (3, 1, 4, 4)
    Image.fromarray(arrays[0][:4]).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="differ in size"):
        data.load_image_folder(str(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        data.load_image_folder(str(tmp_path), size=4)


def test_load_dataset_names():
    assert data.load_dataset("moons", n=100).shape == (100, 2)
    with pytest.raises(ValueError, match="needs a path"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load_dataset("imagenet")


def test_labelled_datasets(tmp_path):
    rng = np.random.default_rng(0)
    for i, cls in enumerate(["dog", "cat", "dog"]):
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y, names = data.load_image_folder(str(tmp_path), labels=True)
    assert names == ("cat", "dog") and y.tolist() == [0, 1, 1] and x.shape == (3, 3, 4, 4)  # files sorted by path
    folder = data.load_dataset("folder", str(tmp_path), labels=True)
    assert torch.equal(folder.images, x) and torch.equal(folder.labels, y)
    images, labels = data.load_dataset("digits", labels=True)
    assert len(images) == len(labels) == 1797 and labels.unique().tolist() == list(range(10))
    with pytest.raises(ValueError, match="'moons' has no class labels"):
        data.load_dataset("moons", labels=True)
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="loose.png is not in one"):
        data.load_image_folder(str(tmp_path), labels=True)


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code in the batch file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.open, (self.marker, "w")


def test_a_cifar_batch_that_would_run_code_is_refused_before_it_runs(tmp_path):
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1], b"batch_label": Payload(tmp_path / "ran")}
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    with open(tmp_path / "data_batch_1", "rb") as f:  # the check can fail: an unrestricted unpickler runs it
        pickle.load(f, encoding="bytes")
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR-10 python batch \(refused: the pickle names "
                                         r"io.open"):  # builtins.open is io.open
        data.load_cifar10(str(tmp_path))
    assert not (tmp_path / "ran").exists()
    # only the documented dict of arrays: a float array, object labels or another container are refused by name
    for bad, match in (({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}, "uint8 array"),
                       ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": ["a", "b"]}, "list of 2"),
                       ([1, 2], "expected a dict")):
        with open(tmp_path / "data_batch_1", "wb") as f:
            pickle.dump(bad, f)
        with pytest.raises(ValueError, match=match):
            data.load_cifar10(str(tmp_path))


def test_check_finite_names_the_first_bad_index_and_fingerprints_tell_data_apart():
    x = torch.zeros(5, 2)
    x[3, 1], x[4, 0] = float("inf"), float("nan")
    with pytest.raises(ValueError, match=r"holds 2 non-finite value\(s\); the first is inf at index \(3, 1\)"):
        data.check_finite(x)
    a = data.fingerprint(torch.arange(6.0).reshape(3, 2))
    assert a == data.fingerprint(torch.arange(6.0).reshape(3, 2)) and a["shape"] == [3, 2] and a["dtype"] == "float32"
    assert a != data.fingerprint(torch.arange(6.0).reshape(3, 2).double())
    assert a != data.fingerprint(torch.arange(6.0).reshape(3, 2), labels=torch.tensor([0, 1, 0]))
    b = torch.arange(6.0).reshape(3, 2)
    b[2, 1] = 5.0000005
    assert a["sha256"] != data.fingerprint(b)["sha256"]
