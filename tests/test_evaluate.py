"""FID/KID/IS: the maths against closed forms and independent formulas, the plumbing (folders, .npz, shards,
statistics, the FID Inception network's shape and weight loading) with randomly initialised weights."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sgm import metrics
from sgm.checkpoint import CheckpointError
from sgm.cli import main
from sgm.evaluate import evaluate, features, load_images, load_input, read_input
from sgm.nets.inception import WEIGHTS_FILE, FIDInception, load_inception


def test_low_rank_frechet_equals_the_covariance_formula():
    g = torch.Generator().manual_seed(0)
    fx = torch.randn(7, 12, generator=g, dtype=torch.float64) * 2
    shift = torch.randn(12, generator=g, dtype=torch.float64)
    # y = 3x + shift: Σ_y = 9 Σ_x, so Tr(Σ_x^½ Σ_y Σ_x^½)^½ = 3 Tr Σ_x and FID = ‖shift + 2 μ_x‖² + (1 - 3)² Tr Σ_x
    closed = float((shift + 2 * fx.mean(0)).pow(2).sum() + 4 * torch.cov(fx.T).trace())
    assert metrics.frechet_of_features(fx, 3 * fx + shift) == pytest.approx(closed, rel=1e-12)  # n < d: nuclear norm
    fy = torch.randn(5, 12, generator=g, dtype=torch.float64) + 0.5
    expected = metrics.gaussian_frechet(fx.mean(0), torch.cov(fx.T), fy.mean(0), torch.cov(fy.T))
    # the d × d and n × n eigenvalue paths take square roots of eigenvalues that are 0 in exact arithmetic but
    # ~1e-15 ‖Σ‖ in float64: each adds up to ~1e-7, hence the absolute tolerance
    assert metrics.frechet_of_features(fx, fy) == pytest.approx(expected, abs=1e-5)
    cov = torch.diag(torch.linspace(0.5, 2.0, 12, dtype=torch.float64))
    expected = metrics.gaussian_frechet(fx.mean(0), torch.cov(fx.T), shift, cov)
    assert metrics.frechet_to_gaussian(fx, shift, cov) == pytest.approx(expected, abs=1e-5)
    fx, fy = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (40, 30))
    expected = metrics.gaussian_frechet(fx.mean(0), torch.cov(fx.T), fy.mean(0), torch.cov(fy.T))
    assert metrics.frechet_of_features(fx, fy) == pytest.approx(expected, rel=1e-10)  # n, m ≥ d: the d × d path


def test_kid_is_the_unbiased_cubic_kernel_mmd():
    k = lambda a, b: (float(a @ b) / a.numel() + 1) ** 3
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 3.0])
    # point masses: every subset gives k(a,a) + k(b,b) - 2k(a,b) exactly
    mean, std = metrics.kid(a.repeat(6, 1), b.repeat(6, 1), n_subsets=3, subset_size=4)
    assert mean == pytest.approx(k(a, a) + k(b, b) - 2 * k(a, b), rel=1e-12) and std == pytest.approx(0, abs=1e-9)
    # one subset holding every row: the U-statistic written out as loops
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    loops = (sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
             - 2 * sum(k(x[i], y[j]) for i in range(5) for j in range(5)) / 25)
    assert metrics.kid(x, y, n_subsets=2, subset_size=5)[0] == pytest.approx(loops, rel=1e-12)


def test_inception_score_closed_forms():
    confident = torch.eye(8, dtype=torch.float64).repeat(2, 1) * 60  # each class twice, p(y|x) one-hot
    assert metrics.inception_score(confident, splits=2)[0] == pytest.approx(8.0, rel=1e-9)
    assert metrics.inception_score(torch.randn(1, 8).repeat(10, 1), splits=1)[0] == pytest.approx(1.0, abs=1e-12)
    p = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)  # KL written out
    marginal = p.mean(0)
    expected = math.exp(float((p * (p / marginal).log()).sum(1).mean()))
    assert metrics.inception_score(p.log(), splits=1)[0] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(p.log(), splits=3)


class TinyFeatures(torch.nn.Module):
    """A stand-in with the interface of ``FIDInception``: images -> (features, logits)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 8 * 8, 6)

    def forward(self, x):
        f = self.proj(torch.nn.functional.interpolate(x, size=(8, 8)).flatten(1))
        return f, f[:, :4]


def images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)


