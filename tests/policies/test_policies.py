"""Tabular and MLP policies on the common protocol: sampling, log-probs, entropy, masks."""

import math

import pytest
import torch

from rlnb.envs import Bandit, StrategyBandit, TreeMDP
from rlnb.policies import MLPPolicy, TabularPolicy


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_tabular_sampling_frequencies_match_softmax():
    env = Bandit(means=torch.tensor([0.1, 0.5, 0.9]))
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    pi = TabularPolicy.for_env(env, logits=logits)
    r = pi.rollout(env, torch.tensor([0]), 20000, generator=_gen())
    freq = torch.bincount(r.actions[:, 0], minlength=3).float() / 20000
    expected = torch.softmax(logits[0], -1)
    se = (expected * (1 - expected) / 20000).sqrt()
    assert torch.all((freq - expected).abs() < 4 * se)


def test_temperature_flattens_and_sharpens():
    env = Bandit(means=torch.tensor([0.1, 0.5, 0.9]))
    pi = TabularPolicy.for_env(env, logits=torch.tensor([[0.0, 1.0, 2.0]]))
    r = pi.rollout(env, torch.tensor([0]), 4, generator=_gen())
    _, h1 = pi.log_probs(r, temperature=1.0)
    _, h_hot = pi.log_probs(r, temperature=10.0)
    _, h_cold = pi.log_probs(r, temperature=0.1)
    assert h_cold.mean() < h1.mean() < h_hot.mean() < math.log(3) + 1e-6


def test_rollout_logp_equals_recomputed_logp_and_groups_are_contiguous():
    env = TreeMDP.random(num_prompts=3, branching=3, depth=4, reward_fraction=0.1,
                         generator=_gen(1))
    pi = TabularPolicy.for_env(env)
    with torch.no_grad():
        pi.logits.normal_(generator=_gen(2))
    prompts = torch.tensor([2, 0, 1])
    r = pi.rollout(env, prompts, 5, temperature=0.7, generator=_gen(3))
    assert r.actions.shape == (15, 4) and r.mask.all()
    assert torch.equal(r.prompts, prompts.repeat_interleave(5))
    logp, ent = pi.log_probs(r, temperature=0.7)
    assert torch.allclose(logp, r.logp, atol=1e-6)
    assert (ent >= 0).all()
    # the visited states follow the tree's transitions
    s = env.initial_states(r.prompts)
    for t in range(4):
        assert torch.equal(r.states[:, t], s)
        if t < 3:
            s = env.next_states(s, r.actions[:, t])


def test_shared_policy_uses_one_row_for_all_prompts():
    env = StrategyBandit.from_card(generator=_gen())
    pi = TabularPolicy.for_env(env, shared=True)
    assert pi.logits.shape == (1, env.num_actions)
    r = pi.rollout(env, torch.arange(4), 3, generator=_gen())
    logp, _ = pi.log_probs(r)
    logp.sum().backward()
    assert pi.logits.grad.shape == (1, env.num_actions)
    assert torch.allclose(env.success_probability(pi.probs()),
                          env.success_probability(pi.probs().expand(env.num_states, -1)))


def test_log_probs_respect_the_mask():
    env = Bandit(means=torch.tensor([0.2, 0.8]))
    pi = TabularPolicy.for_env(env)
    r = pi.rollout(env, torch.tensor([0]), 6, generator=_gen())
    r.mask[::2] = False
    logp, ent = pi.log_probs(r)
    assert (logp[~r.mask] == 0).all() and (ent[~r.mask] == 0).all()
    assert (logp[r.mask] < 0).all()


def test_same_generator_same_samples():
    env = TreeMDP.random(num_prompts=2, branching=4, depth=3, reward_fraction=0.2,
                         generator=_gen())
    pi = MLPPolicy.for_env(env, hidden=(16,), seed=3)
    a = pi.rollout(env, torch.tensor([0, 1]), 8, generator=_gen(5)).actions
    b = pi.rollout(env, torch.tensor([0, 1]), 8, generator=_gen(5)).actions
    assert torch.equal(a, b)


def test_mlp_log_probs_match_rollout_and_have_gradients():
    env = TreeMDP.random(num_prompts=2, branching=4, depth=3, reward_fraction=0.2,
                         generator=_gen())
    pi = MLPPolicy.for_env(env, hidden=(16, 16), activation="relu")
    r = pi.rollout(env, torch.tensor([0, 1]), 4, generator=_gen())
    logp, ent = pi.log_probs(r)
    assert torch.allclose(logp, r.logp, atol=1e-6)
    logp.sum().backward()
    assert all(p.grad is not None for p in pi.parameters())
    table = pi.probs(env)
    assert table.shape == (env.num_states, env.num_actions)
    assert torch.allclose(table.sum(-1), torch.ones(env.num_states))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_states": 0, "num_actions": 2}, "num_states must be an integer >= 1"),
        ({"num_states": 2, "num_actions": 2, "logits": torch.zeros(3, 2)}, "logits must have shape"),
    ],
)
def test_tabular_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabularPolicy(**kwargs)


def test_bad_sampling_arguments():
    env = Bandit(means=torch.tensor([0.2, 0.8]))
    pi = TabularPolicy.for_env(env)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pi.rollout(env, torch.tensor([0]), 2, temperature=0.0)
    with pytest.raises(ValueError, match="n \\(completions per prompt\\)"):
        pi.rollout(env, torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPPolicy(4, 2, activation="gelu")
