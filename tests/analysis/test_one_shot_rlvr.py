"""Card 14's post-saturation statistic and checks, on hand-made curves."""

import math

import numpy as np
import pytest

from analysis import one_shot_rlvr as m


def _heldout(means, n=256, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.05, n)  # the same per-problem offsets at every step (paired)
    return {s: list(np.clip(mu + noise + rng.normal(0, 0.01, n), 0, 1))
            for s, mu in means.items()}


def test_t_sat_is_the_first_evaluation_at_saturation():
    train_acc = [0.5] * 14 + [0.995] * 86  # saturated from step 15 on
    held = _heldout({0: 0.2, 10: 0.2, 20: 0.25, 30: 0.3, 40: 0.3, 50: 0.3, 60: 0.3, 70: 0.4})
    out = m.post_saturation(train_acc, held)
    assert out["t_sat"] == 20  # step 15 saturates, the next evaluation is at 20
    assert out["at_sat"] == pytest.approx(np.mean(held[20]))
    assert out["after"] == pytest.approx(np.mean(held[70]))
    d = np.array(held[70]) - np.array(held[20])
    assert out["z"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))))
    assert out["z"] > 1


def test_post_saturation_is_none_without_saturation_or_room():
    held = _heldout({0: 0.2, 10: 0.2, 20: 0.2})
    assert m.post_saturation([0.5] * 20, held)["z"] is None  # never saturated
    assert m.post_saturation([1.0] * 20, held)["t_sat"] == 10  # saturated, no step 60
    assert m.post_saturation([1.0] * 20, held)["z"] is None
    # step 0 is the base model: never t_sat, even when train_acc[-1] is saturated
    assert m.post_saturation([0.5] * 19 + [1.0], _heldout({0: 0.2, 10: 0.2}))["t_sat"] is None


def _results(gains_on, gains_off, zs):
    seeds = []
    for g_on, g_off, z in zip(gains_on, gains_off, zs):
        arm = lambda g, z: {"gain": g, "post_saturation": {"z": z, "t_sat": 10}}  # noqa: E731
        seeds.append({"arms": {"entropy 0.001": arm(g_on, z), "entropy 0": arm(g_off, None)}})
    return {"seeds": seeds}


def test_checks_take_the_worst_seed_and_are_unvalidated():
    checks = m.checks(_results([0.1, 0.06, 0.2], [0.0, 0.07, 0.1], [3.0, 1.5, 2.0]))
    assert all(not c.required for c in checks)
    gain, post, entropy = checks
    assert gain.value == pytest.approx(0.06) and gain.passed
    assert post.value == pytest.approx(1.5) and post.passed
    assert entropy.value == pytest.approx(-0.01) and not entropy.passed
    assert entropy.verdict == "not reproduced"
    missing = m.checks(_results([0.1] * 3, [0.0] * 3, [3.0, None, 2.0]))[1]
    assert math.isnan(missing.value) and not missing.passed
