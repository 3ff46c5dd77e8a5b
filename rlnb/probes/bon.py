"""Best-of-n sampling, the KL-optimal tilt, and reward over-optimisation (cards 11, 12).

Everything here is exact over a *discrete* output space: a base policy ``probs (Y,)`` and a
reward ``rewards (Y,)`` per output. No sampling, except the random rewards of the
over-optimisation experiment, which take an explicit generator.

- :func:`best_of_n_probs` -- the distribution of the best of ``n`` draws,
  ``pi_bon(y) = F(y)^n - F(y-)^n`` with ``F`` the base CDF in reward order.
- :func:`best_of_n_kl` and :func:`kl_bound` -- its exact KL to the base policy and the
  bound ``log n - (n - 1) / n`` (Beirami et al. arXiv:2401.01879: an upper bound, reached
  only in the continuous, no-ties limit; loose when a few outputs carry most of the mass).
- :func:`tilt` and :func:`tilt_with_kl` -- the KL-regularised optimum
  ``pi_beta(y) ∝ pi(y) exp(r(y) / beta)`` and the ``beta`` that spends a given KL
  (safeguarded Newton on ``log(1 / beta)``).
  Yang et al. (arXiv:2404.01730) show best-of-n is nearly this policy: at equal KL its
  reward gain is 91% of the tilt's at n = 2 and creeps towards 100% as n grows.
- :func:`best_of_n_curve` and :func:`tilt_curve` -- many ``n`` (or many ``beta``, or KL
  budgets) at once: the KL and the exact expectations of any scores, one row each.
- :func:`ensemble_reward` -- WCO (min), mean and UWO combinations of several proxies.
- :func:`overoptimisation_curve` -- Gao et al. (arXiv:2210.10760): choose by a proxy
  ``gold + heavy-tailed noise``; the proxy climbs forever while the gold reward peaks and
  falls. A worst-case ensemble of proxies (Coste et al. arXiv:2310.02743) resists.
- :func:`fit_overoptimisation` -- Gao et al.'s functional forms in ``d = sqrt(KL)``:
  ``R = d (alpha - beta d)`` for best-of-n and ``R = d (alpha - beta log d)`` for RL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = [
    "OveroptimisationFit",
    "best_of_n_curve",
    "best_of_n_kl",
    "best_of_n_probs",
    "fit_overoptimisation",
    "ensemble_reward",
    "goodhart_rewards",
    "kl_bound",
    "kl_divergence",
    "overoptimisation_curve",
    "tilt",
    "tilt_curve",
    "tilt_kl",
    "tilt_with_kl",
]

_TIES = ("split", "index")
_ENSEMBLES = ("min", "mean", "uwo")


# --- input checks ------------------------------------------------------------------------


def _vector(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array (one value per output y), got shape "
            f"{arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (first bad index {int(np.argmin(np.isfinite(arr)))})")
    return arr


def _distribution(probs: Any, rewards: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _vector(probs, "probs")
    r = _vector(rewards, "rewards")
    if p.shape != r.shape:
        raise ValueError(
            f"probs {p.shape} and rewards {r.shape} must pair up: one probability and one "
            "reward per output"
        )
    if p.min() < 0 or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"probs must be a distribution (>= 0, summing to 1), got min {p.min():.3g} and sum "
            f"{p.sum():.6g}; pass softmax(logits), not logits"
        )
    return p / p.sum(), r


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` without BLAS: on a busy machine OpenBLAS's threaded 1-D dot (and
    ``@``) waits milliseconds for its threads, a hundred times the arithmetic."""
    return float(np.sum(a * b))


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (draws per best-of-n pick), got {n!r}")
    return int(n)


def kl_divergence(q: Any, p: Any) -> float:
    """``KL(q || p) = sum_y q(y) log(q(y) / p(y))`` in nats, with ``0 log 0 = 0``.

    >>> round(kl_divergence([0.5, 0.5], [0.25, 0.75]), 6)
    0.143841
    """
    q_, p_ = _vector(q, "q"), _vector(p, "p")
    if q_.shape != p_.shape:
        raise ValueError(f"q {q_.shape} and p {p_.shape} must have the same shape")
    for name, x in (("q", q_), ("p", p_)):
        if x.size and (x.min() < 0 or abs(x.sum() - 1) > 1e-6):
            raise ValueError(
                f"{name} must be a distribution (>= 0, summing to 1), got min {x.min():.4g} "
                f"and sum {x.sum():.4g}; pass probabilities, not logits"
            )
    on = q_ > 0
    if np.any(p_[on] <= 0):
        return float("inf")
    return float(np.sum(q_[on] * (np.log(q_[on]) - np.log(p_[on]))))


