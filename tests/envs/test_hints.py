"""HintedTask: reference solutions, the three schedules, scoring, round trips, bad input."""

from __future__ import annotations

import pytest
import torch

from rlnb.envs import (
    Bandit,
    ExactMatchTask,
    HintedTask,
    TextTask,
    TreeMDP,
    addition,
    written_addition,
)
from rlnb.policies import Rollout
from rlnb.serialization import load_component, save_component


def tree(seed=0, prompts=3, depth=4, fraction=0.02):
    return TreeMDP.random(prompts, 4, depth, fraction, generator=torch.Generator().manual_seed(seed))


def test_tree_solutions_are_paths_to_the_first_rewarded_leaf():
    t = tree()
    env = HintedTask(t, "fixed", h0=2)
    sol = env.solutions
    assert sol.shape == (3, 4)
    leaves = t.leaf_index(sol)
    assert torch.equal(leaves, t.leaf_rewards.argmax(1))
    assert torch.all(t.reward(torch.arange(3), sol) == 1)
    assert env.max_hint.tolist() == [3, 3, 3]


def test_fixed_and_linear_lengths_and_the_cap():
    env = HintedTask(tree(), "fixed", h0=9)  # capped at depth - 1
    assert env.hint_lengths(torch.tensor([0, 2])).tolist() == [3, 3]
    lin = HintedTask(tree(), "linear", h0=3)
    got = [int(lin.hint_lengths(torch.tensor([0]), s, 12)[0]) for s in range(12)]
    # round(3 * (12 - s) / 12): 3 for the first steps, 0 for the last ones
    assert got == [3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="max_steps"):
        lin.hint_lengths(torch.tensor([0]), 0)


def test_adaptive_moves_by_one_toward_the_target():
    env = HintedTask(tree(prompts=4), "adaptive", h0=2, target=0.5)
    prompts = torch.tensor([0, 0, 1, 1, 2, 2])  # prompt 3 not sampled this step
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # above, below, at the target
    env.observe(prompts, rewards)
    assert env.adaptive_lengths.tolist() == [1, 3, 2, 2]
    assert env.steps_observed == 1
    env.observe(prompts, rewards)
    assert env.adaptive_lengths.tolist() == [0, 3, 2, 2]  # 3 is the cap (depth 4)
    env.observe(prompts, rewards)
    assert env.adaptive_lengths.tolist() == [0, 3, 2, 2]  # 0 is the floor
    state = env.hint_state()
    env.reset()
    assert env.adaptive_lengths.tolist() == [2, 2, 2, 2] and env.steps_observed == 0
    env.load_hint_state(state)
    assert env.adaptive_lengths.tolist() == [0, 3, 2, 2] and env.steps_observed == 3


def test_only_hinted_rollouts_move_the_schedule_and_only_once():
    t = tree()
    env = HintedTask(t, "adaptive", h0=2)
    actions = env.solutions  # every row rewarded: accuracy 1 > 0.5
    plain = Rollout(prompts=torch.arange(3), actions=actions, mask=torch.ones(3, 4, dtype=torch.bool),
                    logp=torch.zeros(3, 4), group_size=1)
    assert torch.all(env.reward_rollout(plain) == 1)
    assert env.steps_observed == 0 and env.adaptive_lengths.tolist() == [2, 2, 2]
    plain.extra["hint_length"] = torch.full((3,), 2)
    env.reward_rollout(plain)
    env.reward_rollout(plain)  # scoring the same rollout again does not move it again
    assert env.steps_observed == 1 and env.adaptive_lengths.tolist() == [1, 1, 1]


