"""REINFORCE++ against verl's formulas restated on token tensors (variable lengths)."""

from __future__ import annotations

import pytest
import torch

from rlnb.rl import compute_advantages


def _verl_masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl.utils.torch_functional.masked_whiten (shift_mean=True, unbiased variance)."""
    m = mask.to(values.dtype)
    mean = (values * m).sum() / m.sum()
    var = (((values - mean) ** 2) * m).sum() / m.sum()
    var = var * m.sum() / (m.sum() - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def _verl_rpp(rewards: torch.Tensor, mask: torch.Tensor, baseline: bool, group: int):
    n, t = mask.shape
    scores = rewards.clone()
    if baseline:
        for g in range(n // group):
            rows = slice(g * group, (g + 1) * group)
            scores[rows] = scores[rows] - (scores[rows].mean() if group > 1 else 0.0)
    # outcome reward at the last valid token; gamma = 1 returns = the score at every token
    token_rewards = torch.zeros(n, t, dtype=rewards.dtype)
    last = mask.sum(-1) - 1
    token_rewards[torch.arange(n), last] = scores
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros(n, dtype=rewards.dtype)
    for k in reversed(range(t)):
        running = token_rewards[:, k] + running
        returns[:, k] = running
        running = running * mask[:, k]
    return _verl_masked_whiten(returns, mask) * mask


@pytest.mark.parametrize("method", ["reinforce_plus_plus", "reinforce_plus_plus_baseline"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_verl_token_level(method, seed):
    g = torch.Generator().manual_seed(seed)
    n, t, group = 12, 7, 4
    rewards = torch.randint(0, 2, (n,), generator=g).double()
    rewards[0] = 1.0 - rewards[1]  # never all equal
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ours = compute_advantages(rewards, group, method=method, mask=mask)  # (N,)
    want = _verl_rpp(rewards, mask, method.endswith("baseline"), group)  # (N, T)
    torch.testing.assert_close(ours[:, None] * mask, want, rtol=1e-12, atol=1e-12)


def test_without_mask_each_completion_counts_once():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    a = compute_advantages(r, 2, method="reinforce_plus_plus")
    assert a.mean().abs() < 1e-7 and a.std().item() == pytest.approx(1.0, rel=1e-6)


def test_long_completions_weigh_more_with_mask():
    r = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    a = compute_advantages(r, 1, method="reinforce_plus_plus", mask=mask)
    # token mean 0.8: the long correct completion sits closer to it than the short wrong one
    assert abs(a[0]) < abs(a[1])


def test_errors():
    with pytest.raises(ValueError, match="at least 2 valid tokens"):
        compute_advantages(torch.tensor([1.0]), 1, method="reinforce_plus_plus")
    with pytest.raises(ValueError, match="mask must be"):
        compute_advantages(torch.tensor([1.0, 0.0]), 2, method="reinforce_plus_plus",
                           mask=torch.ones(3, 2))


@pytest.mark.parametrize("method", ["reinforce_plus_plus", "reinforce_plus_plus_baseline"])
def test_trainer_runs_it_on_the_tree(method):
    from rlnb.envs import TreeMDP
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    env = TreeMDP.random(generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=20, num_prompts_per_step=4, num_generations=8,
                      advantage=method, progress_bar=False, seed=0)
    df = Trainer(TabularPolicy.for_env(env), env, cfg).train()
    assert len(df) == 20 and df["reward"].notna().all()
