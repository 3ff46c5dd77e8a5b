"""Card 17's pieces: the answer bandit, the majority-vote wrapper through the Trainer, the
exact answer entropy, and the collapse-step bookkeeping."""

from __future__ import annotations

import pytest
import torch

import analysis.unsupervised_rlvr as m
from rlnb.envs import AnswerStrategyBandit, MajorityVote, StrategyBandit
from rlnb.policies import Rollout
from rlnb.rl import majority_vote_rewards
from rlnb.serialization import load_component, save_component


def test_card17_answers_follow_the_solve_matrix_and_the_settings():
    for setting in ("aligned", "misaligned"):
        env = AnswerStrategyBandit.card17(setting, generator=torch.Generator().manual_seed(3))
        solved = env.solve_matrix > 0
        assert bool((env.answers[solved] == 0).all()) and bool((env.answers[~solved] >= 1).all())
        assert int(env.answers.max()) <= 20
    mis = AnswerStrategyBandit.card17("misaligned", generator=torch.Generator().manual_seed(3))
    rates = mis.strategy_solve_rates
    assert rates[0].item() == pytest.approx(3 / 64) and rates[1].item() == 0.5
    assert bool((mis.answers[mis.solve_matrix[:, 0] == 0, 0] == 1).all())  # always the popular one
    with pytest.raises(ValueError, match="exactly where solve_matrix is 1"):
        AnswerStrategyBandit(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="setting"):
        AnswerStrategyBandit.card17("both")


def test_answer_distribution_and_entropy_are_exact():
    env = AnswerStrategyBandit(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
                               torch.tensor([[0, 2, 2], [1, 0, 3]]))
    pi = torch.tensor([0.5, 0.25, 0.25])
    q = env.answer_distribution(pi)
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25, 0.5, 0.0, 0.25]],
                                               dtype=torch.float64))
    h = lambda p: -sum(x * torch.log(torch.tensor(x)).item() for x in p if x > 0)  # noqa: E731
    assert env.answer_entropy(pi) == pytest.approx((h([0.5, 0.5]) + h([0.25, 0.5, 0.25])) / 2)
    assert env.answer_entropy(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-12)


def test_majority_vote_wrapper_scores_the_vote_not_the_verifier(tmp_path):
    env = AnswerStrategyBandit(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0, 5, 5]]))
    vote = MajorityVote(env)
    actions = torch.tensor([0, 1, 2, 1])  # answers 0, 5, 5, 5: the wrong answer is the mode
    rollout = Rollout(prompts=torch.zeros(4, dtype=torch.long), actions=actions[:, None],
                      mask=torch.ones(4, 1, dtype=torch.bool), logp=torch.zeros(4, 1), group_size=4)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(vote.reward_rollout(rollout, g), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(env.reward_rollout(rollout), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(vote.reward_rollout(rollout, g),
                               majority_vote_rewards(env.rollout_answers(rollout), 4,
                                                     torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="torch.Generator"):
        vote.reward_rollout(rollout, None)
    with pytest.raises(TypeError, match="rollout_answers"):
        MajorityVote(StrategyBandit(torch.tensor([[1.0, 0.0]])))
    save_component(vote, tmp_path, "env")
    back = load_component(tmp_path, "env")
    assert isinstance(back, MajorityVote) and torch.equal(back.env.answers, env.answers)


def test_vote_run_converges_on_the_prior_favourite():
    out = m.train("misaligned", "majority", seed=1, steps=60)
    assert len(out["pass_at_1"]) == len(out["answer_entropy"]) == 60
    assert out["modal_strategy"] == 0 and out["final_pass_at_1"] < out["base_pass_at_1"]
    assert out["final_pass_at_1"] == pytest.approx(out["modal_accuracy"], abs=0.02)
    assert out["answer_entropy"][-1] < out["answer_entropy"][0] / 3


def test_collapse_counts_a_run_that_never_collapsed_past_the_budget():
    assert m._collapse({"collapse_step": None}, 400) == 401
    assert m._collapse({"collapse_step": 64}, 400) == 64
