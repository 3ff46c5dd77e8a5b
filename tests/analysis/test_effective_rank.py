"""Card 7's module: its unit identities, and checks judged on the worst seed."""

from __future__ import annotations

import math

import numpy as np

from analysis import effective_rank as m
from rlnb.probes import effective_rank, rank_dynamics


def test_identity_errors_are_at_round_off():
    for seed in range(3):
        err = m.identity_errors(seed, max_rank=6, trials=2)
        assert err["equal_singular_values"] < 1e-9 and err["rank_one"] < 1e-9


def test_corr_ignores_nan_and_degenerate_inputs():
    x = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    assert abs(m._corr(x, 2 * x + 1) - 1) < 1e-12
    assert math.isnan(m._corr(np.ones(5), x))
    assert math.isnan(m._corr(x[:2], x[:2]))


def test_stride_leaves_no_prefix_constant_and_several_per_response():
    # one centred token is the zero matrix and two are rank 1: with s = 1 or 2 the first prefix
    # always has ER = 1; with STRIDE it depends on the states
    rng = np.random.default_rng(0)
    for s in (1, 2):
        first = effective_rank(rng.normal(size=(s, 64)))
        assert abs(first - 1) < 1e-9
    assert effective_rank(rng.normal(size=(m.STRIDE, 64))) > 1.5
    lengths = {len(a) + 1 for a in m.task_split()[1].answers}  # + EOS
    assert min(lengths) // m.STRIDE >= 5 and max(lengths) <= m.MAX_NEW_TOKENS


def test_rank_dynamics_at_the_stride_uses_the_states():
    # the old algebraic identity (ERV = (ER - 1)/2 for 3 tokens at s = 1) is gone at STRIDE:
    # two responses with the same ER can have different ERV
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(18, 64))
    a = rank_dynamics(Z, stride=m.STRIDE)
    b = rank_dynamics(Z[::-1].copy(), stride=m.STRIDE)
    assert len(a.prefixes) == 18 // m.STRIDE
    assert abs(a.prefixes["er"].iloc[-1] - b.prefixes["er"].iloc[-1]) < 1e-9  # same full matrix
    assert abs(a.erv - b.erv) > 1e-3


def _seed(corr_last: float, equal: float = 0.0) -> dict:
    layers = ["embed", m.LAYER]
    row = {"er": [12.0, 12.0], "erv": [4.0, 4.0], "era": [0.7, 0.7], "corr": [0.1, corr_last],
           "corr_one_length": [0.1, 0.1], "accuracy": [0.3], "working_is_reference": [0.3],
           "mean_tokens": [17.7], "modal_tokens": [17.0], "mean_prefixes": [5.5]}
    first = dict(row, corr=[0.9, 0.9])
    return {"seed": 0, "steps": [0, 10], "layers": layers,
            "by_step": {"0": first, "10": dict(row, corr_stride_1=[0.95])},
            "scatter": {"er": [11.0, 12.0], "erv": [3.0, 4.5], "tokens": [17, 20]},
            "identity": {"equal_singular_values": equal, "rank_one": 0.0}}


def test_checks_take_the_worst_seed_at_the_last_checkpoint():
    results = {"seeds": [_seed(0.1), _seed(-0.45, equal=2e-6), _seed(0.2)]}
    checks = m.checks(results)
    assert len(checks) == 3
    assert checks[0].value == 2e-6 and not checks[0].passed  # a broken identity fails
    assert checks[2].value == 0.45  # |corr| of the worst seed, last checkpoint, final_norm
    assert [c.required for c in checks] == [True, True, False]
    m.figure(results)
