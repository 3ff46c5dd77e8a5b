"""Sandboxes: exact answers against Monte Carlo, layouts, seeding, round trips, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlnb.envs import Bandit, Sandbox, StrategyBandit, TreeMDP
from rlnb.envs.strategy_bandit import card_base_logits, exact_pass_at_k
from rlnb.serialization import load_component, save_component


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_probs(rows: int, cols: int, seed: int, scale: float = 1.5) -> torch.Tensor:
    return torch.softmax(scale * torch.randn(rows, cols, generator=gen(seed)), dim=-1)


def sample_episodes(
    env: Sandbox, probs: torch.Tensor, prompts: torch.Tensor, g: torch.Generator, shared: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tabular policy's sampling loop, written out: returns actions (N, horizon) and
    the states visited (N, horizon)."""
    s = env.initial_states(prompts)
    actions, states = [], []
    for t in range(env.horizon):
        row = s % env.states_per_prompt if shared else s
        a = torch.multinomial(probs[row], 1, generator=g)[:, 0]
        actions.append(a)
        states.append(s)
        if t < env.horizon - 1:
            s = env.next_states(s, a)
    return torch.stack(actions, 1), torch.stack(states, 1)


def assert_within_se(
    samples: torch.Tensor, exact: torch.Tensor, n_se: float = 4.0, binary: bool = True
) -> None:
    """samples (P, n) of a reward; exact (P,) means. Binary rewards use the exact
    Bernoulli variance p(1 - p) (so p = 0 demands no successes at all) plus a half-count
    continuity slack; real rewards use the sample variance."""
    n = samples.shape[1]
    if binary:
        se = (exact * (1 - exact) / n).clamp(min=0).sqrt() + 0.5 / n
    else:
        se = (samples.var(dim=1) / n).sqrt()
    err = (samples.mean(1) - exact).abs()
    assert (err <= n_se * se + 1e-6).all(), f"errors {err} exceed {n_se} SE {se}"


# --- Bandit ----------------------------------------------------------------------------


def test_bandit_optimal_arm_value_and_regret():
    env = Bandit(means=torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]]))
    assert env.num_prompts == env.num_envs == 2 and env.num_actions == env.num_arms == 3
    assert env.horizon == 1 and env.states_per_prompt == 1
    assert env.optimal_arm.tolist() == [1, 0]
    assert torch.allclose(env.optimal_value, torch.tensor([0.9, 0.7]))
    actions = torch.tensor([[1, 0, 2], [0, 0, 1]])  # (E, T)
    expected = torch.tensor([[0.0, 0.8, 0.4], [0.0, 0.0, 0.5]])
    assert torch.allclose(env.regret(actions), expected)
    got = env.regret(torch.tensor([2, 1]), prompts=torch.tensor([0, 1]))
    assert torch.allclose(got, torch.tensor([0.4, 0.5]))
    # a 1-D means is one instance
    single = Bandit(means=torch.tensor([0.3, 0.6]))
    assert single.means.shape == (1, 2) and single.optimal_arm.tolist() == [1]


def test_bandit_bernoulli_monte_carlo_matches_expected_return():
    env = Bandit.random(6, num_envs=3, generator=gen(0))
    probs = random_probs(3, 6, seed=1)  # one row per instance
    n = 20000
    prompts = torch.arange(3).repeat_interleave(n)
    actions, _ = sample_episodes(env, probs, prompts, gen(2), shared=False)
    r = env.reward(prompts, actions, gen(3))
    assert set(r.unique().tolist()) <= {0.0, 1.0}
    exact = env.expected_return(probs)
    assert_within_se(r.reshape(3, n), exact)
    assert torch.allclose(env.success_probability(probs), exact)
    # a shared (K,) policy
    shared = probs[0]
    actions, _ = sample_episodes(env, shared[None], prompts, gen(4), shared=True)
    assert_within_se(
        env.reward(prompts, actions, gen(5)).reshape(3, n), env.expected_return(shared)
    )
    assert torch.allclose(
        env.expected_return(shared), env.expected_return(shared[None].expand(3, 6))
    )


