"""CURE's branching rollout and the position-by-position sampler under it."""

import pytest
import torch

from rlnb.envs import TreeMDP
from rlnb.policies import MLPPolicy, TabularPolicy
from rlnb.train import TrainConfig, Trainer
from rlnb.train.branching import branching_rollout, highest_entropy_depth, stepwise_rollout


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _env():
    return TreeMDP.random(num_prompts=3, branching=3, depth=4, reward_fraction=0.1,
                          generator=_gen())


def _policy(env, seed=1):
    logits = 2 * torch.randn(env.num_states, env.num_actions, generator=_gen(seed))
    return TabularPolicy.for_env(env, logits=logits)


def _follows_the_tree(env, r):
    nxt = torch.stack([env.next_states(r.states[:, t], r.actions[:, t])
                       for t in range(env.depth - 1)], 1)
    return torch.equal(r.states[:, 1:], nxt)


def test_highest_entropy_depth_known_values():
    H = torch.tensor([[0.1, 0.9, 0.9, 0.2], [1.0, 0.2, 5.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    assert highest_entropy_depth(H, mask).tolist() == [1, 0]


def test_stepwise_rollout_matches_the_policys_own_numbers():
    env = _env()
    pi = _policy(env)
    r = stepwise_rollout(pi, env, torch.arange(3), 5, temperatures=[1.5, 1.0, 0.7, 0.3],
                         generator=_gen())
    assert r.actions.shape == r.states.shape == r.logp.shape == (15, 4)
    assert r.prompts.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and r.group_size == 5
    assert _follows_the_tree(env, r)
    for t, tau in enumerate([1.5, 1.0, 0.7, 0.3]):
        lp, _ = pi.log_probs(r, temperature=tau)
        assert torch.allclose(r.logp[:, t], lp[:, t], atol=1e-6)


def test_stepwise_rollout_keeps_the_prefix_before_each_rows_depth():
    env = _env()
    pi = _policy(env)
    base = pi.rollout(env, torch.arange(3), 2, generator=_gen(1))
    depth = torch.tensor([0, 1, 2, 3, 3, 1])
    r = stepwise_rollout(pi, env, base.prompts, 1, generator=_gen(2), prefix=base, depth=depth)
    for i, k in enumerate(depth.tolist()):
        assert torch.equal(r.actions[i, :k], base.actions[i, :k])
        assert torch.equal(r.states[i, :k + 1], base.states[i, :k + 1])
        assert torch.equal(r.logp[i, :k], base.logp[i, :k])
    assert _follows_the_tree(env, r)
    with pytest.raises(ValueError, match="values in"):
        stepwise_rollout(pi, env, base.prompts, 1, prefix=base, depth=torch.full((6,), 4))
    with pytest.raises(ValueError, match="together"):
        stepwise_rollout(pi, env, base.prompts, 1, prefix=base)


def test_branching_rollout_layout_and_shared_prefixes():
    env = _env()
    pi = _policy(env)
    r = branching_rollout(pi, env, torch.tensor([2, 0]), 6, branches=2, generator=_gen(3))
    assert r.actions.shape == r.states.shape == r.mask.shape == (12, 4)
    assert r.group_size == 6 and r.prompts.tolist() == [2] * 6 + [0] * 6
    is_branch, depth = r.extra["is_branch"], r.extra["branch_depth"]
    assert is_branch.tolist() == [False, True, True] * 4
    assert (depth[~is_branch] == -1).all() and (depth[is_branch] >= 0).all()
    _, H = pi.log_probs(r)
    for o in range(0, 12, 3):  # each original, then its 2 branches
        k = highest_entropy_depth(H[o:o + 1], r.mask[o:o + 1]).item()
        for b in (o + 1, o + 2):
            assert depth[b].item() == k
            assert torch.equal(r.actions[b, :k], r.actions[o, :k])
            assert torch.equal(r.states[b, :k + 1], r.states[o, :k + 1])
    assert _follows_the_tree(env, r)
    lp, _ = pi.log_probs(r)
    assert torch.allclose(r.logp, lp, atol=1e-6)  # the old log-probs are the sampler's


def test_branching_rollout_is_repeatable_for_a_seed():
    env = _env()
    pi = _policy(env)
    a = branching_rollout(pi, env, torch.arange(3), 4, branches=3, generator=_gen(9))
    b = branching_rollout(pi, env, torch.arange(3), 4, branches=3, generator=_gen(9))
    c = branching_rollout(pi, env, torch.arange(3), 4, branches=3, generator=_gen(10))
    for key in ("actions", "states", "logp", "mask"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert torch.equal(a.extra["branch_depth"], b.extra["branch_depth"])
    assert not torch.equal(a.actions, c.actions)


def test_branching_rollout_with_an_mlp_policy_carries_its_features():
    env = _env()
    pi = MLPPolicy.for_env(env, hidden=(8,), seed=0)
    r = branching_rollout(pi, env, torch.arange(3), 4, branches=1, generator=_gen())
    assert r.extra["features"].shape == (12, 4, env.feature_dim)
    N, T = r.states.shape
    expected = env.state_features(r.states.reshape(-1)).reshape(N, T, -1)
    assert torch.equal(r.extra["features"], expected)
    lp, _ = pi.log_probs(r)
    assert torch.allclose(r.logp, lp, atol=1e-6)


@pytest.mark.parametrize("n, branches, words", [
    (6, 3, r"multiple of branches \+ 1"), (4, 0, "integer >= 1"), (4, True, "integer >= 1")])
def test_branching_rollout_refuses_bad_arguments(n, branches, words):
    env = _env()
    with pytest.raises(ValueError, match=words):
        branching_rollout(_policy(env), env, torch.arange(3), n, branches=branches)


def test_config_validates_cure_options():
    with pytest.raises(ValueError, match=r"cure_branches \(2\) \+ 1 must divide num_generations"):
        TrainConfig(cure_branches=2, num_generations=8)
    with pytest.raises(ValueError, match="cure_branches must be >= 0"):
        TrainConfig(cure_branches=-1)
    with pytest.raises(ValueError, match="cure_stage1_steps must be >= 0"):
        TrainConfig(cure_stage1_steps=-3)
    with pytest.raises(TypeError, match="cure_branches must be an int"):
        TrainConfig(cure_branches=1.0)


def _cfg(**kw):
    base = dict(max_steps=10, num_prompts_per_step=3, num_generations=4, learning_rate=0.1,
                progress_bar=False)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_smoke_ten_steps_with_cure():
    env = _env()
    pi = TabularPolicy.for_env(env)
    history = Trainer(pi, env, _cfg(cure_branches=1, cure_stage1_steps=5)).train()
    assert len(history) == 10
    assert history[["reward", "entropy", "loss"]].notna().all().all()
    assert not torch.equal(pi.logits, torch.zeros_like(pi.logits))


def test_cure_stage_two_is_plain_training():
    env = _env()
    runs = []
    for extra in ({}, {"cure_branches": 3, "cure_stage1_steps": 0}, {"cure_branches": 3}):
        pi = TabularPolicy.for_env(env)
        Trainer(pi, env, _cfg(**extra)).train()
        runs.append(pi.logits.detach().clone())
    assert torch.equal(runs[0], runs[1])  # no stage-1 step: the plain run, bit for bit
    assert not torch.equal(runs[0], runs[2])  # stage 1 throughout: another run


def test_text_tasks_are_refused_with_a_reason():
    from rlnb.envs.text import ExactMatchTask

    task = ExactMatchTask(prompts=["a"], answers=["b"])
    env = _env()
    with pytest.raises(TypeError, match="text task"):
        stepwise_rollout(_policy(env), task, torch.tensor([0]), 1)
