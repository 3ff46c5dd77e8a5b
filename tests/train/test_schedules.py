"""EAD's per-position temperature schedule: formula, config validation, rollout, Trainer."""

import math

import pytest
import torch

from rlnb.envs import TreeMDP
from rlnb.policies import TabularPolicy
from rlnb.rl import compute_advantages
from rlnb.train import TrainConfig, Trainer
from rlnb.train.schedules import (
    check_schedule,
    ead_decay,
    ead_temperatures,
    schedule_temperatures,
    scheduled_rollout,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _env(depth=4, prompts=3):
    return TreeMDP.random(num_prompts=prompts, branching=3, depth=depth, reward_fraction=0.1,
                          generator=_gen())


def _random_policy(env, seed=1):
    logits = torch.randn(env.num_states, env.num_actions, generator=_gen(seed))
    return TabularPolicy.for_env(env, logits=logits)


# --- the formula --------------------------------------------------------------------------
def test_ead_known_values_with_the_papers_constants():
    # c = 10, tau_max = 1.2, tau_min = 0.1, d = 1000 at step 0
    tau = ead_temperatures(3000, 0, c=10, d0=1000.0)
    assert torch.equal(tau[:10], torch.ones(10, dtype=torch.float64))
    assert tau[10].item() == pytest.approx(2.2 - math.exp(0.01))
    assert tau[500].item() == pytest.approx(2.2 - math.exp(0.5))
    t_min = 1000 * math.log(2.1)  # where 2.2 - e^{t/d} reaches 0.1
    assert tau[int(t_min) + 1].item() == pytest.approx(0.1)
    assert tau[int(t_min) - 1].item() > 0.1
    assert torch.all(tau[10:].diff() <= 0)  # cools monotonically after c


def test_ead_decay_grows_five_per_step_up_to_its_cap():
    assert ead_decay(0, d0=1000.0) == 1000.0
    assert ead_decay(200, d0=1000.0) == 2000.0
    assert ead_decay(10**7, d0=1000.0) == 40000.0
    # a later step cools more slowly at the same position
    early, late = ead_temperatures(50, 0, c=0, d0=10.0), ead_temperatures(50, 4, c=0, d0=10.0)
    assert late[20].item() == pytest.approx(2.2 - math.exp(20 / 30))
    assert late[20] > early[20]


def test_ead_depth_six_scaling_spans_tau_max_to_tau_min():
    tau = ead_temperatures(6, 0, c=0, d0=5 / math.log(2.1))
    assert tau[0].item() == pytest.approx(1.2)
    assert tau[5].item() == pytest.approx(0.1)
    # the paper's c = 10 on a six-token answer: temperature 1 throughout (the footgun)
    assert torch.equal(ead_temperatures(6, 0), torch.ones(6, dtype=torch.float64))


# --- validation -----------------------------------------------------------------------------
def test_check_schedule_fills_the_defaults():
    s = check_schedule({"name": "ead", "d0": 7})
    assert s == {"name": "ead", "c": 10, "d0": 7.0, "tau_max": 1.2, "tau_min": 0.1,
                 "d_rate": 5.0, "d_max": 40000.0, "is_cap": 2.0}
    assert check_schedule(None) is None
    assert torch.equal(schedule_temperatures(s, 4, 0), ead_temperatures(4, 0, d0=7.0))


@pytest.mark.parametrize("schedule, error, words", [
    ("ead", TypeError, "must be None or a dict"),
    ({"name": "linear"}, ValueError, "must be one of ['ead']"),
    ({"name": "ead", "tau0": 1}, ValueError, "unknown temperature_schedule key(s) ['tau0']"),
    ({"name": "ead", "c": -1}, ValueError, "integer >= 0"),
    ({"name": "ead", "c": 1.5}, ValueError, "integer >= 0"),
    ({"name": "ead", "d0": 0}, ValueError, "'d0'] must be > 0"),
    ({"name": "ead", "tau_min": 2.0}, ValueError, "tau_min (2.0) must be <= tau_max"),
    ({"name": "ead", "is_cap": 0.5}, ValueError, "TIS uses 2"),
    ({"name": "ead", "d_rate": -1}, ValueError, "must be >= 0"),
    ({"name": "ead", "d0": 5e4}, ValueError, "must be <= d_max"),
    ({"name": "ead", "tau_max": "1.2"}, TypeError, "finite number, got str"),
    ({"name": "ead", "tau_max": float("nan")}, TypeError, "finite number"),
    ({"name": "ead", "c": True}, TypeError, "finite number, got bool"),
])
def test_config_refuses_a_bad_schedule_with_a_clear_error(schedule, error, words):
    with pytest.raises(error) as info:
        TrainConfig(temperature_schedule=schedule)
    assert words in str(info.value)


def test_config_schedule_round_trips_and_refuses_cure_with_it():
    cfg = TrainConfig(temperature_schedule={"name": "ead", "c": 0, "d0": 3})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.temperature_schedule["tau_max"] == 1.2
    with pytest.raises(ValueError, match="two rollout sources"):
        TrainConfig(temperature_schedule={"name": "ead"}, cure_branches=1, num_generations=4)


# --- the rollout ------------------------------------------------------------------------------
def test_scheduled_rollout_samples_each_position_at_its_temperature():
    env, schedule = _env(), {"name": "ead", "c": 1, "d0": 2.0, "is_cap": 2.0}
    pi = _random_policy(env)
    r = scheduled_rollout(pi, env, torch.arange(3), 5, schedule, step=0, generator=_gen())
    assert r.actions.shape == (15, 4) and r.group_size == 5
    assert r.prompts.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    taus = ead_temperatures(4, 0, c=1, d0=2.0)
    logits = pi.logits.detach()[r.states]  # (N, T, A)
    for t in range(4):
        mu = torch.log_softmax(logits[:, t] / taus[t].item(), -1)
        picked = mu.gather(-1, r.actions[:, t:t + 1]).squeeze(-1)
        assert torch.allclose(r.extra["behaviour_logp"][:, t], picked, atol=1e-6)
    target, _ = pi.log_probs(r)
    assert torch.allclose(r.logp, target)  # the trained policy's, so PPO's ratio starts at 1
    w = torch.exp(target - r.extra["behaviour_logp"]).clamp(max=2.0)
    assert torch.allclose(r.extra["is_weight"], w)
    assert torch.all(r.extra["is_weight"][:, 0] == 1.0)  # t < c: sampled at temperature 1
    # consecutive states follow the tree
    assert torch.equal(r.states[:, 1:], torch.stack(
        [env.next_states(r.states[:, t], r.actions[:, t]) for t in range(3)], 1))


def test_scheduled_rollout_first_action_follows_the_hot_distribution():
    env = _env(depth=2, prompts=1)
    pi = _random_policy(env, seed=3)
    schedule = {"name": "ead", "c": 0, "d0": 1.0, "tau_max": 1.8, "tau_min": 0.1}
    r = scheduled_rollout(pi, env, torch.tensor([0]), 40000, schedule, step=0, generator=_gen())
    freq = torch.bincount(r.actions[:, 0], minlength=3).double() / 40000
    hot = torch.softmax(pi.logits.detach()[0].double() / 1.8, -1)
    assert torch.allclose(freq, hot, atol=0.01)
    assert not torch.allclose(hot, torch.softmax(pi.logits.detach()[0].double(), -1), atol=0.02)


def test_scheduled_rollout_is_repeatable_for_a_seed():
    env, schedule = _env(), {"name": "ead", "c": 0, "d0": 2.0}
    pi = _random_policy(env)
    a = scheduled_rollout(pi, env, torch.arange(3), 4, schedule, step=3, generator=_gen(7))
    b = scheduled_rollout(pi, env, torch.arange(3), 4, schedule, step=3, generator=_gen(7))
    c = scheduled_rollout(pi, env, torch.arange(3), 4, schedule, step=3, generator=_gen(8))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.extra["is_weight"],
                                                             b.extra["is_weight"])
    assert not torch.equal(a.actions, c.actions)


