"""Card 5's pieces: the exact on-policy entropy and the rescaled EAD schedule."""

import math

import pytest
import torch

from analysis import rollout_exploration as m
from rlnb.envs import TreeMDP
from rlnb.policies import TabularPolicy
from rlnb.rl import masked_mean
from rlnb.train.schedules import schedule_temperatures


def _env(seed=0):
    return TreeMDP.random(num_prompts=4, branching=3, depth=4, reward_fraction=0.1,
                          generator=torch.Generator().manual_seed(seed))


def test_on_policy_entropy_of_uniform_and_deterministic_policies():
    env = _env()
    uniform = torch.full((env.states_per_prompt, 3), 1 / 3)
    assert torch.allclose(m.on_policy_entropy(env, uniform), torch.full((4,), math.log(3),
                                                                        dtype=torch.float64))
    onehot = torch.zeros(env.states_per_prompt, 3)
    onehot[:, 1] = 1.0
    assert torch.allclose(m.on_policy_entropy(env, onehot), torch.zeros(4, dtype=torch.float64))


def test_on_policy_entropy_is_the_expectation_of_the_logged_entropy():
    env = _env()
    logits = 1.5 * torch.randn(env.num_states, 3, generator=torch.Generator().manual_seed(4))
    pi = TabularPolicy.for_env(env, logits=logits)
    r = pi.rollout(env, torch.arange(4), 20000, generator=torch.Generator().manual_seed(0))
    _, H = pi.log_probs(r)
    sampled = masked_mean(H.reshape(4, -1), r.mask.reshape(4, -1), dim=1)  # per prompt
    exact = m.on_policy_entropy(env, pi.probs()).float()
    assert torch.allclose(sampled, exact, atol=0.01)
    # visitation matters: the plain mean over all states is another number
    plain = -(pi.probs() * pi.probs().log()).sum(-1).reshape(4, -1).mean(1)
    assert not torch.allclose(plain, exact, atol=0.02)


def test_the_rescaled_schedule_cools_from_tau_max_at_the_root_to_tau_min_at_the_last_level():
    tau = schedule_temperatures(m.EAD, m.DEPTH, 0)
    assert tau[0].item() == pytest.approx(1.2) and tau[-1].item() == pytest.approx(0.1)
    assert torch.all(tau.diff() < 0)
    later = schedule_temperatures(m.EAD, m.DEPTH, 199)
    assert torch.all(later[1:-1] > tau[1:-1])  # d grows with the step: slower cooling


def test_variant_configs():
    assert m.config("ead", 0, 10).temperature_schedule["c"] == 0
    cure = m.config("cure", 0, 10)
    assert cure.cure_branches == 3 and cure.cure_stage1_steps == m.STAGE1_STEPS
    assert m.config(m.CONTROL, 0, 10).num_generations == 4
    plain = m.config("fixed", 0, 10)
    assert plain.temperature_schedule is None and plain.cure_branches == 0