def test_bandit_gaussian_mean_and_success_probability():
    env = Bandit(means=torch.tensor([-0.5, 1.0, 0.2]), kind="gaussian", std=2.0)
    n = 50000
    prompts = torch.zeros(n, dtype=torch.long)
    r = env.reward(prompts, torch.ones(n, 1, dtype=torch.long), gen(0))
    assert abs(r.mean().item() - 1.0) < 4 * 2.0 / math.sqrt(n)
    assert abs(r.std().item() - 2.0) < 0.05
    probs = torch.tensor([0.2, 0.5, 0.3])
    actions = torch.multinomial(probs, n, replacement=True, generator=gen(1))
    r = env.reward(prompts, actions[:, None], gen(2))
    assert_within_se((r > 0).float()[None], env.success_probability(probs))
    assert_within_se(r[None], env.expected_return(probs), binary=False)
    # std = 0 is a deterministic arm; per-arm std tensors broadcast
    det = Bandit(means=torch.tensor([[1.0, -1.0]]), kind="gaussian", std=torch.tensor([0.0, 0.0]))
    assert det.reward(torch.tensor([0, 0]), torch.tensor([[0], [1]]), gen(0)).tolist() == [
        1.0,
        -1.0,
    ]
    assert det.success_probability(torch.tensor([0.25, 0.75])).tolist() == [0.25]


def test_bandit_batched_instances_are_independent():
    means = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    env = Bandit(means=means)
    changed = Bandit(means=torch.tensor([[0.2, 0.8], [0.9, 0.1]]))
    n = 20000
    prompts = torch.arange(2).repeat(n)  # interleaved: env 0, env 1, env 0, ...
    actions = torch.ones(2 * n, 1, dtype=torch.long)
    r = env.reward(prompts, actions, gen(7))
    r2 = changed.reward(prompts, actions, gen(7))
    # env 0's draws do not depend on env 1's parameters
    assert torch.equal(r[prompts == 0], r2[prompts == 0])
    assert not torch.equal(r[prompts == 1], r2[prompts == 1])
    # each instance has its own mean, and simultaneous draws are uncorrelated
    by_env = r.reshape(n, 2).T  # (E, n)
    assert_within_se(by_env, means[:, 1])
    corr = torch.corrcoef(by_env)[0, 1].item()
    assert abs(corr) < 4 / math.sqrt(n)


def test_bandit_seeding():
    env = Bandit.random(4, num_envs=2, generator=gen(0))
    assert torch.equal(env.means, Bandit.random(4, num_envs=2, generator=gen(0)).means)
    prompts = torch.randint(2, (500,), generator=gen(1))
    actions = torch.randint(4, (500, 1), generator=gen(2))
    assert torch.equal(env.reward(prompts, actions, gen(3)), env.reward(prompts, actions, gen(3)))
    assert not torch.equal(
        env.reward(prompts, actions, gen(3)), env.reward(prompts, actions, gen(4))
    )
    genv = Bandit.random(4, kind="gaussian", generator=gen(0))
    assert torch.equal(
        genv.reward(prompts * 0, actions, gen(5)), genv.reward(prompts * 0, actions, gen(5))
    )
    assert torch.equal(env.expected_reward(prompts, actions), env.means[prompts, actions[:, 0]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"means": torch.zeros(2, 0)}, r"num_arms \(K\) must be >= 1, got 0"),
        ({"means": torch.zeros(0, 3)}, r"num_envs \(E\) must be >= 1, got 0"),
        ({"means": torch.zeros(2, 2, 2)}, r"means must have shape \(K,\) or \(E, K\)"),
        (
            {"means": torch.tensor([0.1, 0.2, 0.3, -0.2])},
            r"means must lie in \[0, 1\] for Bernoulli arms; got min -0.2 at arm 3",
        ),
        (
            {"means": torch.tensor([[0.1, 0.2], [0.3, 1.5]])},
            r"means must lie in \[0, 1\] for Bernoulli arms; got max 1.5 at env 1, arm 1",
        ),
        ({"means": torch.tensor([0.1, float("nan")])}, "means must be finite"),
        (
            {"means": torch.zeros(3), "kind": "poisson"},
            r"kind must be one of \('bernoulli', 'gaussian'\)",
        ),
        ({"means": torch.zeros(3), "std": 1.0}, "std applies to Gaussian arms only"),
        ({"means": torch.zeros(3), "kind": "gaussian", "std": -1.0}, "std must be finite and >= 0"),
        (
            {"means": torch.zeros(3), "kind": "gaussian", "std": torch.ones(2)},
            r"std must be a float or broadcastable to means' shape \(1, 3\)",
        ),
    ],
)
def test_bandit_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Bandit(**kwargs)


