"""The speed benchmark compares like with like: each hand-written loop in benchmarks/sampler_speed.py computes
what the sampler it is timed against computes (same grid, same noise), and every row's sampler is registered."""
import pathlib
import sys

import pytest
import torch

import sgm
from sgm.samplers import time_grid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import sampler_speed  # noqa: E402


@pytest.mark.parametrize("label,name,options,hand", sampler_speed.HAND_LOOPS,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_hand_loop_is_the_samplers_update(label, name, options, hand):
    sde, x = sgm.VPSDE(), torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = time_grid(sde, 12, denoise=False)
    ours = sgm.samplers.get(name)(sampler_speed.near_free_score, sde, x, grid,
                                  generator=torch.Generator().manual_seed(1), **options).x
    theirs = hand(sde, grid, torch.Generator().manual_seed(1))(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)  # torchsde's Brownian increments: 1e-11
