"""Majority-vote rewards: the mode per group, random tie-breaks, no-answer samples."""

from __future__ import annotations

import doctest

import pytest
import torch

import rlnb.rl.intrinsic
from rlnb.rl.intrinsic import NO_ANSWER, majority_vote_rewards


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mode_of_each_group_earns_one():
    answers = torch.tensor([4, 4, 4, 1, 9, 8, 9, 9])
    torch.testing.assert_close(majority_vote_rewards(answers, 4, _gen()),
                               torch.tensor([1.0, 1, 1, 0, 1, 0, 1, 1]))


def test_ties_are_broken_uniformly_not_by_position_or_value():
    answers = torch.tensor([0, 1])  # a 2-way tie in one group
    picks = [majority_vote_rewards(answers, 2, _gen(s))[0].item() for s in range(400)]
    share = sum(picks) / len(picks)  # how often answer 0 won
    assert 0.4 < share < 0.6  # 5 standard errors of a fair coin on 400 draws is 0.125
    same = majority_vote_rewards(torch.tensor([2, 5, 2, 5]), 4, _gen(7))
    assert torch.equal(same, majority_vote_rewards(torch.tensor([2, 5, 2, 5]), 4, _gen(7)))
    assert same.sum() == 2


def test_no_answer_never_wins():
    answers = torch.tensor([NO_ANSWER, NO_ANSWER, NO_ANSWER, 3, NO_ANSWER, NO_ANSWER])
    torch.testing.assert_close(majority_vote_rewards(answers, 3, _gen()),
                               torch.tensor([0.0, 0, 0, 1, 0, 0]))


def test_errors():
    with pytest.raises(ValueError, match="integer tensor"):
        majority_vote_rewards(torch.tensor([0.5, 1.0]), 2, _gen())
    with pytest.raises(ValueError, match="dividing N = 3"):
        majority_vote_rewards(torch.tensor([0, 1, 2]), 2, _gen())
    with pytest.raises(ValueError, match=">= 0, or -1"):
        majority_vote_rewards(torch.tensor([0, -3]), 2, _gen())


def test_doctests():
    assert doctest.testmod(rlnb.rl.intrinsic).failed == 0
