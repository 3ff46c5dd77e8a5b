"""Card 8 (ROVER): the uniform policy's Q on the tree MDP against a brute-force recursion,
the tabular theorem (greedy on it is optimal) and the softmax(Q / rho) policy's limits."""

from __future__ import annotations

import pytest
import torch

from analysis.rover import exact_metrics, greedy_policy, rover_policy
from rlnb.envs import TreeMDP


def brute_force_q(env: TreeMDP) -> torch.Tensor:
    """Q^{pi_u}(s, a) = r(s, a) at the last level, else (1/|A|) sum_a' Q^{pi_u}(s', a'),
    node by node from the definition (node n's child under a is n * b + 1 + a)."""
    b, I = env.branching, env.states_per_prompt
    Q = torch.zeros(env.num_prompts, I, b, dtype=torch.float64)

    def q(p: int, node: int, a: int) -> float:
        child = node * b + 1 + a
        if child >= I:  # a leaf: the terminal reward
            return float(env.leaf_rewards[p, child - I])
        return sum(q(p, child, a2) for a2 in range(b)) / b

    for p in range(env.num_prompts):
        for node in range(I):
            for a in range(b):
                Q[p, node, a] = q(p, node, a)
    return Q


@pytest.mark.parametrize("b, depth, seed", [(2, 3, 0), (3, 3, 1), (4, 3, 2), (2, 5, 3)])
def test_random_policy_q_is_the_uniform_bellman_recursion(b, depth, seed):
    env = TreeMDP.random(num_prompts=3, branching=b, depth=depth, reward_fraction=0.2,
                         generator=torch.Generator().manual_seed(seed))
    Q = env.random_policy_q().double()
    torch.testing.assert_close(Q, brute_force_q(env))
    uniform = torch.full((env.states_per_prompt, b), 1.0 / b)
    torch.testing.assert_close(Q, env.q_values(uniform).double())


@pytest.mark.parametrize("seed", range(5))
def test_greedy_on_the_uniform_q_is_optimal(seed):
    """The tabular theorem, on trees with very few rewarded leaves (random pick of 1-3)."""
    g = torch.Generator().manual_seed(seed)
    env = TreeMDP.random(num_prompts=8, branching=3, depth=5, reward_fraction=0.005 * (1 + seed % 3),
                         generator=g)
    success = env.success_probability(greedy_policy(env))
    torch.testing.assert_close(success.double(), env.optimal_value().double())


def test_greedy_fails_only_where_nothing_is_rewarded():
    R = torch.tensor([[0., 0., 0., 1.], [0., 0., 0., 0.]])  # prompt 1 has no rewarded leaf
    env = TreeMDP(leaf_rewards=R, branching=2, depth=2)
    assert env.success_probability(greedy_policy(env)).tolist() == [1.0, 0.0]


def test_rover_policy_interpolates_between_uniform_and_greedy():
    env = TreeMDP.random(num_prompts=4, branching=3, depth=4, reward_fraction=0.05,
                         generator=torch.Generator().manual_seed(0))
    hot = rover_policy(env, 1e6)
    torch.testing.assert_close(hot, torch.full_like(hot, 1 / 3), rtol=0, atol=1e-5)
    cold = exact_metrics(env, rover_policy(env, 1e-4))
    assert cold["pass@1"] == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(rover_policy(env, 0.02).sum(-1), torch.ones(hot.shape[0],
                                                                         dtype=torch.float64))
    m = exact_metrics(env, rover_policy(env, 0.05))
    assert 0 <= m["coverage_min_prompt"] <= m["coverage"] <= 1
    assert m["pass@256"] >= m["pass@1"]
