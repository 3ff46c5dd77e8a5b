"""Noisy verifiers (rlnb.envs.noisy): realised flip rates, seeding, errors, the corrections'
algebra, the wrapper as a sandbox (trainer, serialization)."""

from __future__ import annotations

import pytest
import torch

from rlnb.envs import REWARD_CORRECTIONS, Bandit, NoisyVerifier, StrategyBandit, TreeMDP
from rlnb.envs.noisy import (
    backward_correction,
    check_noise_rates,
    expected_observed_reward,
    flip_rewards,
    forward_correction,
    no_correction,
)
from rlnb.serialization import load_component, save_component


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def card_bandit(seed: int = 0) -> StrategyBandit:
    return StrategyBandit.from_card(generator=gen(seed))


# --- the noise model -------------------------------------------------------------------
@pytest.mark.parametrize("rho0, rho1", [(0.0, 0.4), (0.1, 0.3), (0.25, 0.0), (0.45, 0.45)])
def test_flip_rates_are_realised_within_3_se(rho0, rho1):
    n = 20_000
    clean = (torch.arange(2 * n) % 2).float()  # n zeros and n ones, interleaved
    noisy = flip_rewards(clean, rho0, rho1, gen(1))
    fp = noisy[clean == 0].mean().item()  # P(R~ = 1 | R = 0)
    fn = 1 - noisy[clean == 1].mean().item()  # P(R~ = 0 | R = 1)
    for realised, rate in [(fp, rho0), (fn, rho1)]:
        se = max((rate * (1 - rate) / n) ** 0.5, 0.5 / n)
        assert abs(realised - rate) <= 3 * se, (realised, rate, se)
    assert set(noisy.unique().tolist()) <= {0.0, 1.0}


def test_zero_rates_flip_nothing_and_flips_are_the_only_change():
    clean = (torch.rand(1000, generator=gen(0)) < 0.3).float()
    assert torch.equal(flip_rewards(clean, 0.0, 0.0, gen(2)), clean)
    noisy = flip_rewards(clean, 0.0, 0.4, gen(2))
    assert bool((noisy <= clean).all())  # false negatives only: a 0 never becomes 1
    noisy = flip_rewards(clean, 0.3, 0.0, gen(2))
    assert bool((noisy >= clean).all())


