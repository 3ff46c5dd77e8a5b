"""pass@k: the unbiased estimator of Chen et al. (2021), and exact pass@k from known
success probabilities, in the core so that every layer computes pass@k the same way
(:mod:`rlnb.probes.passk` builds curves on them and re-exports them; the sandboxes' exact
metrics use :func:`exact_pass_at_k`). Functions of counts and probabilities: NumPy
arrays, and torch tensors for :func:`exact_pass_at_k`.

Draw ``n`` samples for a problem, count the ``c`` that are correct. The unbiased estimate
of "at least one of k fresh samples is correct" is::

    pass@k = 1 - C(n - c, k) / C(n, k)          (openai/human-eval, evaluation.py)

computed here in the stable product form ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, summed in
log space so that n = 4096 neither overflows nor loses digits. Average it over problems to
get the benchmark pass@k (Yue et al. 2025, arXiv:2504.13837, card 1).

The footgun: ``1 - (1 - c/n)**k`` (plugging the empirical success rate into the exact
formula) is *biased* -- it overestimates pass@k at small c/n. Use :func:`pass_at_k` on
counts and :func:`pass_at_k_from_probs` only when you know the true probabilities (a
tabular policy, a sandbox's exact answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlnb.checks import as_tensor

__all__ = ["default_ks", "exact_pass_at_k", "pass_at_k", "pass_at_k_from_probs"]


def as_int_array(x: Any, name: str) -> np.ndarray:
    """An int64 numpy array from an int, a sequence, a numpy array or a torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except ValueError as err:  # a ragged list
        raise ValueError(f"{name} must be a flat list or array of counts: {err}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(
                f"{name} must hold whole numbers (counts of samples), got {arr.ravel()[:5]}"
            )
    return arr.astype(np.int64)


def _first_bad(mask: np.ndarray) -> str:
    """' (first at index i)' for an array input, '' for a scalar."""
    if mask.ndim == 0:
        return ""
    return f" (first at index {tuple(int(i) for i in np.argwhere(mask)[0])})".replace(",)", ")")


