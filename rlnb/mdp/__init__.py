"""Exact MDP machinery: the core that sandboxes, algorithms and probes all stand on.

- :mod:`rlnb.mdp.horizon` -- :class:`FiniteMDP` (transitions ``(S, A, S)``, time-indexed
  rewards ``(T, S, A)``), policy evaluation, value iteration, the random policy's Q, Q^k,
  k-QVI-solvability and the effective horizon's closed form (card 9).
- :mod:`rlnb.mdp.gorp_horizon` -- the effective horizon by its definition: GORP's exact
  failure probability and the smallest number of rollouts it needs.
- :mod:`rlnb.mdp.preference` -- preference matrices: their check, exploitability and the
  win-rate reward of self-play (card 19).

It imports no other rlnb package (it is below :mod:`rlnb.envs`, which builds a
:class:`FiniteMDP` from a gridworld); :mod:`rlnb.probes` re-exports the effective-horizon
names for those who read them as probes.

>>> import torch
>>> P = torch.zeros(1, 2, 1); P[0, :, 0] = 1                # one state, two actions
>>> R = torch.tensor([[[1.0, 0.0]]])                        # action 0 pays 1, T = 1
>>> Q, V = value_iteration(FiniteMDP(P, R, initial=torch.ones(1)))
>>> V[0].tolist()
[1.0]
"""

from rlnb.mdp.gorp_horizon import gorp_effective_horizon, gorp_failure_probability, sequence_values
from rlnb.mdp.horizon import (
    EffectiveHorizon,
    FiniteMDP,
    bellman_backup,
    effective_horizon,
    expected_return,
    greedy_policy,
    is_k_qvi_solvable,
    min_qvi_k,
    one_thread,
    optimal_actions,
    policy_evaluation,
    q_k,
    random_policy_q,
    reachable,
    value_iteration,
    worst_q,
)

__all__ = [
    "EffectiveHorizon",
    "FiniteMDP",
    "bellman_backup",
    "effective_horizon",
    "expected_return",
    "gorp_effective_horizon",
    "gorp_failure_probability",
    "greedy_policy",
    "is_k_qvi_solvable",
    "min_qvi_k",
    "one_thread",
    "optimal_actions",
    "policy_evaluation",
    "q_k",
    "random_policy_q",
    "reachable",
    "sequence_values",
    "value_iteration",
    "worst_q",
]
