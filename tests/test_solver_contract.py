"""The solver contract, for every registered sampler over its registry entry's options (``smoke`` and every
combination of its ``sweep`` axes): the NFE it declares is the count it makes; every call shares one time per
batch; the same seed gives the same samples in float32 and float64; a state is a value (a step re-run from a saved
state gives the same result and leaves the state as it was); it runs from the exact top of rectified flow or is
refused there by name before any work; RePaint wraps it or refuses it by name; and a toy solver added as one
module and one entry is picked up by every consumer of the registry."""
import copy
import itertools

import pytest
import torch

import sgm
from sgm.inverse import LinearObservation, RePaint, inpainting
from sgm.samplers import Solver, integrate, time_grid
from conftest import gen, mixture

D = torch.float64


def _cases():
    cases = [(name, options) for name in sgm.samplers.available() for options in sgm.samplers.configurations(name)]
    cases += [("ode", {"method": "dopri5"}), ("pc", {"predictor": "ancestral", "corrector": "ald"}),
              ("pc", {"predictor": "none"})]
    return cases


CASES = _cases()
IDS = [f"{n}-{','.join(f'{k}={v}' for k, v in o.items())}" for n, o in CASES]


def _counting(gm, path):
    calls = []

    def score(x, t):
        calls.append(t)
        return gm.score(x, t, path)

    return score, calls


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_declared_nfe_is_the_count_and_every_call_shares_one_time(name, options):
    gm, path = mixture(), sgm.VPSDE()
    solver = sgm.samplers.solver(name, **options)
    for steps, denoise in ((2, True), (7, True), (7, False)):
        score, calls = _counting(gm, path)
        out = sgm.sample(score, path, (6, 2), name, steps=steps, denoise=denoise, generator=gen(0), dtype=D,
                         **options)
        assert out.nfe == len(calls) > 0
        assert all(t.dim() == 1 and t.shape[0] == 6 and t.stride(0) == 0 for t in calls)
        if solver.evals_per_step is None:
            assert solver.nfe(steps, denoise) is None
        else:  # the grid's count (heun: one fewer per Euler step, here the 2-level grid's one step T -> eps)
            grid = time_grid(path, steps, sgm.samplers.entry(name).default_spacing(path), denoise=denoise)
            assert out.nfe == solver.grid_nfe(grid) <= solver.nfe(steps, denoise)
    if solver.evals_per_step is not None:
        for nfe in range(1, 40):
            steps = solver.steps_for_nfe(nfe)
            assert (solver.nfe(2) > nfe) if steps is None else solver.nfe(steps) <= nfe < solver.nfe(steps + 1)


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_same_seed_same_samples_in_float32_and_float64(name, options):
    path = sgm.VESDE()
    for dtype in (torch.float32, D):
        gm = mixture(dtype)
        run = lambda seed: sgm.sample(gm.score_fn(path), path, (32, 2), name, steps=8, generator=gen(seed),  # noqa
                                      dtype=dtype, **options)
        a, b, c = run(0), run(0), run(1)
        assert a.x.dtype == dtype and bool(torch.isfinite(a.x).all())
        assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


class _Replay(sgm.samplers.Noise):
    """A noise source that records its draws and can replay them: the second run of a step sees the first's noise."""

    def __init__(self, generator, x):
        super().__init__(generator, x)
        self.draws, self.replay = [], None

    def __call__(self, t0=None, t1=None, *, like=None):
        if self.replay is not None:
            return self.replay.pop(0)
        z = super().__call__(t0, t1, like=like)
        self.draws.append(z.clone())
        return z


class _TwiceFromTheSameState(Solver):
    """Runs each step of ``solver`` twice from the same state (the second time with the first's noise) and checks
    the two results agree and the state was left as it was."""

    def __init__(self, solver):
        self.solver = solver
        for k in ("name", "evals_per_step", "final_evals", "stochastic", "needs"):
            setattr(self, k, getattr(solver, k))
        self.ode_order, self.strong_order, self.weak_order = solver.ode_order, solver.strong_order, solver.weak_order
        self.checked = 0

    def init(self, x, grid):
        return self.solver.init(x, grid)

    def stepping_grid(self, grid):
        return self.solver.stepping_grid(grid)

    def step(self, model, x, a, b, state, noise):
        before = copy.deepcopy(state)
        noise.draws.clear()
        x1, s1 = self.solver.step(model, x.clone(), a, b, state, noise)
        noise.replay = list(noise.draws)
        x2, s2 = self.solver.step(model, x.clone(), a, b, state, noise)
        noise.replay = None
        assert torch.equal(x1, x2), f"{self.solver.name}: a step re-run from its state gave another result"
        _assert_same(state, before)
        self.checked += 1
        return x1, s1

    def finish(self, model, x, node, state, noise):
        return self.solver.finish(model, x, node, state, noise)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), "the step changed a tensor held in its state"
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same(u, v)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    else:
        assert a == b, "the step changed its state"


@pytest.mark.parametrize("name,options", [c for c in CASES if sgm.samplers.solver(c[0], **c[1]).evals_per_step],
                         ids=[i for c, i in zip(CASES, IDS) if sgm.samplers.solver(c[0], **c[1]).evals_per_step])
