"""Card 3's pieces: the exact per-token entropy of a tree policy and the identity rows."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from analysis.entropy_covariance import identity
from rlnb.envs import TreeMDP
from rlnb.policies import TabularPolicy
from rlnb.probes.entropy import tree_token_entropy


def entropy_by_enumeration(env: TreeMDP, probs: torch.Tensor) -> float:
    """Sum over every episode of its probability times its mean per-token entropy."""
    pi = env.action_probs(probs).double()
    b, d = env.branching, env.depth
    total = 0.0
    for p in range(env.num_prompts):
        for actions in itertools.product(range(b), repeat=d):
            node, prob, h = 0, 1.0, 0.0
            for a in actions:
                row = pi[p, node]
                h += float(-(row * row.clamp_min(1e-300).log()).sum())
                prob *= float(row[a])
                node = node * b + 1 + a
            total += prob * h / d
    return total / env.num_prompts


@pytest.mark.parametrize("seed", range(3))
def test_tree_token_entropy_matches_enumeration(seed):
    env = TreeMDP.random(num_prompts=2, branching=3, depth=3, reward_fraction=0.2,
                         generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(10 + seed)
    probs = torch.softmax(2 * torch.randn(env.num_states, env.num_actions, generator=g,
                                          dtype=torch.float64), -1)
    assert tree_token_entropy(env, probs) == pytest.approx(entropy_by_enumeration(env, probs),
                                                           rel=1e-9)


def test_tree_token_entropy_known_answers():
    env = TreeMDP.random(generator=torch.Generator().manual_seed(0))
    assert tree_token_entropy(env, TabularPolicy.for_env(env).probs()) == pytest.approx(math.log(4))
    greedy = torch.zeros(env.num_states, env.num_actions)
    greedy[:, 2] = 1.0
    assert tree_token_entropy(env, greedy) == 0.0


def test_identity_rows_cover_both_kinds_and_are_first_order():
    rows = identity(0)
    assert {r["kind"] for r in rows} == {"natural", "vanilla"}
    for r in rows:
        assert r["relative_error"] < (1e-2 if r["eta"] <= 1e-3 else 1e-3)
        assert r["correlation"] > 0.9999
