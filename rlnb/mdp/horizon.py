"""Exact analysis of finite-horizon MDPs: value iteration, the random policy's Q, Q^k,
k-QVI-solvability and the effective horizon (card 9: Laidlaw et al., arXiv:2304.09853 and
arXiv:2312.08369).

Everything works on an explicit :class:`FiniteMDP`: a transition tensor ``P (S, A, S)``, an
expected reward ``R (T, S, A)`` for each *time step* ``t = 0..T-1`` and an initial
distribution ``(S,)``. Values are time-indexed because the horizon is finite: the best
action with 2 steps left is not the best with 9 left. Shapes::

    Q[t, s, a]   (T, S, A)    return of taking a in s at step t, then following the policy
    V[t, s]      (T + 1, S)   V[T] = 0: nothing is earned after the last action

Definitions, as in the paper's code (``EffectiveHorizon.jl``, ``value_iteration.jl`` and
``gorp_bounds.jl:compute_simple_effective_horizon``):

- ``Q^1 = Q^{pi_rand}`` (uniform random policy) and ``Q^{i+1} = B Q^i`` with the optimal
  Bellman backup ``(B Q)[t] = R[t] + P max_a Q[t+1]``. After ``T`` backups ``Q^k = Q*``.
- The MDP is *k-QVI-solvable* if every policy greedy w.r.t. ``Q^k`` is optimal. Only the
  states such policies reach matter (:func:`is_k_qvi_solvable`, :func:`min_qvi_k`).
- ``H_k = k + log_A m_k`` with
  ``m_k = max over visited (t, s) of ceil(16 Var / Delta_k^2 * ln(2 T A^k))``, where
  ``Delta_k`` is the gap between the best ``Q^k`` and the best ``Q^k`` of a suboptimal action,
  and ``Var`` bounds the variance of a random rollout's return by
  ``(Q^rand - Q^worst)(Q* - Q^worst)`` (maximised over actions, and carried back ``k - 1`` steps
  with a max, as the code does). ``H = min(T, min_k H_k)``: the code starts from ``H = T`` and
  only tries ``k < H``, so ``H <= T`` always (:func:`effective_horizon`).

Deviations from the paper's code, all for stochastic transitions (the code's
``compute_simple_effective_horizon`` is written for deterministic MDPs; sticky actions enter
it only through ``value_iteration`` and ``calculate_minimum_k``):

- the states "visited" by the effective-horizon pass are every state with positive
  probability after an allowed action (the code follows the single next state);
- the variance bound's backup takes the max over every possible next state;
- the variance bound is the card's ``(Q^rand - Q^worst)(Q* - Q^worst)`` unchanged. With
  stochastic transitions a random return can exceed ``Q*`` (a lucky slip), so it is a
  heuristic there, not a bound: read ``H`` of a slippery map as the card's formula applied
  to it, not as a proven sample complexity.

Footgun: the time index is part of the state. A policy table here is ``(T, S, A)`` (or
``(S, A)``, used at every step); a stationary policy that ignores ``t`` cannot, in general,
reach ``V*`` of a finite-horizon MDP.

>>> import torch
>>> P = torch.zeros(2, 2, 2); P[0, 0, 1] = 1; P[0, 1, 0] = 1; P[1, :, 1] = 1
>>> R = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).expand(2, 2, 2)   # reward 1 for a=0 in s=0
>>> mdp = FiniteMDP(P, R, initial=torch.tensor([1.0, 0.0]))
>>> Q, V = value_iteration(mdp)
>>> V[0].tolist()
[1.0, 0.0]
>>> min_qvi_k(mdp)
1
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from rlnb.threads import torch_threads

__all__ = [
    "EffectiveHorizon",
    "FiniteMDP",
    "bellman_backup",
    "effective_horizon",
    "expected_return",
    "greedy_policy",
    "is_k_qvi_solvable",
    "min_qvi_k",
    "one_thread",
    "optimal_actions",
    "policy_evaluation",
    "q_k",
    "random_policy_q",
    "reachable",
    "value_iteration",
    "worst_q",
]

@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny tensor ops on one CPU thread, restoring torch's setting afterwards. Ops on a
    few thousand numbers run many times slower when torch splits them across threads."""
    with torch_threads(1):
        yield


