"""Card 4's pieces: the clip-higher growth bound and the seed-by-seed comparison."""

from __future__ import annotations

import pytest

from analysis.entropy_interventions import against_baseline, growth_bound


@pytest.mark.parametrize("pi_old,eps,eps_high", [(0.01, 0.2, 0.28), (0.01, 0.2, None),
                                                  (0.05, 0.1, 0.3), (0.2, 0.2, 0.2)])
def test_growth_bound_is_pi_old_times_one_plus_eps_high(pi_old, eps, eps_high):
    bound = growth_bound(pi_old, eps, eps_high)
    assert bound == pytest.approx(pi_old * (1 + (eps if eps_high is None else eps_high)), abs=2e-7)


def test_card_numbers():
    assert growth_bound(0.01, 0.2, 0.28) == pytest.approx(0.0128, abs=1e-7)
    assert growth_bound(0.01, 0.2, None) == pytest.approx(0.012, abs=1e-7)


def test_against_baseline_pairs_seeds_and_takes_the_worst():
    runs = [
        {"intervention": "PPO", "seed": 0, "H_final": 0.1, "R_final": 0.9},
        {"intervention": "PPO", "seed": 1, "H_final": 0.2, "R_final": 0.8},
        {"intervention": "X", "seed": 0, "H_final": 0.3, "R_final": 0.85},
        {"intervention": "X", "seed": 1, "H_final": 0.3, "R_final": 0.9},
    ]
    ratio, gap = against_baseline({"runs": runs}, "X")
    assert ratio == pytest.approx(1.5)  # seed 1: 0.3 / 0.2, not 0.6 / 0.3 pooled
    assert gap == pytest.approx(-0.05)
