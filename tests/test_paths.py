"""The Gaussian path: f, g², λ derived once from (α, σ) for every path; identity by value; the exact predictions of
a mixture on every path, endpoints included; every kind converting to every other."""
import math

import pytest
import torch

import sgm
from sgm.predictions import KINDS, Prediction, coefficients, convert

D = torch.float64


def _function_path():
    # a path given only by callables: α = cos(πt/2), σ = sin(πt/2) (the "trigonometric" flow), derivatives by autograd
    return sgm.GaussianPath.from_functions(lambda t: torch.cos(math.pi / 2 * t), lambda t: torch.sin(math.pi / 2 * t))


PATHS = {
    "vp": sgm.VPSDE, "subvp": sgm.SubVPSDE, "ve": sgm.VESDE, "cosine": lambda: sgm.CosineVPSDE(T=1.0),
    "edm": sgm.EDMPath, "rf": sgm.RectifiedFlow, "rf3": lambda: sgm.RectifiedFlow(shift=3.0),
    "table": lambda: sgm.GaussianPath.from_alphas_cumprod(torch.linspace(0.99, 0.0, 40, dtype=D) ** 2 * 0.999),
    "functions": _function_path,
}


def interior(path, n=17):
    if isinstance(path, sgm.paths.AlphasCumprodPath):  # mid-segment: α' jumps at the knots
        N = path.alphas_cumprod.numel()
        return (torch.arange(N, dtype=D)[2:-2] + 0.5) / N * path.T
    return torch.linspace(0.05, 0.95, n, dtype=D) * path.T


