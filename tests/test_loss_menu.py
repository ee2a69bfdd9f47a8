"""The loss's menu against the published formulas written out here: Min-SNR-γ and soft-min-SNR weightings, EDM2's
learned log-variance, the log-normal and logit-normal time distributions, the minibatch OT coupling — and the
trainer that wires them from its config."""
import itertools
import math

import pytest
import torch

import sgm
from sgm.losses import LogitNormal, LogNormal, LogVariance, denoising_loss, ot_coupling, sample_times
from sgm.paths import EDMPath, RectifiedFlow, VPSDE
from sgm.train import TrainConfig, Trainer


class Fixed:
    """A "network" whose output is a fixed tensor, declaring the kind it predicts."""

    def __init__(self, out, kind):
        self.out, self.predicts = out, kind

    def __call__(self, x, t):
        return self.out


def draws(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, z, out = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.linspace(1e-3, 0.999, n, dtype=torch.float64)  # SNR from ~1e4 down to ~1e-4: both sides of γ
    return x0, z, out, t


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_min_snr_is_hang_et_al_for_every_kind(kind):
    """Hang et al. (2023): weights min(SNR, γ)/SNR on ε, min(SNR, γ) on x̂_0, min(SNR, γ)/(SNR + 1) on v (VP)."""
    sde, gamma = VPSDE(), 5.0
    x0, z, out, t = draws()
    a, s = (v[:, None] for v in sde.marginal(t))
    snr = (a / s) ** 2
    target = {"eps": z, "x0": x0, "v": a * z - s * x0}[kind]
    weight = {"eps": snr.clamp(max=gamma) / snr, "x0": snr.clamp(max=gamma),
              "v": snr.clamp(max=gamma) / (snr + 1)}[kind]
    expected = (weight * (out - target) ** 2).mean(1)
    got = denoising_loss(Fixed(out, kind), sde, x0, t=t, noise=z, weighting="min_snr", snr_gamma=gamma, reduce=False)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    assert float(snr.max()) > gamma > float(snr.min())


def test_soft_min_snr_is_k_diffusions_weighting_of_the_edm_network():
    """k-diffusion's soft-min-snr on the EDM network's output F: (σσ_d)²/(σ² + σ_d²)² ‖F - F*‖²,
    F* = (x_0 - c_skip x̃)/c_out, which is γ = 1/σ_d² here (EDM path: α = 1, σ = t)."""
    sde, sd = EDMPath(), 0.5
    x0, z, f, _ = draws()
    t = torch.exp(torch.linspace(math.log(0.01), math.log(50), 64, dtype=torch.float64))
    net = lambda x, c: f  # noqa: E731
    model = sgm.ScoreModel(net, sde, "edm", sigma_data=sd)
    sigma = t[:, None]
    c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
    f_target = (x0 - c_skip * (x0 + sigma * z)) / c_out
    expected = ((sigma * sd) ** 2 / (sigma**2 + sd**2) ** 2 * (f - f_target) ** 2).mean(1)
    got = denoising_loss(model, sde, x0, t=t, noise=z, weighting="soft_min_snr", snr_gamma=1 / sd**2, reduce=False)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_edm2_learned_log_variance():
    """L/e^u + u with EDM's L: equal to EDM's loss while u = 0 (LogVariance starts there), and minimised over u at
    u = ln L for each sample."""
    sde = VPSDE()
    x0, z, out, t = draws()
    edm = denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm", reduce=False)
    u = torch.linspace(-2, 2, 64, dtype=torch.float64)
    got = denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm2", log_variance=u, reduce=False)
    torch.testing.assert_close(got, edm * torch.exp(-u) + u, rtol=1e-12, atol=0)
    module = LogVariance(generator=torch.Generator().manual_seed(0)).double()
    zero = denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm2", log_variance=module, reduce=False)
    torch.testing.assert_close(zero, edm, rtol=1e-12, atol=0)
    best = denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm2", log_variance=edm.log(),
                          reduce=False)
    for shift in (-0.1, 0.1):  # ln L is the minimum: moving u either way raises every sample's loss
        moved = denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm2",
                               log_variance=edm.log() + shift, reduce=False)
        assert bool((moved > best).all())
    with pytest.raises(ValueError, match="weighting 'edm2' needs log_variance"):
        denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm2")
    with pytest.raises(ValueError, match="only it takes one"):
        denoising_loss(Fixed(out, "x0"), sde, x0, t=t, noise=z, weighting="edm", log_variance=u)