# --- BEST-OF-N -----------------------------------------------------------------------------


def best_of_n_probs(probs: Any, rewards: Any, n: int, *, ties: str = "split") -> np.ndarray:
    """Exact distribution of the best of ``n`` independent draws from ``probs``.

    Sort the outputs by reward (a *stable* sort: equal rewards keep their index order) and
    let ``F`` be the base CDF along that order. The best of ``n`` draws is at or below
    position ``y`` with probability ``F(y)^n``, so ``pi_bon(y) = F(y)^n - F(y-)^n``.

    Ties (outputs with equal reward) need a rule for which tied draw wins:

    - ``ties="split"`` (default): the winner is uniform among the tied draws, which is what
      ``max(samples, key=reward)`` does (it returns the first maximum, and draws are
      i.i.d.). A tied class ``c`` gets ``F(c)^n - F(c-)^n`` in total, shared in proportion
      to the base probabilities inside it.
    - ``ties="index"``: the stable sort's order is taken as strict, so among equal rewards
      the output with the larger index wins -- the card's formula over a strictly sorted
      list. It has a larger KL than "split" and the same reward.

    With distinct rewards the two agree.

    Args:
        probs: ``(Y,)`` base policy over the outputs (array, tensor or list).
        rewards: ``(Y,)`` reward of each output; the ranking is all that matters.
        n: number of draws, >= 1 (``n = 1`` returns ``probs``).
        ties: ``"split"`` or ``"index"``, as above.

    Returns:
        float64 ``(Y,)``, summing to 1.

    >>> best_of_n_probs([0.5, 0.5], [0.0, 1.0], 2).tolist()      # 1 - 0.5**2 on the better
    [0.25, 0.75]
    >>> best_of_n_probs([0.25, 0.25, 0.5], [1.0, 1.0, 0.0], 2).tolist()
    [0.375, 0.375, 0.25]
    >>> best_of_n_probs([0.25, 0.25, 0.5], [1.0, 1.0, 0.0], 2, ties="index").round(6).tolist()
    [0.3125, 0.4375, 0.25]

    Footgun: ``F(y)^n - F(y-)^n`` computed naively cancels when ``F`` is near 1 and ``n`` is
    large. Here ``F`` is built from the tail sums, ``log F = log1p(-tail)``, and the
    difference as ``F^n * -expm1(n log(F(y-) / F(y)))``, accurate for n in the millions.
    """
    p, r = _distribution(probs, rewards)
    return _SortedBestOfN(p, r, ties).probs(_check_n(n))


class _SortedBestOfN:
    """Sorts the outputs by reward once; then gives ``pi_bon`` for any ``n`` (see
    :func:`best_of_n_probs`), in sorted order (``mass_sorted``) or in output order."""

    def __init__(self, p: np.ndarray, r: np.ndarray, ties: str) -> None:
        if ties not in _TIES:
            raise ValueError(f"ties must be one of {list(_TIES)}, got {ties!r}")
        self.order = np.argsort(r, kind="stable")  # ascending reward, ties in index order
        self.ps = p[self.order]
        rs = r[self.order]
        self.split = ties == "split"
        if self.split:  # one block per tied class: positions [start, end) in sorted order
            new = np.concatenate([[True], rs[1:] != rs[:-1]])
            starts = np.flatnonzero(new)
            ends = np.concatenate([starts[1:], [rs.size]])
            self.block_p = np.add.reduceat(self.ps, starts)  # mass of each class
            self.owner = np.repeat(np.arange(starts.size), ends - starts)
            bp = self.block_p[self.owner]
            self.share = np.divide(self.ps, bp, out=np.zeros_like(self.ps), where=bp > 0)

    def mass_sorted(self, n: int) -> np.ndarray:
        if self.split:
            return _cdf_power_diff(self.block_p, n)[self.owner] * self.share
        return _cdf_power_diff(self.ps, n)

    def probs(self, n: int) -> np.ndarray:
        out = np.empty_like(self.ps)
        out[self.order] = self.mass_sorted(n)
        return out


