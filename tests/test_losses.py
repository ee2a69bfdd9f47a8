"""Denoising score matching: the discrete losses are the continuous one on the chain, and the true score
minimises it."""
import math

import pytest
import torch

import sgm
from sgm.losses import ddpm_loss, denoising_loss, ncsn_loss
from conftest import SDES, gen, mixture

D = torch.float64


class TinyNet(torch.nn.Module):
    """A small nonlinear network of (x, integer timestep or continuous time)."""

    def __init__(self, dim=2):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(dim + 1, dim).double()

    def forward(self, x, t):
        return torch.tanh(self.lin(torch.cat([x, t.to(D)[:, None] / 1000], 1)))


def test_ddpm_loss_is_l_simple_written_out():
    net, chain, x0 = TinyNet(), sgm.VPSDE().discretize(1000), mixture().sample(256, generator=gen(0))
    loss = ddpm_loss(net, x0, chain, generator=gen(1))
    g = gen(1)  # the same draws: timesteps first, then the noise
    i = torch.randint(1000, (256,), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=D)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=D), 0)[i][:, None]
    expected = (net(abar.sqrt() * x0 + (1 - abar).sqrt() * z, i) - z).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_ncsn_loss_is_song_and_ermon_written_out():
    net, x0, L = TinyNet(), mixture().sample(256, generator=gen(0)), 10
    chain = sgm.VESDE(sigma_min=0.01, sigma_max=1.0).discretize(L)
    loss = ncsn_loss(net, x0, chain, generator=gen(1))
    g = gen(1)
    i = torch.randint(L, (256,), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=D)
    sigma = torch.exp(torch.linspace(math.log(0.01), 0.0, L, dtype=D))[i][:, None]
    x_tilde = x0 + sigma * z
    # ½ σ² ‖s + (x̃ - x)/σ²‖², averaged over the data dimensions and the batch
    expected = (0.5 * sigma**2 * (net(x_tilde, i) + (x_tilde - x0) / sigma**2) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_continuous_loss_on_the_chain_times_is_the_discrete_loss(sde_name):
    """The continuous DSM loss evaluated at the chain's times with the chain's marginals, timestep by timestep."""
    forward = SDES[sde_name]()
    chain = forward.discretize(100)
    net, x0 = TinyNet(), mixture().sample(64, generator=gen(0))
    prediction = "eps" if sde_name == "vp" else "score"
    model = sgm.ScoreModel(net, forward, prediction, chain=chain)
    for i in (0, 37, 99):
        z = torch.randn(x0.shape, generator=gen(i), dtype=D)
        t = chain.t[i].expand(64)
        per = denoising_loss(model, forward, x0, t=t, noise=z, chain=chain, reduce=False)
        a, s = chain.scale[i], chain.std[i]
        idx = torch.full((64,), i)
        if sde_name == "vp":
            expected = (net(a * x0 + s * z, idx) - z).pow(2).mean(1)
        else:
            expected = (s**2 * (net(x0 + s * z, idx) + z / s) ** 2).mean(1)
        torch.testing.assert_close(per, expected, rtol=1e-12, atol=0)
    if sde_name == "ve":  # NCSN's levels lie on the VE marginal: the continuous loss needs no chain at all
        cont = sgm.ScoreModel(lambda x, t: net(x, chain.index(t)), forward, "score")
        torch.testing.assert_close(denoising_loss(cont, forward, x0, t=chain.t[5].expand(64), noise=z),
                                   denoising_loss(model, forward, x0, t=chain.t[5].expand(64), noise=z, chain=chain))


def test_likelihood_and_custom_weightings():
    forward, gm = sgm.SubVPSDE(), mixture()
    x0, score = gm.sample(128, generator=gen(0)), TinyNet()
    t = torch.rand(128, generator=gen(1), dtype=D) * 0.9 + 0.05
    z = torch.randn(x0.shape, generator=gen(2), dtype=D)
    scale, std = forward.marginal(t)
    s = score(scale[:, None] * x0 + std[:, None] * z, t)
    direct = (forward.diffusion(t) ** 2 * ((s + z / std[:, None]) ** 2).mean(1)).mean()
    torch.testing.assert_close(denoising_loss(score, forward, x0, t=t, noise=z, weighting="likelihood"), direct)
    torch.testing.assert_close(denoising_loss(score, forward, x0, t=t, noise=z,
                                              weighting=lambda t: forward.diffusion(t) ** 2), direct)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_true_score_minimises_dsm(sde_name):
    """L(s + δ) - L(s*) = E λ‖δ‖² (the cross term has mean 0 exactly when s* is the true score of p_t)."""
    forward, gm, n = SDES[sde_name](), mixture(), 200_000
    exact = gm.score_fn(forward)
    x0 = gm.sample(n, generator=gen(0))
    t = 0.05 + 0.9 * torch.rand(n, generator=gen(1), dtype=D)
    z = torch.randn(x0.shape, generator=gen(2), dtype=D)

    def delta(x, t):
        return 0.3 * torch.sin(x) / forward.marginal(t)[1][:, None]

    base = denoising_loss(exact, forward, x0, t=t, noise=z, reduce=False)
    worse = denoising_loss(lambda x, t: exact(x, t) + delta(x, t), forward, x0, t=t, noise=z, reduce=False)
    scale, std = forward.marginal(t)
    gap = (std**2 * delta(scale[:, None] * x0 + std[:, None] * z, t).pow(2).mean(1))
    diff = worse - base
    assert float(diff.mean()) > 0
    # the cross term 2λ δ·(s* + z/std) has mean 0; 5 standard errors of the per-sample difference
    assert abs(float((diff - gap).mean())) < 5 * float((diff - gap).std()) / n**0.5
    assert float(diff.mean()) > 20 * float((diff - gap).std()) / n**0.5


def test_bad_arguments():
    forward, x0 = sgm.VPSDE(), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="weighting"):
        denoising_loss(lambda x, t: x, forward, x0, weighting="snr")
    with pytest.raises(ValueError, match="eps"):
        denoising_loss(lambda x, t: x, forward, x0, eps=2.0)
    with pytest.raises(TypeError, match="x0"):
        denoising_loss(lambda x, t: x, forward, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="model must return"):
        denoising_loss(lambda x, t: x[:, :1], forward, x0)
    with pytest.raises(ValueError, match="VP-type"):
        ddpm_loss(lambda x, t: x, x0, sgm.VESDE().discretize(10))


