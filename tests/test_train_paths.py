"""``sgm train --path NAME`` on every path the library names: each trains, its checkpoint records the path with
every parameter (so does its ``sgm export``), ``sgm sample`` samples on that path, and a resume on another path is
refused by name."""
import json

import numpy as np
import pytest

import sgm

from sgm.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from sgm.cli import main
from sgm.config import PATHS, TrainConfig, make_path

TINY = ["--steps", "3", "--width", "8", "--depth", "1", "--batch-size", "16", "--n-data", "64", "--no-progress",
        "--sample-every", "1000", "--n-samples", "4", "--sample-steps", "3", "--warmup", "0"]

RUNS = [(name, [], "edm") for name in PATHS] + [("rectified-flow", ["--shift", "3"], "velocity"),
                                                ("rectified-flow", [], "x0"), ("cosine", [], "v")]


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name,extra,prediction", RUNS)
def test_every_path_trains_and_samples_from_its_checkpoint(name, extra, prediction, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["train", "--path", name, "--prediction", prediction, "--out-dir", str(out)] + extra + TINY,
                       capsys)
    assert code == 0, err
    args = {"shift": 3.0} if extra else {}
    expected = make_path(name, args)
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["path"] == {"name": name, "params": dict(expected.params())}
    model, config, _ = model_from_checkpoint(str(out / "checkpoint.pt"))
    assert model.sde == expected and config.prediction == prediction and model.predicts in ("x0", "velocity", "v")
    losses = np.loadtxt(out / "loss.csv", delimiter=",", skiprows=1, usecols=1, ndmin=1)
    assert len(losses) == 3 and np.isfinite(losses).all()
    code, printed, err = run(["sample", str(out / "checkpoint.pt"), "--sampler", "ddim", "--steps", "3", "--n", "5",
                              "--no-progress", "--out", str(tmp_path / "s.npz")], capsys)
    assert code == 0, err
    assert f"on {expected!r}" in printed, printed
    x = np.load(tmp_path / "s.npz")["samples"]
    assert x.shape == (5, 2) and np.isfinite(x).all()


@pytest.mark.parametrize("second", [["--path", "vp"], ["--shift", "2"], ["--path", "edm"]])
def test_a_resume_on_another_path_is_refused_by_name(second, tmp_path, capsys):
    out = str(tmp_path / "run")
    first = ["train", "--path", "rectified-flow", "--prediction", "velocity", "--shift", "3", "--out-dir", out]
    assert run(first + TINY, capsys)[0] == 0
    code, _, err = run(["train", "--out-dir", out, "--steps", "4", "--no-progress"] + second, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "RectifiedFlow(shift=3.0)" in err and "--path rectified-flow" in err, err
    now = "VPSDE(" if "vp" in second else "EDMPath(" if "edm" in second else "RectifiedFlow(shift=2.0)"
    assert now in err, err
    assert run(["train", "--out-dir", out, "--steps", "4", "--no-progress"], capsys)[0] == 0  # the same path resumes


def test_a_checkpoint_whose_recorded_path_differs_from_its_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "--path", "ve", "--out-dir", str(out)] + TINY, capsys)[0] == 0
    state = load_checkpoint(str(out / "checkpoint.pt"))
    state["path"]["params"]["sigma_max"] = 80.0  # as if the library's default had changed since
    save_checkpoint(str(out / "checkpoint.pt"), state)
    with pytest.raises(CheckpointError, match="sigma_max.*80.0"):
        model_from_checkpoint(str(out / "checkpoint.pt"))


def test_an_export_records_the_path_and_is_checked_like_its_checkpoint(tmp_path, capsys):
    """``sgm export`` writes the checkpoint's path record into the safetensors metadata; a file whose record
    differs from the path its config builds is refused by name, as a checkpoint is."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out, shared = tmp_path / "run", str(tmp_path / "model.safetensors")
    assert run(["train", "--path", "rectified-flow", "--prediction", "velocity", "--shift", "3", "--out-dir", str(out)]
               + TINY, capsys)[0] == 0
    assert run(["export", str(out / "checkpoint.pt"), shared], capsys)[0] == 0
    with safe_open(shared, framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["path"]) == load_checkpoint(str(out / "checkpoint.pt"))["path"] == \
        {"name": "rectified-flow", "params": {"shift": 3.0}}
    assert model_from_checkpoint(shared).model.sde == sgm.RectifiedFlow(3.0)
    metadata["path"] = json.dumps({"name": "rectified-flow", "params": {"shift": 1.0}})
    save_file(load_file(shared), shared, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"model.safetensors: trained on the path .*shift.*1.0"):
        model_from_checkpoint(shared)


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_a_prediction_undefined_at_the_top_of_rectified_flow_is_refused_before_training(prediction):
    """At ``t = 1`` of rectified flow ``α = 0``: ε or a score says nothing of x̂_0, so no sampler could start there."""
    with pytest.raises(ValueError, match=f"prediction '{prediction}'.*rectified-flow"):
        TrainConfig(sde="rectified-flow", prediction=prediction).validate()
    TrainConfig(sde="vp", prediction=prediction).validate()


def test_path_is_a_spelling_of_sde(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sde {vp,subvp,ve,cosine,edm,rectified-flow}, --path {vp,subvp,ve,cosine,edm,rectified-flow}" in text
