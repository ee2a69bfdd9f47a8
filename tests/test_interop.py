"""diffusers interop: a tiny random UNet2DModel saved with save_pretrained and loaded through sgm.interop; sgm's
ddim on its chain equals diffusers' DDIMPipeline / DDIMScheduler for the same noise, for every beta schedule and
prediction type, with and without x̂0 clipping / dynamic thresholding; every sgm sampler runs on it."""
import json

import pytest
import torch

import sgm
from sgm.interop import load_diffusers, threshold_x0

diffusers = pytest.importorskip("diffusers")

STEPS = 10
D = torch.float64


def save_pipeline(folder, **scheduler_kw):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, **scheduler_kw)
    diffusers.DDIMPipeline(unet, scheduler).save_pretrained(str(folder))
    pipe = diffusers.DDIMPipeline.from_pretrained(str(folder))
    pipe.unet.double()  # float64 on both sides: the comparison sees the algorithms, not float32 rounding
    pipe.set_progress_bar_config(disable=True)
    return pipe


def same_chain(pipe, pre):
    """diffusers keeps ᾱ in float32, whose rounding (relative 1e-7, but 1 - ᾱ ≈ 4e-5 at the first cosine step)
    moves the results by ~1e-5: after checking the chains agree to that rounding, both sides run on sgm's float64
    chain, so that the comparison is of the two algorithms."""
    torch.testing.assert_close(pre.chain.alphas_cumprod.float(), pipe.scheduler.alphas_cumprod, rtol=2e-6, atol=1e-7)
    pipe.scheduler.alphas_cumprod = pre.chain.alphas_cumprod.clone()


def theirs(pipe, x, **step_kw):
    """diffusers' DDIM loop (DDIMPipeline.__call__ without its final (x/2 + 1/2).clamp(0, 1))."""
    pipe.scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(pipe.unet(x, t).sample, t, x, eta=0.0, **step_kw).prev_sample
    return x


def ours(pre, x, score=None):
    return sgm.sample(score or pre.model, pre.sde, x.shape, sampler="ddim", steps=STEPS, spacing="leading",
                      train_steps=pre.train_steps, x_init=x).x


@pytest.mark.parametrize("schedule,prediction", [("linear", "epsilon"), ("scaled_linear", "v_prediction"),
                                                 ("squaredcos_cap_v2", "sample"), ("linear", "v_prediction")])
def test_ddim_equals_diffusers(tmp_path, schedule, prediction):
    pipe = save_pipeline(tmp_path, beta_schedule=schedule, prediction_type=prediction, clip_sample=False)
    pre = load_diffusers(tmp_path, dtype=D)
    assert pre.shape == (3, 8, 8) and pre.train_steps == 1000
    same_chain(pipe, pre)
    g = torch.Generator().manual_seed(3)
    images = pipe(batch_size=2, generator=g, num_inference_steps=STEPS, eta=0.0, output_type="pt").images
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=D)  # the pipeline's first draw
    x = ours(pre, x_T)
    torch.testing.assert_close(x, theirs(pipe, x_T), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) if images.shape[-1] == 3
                               else (x / 2 + 0.5).clamp(0, 1), images, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,mode", [({"clip_sample": True, "clip_sample_range": 0.5}, {"mode": "clip", "clip_range": 0.5}),
                                     ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
                                      {"mode": "dynamic", "ratio": 0.9, "max_value": 1.5})])
def test_clipping_and_dynamic_thresholding_equal_diffusers(tmp_path, kw, mode):
    pipe = save_pipeline(tmp_path, clip_sample=False, **{k: v for k, v in kw.items() if k != "clip_sample"}) \
        if "thresholding" in kw else save_pipeline(tmp_path, **kw)
    pre = load_diffusers(tmp_path, dtype=D)
    same_chain(pipe, pre)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=D)
    expected = theirs(pipe, x_T, use_clipped_model_output=True)
    torch.testing.assert_close(ours(pre, x_T, threshold_x0(pre.model, **mode)), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours(pre, x_T), expected, rtol=1e-3, atol=1e-3)  # off by default, and it matters


def test_every_sampler_runs(tmp_path):
    save_pipeline(tmp_path)
    pre = load_diffusers(tmp_path)
    for name in sgm.samplers.available():
        out = sgm.sample(pre.model, pre.sde, (2, *pre.shape), sampler=name, steps=4, dtype=torch.float32,
                         generator=torch.Generator().manual_seed(0), **sgm.samplers.entry(name).smoke)
        assert out.x.shape == (2, 3, 8, 8) and bool(torch.isfinite(out.x).all()), name


def test_alphas_cumprod_path_interpolates_its_chain():
    betas = torch.linspace(1e-2, 0.1, 50, dtype=torch.float64) ** 1.5
    sde = sgm.GaussianPath.from_alphas_cumprod(torch.cumprod(1 - betas, 0))
    chain = sde.discretize(50)
    torch.testing.assert_close(chain.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.marginal(chain.t)[0], chain.scale, rtol=1e-13, atol=0)
    t = torch.tensor([0.013, 0.5, 0.97], dtype=torch.float64)
    torch.testing.assert_close(sde.time_at_noise_level(sde.noise_level(t)), t, rtol=1e-10, atol=1e-12)
    # dx = -½β x dt + √β dW: d scale/dt = -½β scale, d std²/dt = -β std² + β (central differences mid-segment)
    t, h = (torch.arange(50, dtype=torch.float64) + 0.5) / 50, 1e-6
    (sp, dp), (sm, dm), (sc, dc) = sde.marginal(t + h), sde.marginal(t - h), sde.marginal(t)
    beta = sde.diffusion(t) ** 2
    torch.testing.assert_close((sp - sm) / (2 * h), -0.5 * beta * sc, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close((dp**2 - dm**2) / (2 * h), beta * (1 - dc**2), rtol=1e-6, atol=1e-8)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusers(tmp_path / "nope")
    save_pipeline(tmp_path / "p")
    cfg_path = tmp_path / "p" / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["beta_schedule"] = "sigmoid"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported beta_schedule 'sigmoid'"):
        load_diffusers(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="no scheduler config at"):
        load_diffusers(tmp_path / "p" / "unet")
    with pytest.raises(ValueError, match="discretises only at its own N=3"):
        sgm.GaussianPath.from_alphas_cumprod([0.9, 0.8, 0.7]).discretize(4)
