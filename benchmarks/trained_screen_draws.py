"""How many screening draws the trained leg's calibration needs (sgm/bench/trained.py's ``n_screen``): the descent's
grid and PAS (on the quadratic grid) for ``ipndm`` ``max_order=4`` at 10 NFE on a digits checkpoint, calibrated on
``n`` prior draws (seed 1), judged by the held-out map error on 64 other draws (seed 7) against the network's own
flow map (dopri5 at 1e-5, then Tweedie).

    OMP_NUM_THREADS=1 python benchmarks/trained_screen_draws.py --checkpoint CKPT [--n 8 32]
"""
import argparse
import time

import torch

from sgm.checkpoint import model_from_checkpoint
from sgm.samplers import optimize_grid, sample, time_grid
from sgm.samplers.corrections import pas
from sgm.samplers.optimize import flow_map, map_error

STEPS, OPTIONS, TOL = 10, {"max_order": 4}, 1e-5


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[8, 32], help="calibration draws")
    args = parser.parse_args(argv)
    model, _, shape = model_from_checkpoint(args.checkpoint)
    sde = model.sde
    torch.set_grad_enabled(False)
    x = sde.prior_std * torch.randn((64,) + tuple(shape), generator=torch.Generator().manual_seed(7))
    reference, _ = flow_map(model, sde, x, tol=TOL)
    quadratic = time_grid(sde, STEPS, "quadratic")

    def error(**kw):
        return map_error(sample(model, sde, x.shape, x_init=x, **kw).x, reference)

    print(f"uncorrected, quadratic: {error(sampler='ipndm', grid=quadratic, **OPTIONS):.4g}", flush=True)
    for n in args.n:
        kw = dict(shape=(n, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float32,
                  reference_tol=TOL)
        t0 = time.perf_counter()
        grid = optimize_grid(model, sde, STEPS, "ipndm", **kw, **OPTIONS)
        t1 = time.perf_counter()
        corrected = pas(model, sde, "ipndm", grid=quadratic, **kw, **OPTIONS)
        t2 = time.perf_counter()
        print(f"n={n}: descent {error(sampler='ipndm', grid=grid, **OPTIONS):.4g} ({t1 - t0:.0f} s), "
              f"PAS {error(correction=corrected):.4g} ({t2 - t1:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
