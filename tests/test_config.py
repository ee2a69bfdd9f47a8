"""The config in one place: its fields' metadata checks every value and generates every ``sgm train`` flag; the
path table holds every path; a run's config is never changed behind its owner's back; a resumed command-line run
keeps every saved setting the user did not give."""
import dataclasses

import pytest
import torch

import sgm
from sgm.checkpoint import load_checkpoint
from sgm.cli import build_parser, main
from sgm.config import ARCHITECTURE_KEYS, PATHS, RESUMABLE_KEYS, TrainConfig, make_path, path_parameters
from sgm.train import Trainer


def small(out_dir, **kw):
    base = dict(data="moons", n_data=64, width=8, depth=1, batch_size=16, steps=2, sample_every=1000,
                out_dir=str(out_dir), progress=False)
    return TrainConfig(**{**base, **kw})


def train_parser():
    return next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]


def test_every_field_has_its_generated_flag_and_every_flag_a_field():
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
    dests = {a.dest for a in train_parser()._actions if a.dest != "help"}
    assert {d for d in dests if not d.startswith("path_arg:")} == fields
    assert {d.split(":")[1] for d in dests if d.startswith("path_arg:")} == set(path_parameters())
    assert set(ARCHITECTURE_KEYS) | set(RESUMABLE_KEYS) <= {f.name for f in dataclasses.fields(TrainConfig)}
    # parsed values have the field's type; flags not given are absent (no argparse defaults)
    args = build_parser().parse_args(["train", "--channel-mult", "1,2", "--ema-stds", "0.05,0.1", "--no-progress",
                                      "--attn-levels", "", "--lr", "3e-4"])
    given = {k: v for k, v in vars(args).items() if k in fields}
    assert given == {"channel_mult": (1, 2), "ema_stds": (0.05, 0.1), "progress": False, "attn_levels": (), "lr": 3e-4}


def test_the_path_table_holds_every_path_with_its_parameters():
    assert set(PATHS) == {"vp", "subvp", "ve", "cosine", "edm", "rectified-flow"}
    for name, entry in PATHS.items():
        assert isinstance(make_path(name), entry.cls)
    assert make_path("ve", {"sigma_max": 8.0}).sigma_max == 8.0
    assert path_parameters()["beta_max"] == [("vp", 20.0), ("subvp", 20.0)]
    assert path_parameters()["sigma_max"] == [("ve", 50.0), ("edm", 80.0)]
    with pytest.raises(ValueError, match="the 'cosine' path takes no parameters, not beta_max"):
        make_path("cosine", {"beta_max": 1.0})
    # the cosine path trains: its name reaches the network and the checkpoint
    config = TrainConfig(data="moons", sde="cosine", n_data=64, width=8, depth=1, batch_size=16, steps=1,
                         out_dir="unused", progress=False)
    assert Trainer(config).sde.T == pytest.approx(0.9946)


@pytest.mark.parametrize("kw,message", [
    ({"dropout": 1.5}, r"dropout must lie in \[0, 1\), got 1.5"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"batch_size": 2.5}, "batch_size must be an int, got 2.5"),
    ({"attn_levels": (5,)}, r"attn_levels must lie in \[0, 2\] .*got \(5,\)"),
    ({"channel_mult": (1, 0)}, r"channel_mult must be >= 1 \(each entry of \(1, 0\)\), got 0"),
    ({"image_size": 16}, "image_size applies only to data='folder'"),
    ({"data_path": "/x"}, "data_path applies only to data in"),
    ({"ema_stds": (0.5,)}, r"ema_stds must lie in \(0, 0.28\]"),
    ({"snapshot_every": 10}, "snapshot_every needs ema_stds"),
    ({"batch_size": 10, "grad_accumulation": 4}, "batch_size must be a multiple of grad_accumulation=4"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of"), ({"precision": "fp8"}, "precision must be one of"),
    ({"min_lr": 1.0}, r"min_lr must lie in \[0, lr="), ({"sde_args": {"beta_max": 5.0}, "sde": "ve"}, "ve' path takes"),
    ({"eps": 0.999, "sde": "cosine"}, r"eps must lie in \(0, T=0.9946\)"), ({"progress": 1}, "progress must be True"),
])
def test_bad_values_are_named_with_the_accepted_range(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        small(tmp_path, **kw).validate()


def test_the_trainer_fills_in_its_own_config_and_leaves_the_callers(tmp_path):
    config = small(tmp_path, conditional=True)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 3
    trainer = Trainer(config, data=x, labels=y)
    assert (config.n_classes, config.sigma_data, config.data) == (0, None, "moons")
    assert (trainer.config.n_classes, trainer.config.data) == (3, "tensor")
    assert trainer.config.sigma_data == pytest.approx(float(x.std()), rel=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_classes = 4


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr()


def test_a_resumed_command_keeps_every_setting_it_was_not_given(tmp_path, capsys):
    out = str(tmp_path / "run")
    first = ["train", "--data", "moons", "--n-data", "64", "--width", "8", "--depth", "1", "--steps", "2",
             "--lr", "1e-3", "--batch-size", "32", "--ema-decay", "0.99", "--checkpoint-every", "7", "--sde", "ve",
             "--sigma-max", "8", "--no-progress", "--sample-every", "1000", "--out-dir", out]
    assert run(first, capsys)[0] == 0
    code, printed = run(["train", "--steps", "3", "--out-dir", out], capsys)
    assert code == 0 and "resuming" in printed.out
    assert [line for line in printed.out.splitlines() if "changed on resume" in line] == [
        "changed on resume: steps 2 -> 3 (applied from step 2; saved in the config)"]
    saved = load_checkpoint(f"{out}/checkpoint.pt")["config"]
    assert (saved["lr"], saved["batch_size"], saved["ema_decay"], saved["checkpoint_every"], saved["width"]) == (
        1e-3, 32, 0.99, 7, 8)
    assert saved["sde_args"] == {"sigma_max": 8.0} and saved["progress"] is False
    code, printed = run(["train", "--steps", "4", "--lr", "5e-4", "--sigma-min", "0.02", "--out-dir", out], capsys)
    assert code == 2 and printed.err.count("\n") == 1  # a path change: another run, both paths named
    assert "VESDE(sigma_min=0.01, sigma_max=8.0" in printed.err and "VESDE(sigma_min=0.02, sigma_max=8.0" in printed.err
    code, printed = run(["train", "--steps", "4", "--lr", "5e-4", "--out-dir", out], capsys)
    assert code == 0 and "changed on resume: lr 0.001 -> 0.0005" in printed.out
    assert load_checkpoint(f"{out}/checkpoint.pt")["config"]["batch_size"] == 32


def test_a_run_on_a_python_tensor_is_not_resumed_on_a_named_dataset(tmp_path, capsys):
    Trainer(small(tmp_path), data=sgm.data.toy_2d("moons", 64)).fit()
    code, printed = run(["train", "--steps", "3", "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "trained on a tensor given in Python" in printed.err and printed.err.count("\n") == 1
