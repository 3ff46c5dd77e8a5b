"""Algorithms that are not policy gradients: they explore at random and plan.

- :func:`sqirl` -- SQIRL (Laidlaw et al., arXiv:2312.08369): random rollouts, regress
  ``Q^1``, ``k - 1`` fitted-Q steps, act greedily; tabular or small-MLP regression.
- :func:`gorp` -- GORP (Laidlaw et al., arXiv:2304.09853): greedy over the random policy's
  ``k``-step look-ahead, open loop.

Both return a :class:`PlanResult` with the episodes they used and the exact return of the
policy they found, so samples-to-optimal can be compared with PPO's (card 9), which
:class:`StopWhenOptimal` measures as a Trainer callback.

Preference games (card 19): :func:`minimax_winner` (a linear programme),
:func:`exploitability`, :func:`nash_md` (Nash mirror descent, exact and tabular),
:func:`spo_hedge` (exact self-play), :func:`bradley_terry_policy` (reward model + KL-RL) and
their exploitability traces.
"""

from rlnb.algos.gorp import gorp
from rlnb.algos.nash import (
    bradley_terry_policy,
    check_preference_matrix,
    exploitability,
    fit_bradley_terry,
    minimax_winner,
    nash_md,
    nash_md_trace,
    sample_preferences,
    spo_hedge,
    spo_hedge_trace,
)
from rlnb.algos.sqirl import (
    PlanResult,
    StopWhenOptimal,
    evaluate_policy,
    sqirl,
    tie_break_greedy,
)

__all__ = ["PlanResult", "StopWhenOptimal", "check_preference_matrix", "evaluate_policy", "exploitability",
           "bradley_terry_policy", "fit_bradley_terry", "sample_preferences", "gorp", "minimax_winner",
           "nash_md", "nash_md_trace", "spo_hedge", "spo_hedge_trace", "sqirl", "tie_break_greedy"]
