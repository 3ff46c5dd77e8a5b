"""Card 7's module: its unit identities, and checks judged on the worst seed."""

from __future__ import annotations

import math

import numpy as np

from analysis import effective_rank as m


def test_identity_errors_are_at_round_off():
    for seed in range(3):
        err = m.identity_errors(seed, max_rank=6, trials=2)
        assert err["equal_singular_values"] < 1e-9 and err["rank_one"] < 1e-9


def test_corr_ignores_nan_and_degenerate_inputs():
    x = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    assert abs(m._corr(x, 2 * x + 1) - 1) < 1e-12
    assert math.isnan(m._corr(np.ones(5), x))
    assert math.isnan(m._corr(x[:2], x[:2]))


def _seed(corr_last: float, equal: float = 0.0) -> dict:
    layers = ["embed", m.LAYER]
    row = {"er": [2.0, 2.0], "erv": [0.5, 0.5], "era": [0.6, 0.6], "corr": [0.1, corr_last],
           "corr_4_tokens": [0.1, 0.1], "accuracy": [0.3], "mean_tokens": [3.7]}
    first = dict(row, corr=[0.9, 0.9])
    return {"seed": 0, "steps": [0, 10], "layers": layers,
            "by_step": {"0": first, "10": row},
            "scatter": {"er": [1.0, 2.0], "erv": [0.0, 0.5], "tokens": [3, 4]},
            "identity": {"equal_singular_values": equal, "rank_one": 0.0}}


def test_checks_take_the_worst_seed_at_the_last_checkpoint():
    results = {"seeds": [_seed(0.1), _seed(-0.45, equal=2e-6), _seed(0.2)]}
    checks = m.checks(results)
    assert len(checks) == 3
    assert checks[0].value == 2e-6 and not checks[0].passed  # a broken identity fails
    assert checks[2].value == 0.45  # |corr| of the worst seed, last checkpoint, final_norm
    assert [c.required for c in checks] == [True, True, False]
    m.figure(results)
