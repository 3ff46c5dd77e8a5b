"""Self-consistency as a reward: a majority vote within each group, with no verifier.

TTRL (Zuo et al. arXiv:2504.16084) and the unsupervised-RLVR study of card 17 reward a
sample when its answer is the most frequent answer of its group (``G`` samples of one
prompt). The reward never sees the gold answer, so training on it can only sharpen what the
policy already prefers: it helps when the policy's mode is right and entrenches the mode
when it is wrong (card 17's "misaligned" case).

- :func:`majority_vote_rewards`: the reward, from ``(N,)`` answer ids.
- :class:`AnswerStrategyBandit`: the strategy bandit whose strategies give *answers* (the
  correct one where they solve the problem, else one of ``num_wrong`` wrong ones, some of
  them a popular wrong answer), card 17's toy.
- :class:`MajorityVote`: a sandbox wrapper that trains ``env`` on the vote instead of its
  verifier; the verifier's (gold) reward stays available as ``env.reward_rollout``.

Ties between modes are broken uniformly at random with the caller's generator: the card
warns that a tie-break which looks at anything else (the first sample, the smallest
answer, the gold answer) can leak the answer or bias the vote.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlnb.checks import check_int, check_number, one_step_actions
from rlnb.envs.base import Sandbox, SandboxWrapper
from rlnb.envs.strategy_bandit import StrategyBandit

__all__ = ["CORRECT", "NO_ANSWER", "AnswerStrategyBandit", "MajorityVote", "majority_vote_rewards"]

#: The answer id of a sample with no parseable answer: never a mode, always reward 0.
NO_ANSWER = -1
#: :class:`AnswerStrategyBandit`'s id of the correct answer (wrong answers are 1, 2, ...).
CORRECT = 0
#: The id of each problem's popular wrong answer.
POPULAR = 1


def majority_vote_rewards(answers: Tensor, group_size: int, generator: torch.Generator) -> Tensor:
    """``(N,)`` rewards, 1.0 where a sample's answer is its group's (tie-broken) mode.

    Args:
        answers: ``(N,)`` integer answer ids, groups of ``group_size`` contiguous (TRL's
            layout); :data:`NO_ANSWER` (-1) for a sample without an answer.
        group_size: samples per prompt, G >= 1.
        generator: draws the tie-breaks (one uniform choice among the tied modes of each
            group that has a tie).

    Returns:
        float rewards; a group whose samples all lack an answer gets 0 everywhere.

    >>> g = torch.Generator().manual_seed(0)
    >>> majority_vote_rewards(torch.tensor([3, 3, 5, 7,  2, -1, 2, 2]), 4, g)
    tensor([1., 1., 0., 0., 1., 0., 1., 1.])
    """
    if not isinstance(answers, Tensor) or answers.dim() != 1 or answers.is_floating_point():
        raise ValueError("answers must be a (N,) integer tensor of answer ids (-1: no answer)")
    if not isinstance(group_size, int) or group_size < 1 or answers.numel() % group_size:
        raise ValueError(f"group_size must be a positive int dividing N = {answers.numel()}, "
                         f"got {group_size!r}")
    if bool((answers < NO_ANSWER).any()):
        raise ValueError("answer ids must be >= 0, or -1 for no answer")
    grouped = answers.view(-1, group_size)  # (P, G)
    rewards = torch.zeros(grouped.shape, dtype=torch.get_default_dtype())
    for p in range(grouped.shape[0]):
        row = grouped[p]
        valid = row[row != NO_ANSWER]
        if valid.numel() == 0:
            continue
        values, counts = torch.unique(valid, return_counts=True)
        modes = values[counts == counts.max()]
        pick = 0 if modes.numel() == 1 else int(
            torch.randint(modes.numel(), (1,), generator=generator))
        rewards[p] = (row == modes[pick]).to(rewards.dtype)
    return rewards.reshape(-1)


class AnswerStrategyBandit(StrategyBandit):
    """A strategy bandit whose strategies answer: ``answers[i, s]`` is the answer strategy
    ``s`` gives to problem ``i`` (:data:`CORRECT` = 0 exactly where it solves it, a wrong
    answer id >= 1 elsewhere). Reward (the verifier) is still ``M[i, s]``.

    Args:
        solve_matrix: ``(P, S)`` 0/1, as :class:`StrategyBandit`.
        answers: ``(P, S)`` integer answer ids, 0 where ``solve_matrix`` is 1 and >= 1
            where it is 0.
    """

    def __init__(self, solve_matrix: Tensor, answers: Tensor) -> None:
        super().__init__(solve_matrix)
        answers = torch.as_tensor(answers)
        if answers.shape != self.solve_matrix.shape or answers.is_floating_point():
            raise ValueError(f"answers must be an integer ({self.num_problems}, "
                             f"{self.num_strategies}) tensor like solve_matrix, got "
                             f"{answers.dtype} {tuple(answers.shape)}")
        answers = answers.long()
        solved = self.solve_matrix > 0
        if bool((answers[solved] != CORRECT).any()) or bool((answers[~solved] < 1).any()):
            raise ValueError("answers must be 0 (correct) exactly where solve_matrix is 1 and a "
                             "wrong-answer id >= 1 where it is 0")
        self.answers = answers

    @classmethod
    def card17(
        cls,
        setting: str = "aligned",
        num_problems: int = 64,
        num_strategies: int = 64,
        num_wrong: int = 20,
        popular_rate: float = 0.1,
        other_rate: float = 0.08,
        generator: torch.Generator | None = None,
    ) -> AnswerStrategyBandit:
        """Card 17's toy. A wrong strategy answers the problem's popular wrong answer
        (:data:`POPULAR`) with probability ``popular_rate``, else one of ``num_wrong`` wrong
        answers uniformly (the popular one among them).

        - ``"aligned"``: card SB's rates, s0 solves 50%, s1 35%, the others ``other_rate``;
          the policy's prior favourite (s0) is the best strategy.
        - ``"misaligned"``: s0 solves 5% and *always* gives the popular wrong answer where it
          fails; s1 solves 50%; the others ``other_rate``: the favourite is confidently wrong.

        >>> env = AnswerStrategyBandit.card17("misaligned", generator=torch.Generator().manual_seed(0))
        >>> env.strategy_solve_rates[:2].tolist(), int((env.answers[:, 0] == 1).sum())
        ([0.046875, 0.5], 61)
        """
        if setting not in ("aligned", "misaligned"):
            raise ValueError(f"setting must be 'aligned' or 'misaligned', got {setting!r}")
        num_problems = check_int(num_problems, "num_problems", 1)
        num_strategies = check_int(num_strategies, "num_strategies", 2)
        num_wrong = check_int(num_wrong, "num_wrong", 1)
        popular_rate = check_number(popular_rate, "popular_rate", 0, 1,
                                    meaning="fraction of wrong answers that are the popular one")
        M = StrategyBandit.from_card(
            num_problems, num_strategies,
            solve_rates=(0.5, 0.35) if setting == "aligned" else (0.05, 0.5),
            other_rate=other_rate, generator=generator).solve_matrix
        shape = (num_problems, num_strategies)
        uniform = torch.randint(1, num_wrong + 1, shape, generator=generator)
        popular = torch.rand(shape, generator=generator) < popular_rate
        wrong = torch.where(popular, torch.full(shape, POPULAR), uniform)
        if setting == "misaligned":
            wrong[:, 0] = POPULAR
        return cls(M, torch.where(M > 0, torch.full(shape, CORRECT), wrong))

    def get_tensors(self) -> dict[str, Tensor]:
        return {"solve_matrix": self.solve_matrix, "answers": self.answers}

    def rollout_answers(self, rollout: Any) -> Tensor:
        """``(N,)`` the answer id of each completion (strategy) of a rollout."""
        actions = one_step_actions(rollout.prompts, rollout.actions, self.num_prompts,
                                   self.num_actions, prompt_meaning="problem index",
                                   action_meaning="strategy index")
        return self.answers[rollout.prompts, actions]

    def answer_distribution(self, policy_probs: Tensor) -> Tensor:
        """``(P, A)``: each problem's distribution over answer ids under a policy over
        strategies (shared ``(S,)`` / ``(1, S)`` or per problem ``(P, S)``)."""
        probs = self._policy_rows(torch.as_tensor(policy_probs, dtype=torch.float64))
        out = torch.zeros(self.num_problems, int(self.answers.max()) + 1, dtype=torch.float64)
        return out.scatter_add_(1, self.answers, probs.expand(self.num_problems, -1).clone())

    def answer_entropy(self, policy_probs: Tensor) -> float:
        """Mean over problems of the entropy (nats) of the answer distribution: 0 when every
        problem gets one answer for sure (the vote's collapse)."""
        q = self.answer_distribution(policy_probs)
        return float(-(q * q.clamp_min(1e-300).log()).sum(1).mean())


class MajorityVote(SandboxWrapper):
    """``env`` trained on self-consistency: each completion earns 1 when its answer is its
    group's (tie-broken) most frequent answer, else 0 (:func:`majority_vote_rewards`).

    Args:
        env: a discrete rlnb sandbox with ``rollout_answers(rollout) -> (N,)`` integer
            answer ids (:class:`AnswerStrategyBandit`). Prompts, actions, transitions and
            state features are ``env``'s; its own (gold) reward is ``env.reward_rollout``,
            and ``success_probability`` is the gold one (what the policy is judged on).

    The tie-breaks are drawn from the ``generator`` the Trainer passes to ``reward_rollout``
    (``None`` is refused: an unseeded tie-break would make a run unrepeatable).
    """

    def __init__(self, env: Sandbox) -> None:
        if not isinstance(env, Sandbox) or not callable(getattr(env, "rollout_answers", None)):
            raise TypeError(
                f"MajorityVote needs a sandbox with rollout_answers(rollout) -> (N,) answer "
                f"ids (e.g. AnswerStrategyBandit), got {type(env).__name__}")
        super().__init__(env)
        self.reward_name = "majority vote"

    # --- serialization: the wrapped sandbox's spec nested in ours ------------------------
    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"MajorityVote({self.env!r})"

    # --- the vote ------------------------------------------------------------------------
    def reward_rollout(self, rollout: Any, generator: torch.Generator | None = None) -> Tensor:
        if generator is None:
            raise ValueError("MajorityVote breaks ties at random and needs an explicit "
                             "torch.Generator (the Trainer passes its own)")
        answers = self.env.rollout_answers(rollout)
        return majority_vote_rewards(answers, rollout.group_size, generator)

    def reward(self, prompts: Tensor, actions: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(
            "a majority vote is taken within a group of completions of one prompt: use "
            "reward_rollout(rollout, generator) (the Trainer's call), or env.reward for the "
            "wrapped sandbox's gold reward")
