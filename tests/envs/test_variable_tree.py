"""The variable-length tree: EOS ends a completion, exact answers match sampling."""

from __future__ import annotations

import pytest
import torch

from rlnb.envs.variable_tree import VariableLengthTree
from rlnb.policies import TabularPolicy
from rlnb.rl import AGG_MODES
from rlnb.serialization import load_component, save_component
from rlnb.train import TrainConfig, Trainer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_env(seed: int = 0) -> VariableLengthTree:
    return VariableLengthTree.random(num_prompts=3, branching=3, depth=4, reward_fraction=0.2,
                                     generator=gen(seed))


def random_policy(env: VariableLengthTree, seed: int) -> TabularPolicy:
    logits = torch.randn(env.num_states, env.num_actions, generator=gen(seed))
    return TabularPolicy.for_env(env, logits=logits)


def test_answers_lengths_and_truncation_counts():
    env = VariableLengthTree.random(generator=gen(0))  # b = 4, depth 6
    assert env.num_answers == sum(3**L for L in range(6)) == 364
    assert env.answer_rewards().sum(1).tolist() == [11.0] * 16
    lengths, truncated = env.completion_lengths(), env.truncated_leaves()
    assert int(truncated.sum()) == 3**6
    assert lengths.min() == 1 and lengths.max() == 6
    assert (lengths[truncated] == 6).all()
    uniform = torch.full((env.states_per_prompt, 4), 0.25)
    torch.testing.assert_close(env.truncation_probability(uniform),
                               torch.full((16,), 0.75**6), rtol=1e-6, atol=1e-6)


def test_rollout_mask_stops_after_eos_and_rewards_match_the_answer():
    env = small_env(1)
    pi = random_policy(env, 2)
    ro = pi.rollout(env, torch.arange(env.num_prompts), 200, generator=gen(3))
    leaves = env.leaf_index(ro.actions)
    torch.testing.assert_close(ro.mask.sum(1), env.completion_lengths()[leaves])
    # the mask is a prefix: once off, it stays off
    assert (ro.mask[:, 1:] <= ro.mask[:, :-1]).all()
    # the token before the mask ends is EOS unless the completion was truncated
    last = ro.actions[torch.arange(len(ro)), ro.mask.sum(1) - 1]
    truncated = env.truncated_leaves()[leaves]
    assert (last[~truncated] == env.eos_token).all()
    # rewards depend only on the answer: rewriting the tokens after EOS changes nothing
    scrambled = torch.where(ro.mask, ro.actions, (ro.actions + 1) % env.num_actions)
    torch.testing.assert_close(env.reward(ro.prompts, ro.actions),
                               env.reward(ro.prompts, scrambled))
    assert (env.reward(ro.prompts, ro.actions)[truncated] == 0).all()


def test_exact_answers_match_monte_carlo():
    env = small_env(4)
    pi = random_policy(env, 5)
    probs = pi.probs()
    n = 20_000
    ro = pi.rollout(env, torch.arange(env.num_prompts), n, generator=gen(6))
    r = env.reward(ro.prompts, ro.actions).view(env.num_prompts, n)
    length = ro.mask.sum(1).float().view(env.num_prompts, n)
    trunc = env.truncated_leaves()[env.leaf_index(ro.actions)].float().view(env.num_prompts, n)
    torch.testing.assert_close(r.mean(1), env.success_probability(probs), atol=0.015, rtol=0)
    torch.testing.assert_close(length.mean(1), env.expected_length(probs), atol=0.03, rtol=0)
    torch.testing.assert_close(trunc.mean(1), env.truncation_probability(probs), atol=0.015,
                               rtol=0)
    wrong = (length * (1 - r)).sum(1) / (1 - r).sum(1)
    torch.testing.assert_close(wrong, env.expected_length(probs, "wrong"), atol=0.05, rtol=0)
    stats = env.length_stats(probs)
    assert stats["exact/pass@1"] == pytest.approx(float(env.success_probability(probs).mean()))
    assert stats["exact/length"] == pytest.approx(float(env.expected_length(probs).mean()))


def test_is_terminal_marks_every_node_below_an_eos():
    env = small_env(0)
    I = env.states_per_prompt
    states = torch.arange(env.num_states)
    path = env.state_actions(states)  # (S, depth), padded with b
    expected = (path == env.eos_token).any(dim=1)
    assert torch.equal(env.is_terminal(states), expected)
    assert not env.is_terminal(torch.tensor([0, I, 2 * I])).any()  # roots


def test_from_answers_and_consistency_errors():
    env = VariableLengthTree.from_answers([[(1,), (2, 1)], [()]], branching=3, depth=3)
    uniform = torch.full((env.states_per_prompt, 3), 1 / 3)
    torch.testing.assert_close(env.success_probability(uniform),
                               torch.tensor([1 / 9 + 1 / 27, 1 / 3]))
    torch.testing.assert_close(env.expected_length(uniform, "correct"),
                               torch.tensor([(2 / 9 + 3 / 27) / (4 / 27), 1.0]))
    with pytest.raises(ValueError, match="fewer than depth"):
        VariableLengthTree.from_answers([[(1, 1, 1)]], branching=3, depth=3)
    with pytest.raises(ValueError, match="each in 1..2"):
        VariableLengthTree.from_answers([[(0, 1)]], branching=3, depth=3)
    bad = env.leaf_rewards.clone()
    bad[0, 1] = 1.0  # tokens (0, 0, 1): the empty answer, unlike leaf 0
    with pytest.raises(ValueError, match="only on the tokens up to the first EOS"):
        VariableLengthTree(bad, branching=3, depth=3)
    trunc = torch.zeros(1, 27)
    trunc[0, 26] = 1.0  # tokens (2, 2, 2): no EOS
    with pytest.raises(ValueError, match="truncated"):
        VariableLengthTree(trunc, branching=3, depth=3)
    with pytest.raises(ValueError, match="reward_fraction"):
        VariableLengthTree.random(reward_fraction=0.0)


def test_seeding_and_round_trip(tmp_path):
    a, b = small_env(7), small_env(7)
    assert torch.equal(a.leaf_rewards, b.leaf_rewards)
    assert not torch.equal(a.leaf_rewards, small_env(8).leaf_rewards)
    save_component(a, tmp_path, "env")
    c = load_component(tmp_path, "env")
    assert type(c) is VariableLengthTree and torch.equal(c.leaf_rewards, a.leaf_rewards)
    assert "EOS" in repr(c)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_trainer_smoke(agg):
    env = small_env(0)
    pi = TabularPolicy.for_env(env)
    cfg = TrainConfig(max_steps=5, num_prompts_per_step=3, num_generations=8, loss_agg_mode=agg,
                      optimizer="adam", learning_rate=0.1, progress_bar=False)
    hist = Trainer(pi, env, cfg, callbacks=[lambda t, m: env.length_stats(t.policy.probs())]).train()
    assert len(hist) == 5
    assert (hist["completions/max_length"] <= env.depth).all()
    assert hist["completions/min_length"].min() >= 1
    assert hist["exact/pass@1"].notna().all()


def test_doctests():
    import doctest

    import rlnb.envs.variable_tree as module

    assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
