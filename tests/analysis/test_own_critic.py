"""Card 16's module: the z statistic and checks judged on the worst seed."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import own_critic as m


def test_z_is_mean_over_standard_error():
    rng = np.random.default_rng(0)
    diff = rng.normal(size=(400, 3)) + np.array([0.0, 0.5, 0.0])
    u = np.array([0.0, 1.0, 0.0])
    x = diff @ u
    assert m._z(diff, u) == pytest.approx(x.mean() / (x.std(ddof=1) / 20))
    assert m._z(diff, u) > 5 and abs(m._z(diff, np.array([1.0, 0, 0]))) < 4


def _seed(probe: float, control: float, z_poise: float, ratio: float) -> dict:
    bias = {e: {"z_gradient_direction": 0.0, "z_random_direction": 0.0,
                "share_coords_over_3se": 0.0} for e in m.ESTIMATORS}
    bias["poise"]["z_random_direction"] = z_poise
    bias["own"]["z_gradient_direction"] = 10.0
    aurocs = {name: 0.6 for name in [*m.FEATURE_SETS, *m.CONTROLS]}
    aurocs.update({"all features": probe, "answer string": control})
    return {"auroc": aurocs, "bias": bias, "head_logp_error": 1e-6,
            "variance_ratio": {"poise": ratio, "own": 0.9, "loo": 1.1}}


def test_checks_take_the_worst_seed():
    results = {"seeds": [_seed(0.8, 0.6, 1.0, 0.7), _seed(0.72, 0.7, -3.5, 0.9),
                         _seed(0.9, 0.5, 0.0, 0.5)]}
    got = {c.name: c for c in m.checks(results)}
    values = [c.value for c in got.values()]
    assert values[1] == pytest.approx(0.02)  # the smallest margin over the control
    assert values[2] == pytest.approx(0.72)  # the smallest AUROC
    assert values[3] == pytest.approx(3.5) and not list(got.values())[3].passed
    assert values[5] == pytest.approx(0.1)  # the smallest variance reduction
    assert [c.required for c in got.values()] == [True, True, False, False, False, False]
    m.figure(results)
