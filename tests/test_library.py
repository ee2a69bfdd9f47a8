"""The library as the README and docs use it: ``import sgm`` reaches the submodules, devices are checked."""
import subprocess
import sys

import pytest
import torch

from sgm.device import resolve_device
from sgm.train import TrainConfig, Trainer, model_from_checkpoint


def test_import_sgm_reaches_the_submodules_the_docs_use():
    code = ("import sgm; sgm.metrics.sliced_wasserstein; sgm.likelihood.log_likelihood; sgm.train.Trainer; "
            "sgm.data.toy_2d; sgm.nets.MLP; sgm.losses.denoising_loss")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # a fresh interpreter


@pytest.mark.parametrize("name,match", [("gpu", "device must be"), ("cpu:7", "no index 7"), ("cuda:99", "cuda"),
                                        ("tpu", "device must be")])
def test_bad_devices_are_named(name, match):
    if name == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(ValueError, match=match):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_value_error_from_the_api(tmp_path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        Trainer(TrainConfig(data="moons", n_data=32, width=8, depth=1, device="cuda", out_dir=str(tmp_path)))
    Trainer(TrainConfig(data="moons", n_data=32, width=8, depth=1, steps=1, batch_size=8, out_dir=str(tmp_path),
                        progress=False, sample_every=10)).fit()
    with pytest.raises(ValueError, match="CUDA is not available"):
        model_from_checkpoint(str(tmp_path / "checkpoint.pt"), device="cuda")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_sample_on_cuda_without_cuda_is_a_clear_value_error():
    import sgm

    gm, sde = sgm.GaussianMixture([[0.0, 0.0]], [0.5]), sgm.VPSDE()
    with pytest.raises(ValueError, match="CUDA is not available"):
        sgm.sample(gm.score_fn(sde), sde, (4, 2), sampler="ddim", steps=3, device="cuda")
    with pytest.raises(ValueError, match="no index 7"):
        sgm.sample(gm.score_fn(sde), sde, (4, 2), sampler="ddim", steps=3, device="cpu:7")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_with_an_adaptive_ode_method(dtype):
    """float16 with dopri5 used to report a NaN time as a diverged score. The target N(0, 0.5²) maps to itself
    under the flow, so the samples' std is 0.5 up to Monte-Carlo error (0.5/√(2·2000) ≈ 0.008 per coordinate; the
    bound 0.04 is 5 of those) and half precision's rounding (≈ 4e-3 relative per step)."""
    import sgm

    gm, sde = sgm.GaussianMixture([[0.0, 0.0]], [0.5], dtype=dtype), sgm.VPSDE()
    out = sgm.sample(gm.score_fn(sde), sde, (2000, 2), sampler="ode", method="dopri5", rtol=1e-3, atol=1e-3,
                     dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert out.x.dtype == dtype and bool(torch.isfinite(out.x).all())
    assert float((out.x.double().std(0) - 0.5).abs().max()) < 0.04
