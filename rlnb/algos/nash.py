"""Preference games: the minimax winner, exploitability and Nash mirror descent (tabular).

A preference model over K outputs is a matrix ``P`` with ``P[y, y'] = P(y is preferred to
y')`` and ``P + P.T = 1``. It may be *intransitive* (rock-paper-scissors): then no reward,
hence no Bradley–Terry model, represents it, and the natural target is the game's
symmetric Nash equilibrium, the *minimax winner* (Munos et al. arXiv:2312.00886, Nash
learning from human feedback; Swamy et al. arXiv:2401.04056, SPO). Card 19.

- :func:`exploitability`: ``max_y P(y beats pi) - 1/2``; 0 exactly at a minimax winner.
- :func:`minimax_winner`: that equilibrium, from a linear programme (``scipy.optimize``).
- :func:`nash_md`: Nash-MD's exact update, whose *last* iterate converges to the
  KL-regularised equilibrium (no averaging needed, unlike self-play with Hedge).
- :func:`spo_hedge`: exact self-play with win rate as the reward (Hedge).
- :func:`bradley_terry_policy`: the reward-model route (fit BT, then KL-regularised RL).
- :func:`nash_md_trace`, :func:`spo_hedge_trace`: exploitability along the iterations.

Everything is float64 and exact (no sampling): tensors in, tensors out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlnb.mdp.preference import check_preference_matrix, exploitability

__all__ = ["bradley_terry_policy", "check_preference_matrix", "exploitability", "fit_bradley_terry",
           "minimax_winner", "nash_md", "nash_md_trace", "sample_preferences", "spo_hedge",
           "spo_hedge_trace"]


def minimax_winner(P: Tensor | np.ndarray) -> Tensor:
    """The symmetric Nash equilibrium of the preference game: the ``pi`` minimising
    ``max_y P(y beats pi)`` (which is then 1/2), from a linear programme.

    >>> rps = torch.tensor([[.5, 1., 0.], [0., .5, 1.], [1., 0., .5]])
    >>> minimax_winner(rps).round(decimals=4)
    tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64)
    """
    from scipy.optimize import linprog

    P = check_preference_matrix(P).numpy()
    k = P.shape[0]
    cost = np.zeros(k + 1)
    cost[-1] = 1.0  # minimise t subject to (P pi)_y <= t for every y
    res = linprog(cost, A_ub=np.hstack([P, -np.ones((k, 1))]), b_ub=np.zeros(k),
                  A_eq=np.append(np.ones(k), 0.0)[None], b_eq=[1.0],
                  bounds=[(0, None)] * k + [(None, None)], method="highs")
    if not res.success:  # pragma: no cover - a finite zero-sum game always has a solution
        raise RuntimeError(f"the linear programme failed: {res.message}")
    pi = torch.as_tensor(np.clip(res.x[:k], 0.0, None), dtype=torch.float64)
    return pi / pi.sum()


def nash_md(
    P: Tensor | np.ndarray,
    reference: Tensor | np.ndarray | None = None,
    *,
    beta: float = 0.02,
    eta: float = 0.1,
    steps: int = 3000,
    init: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Nash-MD (Munos et al. arXiv:2312.00886), exact and tabular; returns the last iterate.

    Each step mixes the policy geometrically with the reference ``mu``, then takes a
    mirror-descent step against that mixture::

        pi_mix(y) ∝ pi_t(y)^(1 - eta beta) mu(y)^(eta beta)
        pi_t+1(y) ∝ pi_mix(y) exp(eta P(y beats pi_mix))

    Args:
        P: the ``(K, K)`` preference matrix.
        reference: ``mu``, the KL anchor (default uniform).
        beta: KL regularisation; the last iterate converges to the beta-regularised
            equilibrium, which approaches the minimax winner as beta -> 0.
        eta: the step size.
        steps: iterations.
        init: the starting policy (default ``reference``).
    """
    P = check_preference_matrix(P)
    k = P.shape[0]
    mu = torch.full((k,), 1.0 / k, dtype=torch.float64) if reference is None else \
        torch.as_tensor(reference, dtype=torch.float64)
    if mu.shape != (k,) or bool((mu <= 0).any()) or abs(float(mu.sum()) - 1) > 1e-9:
        raise ValueError(f"reference must be a ({k},) distribution with positive entries")
    if not (beta >= 0 and eta > 0 and eta * beta < 1 and steps >= 0):
        raise ValueError(f"need beta >= 0, eta > 0, eta * beta < 1 and steps >= 0; got beta={beta}, "
                         f"eta={eta}, steps={steps}")
    pi = mu.clone() if init is None else torch.as_tensor(init, dtype=torch.float64).clone()
    log_mu = mu.log()
    for _ in range(steps):
        mix = torch.softmax((1 - eta * beta) * pi.clamp_min(1e-300).log() + eta * beta * log_mu, 0)
        pi = torch.softmax(mix.log() + eta * (P @ mix), 0)
    return pi


