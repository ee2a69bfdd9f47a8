"""Figures a user reads: the demo names its SDE and floor and has axes; a 2-D sample scatter overlays the data
and keeps every point in the frame; a diverged sampler does not squash the benchmark curves."""
import matplotlib.pyplot as plt
import pytest
import torch

import sgm
from sgm import plotting


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plotting, "_save", lambda fig, path: (kept.append(fig), path)[1])
    yield kept
    for fig in kept:
        plt.close(fig)


def test_sample_scatter_overlays_the_data_and_clips_nothing(figures):
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    x[0] = torch.tensor([9.0, -7.0])  # a stray sample far from the rest
    data = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    plotting.save_samples(x, "s.png", "title", reference=data)
    ax = figures[0].axes[0]
    assert len(ax.collections) == 2 and [t.get_text() for t in ax.get_legend().get_texts()] == ["data", "samples"]
    lo, hi = ax.get_xlim()
    assert lo < -9 and hi > 9 and ax.get_ylim()[0] < -7
    assert ax.get_xticks().size > 0 and ax.get_xlabel()


def test_a_diverged_sampler_is_clipped_and_marked(figures):
    rows = [{"sampler": name, "nfe": nfe, "sw2": value} for name, scale in (("good", 1.0), ("also good", 2.0))
            for nfe, value in ((10, 0.3 * scale), (100, 0.1 * scale))] + [
        {"sampler": "bad", "nfe": 10, "sw2": 1e6}, {"sampler": "bad", "nfe": 100, "sw2": 0.5}]
    plotting.nfe_curves(rows, "sw2", "c.png", floor=0.05)
    ax = figures[0].axes[0]
    assert ax.get_ylim()[1] < 1e3  # the good curves are not squashed into the bottom of a 1e6 axis
    assert "bad (clipped)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_demo_figure_names_the_sde_and_the_floor(figures, capsys, tmp_path, monkeypatch):
    """Every sampler's panel, each at most 10 steps: the figure's names and axes do not depend on the steps (the
    demo's runs read the registry: test_solver_contract.py::test_adding_a_solver_is_one_module_and_one_entry), and
    the registry's steps made this one test 16 s."""
    from sgm import cli
    from sgm.cli import main

    runs = cli.demo_runs
    monkeypatch.setattr(cli, "demo_runs", lambda forward: {name: {**run, "steps": min(run["steps"], 10)}
                                                           for name, run in runs(forward).items()})
    assert main(["demo", "--sde", "ve", "--n", "50", "--out", str(tmp_path / "d.png")]) == 0
    fig = figures[0]
    assert "VE SDE" in fig._suptitle.get_text() and "floor" in fig._suptitle.get_text()
    assert "SW₂ floor" in fig.axes[0].get_title() and fig.axes[1].get_xticks().size > 0
    out = capsys.readouterr().out
    assert "SW2 floor" in out and all(f"\n{name}, " in out for name in runs(sgm.VESDE()))  # a row per sampler
