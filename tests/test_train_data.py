"""The data a run trains on: checked once before training, fingerprinted so that a resume on other data is refused,
and drawn by step (the same batch with or without worker processes, flips included)."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sgm.checkpoint import CheckpointError, load_checkpoint
from sgm.data import ImageFolder
from sgm.loader import InMemory, StepBatches, Streamed
from sgm.train import TrainConfig, Trainer


def config(out_dir, **kw):
    base = dict(data="moons", n_data=64, width=8, depth=1, batch_size=16, steps=2, sample_every=1000,
                out_dir=str(out_dir), progress=False)
    return TrainConfig(**{**base, **kw})


def image_folder(path, n=6, size=4, seed=0):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def tiny_unet(out_dir, path, **kw):
    return config(out_dir, data="folder", data_path=str(path), channels=4, channel_mult=(1,), num_res_blocks=1,
                  attn_levels=(), batch_size=4, **kw)


def test_non_finite_and_constant_data_are_refused_before_training(tmp_path):
    x = torch.randn(64, 2)
    x[37, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the first is nan at index \(37, 1\)"):
        Trainer(config(tmp_path), data=x)
    with pytest.raises(ValueError, match="constant .*sigma_data cannot be measured"):
        Trainer(config(tmp_path), data=torch.ones(64, 2))
    Trainer(config(tmp_path, sigma_data=0.5), data=torch.ones(64, 2))  # a given σ_d needs no measurement
    with pytest.raises(ValueError, match="xflip flips images"):
        Trainer(config(tmp_path, xflip=True))


def test_a_resume_on_other_data_is_refused_and_on_the_same_data_accepted(tmp_path):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    Trainer(config(tmp_path / "t"), data=x).fit()
    assert load_checkpoint(str(tmp_path / "t" / "checkpoint.pt"))["config"]["data"] == "tensor"
    other = x.clone()
    other[5, 0] += 1e-3
    with pytest.raises(CheckpointError, match=r"trained on other data \(saved: shape \(64, 2\) float32"):
        Trainer(config(tmp_path / "t", steps=3), data=other).fit()
    Trainer(config(tmp_path / "t", steps=3), data=x.clone()).fit()  # the same values: resumes

    Trainer(config(tmp_path / "m")).fit()
    with pytest.raises(CheckpointError, match="trained on other data .*n_data 64 -> 32"):
        Trainer(config(tmp_path / "m", steps=3, n_data=32)).fit()


def test_a_moved_data_folder_resumes_and_a_changed_one_is_refused(tmp_path):
    first = image_folder(tmp_path / "a")
    Trainer(tiny_unet(tmp_path / "run", first)).fit()
    moved = shutil.copytree(first, tmp_path / "b")
    trainer = Trainer(tiny_unet(tmp_path / "run", moved, steps=3))
    assert trainer.resume() and trainer.changed["data_path"] == (str(first), str(moved))
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(moved / "extra.png")
    with pytest.raises(CheckpointError, match=r"trained on other data .*shape \(7, 3, 4, 4\)"):
        Trainer(tiny_unet(tmp_path / "run", moved, steps=3)).resume()


def test_a_batch_is_a_function_of_its_step_with_or_without_workers(tmp_path):
    folder = image_folder(tmp_path / "img", n=8, size=6)
    for source in (Streamed(ImageFolder(str(folder), channels=1)), InMemory(torch.randn(40, 1, 6, 6))):
        batches = StepBatches(source, 32, seed=3, xflip=True)
        here = [batches(s) for s in range(5, 8)]
        stream = batches.stream(5, workers=2)
        there = [next(stream) for _ in range(3)]
        del stream
        for (a, _), (b, _) in zip(here, there):
            assert torch.equal(a, b)
        idx, flip = batches.draw(6)
        raw = source.fetch(idx)[0]
        torch.testing.assert_close(here[1][0], torch.where(flip[:, None, None, None], raw.flip(-1), raw),
                                   rtol=0, atol=0)
    # flips: probability 1/2, independent of the indices; 20 steps × 32 = 640 draws, 5 sd = 0.099
    flips = torch.cat([batches.draw(s)[1] for s in range(20)]).double()
    assert abs(float(flips.mean()) - 0.5) < 0.099


def test_workers_train_the_same_run(tmp_path):
    runs = {}
    for workers in (0, 2):
        trainer = Trainer(tiny_unet(tmp_path / f"w{workers}", image_folder(tmp_path / "img"), steps=3, xflip=True,
                                    workers=workers))
        runs[workers] = trainer.fit()
    assert runs[0] == runs[2] and len(runs[0]) == 3
