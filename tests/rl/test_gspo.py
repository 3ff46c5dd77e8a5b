"""GSPO against TRL's sequence-level importance sampling restated as a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from rlnb.rl import agg_loss, compute_policy_loss


def _trl_gspo(logp, old, adv, mask, eps_low, eps_high):
    """TRL GRPOTrainer, importance_sampling_level="sequence", loss_type="grpo": per
    sequence a ratio exp(mean log-ratio), -min(r A, clip(r) A), token mean per sequence,
    mean over sequences -- one completion at a time in float64 Python."""
    total = 0.0
    for i in range(len(logp)):
        valid = [t for t in range(len(logp[i])) if mask[i][t]]
        s = math.exp(sum(logp[i][t] - old[i][t] for t in valid) / max(len(valid), 1))
        clipped = min(max(s, 1 - eps_low), 1 + eps_high)
        per_token = -min(s * adv[i], clipped * adv[i])
        total += per_token  # the token mean of a constant is the constant
    return total / len(logp)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (3e-4, 4e-4)])
def test_matches_trl_sequence_level(seed, eps):
    g = torch.Generator().manual_seed(seed)
    n, t = 6, 5
    old = -2 * torch.rand(n, t, generator=g, dtype=torch.float64)
    logp = (old + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    loss, metrics = compute_policy_loss("gspo", logp, old, adv, mask, agg="grpo",
                                        epsilon=eps[0], epsilon_high=eps[1])
    want = _trl_gspo(logp.detach().tolist(), old.tolist(), adv.tolist(), mask.tolist(), *eps)
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert 0.0 <= metrics["clip_ratio/region_mean"] <= 1.0


def test_gradient_is_the_sequence_mean_of_token_gradients_on_policy():
    """On-policy (s = 1, nothing clipped) each token of sequence i gets -A_i / |y_i| / N
    under agg="grpo": GSPO's gradient, each token weighted 1 / |y|."""
    old = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.1, 0.2, 0.3]], dtype=torch.float64))
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, _ = compute_policy_loss("gspo", logp, old, adv, mask, agg="grpo")
    loss.backward()
    want = torch.tensor([[-1 / 2, -1 / 2, 0.0], [2 / 3, 2 / 3, 2 / 3]], dtype=torch.float64) / 2
    torch.testing.assert_close(logp.grad, want)


def test_whole_sequences_are_clipped_together():
    # token ratios 3 and 0.5: token-level PPO clips one token; GSPO's s = sqrt(1.5) > 1.2
    old = torch.log(torch.tensor([[0.1, 0.8]]))
    logp = torch.log(torch.tensor([[0.3, 0.4]]))
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    _, m = compute_policy_loss("gspo", logp, old, adv, mask, epsilon=0.2)
    assert m["clip_ratio/high_mean"] == 1.0  # both tokens, as one sequence
    _, m_ppo = compute_policy_loss("ppo_clip", logp, old, adv, mask, epsilon=0.2)
    assert m_ppo["clip_ratio/high_mean"] == 0.5


def test_on_policy_loss_equals_vanilla_pg_value():
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.9]]))
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 2)
    loss, _ = compute_policy_loss("gspo", lp, lp, adv, mask, agg="token-mean")
    assert loss.item() == pytest.approx(agg_loss(-adv[:, None].expand(2, 2), mask).item())


def test_trainer_runs_gspo_on_the_tree():
    from rlnb.envs import TreeMDP
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    env = TreeMDP.random(generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=5, num_prompts_per_step=4, num_generations=8, policy_loss="gspo",
                      num_iterations=2, loss_agg_mode="grpo", progress_bar=False, seed=0)
    df = Trainer(TabularPolicy.for_env(env), env, cfg).train()
    assert len(df) == 5 and df["clip_ratio/region_mean"].notna().all()