#: Default tolerance of "this action is optimal" (Q* >= V* - tol) and of greedy ties.
TOL = 1e-10


@dataclass(frozen=True)
class FiniteMDP:
    """A finite-horizon MDP with explicit tensors (stored as float64).

    Args:
        transitions: ``P (S, A, S)``, ``P[s, a, s']``; every ``P[s, a]`` sums to 1.
        rewards: expected reward of each step, ``(T, S, A)``; ``(S, A)`` means the same
            reward at every step and needs ``horizon``.
        initial: initial-state distribution ``(S,)``.
        horizon: ``T``, only when ``rewards`` is ``(S, A)``.
        returns: the values an episode's return can take, when known (e.g. ``(0.0, 1.0)``
            for "reach the goal"). Only :func:`rlnb.mdp.gorp_horizon.gorp_effective_horizon`
            reads it: with 0/1 returns it computes GORP's failure probability exactly.
    """

    transitions: torch.Tensor
    rewards: torch.Tensor
    initial: torch.Tensor
    horizon: int = field(default=0)
    returns: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        P = torch.as_tensor(self.transitions, dtype=torch.float64)
        R = torch.as_tensor(self.rewards, dtype=torch.float64)
        mu = torch.as_tensor(self.initial, dtype=torch.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ValueError(f"transitions must have shape (S, A, S), got {tuple(P.shape)}")
        S, A, _ = P.shape
        if R.ndim == 2:
            if int(self.horizon) < 1:
                raise ValueError(
                    "rewards of shape (S, A) are the same at every step: pass horizon >= 1"
                )
            R = R.expand(int(self.horizon), S, A)
        if R.ndim != 3 or R.shape[1:] != (S, A):
            raise ValueError(f"rewards must have shape (T, {S}, {A}), got {tuple(R.shape)}")
        if self.horizon and R.shape[0] != int(self.horizon):
            raise ValueError(f"rewards cover {R.shape[0]} steps but horizon is {self.horizon}")
        if mu.shape != (S,):
            raise ValueError(f"initial must have shape ({S},), got {tuple(mu.shape)}")
        if P.min() < 0 or (P.sum(-1) - 1).abs().max() > 1e-5:
            raise ValueError("every transitions[s, a] must be a distribution over next states")
        if mu.min() < 0 or abs(float(mu.sum()) - 1) > 1e-5:
            raise ValueError("initial must be a distribution over states (>= 0, sums to 1)")
        P, mu = P / P.sum(-1, keepdim=True), mu / mu.sum()  # float32 inputs: exact sums
        object.__setattr__(self, "transitions", P)
        object.__setattr__(self, "rewards", R.contiguous())
        object.__setattr__(self, "initial", mu)
        object.__setattr__(self, "horizon", R.shape[0])
        if self.returns is not None:
            object.__setattr__(self, "returns", tuple(sorted({float(r) for r in self.returns})))

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]

    def expect_next(self, values: torch.Tensor) -> torch.Tensor:
        """``E[values(s') | s, a]``: ``(S,) -> (S, A)``."""
        return self.transitions @ values


# --- policy evaluation and value iteration --------------------------------------------


def _takes_mdp(fn):
    """Refuse anything but a :class:`FiniteMDP` as the first argument, by name."""

    @functools.wraps(fn)
    def wrapper(mdp, *args, **kwargs):
        if not isinstance(mdp, FiniteMDP):
            raise TypeError(
                f"{fn.__name__} needs a FiniteMDP as its first argument, got "
                f"{type(mdp).__name__}; build one with FiniteMDP(transitions, rewards, "
                "initial) or take a sandbox's own, e.g. Gridworld.mdp()")
        return fn(mdp, *args, **kwargs)

    return wrapper


