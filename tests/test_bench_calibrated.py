"""sgm.bench.calibrated: every step optimiser and every learned correction is a row of the comparison, calibrated
on draws disjoint from x_T, run from x_T, with its calibration cost; unknown method names are refused."""
import pytest
import torch

import sgm
from sgm.bench import calibrated, report, runs, sweep
from sgm.samplers.optimize import OPTIMIZERS

CONFIGS = [("ddim", {}), ("dpm_solver", {"order": 2, "method": "multistep", "prediction": "x0"})]
DRAWS = calibrated.Draws(16, 20)


@pytest.fixture(scope="module")
def leg(bench_problems):
    """The calibrated rows of every method at 5 NFE on the 3-mode mixture under VP (two fixed configurations, one
    of each optimiser's, 16 calibration draws), with the seed and size of every calibration batch drawn."""
    problem = bench_problems["vp"]
    fixed = runs.sgm_rows(problem, (5,), CONFIGS)
    seen = []
    spies = {}
    for name in ("optimize_grid", "pas", "amed", "afs", "ems"):
        real = getattr(calibrated, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            if kwargs.get("generator") is not None:
                seen.append((_name, kwargs["shape"][0], kwargs["generator"].initial_seed()))
            return _real(*args, **kwargs)

        spies[name] = spy
    with pytest.MonkeyPatch.context() as m:
        for name, spy in spies.items():
            m.setattr(calibrated, name, spy)
        rows = calibrated.calibrated_rows(problem, (5,), fixed, DRAWS, top={k: 1 for k in OPTIMIZERS})
    return problem, fixed, rows, seen


def test_each_optimiser_and_correction_is_a_row_with_its_cost(leg):
    """One grid per optimiser for the best fixed configuration; PAS, AMED, S4S, the analytical first steps and v3 on
    the best fixed grid; PAS, AMED and S4S again on every optimised grid, v3 on its own descent grid and S4S over v3
    there (the composition). Each ran from x_T within
    the budget and carries its calibration cost (DMN's bound needs no draws: zero evaluations)."""
    problem, fixed, rows, _ = leg
    best = min((r for r in fixed if r["spacing"] not in runs.CHAIN_SPACINGS), key=lambda r: r["map_error"])
    optimised = {r["method"]: r for r in rows if r["family"] == "optimised"}
    assert set(optimised) == set(OPTIMIZERS)
    for method, r in optimised.items():
        assert (r["name"], r["options"]) == (best["name"], best["options"]), method
        assert r["sampler"] == runs.label(best["name"], best["options"], f"{method} grid")
        assert not r["diverged"] and r["nfe"] <= 5 and r["map_error"] > 0
        assert r["calibration"]["seconds"] > 0
        assert r["calibration"]["draws"] == (0 if method == "dmn" else DRAWS.n)
        assert (r["calibration"]["nfe"] > 0) == (method != "dmn")
    corrected = [r for r in rows if r["family"] == "corrected"]
    on_fixed = {r["method"]: r for r in corrected if "grid" not in r["spacing"]}
    composed = {(r["method"], r["spacing"]): r for r in corrected if "grid" in r["spacing"]}
    assert set(on_fixed) == set(calibrated.CORRECTIONS)
    assert set(composed) == {(c, f"{m} grid") for c in ("pas", "amed", "s4s") for m in OPTIMIZERS} | {
        ("v3", "descent grid"), ("s4s", "descent grid + v3")}
    for (method, where), r in composed.items():  # on each optimiser's grid, billed both (v3: EMS and its own grid)
        assert r["calibration"]["nfe"] > 0
        if method != "v3" and where != "descent grid + v3":
            grid = optimised[where.removesuffix(" grid")]["calibration"]
            assert r["calibration"]["nfe"] > grid["nfe"] and r["calibration"]["seconds"] > grid["seconds"]
    for r in corrected:
        assert not r["diverged"] and r["nfe"] <= 5 and r["sampler"].endswith(f" + {r['method']}")
        assert r["calibration"]["seconds"] >= 0 and r["calibration"]["draws"] == (0 if r["method"] == "afs" else 16)
    assert on_fixed["pas"]["spacing"] == best["spacing"] and on_fixed["v3"]["name"] == "dpm_solver_v3"
    # the analytical first step saves an evaluation: the budget's grid of the corrected solver has one node more
    assert on_fixed["afs"]["steps"] == on_fixed["pas"]["steps"] + 1 and on_fixed["afs"]["nfe"] == 5
    # the cost reaches the goal table's sgm cell
    (goal,) = report.goal_table([on_fixed["pas"]], (5,), peer="none")
    assert goal["sgm"].endswith(f"(calibration: {on_fixed['pas']['calibration']['nfe']:.0f} evaluations × 16 draws, "
                                f"{on_fixed['pas']['calibration']['seconds']:.0f} s)")


def test_calibration_draws_are_disjoint_from_x_T(leg, bench_problems):
    """Every method drew its calibration batch from the generator seeded 20 (the sweep's seed + 20), 16 draws,
    and those draws share no row with x_T (drawn from seed 0)."""
    problem, _, _, seen = leg
    assert {name for name, _, _ in seen} == {"optimize_grid", "pas", "amed", "afs", "ems"}
    assert all((n, seed) == (16, 20) for _, n, seed in seen)
    x = DRAWS.sample(problem.sde, tuple(problem.x_T.shape[1:]))
    assert x.shape == (16, 2) and not any(torch.equal(a, b) for a in x for b in problem.x_T)
    assert sweep.calibration_draws(0) == calibrated.Draws(sweep.CALIBRATION_N, 20)
    grid = sgm.samplers.optimize_grid(problem.model_for(problem.variants[0], False)[0], problem.sde, 4, "ddim",
                                      optimizer="gits", **DRAWS.kwargs((2,)))
    assert grid.info["n"] == 16 and grid.info["shape"] == [16, 2]  # the kwargs are what optimize_grid takes


def test_a_method_that_fails_is_a_failed_row_and_the_next_configuration_is_tried(bench_problems, monkeypatch):
    """A refusal (ValueError) leaves a failed row and passes to the next configuration; a divergence is a failed
    row that counts; a correction whose calibration raises anything is a failed row with its error."""
    problem = bench_problems["vp"]
    fixed = runs.sgm_rows(problem, (10,), CONFIGS)
    tried = []

    def refusing(model, sde, steps, sampler, **kwargs):
        tried.append(sampler)
        if len(tried) == 1:
            raise ValueError("does not take this sampler")
        raise sgm.samplers.SamplerDiverged("diverged on every starting grid")

    monkeypatch.setattr(calibrated, "optimize_grid", refusing)
    rows = calibrated.calibrated_rows(problem, (10,), fixed, DRAWS, ("descent",), (), top={"descent": 1})
    assert len(tried) == 2 and tried[0] != tried[1] and len(rows) == 2
    assert all(r["diverged"] for r in rows)
    assert rows[0]["error"].startswith("descent: ValueError") and "SamplerDiverged" in rows[1]["error"]

    def broken(*args, **kwargs):  # any failure of a correction's calibration is a failed row; the others still run
        raise KeyError(-1.39)

    monkeypatch.setattr(calibrated, "amed", broken)
    rows = calibrated.calibrated_rows(problem, (10,), fixed, DRAWS, (), ("amed", "afs"))
    assert [(r["method"], r["diverged"]) for r in rows] == [("amed", True), ("afs", False)]
    assert rows[0]["error"] == "amed: KeyError: -1.39"


def test_unknown_methods_are_refused_by_name_before_any_work(monkeypatch):
    monkeypatch.setattr(sweep, "make_problem", lambda *a, **k: pytest.fail("worked on bad input"))
    with pytest.raises(ValueError, match=r"optimizers: unknown \['newton'\]"):
        calibrated.check_methods(("descent", "newton"), ())
    with pytest.raises(ValueError, match=r"corrections: unknown \['lms'\]"):
        calibrated.check_methods((), ("pas", "lms"))
    with pytest.raises(TypeError, match="optimizers"):
        calibrated.check_methods("descent", ())
    with pytest.raises(ValueError, match="newton"):
        sweep.run_sweep("unused", optimizers=("newton",))
    from sgm.cli import build_parser

    args = build_parser().parse_args(["bench", "--only", "compare"])
    assert args.optimizers == list(OPTIMIZERS) and args.corrections == list(calibrated.CORRECTIONS)
    args = build_parser().parse_args(["bench", "--only", "compare", "--optimizers", "gits", "--corrections"])
    assert args.optimizers == ["gits"] and args.corrections == []
    with pytest.raises(ValueError, match="corrections: unknown"):
        sweep.run_from_args(build_parser().parse_args(["bench", "--corrections", "pass"]))
    from sgm.bench import trained

    monkeypatch.setattr(trained, "checkpoint_problems", lambda *a, **k: pytest.fail("worked on bad input"))
    with pytest.raises(ValueError, match="optimizers: unknown"):
        trained.main(["--checkpoint", "unused.pt", "--optimizers", "gitz"])
