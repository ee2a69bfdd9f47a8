"""The step-count-vs-quality benchmark (the same as ``sgm bench``): see ``sgm/bench/`` and docs/benchmark.md.

    python benchmarks/sweep.py [--quick] [--checkpoint runs/digits/checkpoint.pt] [--out benchmarks/results]
"""
import sys

from sgm.bench.sweep import main

if __name__ == "__main__":
    sys.exit(main())
