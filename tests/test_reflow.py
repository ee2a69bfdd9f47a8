"""Reflow (``sgm.reflow``): the pairs are the flow map, the straightness is Liu et al.'s integral, the loss vanishes
on a straight coupling with its exact velocity, and a short reflow run straightens a curved flow.

Closed forms used (rectified flow ``x_t = (1 - t)x_0 + t z``). For a Gaussian ``N(m, diag s²)`` the marginal at ``t``
is ``N((1 - t)m, diag r_t²)`` with ``r_t² = (1 - t)²s² + t²``, so the probability-flow map is affine: the state
``x_t = (1 - t)m + r_t z`` from ``x_1 = z``. ``flow_map`` integrates it to ``t = eps`` and takes Tweedie's
``x̂_0 = m + s²(1 - eps)/r_eps² (x_eps - (1 - eps)m) = m + s²(1 - eps) z / r_eps``; its straightness is
``S = Σ_d ∫_0^1 (1 - s_d - r'_d(t))² dt``, ``r' = (t - (1 - t)s²)/r``."""
import pytest
import torch

import sgm
from sgm.config import TrainConfig
from sgm.losses import denoising_loss
from sgm.reflow import pairs, reflow, straightness
from sgm.score import ScoreModel
from sgm.train import Trainer

PATH = sgm.RectifiedFlow()
SEEDS = (0, 1, 2)


