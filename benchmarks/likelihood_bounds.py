"""Bits/dim on exact-score mixtures: the exact value, the probability-flow ODE, the DDPM bound (β, β̃, analytic)
and the continuous-time bound, with score evaluations (NFE) per point and seconds; and a figure of the DDPM bound
per timestep (where the nats are spent). The numbers behind docs/likelihood.md.

Targets: the 8-mode ring (2-D) as continuous data; the same ring scaled into [-1, 1] and quantised to 8 bits
(Ho et al.'s discretised decoder; exact bin masses from the mixture's normal CDFs); a 16-D random mixture.
The model is the exact score (on the DDPM chain: the exact ε of each chain timestep). bits/dim is
``nats/(d log 2)`` of the density (continuous data) or of the bin mass (8-bit data, ODE dequantised).

    python benchmarks/likelihood_bounds.py [--n 300] [--steps 1000] [--figure docs/likelihood_bounds.png]

``--sampling`` instead prints SW₂ to the 3-mode test mixture of ancestral (β̃, β, analytic) and DDIM (η = 0,
analytic) samples on 10, 20 and 50 trailing timesteps of the 1000-step chain, per seed (the numbers behind
tests/test_bounds.py's sampling test).

``--checkpoint runs/digits_cond/checkpoint.pt`` instead gives the rows (no exact value) for a trained digits model
(benchmarks/conditional_digits.py) on the digits it held out, and docs/likelihood_digits.png.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import sgm
from sgm.bounds import continuous_elbo, elbo, estimate_gamma
from sgm.likelihood import log_likelihood

D = torch.float64
EPS = 1e-5
LOG2 = math.log(2)


def bin_nll(gm: sgm.GaussianMixture, x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Exact ``-log P(bin of x)`` under a diagonal mixture (edge bins open-ended), per point."""
    half = 1.0 / (levels - 1)
    lo = torch.where(x <= -1 + half / 2, -math.inf, x - half)[:, None]
    hi = torch.where(x >= 1 - half / 2, math.inf, x + half)[:, None]
    m, s = gm.means[None], gm.stds[None]
    mass = (torch.special.ndtr((hi - m) / s) - torch.special.ndtr((lo - m) / s)).clamp_min(1e-300)
    return -torch.logsumexp(torch.log(mass).sum(-1) + torch.log(gm.weights), 1)


