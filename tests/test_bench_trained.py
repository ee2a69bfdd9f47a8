"""sgm.bench.trained: the trained-network leg, with exact 64-D mixtures (as 1×8×8 images) standing in for the
network: its reference is the model's own probability-flow map of the same x_T, the peers get the model's ε at their
noise levels, sgm and diffusers are scored from the same x_T against the same reference, and the finalists are
chosen on draws disjoint from the evaluation batch."""
import math

import pytest
import torch

import sgm
from sgm.bench import calibrated, problems, runs, trained
from sgm.bench.peers import diffusers as peer
from sgm.nets import DigitsClassifier
from sgm.samplers import TimeGrid
from sgm.samplers.optimize import flow_map, map_error

D = torch.float64
SHAPE = (1, 8, 8)
needs_diffusers = pytest.mark.skipif(not peer.available(), reason="diffusers is not installed")


def image_model(target, sde):
    """The exact score of a 64-D mixture on (batch, 1, 8, 8) images: a stand-in for a digits network."""
    score = target.score_fn(sde)
    return lambda x, t: score(x.flatten(1), t).reshape(x.shape)


def leg_problems(seed, n=6, n_screen=4, tol=1e-7, cache=None, judged=True):
    target, sde = sgm.random_mixture(64, k=3, seed=seed), sgm.VPSDE()
    torch.manual_seed(seed)
    classifier = DigitsClassifier().double().eval() if judged else None  # untrained: features of the right shape
    images = target.sample(64, generator=torch.Generator().manual_seed(seed)).reshape(-1, *SHAPE).clamp(-1, 1)
    return target, sde, trained.trained_problems(image_model(target, sde), sde, SHAPE, n, n_screen, seed, tol,
                                                 cache, dtype=D, classifier=classifier, images=images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_reference_is_the_models_flow_map_of_the_same_x_T(seed):
    """The leg's reference (VP time, dopri5 at 1e-6 to t = 1e-3, Tweedie) against the same map computed in EDM's
    coordinates (x̄ = x/α, σ as time, dopri5 at 1e-8 from σ(T) to σ(1e-3), Tweedie there): Tweedie's denoiser
    is the same in both, so they differ by the integrations' errors only, measured 2e-5 – 4e-5 (of a mean norm
    ≈ 17) on these seeds: 2e-4 leaves a margin of 5. The leg's own estimate (against tol/10 on 4 draws) is within
    a factor 10 of that discrepancy (measured: a factor 3 at most)."""
    target, sde, (evaluation, screen, info) = leg_problems(seed, tol=1e-6, judged=False)
    ends = torch.tensor([sde.T, sde.default_eps], dtype=D)
    top, bottom = sde.noise_level(ends).tolist()
    edm = sgm.EDMPath(sigma_min=bottom, sigma_max=top)
    x_T, x_ref = torch.cat([evaluation.x_T, screen.x_T]).flatten(1), torch.cat([evaluation.x_ref, screen.x_ref])
    exact = flow_map(target.score_fn(edm), edm, x_T / float(sde.alpha(ends[:1])), tol=1e-8)[0]
    error = map_error(x_ref.flatten(1), exact)
    assert error < 2e-4 and error / 10 < info["error"] < 10 * error
    assert info["check_n"] == 4 and info["tol"] == 1e-6 and not info["cached"]
    assert evaluation.x_T.shape == (6, *SHAPE) and screen.x_T.shape == (4, *SHAPE)
    assert not any(torch.equal(a, b) for a in evaluation.z for b in screen.z)  # disjoint draws
    assert evaluation.chain.sigmas[-1].item() == pytest.approx(top, rel=1e-12)  # the peers start at σ(T)


def test_the_peers_get_the_models_eps_at_their_noise_level():
    """``eps_at`` (the model at t(σ), converted to ε) against the exact ε of the mixture at noise level σ
    (``problems.eps_at``, an independent formula in VP coordinates), to float64 rounding."""
    for seed in (0, 3):
        target, _, (evaluation, _, _) = leg_problems(seed, n=2, n_screen=1, tol=1e-3)
        for sigma in (0.02, 0.7, 5.0, 150.0):
            scale = 1 / math.sqrt(1 + sigma**2)
            x = scale * target.sample(5, generator=torch.Generator().manual_seed(seed)) + sigma * scale * torch.randn(
                5, 64, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
            torch.testing.assert_close(evaluation.eps_at(x.reshape(5, *SHAPE), sigma).flatten(1),
                                       problems.eps_at(target, x, sigma), rtol=1e-9, atol=1e-9)


@needs_diffusers
@pytest.mark.parametrize("seed", [0, 4])
def test_sgm_and_diffusers_are_scored_from_the_same_x_T_against_the_same_reference(seed):
    """diffusers' DDIM and sgm's DDIM on the same noise levels (the scheduler's timesteps as times on the path) are
    the same algorithm: their rows' map errors agree to 1e-4 (diffusers keeps ᾱ in float32) and so do their
    classifier Fréchet distances; each row's map error is that of its samples against the problem's reference."""
    _, sde, (evaluation, _, _) = leg_problems(seed)
    config = next(c for c in peer.configs() if c.label == "diffusers DDIM, trailing")
    theirs = peer.row(config, evaluation, 5)
    scheduler, _ = peer.make_scheduler(config, peer.vp_betas(evaluation.chain), 5)
    times = [float(evaluation.chain.t[int(i)]) for i in scheduler.timesteps]
    grid = TimeGrid.from_times(sde, times, True)
    out = sgm.sample(evaluation.model, sde, tuple(evaluation.x_T.shape), sampler="ddim", grid=grid,
                     x_init=evaluation.x_T)
    ours = evaluation.judge(out.x, out.nfe, 0.0)
    assert theirs["nfe"] == ours["nfe"] == 5 and not theirs["diverged"]
    assert ours["map_error"] == map_error(out.x, evaluation.x_ref) > 0.1  # 5 steps are far from the map
    assert math.isclose(theirs["map_error"], ours["map_error"], rel_tol=1e-4)
    assert math.isclose(theirs["frechet_classifier"], ours["frechet_classifier"], rel_tol=1e-3)
    assert 0 <= ours["confident"] <= 1


@needs_diffusers
def test_the_leg_screens_on_disjoint_draws_and_reruns_the_finalists(monkeypatch):
    """Screening rows (map error only) on the screening batch; at each budget the best of each side by screening
    map error (and sgm's best on its default grid) reruns on the evaluation batch, judged by map error and FD, and
    the table's ratio is sgm's best final map error over diffusers'."""
    labels = ("diffusers DDIM, trailing", "diffusers DPM-Solver++ 2M midpoint, trailing")
    monkeypatch.setattr(peer, "configs", lambda f=peer.configs: [c for c in f() if c.label in labels])
    configs = [("ddim", {}), ("dpm_solver", {"order": 2, "method": "multistep", "prediction": "x0"})]
    _, sde, (evaluation, screen, _) = leg_problems(5, tol=1e-6)
    seen = []

    def calibrated(evaluation_, screen_, chosen):  # a calibrated family sees the screening batch and the finalists
        seen.append((evaluation_ is evaluation, screen_ is screen, [r["sampler"] for r in chosen]))
        return []

    screened, final = trained.run_leg(evaluation, screen, (5, 10), k=1, configs=configs, calibrated=[calibrated],
                                      log=lambda s: None)
    assert seen == [(True, True, [r["sampler"] for r in final])]
    assert {r["side"] for r in screened} == {"sgm", "diffusers"} and len(screened) == 2 * 2 * len(runs.CONTINUOUS_SPACINGS + runs.CHAIN_SPACINGS) + 2 * 2
    assert all("frechet_classifier" not in r for r in screened) and all("frechet_classifier" in r for r in final)
    for side in ("sgm", "diffusers"):
        for nfe in (5, 10):
            mine = [r for r in screened if (r["side"], r["nfe_budget"]) == (side, nfe)]
            best = min(mine, key=lambda r: r["map_error"])
            again = [r for r in final if (r["side"], r["nfe_budget"]) == (side, nfe)]
            assert again[0]["sampler"] == best["sampler"] and again[0]["screen_map_error"] == best["map_error"]
            assert again[0]["map_error"] != best["map_error"]  # another batch of draws
            defaults = [r for r in again if r["default_grid"]]
            assert side == "diffusers" or defaults  # sgm's best on its default grid is always a finalist
    table = trained.leg_table(final, (5, 10))
    for entry in table:
        assert entry["ratio_map_error"] == entry["sgm"]["map_error"] / entry["diffusers"]["map_error"]
        assert entry["sgm"]["map_error"] == min(r["map_error"] for r in final
                                                if (r["side"], r["nfe_budget"]) == ("sgm", entry["nfe"]))
    text = trained.table_markdown(table)
    assert text.count("\n| 5 |") == 2 and table[0]["diffusers"]["sampler"].removeprefix("diffusers ") in text


def test_the_reference_is_cached_and_reloaded(tmp_path, monkeypatch):
    cache = str(tmp_path / "ref.pt")
    _, _, (first, _, info) = leg_problems(6, tol=1e-4, cache=cache, judged=False)
    monkeypatch.setattr(trained, "flow_map", lambda *a, **k: pytest.fail("recomputed a cached reference"))
    _, _, (second, _, again) = leg_problems(6, tol=1e-4, cache=cache, judged=False)
    assert torch.equal(first.x_ref, second.x_ref) and again["cached"] and again["nfe"] == info["nfe"]


def test_bad_arguments_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(trained, "flow_map", lambda *a, **k: pytest.fail("worked on bad input"))
    target, sde = sgm.random_mixture(64, k=2, seed=0), sgm.VPSDE()
    model = image_model(target, sde)
    for kwargs, name in (({"n": 0}, "n"), ({"n_screen": 1.5}, "n_screen"), ({"tol": 0.5}, "tol"),
                         ({"tol": 0.0}, "tol"), ({"seed": -1}, "seed")):
        args = {"n": 4, "n_screen": 2, "seed": 0, "tol": 1e-5, **kwargs}
        with pytest.raises((ValueError, TypeError), match=name):
            trained.trained_problems(model, sde, SHAPE, **args)
    with pytest.raises(ValueError, match="k must"):
        trained.run_leg(None, None, (5,), k=0)
    with pytest.raises(TypeError, match="calibrated"):
        trained.run_leg(None, None, (5,), calibrated=[None])


def test_calibrated_families_fit_on_the_screening_batch_and_run_on_the_evaluation_batch():
    """``screening_draws`` are the screening batch itself, bit for bit (so calibration never sees the evaluation
    draws); the family's rows (the optimisers' grids, PAS on the best screening finalist's grid and on each optimised
    grid) are made for sgm's best screening finalist, join the finals and are judged on the evaluation batch."""
    configs = [("ddim", {}), ("dpm_solver", {"order": 2, "method": "multistep", "prediction": "x0"})]
    _, sde, (evaluation, screen, _) = leg_problems(3, tol=1e-6)
    draws = trained.screening_draws(4, 3, 1e-6, D)
    assert torch.equal(draws.sample(sde, SHAPE), screen.x_T)
    family = calibrated.leg_family(draws, ("descent", "dmn", "ld3"), ("pas",), top={"descent": 1})  # no_grad
    screened, final = trained.run_leg(evaluation, screen, (5,), k=1, use_peers=False, configs=configs,
                                      calibrated=[family], log=lambda s: None)
    best = min((r for r in screened if r["spacing"] not in runs.CHAIN_SPACINGS), key=lambda r: r["map_error"])
    rows = [r for r in final if "family" in r]
    assert sorted((r["family"], r["method"], r["spacing"]) for r in rows) == sorted([
        ("corrected", "pas", f"{m} grid") for m in ("descent", "dmn", "ld3")] + [("corrected", "pas", best["spacing"]),
        ("optimised", "descent", "descent"), ("optimised", "dmn", "dmn"), ("optimised", "ld3", "ld3")])
    for r in rows:
        assert r["name"] == best["name"] and not r["diverged"] and r["nfe"] <= 5
        assert r["calibration"]["draws"] == (0 if r["method"] == "dmn" else 4) and "frechet_classifier" in r
        assert not r["default_grid"]  # a calibrated run is not sgm on its default grid
    table = trained.leg_table(final, (5,))
    assert table[0]["sgm"]["map_error"] == min(r["map_error"] for r in final if not r["diverged"])
