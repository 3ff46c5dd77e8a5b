"""SQIRL and GORP: optimal on k-QVI-solvable maps, blind where the theory says so, seeded,
and counting their episodes."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from rlnb.algos import gorp, sqirl, tie_break_greedy
from rlnb.envs.gridworld import Gridworld
from rlnb.mdp.horizon import min_qvi_k


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sqirl_reaches_the_optimal_return_on_a_k1_map():
    env = Gridworld.from_name("lock4")
    assert min_qvi_k(env.mdp()) == 1
    # lock4: the right first move succeeds with probability 4**-3 under random play, so
    # 1024 episodes per step see it about 16 times
    res = sqirl(env, k=1, episodes_per_step=1024, generator=gen(0))
    assert res.expected_return == pytest.approx(res.optimal_value, abs=1e-9)
    assert res.episodes == env.horizon * 1024 and res.env_steps == env.horizon * res.episodes
    sticky = Gridworld.from_name("open3", sticky=0.25)
    assert min_qvi_k(sticky.mdp()) == 1
    res = sqirl(sticky, k=1, episodes_per_step=1024, generator=gen(0))
    assert res.normalized_return >= 0.99


def test_sqirl_with_a_small_network():
    env = Gridworld.from_name("open3", sticky=0.25)
    res = sqirl(env, k=1, episodes_per_step=512, regressor="mlp", hidden=(32,), fit_steps=150,
                generator=gen(1))
    assert res.normalized_return >= 0.95


def test_sqirl_with_k_1_is_blind_on_the_decoy_map():
    """The decoy map is not 1-QVI-solvable: greedy on Q_rand walks into the decoy next to
    the start, and more samples only make SQIRL surer of it."""
    env = Gridworld.from_name("decoy")
    assert min_qvi_k(env.mdp()) > 1
    for m in (256, 4096):
        blind = sqirl(env, k=1, episodes_per_step=m, generator=gen(2))
        assert blind.normalized_return < 0.5


def test_gorp_opens_a_lock_and_counts_episodes():
    env = Gridworld.from_name("lock4")
    res = gorp(env, k=1, episodes_per_sequence=1024, generator=gen(3))
    assert res.normalized_return == pytest.approx(1.0)
    assert res.episodes == env.horizon * 4 * 1024
    res2 = gorp(env, k=2, episodes_per_sequence=128, generator=gen(3))
    assert res2.episodes == (3 * 16 + 4) * 128  # 4**2 sequences while 2 steps remain
    assert res2.normalized_return == pytest.approx(1.0)


def test_same_generator_same_policy():
    env = Gridworld.from_name("open3", slip=0.1)
    a = sqirl(env, k=2, episodes_per_step=64, generator=gen(4))
    b = sqirl(env, k=2, episodes_per_step=64, generator=gen(4))
    c = sqirl(env, k=2, episodes_per_step=64, generator=gen(5))
    assert torch.equal(a.policy, b.policy) and not torch.equal(a.policy, c.policy)
    g1, g2 = (gorp(env, episodes_per_sequence=8, generator=gen(6)) for _ in range(2))
    assert torch.equal(g1.policy, g2.policy)


def test_tie_break_is_uniform_over_the_seen_argmax():
    Q = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 2.0, 5.0]])
    seen = torch.tensor([[True, True, False, False], [True, True, True, False]])
    p = tie_break_greedy(Q, seen)
    assert torch.equal(p, torch.tensor([[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]], dtype=torch.float64))
    assert torch.equal(tie_break_greedy(Q, torch.zeros_like(seen))[0],
                       torch.full((4,), 0.25, dtype=torch.float64))


def test_errors():
    env = Gridworld.from_name("open3")
    with pytest.raises(ValueError, match="k must be >= 1"):
        sqirl(env, k=0)
    with pytest.raises(ValueError, match="regressor must be 'tabular' or 'mlp'"):
        sqirl(env, regressor="forest")
    with pytest.raises(ValueError, match="episodes_per_sequence must be >= 1"):
        gorp(env, episodes_per_sequence=0)


def test_docstring_examples():
    # the functions shadow their modules' names in rlnb.algos: fetch the modules themselves
    for name in ("rlnb.algos.sqirl", "rlnb.algos.gorp"):
        assert doctest.testmod(importlib.import_module(name)).failed == 0, name