def _time_policy(mdp: FiniteMDP, policy: torch.Tensor) -> torch.Tensor:
    pi = torch.as_tensor(policy, dtype=torch.float64)
    T, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    if pi.shape == (S, A):
        pi = pi.expand(T, S, A)
    if pi.shape != (T, S, A):
        raise ValueError(
            f"policy must have shape (T, S, A) = ({T}, {S}, {A}) or (S, A), got {tuple(pi.shape)}"
        )
    if pi.min() < 0 or (pi.sum(-1) - 1).abs().max() > 1e-6:
        raise ValueError("policy rows must be probabilities over actions (softmax, not logits)")
    return pi


@_takes_mdp
def policy_evaluation(mdp: FiniteMDP, policy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(Q^pi (T, S, A), V^pi (T + 1, S))`` of a policy ``(T, S, A)`` or ``(S, A)``."""
    pi = _time_policy(mdp, policy)
    T, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    V = torch.zeros(T + 1, S, dtype=torch.float64)
    Q = torch.empty(T, S, A, dtype=torch.float64)
    for t in reversed(range(T)):
        Q[t] = mdp.rewards[t] + mdp.expect_next(V[t + 1])
        V[t] = (pi[t] * Q[t]).sum(-1)
    return Q, V


@_takes_mdp
def expected_return(mdp: FiniteMDP, policy: torch.Tensor) -> float:
    """``J(pi) = sum_s initial[s] V^pi[0, s]``."""
    return float(mdp.initial @ policy_evaluation(mdp, policy)[1][0])


@_takes_mdp
def random_policy_q(mdp: FiniteMDP) -> torch.Tensor:
    """``Q^{pi_rand}`` of the uniform random policy, ``(T, S, A)`` (= ``Q^1``)."""
    uniform = torch.full((mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions)
    return policy_evaluation(mdp, uniform)[0]


def _extreme_values(mdp: FiniteMDP, reduce) -> tuple[torch.Tensor, torch.Tensor]:
    T, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    V = torch.zeros(T + 1, S, dtype=torch.float64)
    Q = torch.empty(T, S, A, dtype=torch.float64)
    for t in reversed(range(T)):
        Q[t] = mdp.rewards[t] + mdp.expect_next(V[t + 1])
        V[t] = reduce(Q[t])
    return Q, V


@_takes_mdp
def value_iteration(mdp: FiniteMDP) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward induction: ``(Q* (T, S, A), V* (T + 1, S))``."""
    return _extreme_values(mdp, lambda q: q.amax(-1))


@_takes_mdp
def worst_q(mdp: FiniteMDP) -> torch.Tensor:
    """``Q^worst`` (always the worst action afterwards), ``(T, S, A)``."""
    return _extreme_values(mdp, lambda q: q.amin(-1))[0]


@_takes_mdp
def bellman_backup(mdp: FiniteMDP, Q: torch.Tensor) -> torch.Tensor:
    """One optimal backup of a time-indexed ``Q (T, S, A)``:
    ``Q'[t] = R[t] + P max_a Q[t + 1]`` for ``t < T - 1`` and ``Q'[T - 1] = R[T - 1]``."""
    out = torch.empty_like(Q)
    out[-1] = mdp.rewards[-1]
    nxt = Q[1:].amax(-1)  # (T-1, S)
    out[:-1] = mdp.rewards[:-1] + torch.einsum("sax,tx->tsa", mdp.transitions, nxt)
    return out


@_takes_mdp
def q_k(mdp: FiniteMDP, k: int) -> torch.Tensor:
    """``Q^k``: ``k - 1`` optimal backups of ``Q^{pi_rand}``, ``(T, S, A)``.
    ``Q^k = Q*`` once ``k >= T``."""
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 (Q^1 is the random policy's Q), got {k}")
    Q = random_policy_q(mdp)
    for _ in range(min(int(k), mdp.horizon) - 1):
        Q = bellman_backup(mdp, Q)
    return Q


# --- greedy policies and solvability ----------------------------------------------------


@_takes_mdp
def optimal_actions(mdp: FiniteMDP, tol: float = TOL) -> torch.Tensor:
    """``(T, S, A)`` bool: actions with ``Q* >= V* - tol``."""
    Qs, Vs = value_iteration(mdp)
    return Qs >= Vs[:-1, :, None] - tol


def greedy_policy(Q: torch.Tensor, tol: float = TOL) -> torch.Tensor:
    """Uniform over the argmax set of each row: ``(..., A) -> (..., A)`` probabilities.
    Ties within ``tol`` share the mass."""
    best = Q >= Q.amax(-1, keepdim=True) - tol
    return best.double() / best.sum(-1, keepdim=True)


@_takes_mdp
def reachable(mdp: FiniteMDP, allowed: torch.Tensor) -> torch.Tensor:
    """States reachable with positive probability when only ``allowed (T, S, A)`` actions
    are taken, starting from the support of ``mdp.initial``: ``(T, S)`` bool."""
    T = mdp.horizon
    support = (mdp.transitions > 0).double()  # (S, A, S)
    reach = torch.zeros(T, mdp.num_states, dtype=torch.bool)
    reach[0] = mdp.initial > 0
    for t in range(T - 1):
        taken = (reach[t, :, None] & allowed[t]).double()  # (S, A)
        reach[t + 1] = torch.einsum("sa,sax->x", taken, support) > 0
    return reach


def _greedy_bad(mdp: FiniteMDP, Qk: torch.Tensor, opt: torch.Tensor, tol: float) -> bool:
    greedy = Qk >= Qk.amax(-1, keepdim=True) - tol
    reach = reachable(mdp, greedy)
    return bool((reach[..., None] & greedy & ~opt).any())


@one_thread()
@_takes_mdp
def is_k_qvi_solvable(mdp: FiniteMDP, k: int, tol: float = TOL) -> bool:
    """True if every policy greedy w.r.t. ``Q^k`` is optimal (paper's
    ``calculate_minimum_k``): on every state such policies reach, every argmax action of
    ``Q^k`` is an optimal action."""
    return not _greedy_bad(mdp, q_k(mdp, k), optimal_actions(mdp, tol), tol)


@one_thread()
@_takes_mdp
def min_qvi_k(mdp: FiniteMDP, max_k: int | None = None, tol: float = TOL) -> int | None:
    """Smallest ``k`` for which the MDP is k-QVI-solvable (at most ``T``: ``Q^T = Q*``);
    None if none up to ``max_k``."""
    opt = optimal_actions(mdp, tol)
    Q = random_policy_q(mdp)
    for k in range(1, min(max_k or mdp.horizon, mdp.horizon) + 1):
        if not _greedy_bad(mdp, Q, opt, tol):
            return k
        Q = bellman_backup(mdp, Q)
    return None


# --- effective horizon ----------------------------------------------------------------


@dataclass
class EffectiveHorizon:
    """Result of :func:`effective_horizon`.

    Attributes:
        value: ``H = min(T, min_k H_k)``.
        k: the ``k`` attaining the minimum, or None when ``H = T`` came from the cap.
        min_k: smallest k for which the MDP is k-QVI-solvable (greedy on ``Q^k`` optimal).
        horizon: ``T``. num_actions: ``A``.
        per_k: one dict per tried ``k``: ``k, works, m, log_m, H_k, gap, var, t, state``
            (``t, state``: where the largest ``m`` was found).
    """

    value: float
    k: int | None
    min_k: int | None
    horizon: int
    num_actions: int
    per_k: list[dict[str, Any]]

    def frame(self) -> pd.DataFrame:
        """``per_k`` as a DataFrame (one row per k)."""
        return pd.DataFrame(self.per_k)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (f"EffectiveHorizon(H={self.value:.3f}, k={self.k}, min_k={self.min_k}, "
                f"T={self.horizon}, A={self.num_actions})")


def _var_backup(mdp: FiniteMDP, var: torch.Tensor) -> torch.Tensor:
    """``var'[t, s, a] = max over s' with P > 0 of max_a' var[t + 1, s', a']``; last step kept."""
    out = var.clone()
    nxt = var[1:].amax(-1)  # (T-1, S), >= 0
    support = mdp.transitions > 0  # (S, A, S)
    zero = torch.zeros((), dtype=var.dtype)
    for t in range(var.shape[0] - 1):  # one (S, A, S) temporary at a time
        out[t] = torch.where(support, nxt[t], zero).amax(-1)
    return out


@one_thread()
@_takes_mdp
def effective_horizon(mdp: FiniteMDP, max_k: int | None = None, tol: float = TOL) -> EffectiveHorizon:
    """The effective horizon ``H`` of card 9 (``gorp_bounds.jl``), with one row per ``k``.

    For ``k = 1, 2, ...`` while ``k < H`` (``H`` starts at ``T``):

    1. visit the states reachable from the start by actions whose ``Q^k`` exceeds every
       suboptimal action's ``Q^k`` (all actions where no action is suboptimal);
    2. if some visited state has a suboptimal action tied with (or above) the best ``Q^k``,
       ``k`` does not work;
    3. else ``m_k = max(1, max_visited ceil(16 Var / gap^2 ln(2 T A^k)))`` and
       ``H = min(H, k + log_A m_k)``;
    4. back up ``Q^k`` and the variance bound one step.

    Args:
        mdp: the finite-horizon MDP.
        max_k: try at most this ``k`` (default: until ``k >= H``).
        tol: tolerance of "optimal action" and of ties.

    Returns:
        :class:`EffectiveHorizon`. ``H`` is in units of steps: ``A**H`` is (up to the
        factor ``T^2``) the number of random rollouts GORP needs.

    >>> from rlnb.envs.gridworld import Gridworld
    >>> effective_horizon(Gridworld.from_name("lock4").mdp()).value  # capped at T
    4.0
    """
    T, A = mdp.horizon, mdp.num_actions
    if A < 2:
        raise ValueError("the effective horizon needs at least 2 actions (H is measured in "
                         f"log_A units; with one action every policy is optimal), got A = {A}")
    Qr = random_policy_q(mdp)
    Qs, Vs = value_iteration(mdp)
    Qw = worst_q(mdp)
    opt = Qs >= Vs[:-1, :, None] - tol  # (T, S, A)
    var = ((Qr - Qw) * (Qs - Qw)).clamp_min(0)  # (T, S, A) the card's variance bound
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64)

    H = float(T)
    best_k: int | None = None
    rows: list[dict[str, Any]] = []
    Q = Qr
    k = 1
    while k < H and (max_k is None or k <= max_k):
        max_q = Q.amax(-1)  # (T, S)
        max_sub = torch.where(opt, neg_inf, Q).amax(-1)  # (T, S); -inf if no suboptimal action
        follow = Q > max_sub[..., None] + tol  # only optimal actions pass
        visited = reachable(mdp, follow)
        gap = max_q - max_sub
        works = not bool((visited & (gap <= tol)).any())
        row: dict[str, Any] = {"k": k, "works": works}
        if works:
            ln = math.log(2 * T) + k * math.log(A)
            ratio = torch.where(torch.isinf(gap), torch.zeros_like(gap),
                                var.amax(-1) / gap.clamp_min(1e-300) ** 2)
            m = torch.ceil(16 * ratio * ln).clamp_min(1)
            m = torch.where(visited, m, torch.ones_like(m))
            flat = int(m.argmax())
            t_star, s_star = divmod(flat, m.shape[1])
            m_k = float(m[t_star, s_star])
            H_k = k + math.log(m_k) / math.log(A)
            row.update(m=m_k, log_m=math.log(m_k) / math.log(A), H_k=H_k,
                       gap=float(gap[t_star, s_star]), var=float(var[t_star, s_star].amax()),
                       t=t_star, state=s_star)
            if H_k < H:
                H, best_k = H_k, k
        else:
            row.update(m=math.inf, log_m=math.inf, H_k=math.inf, gap=0.0, var=math.nan,
                       t=-1, state=-1)
        rows.append(row)
        Q = bellman_backup(mdp, Q)
        var = _var_backup(mdp, var)
        k += 1
    return EffectiveHorizon(value=H, k=best_k, min_k=min_qvi_k(mdp, tol=tol), horizon=T,
                            num_actions=A, per_k=rows)