# --- the Trainer ------------------------------------------------------------------------------
def _cfg(**kw):
    base = dict(max_steps=10, num_prompts_per_step=3, num_generations=4, learning_rate=0.5,
                optimizer="sgd", policy_loss="vanilla_pg", progress_bar=False,
                temperature_schedule={"name": "ead", "c": 0, "d0": 2.0, "d_rate": 0.5})
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_smoke_ten_steps_with_the_schedule():
    env = _env()
    pi = TabularPolicy.for_env(env)
    history = Trainer(pi, env, _cfg(policy_loss="ppo_clip", optimizer="adam")).train()
    assert len(history) == 10
    assert history[["reward", "entropy", "loss"]].notna().all().all()
    assert torch.isfinite(pi.logits).all() and not torch.equal(pi.logits, torch.zeros_like(pi.logits))


def test_trainer_weighs_each_tokens_advantage_by_the_truncated_is_weight():
    env = _env()
    cfg = _cfg(max_steps=1, seed=5)
    start = torch.randn(env.num_states, env.num_actions, generator=_gen(2))
    trained = TabularPolicy.for_env(env, logits=start)
    Trainer(trained, env, cfg).train()
    # the same step by hand: same generator draws, REINFORCE with TIS weights, token-mean
    ref = TabularPolicy.for_env(env, logits=start)
    g = _gen(5)
    prompts = env.sample_prompts(3, g)
    r = scheduled_rollout(ref, env, prompts, 4, cfg.temperature_schedule, step=0, generator=g)
    adv = compute_advantages(env.reward(r.prompts, r.actions), 4, method="grpo")
    logp, _ = ref.log_probs(r)
    loss = -(adv[:, None] * r.extra["is_weight"] * logp).sum() / r.mask.sum()
    loss.backward()
    expected = start - 0.5 * ref.logits.grad
    assert torch.allclose(trained.logits.detach(), expected, atol=1e-6)
    assert (r.extra["is_weight"] < 1).any()  # the weights are not all 1: the test can fail