def spo_hedge(
    P: Tensor | np.ndarray, *, eta: float = 1.0, steps: int = 3000,
    init: Tensor | np.ndarray | None = None,
) -> tuple[Tensor, Tensor]:
    """Self-play with win rate as the reward (SPO, Swamy et al. arXiv:2401.04056), exact:
    the Hedge (multiplicative weights) step ``pi_t+1(y) ∝ pi_t(y) exp(eta P(y beats pi_t))``.

    Returns ``(last, average)`` iterates. The *average* converges to the minimax winner
    (no-regret self-play); the last iterate of an intransitive game keeps cycling — which
    is why Nash-MD's regularised last-iterate convergence matters (card 19).
    """
    P = check_preference_matrix(P)
    k = P.shape[0]
    if not (eta > 0 and steps >= 1):
        raise ValueError(f"need eta > 0 and steps >= 1, got eta={eta}, steps={steps}")
    pi = torch.full((k,), 1.0 / k, dtype=torch.float64) if init is None else \
        torch.as_tensor(init, dtype=torch.float64).clone()
    total = torch.zeros(k, dtype=torch.float64)
    for _ in range(steps):
        pi = torch.softmax(pi.clamp_min(1e-300).log() + eta * (P @ pi), 0)
        total += pi
    return pi, total / steps