def normal(n, dim, seed):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("seed", SEEDS)
def test_pairs_of_a_gaussian_are_its_affine_flow_map(seed):
    """Exact velocity of one Gaussian: the pairs equal the closed-form map to the solver's tolerance (1e-10 asked,
    measured ≤ 2.3e-10; 1e-8 leaves room for the error per unit time accumulated over ``|z| ≤ 5``)."""
    target = sgm.random_mixture(3, k=1, seed=seed)
    z = normal(64, 3, seed + 10)
    m, s = target.means[0], target.stds[0]
    eps = PATH.default_eps
    r = torch.sqrt((1 - eps) ** 2 * s ** 2 + eps ** 2)
    expected = m + s ** 2 * (1 - eps) * z / r
    assert torch.allclose(pairs(target.prediction_fn(PATH, "velocity"), PATH, z, tol=1e-10), expected, atol=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
def test_pairs_of_a_mixture_are_the_flow_map_of_an_independent_solver(seed):
    """A 5-component mixture's exact velocity (nonlinear in ``x``): the pairs equal scipy's DOP853 run of the same ODE
    from ``t = 1`` to ``eps`` followed by the exact Tweedie step (tolerances 1e-10 and 1e-12; agreement to 1e-7
    allows for the stiffness near the narrow components, measured ≤ 1.4e-9)."""
    solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp
    target = sgm.random_mixture(2, k=5, seed=seed)
    velocity = target.prediction_fn(PATH, "velocity")
    z = normal(16, 2, seed + 20)
    eps = PATH.default_eps

    def rhs(t, y):
        x = torch.as_tensor(y, dtype=torch.float64).view(-1, 2)
        return velocity(x, torch.full((len(x),), t, dtype=torch.float64)).flatten().numpy()

    end = solve_ivp(rhs, (1.0, eps), z.flatten().numpy(), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    x_eps = torch.as_tensor(end).view(-1, 2)
    expected = target.predict(x_eps, torch.full((len(z),), eps, dtype=torch.float64), PATH, "x0")
    for batch in (1024, 5):  # one solve, or chunks of 5 with steps of their own
        assert torch.allclose(pairs(velocity, PATH, z, tol=1e-10, batch=batch), expected, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_straightness_of_a_gaussian_flow_is_the_closed_form(seed):
    """``straightness`` (RK4 on 64 steps, trapezoid on ``[1e-4, 1]``) against the integral by 20001-point Simpson;
    the population mean ``E‖z‖² = D`` is replaced by the sample's, so the only errors are the trapezoid's
    (``O(h²)·max|f''|``, ≈ 1e-4 here) and the left-out ``[0, 1e-4]`` (≤ 1e-4 per dimension): tolerance 5e-4
    (measured ≤ 5e-5)."""
    target = sgm.random_mixture(2, k=1, seed=seed)
    s = target.stds[0]
    z = normal(256, 2, seed + 30)
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None]
    r = torch.sqrt((1 - t) ** 2 * s ** 2 + t ** 2)
    f = (1 - s - (t - (1 - t) * s ** 2) / r) ** 2 * z.pow(2).mean(0)  # (points, D)
    h = 1 / 20000
    simpson = float((h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum(0) + 2 * f[2:-1:2].sum(0))).sum())
    measured = straightness(target.prediction_fn(PATH, "velocity"), PATH, z)
    assert measured == pytest.approx(simpson, abs=5e-4)
    assert simpson > 0.05  # a curved flow: the check is not the trivial S = 0


def test_straightness_is_zero_on_straight_lines():
    """A velocity constant along each line (``u = c``: lines ``x_t = x_0 + t c``) has ``S = 0`` to rounding."""
    c = torch.tensor([1.5, -0.5], dtype=torch.float64)

    def constant(x, t):
        return c.expand_as(x)

    constant.predicts = "velocity"
    assert straightness(constant, PATH, normal(32, 2, 0)) < 1e-20


def linear_coupling(seed):
    """``z = A x_0`` for a random symmetric positive-definite ``A``: the lines ``x_t = ((1 - t)I + tA) x_0`` never
    cross, and their exact velocity is ``u(x, t) = (A - I)((1 - t)I + tA)⁻¹ x``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    a = q @ torch.diag(0.5 + 2 * torch.rand(3, generator=g, dtype=torch.float64)) @ q.T
    eye = torch.eye(3, dtype=torch.float64)

    def velocity(x, t):
        m = (1 - t)[:, None, None] * eye + t[:, None, None] * a
        return torch.linalg.solve(m, x[..., None])[..., 0] @ (a - eye).T

    velocity.predicts = "velocity"
    return a, velocity


@pytest.mark.parametrize("seed", SEEDS)
def test_the_reflow_loss_vanishes_for_the_exact_velocity_of_a_straight_coupling(seed):
    """The velocity loss at the straight coupling ``z = A x_0`` is 0 to rounding for its exact velocity, and not for
    the same data with the pairs shuffled (the loss sees the coupling)."""
    a, velocity = linear_coupling(seed)
    x0 = normal(256, 3, seed + 40)
    g = torch.Generator().manual_seed(seed)
    straight = denoising_loss(velocity, PATH, x0, noise=x0 @ a.T, weighting="native", generator=g)
    shuffled = denoising_loss(velocity, PATH, x0, noise=(x0 @ a.T)[torch.randperm(256, generator=g)],
                              weighting="native", generator=g)
    assert float(straight) < 1e-24 and float(shuffled) > 0.1


def test_a_trainer_with_noise_pairs_each_datum_with_its_own(tmp_path):
    a, _ = linear_coupling(0)
    x0 = normal(64, 3, 5).float()
    config = TrainConfig(sde="rectified-flow", prediction="velocity", weighting="native", steps=2, width=8, depth=1,
                         batch_size=32, out_dir=str(tmp_path), progress=False)
    trainer = Trainer(config, data=x0, noise=x0 @ a.T.float())
    for step in (0, 3):
        trainer.step = step
        x, _, noise, _ = trainer.batch()
        assert torch.allclose(noise, x @ a.T.float(), atol=1e-5)
    with pytest.raises(ValueError, match="noise must be a tensor shaped like the data"):
        Trainer(config, data=x0, noise=x0[:10])
    with pytest.raises(ValueError, match="coupling"):
        Trainer(config.replace(coupling="ot"), data=x0, noise=x0)


TEACHERS = {"ring": sgm.ring_mixture(), "random": sgm.random_mixture(2, k=4, spread=2.5, seed=3)}


@pytest.mark.parametrize("name", TEACHERS)
def test_a_short_reflow_run_straightens_a_curved_flow(name, tmp_path):
    """Teacher: the exact velocity of a 2-D mixture (1-rectified flow; ``S₁`` ≈ 2.9 on the 8-mode ring, trajectories
    bend round the modes). 100 steps of a small MLP on 512 of its pairs give a flow with ``S₂ < S₁/10`` (measured
    ``S₂`` ≈ 0.003 on the ring) whose 2-NFE Euler map stays within half the teacher's own 2-NFE error of the
    teacher's map (measured 0.66 against 4.0 on the ring); a rerun reuses the saved pairs and resumes."""
    teacher = TEACHERS[name].prediction_fn(PATH, "velocity")
    config = TrainConfig(sde="rectified-flow", prediction="velocity", weighting="native", steps=100, width=32,
                         depth=2, batch_size=128, lr=3e-3, warmup=10, ema_decay=0.9, out_dir=str(tmp_path),
                         progress=False, sample_every=10_000, checkpoint_every=10_000, n_samples=4, sample_steps=2,
                         seed=1)
    noise = normal(512, 2, 7).float()
    trainer = reflow(teacher, PATH, config, noise, tol=1e-5)
    z = normal(128, 2, 8)
    student = ScoreModel(trainer.ema.model.double(), PATH, "velocity")
    before, after = straightness(teacher, PATH, z, steps=32), straightness(student, PATH, z, steps=32)
    assert before > 0.5 and after < before / 10, (before, after)
    exact = pairs(teacher, PATH, z, tol=1e-6)
    errors = [float((sgm.sample(m, PATH, z.shape, sampler="ode", method="euler", steps=2, spacing="uniform",
                                x_init=z).x - exact).norm(dim=1).mean()) for m in (teacher, student)]
    assert errors[1] < errors[0] / 2, errors
    again = reflow(teacher, PATH, config.replace(steps=101), noise)
    assert again.step == 101 and (tmp_path / "pairs.pt").exists()
    with pytest.raises(ValueError, match="other noise"):
        reflow(teacher, PATH, config.replace(steps=102), normal(512, 2, 9).float())


def test_sgm_reflow_trains_on_a_checkpoints_pairs_and_resumes(tmp_path, capsys):
    """``sgm reflow TEACHER``: a velocity model on rectified flow by default, trained on the pairs of the teacher's
    flow map (those of a VP teacher here: any path's flow maps N(0, I) to its data), resumable, sampled like any
    run; another path than rectified flow is refused in one line."""
    from sgm.checkpoint import load_checkpoint, model_from_checkpoint
    from sgm.cli import main

    tiny = ["--width", "8", "--depth", "1", "--batch-size", "16", "--no-progress", "--n-samples", "4",
            "--sample-steps", "2", "--warmup", "0"]
    teacher = tmp_path / "teacher"
    assert main(["train", "--steps", "2", "--n-data", "64", "--out-dir", str(teacher)] + tiny) == 0
    out = tmp_path / "reflow"
    argv = ["reflow", str(teacher / "checkpoint.pt"), "--n-pairs", "32", "--tol", "1e-4", "--out-dir", str(out)]
    assert main(argv + ["--steps", "2"] + tiny) == 0
    saved = torch.load(out / "pairs.pt", weights_only=True)
    model, config, _ = model_from_checkpoint(str(teacher / "checkpoint.pt"))
    assert torch.allclose(saved["x0"], pairs(model, model.sde, saved["noise"], tol=1e-4), atol=1e-5)
    student, config, _ = model_from_checkpoint(str(out / "checkpoint.pt"))
    assert student.sde == PATH and student.predicts == "velocity" and config.weighting == "native"
    capsys.readouterr()
    assert main(argv + ["--steps", "3"]) == 0 and "resuming" in capsys.readouterr().out
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 3
    code = main(argv[:-1] + [str(tmp_path / "other"), "--path", "vp", "--steps", "1"] + tiny)
    err = capsys.readouterr().err
    assert code == 2 and "rectified-flow" in err and err.count("\n") == 1, err