@pytest.mark.parametrize("name", list(PATHS))
def test_drift_and_diffusion_solve_the_moment_equations(name):
    """For dx = f x dt + g dW: dα/dt = f α and dσ²/dt = 2 f σ² + g² (central differences), and α, σ' are the
    derivatives of α, σ."""
    path = PATHS[name]()
    t, h = interior(path), 1e-6 * path.T
    (ap, sp), (am, sm), (a, s) = path.marginal(t + h), path.marginal(t - h), path.marginal(t)
    f, g2 = path.drift_coefficient(t), path.diffusion_squared(t)
    torch.testing.assert_close((ap - am) / (2 * h), f * a, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close((sp**2 - sm**2) / (2 * h), 2 * f * s**2 + g2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close((ap - am) / (2 * h), path.d_alpha(t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close((sp - sm) / (2 * h), path.d_sigma(t), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(PATHS))
def test_lambda_and_its_inverse(name):
    path = PATHS[name]()
    t = interior(path)
    a, s = path.marginal(t)
    torch.testing.assert_close(path.lam(t), torch.log(a / s), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path.time_at_lam(path.lam(t)), t, rtol=1e-9, atol=1e-9 * path.T)


def test_named_paths_and_their_exact_tops():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    rf = sgm.RectifiedFlow()
    torch.testing.assert_close(torch.stack(rf.marginal(t)), torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]], dtype=D))
    assert float(rf.lam(t[2:])) == -math.inf and float(rf.noise_level(t[2:])) == math.inf
    # SD3's shift: τ = s t/(1 + (s - 1) t)
    torch.testing.assert_close(sgm.RectifiedFlow(3.0).sigma(t), 3 * t / (1 + 2 * t))
    edm = sgm.EDMPath()
    assert edm.T == 80.0 and edm.default_eps == 0.002 and edm.prior_std == 80.0
    torch.testing.assert_close(edm.sigma(torch.tensor([3.0], dtype=D)), torch.tensor([3.0], dtype=D))
    assert float(sgm.CosineVPSDE(T=1.0).alpha(torch.tensor([1.0], dtype=D))) == 0.0


def test_zero_terminal_snr_table_reaches_alpha_zero():
    """diffusers' rescale_zero_terminal_snr ends at ᾱ = 0: the path reaches α(T) = 0 (linear in α on the last
    segment) and its chain is the table."""
    ab = torch.tensor([0.99, 0.9, 0.6, 0.2, 0.0], dtype=D)
    path = sgm.GaussianPath.from_alphas_cumprod(ab)
    chain = path.discretize(5)
    torch.testing.assert_close(chain.alphas_cumprod, ab, rtol=0, atol=1e-15)
    torch.testing.assert_close(path.alpha(chain.t) ** 2, ab, rtol=1e-12, atol=1e-15)
    assert float(path.alpha(torch.tensor([1.0], dtype=D))) == 0.0
    mid = torch.tensor([0.9], dtype=D)  # halfway along the last segment: α = √0.2 / 2
    torch.testing.assert_close(path.alpha(mid), torch.tensor([math.sqrt(0.2) / 2], dtype=D))
    with pytest.raises(ValueError, match="strictly decrease"):
        sgm.GaussianPath.from_alphas_cumprod([0.9, 0.95])


def test_paths_compare_by_value_and_grids_are_refused_for_another_path():
    assert sgm.VPSDE() == sgm.VPSDE(0.1, 20.0, 1.0) and sgm.VPSDE() != sgm.VPSDE(beta_max=10.0)
    assert sgm.RectifiedFlow() != sgm.RectifiedFlow(shift=3.0) and sgm.RectifiedFlow() != sgm.EDMPath()
    a = sgm.GaussianPath.from_alphas_cumprod(torch.cumprod(1 - torch.linspace(1e-3, 0.04, 100, dtype=D), 0))
    b = sgm.GaussianPath.from_alphas_cumprod(torch.cumprod(1 - torch.linspace(1e-3, 0.08, 100, dtype=D), 0))
    assert a == sgm.GaussianPath.from_alphas_cumprod(a.alphas_cumprod) and a != b and hash(a) != hash(b)
    grid = sgm.samplers.time_grid(a, 10, "logsnr")
    with pytest.raises(ValueError, match="grid was made for"):
        sgm.sample(lambda x, t: -x, b, (4, 2), "ddim", grid=grid)


@pytest.mark.parametrize("name", ["vp", "ve", "rf", "edm", "table"])
def test_exact_predictions_match_autograd_and_each_other(name):
    """The mixture's score is autograd of its exact log-density; x̂₀ and ε̂ satisfy x = α x̂₀ + σ ε̂; the
    velocity is α' x̂₀ + σ' ε̂ and v = α ε̂ - σ x̂₀ — at interior times and at the path's ends."""
    path, gm = PATHS[name](), sgm.random_mixture(3, k=4, seed=3)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(32, 3, generator=g, dtype=D)
    times = [float(path.T) * u for u in (0.3, 0.7)] + [float(path.T)]
    for tau in times:
        t = torch.full((32,), tau, dtype=D)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gm.log_prob(xg, t, path).sum(), xg)
        pred = {k: gm.predict(x, t, path, k) for k in KINDS}
        torch.testing.assert_close(pred["score"], grad, rtol=1e-9, atol=1e-9)
        a, s, da, ds = (f(t)[:, None] for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
        torch.testing.assert_close(a * pred["x0"] + s * pred["eps"], x, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(pred["velocity"], da * pred["x0"] + ds * pred["eps"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pred["v"], a * pred["eps"] - s * pred["x0"], rtol=1e-12, atol=1e-12)
    if name == "rf":  # at α = 0 the posterior is the prior: x̂₀ = the data mean
        t = torch.ones(32, dtype=D)
        torch.testing.assert_close(gm.predict(x, t, path, "x0"), gm.moments()[0].expand(32, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("native", KINDS)
def test_every_kind_converts_to_every_other(native):
    """From the native prediction of any kind, Prediction gives the others exactly (the one 2×2 solve), and
    `combine` is the same linear combination in one fused expression."""
    path, gm = sgm.RectifiedFlow(shift=2.0), sgm.random_mixture(2, k=3, seed=5)
    x, tau = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=D), 0.37
    t = torch.full((16,), tau, dtype=D)
    node = sgm.samplers.grid.path_nodes(path, torch.tensor([tau], dtype=D))[0]
    p = Prediction.at_node(x, node, native, gm.predict(x, t, path, native))
    for kind in KINDS:
        torch.testing.assert_close(p.get(kind), gm.predict(x, t, path, kind), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.combine(0.5, x0=2.0, eps=-1.0), 0.5 * x + 2 * p.x0 - p.eps, rtol=1e-12, atol=1e-12)


def test_undefined_conversions_raise_instead_of_dividing_by_zero():
    """Where α = 0 a score or ε says nothing of x₀: the conversion raises; a score and ε still convert."""
    a, b = coefficients("eps", "score", 0.0, 1.0)
    assert (a, b) == (0.0, -1.0)
    with pytest.raises(ValueError, match="x0 is undefined from a score"):
        coefficients("x0", "score", 0.0, 1.0)
    x = torch.randn(3, 2, dtype=D)
    torch.testing.assert_close(convert("x0", "velocity", x, x, 0.0, 1.0, -1.0, 1.0), torch.zeros_like(x))


def test_samplers_needing_a_finite_drift_are_refused_at_the_exact_top():
    rf, gm = sgm.RectifiedFlow(), sgm.random_mixture(2, seed=1)
    for name in ("euler_maruyama", "reverse_diffusion", "langevin", "sde"):
        with pytest.raises(ValueError, match="needs α > 0 at its first node"):
            sgm.sample(gm.prediction_fn(rf), rf, (4, 2), name, steps=5)
        out = sgm.sample(gm.prediction_fn(rf), rf, (4, 2), name, steps=5, t_max=0.99, dtype=D)
        assert bool(torch.isfinite(out.x).all())
    with pytest.raises(ValueError, match=r"pc \(reverse_diffusion, langevin\) needs"):
        sgm.sample(gm.prediction_fn(rf), rf, (4, 2), "pc", steps=5)
    assert sgm.sample(gm.prediction_fn(rf), rf, (4, 2), "pc", steps=5, predictor="ancestral", dtype=D).nfe == 9
