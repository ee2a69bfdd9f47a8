"""Class-conditional training end to end: labels through the trainer, the checkpoint's class count, a model that
samples the asked class, classifier-free guidance from the command line, and clear errors."""
import pytest
import torch

import sgm
from sgm.cli import main
from sgm.train import TrainConfig, Trainer, model_from_checkpoint


def two_classes(n=2048):
    """Class 0 around (-2, 0), class 1 around (2, 0), sd 0.3: a sample on the wrong side is a wrong class."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([4.0 * y - 2, torch.zeros(n)], 1) + 0.3 * torch.randn(n, 2, generator=g)
    return x, y


def config(out_dir, **kw):
    base = dict(data="moons", width=32, depth=1, batch_size=64, steps=150, checkpoint_every=150, sample_every=1000,
                n_samples=8, sample_steps=4, warmup=20, lr=2e-3, ema_decay=0.9, out_dir=str(out_dir), progress=False,
                conditional=True, label_dropout=0.2)
    base.update(kw)
    return TrainConfig(**base)


def test_conditional_model_samples_the_asked_class(tmp_path):
    x, y = two_classes()
    Trainer(config(tmp_path), data=x, labels=y).fit()
    model, cfg, shape = model_from_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert cfg.n_classes == model.n_classes == 2 and cfg.conditional
    g = torch.Generator().manual_seed(1)
    for c, sign in ((0, -1), (1, 1)):
        for score in (model.conditional(c), sgm.guidance.classifier_free(model, c, 2.0)):
            out = sgm.sample(score, model.sde, (400, 2), sampler="ddim", steps=20, generator=g).x
            # 150 steps of a small MLP: the class must be right for more than 90% of samples.
            assert float((torch.sign(out[:, 0]) == sign).double().mean()) > 0.9
    # the unconditional ("no label") model, trained on 20% of the batches, covers both classes
    out = sgm.sample(model, model.sde, (400, 2), sampler="ddim", steps=20, generator=g).x
    assert 0.25 < float((out[:, 0] > 0).double().mean()) < 0.75

    assert main(["sample", str(tmp_path / "checkpoint.pt"), "--sampler", "ddim", "--label", "1", "--guidance", "2",
                 "--n", "8", "--steps", "4", "--out", str(tmp_path / "g.png"), "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "g.png").exists()


def test_bad_labels_and_conditioning(tmp_path, capsys):
    with pytest.raises(ValueError, match="'moons' has no class labels"):
        Trainer(config(tmp_path / "a"))
    with pytest.raises(ValueError, match="label_dropout must lie in"):
        Trainer(config(tmp_path / "b", label_dropout=1.0), data=two_classes()[0], labels=two_classes()[1])
    with pytest.raises(ValueError, match="labels given to an unconditional run"):
        Trainer(config(tmp_path / "c", conditional=False), data=two_classes()[0], labels=two_classes()[1])
    with pytest.raises(ValueError, match=r"labels must be non-negative integers of shape \(2048,\)"):
        Trainer(config(tmp_path / "d"), data=two_classes()[0], labels=two_classes()[1][:10])
    x, y = two_classes(256)
    Trainer(config(tmp_path / "e", steps=2, checkpoint_every=2), data=x, labels=y).fit()
    Trainer(config(tmp_path / "f", steps=2, checkpoint_every=2, conditional=False), data=x).fit()
    args = ["--n", "4", "--sampler", "ddim", "--steps", "2", "--no-progress", "--device", "cpu", "--out",
            str(tmp_path / "x.png")]
    assert main(["sample", str(tmp_path / "e" / "checkpoint.pt"), "--label", "2"] + args) == 2
    assert "--label must lie in [0, 1], got 2" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "f" / "checkpoint.pt"), "--label", "0"] + args) == 2
    assert "the checkpoint's model is unconditional" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "e" / "checkpoint.pt"), "--guidance", "1.0"] + args) == 2
    assert "--guidance needs --label" in capsys.readouterr().err