def _cdf_power_diff(ps: np.ndarray, n: int) -> np.ndarray:
    """``F(i)^n - F(i-1)^n`` for the CDF of ``ps`` (in the given order), stably."""
    tail_incl = np.cumsum(ps[::-1])[::-1]  # P(position >= i)
    tail_above = tail_incl - ps  # P(position > i)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_f = np.log1p(-np.clip(tail_above, 0.0, 1.0))  # log F(i)
        log_g = np.log1p(-np.clip(tail_incl, 0.0, 1.0))  # log F(i-1), -inf at the bottom
        diff = np.exp(n * log_f) * -np.expm1(n * (log_g - log_f))
    diff = np.where(ps > 0, diff, 0.0)
    return np.nan_to_num(diff, nan=0.0)


def best_of_n_kl(probs: Any, rewards: Any, n: int, *, ties: str = "split") -> float:
    """Exact ``KL(pi_bon || pi)`` in nats for the best of ``n`` draws (see
    :func:`best_of_n_probs`). Never above :func:`kl_bound` ``(n)``.

    >>> round(best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2), 6)   # KL([.25, .75] || [.5, .5])
    0.130812
    """
    p, _ = _distribution(probs, rewards)
    return kl_divergence(best_of_n_probs(probs, rewards, n, ties=ties), p)


def kl_bound(n: Any) -> Any:
    """``log n - (n - 1) / n``: the often-quoted KL of best-of-n, which Beirami et al.
    (arXiv:2401.01879) prove is an *upper bound*. It is attained for continuous rewards
    (no ties, no output with much mass) and loose for small output spaces: with 10 equally
    likely outputs and n = 64 the exact KL is 2.29 against a bound of 3.18 (it can never
    exceed log 10 = 2.30).

    >>> round(kl_bound(1), 6), round(kl_bound(2), 6)
    (0.0, 0.193147)
    """
    arr = np.asarray(n, dtype=np.float64)
    if np.any(arr < 1):
        raise ValueError(f"n must be >= 1, got {n!r}")
    out = np.log(arr) - (arr - 1) / arr
    return float(out) if out.ndim == 0 else out


# --- THE KL-OPTIMAL TILT ---------------------------------------------------------------------


def tilt(probs: Any, rewards: Any, beta: float) -> np.ndarray:
    """The exponential tilt ``pi_beta(y) ∝ pi(y) exp(r(y) / beta)``: the maximiser of
    ``E_q[r] - beta KL(q || pi)`` (Korbak et al. arXiv:2205.11275), so for its KL it has
    the highest expected reward of any policy.

    ``beta`` is the KL coefficient, as ``TrainConfig.beta``: ``beta -> inf`` returns
    ``probs``; ``beta -> 0`` puts all mass on the best outputs. ``beta = inf`` is allowed.

    >>> tilt([0.5, 0.5], [0.0, np.log(3.0)], 1.0).round(6).tolist()
    [0.25, 0.75]
    """
    p, r = _distribution(probs, rewards)
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (the KL coefficient; inf gives the base policy), got {beta!r}")
    if np.isinf(beta):
        return p.copy()
    with np.errstate(divide="ignore", over="ignore"):
        logits = np.log(p) + (r - r.max()) / beta  # -inf where p = 0 or beta is tiny
    logits -= logits.max()
    q = np.exp(logits)
    return q / q.sum()


def tilt_kl(probs: Any, rewards: Any, beta: float) -> float:
    """``KL(tilt(probs, rewards, beta) || probs)`` in nats; decreasing in ``beta``."""
    return kl_divergence(tilt(probs, rewards, beta), _distribution(probs, rewards)[0])


