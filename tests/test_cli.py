"""The ``sgm`` command as a new user meets it: every expected failure is one line naming the argument, exit 2;
outputs go where ``--out`` says; help shows defaults and choices."""
import numpy as np
import pytest
import torch

import sgm
from sgm.cli import main


def run(argv, capsys):
    """``main(argv)``'s exit status and stderr, whether the error came from argparse (SystemExit) or a command."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "8gaussians", "--steps", "2", "--width", "8", "--depth", "1", "--batch-size", "16",
                 "--n-data", "64", "--out-dir", str(out), "--sample-every", "1000", "--no-progress"]) == 0
    return str(out / "checkpoint.pt")


def foreign_files(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save(7, tmp_path / "int.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    return {"missing": str(tmp_path / "none.pt"), "tensor": str(tmp_path / "tensor.pt"),
            "int": str(tmp_path / "int.pt"), "text": str(tmp_path / "text.pt")}


def test_foreign_or_missing_checkpoints_are_one_line(tmp_path, capsys):
    for kind, path in foreign_files(tmp_path).items():
        code, err = run(["sample", path, "--out", str(tmp_path / "s.png"), "--no-progress"], capsys)
        assert code == 2, kind
        assert err.count("\n") == 1 and "Traceback" not in err and path in err, (kind, err)
        assert err.startswith("sgm sample: error: "), err


@pytest.mark.parametrize("args,named", [
    (["--option", "foo"], "--option"), (["--option", "=1"], "--option"), (["--device", "gpu"], "--device"),
    (["--device", "cpu:7"], "--device"), (["--device", "cuda:99"], "--device"), (["--n", "0"], "--n"),
    (["--show", "0"], "--show"), (["--steps", "0"], "--steps"), (["--n", "two"], "--n"),
    (["--out", "x.txt"], "--out"), (["--option", "bogus=1"], "bogus"),
])
def test_bad_sample_arguments_are_one_line_naming_the_argument(args, named, checkpoint, tmp_path, capsys):
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "s.png")]
    code, err = run(["sample", checkpoint, "--steps", "2", "--n", "4", "--no-progress"] + args, capsys)
    assert code == 2 and "Traceback" not in err and named in err, err
    assert err.count("\n") == 1, err


def test_sample_out_makes_its_folder_and_honours_the_extension(checkpoint, tmp_path, capsys):
    base = ["sample", checkpoint, "--steps", "2", "--n", "5", "--no-progress", "--sampler", "ddim"]
    assert main(base + ["--out", str(tmp_path / "new" / "deeper" / "s.png")]) == 0
    assert {p.name for p in (tmp_path / "new" / "deeper").iterdir()} == {"s.png", "s.pt", "s.npz"}
    assert main(base + ["--out", str(tmp_path / "only" / "x.npz")]) == 0
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["x.npz"]
    assert np.load(tmp_path / "only" / "x.npz")["samples"].shape == (5, 2)
    assert main(base + ["--out", str(tmp_path / "bare" / "samples")]) == 0
    assert {p.name for p in (tmp_path / "bare").iterdir()} == {"samples.png", "samples.pt", "samples.npz"}
    assert torch.load(tmp_path / "bare" / "samples.pt").shape == (5, 2)


def documented_failures(checkpoint, tmp):
    """``(argv, what the one line must name)`` for every command: each documented failure (a bad argument, a missing
    or foreign file, a refused setting, data that cannot be used, an output that cannot be written)."""
    nan = tmp / "nan.npz"
    bad = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    bad[2, 0, 1, 1] = np.nan
    np.savez(nan, samples=bad)
    np.savez(tmp / "ok.npz", samples=np.random.default_rng(1).random((4, 3, 8, 8)).astype(np.float32))
    np.savez(tmp / "bytes.npz", samples=255 * np.random.default_rng(1).random((4, 3, 8, 8)).astype(np.float32))
    train = ["train", "--steps", "1", "--width", "8", "--depth", "1", "--batch-size", "8", "--n-data", "32",
             "--no-progress", "--out-dir", str(tmp / "r")]
    sample = ["sample", checkpoint, "--sampler", "ddim", "--steps", "2", "--n", "4", "--no-progress", "--out",
              str(tmp / "s.png")]
    unwritable = "/proc/sgm-test/s.png"
    return [
        (["demo", "--sde", "cld"], "--sde"), (["demo", "--n", "0"], "--n"), (["demo", "--out", "d.txt"], "--out"),
        (["demo", "--out", unwritable], "--out"),
        (train + ["--device", "gpu"], "--device"), (train + ["--sde", "cld"], "--sde"),
        (train + ["--data", "cifar"], "--data"), (train + ["--steps", "0"], "--steps"),
        (train + ["--sigma-max", "10"], "--sigma-max"), (train + ["--dropout", "1.5"], "--dropout must lie in [0, 1)"),
        (train + ["--data", "mnist", "--data-path", str(tmp / "nowhere")], "nowhere"),
        (train + ["--image-size", "8"], "--image-size"), (train + ["--attn-levels", "5"], "--attn-levels"),
        (train + ["--channel-mult", "1,x"], "--channel-mult"), (train + ["--ema-stds", "0.5"], "--ema-stds"),
        (train + ["--lr-schedule", "step"], "--lr-schedule"),
        (train + ["--grad-accumulation", "3"], "grad_accumulation"),
        (train + ["--data-path", str(tmp)], "--data-path"), (train + ["--precision", "fp8"], "--precision"),
        (sample + ["--option", "eta=abc"], "eta"), (sample + ["--sampler", "ode"], "--steps 2: sampler 'ode'"),
        (sample + ["--sampler", "dpm_solver", "--option", "order=2.0"], "order"),
        (sample + ["--option", "variance=analytic"], "variance=analytic"),
        (sample + ["--sampler", "pc", "--option", "corrector=0"], "corrector"), (sample + ["--label", "1"], "--label"),
        (sample + ["--guidance", "2"], "--guidance"), (sample[:-1] + [unwritable], "--out"),
        (["sample", str(tmp / "none.pt")], "none.pt"),
        (["export", str(tmp / "none.pt"), str(tmp / "x.safetensors")], "none.pt"),
        (["export", checkpoint, str(tmp / "x.pt")], ".safetensors"),
        (["export", checkpoint, str(tmp / "x.safetensors"), "--ema-std", "0.1"], "snapshot"),
        (["export", checkpoint, str(tmp / "x.safetensors"), "--ema-step", "3"], "ema_step needs ema_std"),
        (["eval", str(nan), str(tmp / "ok.npz")], "the first is nan at index (2, 0, 1, 1)"),
        (["eval", str(tmp / "bytes.npz"), str(tmp / "ok.npz")], "--value-range"),
        (["eval", str(tmp / "none"), str(tmp / "ok.npz")], "none"),
        (["eval", str(tmp / "ok.npz"), str(tmp / "ok.npz"), "--inception", str(tmp / "none.pth")], "none.pth"),
        (["bench", "--n", "0", "--quick"], "--n"),
        (["bench", "--quick", "--checkpoint", str(tmp / "none.pt")], "none.pt"),
    ]


def test_every_command_fails_in_one_line_with_status_2(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sgm.bench.sweep.run_sweep", lambda *a, **k: pytest.fail("the sweep started"))
    monkeypatch.setattr("sgm.cli.sample", lambda *a, **k: pytest.fail("sampling started"))
    for argv, named in documented_failures(checkpoint, tmp_path):
        code, err = run(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert named in err and err.startswith(f"sgm {argv[0]}: error: "), (argv, named, err)
    assert main(["train", "--steps", "1", "--width", "8", "--depth", "1", "--batch-size", "8", "--n-data", "32",
                 "--no-progress", "--out-dir", str(tmp_path / "r")]) == 0
    code, err = run(["train", "--seed", "3", "--steps", "3", "--out-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "seed 0 -> 3 cannot change on resume" in err and err.count("\n") == 1, err


def test_ve_sigma_max_weight_decay_and_eps_reach_the_config(tmp_path):
    out = tmp_path / "ve"
    assert main(["train", "--sde", "ve", "--sigma-max", "8", "--weight-decay", "0.01", "--eps", "0.001", "--steps", "1",
                 "--width", "8", "--depth", "1", "--batch-size", "8", "--n-data", "32", "--out-dir", str(out),
                 "--no-progress"]) == 0
    config = sgm.train.load_checkpoint(str(out / "checkpoint.pt"))["config"]
    assert config["sde_args"] == {"sigma_max": 8.0} and config["weight_decay"] == 0.01 and config["eps"] == 0.001


def test_bench_checks_its_checkpoint_before_the_sweep(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sgm.bench.sweep.run_sweep", lambda *a, **k: pytest.fail("the sweep started"))
    code, err = run(["bench", "--quick", "--checkpoint", checkpoint, "--out", str(tmp_path)], capsys)
    assert code == 2 and "digits" in err and checkpoint in err and err.count("\n") == 1, err
    code, err = run(["bench", "--quick", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "none.pt" in err, err


def test_help_shows_defaults_and_choices_and_version(capsys):
    for command, expected in (("train", ["{vp,subvp,ve,cosine,edm,rectified-flow}", "(default: vp)", "(default: edm)",
                                         "{auto,mlp,unet}", "{eps,score,x0,v,velocity,edm}", "--sigma-max",
                                         "--weight-decay", "--eps", "--sigma-data"]),
                              ("sample", ["(default: ode)", "100 unless --nfe is given", "--nfe"]),
                              ("demo", ["(default: vp)"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        for piece in expected:
            assert piece in " ".join(text.split()), (command, piece)
        assert "``" not in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"sgm {sgm.__version__}"


def test_many_samples_go_to_the_shards_and_to_the_out_files(checkpoint, tmp_path):
    """``--n`` above ``--shard-size`` draws shards, and ``--out`` still gets every sample: the same ones a single
    batch draws (each sample has its own seeded stream)."""
    base = ["sample", checkpoint, "--sampler", "euler_maruyama", "--steps", "3", "--no-progress", "--n", "7"]
    assert main(base + ["--shard-size", "3", "--out", str(tmp_path / "big.npz")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz", "big_shards"]
    assert main(base + ["--out", str(tmp_path / "one.npz")]) == 0
    big, one = (np.load(tmp_path / f"{name}.npz")["samples"] for name in ("big", "one"))
    assert big.shape == (7, 2)
    np.testing.assert_array_equal(big, one)
    shards = np.concatenate([np.load(p)["samples"] for p in sorted((tmp_path / "big_shards").glob("*.npz"))])
    np.testing.assert_array_equal(big, shards)


def test_sample_takes_an_nfe_budget(checkpoint, tmp_path, capsys):
    """``sgm sample --nfe N`` spends the most noise levels that fit N evaluations (heun: 2·steps − 1, so 10 → 9);
    with --steps too it is one line naming both."""
    out = tmp_path / "s.pt"
    assert main(["sample", checkpoint, "--sampler", "heun", "--nfe", "10", "--n", "8", "--out", str(out),
                 "--no-progress"]) == 0
    assert "(9 NFE)" in capsys.readouterr().out and torch.load(out).shape == (8, 2)
    code, err = run(["sample", checkpoint, "--nfe", "10", "--steps", "5", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "--steps" in err and "--nfe" in err and err.count("\n") == 1, err
    code, err = run(["sample", checkpoint, "--nfe", "10", "--out", str(out), "--no-progress"], capsys)  # ode: dopri5
    assert code == 2 and "nfe is a budget for a fixed-step sampler" in err, err
