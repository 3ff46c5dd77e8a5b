"""PreferenceGameExplorer (notebook 10): card 19's game with the cycle margins on sliders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlnb.algos import (
    bradley_terry_policy,
    exploitability,
    minimax_winner,
    nash_md,
    spo_hedge,
)
from rlnb.envs import PreferenceGame
from rlnb.widgets import PreferenceGameExplorer


def test_margins_keep_the_rest_of_the_seeds_game():
    base = PreferenceGame.cyclic(7, seed=4).preference
    moved = PreferenceGame.cyclic(7, seed=4, margins=(0.1, 0.2, 0.3)).preference
    cycle = [(0, 1), (1, 2), (2, 0)]
    for (i, j), m in zip(cycle, (0.1, 0.2, 0.3)):
        assert moved[i, j].item() == pytest.approx(0.5 + m) and moved[j, i].item() == pytest.approx(0.5 - m)
    off = torch.ones(7, 7, dtype=torch.bool)
    for i, j in cycle:
        off[i, j] = off[j, i] = False
    assert torch.equal(moved[off], base[off])
    with pytest.raises(ValueError, match=r"margins must be three numbers in \[0, 0.5\]"):
        PreferenceGame.cyclic(7, margins=(0.1, 0.6, 0.2))
    with pytest.raises(ValueError, match="margins must be three numbers"):
        PreferenceGame.cyclic(7, margins=(0.1, 0.2))


def test_traces_match_the_one_call_iterates():
    from rlnb.algos import nash_md_trace, spo_hedge_trace

    P = PreferenceGame.cyclic(7, seed=1).preference
    trace, pi = nash_md_trace(P, beta=0.02, eta=0.1, steps=300, every=50)
    assert len(trace) == 7
    torch.testing.assert_close(pi, nash_md(P, beta=0.02, eta=0.1, steps=300), rtol=0, atol=1e-12)
    assert trace[-1] == pytest.approx(exploitability(pi, P), abs=1e-12)
    out = spo_hedge_trace(P, eta=1.0, steps=300, every=50)
    last, average = spo_hedge(P, eta=1.0, steps=300)
    torch.testing.assert_close(out["last_pi"], last, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["average_pi"], average, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="every >= 1"):
        nash_md_trace(P, every=0)


def test_explorer_recomputes_on_every_slider():
    ex = PreferenceGameExplorer(seed=2, steps=600, every=50, bt_pairs=2000)
    P = PreferenceGame.cyclic(7, seed=2).preference
    # the sliders start at the seed's own margins, and the numbers are the library's
    assert [s.value for s in ex.margins] == pytest.approx(
        [float(P[i, (i + 1) % 3] - 0.5) for i in range(3)], abs=5e-3)
    r = ex.result
    np.testing.assert_allclose(r["winner"], minimax_winner(ex.game.preference).numpy(), atol=1e-9)
    bt, _ = bradley_terry_policy(ex.game.preference, pairs=2000, beta=0.05,
                                 generator=torch.Generator().manual_seed(2))
    assert r["bradley_terry"] == pytest.approx(exploitability(bt, ex.game.preference), abs=1e-9)
    nash, spo_last, spo_avg, bt_line = ex.figure.data[:4]
    assert list(nash.x) == list(range(0, 601, 50)) and nash.y[-1] == pytest.approx(r["nash_md"])
    assert spo_avg.y[-1] == pytest.approx(r["spo_average"]) and bt_line.y[0] == pytest.approx(r["bradley_terry"])
    assert r["nash_md"] < 0.05 < r["bradley_terry"]  # a cycle: the reward model is exploited
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()

    before = r["nash_md"]
    ex.nash_beta.value = 0.3  # a strong anchor to uniform: Nash-MD stops short of the winner
    assert ex.result["nash_md"] > before + 0.02
    assert ex.figure.data[0].y[-1] == pytest.approx(ex.result["nash_md"])
    for s in ex.margins:
        s.value = 0.0  # no cycle: outputs 0-2 tie and beat the rest, a reward represents it
    assert ex.game.preference[0, 1].item() == 0.5
    assert ex.result["bradley_terry"] < 0.02
    assert "0 beats 1 with P = 0.50" in ex.status.value


def test_explorer_rejects_bad_settings():
    with pytest.raises(ValueError, match="steps >= every >= 1"):
        PreferenceGameExplorer(steps=10, every=50)
    with pytest.raises(ValueError, match="nash_eta \\* nash_beta < 1"):
        PreferenceGameExplorer(nash_beta=-0.1)
    with pytest.raises(ValueError, match="num_outputs must be an int >= 3"):
        PreferenceGameExplorer(num_outputs=2)
