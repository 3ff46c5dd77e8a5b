"""Card 12's pieces: one world's exact curves and their identities."""

from __future__ import annotations

import numpy as np
import pytest

import analysis.overoptimisation as m
from rlnb.probes.bon import kl_bound


@pytest.fixture(scope="module")
def world():
    return m.world(0, 0)


def test_world_curves_line_up(world):
    n = len(m.NS)
    assert all(len(world[k]) == n for k in ("kl", "gold", "proxy", "wco_gold", "wco_reward"))
    assert all(len(world[k]) == n - 1 for k in ("rl_kl", "rl_beta", "rl_gold", "rl_proxy"))
    # n = 1 is the base policy: its gold is the mean gold reward
    assert world["kl"][0] == pytest.approx(0.0, abs=1e-12) and world["gold"][0] == pytest.approx(world["base_gold"])
    # the KL-regularised optimum is solved at best-of-n's KLs, which follow the bound
    np.testing.assert_allclose(world["rl_kl"], world["kl"][1:], atol=1e-8)
    np.testing.assert_allclose(world["kl"][:13], kl_bound(np.array(m.NS[:13], float)), atol=1e-3)
    assert np.all(np.diff(world["rl_beta"]) < 0)  # more KL, smaller beta


def test_optimum_beats_best_of_n_on_the_proxy_at_equal_kl(world):
    """The tilt maximises E[proxy] for its KL: it must beat best-of-n on the proxy."""
    assert np.all(np.array(world["rl_proxy"]) >= np.array(world["proxy"][1:]) - 1e-9)
    assert np.all(np.diff(world["proxy"]) > 0)  # the proxy never stops climbing


def test_worlds_are_reproducible_and_distinct(world):
    assert m.world(0, 0)["gold"] == world["gold"]
    assert m.world(0, 1)["gold"] != world["gold"] and m.world(1, 0)["gold"] != world["gold"]
