"""GORP: greedy over random policy (Laidlaw et al., arXiv:2304.09853, the BRIDGE paper).

GORP builds an action sequence one step at a time::

    for i in 0..T-1:
        for each of the A^k action sequences a_{i..i+k-1}:
            m episodes: replay the chosen prefix, play the sequence, then act at random
            Q_hat(sequence) = mean return from step i
        a_i = first action of the best sequence  (= argmax of the k-step backup of Q_hat)

``T * A^k * m`` episodes in all. The effective horizon ``H = min_k k + log_A m_k`` is
exactly "how many episodes GORP needs", ``A^H`` up to ``T^2``: the paper's explanation of
why random exploration works on most benchmark MDPs.

Footgun: GORP's plan is *open loop*, an action per time step that ignores the state. That
is optimal in a deterministic MDP (the one the paper analyses) and not, in general, with
slip or sticky actions; SQIRL (:mod:`rlnb.algos.sqirl`) is the stochastic generalisation.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from rlnb.algos.sqirl import PlanResult, evaluate_policy, one_thread

__all__ = ["gorp"]


@torch.no_grad()
@one_thread()
def gorp(
    env: Any,
    *,
    k: int = 1,
    episodes_per_sequence: int = 16,
    prompt: int = 0,
    generator: torch.Generator | None = None,
) -> PlanResult:
    """Run GORP on one map; the open-loop plan is returned as a ``(T, C, A)`` policy (the
    same one-hot action in every state of a step) with its exact return.

    Args:
        env: a :class:`rlnb.envs.gridworld.Gridworld` (``reset``, ``step``, ``mdp``).
        k: look-ahead depth (``A**k`` sequences per step).
        episodes_per_sequence: ``m``, random rollouts per action sequence.
        prompt: which map.
        generator: the only source of randomness.

    >>> from rlnb.envs.gridworld import Gridworld
    >>> env = Gridworld.from_name("lock4")
    >>> res = gorp(env, k=1, episodes_per_sequence=128, generator=torch.Generator().manual_seed(0))
    >>> res.episodes, res.normalized_return
    (2048, 1.0)
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 (sequence length), got {k}")
    if int(episodes_per_sequence) < 1:
        raise ValueError(f"episodes_per_sequence must be >= 1, got {episodes_per_sequence}")
    T, A, C, m = env.horizon, env.num_actions, env.core_states, int(episodes_per_sequence)
    plan: list[int] = []
    episodes = 0
    for i in range(T):
        kk = min(int(k), T - i)
        seqs = torch.tensor(list(itertools.product(range(A), repeat=kk)))  # (A^kk, kk)
        n = seqs.shape[0] * m
        rows = seqs.repeat_interleave(m, dim=0)  # (n, kk), m episodes per sequence
        s = env.reset(n, generator, prompts=torch.full((n,), prompt, dtype=torch.long))
        ret = torch.zeros(n, dtype=torch.float64)
        for t in range(T):
            if t < i:
                a = torch.full((n,), plan[t], dtype=torch.long)
            elif t < i + kk:
                a = rows[:, t - i]
            else:
                a = torch.randint(A, (n,), generator=generator)
            s, r, _ = env.step(s, a, generator)
            if t >= i:
                ret += r.double()
        episodes += n
        q_seq = ret.view(-1, m).mean(1)  # (A^kk,)
        q_first = q_seq.view(A, -1).amax(1)  # k-step backup: best continuation per first action
        best = torch.nonzero(q_first >= q_first.max() - 1e-12)[:, 0]
        pick = best[torch.randint(len(best), (1,), generator=generator)]
        plan.append(int(pick))
    policy = torch.zeros(T, C, A, dtype=torch.float64)
    policy[torch.arange(T), :, torch.tensor(plan)] = 1.0
    J, v_star, v_rand = evaluate_policy(env, policy, prompt)
    return PlanResult(policy=policy, episodes=episodes, env_steps=episodes * T,
                      expected_return=J, optimal_value=v_star, random_value=v_rand)
