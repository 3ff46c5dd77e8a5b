"""Effective rank of hidden states, and its dynamics over a response (card 7).

Effective rank (Roy & Vetterli 2007): take the singular values ``sigma_j`` of a
``(tokens x hidden)`` matrix ``Z``, normalise them to a distribution ``p_j = sigma_j /
sum(sigma)``, and exponentiate its Shannon entropy::

    ER(Z) = exp(-sum_j p_j log p_j)

ER is 1 for a rank-1 matrix, ``r`` for ``r`` equal singular values, and in between it
counts the directions the states spread over, weighted by how much they use each.

Huang et al. (arXiv:2509.23808, code hf618/VERL ``verl/trainer/metrics_utils.py``) follow ER
along a response: for the prefixes ``t = s, 2s, ...`` of a response's states at one layer,

    Delta_t = ER_t - mean(ER of the earlier prefixes)     (its "diff")
    ERA_t   = Delta_t - Delta_{t-s}                         (its "diff 2")
    ERV     = mean_t Delta_t,   ERA = mean_t ERA_t           (per response)

ERV ("velocity") says how fast a response keeps opening new directions; ERA
("acceleration") whether that speeds up or slows down.

Checked against the VERL code (``_calculate_diffs_batched_single_device``): the same
prefixes ``k_t = s, 2s, ...`` of the response states (padding zeroed by the attention
mask), column-centred, the same running mean of the earlier ERs, the same ``diff`` and
``diff 2``. Three differences, none in the definitions: VERL takes the singular values as
square roots of the Gram matrix's eigenvalues in float32 and adds ``EPS = 1e-8`` inside
``p / (sum + EPS)`` and ``log(p + EPS)`` (so its ER of a rank-r matrix is r to about 1e-7,
not 1e-15); when ``base_metrics_batch`` is passed it appends one more prefix, the whole
response, if the last stride stopped short of it (here a partial last block is left out,
as card 7 states the prefixes); and its single-sample variant
``calculate_diffs_for_single_sample_optimized`` uses windows ``[:t + 1]``, one token longer
than the batched code's ``[:t]`` (here ``[:t]``, as in the batched code and the card).

A footgun of short responses, with ``s = 1``: the first two prefixes always have ER = 1
(one centred token is the zero matrix, two centred tokens are rank 1), so Delta_2 = 0 and
a 3-token response has ERV = (ER - 1) / 2 exactly -- ER and ERV are then coupled by
algebra, whatever the model does.

The footgun: without centring, ER is dominated by the mean vector. Residual streams carry
a large shared offset, so the uncentred matrix is close to rank 1 and ER sits near 1 whatever
the tokens do. Card 7 and the VERL code centre each column (subtract the mean over tokens);
so does :func:`effective_rank` unless ``center=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

__all__ = ["RankDynamics", "effective_rank", "rank_by_layer", "rank_dynamics"]


def _as_float64(Z: Any, name: str = "Z") -> tuple[torch.Tensor, bool, float]:
    """``(float64 tensor, was_numpy, rounding unit of the input)``."""
    was_numpy = not isinstance(Z, torch.Tensor)
    if was_numpy:
        try:
            arr = np.asarray(Z)
        except ValueError as err:  # a ragged list
            raise ValueError(f"{name} must be a (tokens, hidden) matrix: {err}") from None
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    z = torch.as_tensor(arr) if was_numpy else Z.detach()
    if z.dtype == torch.bool or z.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {z.dtype}")
    # Values stored in float32 or coarser carry float32-level rounding at best; integers
    # and float64 are exact in float64.
    coarse = z.is_floating_point() and z.dtype != torch.float64
    unit = torch.finfo(torch.float32 if coarse else torch.float64).eps
    z = z.to(torch.float64)
    if z.ndim < 2:
        raise ValueError(
            f"{name} must be a (tokens, hidden) matrix or a batch (..., tokens, hidden); "
            f"got shape {tuple(z.shape)}"
        )
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} holds nan or inf; effective rank needs finite states")
    return z, was_numpy, unit


def effective_rank(Z: Any, *, center: bool = True) -> Any:
    """Effective rank (Roy & Vetterli 2007) of ``Z`` ``(T, d)``, or of each matrix in a batch.

    Args:
        Z: ``(T, d)`` -- T token states of width d at one layer -- or ``(..., T, d)``.
            A torch tensor or a numpy array; computed in float64.
        center: subtract the mean over tokens (each column's mean) first, as card 7 and the
            VERL code do. Leave it on unless you know why: see the footgun below.

    Returns:
        a float for one matrix; for a batch, ``(...)`` of the input's kind (tensor or array).

    Conventions, so that degenerate inputs are stable rather than noise:

    - singular values below ``eps * ||Z||_F`` (the norm before centring; ``eps`` the float32
      unit roundoff for float32/16 input, ``max(T, d)`` float64 units for float64 input)
      count as 0. Storing Z in float32 perturbs it by at most that much, and centring or
      the SVD add less, so a rank-1 matrix gives exactly 1 even after a large offset is
      subtracted; a direction that weak is below the resolution Z was stored at;
    - a zero matrix -- and so one token, or T identical tokens, after centring -- gives
      1.0: ``exp`` of the entropy 0 of an empty spectrum, what the VERL code returns
      (``batched_effective_rank``: ``p = 0``, ``H = 0``). It is not 0, the classical rank;
    - an empty matrix (no token or no hidden unit) is a ``ValueError``: select the
      response's tokens first (:func:`rank_by_layer` reports 1.0 for a response whose
      mask selects nothing).

    >>> effective_rank(torch.eye(4), center=False)   # 4 equal singular values
    4.0
    >>> round(effective_rank(torch.tensor([[1., 2.], [2., 4.], [3., 6.]])), 6)  # rank 1
    1.0

    Footgun: uncentred, a big shared offset makes any matrix look rank 1:

    >>> g = torch.Generator().manual_seed(0)
    >>> Z = 100 + torch.randn(64, 8, generator=g)
    >>> round(effective_rank(Z, center=False), 2), round(effective_rank(Z), 1) > 7
    (1.17, True)
    """
    z, was_numpy, unit = _as_float64(Z)
    if z.shape[-2] == 0 or z.shape[-1] == 0:
        raise ValueError(
            f"Z of shape {tuple(z.shape)} is empty: the effective rank needs at least one "
            "token and one hidden unit; select the response's tokens (a non-empty mask) first"
        )
    return _effective_rank(z, was_numpy, unit, center, Z)


def _effective_rank(z: torch.Tensor, was_numpy: bool, unit: float, center: bool, Z: Any) -> Any:
    """:func:`effective_rank` of a checked float64 ``z``; 1.0 for an empty one (a response
    without tokens inside :func:`rank_by_layer`)."""
    if not isinstance(center, bool):
        raise TypeError(f"center must be True or False, got {center!r}")
    T, d = z.shape[-2], z.shape[-1]
    eps64 = torch.finfo(torch.float64).eps
    scale = torch.linalg.matrix_norm(z) if z.numel() else torch.zeros(z.shape[:-2], dtype=z.dtype)
    if center and T > 0:
        z = z - z.mean(dim=-2, keepdim=True)  # (..., T, d) column-centred
    if T == 0 or d == 0:
        er = torch.ones(z.shape[:-2], dtype=torch.float64)
    else:
        s = torch.linalg.svdvals(z)  # (..., min(T, d))
        tol = max(unit, max(T, d) * eps64) * scale[..., None]  # (..., 1)
        s = torch.where(s > tol, s, torch.zeros_like(s))
        total = s.sum(dim=-1, keepdim=True)
        p = s / torch.where(total > 0, total, torch.ones_like(total))  # 0 for a zero matrix
        er = torch.exp(-torch.xlogy(p, p).sum(dim=-1))  # xlogy(0, 0) = 0
    if er.ndim == 0:
        return float(er)
    return er.numpy() if was_numpy else er.to(Z.device)


class RankDynamics(NamedTuple):
    """What :func:`rank_dynamics` returns.

    Attributes:
        prefixes: one row per prefix length, columns ``t`` (tokens in the prefix),
            ``er`` (ER of the first t states), ``delta`` (Delta_t; nan for the first
            prefix), ``era`` (ERA_t; nan for the first two).
        er: ER of the whole response (all T states, whatever the stride).
        erv: mean of ``delta`` over the prefixes that have one (nan if fewer than 2).
        era: mean of ``era`` over the prefixes that have one (nan if fewer than 3).
    """

    prefixes: pd.DataFrame
    er: float
    erv: float
    era: float


def rank_dynamics(Z: Any, stride: int = 1, *, center: bool = True) -> RankDynamics:
    """ER over a response's prefixes, and the response's ERV and ERA (card 7).

    Args:
        Z: ``(T, d)`` the states of *one* response at one layer, valid tokens only (slice
            the completion out first: padding and prompt rows would enter the rank).
        stride: ``s``; prefixes are ``t = s, 2s, ...`` up to ``T`` (a last partial block
            shorter than ``s`` is left out, as in the VERL batched code without
            ``base_metrics_batch``).
        center: as in :func:`effective_rank`.

    Returns:
        :class:`RankDynamics` ``(prefixes, er, erv, era)``.

    >>> Z = torch.eye(4)                    # token t opens direction t
    >>> dyn = rank_dynamics(Z, stride=1, center=False)
    >>> dyn.prefixes["er"].round(6).tolist(), round(dyn.erv, 6), round(dyn.era, 6)
    ([1.0, 2.0, 3.0, 4.0], 1.5, 0.5)

    Here ER_t = t, so Delta_t = t - mean(1..t-1) = t/2: 1, 1.5, 2 (ERV 1.5), and ERA_t =
    0.5 at t = 3 and 4 (ERA 0.5): a response that opens a new direction every token.
    """
    z, _, unit = _as_float64(Z)
    if z.ndim != 2:
        raise ValueError(f"rank_dynamics takes one response, Z of shape (T, d); got {tuple(z.shape)}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an int >= 1 (tokens between prefixes), got {stride!r}")
    T = z.shape[0]
    ts = list(range(int(stride), T + 1, int(stride)))
    ers = [_effective_rank(z[:t], False, unit, center, z) for t in ts]
    deltas: list[float] = []
    eras: list[float] = []
    for j, er in enumerate(ers):
        if j == 0:
            deltas.append(float("nan"))
            eras.append(float("nan"))
            continue
        deltas.append(er - float(np.mean(ers[:j])))
        eras.append(float("nan") if j == 1 else deltas[j] - deltas[j - 1])
    frame = pd.DataFrame(
        {"t": np.asarray(ts, dtype=np.int64), "er": ers, "delta": deltas, "era": eras},
        columns=["t", "er", "delta", "era"],
    )
    erv = float(np.mean(deltas[1:])) if len(deltas) > 1 else float("nan")
    era = float(np.mean(eras[2:])) if len(eras) > 2 else float("nan")
    return RankDynamics(frame, _effective_rank(z, False, unit, center, z), erv, era)


def rank_by_layer(
    cache: Any,
    mask: Any = None,
    *,
    names: Sequence[str] | None = None,
    stride: int | None = None,
    center: bool = True,
) -> pd.DataFrame:
    """ER (and with ``stride``, ERV and ERA) of every response at every layer of a cache.

    Args:
        cache: an :class:`rlnb.probes.ActivationCache` (or any mapping name ->
            ``(N, L, d)`` tensor).
        mask: ``(N, L)`` the tokens that belong to each response; default the cache's own
            mask (``cache.mask``), else every position. Footgun: a cache captured from a
            prompt + completion batch has an attention mask that covers the *prompt*; pass
            the completion mask to measure the response alone.
        names: which entries; default every ``(N, L, d)`` entry, in cache order.
        stride: if given, also ``erv`` and ``era`` from :func:`rank_dynamics`.
        center: as in :func:`effective_rank`.

    Returns:
        DataFrame with one row per (name, response): ``name, row, tokens, er`` (+ ``erv,
        era``). ``df.groupby("name", sort=False)["er"].mean()`` is the per-layer curve.

    Responses of equal length are ranked together in batched SVDs; the numbers are those
    of :func:`effective_rank` and :func:`rank_dynamics` applied row by row (tested to 1e-10).
    """
    if mask is None:
        mask = getattr(cache, "mask", None)
    if names is None:
        names = [k for k in cache.keys() if cache[k].ndim == 3]
    rows = []
    for name in names:
        if name not in cache:
            raise KeyError(f"{name!r} is not in the cache; it has {list(cache.keys())}")
        h = cache[name]
        if h.ndim != 3:
            raise ValueError(
                f"{name!r} has shape {tuple(h.shape)}; rank_by_layer needs (N, L, d) states "
                "per token (not pooled ones)"
            )
        m = torch.ones(h.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask)
        if tuple(m.shape) != tuple(h.shape[:2]):
            raise ValueError(f"mask {tuple(m.shape)} must be (N, L) = {tuple(h.shape[:2])}")
        m = m.to(torch.bool).cpu()
        if stride is not None and (isinstance(stride, bool) or not isinstance(
                stride, (int, np.integer)) or stride < 1):
            raise ValueError(f"stride must be an int >= 1 (tokens between prefixes), got {stride!r}")
        h = h.detach().cpu()
        lengths = m.sum(1)
        out: dict[int, dict[str, Any]] = {}
        # Responses of equal length are stacked and their prefixes ranked in one batched SVD:
        # the same numbers as rank_dynamics(z, stride) row by row (tested), many times faster.
        for T in torch.unique(lengths).tolist():
            idx = torch.nonzero(lengths == T).squeeze(1)
            Z, _, unit = _as_float64(torch.stack([h[i][m[i]] for i in idx.tolist()]), name)
            # Z: (B, T, d) float64, the responses of T tokens (padding never enters)
            er = _batched_er(Z, unit, center)  # (B,)
            dyn = _batched_dynamics(Z, int(stride), unit, center) if stride is not None else None
            for k, i in enumerate(idx.tolist()):
                row = {"name": name, "row": i, "tokens": int(T), "er": float(er[k])}
                if dyn is not None:
                    row.update(erv=float(dyn[0][k]), era=float(dyn[1][k]))
                out[i] = row
        rows += [out[i] for i in range(h.shape[0])]
    return pd.DataFrame(rows)


def _batched_er(Z: torch.Tensor, unit: float, center: bool) -> torch.Tensor:
    """ER of each of ``Z`` ``(B, T, d)`` float64; 1.0 for T = 0 (an empty response)."""
    if Z.shape[1] == 0:
        return torch.ones(Z.shape[0], dtype=torch.float64)
    return torch.as_tensor(_effective_rank(Z, False, unit, center, Z)).reshape(Z.shape[0])


def _batched_dynamics(Z: torch.Tensor, stride: int, unit: float, center: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(erv, era)`` ``(B,)`` of same-length responses ``Z`` ``(B, T, d)``: what
    :func:`rank_dynamics` gives row by row."""
    B, T = Z.shape[:2]
    ts = list(range(stride, T + 1, stride))
    nan = torch.full((B,), float("nan"), dtype=torch.float64)
    if len(ts) < 2:
        return nan, nan.clone()
    ers = torch.stack([_batched_er(Z[:, :t], unit, center) for t in ts], 1)  # (B, J)
    earlier = torch.cumsum(ers, 1)[:, :-1] / torch.arange(1, len(ts), dtype=torch.float64)
    delta = ers[:, 1:] - earlier  # (B, J - 1): Delta_t for the prefixes after the first
    erv = delta.mean(1)
    era = (delta[:, 1:] - delta[:, :-1]).mean(1) if len(ts) > 2 else nan
    return erv, era
