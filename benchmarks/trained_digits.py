"""sgm's deterministic samplers against diffusers' schedulers on a trained digits U-Net, at 5, 10 and 20 NFE, from
the same x_T: map error against the network's own probability-flow map (dopri5, cached under runs/) and the Fréchet
distance in the digits classifier's features (sgm/bench/trained.py has the protocol; docs/benchmark.md the table).

Make a checkpoint first (sgm's trainer, VP path): `python benchmarks/posthoc_ema_digits.py` (the one measured in
docs/benchmark.md, runs/posthoc_digits/checkpoint.pt), `python benchmarks/train_digits.py` (writes
runs/digits/checkpoint.pt) or `sgm train --data digits --out-dir runs/digits`; then

    OMP_NUM_THREADS=1 python benchmarks/trained_digits.py --checkpoint runs/digits/checkpoint.pt [--n 500]
"""
import sys

from sgm.bench.trained import main

if __name__ == "__main__":
    sys.exit(main())