def tilt_with_kl(
    probs: Any, rewards: Any, kl: float, *, tol: float = 1e-10, max_iter: int = 200
) -> tuple[np.ndarray, float]:
    """The tilt that spends exactly ``kl`` nats: ``(pi_beta, beta)``.

    Solves ``KL(pi_beta || pi) = kl`` for ``beta``. With ``lam = 1 / beta`` the tilt's KL
    rises monotonically from 0 (``lam = 0``) to ``-log pi(best outputs)`` (``lam -> inf``)
    and its slope is ``dKL / dlam = lam Var_{pi_beta}(r)``, so the root is found by Newton
    steps on ``u = log lam`` kept inside a bisection bracket (a step that leaves the
    bracket is replaced by a bisection), until the KL is within ``tol``.

    Args:
        probs: ``(Y,)`` base policy; rewards: ``(Y,)``.
        kl: the KL budget in nats, ``0 <= kl < -log pi(argmax r)``.
        tol: absolute tolerance on the KL.
        max_iter: Newton/bisection steps before giving up.

    Raises:
        ValueError: ``kl`` is negative, or not below ``-log pi(argmax r)``: no tilt spends
            that much (best-of-n with ``ties="index"`` can, by favouring one tied output).

    >>> q, beta = tilt_with_kl([0.5, 0.5], [0.0, 1.0], kl=0.130812)
    >>> q.round(4).tolist(), round(beta, 4)                 # exp(1 / beta) = 3
    ([0.25, 0.75], 0.9102)
    """
    p, r = _distribution(probs, rewards)
    if not kl >= 0:
        raise ValueError(f"kl must be >= 0 nats, got {kl!r}")
    if kl == 0:
        return p.copy(), float("inf")
    top = r == r.max()
    kl_max = -float(np.log(p[top].sum())) if p[top].sum() > 0 else float("inf")
    if not kl < kl_max:
        raise ValueError(
            f"kl ({kl:.6g}) must be below {kl_max:.6g} = -log pi(best outputs): the tilt's KL "
            "approaches it only as beta -> 0"
        )
    if float(np.ptp(r)) == 0:
        raise ValueError("all rewards are equal: every tilt is the base policy (KL 0)")
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    rs = r - r.max()

    def kl_and_slope(u: float) -> tuple[float, float, np.ndarray]:
        # log q = log p + lam r - log Z, so KL(q || p) = lam E_q[r] - log Z
        lam = float(np.exp(u))
        with np.errstate(invalid="ignore"):
            logits = log_p + lam * rs  # -inf where p = 0
        top = float(logits.max())
        e = np.exp(logits - top)
        z = float(e.sum())
        q = e / z
        mean = _dot(q, rs)
        k = max(lam * mean - top - float(np.log(z)), 0.0)
        var = _dot(q, (rs - mean) ** 2)
        return k, lam * lam * var, q  # dKL/du = lam^2 Var_q(r)

    # bracket u = log(1 / beta): KL(lo) < kl < KL(hi)
    lo, hi = -30.0, 0.0
    k_lo = kl_and_slope(lo)[0]
    while k_lo >= kl:
        lo -= 10.0
        k_lo = kl_and_slope(lo)[0]
    while kl_and_slope(hi)[0] < kl:
        lo, hi = hi, hi + 5.0
        if hi > 700:
            raise ValueError(f"could not reach kl = {kl:.6g}: the search ran past beta = e^-700")
    # start from the small-KL expansion KL ~ lam^2 Var_pi(r) / 2
    var_p = _dot(p, (rs - _dot(p, rs)) ** 2)
    u0 = 0.5 * float(np.log(2 * kl / var_p)) if var_p > 0 else 0.5 * (lo + hi)
    u = u0 if lo < u0 < hi else 0.5 * (lo + hi)
    for _ in range(max_iter):
        k, slope, q = kl_and_slope(u)
        if abs(k - kl) <= tol:
            return q / q.sum(), float(np.exp(-u))
        lo, hi = (u, hi) if k < kl else (lo, u)
        step = u - (k - kl) / slope if slope > 0 else np.nan
        u = step if lo < step < hi else 0.5 * (lo + hi)
    raise ValueError(
        f"tilt_with_kl did not reach kl = {kl:.6g} within tol = {tol:g} in {max_iter} steps "
        f"(last KL {k:.10g}); raise max_iter or tol"
    )


# --- CURVES: MANY n, MANY beta, EXACT EXPECTATIONS ----------------------------------------


def _value_columns(values: Any, size: int) -> dict[str, np.ndarray]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TypeError(
            "values must be a dict {column name: (Y,) array}, e.g. {'gold': gold}, got "
            f"{type(values).__name__}"
        )
    out = {}
    for name, v in values.items():
        arr = _vector(v, f"values[{name!r}]")
        if arr.size != size:
            raise ValueError(f"values[{name!r}] has {arr.size} entries, probs has {size}")
        out[str(name)] = arr
    return out


def _kl_sorted(q: np.ndarray, p: np.ndarray) -> float:
    on = q > 0
    return float(np.sum(q[on] * (np.log(q[on]) - np.log(p[on]))))


