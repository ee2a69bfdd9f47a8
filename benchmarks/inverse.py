"""Linear inverse problems on exact posteriors: each method's distance to p(x_0 | y) against NFE.

The prior is a Gaussian mixture, so the posterior under ``y = A x_0 + σ_y n`` is a mixture in closed form
(``GaussianMixture.linear_posterior``). For each problem and method (the exact posterior score as the control,
Song et al.'s replacement, ΠGDM, DPS), ancestral sampling on the VP SDE at each NFE; printed per run:
the mode-weight error Σ_k |n_k/n - n'_k/n| (each sample to its most responsible posterior component, against the
same count n'_k in a posterior sample, so that overlapping modes cost nothing), the error of the mean
‖E x - E_post x‖, and SW₂ to a posterior sample; each beside its Monte-Carlo floor (two posterior samples).

    python benchmarks/inverse.py [--n 4000] [--nfe 25 50 100 200 400] [--sampler ancestral]

``--random K`` instead draws K problems no test uses (seeded): a random mixture in 2–4 dimensions, a random
observation (inpainting of random coordinates, or a random ``A`` with fewer rows than dimensions), ``σ_y`` from
{0.05, 0.1, 0.3}, ``y`` from a prior draw; each method at the largest ``--nfe``; printed per problem, then each
method's median and worst mode-weight error over the problems:

    python benchmarks/inverse.py --random 12 --n 2000 --nfe 400
"""
from __future__ import annotations

import argparse

import torch

import sgm
from sgm import metrics
from sgm.samplers import SamplerDiverged
from sgm.inverse import LinearObservation, colourisation, denoising, inpainting, posterior_score, replacement, \
    super_resolution

D = torch.float64


def problems():
    """name -> (prior, observation): the 2-D inpainting case of tests/test_inverse.py, then 4-D images."""
    gm2 = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    yield "inpaint 2-D (x2 = 0.5)", gm2, LinearObservation(inpainting(torch.tensor([False, True])), [0.5], 0.1)
    gm4 = sgm.random_mixture(4, k=4, spread=1.5, seed=1)
    x0 = gm4.sample(1, generator=torch.Generator().manual_seed(0))[0]
    for name, A, shape, sigma_y in (("colourise (2,1,2)", colourisation((2, 1, 2)), (2, 1, 2), 0.1),
                                    ("super-res x2 (1,2,2)", super_resolution((1, 2, 2), 2), (1, 2, 2), 0.1),
                                    ("denoise (4,)", denoising(4), (4,), 0.5)):
        A = A.to(D)
        y = A @ x0 + sigma_y * torch.randn(A.shape[0], generator=torch.Generator().manual_seed(1), dtype=D)
        yield name, gm4, LinearObservation(A, y, sigma_y, shape)


def random_problems(count: int):
    """``count`` seeded problems: (name, prior, observation) with the prior and observation drawn as the docstring
    says."""
    for seed in range(count):
        g = torch.Generator().manual_seed(1000 + seed)
        dim = int(torch.randint(2, 5, (1,), generator=g))
        prior = sgm.random_mixture(dim, k=int(torch.randint(3, 5, (1,), generator=g)), spread=1.5, seed=100 + seed)
        sigma_y = (0.05, 0.1, 0.3)[int(torch.randint(0, 3, (1,), generator=g))]
        rows = int(torch.randint(1, dim, (1,), generator=g))
        if seed % 2:
            A, kind = torch.randn(rows, dim, generator=g, dtype=D) / dim**0.5, f"random A {rows}x{dim}"
        else:
            keep = torch.zeros(dim, dtype=torch.bool)
            keep[torch.randperm(dim, generator=g)[:rows]] = True
            A, kind = inpainting(keep).to(D), f"inpaint {rows} of {dim}"
        x0 = prior.sample(1, generator=g)[0]
        y = A @ x0 + sigma_y * torch.randn(rows, generator=g, dtype=D)
        yield f"#{seed} {kind}, sigma_y {sigma_y}", prior, LinearObservation(A, y, sigma_y)


def mode_frequencies(x, post):
    comp = post.responsibilities(x).argmax(1)
    return torch.bincount(comp, minlength=post.n_components).to(D) / len(x)


def distances(x, post, ref):
    """(mode-weight error, mean error, SW₂) of ``x`` against the posterior sample ``ref``."""
    flat = x.reshape(x.shape[0], -1)
    weight_err = float((mode_frequencies(flat, post) - mode_frequencies(ref, post)).abs().sum())
    mean_err = float((flat.mean(0) - post.moments()[0]).norm())
    sw = metrics.sliced_wasserstein(flat, ref, n_projections=200, generator=torch.Generator().manual_seed(3))
    return weight_err, mean_err, sw


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--sampler", default="ancestral")
    parser.add_argument("--random", type=int, default=0, help="draw this many random problems instead")
    args = parser.parse_args()
    sde = sgm.VPSDE()
    nfes = [max(args.nfe)] if args.random else args.nfe
    errors: dict[str, list[float]] = {}
    for name, prior, obs in (random_problems(args.random) if args.random else problems()):
        post = prior.linear_posterior(obs.A, obs.y, obs.sigma_y)
        ref = post.sample(args.n, generator=torch.Generator().manual_seed(9))
        floor = distances(post.sample(args.n, generator=torch.Generator().manual_seed(7)), post, ref)
        print(f"\n{name}: posterior weights {[round(w, 3) for w in post.weights.tolist()]}; Monte-Carlo floor: "
              f"weights {floor[0]:.4f}  mean {floor[1]:.4f}  SW2 {floor[2]:.4f}", flush=True)
        shape = (args.n, *obs.event_shape)
        exact = post.score_fn(sde)
        methods = {
            "exact": (lambda x, t: exact(x.reshape(x.shape[0], -1), t).reshape(x.shape), None),
            "replacement": (lambda x, t: prior.score(x, t, sde), "callback"),
            "pigdm": (posterior_score(prior.score_fn(sde), sde, obs, "pigdm"), None),
            "dps": (posterior_score(prior.score_fn(sde), sde, obs, "dps"), None),
        }
        for method, (score, how) in methods.items():
            for nfe in nfes:
                g = torch.Generator().manual_seed(1)
                callback = replacement(obs, torch.Generator().manual_seed(2)) if how else None
                try:
                    out = sgm.sample(score, sde, shape, sampler=args.sampler, steps=nfe, generator=g, dtype=D,
                                     callback=callback)
                except SamplerDiverged as err:
                    print(f"  {method:<12} NFE {nfe:>4}  diverged ({err})", flush=True)
                    errors.setdefault(method, []).append(float("inf"))
                    continue
                w, m, sw = distances(out.x, post, ref)
                errors.setdefault(method, []).append(w)
                print(f"  {method:<12} NFE {out.nfe:>4}  weights {w:.4f}  mean {m:.4f}  SW2 {sw:.4f}", flush=True)
    if args.random:
        print("\nmode-weight error over the problems (median, worst):")
        for method, values in errors.items():
            print(f"  {method:<12} {torch.tensor(values).median():.3f}  {max(values):.3f}")


if __name__ == "__main__":
    main()