def test_bandit_random_and_call_errors():
    with pytest.raises(ValueError, match=r"num_arms \(K\) must be an integer >= 1, got 0"):
        Bandit.random(0)
    with pytest.raises(ValueError, match=r"num_envs \(E\) must be an integer >= 1, got 0"):
        Bandit.random(3, num_envs=0)
    with pytest.raises(ValueError, match="kind must be one of"):
        Bandit.random(3, kind="cauchy")
    env = Bandit.random(5, num_envs=2, generator=gen(0))
    ok_prompts = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 4\] \(arm index\), got 5"):
        env.reward(ok_prompts, torch.tensor([[1], [5]]))
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 4\] \(arm index\), got -1"):
        env.reward(ok_prompts, torch.tensor([[-1], [2]]))
    with pytest.raises(
        ValueError, match=r"prompts must lie in \[0, 1\] \(bandit instance index\), got 2"
    ):
        env.reward(torch.tensor([0, 2]), torch.tensor([[1], [1]]))
    with pytest.raises(
        ValueError, match=r"actions must have shape \(N, 1\) or \(N,\) with N = len\(prompts\) = 2"
    ):
        env.reward(ok_prompts, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must sum to 1 over the last \(action\) dimension"):
        env.expected_return(torch.ones(5))
    with pytest.raises(ValueError, match=r"must be >= 0 \(probabilities\)"):
        env.expected_return(torch.tensor([1.5, -0.5, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"policy_probs has shape \(3, 5\)"):
        env.expected_return(torch.full((3, 5), 0.2))
    with pytest.raises(ValueError, match="actions has 3 rows but the bandit has E = 2 instances"):
        env.regret(torch.zeros(3, dtype=torch.long))


# --- StrategyBandit ----------------------------------------------------------------------


def test_strategy_bandit_from_card_column_rates():
    env = StrategyBandit.from_card(generator=gen(0))
    M = env.solve_matrix
    assert M.shape == (64, 64) and env.num_prompts == 64 and env.num_actions == 64
    assert set(M.unique().tolist()) <= {0.0, 1.0}
    counts = M.sum(0)
    assert counts[0] == 32 and counts[1] == 22  # round(0.5*64), round(0.35*64)
    assert (counts[2:] == 5).all()  # round(0.08*64)
    assert torch.allclose(env.strategy_solve_rates, counts / 64)
    other = StrategyBandit.from_card(generator=gen(1)).solve_matrix
    assert not torch.equal(M, other)
    assert torch.equal(M, StrategyBandit.from_card(generator=gen(0)).solve_matrix)
    # columns are placed independently: the two top strategies overlap by chance, not by design
    small = StrategyBandit.from_card(
        10, 3, solve_rates=(0.25, 1.0), other_rate=0.0, generator=gen(2)
    )
    assert small.solve_matrix.sum(0).tolist() == [3.0, 10.0, 0.0]  # 2.5 rounds half up to 3
    assert small.coverage() == 1.0


def test_card_base_logits():
    logits = card_base_logits(generator=gen(0))
    assert logits.shape == (64,) and logits[0] == 2.0 and logits[1] == 1.0
    big = StrategyBandit.card_base_logits(20000, generator=gen(1))[2:]
    assert abs(big.mean().item() + 1.0) < 4 / math.sqrt(big.numel())
    assert abs(big.std().item() - 1.0) < 0.05
    assert torch.equal(card_base_logits(generator=gen(3)), card_base_logits(generator=gen(3)))


def test_strategy_bandit_shared_policy_monte_carlo():
    env = StrategyBandit.from_card(generator=gen(0))
    probs = torch.softmax(card_base_logits(generator=gen(1)), -1)
    exact = env.success_probability(probs)  # (P,)
    n = 1500
    prompts = torch.arange(64).repeat_interleave(n)
    actions, states = sample_episodes(env, probs[None], prompts, gen(2), shared=True)
    assert actions.shape == (64 * n, 1) and torch.equal(states[:, 0], prompts)
    r = env.reward(prompts, actions, gen(3))
    assert_within_se(r.reshape(64, n), exact)
    # a per-problem policy
    per = random_probs(64, 64, seed=4)
    actions, _ = sample_episodes(env, per, prompts, gen(5), shared=False)
    assert_within_se(env.reward(prompts, actions).reshape(64, n), env.success_probability(per))


def test_strategy_bandit_pass_at_k_exact():
    env = StrategyBandit.from_card(generator=gen(0))
    probs = torch.softmax(card_base_logits(generator=gen(1)), -1)
    p = env.success_probability(probs)
    one = env.pass_at_k_exact(probs, 1)
    assert one.ndim == 0 and torch.allclose(one, p.mean())
    ks = torch.arange(1, 257)
    curve = env.pass_at_k_exact(probs, ks)
    assert curve.shape == (256,)
    assert (curve[1:] >= curve[:-1]).all() and (curve[1:] > curve[:-1]).any()
    assert curve[-1] <= env.coverage() + 1e-6
    # shared (S,), (1, S) and the same row repeated per problem (P, S) agree
    for form in (probs[None], probs[None].expand(64, 64)):
        assert torch.allclose(env.pass_at_k_exact(form, ks), curve)
        assert torch.allclose(env.success_probability(form), p)
    per = env.pass_at_k_exact(probs, [1, 4], per_problem=True)
    assert per.shape == (2, 64) and torch.allclose(per[1], 1 - (1 - p) ** 4)
    # known answer: M = [[1, 0], [0, 1], [0, 0]], pi = (0.75, 0.25)
    tiny = StrategyBandit(solve_matrix=torch.tensor([[True, False], [False, True], [False, False]]))
    pi = torch.tensor([0.75, 0.25])
    assert torch.allclose(tiny.success_probability(pi), torch.tensor([0.75, 0.25, 0.0]))
    expected = (1 - 0.25**2 + 1 - 0.75**2) / 3
    assert math.isclose(tiny.pass_at_k_exact(pi, 2).item(), expected, rel_tol=1e-6)
    assert math.isclose(tiny.coverage(), 2 / 3, rel_tol=1e-6)
    assert tiny.optimal_value().tolist() == [1.0, 1.0, 0.0]


def test_exact_pass_at_k_errors():
    with pytest.raises(ValueError, match=r"k must be >= 1 \(number of attempts\), got \[0\]"):
        exact_pass_at_k(torch.tensor([0.5]), 0)
    with pytest.raises(ValueError, match=r"k must be whole numbers"):
        exact_pass_at_k(torch.tensor([0.5]), torch.tensor([1.5]))


@pytest.mark.parametrize(
    "matrix, match",
    [
        (
            torch.ones(4),
            r"solve_matrix must be 2-D with shape \(num_problems, num_strategies\), got shape \(4,\)",
        ),
        (
            torch.ones(0, 3),
            r"solve_matrix needs at least 1 problem and 1 strategy, got shape .* = \(0, 3\)",
        ),
        (
            torch.ones(3, 0),
            r"solve_matrix needs at least 1 problem and 1 strategy, got shape .* = \(3, 0\)",
        ),
        (
            torch.tensor([[1.0, 0.0], [0.5, 1.0]]),
            r"solve_matrix values must be 0 or 1 .* got 0.5 at problem 1, strategy 0",
        ),
        (
            torch.tensor([[1, 2]]),
            r"solve_matrix values must be 0 or 1 .* got 2 at problem 0, strategy 1",
        ),
    ],
)
def test_strategy_bandit_matrix_errors(matrix, match):
    with pytest.raises(ValueError, match=match):
        StrategyBandit(solve_matrix=matrix)


def test_strategy_bandit_other_errors():
    with pytest.raises(ValueError, match=r"solve_rates\[1\] must lie in \[0, 1\] .* got 1.2"):
        StrategyBandit.from_card(solve_rates=(0.5, 1.2), generator=gen(0))
    with pytest.raises(ValueError, match=r"other_rate must lie in \[0, 1\] .* got -0.1"):
        StrategyBandit.from_card(other_rate=-0.1, generator=gen(0))
    with pytest.raises(ValueError, match="solve_rates has 3 entries but num_strategies is 2"):
        StrategyBandit.from_card(num_strategies=2, solve_rates=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="num_problems must be an integer >= 1, got 0"):
        StrategyBandit.from_card(num_problems=0)
    with pytest.raises(ValueError, match="num_strategies must be an integer >= 1, got 0"):
        StrategyBandit.from_card(num_strategies=0)
    with pytest.raises(ValueError, match="num_strategies must be an integer >= 1, got 0"):
        card_base_logits(0)
    env = StrategyBandit.from_card(8, 4, generator=gen(0))
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 3\] \(strategy index\), got 4"):
        env.reward(torch.tensor([0, 1]), torch.tensor([[0], [4]]))
    with pytest.raises(ValueError, match=r"prompts must lie in \[0, 7\] \(problem index\), got 8"):
        env.reward(torch.tensor([8]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match=r"policy_probs has shape \(3, 4\); expected \(1, 4\)"):
        env.success_probability(torch.full((3, 4), 0.25))


# --- TreeMDP ---------------------------------------------------------------------------


def test_tree_node_numbering_matches_leaf_index():
    b, d, P = 3, 3, 2
    env = TreeMDP.random(num_prompts=P, branching=b, depth=d, reward_fraction=0.2, generator=gen(0))
    I = env.states_per_prompt
    assert I == 13 and env.num_states == P * I and env.horizon == d and env.num_actions == b
    leaves = torch.arange(b**d).repeat(P)  # every leaf of every prompt
    prompts = torch.arange(P).repeat_interleave(b**d)
    actions = env.leaf_actions(leaves)  # (N, d)
    assert torch.equal(env.leaf_index(actions), leaves)
    assert torch.equal(env.decode_leaf(actions), leaves)
    s = env.initial_states(prompts)
    assert torch.equal(s, prompts * I)
    offsets = [0, 1, 4, 13]  # first node of each level, (b**l - 1) / (b - 1)
    for t in range(d):
        node = s % I
        assert (s // I == prompts).all()
        assert ((node >= offsets[t]) & (node < offsets[t + 1])).all()
        assert (env.state_depth(s) == t).all()
        if t < d - 1:
            s = env.next_states(s, actions[:, t])
    final_node = (s % I) * b + 1 + actions[:, -1]
    assert torch.equal(final_node - I, leaves)
    assert torch.equal(env.reward(prompts, actions), env.leaf_rewards[prompts, leaves])
    with pytest.raises(ValueError, match="next_states was called on a state at the last level"):
        env.next_states(s, actions[:, -1])


def test_tree_state_features():
    env = TreeMDP.random(
        num_prompts=3, branching=2, depth=3, reward_fraction=0.25, generator=gen(0)
    )
    states = torch.arange(env.num_states)
    f = env.state_features(states)
    assert env.feature_dim == 3 + 3 * (2 + 1)
    assert f.shape == (env.num_states, env.feature_dim) and f.dtype == torch.float32
    assert (f.sum(1) == 1 + env.depth).all()  # one prompt slot + one slot per position
    assert f.unique(dim=0).shape[0] == env.num_states  # distinct states, distinct features
    # root of prompt 2: prompt one-hot, then "not yet" at every position
    assert f[2 * env.states_per_prompt].tolist() == [0, 0, 1] + [0, 0, 1] * 3
    # node 5 = level 2, reached by actions (1, 0): 5 = (0*2 + 1 + 1)*2 + 1 + 0
    assert env.state_actions(torch.tensor([5])).tolist() == [[1, 0, 2]]
    assert f[5].tolist() == [1, 0, 0] + [0, 1, 0] + [1, 0, 0] + [0, 0, 1]


@pytest.mark.parametrize("shared", [False, True])
def test_tree_exact_success_probability_matches_monte_carlo(shared):
    env = TreeMDP.random(num_prompts=4, branching=3, depth=3, reward_fraction=0.3, generator=gen(1))
    rows = env.states_per_prompt if shared else env.num_states
    probs = random_probs(rows, env.num_actions, seed=2)
    n = 5000
    prompts = torch.arange(env.num_prompts).repeat_interleave(n)
    actions, _ = sample_episodes(env, probs, prompts, gen(3), shared=shared)
    r = env.reward(prompts, actions, gen(4))
    assert_within_se(r.reshape(env.num_prompts, n), env.success_probability(probs))
    # leaf frequencies against the exact leaf distribution
    q = env.leaf_distribution(probs)  # (P, L)
    assert torch.allclose(q.sum(1), torch.ones(env.num_prompts))
    assert torch.allclose((q * env.leaf_rewards).sum(1), env.success_probability(probs))
    leaf = env.leaf_index(actions).reshape(env.num_prompts, n)
    freq = torch.stack([torch.bincount(row, minlength=env.num_leaves) for row in leaf]) / n
    se = (q * (1 - q) / n).sqrt()
    assert ((freq - q).abs() <= 4 * se + 2e-3).all()


def test_tree_q_values_uniform_equals_random_policy_q():
    env = TreeMDP.random(
        num_prompts=5, branching=4, depth=4, reward_fraction=0.05, generator=gen(0)
    )
    uniform = torch.full((env.states_per_prompt, 4), 0.25)
    Q = env.q_values(uniform)
    assert Q.shape == (5, env.states_per_prompt, 4)
    assert torch.allclose(Q, env.random_policy_q(), atol=1e-6)
    # the same policy given one row per state
    assert torch.allclose(env.q_values(uniform.repeat(5, 1)), Q)
    # Bellman consistency of an arbitrary policy: V = sum pi Q, Q(s, a) = V(child)
    probs = random_probs(env.num_states, 4, seed=3)
    Q, V = env.q_values(probs), env.values(probs)
    pi = probs.reshape(5, -1, 4)
    assert torch.allclose(V, (pi * Q).sum(-1), atol=1e-6)
    I = env.states_per_prompt
    node = torch.arange(I)
    child = node[:, None] * 4 + 1 + torch.arange(4)  # (I, b)
    internal = child < I
    assert torch.allclose(Q[:, internal], V[:, child[internal]], atol=1e-6)
    assert torch.allclose(Q[:, ~internal], env.leaf_rewards[:, child[~internal] - I])


def test_tree_deterministic_policy_value_is_leaf_reward():
    env = TreeMDP.random(num_prompts=6, branching=3, depth=4, reward_fraction=0.3, generator=gen(5))
    choice = torch.randint(3, (env.num_states,), generator=gen(6))
    probs = torch.nn.functional.one_hot(choice, 3).float()
    prompts = torch.arange(env.num_prompts)
    s = env.initial_states(prompts)
    actions = []
    for t in range(env.horizon):
        actions.append(choice[s])
        if t < env.horizon - 1:
            s = env.next_states(s, choice[s])
    reached = env.reward(prompts, torch.stack(actions, 1))
    assert torch.equal(env.success_probability(probs), reached)
    assert torch.equal(env.values(probs)[:, 0], reached)
    leaf = env.leaf_index(torch.stack(actions, 1))
    assert torch.equal(
        env.leaf_distribution(probs), torch.nn.functional.one_hot(leaf, env.num_leaves).float()
    )


def test_tree_card_defaults_greedy_on_random_q_is_optimal():
    env = TreeMDP.random(generator=gen(0))  # card TM: 16 prompts, b=4, depth 6, 1%
    assert env.num_leaves == 4096 and env.states_per_prompt == 1365
    assert (env.leaf_rewards.sum(1) == 41).all()
    assert (env.optimal_value() == 1).all()
    Q = env.random_policy_q()  # (P, I, b)
    greedy = torch.nn.functional.one_hot(Q.argmax(-1), 4).float().reshape(env.num_states, 4)
    assert (env.success_probability(greedy) == 1).all()  # card 8: greedy on Q^{pi_u} is optimal
    assert torch.equal(env.optimal_q_values().amax(-1)[:, 0], env.optimal_value())
    uniform = torch.full((env.states_per_prompt, 4), 0.25)
    assert torch.allclose(env.success_probability(uniform), torch.full((16,), 41 / 4096))
    cov = env.coverage(uniform, 256)
    assert torch.allclose(cov, torch.full((16,), 1 - (1 - 1 / 4096) ** 256))
    assert torch.allclose(env.pass_at_k_exact(uniform, 1), env.success_probability(uniform).mean())


def test_tree_random_counts_and_seeding():
    env = TreeMDP.random(
        num_prompts=3, branching=2, depth=5, reward_fraction=0.25, generator=gen(0)
    )
    assert (env.leaf_rewards.sum(1) == 8).all()
    tiny = TreeMDP.random(
        num_prompts=3, branching=2, depth=5, reward_fraction=1e-6, generator=gen(0)
    )
    assert (tiny.leaf_rewards.sum(1) == 1).all()  # at least one rewarded leaf
    same = TreeMDP.random(
        num_prompts=3, branching=2, depth=5, reward_fraction=0.25, generator=gen(0)
    )
    assert torch.equal(env.leaf_rewards, same.leaf_rewards)
    assert not torch.equal(env.leaf_rewards[0], env.leaf_rewards[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 0}, r"depth must be an integer >= 1 \(actions per episode\), got 0"),
        ({"branching": 1}, r"branching must be an integer >= 2 \(tokens per step\), got 1"),
        ({"reward_fraction": 0.0}, r"reward_fraction must lie in \(0, 1\] .* got 0.0"),
        ({"reward_fraction": 1.5}, r"reward_fraction must lie in \(0, 1\] .* got 1.5"),
        ({"num_prompts": 0}, "num_prompts must be an integer >= 1, got 0"),
    ],
)
def test_tree_random_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeMDP.random(**kwargs)


def test_tree_constructor_and_call_errors():
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1"):
        TreeMDP(leaf_rewards=torch.zeros(1, 1), branching=2, depth=0)
    with pytest.raises(ValueError, match=r"branching must be an integer >= 2"):
        TreeMDP(leaf_rewards=torch.zeros(1, 1), branching=1, depth=2)
    with pytest.raises(
        ValueError,
        match=r"leaf_rewards must have shape \(num_prompts, branching\*\*depth\) = \(2, 8\) .* got \(2, 7\)",
    ):
        TreeMDP(leaf_rewards=torch.zeros(2, 7), branching=2, depth=3)
    with pytest.raises(ValueError, match=r"leaf_rewards must have shape .* got \(8,\)"):
        TreeMDP(leaf_rewards=torch.zeros(8), branching=2, depth=3)
    with pytest.raises(
        ValueError, match=r"leaf_rewards values must be 0 or 1 .* got 0.5 at prompt 1, leaf 2"
    ):
        TreeMDP(leaf_rewards=torch.tensor([[0.0] * 4, [0, 0, 0.5, 1]]), branching=2, depth=2)
    env = TreeMDP(leaf_rewards=torch.tensor([[0, 0, 0, 1]]), branching=2, depth=2)
    assert env.leaf_rewards.dtype == torch.float32
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 1\] \(token index\), got 2"):
        env.reward(torch.tensor([0]), torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match=r"prompts must lie in \[0, 0\] \(prompt index\), got 1"):
        env.reward(torch.tensor([1]), torch.tensor([[0, 1]]))
    with pytest.raises(
        ValueError, match=r"actions must have shape \(N, depth\) = \(N, 2\), got \(1, 3\)"
    ):
        env.reward(torch.tensor([0]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 1\] \(token index\), got 3"):
        env.next_states(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"policy_probs has shape \(2, 2\); expected \(3, 2\)"):
        env.q_values(torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="must sum to 1"):
        env.values(torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"n must be an integer >= 1 \(number of sampled episodes\), got 0"):
        env.coverage(torch.full((3, 2), 0.5), 0)


# --- round trips -------------------------------------------------------------------------


def _sandboxes():
    return [
        Bandit.random(5, num_envs=3, generator=gen(0)),
        Bandit(means=torch.tensor([0.2, 0.7])),
        Bandit.random(4, kind="gaussian", std=0.5, generator=gen(1)),
        Bandit(means=torch.zeros(2, 3), kind="gaussian", std=torch.tensor([0.1, 1.0, 2.0])),
        StrategyBandit.from_card(generator=gen(2)),
        StrategyBandit(solve_matrix=torch.tensor([[True, False], [True, True]])),
        TreeMDP.random(num_prompts=3, branching=3, depth=3, reward_fraction=0.2, generator=gen(3)),
    ]


def assert_same_sandbox(a: Sandbox, b: Sandbox) -> None:
    assert type(a) is type(b)
    assert a.get_config() == b.get_config()
    ta, tb = a.get_tensors(), b.get_tensors()
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    for attr in ("num_prompts", "num_actions", "horizon", "states_per_prompt"):
        assert getattr(a, attr) == getattr(b, attr)
    prompts = a.sample_prompts(50, gen(9))
    actions = torch.randint(a.num_actions, (50, a.horizon), generator=gen(10))
    assert torch.equal(a.reward(prompts, actions, gen(11)), b.reward(prompts, actions, gen(11)))


@pytest.mark.parametrize("index", range(7))
def test_round_trip(index, tmp_path):
    env = _sandboxes()[index]
    json.dumps(env.get_config())  # JSON-able
    rebuilt = type(env)(**env.get_config(), **env.get_tensors())
    assert_same_sandbox(env, rebuilt)
    save_component(env, tmp_path, "env")
    assert_same_sandbox(env, load_component(tmp_path, "env"))
    assert type(env).__name__ in repr(env)
