"""The stochastic leg's strong-error column (``sgm.bench.strong``): RMS distance to the same sampler's fine-step run on
the same Brownian paths, for sgm (per-sample ``BrownianNoise``) and k-diffusion (its own Brownian tree); diffusers
has none ("n/a")."""
import math

import pytest

import sgm
from sgm.bench import report, strong
from sgm.bench.peers import k_diffusion
from sgm.bench.problems import make_problem

MIXTURES = (1, 2, 3)  # random_mixture seeds: one basin each (spread 0.4), so no path ends in another mode


def _problem(seed: int, sde_name: str = "vp", n: int = 64):
    return make_problem(f"mixture {seed}", sgm.random_mixture(2, k=3, spread=0.4, seed=seed), sde_name, n, 0)


def _row(name: str, options: dict, steps: int, spacing: str = "logsnr") -> dict:
    return {"side": "sgm", "name": name, "options": options, "spacing": spacing, "variant": "", "steps": steps,
            "diverged": False}


@pytest.mark.parametrize("seed", MIXTURES)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_euler_maruyamas_strong_error_falls_with_the_budget(seed, sde_name):
    """Euler–Maruyama on the reverse SDE (additive noise: strong order 1) at 10, 20, 40 steps against 200: the error
    falls at each doubling, and by more than 2× from 10 to 40 steps (order > 0.5; order 1 gives about 4×, measured
    4.0–5.6 on VP), on three random mixtures."""
    problem = _problem(seed, sde_name)
    row, cache = _row("euler_maruyama", {}, 0), {}
    errors = [strong.sgm_strong_error(problem, {**row, "steps": k}, 0, 32, 200, cache)["strong_error"]
              for k in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2] > 0 and errors[0] > 2 * errors[2], errors


@pytest.mark.parametrize("name, options", [("euler_maruyama", {}), ("dpm_solver_sde", {"order": 2}),
                                           ("sa_solver", {"predictor_order": 1, "corrector_order": 1})])
def test_strong_error_is_zero_at_the_references_budget(name, options):
    """At the reference's own steps the run is the reference (same grid, same x_T, same per-sample paths): 0 exactly,
    while a tenth of the steps is measurably off."""
    problem, cache = _problem(1), {}
    steps = sgm.samplers.solver(name, **options).steps_for_nfe(100)
    at_ref = strong.sgm_strong_error(problem, _row(name, options, steps), 0, reference_nfe=100, cache=cache)
    coarse = strong.sgm_strong_error(problem, _row(name, options, steps // 10), 0, reference_nfe=100, cache=cache)
    assert at_ref == {"strong_error": 0.0, "strong_reference_steps": steps} and coarse["strong_error"] > 1e-3


def test_rows_get_the_column_diffusers_and_diverged_rows_nan():
    """``with_strong_errors`` adds the column to every row: sgm's measured, a diverged row's and diffusers' nan (no
    shared path), and the stochastic goal table prints diffusers' as "n/a" beside sgm's with its reference steps."""
    problem = _problem(3)
    rows = [{**_row("euler_maruyama", {}, 10), "sampler": "euler_maruyama, logsnr", "nfe_budget": 10, "nfe": 10,
             "frechet_moments": 0.1, "target": problem.target_name, "sde": "vp"},
            {**_row("euler_maruyama", {}, 20), "diverged": True, "nfe_budget": 20, "target": problem.target_name,
             "sde": "vp"},
            {"side": "diffusers", "sampler": "diffusers DDPM", "nfe_budget": 10, "nfe": 10, "diverged": False,
             "frechet_moments": 0.2, "target": problem.target_name, "sde": "vp"}]
    out = strong.with_strong_errors(problem, rows, 0, reference_nfe=100)
    assert out[0]["strong_error"] > 0 and out[0]["strong_reference_steps"] == 100
    assert math.isnan(out[1]["strong_error"]) and math.isnan(out[2]["strong_error"])
    table = report.goal_table(out, (10,), ("diffusers",), "frechet_moments")
    line = report.stochastic_markdown(table, {}).splitlines()[-1]
    assert line.endswith(f"| n/a / {out[0]['strong_error']:.3g} (ref 100) |"), line


@pytest.mark.skipif(not k_diffusion.available(), reason="needs k-diffusion's sampling.py")
def test_k_diffusions_strong_error_on_its_own_tree():
    """k-diffusion's run on its BrownianTreeNoiseSampler (one seed) against its own run at the reference budget: 0
    at that budget, and falling from 10 to 40 calls (dpmpp_2m_sde) on a random mixture (the tree spans the chain's σ
    range at every step count, so the runs share one path)."""
    problem, cache = _problem(1, "ve"), {}
    config = k_diffusion.Config("dpmpp_2m_sde", "dpmpp_2m_sde", "karras")
    errors = [k_diffusion.strong_error(config, problem, nfe, 10, 32, 100, cache)["strong_error"]
              for nfe in (10, 40, 100)]
    assert errors[0] > errors[1] > errors[2] == 0.0, errors
