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


# --- flow matching: FlowMatchEulerDiscreteScheduler folders -----------------------------------------------------
def save_flow_folder(folder, **scheduler_kw):
    """A bare UNet2DModel folder with a FlowMatch scheduler config; the U-Net reloaded in float64 for diffusers."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    unet.save_pretrained(str(folder))
    diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **scheduler_kw).save_config(str(folder))
    return diffusers.UNet2DModel.from_pretrained(str(folder)).double().eval()


def flow_match_loop(unet, folder, x, monkeypatch):
    """diffusers' own FlowMatch Euler loop (as its pipelines run it), in float64: the scheduler module's ``torch``
    gets ``float32 = float64`` (it rounds the state to float32 in each step)."""
    from test_exponential import Float64Torch

    monkeypatch.setattr(diffusers.schedulers.scheduling_flow_match_euler_discrete, "torch", Float64Torch())
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder))
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t.expand(x.shape[0])).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler_equals_diffusers(tmp_path, shift, monkeypatch):
    """sgm's DDIM on the loaded velocity model, on the uniform grid of RectifiedFlow(shift) to the scheduler's lowest σ,
    is diffusers' FlowMatch Euler loop (an Euler step in σ on the linear path is DDIM's step); at shift 1 so is
    ``ode`` ``euler`` on that grid. float64 on both sides: the same arithmetic in another order (measured
    ≤ 1e-15 relative), 1e-10 leaves room for the U-Net's summation order."""
    unet = save_flow_folder(tmp_path, shift=shift)
    pre = load_diffusers(tmp_path, dtype=D)
    assert pre.sde == sgm.RectifiedFlow(shift) and pre.model.predicts == "velocity" and pre.shape == (3, 8, 8)
    assert pre.train_steps == 1000
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=D)
    expected = flow_match_loop(unet, tmp_path, x_T, monkeypatch)
    eps = shift / (1000 + shift - 1)
    ours = sgm.sample(pre.model, pre.sde, x_T.shape, sampler="ddim", steps=STEPS, spacing="uniform", eps=eps,
                      x_init=x_T)
    assert ours.nfe == STEPS
    torch.testing.assert_close(ours.x, expected, rtol=1e-10, atol=1e-10)
    euler = sgm.sample(pre.model, pre.sde, x_T.shape, sampler="ode", method="euler", steps=STEPS, spacing="uniform",
                       eps=eps, x_init=x_T).x
    assert torch.allclose(euler, expected, rtol=1e-10, atol=1e-10) == (shift == 1.0)  # Euler in t ≠ in σ for s ≠ 1
    # the network sees diffusers' timestep σ·N and its output is dx/dσ = ε - x_0: u = σ'(t)·output
    t = torch.full((2,), 0.3, dtype=D)
    sigma = pre.sde.sigma(t)
    with torch.no_grad():
        out = unet(x_T, sigma * 1000).sample
    torch.testing.assert_close(pre.model(x_T, t), pre.sde.d_sigma(t)[:, None, None, None] * out, rtol=1e-12, atol=1e-12)


def test_every_sampler_runs_on_a_flow_model(tmp_path):
    """From the exact top where a sampler can start there, from t_max = 0.99 where it needs α > 0 (refused at t = 1)."""
    save_flow_folder(tmp_path, shift=3.0)
    pre = load_diffusers(tmp_path)
    for name in sgm.samplers.available():
        options = {"ode": {"method": "heun2"}, "langevin": {"n_steps_each": 1}}.get(name, {})
        t_max = 0.99 if "positive_alpha" in sgm.samplers.solver(name, **options).needs else None
        out = sgm.sample(pre.model, pre.sde, (2, *pre.shape), sampler=name, steps=4, dtype=torch.float32, t_max=t_max,
                         generator=torch.Generator().manual_seed(0), **options)
        assert out.x.shape == (2, 3, 8, 8) and bool(torch.isfinite(out.x).all()), name


def test_bad_flow_folders(tmp_path):
    save_flow_folder(tmp_path / "f")
    path = tmp_path / "f" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    for change, match in [({"invert_sigmas": True}, "invert_sigmas"), ({"use_dynamic_shifting": True}, "shift="),
                          ({"_class_name": "FlowMatchLCMScheduler"}, "unsupported flow-matching scheduler"),
                          ({"shift": 0.0}, "shift")]:
        path.write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=match):
            load_diffusers(tmp_path / "f")
    path.write_text(json.dumps({**cfg, "use_dynamic_shifting": True}))
    assert load_diffusers(tmp_path / "f", shift=2.0).sde == sgm.RectifiedFlow(2.0)
    save_pipeline(tmp_path / "p")
    with pytest.raises(ValueError, match="shift applies to flow-matching schedulers only"):
        load_diffusers(tmp_path / "p", shift=2.0)
