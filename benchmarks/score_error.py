"""Why the deterministic samplers scatter samples on a trained model, measured against the exact score.

Trains an MLP (the toy benchmark's settings: batch 512, lr 2e-3, EMA 0.995) on 20 000 points of a 3-mode 2-D
mixture whose score is exact at every t (weights 0.5/0.3/0.2, stds 0.2/0.3/0.26), once per ``--predictions``
(default: ``eps`` and ``edm``), and for each reports:

1. SW₂ against fresh data (floor: data against data) of Euler–Maruyama (300 steps), DDIM and the probability-flow
   ODE (Heun, 100 steps), from the same model and noise, and the share of samples > 1.5 from every mode;
2. the relative error ‖s_θ - ∇log p_t‖/‖∇log p_t‖ on samples of p_t, by t;
3. the ODE with the learned score on one range of t and the exact score elsewhere (which range's error matters);
4. the error along the learned ODE's own trajectories, for those that end > 0.8 from every mode and the rest;
5. |ε̂| against the exact |ε| on circles of radius r at t = 0.1 and 0.3 (the far field).

    OMP_NUM_THREADS=1 python benchmarks/score_error.py [--steps 3000] [--width 256] [--depth 4]
"""
from __future__ import annotations

import argparse
import os

import torch

import sgm
from sgm import metrics
from sgm.train import TrainConfig, Trainer, build_model

MIXTURE = dict(means=[[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], stds=[0.2, 0.3, 0.26], weights=[0.5, 0.3, 0.2])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--predictions", default="eps,edm")
    parser.add_argument("--out", default="runs/score_error")
    args = parser.parse_args()
    target = sgm.GaussianMixture(MIXTURE["means"], MIXTURE["stds"], MIXTURE["weights"], dtype=torch.float32)
    data = target.sample(20_000, generator=torch.Generator().manual_seed(0))
    fresh = target.sample(args.n, generator=torch.Generator().manual_seed(5))

    def sw2(x):
        return metrics.sliced_wasserstein(x, fresh, 512, torch.Generator().manual_seed(0))

    print(f"floor {sw2(target.sample(args.n, generator=torch.Generator().manual_seed(6))):.3f}")
    for prediction in args.predictions.split(","):
        edm = prediction == "edm"
        config = TrainConfig(data="moons", steps=args.steps, batch_size=512, lr=2e-3, warmup=200, ema_decay=0.995,
                             prediction=prediction, weighting="edm" if edm else "std2", sigma_data=1.0,
                             width=args.width, depth=args.depth, checkpoint_every=args.steps, sample_every=10**9,
                             out_dir=os.path.join(args.out, prediction), progress=False)
        trainer = Trainer(config, data=data)  # config.data is unused: the mixture's points are given
        trainer.fit()
        model, sde, exact = build_model(trainer.ema.model, config), trainer.sde, target.score_fn(trainer.sde)

        def draw(score, sampler, steps, **options):
            with torch.no_grad():
                return sgm.sample(score, sde, (args.n, 2), sampler=sampler, steps=steps, dtype=torch.float32,
                                  generator=torch.Generator().manual_seed(1), **options).x

        print(f"\n{prediction} network {args.width}×{args.depth}, {args.steps} steps")
        for sampler, steps, options in (("euler_maruyama", 300, {}), ("ddim", 100, {}),
                                        ("ode", 100, {"method": "heun2"})):
            x = draw(model, sampler, steps, **options)
            far = (x[:, None] - target.means[None]).norm(dim=-1).min(1).values > 1.5
            print(f"  {sampler:<15}{steps:>4} steps  SW2 {sw2(x):.3f}  "
                  f"> 1.5 from every mode {float(far.float().mean()):.2%}")
        with torch.no_grad():
            print("  relative score error on p_t:", end="")
            for t in (0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 1.0):
                tt = torch.full((args.n,), t)
                a, s = sde.marginal(tt)
                noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(1))
                xt = a[:, None] * fresh + s[:, None] * noise
                e, m = exact(xt, tt), model(xt, tt)
                relative = float((m - e).norm(dim=1).pow(2).mean().sqrt() / e.norm(dim=1).pow(2).mean().sqrt())
                print(f"  t={t}: {relative:.3f}", end="")
            print()
            for lo, hi in ((0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 2), (0, 0.2), (0.2, 2)):
                def mixed(x, t, lo=lo, hi=hi):
                    return torch.where(((t >= lo) & (t < hi))[:, None], model(x, t), exact(x, t))
                print(f"  ODE, learned score on t in [{lo}, {min(hi, 1)}], exact elsewhere: "
                      f"SW2 {sw2(draw(mixed, 'ode', 100, method='heun2')):.3f}")
            path = {}

            def recorded(x, t):
                s = model(x, t)
                path.setdefault(float(t[0]), (s, exact(x, t)))  # the first evaluation at each time
                return s
            x = draw(recorded, "ode", 100, method="heun2")
            stray = (x[:, None] - target.means[None]).norm(dim=-1).min(1).values > 0.8
            print(f"  along the ODE's trajectories ({float(stray.float().mean()):.1%} end > 0.8 from every mode), "
                  f"relative score error, stray / rest:")
            for t in sorted(path, reverse=True)[::10]:
                m, e = path[t]
                rel = [float((m[k] - e[k]).norm(dim=1).pow(2).mean().sqrt() / e[k].norm(dim=1).pow(2).mean().sqrt())
                       for k in (stray, ~stray)]
                print(f"    t={t:.3f}: {rel[0]:.3f} / {rel[1]:.3f}")
            angle = torch.linspace(0, 2 * torch.pi, 64)
            for t in (0.1, 0.3):
                row = []
                for r in (2, 4, 6, 10):
                    xr, tt = r * torch.stack([angle.cos(), angle.sin()], 1), torch.full((64,), t)
                    std = sde.marginal(tt)[1][:, None]
                    row.append(f"|x|={r}: {float((std * exact(xr, tt)).norm(dim=1).mean()):.1f} vs "
                               f"{float((std * model(xr, tt)).norm(dim=1).mean()):.1f}")
                print(f"  far field t={t}, exact |ε| vs the model's: " + ", ".join(row))


if __name__ == "__main__":
    main()