def implied_eps(kind, out, x, a, s, da, ds):
    """The ε̂ of ``x = α x̂_0 + σ ε̂`` that an output of ``kind`` means, solved by hand
    (independently of sgm.predictions)."""
    if kind == "eps":
        return out
    if kind == "x0":
        return (x - a * out) / s
    if kind == "v":  # v = α ε̂ - σ x̂_0: α v + σ x = (α² + σ²) ε̂
        return (a * out + s * x) / (a**2 + s**2)
    return (a * out - da * x) / (a * ds - s * da)  # u = α' x̂_0 + σ' ε̂: α u - α' x = (α σ' - σ α') ε̂


@pytest.mark.parametrize("kind", ["velocity", "eps", "x0", "v"])
@pytest.mark.parametrize("path", [sgm.RectifiedFlow(), sgm.RectifiedFlow(3.0), sgm.VPSDE(), sgm.EDMPath()], ids=repr)
def test_native_loss_is_dsm_with_the_stated_weight(path, kind):
    """The plain regression of a model's own prediction (``weighting="native"``: conditional flow matching
    ``‖û - (α'x_0 + σ'ε)‖²`` for a velocity model) is, sample by sample, DSM on the score the model implies,
    ``λ‖ŝ + ε/σ‖²``, with ``λ = b²``, ``b = ∂kind/∂s``: ``σ²`` (ε), ``σ⁴/α²`` (x̂_0), ``σ²(α² + σ²)²/α²`` (v) and
    ``(σ²α'/α - σσ')² = g⁴/4`` (velocity; ``t²/(1 - t)²`` on ``RectifiedFlow()``); and each named weighting is the
    same DSM loss for every kind."""
    net, x0, n = TinyNet(), mixture().sample(256, generator=gen(0)), 256
    t = path.T * (0.05 + 0.9 * torch.rand(n, generator=gen(1), dtype=D))
    z = torch.randn(x0.shape, generator=gen(2), dtype=D)
    a, s, da, ds = (f(t)[:, None] for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    model = sgm.predictions.with_prediction(lambda x, t: net(x, t), kind)
    xt = a * x0 + s * z
    score = -implied_eps(kind, net(xt, t), xt, a, s, da, ds) / s
    b = {"eps": -s, "x0": s**2 / a, "v": -s * (a**2 + s**2) / a, "velocity": s**2 * da / a - s * ds}[kind][:, 0]
    dsm = ((score + z / s) ** 2).mean(1)
    native = denoising_loss(model, path, x0, t=t, noise=z, weighting="native", reduce=False)
    torch.testing.assert_close(native, b**2 * dsm, rtol=1e-10, atol=0)
    if kind == "velocity":
        cfm = (net(xt, t) - (da * x0 + ds * z)).pow(2).mean(1)
        torch.testing.assert_close(native, cfm, rtol=1e-12, atol=0)
        torch.testing.assert_close(b**2, path.diffusion_squared(t) ** 2 / 4, rtol=1e-10, atol=0)
        if path == sgm.RectifiedFlow():
            torch.testing.assert_close(b**2, t**2 / (1 - t) ** 2, rtol=1e-12, atol=0)
    implied_score = lambda x, t: -implied_eps(kind, net(x, t), x, a, s, da, ds) / s  # noqa: E731 (at these t)
    for weighting in ("std2", "likelihood", "edm"):
        torch.testing.assert_close(denoising_loss(model, path, x0, t=t, noise=z, weighting=weighting, reduce=False),
                                   denoising_loss(implied_score, path, x0, t=t, noise=z, weighting=weighting,
                                                  reduce=False), rtol=1e-10, atol=0)
