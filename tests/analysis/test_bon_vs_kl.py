"""Card 11's pieces: the random test bases, the equal-KL ratio and its formula identities."""

from __future__ import annotations

import numpy as np
import pytest

import analysis.bon_vs_kl as m
from rlnb.probes.bon import best_of_n_curve, kl_bound


def test_random_bases_are_distributions_of_every_kind():
    g = np.random.default_rng(0)
    kinds = set()
    for _ in range(60):
        p, r, info = m.random_base(g)
        assert p.shape == r.shape == (info["size"],) and 2 <= info["size"] <= 2000
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        if info["tied"]:
            assert np.all(r == np.round(r))  # integer rewards: ties
        else:
            assert np.unique(r).size == r.size
        kinds.add((info["concentration"], info["tied"]))
    assert len(kinds) >= 6  # skewed and flat bases, with and without ties


def test_uniform_kl_depends_only_on_the_ranking():
    """Why the card's |Y| = 1000 gap and the 50k KLs are the same for every seed."""
    p = np.full(300, 1 / 300)
    a = best_of_n_curve(p, np.random.default_rng(0).standard_normal(300), [2, 16, 256])
    b = best_of_n_curve(p, np.random.default_rng(1).exponential(size=300), [2, 16, 256])
    np.testing.assert_allclose(a.kl, b.kl, atol=1e-13)


def test_small_space_closed_form():
    """|Y| = 10 uniform: pi_bon(k-th worst) = (k/10)^64 - ((k-1)/10)^64, KL capped by log 10."""
    k = np.arange(1, 11)
    q = (k / 10) ** 64 - ((k - 1) / 10) ** 64
    exact = float(np.sum(q * np.log(10 * q)))
    out = m.small_space(np.random.default_rng(3))
    assert out["kl"] == pytest.approx(exact, abs=1e-12)
    assert out["kl"] < out["log_size"] < out["bound"] == pytest.approx(kl_bound(64))
    assert round(out["kl"], 2) == 2.29 and round(out["bound"], 2) == 3.17  # card: 2.29 vs 3.18


def test_ratio_is_below_one_and_near_the_continuous_value_at_n2():
    """At n = 2 a continuum gives E[max of 2 normals] / sqrt(2 KL) = 0.5642 / 0.6215 = 0.908."""
    out = m.ratio_at_equal_kl(np.random.default_rng(0), draws=2)
    ratio = np.array(out["ratio"])
    assert np.all(ratio < 1.0)
    assert ratio[0] == pytest.approx((1 / np.sqrt(np.pi)) / np.sqrt(2 * kl_bound(2)), abs=0.01)
    assert out["tilt_gain"][0] == pytest.approx(np.sqrt(2 * out["kl"][0]), rel=0.02)


def test_bound_slack_finds_the_smallest_margin():
    out = m.bound_slack(np.random.default_rng(4), cases=5)
    w = out["worst"]
    assert w["slack"] >= 0 and w["ties"] in m.TIES and w["n"] in m.BOUND_NS
    pts = np.array(out["points"])
    assert pts.shape == (5 * 2 * len(m.BOUND_NS), 2)
    assert (pts[:, 0] - pts[:, 1]).min() == pytest.approx(w["slack"])
