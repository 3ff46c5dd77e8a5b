"""Card 2's module: the two-stage summary, the exact 3-arm gradient, checks on the worst seed."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import boundary_shrinkage as m


def test_two_stage_summary_known_answer():
    probs = np.array([[0.02, 0.5, 0.48], [0.01, 0.8, 0.19], [0.01, 0.92, 0.07],
                      [0.2, 0.75, 0.05], [0.6, 0.38, 0.02]])
    s = m.two_stage_summary(probs)
    assert s["t90"] == 2
    assert s["rise_before"] == pytest.approx(0.0)
    assert s["rise_after"] == pytest.approx(0.59)
    assert s["ratio"] == pytest.approx(0.0)


def test_two_stage_summary_without_saturation_or_later_rise_is_not_two_stage():
    never = np.array([[0.02, 0.5, 0.48], [0.03, 0.6, 0.37]])
    assert m.two_stage_summary(never)["t90"] is None
    assert m.two_stage_summary(never)["ratio"] == 1e6
    flat_after = np.array([[0.02, 0.5, 0.48], [0.05, 0.91, 0.04], [0.04, 0.93, 0.03]])
    s = m.two_stage_summary(flat_after)
    assert s["rise_before"] == pytest.approx(0.03) and s["ratio"] == 1e6


def test_three_arm_exact_is_the_mean_baseline_policy_gradient():
    # one step of theta += pi * (r - pi.r) from the seeded start, computed by hand
    out = m.three_arm_exact(0, steps=1)
    theta = m._arm_logits(0)
    p = np.exp(theta) / np.exp(theta).sum()
    r = np.asarray(m.ARM_MEANS)
    theta1 = theta + p * (r - p @ r)
    np.testing.assert_allclose(out["probs"][0], p, atol=1e-12)
    np.testing.assert_allclose(out["probs"][1], np.exp(theta1) / np.exp(theta1).sum(), atol=1e-12)


def _seed(frac: float, rho: float, shrink: int, expand: int) -> dict:
    return {"frac_fell": frac, "spearman": rho, "shrink": shrink, "expand": expand}


def test_checks_take_the_worst_seed():
    arm = {"exact": [{"ratio": 0.0}, {"ratio": 0.05}], "sampled": [{"ratio": 1e6}]}
    results = {"num_samples": 1024, "three_arm": arm,
               "seeds": [_seed(0.5, 0.4, 200, 1), _seed(0.29, 0.4, 200, 0),
                         _seed(0.5, 0.1, 30, 4)]}
    checks = {c.name.split(" (")[0]: c for c in m.checks(results)}
    frac = checks["fraction of problems whose p_i fell"]
    assert frac.value == 0.29 and not frac.passed
    assert checks["Spearman(p_i at base, delta p_i)"].value == 0.1
    shrink = next(c for c in checks.values() if c.name.startswith("support shrink"))
    assert shrink.value == 7.5 and not shrink.passed  # 30 < 10 x 4
    unvalidated = [c for c in checks.values() if not c.required]
    assert len(unvalidated) == 2
    assert unvalidated[0].value == 0.05 and unvalidated[0].passed
    assert not unvalidated[1].passed and unvalidated[1].ok
