"""The effective horizon by its definition (rollouts GORP needs): hand-computed failure
probabilities, agreement with a simulation of rlnb's GORP, card 9's lock-vs-grid contrast,
and the Bernstein bound for returns that are not 0/1."""

from __future__ import annotations

import math

import pytest
import torch

from rlnb.algos import gorp
from rlnb.envs.gridworld import Gridworld
from rlnb.mdp.gorp_horizon import (
    gorp_effective_horizon,
    gorp_failure_probability,
    sequence_values,
)
from rlnb.mdp.horizon import FiniteMDP, effective_horizon, random_policy_q


def bandit(*ps: float) -> FiniteMDP:
    """One step; action ``a`` pays 1 with probability ``ps[a]`` (the payout is a transition
    to a 'won' state, so returns are 0/1)."""
    A = len(ps)
    P = torch.zeros(3, A, 3, dtype=torch.float64)
    R = torch.zeros(1, 3, A, dtype=torch.float64)
    for a, p in enumerate(ps):
        P[0, a, 1], P[0, a, 2] = p, 1 - p
        R[0, 0, a] = p
    P[1, :, 1] = P[2, :, 2] = 1
    return FiniteMDP(P, R, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), returns=(0.0, 1.0))


def test_one_step_failure_by_hand():
    """m = 1: X_good, X_bad Bernoulli(0.2), Bernoulli(0.1). GORP errs when X_bad > X_good
    (0.1 * 0.8 = 0.08) and, on a tie (0.2 * 0.1 + 0.8 * 0.9 = 0.74), half the time at
    random or always when ties go against it."""
    mdp = bandit(0.2, 0.1)
    assert gorp_failure_probability(mdp, 1, 1) == pytest.approx(0.08 + 0.37, abs=1e-12)
    assert gorp_failure_probability(mdp, 1, 1, ties="worst") == pytest.approx(0.82, abs=1e-12)
    # m = 2: counts 0..2 each; sum the table directly
    from scipy.stats import binom
    g, b = binom.pmf(range(3), 2, 0.2), binom.pmf(range(3), 2, 0.1)
    lose = sum(g[x] * b[y] for x in range(3) for y in range(3) if y > x)
    tie = sum(g[x] * b[x] for x in range(3))
    assert gorp_failure_probability(mdp, 1, 2) == pytest.approx(lose + tie / 2, abs=1e-12)
    # more rollouts, fewer mistakes; the smallest m with failure <= 1/2 is m = 1 here
    fails = [gorp_failure_probability(mdp, 1, m) for m in (1, 4, 16, 64, 256)]
    assert fails == sorted(fails, reverse=True) and fails[-1] < 0.02
    eh = gorp_effective_horizon(mdp)
    assert eh.per_k[0]["m"] == 1 and eh.value == pytest.approx(1.0)


@pytest.mark.parametrize("ties", ["uniform", "worst"])
def test_failure_against_brute_force_enumeration(ties):
    """Three arms, m = 40: enumerate every triple of success counts."""
    import itertools

    from scipy.stats import binom
    ps, m = (0.30, 0.22, 0.27), 40
    pmf = [binom.pmf(range(m + 1), m, p) for p in ps]
    fail = 0.0
    for counts in itertools.product(range(m + 1), repeat=3):
        prob = pmf[0][counts[0]] * pmf[1][counts[1]] * pmf[2][counts[2]]
        best = [a for a in range(3) if counts[a] == max(counts)]
        wrong = sum(a != 0 for a in best)
        fail += prob * (min(wrong, 1) if ties == "worst" else wrong / len(best))
    assert gorp_failure_probability(bandit(*ps), 1, m, ties) == pytest.approx(fail, abs=1e-10)


def test_unlimited_rollouts_that_still_fail_give_an_infinite_horizon():
    """With slip 0.3 and sticky 0.25 on the open 5x5 map, GORP's open-loop sequences of
    k <= 4 actions point the wrong way too often even when their values are known exactly:
    H is infinite (decided without searching m)."""
    mdp = Gridworld.from_name("open5", slip=0.3, sticky=0.25).mdp()
    assert gorp_failure_probability(mdp, 1, math.inf) > 0.5
    eh = gorp_effective_horizon(mdp)
    assert math.isinf(eh.value) and all(r["m"] == math.inf for r in eh.per_k)


def test_worst_ties_need_more_rollouts():
    mdp = bandit(0.05, 0.04, 0.04, 0.04)
    uni = gorp_effective_horizon(mdp)
    worst = gorp_effective_horizon(mdp, ties="worst")
    assert worst.per_k[0]["m"] > uni.per_k[0]["m"] > 1
    m = int(uni.per_k[0]["m"])
    assert gorp_failure_probability(mdp, 1, m) <= 0.5 < gorp_failure_probability(mdp, 1, m - 1)


