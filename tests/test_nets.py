"""Score networks and the parameterisations that turn them into scores."""
import math

import pytest
import torch

import sgm
from sgm.cli import main
from sgm.nets import MLP, SinusoidalEmbedding, UNet
from conftest import SDES, gen, mixture

D = torch.float64


@pytest.mark.parametrize("channels,size,mult,attn", [
    (1, (8, 8), (1, 2), (1,)), (3, (32, 32), (1, 2, 2), (1,)), (5, (12, 20), (1, 2, 2), (0, 2)), (2, (7, 9), (1,), ()),
])
def test_unet_shapes(channels, size, mult, attn):
    net = UNet(channels, 16, mult, num_res_blocks=1, attn_levels=attn, dropout=0.0)
    x = torch.randn(3, channels, *size)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer
    with torch.no_grad():
        net.out[-1].weight.normal_()
    out = net(x, torch.rand(3))
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_unet_attention_and_time_matter():
    torch.manual_seed(0)
    net = UNet(1, 16, (1, 2), num_res_blocks=1, attn_levels=(1,), dropout=0.0)
    for p in net.parameters():  # undo the zero initialisations so that every path contributes
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9])))
    assert sum(isinstance(m, sgm.nets.unet.AttnBlock) for m in net.modules()) == 1 + 1 + 2  # down, mid, up


def test_unet_bad_input():
    net = UNet(3, 16, (1, 2, 2), num_res_blocks=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 3, 10, 10), torch.rand(1))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(3, 16, (1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match="channels"):
        UNet(3, 0)


def test_mlp_and_embedding():
    net = MLP(3, width=32, depth=2)
    assert net(torch.randn(4, 3), torch.rand(4)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        net(torch.randn(4, 2), torch.rand(4))
    e = SinusoidalEmbedding(4, time_scale=1000.0)(torch.tensor([0.001]))
    torch.testing.assert_close(e, torch.tensor([[math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)]]))


@pytest.mark.parametrize("prediction", sgm.score.PREDICTIONS)
@pytest.mark.parametrize("sde_name", list(SDES))
def test_every_parameterisation_gives_the_exact_score(prediction, sde_name):
    """Networks predicting ε, x₀, v, the velocity or the score from the exact mixture score all give back that score
    (through sgm.predictions, the one conversion module) and Tweedie's denoiser."""
    forward, gm = SDES[sde_name](), mixture()
    exact = gm.score_fn(forward)

    def net(x, t):
        scale, std = (v[:, None] for v in forward.marginal(t))
        d_scale, d_std = forward.d_alpha(t)[:, None], forward.d_sigma(t)[:, None]
        s = exact(x, t)
        eps, x0 = -std * s, (x + std**2 * s) / scale
        return {"score": s, "eps": eps, "x0": x0, "v": scale * eps - std * x0,
                "velocity": d_scale * x0 + d_std * eps}[prediction]

    def edm_net(u, c_noise):
        """Karras et al.'s F for the exact score: the input is (x/√(σ² + a²σ_d²), ¼ ln σ̃), σ̃ = σ/a."""
        sigma = torch.exp(4 * c_noise)
        t = forward.time_at_noise_level(sigma)
        scale, std = (v[:, None] for v in forward.marginal(t))
        sig, sd = sigma[:, None], 0.7
        x = u * (std**2 + scale**2 * sd**2).sqrt()
        denoised = (x + std**2 * exact(x, t)) / scale
        return (denoised - sd**2 / (sig**2 + sd**2) * x / scale) / (sig * sd / (sig**2 + sd**2).sqrt())

    model = (sgm.ScoreModel(edm_net, forward, "edm", sigma_data=0.7) if prediction == "edm"
             else sgm.ScoreModel(net, forward, prediction))
    x, t = torch.randn(64, 2, generator=gen(0), dtype=D), torch.linspace(0.01, 1, 64, dtype=D)
    assert model.predicts == {"edm": "x0"}.get(prediction, prediction)
    torch.testing.assert_close(sgm.predictions.as_score(model, forward)(x, t), exact(x, t), rtol=1e-9, atol=1e-9)
    scale, std = (v[:, None] for v in forward.marginal(t))
    torch.testing.assert_close(model.denoise(x, t), (x + std**2 * exact(x, t)) / scale, rtol=1e-9, atol=1e-9)


def test_cli_train_then_sample(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "8gaussians", "--steps", "6", "--width", "16", "--depth", "1", "--batch-size", "32",
                 "--out-dir", str(run), "--sample-steps", "3", "--no-progress"]) == 0
    out = tmp_path / "s.png"
    assert main(["sample", str(run / "checkpoint.pt"), "--sampler", "pc", "--steps", "4", "--n", "20",
                 "--option", "snr=0.1", "--out", str(out), "--no-progress"]) == 0
    assert out.exists() and torch.load(tmp_path / "s.pt").shape == (20, 2)
    with pytest.raises(SystemExit):
        main(["sample", str(run / "checkpoint.pt"), "--sampler", "rk45"])


# --- class labels -------------------------------------------------------------------------------------------------
def _label_nets():
    torch.manual_seed(0)
    return [sgm.nets.MLP(3, width=16, depth=1, emb_dim=8, n_classes=4),
            sgm.nets.UNet(1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(), n_classes=4)]


@pytest.mark.parametrize("which", [0, 1])
def test_label_embedding_changes_the_output_per_class(which):
    net = _label_nets()[which]
    for p in net.parameters():  # the output layer starts at zero: perturb every weight so labels show
        torch.nn.init.normal_(p, std=0.2)
    net.eval()  # the U-Net has dropout
    x = torch.randn(4, 3) if which == 0 else torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 0.5)
    outs = [net(x, t, torch.full((4,), c, dtype=torch.long)) for c in range(5)]
    assert all(not torch.allclose(outs[0], o) for o in outs[1:])
    torch.testing.assert_close(net(x, t), outs[4])  # no labels = the reserved "no label" index
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        net(x, t, torch.full((4,), 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        net(x, t, torch.zeros(3, dtype=torch.long))


def test_conditional_score_model_and_bad_labels():
    net = _label_nets()[0]
    model = sgm.ScoreModel(net, sgm.VPSDE())
    assert model.n_classes == 4
    x, t = torch.randn(5, 3), torch.full((5,), 0.3)
    torch.testing.assert_close(model.conditional(2)(x, t), model(x, t, torch.full((5,), 2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        model.conditional(7)
    plain = sgm.ScoreModel(sgm.nets.MLP(3, width=16, depth=1, emb_dim=8), sgm.VPSDE())
    assert plain.n_classes is None
    with pytest.raises(ValueError, match="labels given to an unconditional model"):
        plain.conditional(1)
    with pytest.raises(ValueError, match="guidance needs a conditional model"):
        sgm.guidance.classifier_free(plain, 1, 2.0)
    with pytest.raises(ValueError, match="labels given to an unconditional network"):
        plain.net(x, t, torch.zeros(5, dtype=torch.long))
