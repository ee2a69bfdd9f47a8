"""Power-function EMAs and their post-hoc reconstruction (EDM2) against closed forms: the averaging weights of a
known sequence, the profiles' relative std and inner products, and reconstructions of EMA lengths never tracked."""
import shutil

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from sgm.checkpoint import export, load_checkpoint, model_from_checkpoint, write_atomic
from sgm.ema import (PowerEMA, exponent_to_std, list_snapshots, posthoc_coefficients, posthoc_weights,
                     profile_inner, std_to_exponent)
from sgm.train import TrainConfig, Trainer


class Vector(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))


def closed_form_weights(gamma, t, n):
    """``w_i = (i^(γ+1) - (i-1)^(γ+1))/t^(γ+1)`` for i = 1 … t, zero after."""
    i = np.arange(1, n + 1, dtype=np.float64)
    w = (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1)
    return np.where(i <= t, w, 0.0)


def one_hot_run(stds, steps, every=None, folder=None):
    """θ_i = e_i (the i-th unit vector) after step i: the EMA of this sequence is its weight vector itself."""
    net = Vector(steps)
    ema = PowerEMA(net, stds)
    for i in range(1, steps + 1):
        with torch.no_grad():
            net.theta.zero_()[i - 1] = 1.0
        ema.update(net, i)
        if every and i % every == 0:
            ema.save_snapshots(str(folder), i, write_atomic)
    return ema


def test_the_power_ema_of_a_known_sequence_is_its_closed_form():
    ema = one_hot_run((0.05, 0.10, 0.2), 300)
    for gamma, model in zip(ema.exponents, ema.models):
        np.testing.assert_allclose(model.theta.detach().numpy(), closed_form_weights(gamma, 300, 300), rtol=1e-10,
                                   atol=1e-15)
        assert model.theta.sum().item() == pytest.approx(1.0, abs=1e-12)  # no share left to the initial weights


def test_relative_std_and_exponent():
    # EDM2 (Karras et al., 2024, §3.1): σ_rel = 0.05 and 0.10 are γ = 16.97 and 6.94
    assert std_to_exponent(0.05) == pytest.approx(16.97, abs=5e-3)
    assert std_to_exponent(0.10) == pytest.approx(6.94, abs=5e-3)
    for gamma in (0.2, 1.0, 6.94, 16.97, 50.0):
        assert std_to_exponent(exponent_to_std(gamma)) == pytest.approx(gamma, rel=1e-9)
        # the std of τ/t under the profile density (γ+1)τ^γ on [0, 1], by quadrature
        mean = quad(lambda u: u * (gamma + 1) * u**gamma, 0, 1)[0]
        var = quad(lambda u: (u - mean) ** 2 * (gamma + 1) * u**gamma, 0, 1)[0]
        assert exponent_to_std(gamma) == pytest.approx(np.sqrt(var), rel=1e-8)
    with pytest.raises(ValueError, match=r"std must lie in \(0, 0.3\)"):
        std_to_exponent(0.31)


@pytest.mark.parametrize("ga,ta,gb,tb", [(6.94, 300.0, 16.97, 1000.0), (16.97, 1000.0, 6.94, 300.0),
                                         (2.0, 50.0, 2.0, 50.0), (40.0, 2e5, 30.0, 1.5e5)])