def test_a_state_is_a_value(name, options):
    gm, path = mixture(), sgm.VPSDE()
    solver = _TwiceFromTheSameState(sgm.samplers.solver(name, **options))
    x = path.prior_sample((5, 2), generator=gen(0), dtype=D)
    grid = time_grid(path, 6, spacing="logsnr")
    noise = _Replay(gen(1), x)
    out = integrate(solver, gm.score_fn(path), path, x, grid, noise=noise)
    assert bool(torch.isfinite(out.x).all()) and solver.checked == len(solver.stepping_grid(grid).noisy) - 1


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_runs_from_the_exact_top_of_rectified_flow_or_is_refused_by_name(name, options):
    path, gm = sgm.RectifiedFlow(), mixture()
    solver = sgm.samplers.solver(name, **options)
    default = sgm.samplers.entry(name).default_spacing(path)
    spacing = "uniform" if default == "flow" else default  # a grid whose first node is the exact top t = 1
    run = lambda **kw: sgm.sample(gm.prediction_fn(path, "x0"), path, (16, 2), name, steps=8, generator=gen(0),  # noqa
                                  dtype=D, spacing=spacing, **options, **kw)
    if "positive_alpha" in solver.needs:
        with pytest.raises(ValueError, match=rf"{solver.name.split(' ')[0]}.* needs α > 0"):
            run()
        out = run(t_max=0.99)
    else:
        out = run()
    assert bool(torch.isfinite(out.x).all())
    # a convergent method lands near the data; not diffusers' h/2 SA condition, which overshoots the last step of a
    # grid ending at eps (Δλ ≈ 2 here: max |x| 22–25 at 8 steps; docs/samplers.md, SA-Solver)
    convergent = solver.ode_order is not None or solver.weak_order is not None
    if convergent and not getattr(solver, "few_step_modification", False):
        assert float(out.x.abs().max()) < 20


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_repaint_wraps_every_solver_that_steps_on_the_grid_and_refuses_the_others(name, options):
    gm, path = mixture(), sgm.VPSDE()
    obs = LinearObservation(inpainting(torch.tensor([False, True])), [0.5], 0.0)
    solver = sgm.samplers.solver(name, **options)
    x = path.prior_sample((8, 2), generator=gen(0), dtype=D)
    grid = time_grid(path, 5, spacing="logsnr")
    if solver.evals_per_step is None:
        with pytest.raises(TypeError, match="fixed-step"):
            RePaint(solver, obs, resample=2, generator=gen(2))
        return
    wrapped = RePaint(solver, obs, resample=2, generator=gen(2))
    if solver.stepping_grid(grid) != grid:
        with pytest.raises(ValueError, match=f"RePaint cannot wrap {solver.name.split(' ')[0]}"):
            integrate(wrapped, gm.score_fn(path), path, x, grid, generator=gen(1))
        return
    out = integrate(wrapped, gm.score_fn(path), path, x, grid, generator=gen(1))
    assert out.nfe == wrapped.nfe(5) and bool(torch.isfinite(out.x).all())


class _ToyEuler(Solver):
    """A toy solver for the registry test: Euler in λ on the data prediction (= DDIM)."""

    name, ode_order = "toy", 1

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def step(self, model, x, a, b, state, noise):
        return model(x, a).combine(x0=b.scale, eps=b.std * self.scale), state


def test_adding_a_solver_is_one_module_and_one_entry(monkeypatch):
    """Registering one entry is all a new sampler needs: the sampler functions, the docs table, the benchmark's
    curves and comparison, the demo's runs and the contract checks above all read the registry."""
    from sgm.bench import runs
    from sgm.cli import demo_runs

    entry = sgm.samplers.Entry(_ToyEuler, "a toy: Euler in λ",
                               spacing={"vp": "logsnr", "ve": "karras", "rf": "uniform"},
                               steps=30,
                               sweep={"scale": (1.0, 0.5)})
    monkeypatch.setitem(sgm.samplers.SAMPLERS, "toy", entry)
    assert "toy" in sgm.samplers.available() and sgm.samplers.options("toy") == ["scale"]
    assert ("| `toy` | a toy: Euler in λ | `scale` | 1 | ODE 1 | vp `logsnr`, ve `karras`, rf `uniform` |"
            in sgm.samplers.markdown_table())
    assert ("toy", "toy") in {(r.label, r.sampler) for r in runs.curve_runs()}
    assert {("toy", (("scale", 1.0),)), ("toy", (("scale", 0.5),))} <= {
        (n, tuple(o.items())) for n, o in runs.sgm_configs()}
    assert demo_runs(sgm.VPSDE())["toy"] == {"steps": 30, "t_max": None}
    gm, path = mixture(), sgm.VPSDE()
    out = sgm.sample(gm.score_fn(path), path, (8, 2), "toy", steps=5, generator=gen(0), dtype=D)
    ddim = sgm.sample(gm.score_fn(path), path, (8, 2), "ddim", steps=5, spacing="logsnr", generator=gen(0), dtype=D)
    torch.testing.assert_close(out.x, ddim.x, rtol=1e-12, atol=1e-12)  # the entry's default spacing was used
    test_declared_nfe_is_the_count_and_every_call_shares_one_time("toy", {})
    test_a_state_is_a_value("toy", {})


