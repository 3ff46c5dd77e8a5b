"""Exact analysis: hand-solved maps, plain-loop oracles for the vectorised backups,
k-QVI-solvability, and the effective horizon of card 9 (lock vs open grid)."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
import torch

import rlnb.mdp.horizon as horizon_module
from rlnb.envs.gridworld import Gridworld
from rlnb.envs.layouts import open_grid
from rlnb.mdp.horizon import (
    FiniteMDP,
    bellman_backup,
    effective_horizon,
    expected_return,
    greedy_policy,
    is_k_qvi_solvable,
    min_qvi_k,
    optimal_actions,
    policy_evaluation,
    q_k,
    random_policy_q,
    value_iteration,
    worst_q,
)

HAND = "S.#\n.L.\n..G"  # shortest path: down, down, right, right (4 moves)


def test_value_iteration_on_a_hand_solved_3x3_map():
    """MiniGrid reward 1 - 0.9 * steps / T with T = 5. Distances to G: S 4, (0,1) 5,
    (1,0) 3, (2,0) 2, (2,1) 1, (1,2) 1. V*(t=0, cell) = 1 - 0.9 * d / 5 when d <= 5."""
    env = Gridworld(HAND, horizon=5, time_penalty=0.9)
    Q, V = value_iteration(env.mdp())
    V0 = env.grid_view(V[:-1], t=0)
    expected = torch.tensor([[0.28, 0.10, math.nan],  # (0,2) is a wall: never visited
                             [0.46, 0.00, 0.82],      # (1,1) lava: terminal, worth 0
                             [0.64, 0.82, 0.00]],     # (2,2) goal: terminal
                            dtype=torch.float64)
    floor = ~expected.isnan()
    assert torch.allclose(V0[floor], expected[floor], atol=1e-12)
    # Q* at the start, t = 0: up/left bump (then d = 4 from t = 1: 1 - 0.9 * 5 / 5 = 0.1),
    # right leads to (0,1) whose 5 moves no longer fit, down is the path.
    q_start = env.grid_view(Q, t=0)[0, 0]
    assert torch.allclose(q_start, torch.tensor([0.1, 0.0, 0.28, 0.1], dtype=torch.float64))
    # with 2 steps left only cells within 2 moves still pay
    V3 = env.grid_view(V[:-1], t=3)
    assert float(V3[2, 0]) == pytest.approx(1 - 0.9 * 5 / 5) and float(V3[1, 0]) == 0.0


def test_slip_and_sticky_by_hand():
    slippery = Gridworld("S.G", horizon=2, slip=0.2)  # 0.8 to go straight, twice
    assert float(slippery.optimal_value()[0]) == pytest.approx(0.8 * 0.8)
    lock = Gridworld("S.L\nL.G", horizon=3, sticky=0.25)  # right, down, right
    # no stickiness at t = 0; each later turn survives a repeat with probability 0.75
    assert float(lock.optimal_value()[0]) == pytest.approx(0.75 * 0.75)
    assert float(lock.random_value()[0]) == pytest.approx(
        0.25 * (0.75 * 0.25) * (0.75 * 0.25))  # random: 1/4, then (1 - p) / 4 twice


def _tiny_mdp(seed: int = 0, S: int = 4, A: int = 3, T: int = 4) -> FiniteMDP:
    g = torch.Generator().manual_seed(seed)
    P = torch.softmax(3 * torch.randn(S, A, S, generator=g), -1)
    R = torch.rand(T, S, A, generator=g)
    init = torch.softmax(torch.randn(S, generator=g), -1)
    return FiniteMDP(P, R, init)


def test_policy_evaluation_against_enumeration_of_histories():
    """Sum over every (state, action) history of its probability times its return."""
    mdp = _tiny_mdp(S=3, A=2, T=3)
    pi = torch.softmax(torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(1)).double(), -1)
    P, R, mu = mdp.transitions, mdp.rewards, mdp.initial
    total = 0.0
    for s0, a0, s1, a1, s2, a2 in itertools.product(range(3), range(2), range(3), range(2),
                                                    range(3), range(2)):
        prob = (mu[s0] * pi[0, s0, a0] * P[s0, a0, s1] * pi[1, s1, a1] * P[s1, a1, s2]
                * pi[2, s2, a2])
        total += float(prob * (R[0, s0, a0] + R[1, s1, a1] + R[2, s2, a2]))
    assert expected_return(mdp, pi) == pytest.approx(total, rel=1e-12)


def test_backup_matches_a_plain_loop_and_q_k_reaches_q_star():
    mdp = _tiny_mdp()
    Q = random_policy_q(mdp)
    fast = bellman_backup(mdp, Q)
    T, S, A = Q.shape
    for t in range(T):
        for s in range(S):
            for a in range(A):
                ref = mdp.rewards[t, s, a] + (
                    sum(mdp.transitions[s, a, x] * Q[t + 1, x].max() for x in range(S))
                    if t < T - 1 else 0.0)
                assert float(fast[t, s, a]) == pytest.approx(float(ref), rel=1e-12)
    Qs, _ = value_iteration(mdp)
    assert torch.allclose(q_k(mdp, T), Qs) and torch.allclose(q_k(mdp, T + 3), Qs)
    assert (worst_q(mdp) <= Q + 1e-12).all() and (Q <= Qs + 1e-12).all()
    assert is_k_qvi_solvable(mdp, T)


def test_greedy_policy_spreads_ties():
    p = greedy_policy(torch.tensor([[1.0, 3.0, 3.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(p, torch.tensor([[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))


def test_k_qvi_solvability():
    open_map = Gridworld.from_name("open5", sticky=0.25).mdp()
    assert min_qvi_k(open_map) == 1 and is_k_qvi_solvable(open_map, 1)
    # a decoy goal next to the start lures the random policy's Q: greedy on Q^1 grabs it
    decoy = Gridworld.from_name("decoy").mdp()
    assert not is_k_qvi_solvable(decoy, 1)
    k = min_qvi_k(decoy)
    assert k is not None and k > 1 and is_k_qvi_solvable(decoy, k)
    assert not is_k_qvi_solvable(decoy, k - 1)
    opt = optimal_actions(decoy)
    assert opt.shape == (decoy.horizon, decoy.num_states, 4)


def test_effective_horizon_formula_by_hand():
    """Two steps, one state that matters. At t = 0 action 0 leads to s1, where one of
    two actions pays 1; action 1 leads to a dead end s2. Q_rand(0) = 1/2, Q_rand(1) = 0,
    Q*(0) = 1, Q_worst = 0: Var = (1/2)(1) = 1/2, gap = 1/2, so
    m_1 = ceil(16 * 2 * ln(2 * 2 * 2)) = ceil(66.54) = 67 and H_1 = 1 + log_2 67 > T = 2:
    H stays at the cap T = 2."""
    P = torch.zeros(3, 2, 3)
    P[0, 0, 1] = P[0, 1, 2] = 1
    P[1, :, 2] = P[2, :, 2] = 1
    R = torch.zeros(2, 3, 2)
    R[1, 1, 0] = 1.0
    mdp = FiniteMDP(P, R, torch.tensor([1.0, 0.0, 0.0]))
    eh = effective_horizon(mdp)
    row = eh.per_k[0]
    assert row["works"] and row["m"] == math.ceil(16 * 2 * math.log(8)) == 67
    assert row["H_k"] == pytest.approx(1 + math.log2(67))
    assert eh.value == 2.0 and eh.k is None and eh.min_k == 1
    # with T = 12 (the reward still at t = 1), H_1 = 1 + log_2 ceil(16 * 2 * ln 48) < T,
    # but k = 2 looks far enough to see the reward itself: Q^2 = Q* at t = 0 and the
    # variance carried back from t = 1 is 0, so m_2 = 1 and H = H_2 = 2.
    R12 = torch.zeros(12, 3, 2)
    R12[1, 1, 0] = 1.0
    long = effective_horizon(FiniteMDP(P, R12, torch.tensor([1.0, 0.0, 0.0])))
    m = math.ceil(16 * 2 * math.log(2 * 12 * 2))
    assert long.per_k[0]["H_k"] == pytest.approx(1 + math.log2(m)) and 1 + math.log2(m) < 12
    assert long.per_k[1]["m"] == 1 and long.value == 2.0 and long.k == 2


def test_combination_lock_effective_horizon_is_close_to_its_length():
    """Card 9: H(lock) >= 0.8 T, deterministic and with sticky actions."""
    for sticky in (0.0, 0.25):
        env = Gridworld.from_name("lock8", sticky=sticky)
        eh = env.effective_horizon()
        assert eh.value >= 0.8 * env.horizon, (sticky, eh)
        assert eh.min_k == 1  # greedy on Q_rand is optimal, but its gap is 4**-7


def test_open_grid_effective_horizon_is_small():
    """Card 9's closed form: H(open grid) <= 4 holds for MiniGrid's "Empty-5x5" (a 3x3 room
    inside the walls), deterministic, T = 10, where it is exactly 4 (k = 4, m_4 = 1). The 5x5
    room with sticky actions does not meet it (about 7.5; by the definition it is 3.88, see
    tests/mdp/test_gorp_horizon.py): the card's formula pays
    log_4(16 ln(2 T A)) = 3.07 steps for the constant alone, so H_1 <= 4 needs
    Var < gap^2 at every visited state. It is still well below the lock's H / T."""
    room = effective_horizon(Gridworld(open_grid(3, 3), 10).mdp())
    assert room.value <= 4.0 and room.k == 4
    sticky5 = Gridworld.from_name("open5", sticky=0.25).effective_horizon()
    lock8 = Gridworld.from_name("lock8", sticky=0.25).effective_horizon()
    assert 1 + math.log(16 * math.log(2 * 10 * 4), 4) < sticky5.value < sticky5.horizon
    assert sticky5.value / sticky5.horizon < 0.8 <= lock8.value / lock8.horizon


def test_finite_mdp_validation():
    P = torch.full((2, 2, 2), 0.5)
    with pytest.raises(ValueError, match="transitions must have shape"):
        FiniteMDP(torch.zeros(2, 2), torch.zeros(1, 2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="distribution over next states"):
        FiniteMDP(P * 2, torch.zeros(1, 2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="pass horizon >= 1"):
        FiniteMDP(P, torch.zeros(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="initial must be a distribution"):
        FiniteMDP(P, torch.zeros(2, 2), torch.tensor([1.0, 1.0]), horizon=3)
    mdp = FiniteMDP(P, torch.zeros(2, 2), torch.tensor([1.0, 0.0]), horizon=3)
    assert mdp.rewards.shape == (3, 2, 2)
    with pytest.raises(ValueError, match="policy rows must be probabilities"):
        policy_evaluation(mdp, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="k must be >= 1"):
        q_k(mdp, 0)


def test_docstring_examples():
    assert doctest.testmod(horizon_module).failed == 0
