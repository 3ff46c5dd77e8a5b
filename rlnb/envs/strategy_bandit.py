"""The strategy bandit (card SB): problems x hidden strategies, one shared softmax.

``P`` problems and ``S`` hidden "strategies"; ``M[i, s] = 1`` if strategy ``s`` solves
problem ``i``. An episode is one action: the policy picks a strategy for the problem it is
shown and earns ``M[prompt, strategy]``. With ``states_per_prompt == 1`` a *shared* tabular
policy is a single softmax over strategies used on every problem - the setting of the paper
cards, and the smallest model in which RL sharpens pass@1 and shrinks pass@k (card 1, Yue et
al. arXiv:2504.13837; card 2 boundary shrinkage; card 3 entropy collapse).

Card SB: 64 problems, 64 strategies; s0 solves 50% of problems, s1 35%, every other strategy
8%; base logits N(-1, 1) with s0 = 2 and s1 = 1 (base pass@1 about 0.16). Footgun: the
crossover needs the shared softmax; with one softmax per problem (``shared=False``) RL can
learn each problem's solver and pass@k does not shrink.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rlnb.checks import (
    as_tensor,
    binary_matrix,
    check_int,
    check_number,
    check_probs,
    check_size,
    one_step_actions,
)
from rlnb.envs.base import Sandbox
from rlnb.estimators import exact_pass_at_k


def card_base_logits(
    num_strategies: int = 64,
    generator: torch.Generator | None = None,
    top_logits: Sequence[float] = (2.0, 1.0),
) -> torch.Tensor:
    """Card SB's base policy logits ``(S,)``: N(-1, 1) for every strategy, then strategy
    ``j`` overwritten with ``top_logits[j]`` (s0 = 2, s1 = 1).

    With the card's matrix, ``softmax`` of these gives base pass@1 about 0.16 and pass@256
    about 1 (card 1).

    >>> card_base_logits(generator=torch.Generator().manual_seed(0))[:2]
    tensor([2., 1.])
    """
    num_strategies = check_int(num_strategies, "num_strategies", 1)
    top_logits = [check_number(x, f"top_logits[{j}]") for j, x in enumerate(top_logits)]
    if len(top_logits) > num_strategies:
        raise ValueError(
            f"top_logits has {len(top_logits)} entries but there are only {num_strategies} "
            "strategies; give at most num_strategies values"
        )
    logits = torch.randn(num_strategies, generator=generator) - 1.0  # (S,)
    logits[: len(top_logits)] = torch.tensor([float(x) for x in top_logits])
    return logits


def _count(rate: float, num_problems: int) -> int:
    """Exact number of problems a strategy with this solve rate solves (nearest, halves up)."""
    return int(math.floor(rate * num_problems + 0.5))


class StrategyBandit(Sandbox):
    """Problems x hidden strategies with a 0/1 solve matrix (card SB).

    Args:
        solve_matrix: ``(num_problems, num_strategies)`` of 0/1 (float or bool); entry
            ``[i, s]`` is 1 if strategy ``s`` solves problem ``i``. Stored as float.

    Sandbox layout: ``num_prompts == num_problems``, ``num_actions == num_strategies``,
    ``horizon == 1``, ``states_per_prompt == 1``. Reward is ``M[prompt, action]``
    (deterministic, so the generator is unused).

    Exact answers for a policy given as probabilities over strategies, ``(S,)`` / ``(1, S)``
    (shared) or ``(P, S)`` (one row per problem): :meth:`success_probability` (per-problem
    pass@1), :meth:`pass_at_k_exact`; and the policy-free :meth:`coverage`.

    >>> env = StrategyBandit(solve_matrix=torch.tensor([[1., 0.], [0., 1.], [0., 0.]]))
    >>> env.success_probability(torch.tensor([0.75, 0.25]))
    tensor([0.7500, 0.2500, 0.0000])
    >>> env.pass_at_k_exact(torch.tensor([0.75, 0.25]), [1, 2])
    tensor([0.3333, 0.4583])
    >>> round(env.coverage(), 4)
    0.6667
    """

    def __init__(self, solve_matrix: torch.Tensor) -> None:
        M = as_tensor(solve_matrix, "solve_matrix",
                      "a (num_problems, num_strategies) tensor of 0/1")
        if M.ndim != 2:
            raise ValueError(
                f"solve_matrix must be 2-D with shape (num_problems, num_strategies), got shape "
                f"{tuple(M.shape)}"
            )
        P, S = M.shape
        if P < 1 or S < 1:
            raise ValueError(
                f"solve_matrix needs at least 1 problem and 1 strategy, got shape (num_problems, "
                f"num_strategies) = ({P}, {S})"
            )
        M = binary_matrix(M, "solve_matrix", "does strategy s solve problem i?", "problem",
                          "strategy")
        self.solve_matrix = M  # (P, S)
        self.num_prompts = P
        self.num_actions = S
        self.horizon = 1
        self.states_per_prompt = 1

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_card(
        cls,
        num_problems: int = 64,
        num_strategies: int = 64,
        solve_rates: Sequence[float] = (0.5, 0.35),
        other_rate: float = 0.08,
        generator: torch.Generator | None = None,
    ) -> StrategyBandit:
        """Card SB's matrix: strategy ``j < len(solve_rates)`` solves a fraction
        ``solve_rates[j]`` of the problems, every other strategy ``other_rate``.

        Columns are drawn independently; each has *exactly* ``round(rate * num_problems)``
        ones (nearest integer, halves up) at uniformly random problems, so the rates are the
        card's up to rounding (8% of 64 is 5 problems, 7.8%). Some problems may be solved
        by no strategy: check :meth:`coverage`.

        >>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
        >>> env.solve_matrix.sum(0)[:3]
        tensor([32., 22.,  5.])
        """
        num_problems = check_int(num_problems, "num_problems", 1)
        num_strategies = check_int(num_strategies, "num_strategies", 1)
        if isinstance(solve_rates, (str, bytes)) or not hasattr(solve_rates, "__iter__"):
            raise TypeError(
                f"solve_rates must be a sequence of fractions in [0, 1], got "
                f"{type(solve_rates).__name__} {solve_rates!r}"
            )
        rates = [check_number(r, f"solve_rates[{j}]", 0, 1, meaning="fraction of problems solved")
                 for j, r in enumerate(solve_rates)]
        other_rate = check_number(other_rate, "other_rate", 0, 1,
                                  meaning="fraction of problems solved")
        if len(rates) > num_strategies:
            raise ValueError(
                f"solve_rates has {len(rates)} entries but num_strategies is {num_strategies}; "
                "give at most one rate per strategy"
            )
        check_size(num_problems * num_strategies, "the solve matrix",
                   f"num_problems * num_strategies = {num_problems} * {num_strategies}",
                   "lower num_problems or num_strategies")
        rates += [float(other_rate)] * (num_strategies - len(rates))
        M = torch.zeros(num_problems, num_strategies)
        for s, r in enumerate(rates):
            rows = torch.randperm(num_problems, generator=generator)[: _count(r, num_problems)]
            M[rows, s] = 1.0
        return cls(solve_matrix=M)

    card_base_logits = staticmethod(card_base_logits)

    def get_config(self) -> dict[str, Any]:
        return {}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {"solve_matrix": self.solve_matrix}

    def __repr__(self) -> str:
        return (
            f"StrategyBandit(num_problems={self.num_problems}, "
            f"num_strategies={self.num_strategies}, coverage={self.coverage():.3f})"
        )

    @property
    def num_problems(self) -> int:
        return self.num_prompts

    @property
    def num_strategies(self) -> int:
        return self.num_actions

    @property
    def strategy_solve_rates(self) -> torch.Tensor:
        """Fraction of problems each strategy solves, ``(S,)``: the pass@1 of always
        playing that strategy."""
        return self.solve_matrix.mean(0)

    # --- episodes -----------------------------------------------------------------
    def reward(
        self,
        prompts: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``M[prompt, strategy]``: prompts ``(N,)``, actions ``(N, 1)`` or ``(N,)`` ->
        ``(N,)`` float in {0, 1}. Deterministic; ``generator`` is accepted and unused."""
        actions = one_step_actions(prompts, actions, self.num_prompts, self.num_actions,
                                   prompt_meaning="problem index", action_meaning="strategy index")
        return self.solve_matrix[prompts, actions]

    # --- exact answers --------------------------------------------------------------
    def _policy_rows(self, probs: torch.Tensor) -> torch.Tensor:
        probs = torch.as_tensor(probs)
        if probs.ndim == 1:
            probs = probs.unsqueeze(0)
        rows = self.action_probs(probs)[:, 0, :]  # (P, S)
        check_probs(rows)
        return rows

    def success_probability(self, policy_probs: torch.Tensor) -> torch.Tensor:
        """Exact per-problem pass@1 ``p_i = sum_s pi(s) M[i, s]``, ``(P,)``.

        ``policy_probs``: ``(S,)`` or ``(1, S)`` for the shared softmax, ``(P, S)`` for one
        row per problem."""
        rows = self._policy_rows(policy_probs)
        return (rows * self.solve_matrix.to(rows.dtype)).sum(-1)

    def pass_at_k_exact(
        self,
        policy_probs: torch.Tensor,
        k: int | Sequence[int] | torch.Tensor,
        *,
        per_problem: bool = False,
    ) -> torch.Tensor:
        """Exact pass@k, the mean over problems of ``1 - (1 - p_i)^k`` (``p_i`` from
        :meth:`success_probability`): the quantity the unbiased estimator of card 1 estimates.

        ``k`` an int -> 0-d tensor; a list/tensor of ks ``(K,)`` -> ``(K,)``.
        ``per_problem=True`` keeps the problem dimension (``(P,)`` or ``(K, P)``)."""
        return exact_pass_at_k(self.success_probability(policy_probs), k, per_problem=per_problem)

    def coverage(self) -> float:
        """Fraction of problems that some strategy solves: the limit of pass@k as k -> inf
        for any policy with full support."""
        return self.solve_matrix.amax(dim=1).mean().item()

    def optimal_value(self) -> torch.Tensor:
        """Best per-problem pass@1, ``(P,)``: 1 where some strategy solves the problem.
        (The best *shared* deterministic policy reaches ``strategy_solve_rates.max()``.)"""
        return self.solve_matrix.amax(dim=1)