def pass_at_k(n: Any, c: Any, k: int) -> np.ndarray | float:
    """Unbiased pass@k per problem from ``n`` samples of which ``c`` are correct.

    Args:
        n: samples drawn per problem: an int, or an array/tensor of shape ``(P,)``.
        c: correct samples per problem, shape ``(P,)`` (or an int). ``n`` and ``c``
            broadcast, so one ``n`` for all problems is the usual call.
        k: the budget, an int with ``1 <= k <= n``.

    Returns:
        float64 array of shape ``broadcast(n, c).shape`` with pass@k of each problem, or a
        Python float when both ``n`` and ``c`` are scalars. Average it yourself
        (``.mean()``) for the benchmark number; :func:`rlnb.probes.pass_at_k_curve` does
        that over k.

    Exact at the edges: ``c == 0`` gives 0.0 and ``n - c < k`` gives 1.0 (every draw of k
    contains a correct sample).

    >>> round(pass_at_k(4, 1, 1), 6)
    0.25
    >>> round(pass_at_k(4, 1, 2), 6)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> pass_at_k(8, [0, 2, 8], 4).round(6).tolist()  # 1 - C(6,4)/C(8,4) = 1 - 15/70
    [0.0, 0.785714, 1.0]

    Footgun: this is not ``1 - (1 - c/n)**k``; that plug-in is biased upwards.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    k = int(k)
    n_in, c_in = as_int_array(n, "n"), as_int_array(c, "c")
    scalar = n_in.ndim == 0 and c_in.ndim == 0
    try:
        n_arr, c_arr = np.broadcast_arrays(n_in, c_in)
    except ValueError as err:
        if "broadcast" not in str(err):
            raise
        raise ValueError(
            f"n has shape {n_in.shape} and c has shape {c_in.shape}: give one n for all "
            "problems or one per problem, and one c per problem (the same length)"
        ) from None
    if k < 1:
        raise ValueError(f"k ({k}) must be at least 1: pass@k is the chance that k samples hit")
    if np.any(n_arr < 0):
        bad = n_arr < 0
        raise ValueError(f"n ({n_arr[bad].flat[0]}) must be >= 0{_first_bad(bad)}")
    if np.any(c_arr < 0):
        bad = c_arr < 0
        raise ValueError(
            f"c ({c_arr[bad].flat[0]}) must be >= 0{_first_bad(bad)}: "
            "c counts correct samples among the n drawn"
        )
    if np.any(c_arr > n_arr):
        bad = c_arr > n_arr
        raise ValueError(
            f"c ({c_arr[bad].flat[0]}) cannot exceed n ({n_arr[bad].flat[0]}): "
            f"c counts correct samples among the n drawn{_first_bad(bad)}"
        )
    if np.any(k > n_arr):
        bad = k > n_arr
        raise ValueError(
            f"k ({k}) cannot exceed n ({n_arr[bad].flat[0]}): the unbiased estimator needs "
            f"at least k samples per problem; draw more samples or use a smaller k"
            f"{_first_bad(bad)}"
        )

    # log C(m', k) - log C(m, k) = sum_{i=m'+1}^{m} log(1 - k/i) for k <= m' <= m, so one
    # cumulative table T[m] = sum_{i=k+1}^{m} log1p(-k/i) (T[m] = 0 for m <= k) serves every
    # problem: log(C(n-c,k)/C(n,k)) = T[n] - T[n-c]. No Python loop over problems.
    n_max = int(n_arr.max(initial=k))
    i = np.arange(k + 1, n_max + 1, dtype=np.float64)
    table = np.zeros(n_max + 1, dtype=np.float64)
    table[k + 1 :] = np.cumsum(np.log1p(-k / i))
    hit_for_sure = (n_arr - c_arr) < k
    m = np.where(hit_for_sure, k, n_arr - c_arr)  # any index >= k; masked out below
    log_ratio = table[n_arr] - table[m]  # log C(n-c,k)/C(n,k) <= 0
    out = np.where(hit_for_sure, 1.0, -np.expm1(log_ratio))
    out = np.where(c_arr == 0, 0.0, out)  # exact zero, not 1 - exp(~1e-16)
    out = out.astype(np.float64)
    return float(out) if scalar else out


def pass_at_k_from_probs(p: Any, k: Any, *, reduce: str = "mean") -> np.ndarray | float:
    """Exact pass@k ``1 - (1 - p)^k`` of problems with known success probabilities ``p``.

    Use this when ``p`` is exact (a tabular policy's probability of a correct answer, a
    sandbox's closed form); with sampled counts use :func:`pass_at_k` instead.

    Args:
        p: per-problem success probabilities in [0, 1], shape ``(P,)`` (array/tensor/float).
        k: an int, or an array of ints of shape ``(K,)``.
        reduce: ``"mean"`` averages over problems; ``"none"`` keeps them.

    Returns:
        scalar k: a float (``"mean"``) or shape ``(P,)`` (``"none"``);
        array k: shape ``(K,)`` (``"mean"``) or ``(K, P)`` (``"none"``).

    Computed as ``-expm1(k * log1p(-p))`` in float64 so that tiny p at large k keeps its
    digits. Its tensor form, :func:`exact_pass_at_k` (the sandboxes' exact metrics),
    computes ``1 - (1 - p)^k`` in the input's dtype with torch's ops instead; the two
    agree to the rounding of that dtype but not bit for bit, which is why neither calls
    the other (one would change the other's numbers).

    >>> pass_at_k_from_probs([0.5, 0.0], 2)
    0.375
    >>> pass_at_k_from_probs([0.5], [1, 2, 3]).tolist()
    [0.5, 0.75, 0.875]
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    if hasattr(p, "detach") and hasattr(p, "cpu"):
        p = p.detach().cpu().numpy()
    p_arr = np.asarray(p, dtype=np.float64)
    if np.any(~np.isfinite(p_arr)) or np.any((p_arr < 0) | (p_arr > 1)):
        raise ValueError("p must hold probabilities in [0, 1]")
    k_arr = as_int_array(k, "k")
    if np.any(k_arr < 1):
        raise ValueError(f"k must be at least 1, got {k_arr.ravel().tolist()}")
    if k_arr.ndim > 1:
        raise ValueError(f"k must be an int or a 1-d array of ints, got shape {k_arr.shape}")
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-p_arr)  # -inf where p == 1
    kk = k_arr.astype(np.float64)
    if k_arr.ndim == 1:
        kk = kk.reshape((-1,) + (1,) * p_arr.ndim)
    out = -np.expm1(kk * log_miss)
    if reduce == "mean" and p_arr.ndim > 0:
        out = out.mean(axis=-1)
    if np.ndim(out) == 0:
        return float(out)
    return out


def default_ks(n: int) -> list[int]:
    """Powers of two up to ``n``, plus ``n`` itself: ``default_ks(12) == [1, 2, 4, 8, 12]``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int (samples per problem), got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n ({n}) must be at least 1")
    ks = [2**j for j in range(int(n).bit_length()) if 2**j <= n]
    return ks if ks[-1] == n else [*ks, int(n)]


def exact_pass_at_k(
    success: torch.Tensor, k: int | Sequence[int] | torch.Tensor, *, per_problem: bool = False
) -> torch.Tensor:
    """pass@k of ``k`` independent attempts with per-problem success probability ``p``:
    ``1 - (1 - p)^k``, averaged over problems.

    The tensor form of :func:`pass_at_k_from_probs` (NumPy arrays, float64,
    ``-expm1(k log1p(-p))``): this one stays in the input's dtype and device, which is
    what the sandboxes' exact metrics (``StrategyBandit.exact_pass_at_k``,
    ``TreeMDP.exact_pass_at_k``) are computed and logged in.
    The two are kept apart on purpose: they agree to the input dtype's rounding, not bit
    for bit (different formulas, dtypes and libraries; on card 1's inputs about 45% of the
    float32 values differ in the last bits), and the reproductions' numbers are this one's.

    Args:
        success: ``(P,)`` per-problem probability that one attempt succeeds.
        k: an int, or a 1-D sequence/tensor of ints ``(K,)``; each must be >= 1.
        per_problem: return the per-problem values instead of their mean.
    Returns:
        int ``k``: a 0-d tensor (or ``(P,)``); several ``k``: ``(K,)`` (or ``(K, P)``).

    >>> exact_pass_at_k(torch.tensor([0.5, 0.0]), [1, 2])
    tensor([0.2500, 0.3750])
    """
    success = as_tensor(success, "success", "per-problem success probabilities, shape (P,)")
    if success.numel() and not success.dtype == torch.bool:
        lo, hi = success.min().item(), success.max().item()
        if not (0 <= lo and hi <= 1):  # also catches nan
            bad = lo if not 0 <= lo else hi
            raise ValueError(
                f"success must hold probabilities in [0, 1] (per-problem chance that one "
                f"attempt succeeds), got {bad:.4g}; pass probabilities, not logits or counts"
            )
    ks = as_tensor(k, "k", "an int or a 1-D sequence of ints (numbers of attempts)")
    ks = ks.to(success.device)
    scalar = ks.ndim == 0
    ks = ks.reshape(-1)
    if ks.is_floating_point() and not torch.equal(ks, ks.round()):
        raise ValueError(f"k must be whole numbers of attempts (>= 1), got {ks.tolist()}")
    if ks.numel() == 0 or ks.min() < 1:
        raise ValueError(f"k must be >= 1 (number of attempts), got {ks.tolist()}")
    dtype = success.dtype if success.is_floating_point() else torch.get_default_dtype()
    fail = (1 - success.to(dtype)).clamp(0, 1)  # (P,)
    out = 1 - fail.unsqueeze(0) ** ks.to(dtype).unsqueeze(1)  # (K, P)
    if not per_problem:
        out = out.mean(-1)  # (K,)
    return out[0] if scalar else out
