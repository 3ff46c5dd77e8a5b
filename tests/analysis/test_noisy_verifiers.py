"""Card 15's exact pieces: the expected update over the shared softmax against autograd and
brute-force enumeration, the corrections' effect on it, and the advantage invariances."""

from __future__ import annotations

import itertools

import pytest
import torch

from analysis import noisy_verifiers as nv
from rlnb.envs import REWARD_CORRECTIONS
from rlnb.rl import compute_advantages

M_SMALL = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # (P=2, S=3), solve rates 1, 0.5, 0


def test_clean_score_function_update_is_the_autograd_gradient():
    env, logits = nv.bandit(0)
    theta = logits.double().clone().requires_grad_(True)
    J = (torch.softmax(theta, -1) * env.solve_matrix.double().mean(0)).sum()
    (grad,) = torch.autograd.grad(J, theta)
    update = nv.expected_update(env.solve_matrix, torch.softmax(logits.double(), -1), 0.0, 0.0)
    assert torch.allclose(update, grad, atol=1e-12)


@pytest.mark.parametrize("correction", ["none", "backward", "forward"])
def test_score_function_update_is_a_scaled_clean_gradient(correction):
    rho0, rho1 = 0.1, 0.4
    pi = torch.softmax(torch.randn(3, generator=torch.Generator().manual_seed(0)).double(), -1)
    clean = nv.expected_update(M_SMALL, pi, 0.0, 0.0)
    noisy = nv.expected_update(M_SMALL, pi, rho0, rho1, correction)
    scale = 1.0 if correction == "backward" else 1 - rho0 - rho1
    assert torch.allclose(noisy, scale * clean, atol=1e-12)
    assert nv.cosine(noisy, clean) == pytest.approx(1.0, abs=1e-12)


def brute_force_group_update(M, pi, rho0, rho1, correction, scale_rewards, G):
    """E[(1/G) sum_j A_j (e_{s_j} - pi)] by enumerating every group of (strategy, verdict)
    pairs of every prompt."""
    M, pi = M.double(), pi.double()
    P, S = M.shape
    t = REWARD_CORRECTIONS[correction]
    total = torch.zeros(S, dtype=torch.float64)
    for i in range(P):
        for combo in itertools.product(range(S), (0, 1), repeat=G):
            strategies, verdicts = combo[0::2], combo[1::2]
            prob = 1.0
            for s, v in zip(strategies, verdicts, strict=True):
                q = rho0 + (1 - rho0 - rho1) * M[i, s].item()
                prob *= pi[s].item() * (q if v else 1 - q)
            rewards = t(torch.tensor(verdicts, dtype=torch.float64), rho0, rho1)
            adv = compute_advantages(rewards, G, method="grpo", scale_rewards=scale_rewards)
            for s, a in zip(strategies, adv, strict=True):
                score = -pi.clone()
                score[s] += 1
                total += prob * a * score / G
    return total / P


@pytest.mark.parametrize("scale_rewards, correction",
                         [("group", "none"), ("group", "backward"), ("none", "forward"),
                          ("none", "backward")])
def test_exact_group_update_matches_enumeration(scale_rewards, correction):
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    exact = nv.expected_update(M_SMALL, pi, 0.1, 0.3, correction, "grpo", scale_rewards,
                               group_size=3)
    brute = brute_force_group_update(M_SMALL, pi, 0.1, 0.3, correction, scale_rewards, 3)
    assert torch.allclose(exact, brute, atol=1e-12)


def test_group_std_undoes_the_backward_correction_but_not_without_std():
    env, logits = nv.bandit(1)
    pi = torch.softmax(logits.double(), -1)
    M = env.solve_matrix
    grpo = [nv.expected_update(M, pi, 0.0, 0.4, c, "grpo", "group", std_eps=1e-12)
            for c in ("none", "backward")]
    assert torch.allclose(grpo[0], grpo[1], atol=1e-10)
    dr = [nv.expected_update(M, pi, 0.0, 0.4, c, "grpo", "none") for c in ("none", "backward")]
    assert torch.allclose(dr[1], dr[0] / 0.6, atol=1e-12)


def test_advantage_invariances_hold_on_sampled_groups():
    inv = nv.advantage_invariance(0, num_groups=256)
    assert inv["grpo_backward_exact"] <= 1e-9
    assert inv["group_mean_forward"] <= 1e-9
    assert inv["dr_grpo_backward_rescale"] <= 1e-9
    assert 1e-6 < inv["grpo_backward_eps"] < 1e-3  # the trainer's std_eps = 1e-4 term
    assert 0 < inv["frac_groups_mixed"] < 1


def test_steps_to_counts_from_one_and_budget_plus_one_when_never():
    assert nv.steps_to([0.1, 0.5, 0.7], 0.5) == 2
    assert nv.steps_to([0.1, 0.2], 0.5) == 3


def test_sampled_means_target_and_bias():
    rows = nv.sampled_means(2, num_episodes=4096)
    for row in rows:
        assert abs(row["backward_z"]) < 5  # unbiased (the 3 SE check is the module's)
        assert abs(row["none_z"]) > 5  # the uncorrected mean is biased