def test_folders_npz_shards_and_stats_agree(tmp_path):
    pics = images(10, 0)
    folder = tmp_path / "png"
    folder.mkdir()
    for i, p in enumerate(pics):
        Image.fromarray(p).save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "ref.npz", pics)  # uint8 channels-last under arr_0, like common reference batches
    shards = tmp_path / "shards"
    shards.mkdir()
    as_sgm = pics.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1  # sgm's float [-1, 1] (N, C, H, W)
    for k in range(2):
        np.savez(shards / f"shard_{k:05d}.npz", samples=as_sgm[5 * k:5 * k + 5])
    loaded = [load_images(str(p)) for p in (folder, tmp_path / "ref.npz", shards)]
    for x in loaded[1:]:
        torch.testing.assert_close(x, loaded[0], rtol=0, atol=1e-6)
    net = TinyFeatures()
    a, b = load_input(str(folder), net), load_input(str(shards), net)
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-5)
    scores = evaluate(a, b, kid_subsets=4, kid_subset_size=5, is_splits=2)
    assert scores["fid"] == pytest.approx(0, abs=1e-9) and set(scores) == {"fid", "kid", "kid_std", "is", "is_std"}
    a.save(str(tmp_path / "stats.npz"))
    stats = load_input(str(tmp_path / "stats.npz"), net)
    assert stats.features is None and torch.equal(stats.mu, a.mu)
    np.savez(tmp_path / "other.npz", images(10, 1))
    other = load_input(str(tmp_path / "other.npz"), net)
    from_stats, from_features = evaluate(other, stats), evaluate(other, a)
    assert from_stats["fid"] == pytest.approx(from_features["fid"], rel=1e-9) and from_stats["fid"] > 0.01
    assert "kid" not in from_stats and "kid" in from_features


def random_inception_file(path):
    """Random weights of the FID network's shape, scaled (He) so that features are O(1), saved as a state dict."""
    torch.manual_seed(0)
    net = FIDInception()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def test_inception_loads_from_a_local_file_and_names_a_missing_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SGM_INCEPTION_WEIGHTS", raising=False)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    with pytest.raises(FileNotFoundError, match=str(expected)):
        load_inception()
    np.savez(tmp_path / "a.npz", images(4, 0))
    np.savez(tmp_path / "b.npz", images(4, 1))
    assert main(["eval", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and WEIGHTS_FILE in err and "downloads nothing" in err
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(CheckpointError, match="not the FID Inception weights"):
        load_inception(str(bad))

    weights = random_inception_file(str(tmp_path / WEIGHTS_FILE))
    net = load_inception(weights)
    f, logits = features(torch.rand(2, 3, 12, 12), net)
    assert f.shape == (2, 2048) and logits.shape == (2, 1008) and bool(torch.isfinite(f).all())
    assert float(f.std(0).mean()) > 1e-3  # the features do vary between images
    monkeypatch.setenv("SGM_INCEPTION_WEIGHTS", weights)
    assert main(["eval", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--device", "cpu", "--kid-subset-size",
                 "4", "--save-reference-stats", str(tmp_path / "ref_stats.npz")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FID ") and "KID" in out and "IS" in out
    assert main(["eval", str(tmp_path / "a.npz"), str(tmp_path / "ref_stats.npz"), "--device", "cpu"]) == 0
    fid_stats = float(capsys.readouterr().out.split()[1])
    assert fid_stats == pytest.approx(float(out.split()[1]), rel=1e-6)


def test_float_images_are_read_in_their_own_range(tmp_path):
    """The same images as uint8, as floats in [0, 1] and in sgm's [-1, 1] load identically: a [0, 1] set is no
    longer taken for [-1, 1] (which mapped it to [0.5, 1]); floats beyond both are refused unless their range is
    given; non-finite values are named."""
    pics = images(6, 0).transpose(0, 3, 1, 2)  # uint8 (N, C, H, W)
    forms = {"uint8": pics, "unit": pics / np.float32(255), "sgm": pics / np.float32(127.5) - 1}
    loaded = {}
    for name, array in forms.items():
        np.savez(tmp_path / f"{name}.npz", samples=array)
        loaded[name] = load_images(str(tmp_path / f"{name}.npz"))
    for name in ("unit", "sgm"):
        torch.testing.assert_close(loaded[name], loaded["uint8"], rtol=0, atol=1e-6)
    assert read_input(str(tmp_path / "unit.npz"))[1] == "6 images, read as [0, 1]"
    np.savez(tmp_path / "bytes.npz", samples=pics.astype(np.float32))
    with pytest.raises(ValueError, match=r"values in \[0, 255\] are neither"):
        load_images(str(tmp_path / "bytes.npz"))
    torch.testing.assert_close(load_images(str(tmp_path / "bytes.npz"), "0:255"), loaded["uint8"], rtol=0, atol=1e-6)
    nan = forms["unit"].copy()
    nan[4, 1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", samples=nan)
    with pytest.raises(ValueError,
                       match=r"nan.npz holds 1 non-finite value\(s\); the first is nan at index \(4, 1, 2, 3\)"):
        load_images(str(tmp_path / "nan.npz"))