def test_seeded_repeatability_and_generator_stream():
    env = NoisyVerifier(card_bandit(), 0.2, 0.3)
    prompts = torch.arange(64).repeat(8)
    actions = torch.randint(64, (512,), generator=gen(3))
    a = env.reward(prompts, actions, gen(7))
    b = env.reward(prompts, actions, gen(7))
    c = env.reward(prompts, actions, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one uniform per entry whatever the verdicts: the stream consumed is fixed
    g1, g2 = gen(9), gen(9)
    flip_rewards(torch.zeros(100), 0.1, 0.2, g1)
    flip_rewards(torch.ones(100), 0.1, 0.2, g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


# --- errors ------------------------------------------------------------------------------
def test_rate_errors_say_what_was_wrong():
    with pytest.raises(ValueError, match=r"must be < 1, got 0.6 \+ 0.4 = 1.*independent"):
        check_noise_rates(0.6, 0.4)
    with pytest.raises(ValueError, match=r"false_positive_rate must lie in \[0, 1\)"):
        check_noise_rates(-0.1, 0.2)
    with pytest.raises(ValueError, match=r"false_negative_rate must lie in \[0, 1\)"):
        NoisyVerifier(card_bandit(), 0.0, 1.0)
    with pytest.raises(TypeError, match="false_negative_rate must be a real number"):
        NoisyVerifier(card_bandit(), 0.0, "0.4")
    with pytest.raises(ValueError, match=r"must be < 1.*0.7 \+ 0.5"):
        backward_correction(torch.tensor([1.0]), 0.7, 0.5)


def test_wrapper_errors():
    env = card_bandit()
    with pytest.raises(ValueError, match="unknown reward correction 'backwards'.*backward"):
        NoisyVerifier(env, 0.1, 0.1, correction="backwards")
    with pytest.raises(ValueError, match="needs an explicit torch.Generator"):
        NoisyVerifier(env, 0.1, 0.1).reward(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(TypeError, match="must be a discrete rlnb sandbox"):
        NoisyVerifier("not a sandbox", 0.1, 0.1)
    gauss = Bandit(means=torch.tensor([0.2, 0.7]), kind="gaussian")
    with pytest.raises(ValueError, match="must be binary.*flips a verdict"):
        NoisyVerifier(gauss, 0.1, 0.1).reward(torch.zeros(4, dtype=torch.long),
                                               torch.ones(4, 1, dtype=torch.long), gen(0))


# --- the corrections' algebra ----------------------------------------------------------------
@pytest.mark.parametrize("rho0, rho1", [(0.0, 0.4), (0.1, 0.3), (0.3, 0.0), (0.45, 0.5)])
def test_backward_correction_is_unbiased_for_each_true_reward(rho0, rho1):
    # exact: E[R^ | R] = P(R~=1|R) R^(1) + P(R~=0|R) R^(0) = R, for R = 0 and R = 1
    hat1, hat0 = backward_correction(torch.tensor([1.0, 0.0], dtype=torch.float64), rho0, rho1)
    assert (1 - rho1) * hat1 + rho1 * hat0 == pytest.approx(1.0, abs=1e-12)
    assert rho0 * hat1 + (1 - rho0) * hat0 == pytest.approx(0.0, abs=1e-12)
    exact = expected_observed_reward(torch.tensor([0.0, 1.0, 0.3]), rho0, rho1, "backward")
    assert torch.allclose(exact, torch.tensor([0.0, 1.0, 0.3]), atol=1e-6)


@pytest.mark.parametrize("rho0, rho1", [(0.0, 0.4), (0.1, 0.3), (0.3, 0.0), (0.45, 0.5)])
def test_forward_weights_scale_the_clean_reward_minus_one(rho0, rho1):
    # w1 = rho1, w0 = rho1 - 1; E[w | R] = (1 - rho0 - rho1)(R - 1) for R = 0 and R = 1
    w1, w0 = forward_correction(torch.tensor([1.0, 0.0], dtype=torch.float64), rho0, rho1)
    assert (w1.item(), w0.item()) == pytest.approx((rho1, rho1 - 1))
    k = 1 - rho0 - rho1
    assert (1 - rho1) * w1 + rho1 * w0 == pytest.approx(0.0, abs=1e-12)  # R = 1
    assert rho0 * w1 + (1 - rho0) * w0 == pytest.approx(-k, abs=1e-12)  # R = 0


def test_backward_mean_matches_clean_mean_sampled():
    env = card_bandit(1)
    pi = torch.softmax(StrategyBandit.card_base_logits(generator=gen(10_001)), -1)
    g = gen(5)
    n = 20_000
    prompts = env.sample_prompts(n, g)
    actions = torch.multinomial(pi, n, replacement=True, generator=g)
    r_hat = NoisyVerifier(env, 0.15, 0.35, "backward").reward(prompts, actions, g)
    clean_mean = env.success_probability(pi).mean().item()
    se = r_hat.std().item() / n ** 0.5
    assert abs(r_hat.mean().item() - clean_mean) <= 3 * se


def test_registry_holds_the_three_corrections():
    assert list(REWARD_CORRECTIONS) == ["backward", "forward", "none"]
    x = torch.tensor([0.0, 1.0])
    assert torch.equal(no_correction(x, 0.1, 0.2), x)


# --- the wrapper as a sandbox --------------------------------------------------------------
def test_wrapper_delegates_layout_and_exact_success():
    tree = TreeMDP.random(num_prompts=2, branching=2, depth=3, reward_fraction=0.25,
                          generator=gen(0))
    env = card_bandit()
    noisy = NoisyVerifier(env, 0.1, 0.2, "backward")
    assert (noisy.num_prompts, noisy.num_actions, noisy.horizon, noisy.states_per_prompt,
            noisy.num_states) == (64, 64, 1, 1, 64)
    pi = torch.softmax(torch.randn(64, generator=gen(0)), -1)
    assert torch.equal(noisy.success_probability(pi), env.success_probability(pi))
    prompts = torch.arange(64)
    actions = torch.zeros(64, dtype=torch.long)
    assert torch.allclose(noisy.expected_reward(prompts, actions), env.reward(prompts, actions))
    wrapped = NoisyVerifier(tree, 0.0, 0.3)
    assert (wrapped.horizon, wrapped.num_states) == (tree.horizon, tree.num_states) == (3, 14)
    states = tree.initial_states(torch.tensor([0, 1]))
    assert torch.equal(wrapped.next_states(states, torch.tensor([1, 0])),
                       tree.next_states(states, torch.tensor([1, 0])))


def test_wrapper_round_trips_through_a_run_directory(tmp_path):
    noisy = NoisyVerifier(card_bandit(2), 0.05, 0.4, "forward")
    save_component(noisy, tmp_path, "env")
    back = load_component(tmp_path, "env")
    assert type(back) is NoisyVerifier and back.spec() == noisy.spec()
    assert torch.equal(back.env.solve_matrix, noisy.env.solve_matrix)


def test_trainer_runs_on_the_wrapper_and_is_repeatable():
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    def train() -> list[float]:
        env = NoisyVerifier(card_bandit(), 0.0, 0.4, "backward")
        pi = TabularPolicy.for_env(env, shared=True)
        cfg = TrainConfig(seed=3, max_steps=4, num_generations=4, num_prompts_per_step=8,
                          advantage="grpo", scale_rewards="none", optimizer="sgd",
                          learning_rate=1.0, progress_bar=False)
        return Trainer(pi, env, cfg).train()["reward"].tolist()

    a, b = train(), train()
    assert a == b and len(a) == 4
    # backward-corrected rewards with rho0 = 0 are 0 or 1 / 0.6
    assert all(0 <= r <= 1 / 0.6 + 1e-6 for r in a)


def test_a_run_directory_on_the_wrapper_resumes(tmp_path):
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    def trainer(steps: int) -> Trainer:
        env = NoisyVerifier(card_bandit(), 0.1, 0.3, "backward")
        cfg = TrainConfig(seed=1, max_steps=steps, num_generations=4, num_prompts_per_step=4,
                          optimizer="sgd", learning_rate=1.0, save_steps=1, progress_bar=False)
        return Trainer(TabularPolicy.for_env(env, shared=True), env, cfg, run_dir=tmp_path)

    with trainer(2) as t:
        t.train()
    with trainer(3) as t:
        assert t.step == 2  # the same noisy sandbox was recognised: training continues
        t.train()
        assert t.step == 3