def targets(n: int, g: torch.Generator):
    ring = sgm.ring_mixture()
    small = sgm.GaussianMixture(ring.means / 5, ring.stds / 5, ring.weights)  # radius 0.8, width 0.06
    x8 = ((small.sample(n, generator=g).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    x_ring = ring.sample(n, generator=g)
    big = sgm.random_mixture(16)
    x16 = big.sample(n, generator=g)
    return [
        ("ring 2-D", ring, x_ring, "continuous", -ring.log_prob(x_ring)),
        ("ring 2-D, 8-bit", small, x8, "discrete", bin_nll(small, x8)),
        ("random 16-D", big, x16, "continuous", -big.log_prob(x16)),
    ]


def _row(rows, target, method, nats, d, nfe, seconds, exact=None):
    bpd = nats / (d * LOG2)
    gap = (nats - exact) / (d * LOG2) if exact is not None else torch.full_like(bpd, math.nan)
    rows.append((target, method, float(bpd.mean()), float(bpd.std() / math.sqrt(bpd.numel())),
                 float(gap.mean()), float(gap.std() / math.sqrt(gap.numel())), nfe, seconds))


def run(n: int, steps: int, figure: str | None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows, per_timestep = [], {}
    vp = sgm.VPSDE()
    chain = vp.discretize(steps)
    for name, gm, x, decoder, exact in targets(n, g):
        d = x.shape[1]
        print(f"# {name}", flush=True)
        _row(rows, name, "exact", exact, d, 0, 0.0, exact)
        # probability-flow ODE on the VP SDE (8-bit: uniformly dequantised, then the bin's log-volume)
        t0 = time.perf_counter()
        xd = x + (torch.rand(x.shape, generator=g, dtype=D) - 0.5) * (2 / 255) if decoder == "discrete" else x
        out = log_likelihood(gm.score_fn(vp), vp, xd, eps=EPS, rtol=1e-5, atol=1e-5)
        nats = -out.logp - (d * math.log(2 / 255) if decoder == "discrete" else 0.0)
        _row(rows, name, "probability-flow ODE (VP)", nats, d, out.nfe, time.perf_counter() - t0, exact)
        # DDPM bound on the chain, exact chain ε
        model = gm.chain_score_fn(chain)
        t0 = time.perf_counter()
        gamma = estimate_gamma(model, chain, gm.sample(1000, generator=g).clamp(-1, 1) if decoder == "discrete"
                               else gm.sample(1000, generator=g), generator=g)
        gamma_seconds, gamma_nfe = time.perf_counter() - t0, 1000 * steps
        for variance in ("beta", "posterior", "analytic"):
            t0 = time.perf_counter()
            b = elbo(model, chain, x, variance=variance, gamma=gamma, decoder=decoder, generator=g)
            seconds = time.perf_counter() - t0 + (gamma_seconds if variance == "analytic" else 0.0)
            label = {"beta": "DDPM bound, σ² = β", "posterior": "DDPM bound, σ² = β̃",
                     "analytic": "DDPM bound, analytic σ²"}[variance]
            _row(rows, name, f"{label} (N={steps})", b.nats, d, b.nfe // x.shape[0], seconds, exact)
            per_timestep[(name, variance)] = b.terms.mean(0)
        print(f"  (Γ estimated on 1000 points: {gamma_nfe} evaluations, {gamma_seconds:.1f} s, shown in the "
              f"analytic row's time only)", flush=True)
        for sde_name, sde in (("VP", vp), ("sub-VP", sgm.SubVPSDE()), ("VE", sgm.VESDE())):
            t0 = time.perf_counter()
            b = continuous_elbo(gm.score_fn(sde), sde, xd, eps=EPS, n_samples=100, generator=g)
            if decoder == "discrete":  # a density bound on the dequantised point, as the ODE row
                nats, ref = b.nats - d * math.log(2 / 255), exact
            else:  # against the exact -log p_eps of this SDE
                nats, ref = b.nats, -gm.log_prob(x, torch.full((x.shape[0],), EPS, dtype=D), sde)
            _row(rows, name, f"continuous bound ({sde_name})", nats, d, b.nfe // x.shape[0],
                 time.perf_counter() - t0, ref)
    _table(rows)
    if figure:
        plot(per_timestep, figure)
        print(f"\nfigure: {figure}")


def _table(rows) -> None:
    print()
    print("| target | method | bits/dim | gap to exact (bits/dim) | NFE per point | seconds |")
    print("|---|---|---|---|---|---|")
    for target, method, bpd, bpd_se, gap, gap_se, nfe, seconds in rows:
        gap_text = "—" if math.isnan(gap) else f"{gap:+.4f} ± {gap_se:.4f}"
        print(f"| {target} | {method} | {bpd:.4f} ± {bpd_se:.4f} | {gap_text} | {nfe} | {seconds:.1f} |", flush=True)


# the digits that benchmarks/conditional_digits.py keeps out of training: randperm(1797, seed 0)[1500:]
DIGITS_HELD_OUT = 1500


def run_checkpoint(path: str, n: int, steps: int, figure: str | None, n_timesteps: int = 64, pilot: int = 8,
                   gamma_n: int = 64, ode_n: int = 100, seed: int = 0) -> None:
    """The same rows for a trained digits model (``path``: a training checkpoint of ``data="digits"``), with its
    unconditional score (the reserved "no label" index of a class-conditional model), on ``n`` held-out digits.

    The digits are 17 grey levels scaled to ``[-1, 1]`` (spacing 1/8), so the discretised decoder applies with
    ``levels=17``, and bits/dim are of the bin mass (``log2 17 ≈ 4.09`` for a uniform model). The ODE and the
    continuous bound take uniformly dequantised digits (± 1/16) and subtract the bin's log-volume, as the 8-bit
    ring. The DDPM bounds are the sampled-timestep estimate (``n_timesteps`` per image), importance-sampled from the
    mean terms of an exact sum over ``pilot`` images (which also draw the per-timestep figure); Γ is estimated on
    ``gamma_n`` training digits; the ODE (Hutchinson divergence, rtol = atol = 1e-4) runs on the first ``ode_n``."""
    from sgm.checkpoint import load_checkpoint, model_from_checkpoint
    from sgm.data import load_digits

    levels = 17
    g = torch.Generator().manual_seed(seed)
    model, config, shape = model_from_checkpoint(path)
    if config.data != "digits":
        raise ValueError(f"checkpoint {path!r} was trained on {config.data!r}, not digits")
    score = model.conditional(model.n_classes) if model.n_classes else model
    images, _ = load_digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, x = images[perm[:DIGITS_HELD_OUT]], images[perm[DIGITS_HELD_OUT:DIGITS_HELD_OUT + n]]
    n, d = len(x), x[0].numel()
    name = f"digits 8×8 ({n} held-out)"
    half = 1.0 / (levels - 1)
    xd = x + (torch.rand(x.shape, generator=g) - 0.5) * (2 * half)
    log_bin = d * math.log(2 * half)
    sde = model.sde
    chain = sde.discretize(steps)
    rows, per_timestep = [], {}
    print(f"# {name}, checkpoint {path} (step {load_checkpoint(path)['step']})", flush=True)
    t0 = time.perf_counter()
    out = log_likelihood(score, sde, xd[:ode_n], eps=EPS, rtol=1e-4, atol=1e-4, divergence="hutchinson",
                         generator=g)
    _row(rows, name, f"probability-flow ODE (first {len(out.logp)} images)", -out.logp - log_bin, d, out.nfe,
         time.perf_counter() - t0)
    t0 = time.perf_counter()
    gamma = estimate_gamma(score, chain, train[:gamma_n], generator=g)
    gamma_seconds = time.perf_counter() - t0
    print(f"  Γ on {gamma_n} training digits: {gamma_seconds:.1f} s", flush=True)
    for variance, label in (("beta", "σ² = β"), ("posterior", "σ² = β̃"), ("analytic", "analytic σ²")):
        t0 = time.perf_counter()
        exact = elbo(score, chain, x[:pilot], variance=variance, gamma=gamma, decoder="discrete", levels=levels,
                     generator=g)
        per_timestep[(name, variance)] = exact.terms.mean(0)
        mean_terms = exact.terms[:, :-1].mean(0).clamp_min(0)
        proposal = 0.9 * mean_terms / mean_terms.sum() + 0.1 / len(mean_terms)
        b = elbo(score, chain, x, variance=variance, gamma=gamma, decoder="discrete", levels=levels,
                 n_timesteps=n_timesteps, proposal=proposal, generator=g)
        seconds = time.perf_counter() - t0 + (gamma_seconds if variance == "analytic" else 0.0)
        _row(rows, name, f"DDPM bound, {label} (N={steps}, {n_timesteps} sampled terms/image)", b.nats, d,
             (b.nfe + exact.nfe) // n, seconds)
        print(f"  {label}: Monte-Carlo s.e. of the mean {float(b.se.pow(2).sum().sqrt() / n / (d * LOG2)):.4f} "
              f"bits/dim; exact sum on the {pilot} pilot images {float(exact.bpd.mean()):.4f}", flush=True)
    t0 = time.perf_counter()
    b = continuous_elbo(score, sde, xd, eps=EPS, n_samples=50, generator=g)
    _row(rows, name, f"continuous bound ({type(sde).__name__})", b.nats - log_bin, d, b.nfe // n,
         time.perf_counter() - t0)
    _table(rows)
    if figure:
        plot(per_timestep, figure, f"The DDPM bound per timestep, trained digits model\n(N = {steps}, mean over "
                                   f"{pilot} held-out digits): where the nats are spent")
        print(f"\nfigure: {figure}")


def plot(per_timestep: dict, path: str,
         title: str = "The DDPM bound per timestep with the exact ε (N = 1000): where the nats are spent") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k[0] for k in per_timestep}, key=list(dict.fromkeys(k[0] for k in per_timestep)).index)
    fig, axes = plt.subplots(1, len(names), figsize=(max(5 * len(names), 8), 4), squeeze=False)
    styles = {"beta": ("β", "#d62728"), "posterior": ("β̃", "#1f77b4"), "analytic": ("analytic", "#2ca02c")}
    for ax, name in zip(axes[0], names):
        for variance, (label, colour) in styles.items():
            terms = per_timestep[(name, variance)]
            kl = terms[1:-1].clamp_min(1e-8)
            ax.loglog(torch.arange(1, kl.numel() + 1).numpy(), kl.numpy(), color=colour, lw=1,
                      label=f"{label}: L_0 = {float(terms[0]):.2f}, L_T = {float(terms[-1]):.1e}, "
                            f"Σ L_t = {float(kl.sum()):.2f}")
        ax.set_title(name)
        ax.set_xlabel("timestep t (DDPM numbering − 1)")
        ax.set_ylabel("mean L_t (nats)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sampling(n: int = 2000, seeds: int = 3) -> None:
    from sgm.metrics import sliced_wasserstein
    from sgm.samplers import time_grid

    gm = sgm.GaussianMixture([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2], dtype=D)
    sde, chain = sgm.VPSDE(), sgm.VPSDE().discretize(1000)
    score = gm.chain_score_fn(chain)
    gen = lambda seed: torch.Generator().manual_seed(seed)
    ref = gm.sample(n, generator=gen(99))
    print("| steps | sampler | SW₂ per seed | mean |")
    print("|---|---|---|---|")
    for steps in (10, 20, 50):
        grid = time_grid(sde, steps, "trailing", train_steps=1000)
        idx = sorted(chain.index(torch.tensor([node.t for node in grid.noisy], dtype=D)).tolist())
        gamma = estimate_gamma(score, chain, gm.sample(2000, generator=gen(5)), indices=idx, generator=gen(6))
        for label, sampler, opts in (("ancestral, β̃", "ancestral", {}),
                                     ("ancestral, β", "ancestral", {"variance": "beta"}),
                                     ("ancestral, analytic", "ancestral", {"variance": "analytic", "gamma": gamma}),
                                     ("ddim, η = 0", "ddim", {}),
                                     ("ddim, analytic (η = 0)", "ddim", {"variance": "analytic", "gamma": gamma})):
            sw = [sliced_wasserstein(sgm.sample(score, sde, (n, 2), sampler, steps, spacing="trailing",
                                                train_steps=1000, generator=gen(seed), dtype=D, **opts).x,
                                     ref, generator=gen(7)) for seed in range(seeds)]
            print(f"| {steps} | {label} | {' '.join(f'{v:.3f}' for v in sw)} | {sum(sw) / len(sw):.3f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--figure", help="default docs/likelihood_bounds.png (docs/likelihood_digits.png with "
                        "--checkpoint)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="a digits training checkpoint: its rows on held-out digits instead")
    parser.add_argument("--n-timesteps", type=int, default=64, help="sampled DDPM terms per image (--checkpoint)")
    parser.add_argument("--ode-n", type=int, default=100, help="images for the ODE row (--checkpoint)")
    parser.add_argument("--sampling", action="store_true", help="the analytic-variance sampling table instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.sampling:
        sampling()
    elif args.checkpoint:
        run_checkpoint(args.checkpoint, args.n, args.steps, args.figure or "docs/likelihood_digits.png",
                       args.n_timesteps, ode_n=args.ode_n, seed=args.seed)
    else:
        run(args.n, args.steps, args.figure or "docs/likelihood_bounds.png", args.seed)


if __name__ == "__main__":
    main()