def best_of_n_curve(
    probs: Any, rewards: Any, ns: Sequence[int], *, values: Any = None, ties: str = "split"
) -> pd.DataFrame:
    """Exact best-of-n for every ``n`` in ``ns``: KL and expected rewards, one row per n.

    The expectations are the order-statistic sums ``E_bon[v] = sum_y pi_bon(y) v(y)`` with
    ``pi_bon`` from :func:`best_of_n_probs` -- no sampling of the ``n`` draws. The outputs
    are sorted by reward once, so a curve of 15 values of ``n`` over 50,000 outputs costs a
    few milliseconds per ``n``.

    Args:
        probs: ``(Y,)`` base policy; rewards: ``(Y,)`` the reward best-of-n maximises.
        ns: the numbers of draws.
        values: optional ``{name: (Y,) array}``: other scores of each output (a gold
            reward, say) whose expectation under ``pi_bon`` becomes a column.
        ties: as in :func:`best_of_n_probs`.

    Returns:
        DataFrame with columns ``n, kl, d`` (``sqrt(kl)``), ``kl_bound``, ``reward`` and one
        per entry of ``values``.

    >>> best_of_n_curve([0.5, 0.5], [0.0, 1.0], [1, 2], values={"gold": [1.0, 0.0]}).round(6)
       n        kl         d  kl_bound  reward  gold
    0  1  0.000000  0.000000  0.000000    0.50  0.50
    1  2  0.130812  0.361679  0.193147    0.75  0.25
    """
    p, r = _distribution(probs, rewards)
    cols = _value_columns(values, p.size)
    ns = [_check_n(n) for n in ns]
    if not ns:
        raise ValueError("ns is empty: pass the numbers of draws, e.g. [1, 2, 4, 8]")
    bon = _SortedBestOfN(p, r, ties)
    sorted_cols = {"reward": r[bon.order], **{k: v[bon.order] for k, v in cols.items()}}
    rows = []
    for n in ns:
        q = bon.mass_sorted(n)
        kl = max(_kl_sorted(q, bon.ps), 0.0)
        rows.append({"n": n, "kl": kl, "d": float(np.sqrt(kl)), "kl_bound": kl_bound(n),
                     **{k: _dot(q, v) for k, v in sorted_cols.items()}})
    return pd.DataFrame(rows)


def tilt_curve(
    probs: Any, rewards: Any, *, betas: Sequence[float] | None = None,
    kls: Sequence[float] | None = None, values: Any = None,
) -> pd.DataFrame:
    """The KL-regularised optimum ``pi_beta ∝ pi exp(r / beta)`` for a sweep: exact KL and
    expected rewards, one row per ``beta``.

    This is the policy RL with a KL penalty ``beta`` converges to (card 10), computed in
    closed form instead of trained. Give the sweep either as ``betas`` or as KL budgets
    ``kls`` (each solved for its ``beta`` by :func:`tilt_with_kl`, e.g. best-of-n's KLs to
    compare the two at equal KL), not both.

    Returns:
        DataFrame with columns ``beta, kl, d, reward`` and one per entry of ``values``.

    >>> tilt_curve([0.5, 0.5], [0.0, np.log(3.0)], betas=[1.0], values={"gold": [1.0, 0.0]}).round(4)
       beta      kl       d  reward  gold
    0   1.0  0.1308  0.3617   0.824  0.25
    """
    if (betas is None) == (kls is None):
        raise ValueError("pass exactly one of betas= (KL coefficients) or kls= (KL budgets)")
    p, r = _distribution(probs, rewards)
    cols = {"reward": r, **_value_columns(values, p.size)}
    rows = []
    for x in (betas if betas is not None else kls):
        if betas is not None:
            q, beta = tilt(p, r, float(x)), float(x)
        else:
            q, beta = tilt_with_kl(p, r, float(x))
        kl = max(kl_divergence(q, p), 0.0)
        rows.append({"beta": beta, "kl": kl, "d": float(np.sqrt(kl)),
                     **{k: _dot(q, v) for k, v in cols.items()}})
    return pd.DataFrame(rows)


# --- GOODHART: GOLD, PROXY, ENSEMBLES --------------------------------------------------------


def _numpy_generator(generator: Any) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):  # derive a numpy stream from it
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return np.random.default_rng(seed)
    raise TypeError(
        "generator must be a numpy Generator (np.random.default_rng(0)) or a "
        f"torch.Generator, got {type(generator).__name__}: the draws take an explicit generator"
    )


