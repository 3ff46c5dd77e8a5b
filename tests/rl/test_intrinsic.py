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


def _plain(scores, lengths, mode, w, eta, cap):
    out = []
    for row, n in zip(scores, lengths, strict=True):
        r = [0.0] * len(row)
        total = 0.0
        for t in range(n):
            s = row[t]
            if mode == "sum":
                r[t] = w * s
            elif mode == "clip":
                r[t] = w * min(s - eta, 0.0)
            elif mode == "cap":
                new = min(total + w * s, cap) if total < cap else total
                r[t] = new - total
                total = new
            elif mode == "delta":
                r[t] = w * (s - (row[t + 1] if t + 1 < n else 0.0))
        out.append(r)
    return out


@pytest.mark.parametrize("mode", ["sum", "clip", "cap", "delta"])
def test_process_rewards_match_a_plain_loop(mode):
    from rlnb.rl.intrinsic import process_rewards

    g = _gen(3)
    scores = 0.6 + 0.3 * torch.rand(5, 8, generator=g, dtype=torch.float64)
    lengths = [8, 3, 1, 5, 6]
    mask = (torch.arange(8)[None] < torch.tensor(lengths)[:, None]).long()
    got = process_rewards(scores, mask, mode, weight=0.125, clip_threshold=0.8, cap=0.3)
    want = torch.tensor(_plain(scores.tolist(), lengths, mode, 0.125, 0.8, 0.3), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bounded_refinements_do_not_pay_for_length():
    from rlnb.rl.intrinsic import process_rewards

    scores = torch.full((2, 20), 0.85, dtype=torch.float64)
    mask = torch.stack([torch.arange(20) < 4, torch.arange(20) < 20]).long()  # 4 vs 20 steps
    summed = process_rewards(scores, mask, "sum", weight=0.125).sum(-1)
    assert summed[1] > 4 * summed[0]  # the hack: more steps, more reward
    for mode in ("clip", "cap", "delta"):
        total = process_rewards(scores, mask, mode, weight=0.125).sum(-1)
        assert total[1] <= total[0] + 1e-12, mode


def test_process_reward_errors():
    from rlnb.rl.intrinsic import process_rewards

    with pytest.raises(ValueError, match="unknown process reward mode 'clipped'"):
        process_rewards(torch.zeros(1, 2), torch.ones(1, 2), "clipped")
    with pytest.raises(ValueError, match="contiguously"):
        process_rewards(torch.zeros(1, 3), torch.tensor([[1, 0, 1]]), "sum")
    with pytest.raises(ValueError, match="one \\(N, T\\) shape"):
        process_rewards(torch.zeros(2, 3), torch.ones(2, 2), "sum")
