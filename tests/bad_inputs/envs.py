"""Bad inputs of the sandboxes and text tasks (``rlnb.envs``)."""

from __future__ import annotations

import torch

from rlnb.envs import (
    AdditionTask,
    Bandit,
    CountdownTask,
    ExactMatchTask,
    FactorTask,
    Gridworld,
    StrategyBandit,
    TreeMDP,
    VariableLengthTree,
    make_task,
)
from rlnb.envs.layouts import combination_lock, open_grid, random_layout
from rlnb.envs.strategy_bandit import card_base_logits, exact_pass_at_k
from tests.bad_inputs import row_maker

T = torch.tensor


row = row_maker("envs")


def _bandit() -> Bandit:
    return Bandit(T([0.1, 0.8]))


def _vlt_uniform() -> None:
    env = VariableLengthTree.random(generator=torch.Generator().manual_seed(0))
    env.expected_length(torch.full((env.states_per_prompt, 4), 0.25), "longest")


CASES = [
    # --- Bandit
    row("bandit-means-string", lambda: Bandit("abc"), TypeError, "means", "'abc'"),
    row("bandit-means-3d", lambda: Bandit(torch.zeros(2, 2, 2)), ValueError, "means", "(2, 2, 2)"),
    row("bandit-means-nan", lambda: Bandit(T([float("nan")])), ValueError, "means", "finite"),
    row("bandit-bernoulli-mean-above-1", lambda: Bandit(T([1.5])), ValueError, "[0, 1]", "1.5",
        "gaussian"),
    row("bandit-unknown-kind", lambda: Bandit(T([0.1]), kind="poisson"), ValueError, "kind",
        "'poisson'", "bernoulli"),
    row("bandit-std-negative", lambda: Bandit(T([0.1]), kind="gaussian", std=-1.0), ValueError,
        "std", ">= 0"),
    row("bandit-std-string", lambda: Bandit(T([0.1]), kind="gaussian", std="x"), TypeError,
        "std", "'x'"),
    row("bandit-random-arms-float", lambda: Bandit.random(2.5), TypeError, "num_arms", "2.5"),
    row("bandit-random-arms-zero", lambda: Bandit.random(0), ValueError, "num_arms", ">= 1"),
    row("bandit-reward-float-actions", lambda: _bandit().reward(T([0]), T([0.5])), TypeError,
        "actions", "integer", "float32"),
    row("bandit-reward-arm-out-of-range", lambda: _bandit().reward(T([0]), T([5])), ValueError,
        "actions", "[0, 1]", "5"),
    row("bandit-expected-return-not-probs", lambda: _bandit().expected_return(T([0.5, 0.7])),
        ValueError, "sum to 1", "softmax"),
    # --- StrategyBandit
    row("sb-matrix-not-binary", lambda: StrategyBandit(T([[2.0, 0.0]])), ValueError,
        "solve_matrix", "0 or 1", "problem 0"),
    row("sb-matrix-string", lambda: StrategyBandit("ab"), TypeError, "solve_matrix"),
    row("sb-card-rate-above-1", lambda: StrategyBandit.from_card(solve_rates=(1.5,)), ValueError,
        "solve_rates[0]", "[0, 1]", "1.5"),
    row("sb-card-problems-string", lambda: StrategyBandit.from_card(num_problems="64"),
        TypeError, "num_problems", "'64'"),
    row("sb-card-other-rate-nan", lambda: StrategyBandit.from_card(other_rate=float("nan")),
        ValueError, "other_rate", "nan"),
    row("sb-card-huge", lambda: StrategyBandit.from_card(num_problems=10**6, num_strategies=10**6),
        ValueError, "num_problems", "limit", "1,000,000,000,000"),
    row("sb-card-logits-zero", lambda: card_base_logits(0), ValueError, "num_strategies", ">= 1"),
    row("exact-pass-at-k-not-probability", lambda: exact_pass_at_k(T([2.0]), 1), ValueError,
        "success", "[0, 1]"),
    row("exact-pass-at-k-zero", lambda: exact_pass_at_k(T([0.5]), 0), ValueError, "k", ">= 1"),
    # --- TreeMDP and VariableLengthTree
    row("tree-4-to-the-20-leaves", lambda: TreeMDP.random(branching=4, depth=20), ValueError,
        "4**20", "limit", "lower depth"),
    row("tree-init-huge", lambda: TreeMDP(torch.zeros(1, 4), branching=4, depth=20), ValueError,
        "4**20", "limit"),
    row("tree-branching-string", lambda: TreeMDP.random(branching="4"), TypeError, "branching",
        "'4'"),
    row("tree-branching-one", lambda: TreeMDP.random(branching=1), ValueError, "branching",
        ">= 2"),
    row("tree-reward-fraction-zero", lambda: TreeMDP.random(reward_fraction=0), ValueError,
        "reward_fraction", "(0, 1]"),
    row("tree-leaf-shape", lambda: TreeMDP(torch.zeros(1, 5), 2, 2), ValueError,
        "leaf_rewards", "(1, 4)", "(1, 5)"),
    row("tree-coverage-n-zero", lambda: TreeMDP.random().coverage(torch.full((1365, 4), 0.25), 0),
        ValueError, "n", ">= 1"),
    row("vlt-huge", lambda: VariableLengthTree.random(branching=4, depth=20), ValueError,
        "4**20", "limit"),
    row("vlt-answer-token-eos", lambda: VariableLengthTree.from_answers([[(5,)]], 3, 3),
        ValueError, "answer (5,)", "1..2"),
    row("vlt-answers-string", lambda: VariableLengthTree.from_answers("12", 3, 3), TypeError,
        "answers", "'12'"),
    row("vlt-outcome", _vlt_uniform, ValueError, "outcome", "'longest'", "'correct'"),
    # --- Gridworld and layouts
    row("grid-slip-above-1", lambda: Gridworld("S.G", horizon=3, slip=1.5), ValueError, "slip",
        "[0, 1]", "1.5"),
    row("grid-slip-string", lambda: Gridworld("S.G", horizon=3, slip="0.1"), TypeError, "slip",
        "'0.1'"),
    row("grid-sticky-nan", lambda: Gridworld("S.G", horizon=3, sticky=float("nan")), ValueError,
        "sticky", "nan"),
    row("grid-horizon-string", lambda: Gridworld("S.G", horizon="3"), TypeError, "horizon",
        "'3'"),
    row("grid-horizon-too-short", lambda: Gridworld("S.G", horizon=1), ValueError, "horizon",
        "2 steps", "horizon >= 2"),
    row("grid-time-penalty-1", lambda: Gridworld("S.G", horizon=3, time_penalty=1.0), ValueError,
        "time_penalty", "[0, 1)"),
    row("grid-layout-int", lambda: Gridworld(5, horizon=3), TypeError, "layouts", "int"),
    row("grid-layout-unknown-char", lambda: Gridworld("S.X.G", horizon=5), ValueError,
        "row 0, column 2", "'X'", "valid"),
    row("grid-layout-no-start", lambda: Gridworld("..G", horizon=5), ValueError, "start", "'S'"),
    row("grid-unknown-name", lambda: Gridworld.from_name("lock9"), ValueError, "'lock9'",
        "lock8"),
    row("grid-mdp-too-large", lambda: Gridworld(open_grid(80, 80), horizon=200).mdp(), ValueError,
        "core_states", "limit", "smaller map"),
    row("grid-mdp-reward", lambda: Gridworld("S.G", horizon=3).mdp(0, "x"), ValueError,
        "reward", "'return'"),
    row("grid-step-action", lambda: Gridworld("S.G", horizon=3).step(T([0]), T([7])), ValueError,
        "actions", "[0, 3]", "7"),
    row("layout-random-density", lambda: random_layout(5, 5, wall_density=1.5), ValueError,
        "wall_density", "[0, 1)"),
    row("layout-random-height-string", lambda: random_layout("5", 5), TypeError, "height"),
    row("layout-lock-zero", lambda: combination_lock(0), ValueError, "length", ">= 1"),
    # --- text tasks
    row("text-digits-million", lambda: make_task("addition", num_prompts=2, digits=10**6),
        ValueError, "digits", "[1, 18]", "1000000"),
    row("text-unknown-knob", lambda: make_task("addition", digitz=3), ValueError, "digitz",
        "digits", "num_prompts"),
    row("text-missing-knob", lambda: make_task("factor"), ValueError, "num_prompts"),
    row("text-unknown-task", lambda: make_task("adition", num_prompts=2), ValueError,
        "'adition'", "addition"),
    row("text-num-prompts-float", lambda: make_task("addition", num_prompts=2.5), TypeError,
        "num_prompts", "2.5"),
    row("text-modular-terms", lambda: make_task("modular_sum", num_prompts=2, terms=10**6),
        ValueError, "terms", "256"),
    row("text-countdown-numbers", lambda: make_task("countdown", num_prompts=2, numbers=10**6),
        ValueError, "numbers", "[2, 12]"),
    row("text-factor-max-prime", lambda: make_task("factor", num_prompts=2, max_prime=10**9),
        ValueError, "max_prime", "1000000"),
    row("text-factor-digits", lambda: make_task("factor", num_prompts=2, digits=13), ValueError,
        "digits", "12"),
    row("countdown-unsolvable-without-answers", lambda: CountdownTask(["1,1,1,1,1,1,1>999:"]),
        ValueError, "7 numbers", "at most 6", "answers"),
    row("countdown-no-solution", lambda: CountdownTask(["1,1>99:"]), ValueError, "no solution"),
    row("addition-bad-prompt", lambda: AdditionTask(["abc"]), ValueError, "'abc'", "12+34="),
    row("addition-wrong-answer", lambda: AdditionTask(["1+1="], ["3"]), ValueError, "'3'", "'2'"),
    row("factor-prime-n", lambda: FactorTask(["7="]), ValueError, "7 is prime", "composite"),
    row("text-prompts-one-string", lambda: ExactMatchTask("abc", "abc"), TypeError, "prompts",
        "list of strings"),
    row("text-prompt-int", lambda: ExactMatchTask([1], ["a"]), TypeError, "prompt 0", "str"),
    row("text-alphabet-missing-chars", lambda: ExactMatchTask(["a"], ["b"], alphabet="a"),
        ValueError, "'b'", "alphabet"),
    row("text-split-too-many", lambda: ExactMatchTask(["a", "b"], ["1", "2"]).split(5),
        ValueError, "5 of 2"),
]