def goodhart_rewards(
    num_outputs: int,
    *,
    generator: Any,
    num_proxies: int = 1,
    noise_scale: float = 0.5,
    noise_df: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Gold rewards and proxies of the over-optimisation toy (card 12).

    ``gold ~ N(0, 1)`` per output; proxy ``k`` is ``gold + noise_scale * t_{noise_df}``,
    with independent Student-t noise per proxy. Heavy tails (``noise_df`` <= 2 has infinite
    variance) are what make the proxy's top outputs mostly noise.

    Draw order: gold first, then one proxy after the other, so with the same seed proxy 0
    of an ensemble is the single proxy of ``num_proxies=1``.

    Returns:
        ``gold (Y,)`` and ``proxies (num_proxies, Y)``, float64.
    """
    if int(num_outputs) < 2 or int(num_proxies) < 1:
        raise ValueError(
            f"need num_outputs >= 2 and num_proxies >= 1, got {num_outputs} and {num_proxies}"
        )
    if not noise_scale >= 0 or not noise_df > 0:
        raise ValueError(f"need noise_scale >= 0 and noise_df > 0, got {noise_scale}, {noise_df}")
    g = _numpy_generator(generator)
    gold = g.standard_normal(int(num_outputs))
    proxies = np.stack([gold + noise_scale * g.standard_t(noise_df, int(num_outputs))
                        for _ in range(int(num_proxies))])
    return gold, proxies


def ensemble_reward(proxies: Any, ensemble: str = "min", *, uwo_coef: float = 1.0) -> np.ndarray:
    """Combine ``(K, Y)`` proxy rewards into the one reward that is optimised (Coste et al.
    arXiv:2310.02743): ``"min"`` is worst-case optimisation (WCO, ``min_k r_k``),
    ``"mean"`` the average, ``"uwo"`` uncertainty-weighted (``mean - uwo_coef * Var_k``).

    >>> ensemble_reward([[1.0, 3.0], [2.0, 0.0]]).tolist(), ensemble_reward([[1.0, 3.0], [2.0, 0.0]], "uwo").tolist()
    ([1.0, 0.0], [1.25, -0.75])

    Footgun: WCO protects only as much as the members disagree. Proxies with independent
    errors (as :func:`goodhart_rewards` draws them) rarely share an outlier; reward models
    trained on the same data do.
    """
    if ensemble not in _ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(_ENSEMBLES)}, got {ensemble!r}")
    arr = np.asarray(proxies, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"proxies must be (K, Y): K proxies of Y outputs each, got shape {arr.shape}")
    if ensemble == "min":
        return arr.min(axis=0)
    if ensemble == "mean":
        return arr.mean(axis=0)
    return arr.mean(axis=0) - uwo_coef * arr.var(axis=0)


def overoptimisation_curve(
    ns: Sequence[int],
    *,
    generator: Any,
    num_outputs: int = 50_000,
    num_proxies: int = 1,
    ensemble: str = "min",
    uwo_coef: float = 1.0,
    noise_scale: float = 0.5,
    noise_df: float = 1.5,
    probs: Any = None,
) -> pd.DataFrame:
    """Best-of-n against a proxy reward, scored by the gold reward (Gao et al. 2022).

    Draws the rewards with :func:`goodhart_rewards`, combines the proxies into the reward
    that best-of-n maximises, and for every ``n`` computes exactly (no sampling of the n
    draws): the KL to the base policy, the expected proxy and gold rewards of
    ``pi_bon``.

    Args:
        ns: the numbers of draws, e.g. ``[1, 2, 4, ..., 16384]``.
        generator: ``np.random.default_rng(seed)``, or a ``torch.Generator`` (a numpy
            stream is seeded from it).
        num_outputs: size of the output space, uniform base policy unless ``probs``.
        num_proxies: proxies with independent noise; 1 = a single proxy.
        ensemble: how several proxies become one reward: ``"min"`` (worst-case, WCO),
            ``"mean"``, or ``"uwo"`` (mean - ``uwo_coef`` * variance across proxies;
            Coste et al. arXiv:2310.02743).
        noise_scale, noise_df: proxy noise ``noise_scale * t_{noise_df}``.
        probs: ``(num_outputs,)`` base policy; default uniform.

    Returns:
        DataFrame with one row per n: ``n, kl, d`` (= sqrt(kl)), ``kl_bound``, ``proxy``
        (expected optimised reward), ``gold`` (expected gold reward), ``proxies``
        (num_proxies) and ``ensemble``.

    >>> df = overoptimisation_curve([1, 16, 4096], generator=np.random.default_rng(0))
    >>> bool(df.gold.iloc[1] > df.gold.iloc[0]), bool(df.gold.iloc[2] < df.gold.iloc[1])
    (True, True)

    Footgun: the ensemble here is optimistic -- its members' errors are independent, so
    the minimum rarely keeps an outlier. Reward models trained on the same data share
    their mistakes, and the minimum of correlated proxies protects far less.
    """
    if ensemble not in _ENSEMBLES:
        raise ValueError(f"ensemble must be one of {list(_ENSEMBLES)}, got {ensemble!r}")
    gold, proxies = goodhart_rewards(num_outputs, generator=generator, num_proxies=num_proxies,
                                     noise_scale=noise_scale, noise_df=noise_df)
    reward = ensemble_reward(proxies, ensemble, uwo_coef=uwo_coef)
    p = np.full(gold.size, 1.0 / gold.size) if probs is None else _distribution(probs, gold)[0]
    if p.size != gold.size:
        raise ValueError(f"probs has {p.size} outputs but num_outputs is {gold.size}")
    out = best_of_n_curve(p, reward, ns, values={"gold": gold}).rename(columns={"reward": "proxy"})
    out["proxies"] = int(num_proxies)
    out["ensemble"] = ensemble if num_proxies > 1 else "single"
    return out


# --- GAO ET AL.'S FUNCTIONAL FORMS -----------------------------------------------------------


@dataclass(frozen=True)
class OveroptimisationFit:
    """Least-squares fit of Gao et al.'s gold-reward law in ``d = sqrt(KL)``.

    Attributes:
        form: ``"bon"`` for ``R = d (alpha - beta d)`` or ``"rl"`` for
            ``R = d (alpha - beta log d)``.
        alpha, beta: the coefficients (R is measured from the base policy's reward).
        r2: coefficient of determination on the fitted points.
        peak_d, peak_reward: where the fitted curve peaks and its value there.
        n: number of points.
    """

    form: str
    alpha: float
    beta: float
    r2: float
    peak_d: float
    peak_reward: float
    n: int

    def predict(self, d: Any) -> np.ndarray:
        d = np.asarray(d, dtype=np.float64)
        if self.form == "bon":
            return d * (self.alpha - self.beta * d)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (self.alpha - self.beta * np.log(d)), 0.0)


def fit_overoptimisation(d: Any, reward: Any, *, form: str = "bon") -> OveroptimisationFit:
    """Fit ``R(d) = d (alpha - beta d)`` (``form="bon"``) or ``d (alpha - beta log d)``
    (``form="rl"``) through the origin, by linear least squares.

    ``reward`` should be the gold reward *gain* over the base policy (R(0) = 0).

    >>> d = np.linspace(0.1, 3, 20)
    >>> fit = fit_overoptimisation(d, d * (1.0 - 0.4 * d))
    >>> round(fit.alpha, 6), round(fit.beta, 6), round(fit.peak_d, 6), round(fit.r2, 6)
    (1.0, 0.4, 1.25, 1.0)
    """
    if form not in ("bon", "rl"):
        raise ValueError(f"form must be 'bon' (d(alpha - beta d)) or 'rl', got {form!r}")
    x = np.asarray(d, dtype=np.float64).ravel()
    y = np.asarray(reward, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"d ({x.size},) and reward ({y.size},) must pair up, with >= 2 points")
    if np.any(x < 0) or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("d must be >= 0 and both arrays finite")
    if form == "rl" and np.any(x == 0):
        raise ValueError("form='rl' needs d > 0 (log d); drop the n = 1 point")
    second = x * x if form == "bon" else x * np.log(x)
    X = np.stack([x, -second], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ np.array([alpha, beta])
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    if beta <= 0:  # no turning point: the fitted reward never stops rising
        peak_d = peak_r = float("inf")
    elif form == "bon":  # d (alpha - beta d) peaks at alpha / (2 beta)
        peak_d, peak_r = alpha / (2 * beta), alpha**2 / (4 * beta)
    else:  # d (alpha - beta log d) peaks where alpha - beta log d = beta
        peak_d = float(np.exp(alpha / beta - 1))
        peak_r = beta * peak_d
    return OveroptimisationFit(form, float(alpha), float(beta), r2, float(peak_d), float(peak_r),
                               int(x.size))