def sample_preferences(
    P: Tensor | np.ndarray, num_pairs: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``num_pairs`` comparisons of two distinct outputs drawn uniformly, the winner drawn
    from ``P``: returns ``(chosen, rejected)`` ``(M,)`` output ids."""
    P = check_preference_matrix(P)
    k = P.shape[0]
    a = torch.randint(k, (num_pairs,), generator=generator)
    b = (a + torch.randint(1, k, (num_pairs,), generator=generator)) % k  # b != a
    a_wins = torch.rand(num_pairs, generator=generator, dtype=torch.float64) < P[a, b]
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def fit_bradley_terry(
    chosen: Tensor, rejected: Tensor, num_outputs: int, *, steps: int = 500, l2: float = 1e-4,
) -> Tensor:
    """Tabular Bradley–Terry scores ``(K,)`` (mean 0) fitted to pairwise preferences by
    L-BFGS on ``rlnb.rl.bradley_terry_loss`` plus a small ``l2`` penalty (which keeps an
    output that never lost finite). ``sigmoid(s_y - s_y')`` is then the model's P(y beats
    y'), which is transitive by construction: it cannot represent a cycle."""
    from rlnb.rl.preference import bradley_terry_loss

    if chosen.shape != rejected.shape or chosen.dim() != 1 or chosen.numel() == 0:
        raise ValueError("chosen and rejected must be one non-empty (M,) shape of output ids")
    # The loss over the M pairs is the loss over the K x K distinct (chosen, rejected)
    # pairs weighted by how often each occurs: the same function, K^2 terms instead of M.
    k = num_outputs
    counts = torch.bincount(chosen * k + rejected, minlength=k * k).to(torch.float64)
    seen = counts.nonzero().squeeze(1)
    a, b, weight = seen // k, seen % k, counts[seen] / chosen.numel()
    scores = torch.zeros(num_outputs, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([scores], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        per_pair = bradley_terry_loss(scores[a], scores[b], reduction="none")
        loss = (weight * per_pair).sum() + l2 * (scores**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = scores.detach()
    return out - out.mean()


def bradley_terry_policy(
    P: Tensor | np.ndarray, *, pairs: int = 5000, beta: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The reward-model route on a preference game (card 19): a Bradley–Terry model fitted
    on ``pairs`` comparisons of uniformly drawn output pairs (:func:`sample_preferences`,
    :func:`fit_bradley_terry`), then the KL-regularised optimum against the uniform
    reference, exactly ``pi ∝ exp(r / beta)``. Returns ``(pi, scores)``, float64 ``(K,)``.
    On an intransitive game the fitted reward is transitive, so ``pi`` piles onto one
    member of the cycle, which another member beats."""
    if not (int(pairs) == pairs and pairs >= 1 and beta > 0):
        raise ValueError(f"need pairs >= 1 (an int) and beta > 0, got pairs={pairs!r}, beta={beta!r}")
    P = check_preference_matrix(P)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    chosen, rejected = sample_preferences(P, int(pairs), g)
    scores = fit_bradley_terry(chosen, rejected, P.shape[0])
    return torch.softmax(scores / beta, 0), scores


def nash_md_trace(
    P: Tensor | np.ndarray, *, beta: float = 0.02, eta: float = 0.1, steps: int = 3000,
    every: int = 50,
) -> tuple[list[float], Tensor]:
    """Nash-MD from the uniform policy, its last iterate's exploitability at iteration 0
    and every ``every`` iterations up to ``steps`` (``steps // every + 1`` values; the same
    iterates as one :func:`nash_md` call of ``steps``). Returns ``(trace, last iterate)``."""
    P = check_preference_matrix(P)
    _check_every(steps, every)
    k = P.shape[0]
    pi = torch.full((k,), 1.0 / k, dtype=torch.float64)
    out = [exploitability(pi, P)]
    for _ in range(steps // every):
        pi = nash_md(P, beta=beta, eta=eta, steps=every, init=pi)
        out.append(exploitability(pi, P))
    return out, pi


def spo_hedge_trace(
    P: Tensor | np.ndarray, *, eta: float = 1.0, steps: int = 3000, every: int = 50,
) -> dict[str, Any]:
    """Exact SPO (:func:`spo_hedge`) from the uniform policy: the exploitability of its
    last and of its average iterate (over every iteration so far) at iteration 0 and every
    ``every`` iterations. Returns ``{"last": [...], "average": [...], "last_pi": (K,),
    "average_pi": (K,)}``."""
    P = check_preference_matrix(P)
    _check_every(steps, every)
    k = P.shape[0]
    pi, total = None, torch.zeros(k, dtype=torch.float64)
    start = exploitability(torch.full((k,), 1.0 / k, dtype=torch.float64), P)
    last, average = [start], [start]
    for i in range(1, steps // every + 1):
        pi, chunk_mean = spo_hedge(P, eta=eta, steps=every, init=pi)
        total += chunk_mean * every
        last.append(exploitability(pi, P))
        average.append(exploitability(total / (i * every), P))
    n = (steps // every) * every
    return {"last": last, "average": average,
            "last_pi": torch.full((k,), 1.0 / k, dtype=torch.float64) if pi is None else pi,
            "average_pi": total / n if n else torch.full((k,), 1.0 / k, dtype=torch.float64)}


def _check_every(steps: int, every: int) -> None:
    if not (int(every) == every and every >= 1 and int(steps) == steps and steps >= 0):
        raise ValueError(f"need steps >= 0 and every >= 1 (ints), got steps={steps!r}, "
                         f"every={every!r}")