def test_the_docs_table_is_the_registrys():
    """docs/samplers.md holds exactly ``sgm.samplers.markdown_table()`` between its markers."""
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "samplers.md").read_text()
    start = text.index("<!-- sampler table: generated by sgm.samplers.markdown_table() -->\n")
    end = text.index("<!-- end of sampler table -->")
    table = text[start:end].split("\n", 1)[1]
    assert table == sgm.samplers.markdown_table(), "regenerate it: print(sgm.samplers.markdown_table())"


@pytest.mark.parametrize("options,match", [
    ({"predictor": "reverse_diffusion", "eta": 0.7}, "eta applies to the ddim predictor"),
    ({"predictor": "ddim", "variance": "beta"}, "variance applies to the ancestral predictor"),
    ({"corrector": "none", "snr": 0.2}, "corrector='none' takes neither"),
    ({"corrector": "none", "n_corrector": 2}, "corrector='none' takes neither"),
    ({"predictor": "heun"}, "predictor must be one of"),
    ({"corrector": "mala"}, "corrector must be one of"),
])
def test_pc_refuses_options_its_parts_do_not_use(options, match):
    with pytest.raises(ValueError, match=match):
        sgm.samplers.solver("pc", **options)


def test_pc_composes_every_predictor_with_every_corrector():
    """Each predictor × corrector runs and spends its declared evaluations; the ald corrector's step is
    score_sde's ``2 r² (snr·σ_b)²`` (checked against a hand loop with the same noise)."""
    from sgm.samplers.langevin import CORRECTORS, PC_PREDICTORS

    gm, path = mixture(), sgm.VESDE()
    for predictor, corrector in itertools.product(PC_PREDICTORS, CORRECTORS):
        out = sgm.sample(gm.score_fn(path), path, (8, 2), "pc", steps=6, predictor=predictor, corrector=corrector,
                         generator=gen(0), dtype=D)
        solver = sgm.samplers.solver("pc", predictor=predictor, corrector=corrector)
        assert out.nfe == solver.nfe(6) and bool(torch.isfinite(out.x).all())
    grid = time_grid(path, 4)
    x0 = path.prior_sample((8, 2), generator=gen(3), dtype=D)
    out = integrate(sgm.samplers.solver("pc", predictor="none", corrector="ald", snr=0.3, n_corrector=2),
                    gm.score_fn(path), path, x0, grid, generator=gen(4))
    g, x = gen(4), x0.clone()
    for b in grid.noisy[1:]:
        for _ in range(2):
            z = torch.randn(x.shape, generator=g, dtype=D)
            delta = 2 * (0.3 * b.std) ** 2  # VE: r = 1
            x = x + delta * gm.score(x, torch.full((8,), b.t, dtype=D), path) + (2 * delta) ** 0.5 * z
    x = gm.denoise(x, torch.full((8,), grid.noisy[-1].t, dtype=D), path)
    torch.testing.assert_close(out.x, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,options", [c for c in CASES if sgm.samplers.solver(c[0], **c[1]).evals_per_step],
                         ids=[i for c, i in zip(CASES, IDS) if sgm.samplers.solver(c[0], **c[1]).evals_per_step])
def test_an_nfe_budget_takes_the_most_noise_levels_that_fit(name, options):
    """``sample(nfe=N)`` spends at most N evaluations, and one more noise level would not fit (on VP and from the
    exact top of rectified flow, where a step from pure noise may cost less)."""
    gm = mixture()
    solver = sgm.samplers.solver(name, **options)
    for path in (sgm.VPSDE(), sgm.RectifiedFlow()):
        t_max = 0.99 if "positive_alpha" in solver.needs and isinstance(path, sgm.RectifiedFlow) else None
        # the sampler's default grid, on rectified flow one whose first node is the exact top (not flow's)
        spacing = sgm.samplers.entry(name).default_spacing(path)
        spacing = "uniform" if spacing == "flow" else spacing
        for nfe in (solver.nfe(2), 10, 21):
            out = sgm.sample(gm.prediction_fn(path), path, (4, 2), name, nfe=nfe, t_max=t_max, dtype=D,
                             spacing=spacing, **options)
            grid = sgm.samplers.budget_grid(solver, path, nfe, spacing, t_max=t_max)
            more = time_grid(path, len(grid.noisy) + 1, spacing, t_max=t_max)
            assert out.nfe == solver.grid_nfe(grid) <= nfe < solver.grid_nfe(more)
    with pytest.raises(ValueError, match="below the fewest evaluations"):
        sgm.sample(gm.score_fn(sgm.VPSDE()), sgm.VPSDE(), (4, 2), name, nfe=solver.nfe(2) - 1, **options)
    with pytest.raises(ValueError, match="not both"):
        sgm.sample(gm.score_fn(sgm.VPSDE()), sgm.VPSDE(), (4, 2), name, nfe=10, steps=5, **options)
