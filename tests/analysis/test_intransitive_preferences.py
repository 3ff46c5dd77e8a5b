"""Card 19's pieces: the PreferenceGame sandbox through the Trainer, the chunked traces
against single runs, and the fixed-opponent control."""

from __future__ import annotations

import pytest
import torch

import analysis.intransitive_preferences as m
from rlnb.algos import exploitability, nash_md, spo_hedge
from rlnb.envs import PreferenceGame
from rlnb.policies import Rollout
from rlnb.rl import win_rate_rewards
from rlnb.serialization import load_component, save_component


def test_game_rewards_are_win_rates_within_each_group():
    game = PreferenceGame.cyclic(7, seed=2)
    actions = torch.tensor([0, 1, 2, 3, 0, 0, 4, 6])
    rollout = Rollout(prompts=torch.zeros(8, dtype=torch.long), actions=actions[:, None],
                      mask=torch.ones(8, 1, dtype=torch.bool), logp=torch.zeros(8, 1),
                      group_size=4)
    got = game.reward_rollout(rollout)
    torch.testing.assert_close(got, win_rate_rewards(actions, 4, game.preference))
    P = game.preference
    assert got[0].item() == pytest.approx(float((P[0, 1] + P[0, 2] + P[0, 3]) / 3))
    # the batch as one group
    torch.testing.assert_close(game.reward(torch.zeros(8, dtype=torch.long), actions),
                               win_rate_rewards(actions, 8, P))
    single = Rollout(prompts=torch.zeros(2, dtype=torch.long), actions=torch.zeros(2, 1, dtype=torch.long),
                     mask=torch.ones(2, 1, dtype=torch.bool), logp=torch.zeros(2, 1), group_size=1)
    with pytest.raises(ValueError, match="num_generations >= 2"):
        game.reward_rollout(single)


def test_game_checks_its_matrix_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="must be 1"):
        PreferenceGame(torch.tensor([[0.5, 0.9], [0.9, 0.5]]))
    with pytest.raises(ValueError, match="num_outputs"):
        PreferenceGame.cyclic(2)
    game = PreferenceGame.cyclic(5, seed=1)
    save_component(game, tmp_path, "env")
    back = load_component(tmp_path, "env")
    assert isinstance(back, PreferenceGame) and torch.equal(back.preference, game.preference)
    pi = torch.full((5,), 0.2, dtype=torch.float64)
    assert game.exploitability(pi) == pytest.approx(exploitability(pi, game.preference))
    assert game.expected_return(pi).item() == pytest.approx(0.5)


def test_chunked_traces_equal_one_long_run():
    P = PreferenceGame.cyclic(7, seed=0).preference
    steps = 4 * m.TRACE_EVERY
    nash = m.nash_md_trace(P, steps)
    assert len(nash) == 5
    assert nash[-1] == pytest.approx(exploitability(nash_md(P, beta=m.NASH_BETA, eta=m.NASH_ETA,
                                                            steps=steps), P), abs=1e-12)
    hedge = m.hedge_trace(P, steps)
    last, average = spo_hedge(P, eta=m.HEDGE_ETA, steps=steps)
    assert hedge["last"][-1] == pytest.approx(exploitability(last, P), abs=1e-12)
    assert hedge["average"][-1] == pytest.approx(exploitability(average, P), abs=1e-12)


def test_sampled_spo_through_the_trainer_beats_its_start():
    game = PreferenceGame.cyclic(7, seed=0)
    out = m.sampled_spo(game, seed=0, steps=150)
    start = game.exploitability(torch.full((7,), 1 / 7))
    assert out["average"] < start - 0.05 and len(out["trace"]) > 10