@pytest.mark.parametrize("sde", [VPSDE(), EDMPath(), RectifiedFlow()], ids=["vp", "edm", "rectified-flow"])
def test_log_normal_times_put_ln_noise_level_at_n_p_mean_p_std(sde):
    """ln σ̃(t) of 40 000 draws: mean and std within 5 standard errors of (p_mean, p_std) = (-1.2, 1.2) (se of the
    mean 0.006, of the std ≈ 0.004; the clamp to [eps, T] cuts < 1e-5 of the mass on these paths)."""
    g = torch.Generator().manual_seed(0)
    t = sample_times(sde, 40_000, 1e-5, generator=g, dtype=torch.float64, time_distribution=LogNormal())[0]
    level = sde.noise_level(t).log()
    assert abs(float(level.mean()) + 1.2) < 5 * 1.2 / 200 and abs(float(level.std()) - 1.2) < 5 * 1.2 / 283


def test_logit_normal_times():
    g = torch.Generator().manual_seed(1)
    eps, sde = 1e-3, RectifiedFlow()
    t = sample_times(sde, 40_000, eps, generator=g, dtype=torch.float64, time_distribution=LogitNormal(0.5, 0.8))[0]
    u = (t - eps) / (sde.T - eps)
    logit = torch.log(u / (1 - u))
    assert abs(float(logit.mean()) - 0.5) < 5 * 0.8 / 200 and abs(float(logit.std()) - 0.8) < 5 * 0.8 / 283


def test_ot_coupling_is_the_cheapest_pairing():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    paired = ot_coupling(x0, noise)
    cost = float(((x0 - paired) ** 2).sum())
    brute = min(float(((x0 - noise[list(p)]) ** 2).sum()) for p in itertools.permutations(range(6)))
    assert cost == pytest.approx(brute, rel=1e-6) and sorted(paired[:, 0].tolist()) == sorted(noise[:, 0].tolist())


def test_an_x0_model_at_the_exact_top_of_rectified_flow_weighs_zero_instead_of_failing():
    """At α = 0 an x̂_0 prediction says nothing about the score: its DSM weight λ/b² is 0 there (b = σ²/α = ∞)."""
    x0, z, out, _ = draws(4)
    t = torch.tensor([0.5, 1.0, 0.25, 1.0], dtype=torch.float64)
    loss = denoising_loss(Fixed(out, "x0"), RectifiedFlow(), x0, t=t, noise=z, weighting="std2", reduce=False)
    assert bool(torch.isfinite(loss).all()) and loss[1] == 0 and loss[3] == 0 and bool((loss[[0, 2]] > 0).all())


def small(out_dir, **kw):
    base = dict(data="moons", n_data=128, width=8, depth=1, batch_size=16, steps=3, sample_every=1000,
                out_dir=str(out_dir), progress=False, dropout=0.0)
    return TrainConfig(**{**base, **kw})


def test_the_trainer_draws_its_times_and_pairs_its_noise_as_configured(tmp_path):
    trainer = Trainer(small(tmp_path, time_distribution="log_normal", p_mean=-0.5, p_std=0.7, coupling="ot"))
    x0, t, noise, _ = trainer.batch()
    g = torch.Generator().manual_seed(sgm.distributed.stream_seed(0, 0, 0))
    expected_t = LogNormal(-0.5, 0.7).sample(trainer.sde, 16, trainer.config.eps, g, "cpu", torch.float32)
    torch.testing.assert_close(t, expected_t, rtol=0, atol=0)
    raw = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(noise, ot_coupling(x0, raw), rtol=0, atol=0)


def test_edm2_trains_its_log_variance_and_resumes_it(tmp_path):
    Trainer(small(tmp_path, weighting="edm2", lr=1e-2, warmup=0)).fit()
    trainer = Trainer(small(tmp_path, weighting="edm2", lr=1e-2, warmup=0, steps=4))
    assert trainer.resume()
    saved = sgm.checkpoint.load_checkpoint(str(tmp_path / "checkpoint.pt"))["log_variance"]
    assert float(saved["linear.weight"].abs().max()) > 0  # it moved from its zero start
    for key, value in trainer.log_variance.state_dict().items():
        assert torch.equal(value, saved[key])
    trainer.fit(resume=False)
    with pytest.raises(sgm.checkpoint.CheckpointError, match="snr_gamma 5.0 -> 3.0 cannot change"):
        Trainer(small(tmp_path, weighting="edm2", lr=1e-2, warmup=0, steps=5, snr_gamma=3.0)).resume()
