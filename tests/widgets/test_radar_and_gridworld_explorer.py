"""The capability radar figure and the gridworld explorer widget."""

import doctest

import pandas as pd
import pytest

import rlnb.viz.radar
import rlnb.widgets.gridworld
from rlnb.envs import Gridworld
from rlnb.viz import capability_radar
from rlnb.widgets import GridworldExplorer


def test_radar_normalises_flips_and_uses_the_last_step():
    tidy = pd.DataFrame({
        "run": ["a"] * 6 + ["b"] * 6,
        "step": [1, 1, 1, 2, 2, 2] * 2,
        "metric": ["reward", "entropy", "kl"] * 4,
        "value": [0.0, 9.0, 9.0, 0.2, 1.0, 0.1,   # a: last step counts
                  0.0, 9.0, 9.0, 0.8, 3.0, 0.3],  # b
    })
    fig = capability_radar(tidy, ["reward", "entropy", "kl"], lower_is_better=["kl"])
    radii = {t.name: list(t.r) for t in fig.data}
    assert radii["a"] == [0.0, 0.0, 1.0, 0.0]  # closed polygon: first point repeated
    assert radii["b"] == [1.0, 1.0, 0.0, 1.0]
    assert "kl: 0.1" in fig.data[0].text[2]  # raw values in the hover text
    raw = capability_radar(tidy, ["reward", "entropy", "kl"], normalise=False)
    assert list(raw.data[1].r)[:3] == [0.8, 3.0, 0.3]


def test_radar_errors():
    wide = pd.DataFrame({"run": ["a"], "x": [1.0], "y": [2.0], "z": [3.0]})
    with pytest.raises(ValueError, match="at least 3 metrics"):
        capability_radar(wide, ["x", "y"])
    with pytest.raises(KeyError, match=r"metrics \['w'\] are not in the frame"):
        capability_radar(wide, ["x", "y", "w"])


def test_gridworld_explorer_recomputes_on_every_change():
    explorer = GridworldExplorer(name="lock3", sticky=0.0)
    h_lock = explorer.horizon.value
    assert explorer.horizon.value == Gridworld.from_name("lock3").effective_horizon().value
    explorer.map.value = "open5"
    assert explorer.env.layout() == Gridworld.from_name("open5").layout()
    explorer.sticky.value = 0.25
    expected = Gridworld.from_name("open5", sticky=0.25).effective_horizon().value
    assert explorer.horizon.value == pytest.approx(expected)
    assert f"H = {expected:.3f}" in explorer.status.value
    assert len(explorer._figures.children) == 2 and h_lock > 0
    assert explorer.horizon_gorp is None and "definition" not in explorer.status.value
    explorer.definition.value = True  # adds H by its definition
    gorp = Gridworld.from_name("open5", sticky=0.25).effective_horizon(method="gorp").value
    assert explorer.horizon_gorp.value == pytest.approx(gorp) and gorp <= 4
    assert f"H = {gorp:.3f}" in explorer.status.value
    with pytest.raises(ValueError, match="name must be one of"):
        GridworldExplorer(name="nowhere")


@pytest.mark.parametrize("module", [rlnb.viz.radar, rlnb.widgets.gridworld])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_gridworld_explorer_says_when_the_horizon_is_capped():
    """H = T from the cap has no attaining k: the status says so instead of 'k = None'."""
    explorer = GridworldExplorer(name="lock3", slip=0.3)
    assert "None" not in explorer.status.value
    assert "capped at T" in explorer.status.value