@pytest.mark.parametrize(("k", "m"), [(1, 24), (2, 6)])
def test_exact_failure_matches_a_simulation_of_gorp(k, m):
    """rlnb.algos.gorp on the deterministic open 5x5 map, 300 seeds: its failure rate
    agrees with the exact probability within 4 standard errors."""
    env = Gridworld.from_name("open5")
    exact = gorp_failure_probability(env.mdp(), k, m)
    n = 300
    fails = sum(gorp(env, k=k, episodes_per_sequence=m,
                     generator=torch.Generator().manual_seed(s)).normalized_return < 1 - 1e-9
                for s in range(n))
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(fails / n - exact) <= 4 * se, (fails / n, exact)


def test_sequence_values_extend_q_rand():
    mdp = Gridworld.from_name("open3", sticky=0.25).mdp()
    Qr = random_policy_q(mdp)
    assert torch.equal(sequence_values(mdp, Qr, 1), Qr)
    q2 = sequence_values(mdp, Qr, 2)  # (T, S, 16): averaging the 2nd action gives Q^rand
    assert torch.allclose(q2.view(*Qr.shape, 4).mean(-1), Qr, atol=1e-12)


def test_card9_lock_against_open_grid_by_the_definition():
    """Card 9: H(lock8) >= 0.8 T and H(open 5x5, T = 10) <= 4, with the paper's sticky
    actions, by the definition (ties at random). The closed-form bound exceeds both."""
    lock = Gridworld.from_name("lock8", sticky=0.25)
    grid = Gridworld.from_name("open5", sticky=0.25)
    h_lock = lock.effective_horizon(method="gorp")
    h_grid = grid.effective_horizon(method="gorp")
    assert h_lock.value >= 0.8 * lock.horizon
    assert h_grid.value <= 4.0 and h_grid.per_k[0]["exact"]
    assert h_grid.value < grid.effective_horizon().value  # the bound: 7.46
    assert h_lock.value > h_grid.value + 4


def test_cap_and_infinite():
    """Deterministic maps are capped at T (k = T, m = 1 is exhaustive search); a map no
    k <= 4 can solve (the decoy: greedy on Q^k takes the decoy for k < 7) is infinite."""
    lock3 = Gridworld.from_name("lock3")
    assert gorp_effective_horizon(lock3.mdp()).value <= lock3.horizon
    assert gorp_failure_probability(lock3.mdp(), 3, 1) == 0.0
    decoy = Gridworld.from_name("decoy", sticky=0.25)
    eh = decoy.effective_horizon(method="gorp", m_max=2**12)
    assert math.isinf(eh.value) and not any(r["works"] for r in eh.per_k)


def test_bernstein_bound_is_no_smaller_than_the_exact_m():
    """Declaring returns other than 0/1 switches to the Bernstein bound: an upper bound
    on the failure probability, so it needs at least the exact m (ties against GORP)."""
    env = Gridworld.from_name("corridor")
    mdp = env.mdp()
    relaxed = FiniteMDP(mdp.transitions, mdp.rewards, mdp.initial, returns=(0.0, 0.5, 1.0))
    exact = gorp_effective_horizon(mdp, max_k=1, ties="worst").per_k[0]
    bound = gorp_effective_horizon(relaxed, max_k=1).per_k[0]
    assert not bound["exact"] and exact["exact"]
    assert bound["m"] >= exact["m"]


def test_bad_arguments():
    mdp = Gridworld.from_name("open3").mdp()
    with pytest.raises(ValueError, match="ties must be"):
        gorp_effective_horizon(mdp, ties="first")
    with pytest.raises(ValueError, match="failure must lie"):
        gorp_effective_horizon(mdp, failure=1.0)
    with pytest.raises(ValueError, match="k and m must be >= 1"):
        gorp_failure_probability(mdp, 0, 4)
    with pytest.raises(ValueError, match="m_max must be"):
        gorp_effective_horizon(mdp, m_max=0)
    one = FiniteMDP(torch.ones(2, 1, 2) / 2, torch.zeros(3, 2, 1), torch.tensor([1.0, 0.0]))
    for fn in (gorp_effective_horizon, effective_horizon):
        with pytest.raises(ValueError, match="at least 2 actions"):
            fn(one)
    with pytest.raises(ValueError, match="method must be"):
        Gridworld.from_name("open3").effective_horizon(method="exact")
    assert effective_horizon(mdp).value == Gridworld.from_name("open3").effective_horizon().value


def test_docstring_examples():
    import doctest

    import rlnb.mdp.gorp_horizon as module
    assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
