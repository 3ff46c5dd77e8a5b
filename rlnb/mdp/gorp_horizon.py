"""The effective horizon by its definition: how many random rollouts GORP needs.

Card 9's paper (Laidlaw et al., arXiv:2304.09853) *defines* the effective horizon through
the algorithm GORP ("greedy over random policy"): at every step, for each of the ``A^k``
sequences of ``k`` actions, run ``m`` rollouts that play the sequence and then act at
random, and take the first action of the sequence with the best mean return.

    H_k = k + log_A m_k,   m_k = the smallest m for which GORP(k, m) acts optimally at
                                every step with probability >= 1/2
    H   = min_k H_k

The closed form ``m_k <= ceil(16 Var / Delta_k^2 ln(2 T A^k))`` is the paper's *upper
bound* on ``m_k`` (card 9's formula, :func:`rlnb.mdp.horizon.effective_horizon`), and
the constant ``16 ln(2 T A)`` alone costs ``log_4 70 = 3.07`` steps at ``A = 4, T = 10``.
The paper's own numbers come from ``compute_gorp_bounds.jl`` in its code, which computes
GORP's failure probability and searches for the smallest ``m`` with failure ``<= 1/2``.
This module does the same:

- **0/1 returns** (a goal pays 1, nothing else pays; the gridworlds with
  ``time_penalty = 0`` and no decoy, or any ``mdp(reward="success")``): the mean return of
  ``m`` rollouts is ``Binomial(m, p) / m`` with ``p`` the sequence's exact value, so GORP's
  failure probability is computed *exactly*, summing the binomial distributions over every
  count. GORP as written leaves ties open; ``ties="uniform"`` breaks them at random (as
  :func:`rlnb.algos.gorp` does, and a simulation of it agrees with the exact numbers) and
  ``ties="worst"`` against GORP, which is what the reference code's linear program does
  (an ``m`` that works for any tie rule). With few rollouts and small success
  probabilities, ties at 0 successes are common and the two differ by up to a step.
- **other returns**: Bernstein's inequality with the variance bound
  ``(Q^rand - Q^worst)(Q* - Q^rand)`` and range ``Q* - Q^worst`` gives each sequence's
  probability of being picked within bounds, and the worst distribution within those bounds
  gives an upper bound on the failure probability (the reference code's ``:bernstein``
  method; its ``m`` is an upper bound on ``m_k``).

As in the reference code, which first tries ``m = 10^100``: a ``k`` for which GORP fails
more than half the time even with unlimited rollouts (it knows every sequence's value and
the best one starts with a suboptimal action too often) has ``H_k = inf``. Otherwise the
smallest ``m`` is found by doubling and bisection, which assumes the failure probability
falls as ``m`` grows.

Stochastic transitions (slip, sticky actions): GORP acts on the state it actually reaches,
and fails if it ever takes a suboptimal action; the failure probability averages over the
next states. With sticky actions the random continuation is the MDP's own (the previous
action is part of the state).

>>> from rlnb.envs.gridworld import Gridworld
>>> round(gorp_effective_horizon(Gridworld.from_name("open5").mdp()).value, 2)
3.29
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import special
from tqdm.auto import tqdm

from rlnb.mdp.horizon import (
    TOL,
    EffectiveHorizon,
    FiniteMDP,
    min_qvi_k,
    one_thread,
    random_policy_q,
    reachable,
    value_iteration,
    worst_q,
)

__all__ = ["gorp_effective_horizon", "gorp_failure_probability", "sequence_values"]

#: Largest ``m`` searched: an ``H_k`` needing more is reported as infinite.
M_MAX = 2**24
#: Counts more than this many standard deviations from the best sequence's mean are dropped
#: from the exact sums (their probability is below 1e-18).
_SIGMAS = 9.0


def sequence_values(mdp: FiniteMDP, base: torch.Tensor, k: int) -> torch.Tensor:
    """Value of playing ``k`` given actions and then following the policy ``base`` is the
    Q-function of: ``(T, S, A) -> (T, S, A**k)``, sequence ``j`` = base-``A`` digits
    ``a_1 ... a_k`` (``a_1`` most significant). Steps past the horizon earn nothing.

    ``base = Q^rand`` gives the means GORP estimates; ``Q*`` and ``Q^worst`` give the best
    and worst a rollout of the sequence can expect."""
    return _sequence_values_upto(mdp, base, k)[int(k)]


def _sequence_values_upto(mdp: FiniteMDP, base: torch.Tensor, k: int) -> dict[int, torch.Tensor]:
    """:func:`sequence_values` for every length ``1 .. k``, each built from the last."""
    T, S, A = base.shape
    out = {1: base}
    zero = torch.zeros(1, S, 1, dtype=base.dtype)
    for j in range(2, int(k) + 1):
        seq = out[j - 1]
        nxt = torch.cat([seq[1:], zero.expand(1, S, seq.shape[2])], 0)  # (T, S, A^(j-1))
        # prepend an action: R[t, s, a] + sum_s' P[s, a, s'] seq[t + 1, s', rest]
        step = torch.einsum("sax,txr->tsar", mdp.transitions, nxt)
        out[j] = (mdp.rewards[..., None] + step).reshape(T, S, -1)
    return out


def _binary_scale(mdp: FiniteMDP, Vs: torch.Tensor) -> float | None:
    """``c`` if every episode's return is 0 or ``c`` (then returns / c are Bernoulli), else
    None. Known from ``mdp.returns``, or read off a deterministic MDP whose rewards are all 0
    or the best value (two such rewards would exceed it, so at most one is earned)."""
    if mdp.returns is not None:
        positive = sorted({float(r) for r in mdp.returns if r != 0})
        return positive[0] if len(positive) == 1 and positive[0] > 0 else None
    deterministic = bool(((mdp.transitions == 0) | (mdp.transitions == 1)).all())
    c = float(Vs.max())
    if not deterministic or c <= 0:
        return None
    ok = (mdp.rewards == 0) | ((mdp.rewards - c).abs() <= 1e-12 * c)
    return c if bool(ok.all()) else None


def _step_failure_binary(p: torch.Tensor, fail: torch.Tensor, m: int, ties: str) -> torch.Tensor:
    """Exact failure probability of one GORP step with 0/1 returns.

    ``p (B, A**k)``: success probability of each sequence's rollouts (first action most
    significant); ``fail (B, A)``: failure probability if GORP takes that first action.
    Success counts ``X_j ~ Binomial(m, p_j)`` are independent; GORP takes the first action
    of the best sequence, i.e. the first action ``a`` whose best count
    ``Y_a = max_{j starts with a} X_j`` is largest, with CDF ``G_a(x) = prod_j F_j(x)``.
    Ties between first actions: ``"uniform"`` picks one at random (as
    :func:`rlnb.algos.gorp` does), ``"worst"`` picks the one with the highest ``fail``
    (the reference code's bound)."""
    B, n = p.shape
    A = fail.shape[1]
    p = p.clamp(0.0, 1.0).numpy()
    fail = fail.numpy()
    mean, sd = m * p, np.sqrt(m * p * (1 - p))
    top, spread = mean.max(1), sd.max(1)
    lo = np.clip(np.floor(top - _SIGMAS * spread - 1), 0, m).astype(np.int64)
    hi = np.clip(np.ceil(top + _SIGMAS * spread + 1), 0, m).astype(np.int64)
    out = np.empty(B)
    chunk = max(1, 2_000_000 // max(1, n * int((hi - lo).max() + 1)))
    with np.errstate(divide="ignore"):
        log_p, log_q = np.log(p), np.log1p(-p)
    for b0 in range(0, B, chunk):
        sl = slice(b0, b0 + chunk)
        W = int((hi[sl] - lo[sl]).max()) + 1
        x = lo[sl, None] + np.arange(W)[None, :]  # (b, W) counts
        valid = x <= hi[sl, None]
        xv = np.where(valid, x, lo[sl, None])
        # log P(X = x) for every sequence: the binomial coefficient is shared by all of
        # them; 0 * log 0 = 0 keeps p = 0 and p = 1 exact
        log_coef = special.gammaln(m + 1) - special.gammaln(xv + 1) - special.gammaln(m - xv + 1)
        xx, rest = xv[:, :, None].astype(float), (m - xv)[:, :, None].astype(float)
        with np.errstate(invalid="ignore"):
            log_eq = (log_coef[:, :, None] + np.where(xx > 0, xx * log_p[sl, None, :], 0.0)
                      + np.where(rest > 0, rest * log_q[sl, None, :], 0.0))
        log_eq = np.where(valid[:, :, None], log_eq, -np.inf)  # (b, W, n)
        # P(X < lo) once per sequence, then the CDF by a running sum over the window
        below = np.where(lo[sl, None] > 0,
                         special.bdtr(np.maximum(lo[sl, None] - 1, 0), m, p[sl]), 0.0)  # (b, n)
        cdf = below[:, None, :] + np.cumsum(np.exp(log_eq), axis=1)  # P(X <= x)
        cdf_lt = np.concatenate([below[:, None, :], cdf[:, :-1]], axis=1)  # P(X < x)
        rows = cdf.shape[0]
        with np.errstate(divide="ignore"):  # group by first action: log G_a = sum log F_j
            log_le = np.log(np.minimum(cdf, 1.0)).reshape(rows, W, A, -1).sum(-1)
            log_lt = np.log(np.minimum(cdf_lt, 1.0)).reshape(rows, W, A, -1).sum(-1)
        G_le, G_lt = np.exp(log_le), np.exp(log_lt)  # (b, W, A): P(Y_a <= x), P(Y_a < x)
        g = np.clip(G_le - G_lt, 0.0, None) * valid[:, :, None]  # P(Y_a = x)
        f = fail[sl]
        if ties == "worst":
            order = np.argsort(-f, axis=1, kind="stable")  # (b, A) highest failure first
            lt = np.take_along_axis(log_lt, order[:, None, :], 2)
            le = np.take_along_axis(log_le, order[:, None, :], 2)
            # a is taken at count x iff Y_a = x, every worse action is below x and every
            # better one at most x
            rest = _exclusive_cumsum(lt) + _exclusive_cumsum(le[:, :, ::-1])[:, :, ::-1]
            picked = np.take_along_axis(g, order[:, None, :], 2) * np.exp(rest)
            out[sl] = (picked.sum(1) * np.take_along_axis(f, order, 1)).sum(1)
        else:
            # uniform among the tied: E[1 / (1 + #ties)] = integral over u of
            # prod_{b != a} (P(Y_b < x) + P(Y_b = x) u), exact by Gauss-Legendre
            u, w = np.polynomial.legendre.leggauss(A // 2 + 1)
            u, w = (u + 1) / 2, w / 2
            lin = G_lt[..., None] + g[..., None] * u  # (b, W, A, Q)
            picked = np.zeros_like(g)
            for a in range(A):
                others = np.prod(np.delete(lin, a, axis=2), axis=2)  # (b, W, Q)
                picked[:, :, a] = g[:, :, a] * (others * w).sum(-1)
            out[sl] = (picked.sum(1) * f).sum(1)
    return torch.from_numpy(np.clip(out, 0.0, 1.0))


def _step_failure_limit(p: torch.Tensor, fail: torch.Tensor, ties: str) -> torch.Tensor:
    """One GORP step with infinitely many rollouts: the first actions whose best sequence
    has the largest exact value are tied; ``"uniform"`` averages their ``fail``,
    ``"worst"`` takes the largest."""
    A = fail.shape[1]
    best = p.view(p.shape[0], A, -1).amax(-1)  # (B, A)
    tied = best >= best.amax(-1, keepdim=True) - 1e-12
    if ties == "worst":
        return torch.where(tied, fail, torch.zeros_like(fail)).amax(-1)
    return (tied * fail).sum(-1) / tied.sum(-1)


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    """Sum over earlier entries along the last axis, exactly (no ``inf - inf``)."""
    out = np.zeros_like(x)
    out[..., 1:] = np.cumsum(x[..., :-1], axis=-1)
    return out


def _bernstein_tail(m: int, bound: np.ndarray, var: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bernstein: ``P(mean of m <= mu - t) <= exp(-m t^2 / (2 (var + bound t / 3)))``
    (1 for ``t <= 0``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        val = np.exp(-(t**2) * m / 2 / (var + bound * t / 3))
    val = np.where((var <= 0) & (t > 0), 0.0, val)
    return np.where(t <= 0, 1.0, val)


def _inv_bernstein(m: int, bound: np.ndarray, var: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The deviation ``t`` with Bernstein tail ``delta``."""
    with np.errstate(divide="ignore"):
        L = -np.log(delta)
    t = (bound * L / m + np.sqrt(18 * var / m * L + bound**2 * L**2 / m**2)) / 3
    return np.where((bound == 0) | (var == 0), 0.0, t)


def _worst_case_bernstein(q: torch.Tensor, qs: torch.Tensor, qw: torch.Tensor,
                          fail: torch.Tensor, m: int, resolution: float = 0.01) -> torch.Tensor:
    """Upper bound on one GORP step's failure probability from Bernstein's inequality,
    for returns that are not 0/1 (the reference code's ``:bernstein`` method)."""
    q, qs, qw, fail = (x.numpy() for x in (q, qs, qw, fail))
    var = np.clip((qs - q) * (q - qw), 0, None)  # (B, n)
    bound = np.clip(qs - qw, 0, None)
    B, n = q.shape
    lower, upper = np.zeros((B, n)), np.zeros((B, n))
    levels = np.arange(1, int(round(1 / resolution)) + 1) * resolution  # (L,)
    for j in range(n):
        up_x = q[:, j, None] + _inv_bernstein(m, bound[:, j, None], var[:, j, None], 1 - levels + 1e-300)
        lo_x = q[:, j, None] - _inv_bernstein(m, bound[:, j, None], var[:, j, None],
                                              np.maximum(levels - resolution, 1e-300))
        others = np.arange(n) != j
        qo, bo, vo = q[:, None, others], bound[:, None, others], var[:, None, others]
        p_up = _bernstein_tail(m, bo, vo, qo - up_x[:, :, None]).prod(-1)  # (B, L)
        p_lo = (1 - _bernstein_tail(m, bo, vo, lo_x[:, :, None] - qo)).prod(-1)
        upper[:, j] = resolution * p_up.sum(1)
        lower[:, j] = resolution * p_lo.sum(1)
    upper = np.minimum(1.0, upper + np.clip(1 - upper.sum(1, keepdims=True), 0, None))
    lower = np.minimum(lower, upper)
    # the worst distribution within [lower, upper] summing to 1: fill the worst first
    out = np.empty(B)
    for b in range(B):
        order = np.argsort(-fail[b], kind="stable")
        left = 1.0 - lower[b].sum()
        total = float(lower[b] @ fail[b])
        for j in order:
            add = min(upper[b, j] - lower[b, j], max(left, 0.0))
            total += add * fail[b, j]
            left -= add
        out[b] = min(total, fail[b].max())
    return torch.from_numpy(np.clip(out, 0.0, 1.0))


def gorp_failure_probability(mdp: FiniteMDP, k: int, m: int, ties: str = "uniform",
                             tol: float = TOL, _cache: dict | None = None) -> float:
    """Probability that GORP with sequences of ``k`` actions and ``m`` rollouts each takes
    a suboptimal action at some step, from the initial distribution (exact for 0/1
    returns, a Bernstein upper bound otherwise; ``m = math.inf``: the limit, where GORP
    knows every sequence's value exactly). ``ties``: ``"uniform"`` (GORP picks
    among the tied best first actions at random, as :func:`rlnb.algos.gorp` does) or
    ``"worst"`` (against GORP: the reference code's bound, valid for any tie rule).

    >>> from rlnb.envs.gridworld import Gridworld
    >>> mdp = Gridworld.from_name("lock3").mdp()
    >>> gorp_failure_probability(mdp, k=3, m=1)   # one rollout per sequence suffices
    0.0
    """
    if int(k) < 1 or not m >= 1:
        raise ValueError(f"k and m must be >= 1 (actions per sequence, rollouts per sequence), got k={k}, m={m}")
    if ties not in ("uniform", "worst"):
        raise ValueError(f"ties must be 'uniform' or 'worst', got {ties!r}")
    ctx = _cache if _cache is not None else _context(mdp, int(k), tol)
    T, A = mdp.horizon, mdp.num_actions
    f_next = torch.zeros(mdp.num_states, dtype=torch.float64)
    for t in reversed(range(T)):
        f = torch.zeros(mdp.num_states, dtype=torch.float64)
        states = ctx["visit"][t].nonzero().squeeze(1)
        if states.numel():
            af = torch.where(ctx["opt"][t, states], (mdp.transitions[states] @ f_next), 1.0)  # (B, A)
            kk = min(int(k), T - t)  # GORP's sequences stop at the horizon
            if math.isinf(m):
                f[states] = _step_failure_limit(ctx["q"][kk][t, states], af, ties)
            elif ctx["scale"] is not None:
                f[states] = _step_failure_binary(ctx["q"][kk][t, states] / ctx["scale"], af,
                                                 int(m), ties)
            else:
                af = af.repeat_interleave(A ** (kk - 1), dim=1)  # (B, A^kk): by first action
                f[states] = _worst_case_bernstein(ctx["q"][kk][t, states], ctx["qs"][kk][t, states],
                                                  ctx["qw"][kk][t, states], af, int(m))
        f_next = f
    return float(mdp.initial @ f_next)


def _context(mdp: FiniteMDP, k: int, tol: float) -> dict[str, Any]:
    """What every failure evaluation for sequences of up to ``k`` actions shares: optimal
    actions, the states GORP can reach by them, whether returns are 0/1, and sequence
    values for every length up to ``k`` (GORP shortens its sequences to the steps left:
    ``min(k, T - t)`` at step ``t``)."""
    Qr = random_policy_q(mdp)
    Qs, Vs = value_iteration(mdp)
    opt = Qs >= Vs[:-1, :, None] - tol
    scale = _binary_scale(mdp, Vs)
    k = min(k, mdp.horizon)
    ctx: dict[str, Any] = {"opt": opt, "visit": reachable(mdp, opt), "scale": scale,
                           "q": _sequence_values_upto(mdp, Qr, k)}
    if scale is None:
        ctx["qs"] = _sequence_values_upto(mdp, Qs, k)
        ctx["qw"] = _sequence_values_upto(mdp, worst_q(mdp), k)
    return ctx


def _smallest_m(mdp: FiniteMDP, k: int, failure: float, ties: str, tol: float,
                m_max: int, m_stop: float, ctx: dict[str, Any]) -> tuple[int | None, float, int]:
    """Smallest ``m <= m_max`` with failure ``<= failure`` (doubling, then bisection).
    Returns ``(m, failure there, largest m known to fail)``; ``m`` is None when even
    ``m_max`` fails, or when some ``m >= m_stop`` fails (the caller no longer cares).
    ``ctx``: :func:`_context` for sequences of at least ``k`` actions."""
    fail = {}

    def f(m: int) -> float:
        if m not in fail:
            fail[m] = gorp_failure_probability(mdp, k, m, ties, tol, _cache=ctx)
        return fail[m]

    # With infinitely many rollouts GORP still fails this often: when that is already too
    # much (greedy on the sequences' values is not optimal often enough), no m helps.
    limit = gorp_failure_probability(mdp, k, math.inf, ties, tol, _cache=ctx)
    if limit > failure:
        return None, limit, m_max
    if ctx["scale"] is None and f(m_max) > failure:  # the bound is slow: rule out first
        return None, fail[m_max], m_max
    lo, hi = 0, 1
    while f(hi) > failure:
        if hi >= m_max or hi >= m_stop:
            return None, fail[hi], hi
        lo, hi = hi, min(2 * hi, m_max)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) <= failure:
            hi = mid
        else:
            lo = mid
    return hi, fail[hi], lo


@one_thread()
def gorp_effective_horizon(mdp: FiniteMDP, max_k: int | None = None, failure: float = 0.5,
                           ties: str = "uniform", tol: float = TOL,
                           m_max: int = M_MAX, progress: bool = True) -> EffectiveHorizon:
    """The effective horizon by the paper's definition: ``H = min_k k + log_A m_k`` with
    ``m_k`` the smallest number of rollouts per action sequence for which GORP acts
    optimally with probability ``>= 1 - failure`` (1/2 in the paper).

    Args:
        mdp: the finite-horizon MDP (``mdp.returns`` tells whether returns are 0/1; see
            the module docstring).
        max_k: the longest action sequences tried; default the largest ``k`` with
            ``A^k <= 1000`` (as the paper's code), and never more than ``T``.
        failure: the failure probability GORP may have.
        ties: how GORP breaks ties between equally good first actions: ``"uniform"`` at
            random (:func:`rlnb.algos.gorp`), ``"worst"`` against itself (the reference
            code's linear program; its ``m`` holds for any tie rule, and is larger).
        m_max: the largest ``m`` searched; ``H_k`` needing more is infinite.
        progress: a progress bar over ``k`` when the search takes more than 2 seconds
            (slippery maps need up to millions of rollouts per sequence).

    Returns:
        :class:`rlnb.mdp.horizon.EffectiveHorizon` with one ``per_k`` row per ``k``:
        ``k, works, m, log_m, H_k, failure`` (the failure probability at that ``m``),
        ``exact`` (True for 0/1 returns) and ``pruned``: a ``k`` whose ``H_k`` already
        exceeds the best ``H`` found is not searched to the end (``H_k`` is NaN and
        ``H_k_above`` a lower bound on it). On a deterministic MDP ``H <= T`` (``k = T``,
        ``m = 1`` is exhaustive search), so ``H`` is capped at ``T`` there, as
        :func:`rlnb.mdp.horizon.effective_horizon` does.
    """
    if ties not in ("uniform", "worst"):
        raise ValueError(f"ties must be 'uniform' or 'worst', got {ties!r}")
    if not 0 < failure < 1:
        raise ValueError(f"failure must lie in (0, 1) (the paper uses 1/2), got {failure}")
    if int(m_max) < 1:
        raise ValueError(f"m_max must be >= 1 (rollouts per action sequence), got {m_max}")
    T, A = mdp.horizon, mdp.num_actions
    if A < 2:
        raise ValueError("the effective horizon needs at least 2 actions (H is measured in "
                         f"log_A units; with one action every policy is optimal), got A = {A}")
    if max_k is None:
        max_k = max(1, int(math.floor(math.log(1000) / math.log(A) + 1e-9)))
    max_k = max(1, min(int(max_k), T))
    ctx = _context(mdp, max_k, tol)  # serves every k <= max_k
    exact = ctx["scale"] is not None
    deterministic = bool(((mdp.transitions == 0) | (mdp.transitions == 1)).all())
    H, best_k = (float(T), None) if deterministic else (math.inf, None)
    rows: list[dict[str, Any]] = []
    ks = tqdm(range(1, max_k + 1), desc="effective horizon (GORP)", unit="k", delay=2,
              disable=not progress, leave=False)
    for k in ks:
        # a k that cannot beat the best H so far is searched no further than that
        m_stop = A ** (H - k) if math.isfinite(H) else math.inf
        m, fail, m_fails = _smallest_m(mdp, k, failure, ties, tol, m_max, m_stop, ctx)
        row: dict[str, Any] = {"k": k, "works": m is not None, "failure": fail, "exact": exact,
                               "ties": ties, "pruned": False}
        if m is None:
            pruned = m_fails < m_max
            row.update(works=pruned, pruned=pruned, m=math.inf if not pruned else math.nan,
                       log_m=math.inf if not pruned else math.nan,
                       H_k=math.inf if not pruned else math.nan,
                       H_k_above=k + math.log(m_fails) / math.log(A))
        else:
            log_m = math.log(m) / math.log(A)
            row.update(m=float(m), log_m=log_m, H_k=k + log_m, H_k_above=math.nan)
            if k + log_m < H:
                H, best_k = k + log_m, k
        rows.append(row)
    return EffectiveHorizon(value=H, k=best_k, min_k=min_qvi_k(mdp, tol=tol), horizon=T,
                            num_actions=A, per_k=rows)
