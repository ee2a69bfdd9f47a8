"""Every sampler calls the score with one time per batch: ``t`` is a scalar expanded to the batch (stride 0),
so the exact mixture score takes its one-marginal path (a per-sample ``t`` costs a marginal per sample)."""
import itertools

import pytest
import torch

import sgm
from sgm.bench.runs import SGM_OPTIONS
from conftest import SDES, gen, mixture

CASES = [(name, dict(zip(axes, values)))
         for name in sgm.samplers.available()
         for axes in [{k: v for k, v in {**SGM_OPTIONS, "ode": {"method": ("euler", "midpoint", "heun2", "heun3",
                                                                                  "rk4", "dopri5")}}.get(name, {}).items()
                       if k in sgm.samplers.options(name)}]
         for values in itertools.product(*axes.values())]


def _valid(name, options):
    try:
        sgm.samplers.solver(name, **options)
    except (ValueError, TypeError):
        return False
    return True


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("name,options", [c for c in CASES if _valid(*c)], ids=lambda v: str(v))
def test_every_score_call_shares_one_time(name, options, sde_name):
    gm, sde, calls = mixture(), SDES[sde_name](), []

    def score(x, t):
        calls.append(t.dim() == 1 and t.shape[0] == x.shape[0] and t.stride(0) == 0)
        return gm.score(x, t, sde)

    out = sgm.sample(score, sde, (16, 2), sampler=name, steps=6, generator=gen(0), dtype=torch.float64, **options)
    assert len(calls) == out.nfe > 0
    assert all(calls), f"{calls.count(False)} of {len(calls)} calls had a per-sample t"
