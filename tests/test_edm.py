"""EDM preconditioning (Karras et al., 2022) as ``ScoreModel(..., "edm")`` and its loss weighting, against the
formulas written out here; and the property that makes the probability-flow ODE usable on trained networks."""
import torch

import sgm
from sgm.losses import denoising_loss

D = torch.float64


def test_edm_loss_is_the_preconditioned_networks_own_regression():
    """With ``x = a x0 + σ z``, ``σ̃ = σ/a``: EDM's loss ``λ(σ̃)‖D - x0‖²`` with ``λ = (σ̃² + σ_d²)/(σ̃σ_d)²`` equals
    ``‖F(c_in x/a, ¼ ln σ̃) - (x0 - c_skip x/a)/c_out‖²`` — the same draws, element by element."""
    sde, sd = sgm.VPSDE(), 0.8
    lin = torch.nn.Linear(3, 2).to(D)
    net = lambda u, c: lin(torch.cat([u, c[:, None]], 1))  # noqa: E731  any network
    model = sgm.ScoreModel(net, sde, "edm", sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    x0, t, z = torch.randn(64, 2, generator=g, dtype=D), 0.01 + 0.99 * torch.rand(64, generator=g, dtype=D), \
        torch.randn(64, 2, generator=g, dtype=D)
    loss = denoising_loss(model, sde, x0, t=t, noise=z, weighting="edm", sigma_data=sd, reduce=False)
    a, s = (v[:, None] for v in sde.marginal(t))
    x, sig = a * x0 + s * z, s / a
    c_skip, c_out, c_in = sd**2 / (sig**2 + sd**2), sig * sd / (sig**2 + sd**2).sqrt(), 1 / (sig**2 + sd**2).sqrt()
    target = (x0 - c_skip * x / a) / c_out
    expected = (net(c_in * x / a, 0.25 * sig[:, 0].log()) - target).pow(2).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_a_bounded_network_gives_a_gaussian_pull_back_and_the_ode_stays_bounded():
    """Far from the data a trained network's output is bounded. With F ≡ 0 the EDM score is exactly
    ``-x/(σ² + a²σ_d²)``, the score of N(0, σ_d²) diffused, and the probability-flow ODE maps the prior to
    N(0, σ_d²): std σ_d up to Monte-Carlo error (σ_d/√(2·4000) ≈ 0.009 here; bound 0.05). An ε-network with the
    same bounded (zero) output gives the score 0, and the ODE carries the prior out to std ≈ 1/a(ε) ≫ 1."""
    sde, sd = sgm.VPSDE(), 0.7
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    edm, eps = sgm.ScoreModel(zero, sde, "edm", sigma_data=sd), sgm.ScoreModel(zero, sde, "eps")
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=D) * 5
    t = torch.linspace(0.01, 1, 32, dtype=D)
    a, s = (v[:, None] for v in sde.marginal(t))
    torch.testing.assert_close(sgm.predictions.as_score(edm, sde)(x, t), -x / (s**2 + a**2 * sd**2), rtol=1e-12,
                               atol=1e-12)
    kw = dict(sampler="ode", steps=50, method="heun2", dtype=D, denoise=False)
    x_edm = sgm.sample(edm, sde, (4000, 2), generator=torch.Generator().manual_seed(2), **kw).x
    x_eps = sgm.sample(eps, sde, (4000, 2), generator=torch.Generator().manual_seed(2), **kw).x
    assert float((x_edm.std(0) - sd).abs().max()) < 0.05
    assert float(x_eps.std(0).min()) > 3