def test_profile_inner_products_against_quadrature(ga, ta, gb, tb):
    def p(g, t):
        return lambda tau: (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0

    m = min(ta, tb)
    # substitute τ = m·u to integrate on [0, 1]: the products are tiny at these times
    exact = quad(lambda u: m * p(ga, ta)(m * u) * p(gb, tb)(m * u), 0, 1, epsabs=0, epsrel=1e-12)[0]
    assert float(profile_inner(ga, ta, gb, tb)) == pytest.approx(exact, rel=1e-9)


def test_posthoc_reconstructs_ema_lengths_that_were_not_tracked(tmp_path):
    """Snapshots of σ_rel 0.05 and 0.10 every 20 of 400 steps of θ_i = e_i. A tracked profile is reconstructed
    exactly (it is in the span); untracked ones to a small L2 error of the weight vector, and the EMA of a smooth
    scalar sequence (θ_i = sin(i/40) + i/400) to within the Cauchy–Schwarz bound of that error."""
    one_hot_run((0.05, 0.10), 400, every=20, folder=tmp_path)
    assert len(list_snapshots(str(tmp_path))) == 40
    weights, info = posthoc_weights(str(tmp_path), 0.10, 400)
    np.testing.assert_allclose(weights["theta"].numpy(), closed_form_weights(std_to_exponent(0.10), 400, 400),
                               atol=1e-8)
    assert info["coefficients"]["phema-0.1000-00000400.safetensors"] == pytest.approx(1.0, abs=1e-6)
    theta = np.sin(np.arange(1, 401) / 40) + np.arange(1, 401) / 400
    for std, step in ((0.07, 400), (0.15, 400), (0.04, 300)):
        got = weights_at(tmp_path, std, step)
        target = closed_form_weights(std_to_exponent(std), step, 400)
        error = np.linalg.norm(got - target)
        # the least-squares residual of 40 snapshot profiles: 0.24 %, 0.58 % and 1.1 % of ‖w‖ for these three
        assert error < 0.02 * np.linalg.norm(target), (std, step, error / np.linalg.norm(target))
        assert abs(got @ theta - target @ theta) <= error * np.linalg.norm(theta)
        assert abs(got @ theta - target @ theta) < 1e-3 * abs(target @ theta)  # measured 4e-5 … 2.6e-4
        assert got.sum() == pytest.approx(1.0, abs=1e-9) and not got[step:].any()  # nothing after `step`
    with pytest.raises(ValueError, match="step must be at least the first snapshot's step 20"):
        posthoc_weights(str(tmp_path), 0.07, 10)


def weights_at(folder, std, step):
    return posthoc_weights(str(folder), std, step)[0]["theta"].numpy()


def test_coefficients_sum_to_one_and_fit_an_exactly_representable_target():
    gammas, steps = [6.94, 16.97, 6.94, 16.97], [100, 100, 200, 200]
    c = posthoc_coefficients(gammas, steps, 16.97, 200)
    np.testing.assert_allclose(c, [0, 0, 0, 1], atol=1e-9)
    assert posthoc_coefficients(gammas, steps, 10.0, 150).sum() == pytest.approx(1.0)


def test_training_writes_snapshots_that_resume_and_export_post_hoc(tmp_path, capsys):
    from sgm.cli import main

    kw = dict(data="moons", n_data=128, width=8, depth=1, batch_size=16, sample_every=1000, out_dir=str(tmp_path),
              progress=False, ema_stds=(0.05, 0.1), snapshot_every=4, checkpoint_every=4)
    whole = Trainer(TrainConfig(steps=10, **{**kw, "out_dir": str(tmp_path / "whole")}))
    whole.fit()
    Trainer(TrainConfig(steps=6, **kw)).fit()
    Trainer(TrainConfig(steps=10, **kw)).fit()
    assert [(s, step) for s, step, _ in list_snapshots(str(tmp_path / "snapshots"))] == [
        (0.05, 4), (0.1, 4), (0.05, 6), (0.1, 6), (0.05, 8), (0.1, 8), (0.05, 10), (0.1, 10)]
    saved = load_checkpoint(str(tmp_path / "checkpoint.pt"))["power_ema"]
    for std, model in zip((0.05, 0.1), whole.power_ema.models):  # resumed twice, equal to the uninterrupted run
        for key, value in model.state_dict().items():
            assert torch.equal(saved[f"{std:.6g}"][key], value)
    out = str(tmp_path / "posthoc.safetensors")
    assert main(["export", str(tmp_path / "checkpoint.pt"), out, "--ema-std", "0.08", "--ema-step", "8"]) == 0
    model, config, _ = model_from_checkpoint(out)
    expected, _ = posthoc_weights(str(tmp_path / "snapshots"), 0.08, 8)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, expected[key])
    assert main(["export", str(tmp_path / "checkpoint.pt"), out, "--ema-std", "0.5"]) == 2
    assert "std must lie in (0, 0.3)" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="no snapshot folder"):
        export(str(tmp_path / "bare" / "checkpoint.pt"), out, ema_std=0.1)


def test_flat_parameters_average_like_separate_tensors():
    """With the parameters as views of one buffer the EMA is one lerp; it equals the per-tensor lerps exactly, and
    a module moved afterwards (no longer views) falls back to them."""
    from sgm.ema import EMA, _flat, flatten_parameters

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU(), torch.nn.Linear(5, 2))
    flat = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU(), torch.nn.Linear(5, 2))
    flat.load_state_dict(plain.state_dict())
    buffer = flatten_parameters(flat)
    assert buffer.numel() == sum(p.numel() for p in plain.parameters()) and _flat(flat) is buffer
    averages = [EMA(m, 0.9) for m in (plain, flat)]
    assert _flat(averages[0].model) is not None  # the copies are flat either way
    for k in range(3):
        with torch.no_grad():
            for a, b in zip(plain.parameters(), flat.parameters()):
                step = torch.randn_like(a)
                a.add_(step)
                b.add_(step)
        for m, ema in zip((plain, flat), averages):
            ema.update(m, k + 1)
    for a, b in zip(averages[0].model.parameters(), averages[1].model.parameters()):
        assert torch.equal(a, b)
    flat.to(torch.float64)
    assert _flat(flat) is None
    EMA(flat.double(), 0.9).update(flat)  # the per-tensor path