def test_text_hint_is_appended_and_scored_with_the_completion():
    task = addition(5, digits=2, seed=0)
    env = HintedTask(task, "fixed", h0=2)
    ref = task.answer(1)
    assert env.prompt(1) == task.prompt(1)  # the plain prompt outside training
    assert env.hinted_prompt(1, 2) == task.prompt(1) + ref[:2]
    assert env.max_hint.tolist() == [len(a) - 1 for a in task.answers]
    rollout = Rollout(prompts=torch.tensor([1, 1, 1]), actions=torch.zeros(3, 1, dtype=torch.long),
                      mask=torch.ones(3, 1, dtype=torch.bool), logp=torch.zeros(3, 1),
                      group_size=3, extra={"completions": [ref[2:], ref, "x"],
                                           "hint_length": torch.tensor([2, 2, 2])})
    # hint + completion is scored: the rest of the answer is right, the whole answer again
    # after the hint is not
    assert env.reward_rollout(rollout).tolist() == [1.0, 0.0, 0.0]
    del rollout.extra["hint_length"]  # a hint-free rollout: the completion alone
    assert env.reward_rollout(rollout).tolist() == [0.0, 1.0, 0.0]
    assert env.alphabet == task.alphabet and env.answers == task.answers


def test_written_addition_hints_from_its_working():
    task = written_addition(3, digits=2, seed=1)
    env = HintedTask(task, "adaptive", h0=5)
    assert env.hint_text(0, 5) == task.answer(0)[:5]
    assert env.hint_lengths(torch.arange(3)).tolist() == [5, 5, 5]


def test_round_trips(tmp_path):
    for env in (HintedTask(tree(), "adaptive", h0=3, target=0.25),
                HintedTask(addition(4, digits=2, seed=2), "linear", h0=1)):
        save_component(env, tmp_path / env.schedule, "env")
        back = load_component(tmp_path / env.schedule, "env")
        assert isinstance(back, HintedTask)
        assert (back.schedule, back.h0, back.target) == (env.schedule, env.h0, env.target)
        if env.text:
            assert back.solutions == env.solutions and back.env == env.env
        else:
            assert torch.equal(back.solutions, env.solutions)
            assert torch.equal(back.env.leaf_rewards, env.env.leaf_rewards)


class _Partial(TextTask):
    def score(self, prompt, completion):
        return 0.5


def test_bad_input():
    t = tree()
    with pytest.raises(ValueError, match="unknown hint schedule 'cosine'"):
        HintedTask(t, "cosine")
    with pytest.raises(ValueError, match="h0 must be an integer >= 0"):
        HintedTask(t, "fixed", h0=-1)
    with pytest.raises(TypeError, match="h0"):
        HintedTask(t, "fixed", h0=1.5)
    with pytest.raises(ValueError, match="target must lie in"):
        HintedTask(t, "adaptive", target=1.0)
    with pytest.raises(TypeError, match="already a HintedTask"):
        HintedTask(HintedTask(t, "fixed", 1), "fixed", 1)
    with pytest.raises(TypeError, match="rlnb sandbox"):
        HintedTask("12+34=", "fixed", 1)
    with pytest.raises(ValueError, match="horizon 1"):
        HintedTask(Bandit(means=torch.tensor([0.1, 0.9])), "fixed", 1)
    empty = TreeMDP(leaf_rewards=torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]]), branching=2, depth=2)
    with pytest.raises(ValueError, match=r"prompts \[1\] of the tree have no rewarded leaf"):
        HintedTask(empty, "fixed", 1)
    with pytest.raises(ValueError, match=r"must be a \(3, 4\) integer tensor"):
        HintedTask(t, "fixed", 1, solutions=torch.zeros(3, 3, dtype=torch.long))
    wrong = t.leaf_actions(t.leaf_rewards.argmin(1))  # unrewarded leaves
    with pytest.raises(ValueError, match="earn no reward"):
        HintedTask(t, "fixed", 1, solutions=wrong)
    task = addition(3, digits=2, seed=0)
    with pytest.raises(ValueError, match="scores 0.0, not 1.0"):
        HintedTask(task, "fixed", 1, solutions=["1", "2", "3"])
    with pytest.raises(ValueError, match="must be 3 strings"):
        HintedTask(task, "fixed", 1, solutions=["1"])
    with pytest.raises(ValueError, match="reference answer for prompt 0 .* scores 0.5"):
        HintedTask(_Partial(["a:"], ["A"]), "fixed", 1)
    ok = HintedTask(ExactMatchTask(["a:"], ["AB"]), "fixed", 1)
    with pytest.raises(TypeError, match="for text tasks"):
        HintedTask(t, "fixed", 1).prompt(0)
    with pytest.raises(IndexError, match="out of range"):
        ok.solution(3)
