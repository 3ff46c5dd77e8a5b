"""Turning a per-token loss matrix into one number: the aggregation modes.

How per-token losses are averaged decides how much each sequence and each token weighs,
and it is one of the main differences between GRPO, DAPO and Dr.GRPO. Two families of
names, each computing what its own library computes (one process, no data parallelism):

=============================  ============================================================
mode                           loss (``S_i`` = row ``i``'s masked sum, ``L_i`` its valid
                               tokens, ``N`` rows, ``N+`` rows with ``L_i > 0``)
=============================  ============================================================
``token-mean`` (verl)          ``sum_i S_i / sum_i L_i``
``seq-mean-token-mean`` (verl) ``mean over the N+ non-empty rows of S_i / L_i``
``seq-mean-token-sum`` (verl)  ``sum_i S_i / N+``
``seq-mean-token-sum-norm``    ``sum_i S_i / max_len`` (verl's ``loss_scale_factor``,
(verl)                         default the padded length T): no division by N
``grpo`` (TRL ``loss_type``)   ``mean over all N rows of S_i / max(L_i, 1)``: an empty row
                               counts as 0
``bnpo`` (TRL)                 ``sum_i S_i / max(sum_i L_i, 1)``
``dapo`` (TRL)                 the same in one process (TRL divides by the tokens of the
                               global batch)
``dr_grpo`` (TRL)              ``sum_i S_i / (N * max_len)`` (TRL's
                               ``max_completion_length``)
=============================  ============================================================

verl leaves fully masked rows (those ``mask_truncated_completions`` empties) out of its
``seq-mean-*`` means; TRL's ``grpo`` keeps them as zeros; and verl's
``seq-mean-token-sum-norm`` is ``N`` times TRL's ``dr_grpo`` at the same ``max_len`` (a
factor of the batch size in the effective learning rate). A batch with no valid token
aggregates to 0 in every mode (verl's formulas give 0/0 there).

The footgun: a per-sequence mean (``seq-mean-token-mean``, ``grpo``) gives each
*sequence* equal weight, so a token in a long wrong answer is pushed down less than a
token in a short one; that is the length bias Dr.GRPO (arXiv:2503.20783) removes by
dividing by a constant instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.registry import unknown_name_error

#: verl's ``loss_agg_mode`` names, computing verl's values.
VERL_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                  "seq-mean-token-sum-norm")
#: TRL's ``GRPOConfig.loss_type`` names (those that aggregate token losses), computing
#: TRL's values.
TRL_AGG_MODES = ("grpo", "bnpo", "dapo", "dr_grpo")
AGG_MODES = VERL_AGG_MODES + TRL_AGG_MODES


def check_agg_mode(mode: str) -> str:
    """Return ``mode`` if it is a valid aggregation mode, else raise ``ValueError``."""
    if mode not in AGG_MODES:
        raise unknown_name_error("aggregation mode", mode, AGG_MODES)
    return mode


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x * mask`` that stays finite where the mask is 0, even if ``x`` is inf/nan there."""
    mask = mask.to(x.dtype)
    return torch.where(mask != 0, x * mask, torch.zeros_like(x))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is nonzero; 0 where nothing is valid.

    Args:
        x: values, any shape.
        mask: same shape as ``x``; 1 for a valid position, 0 for padding (bool or float).
        dim: reduce over this dimension only; None reduces everything to a scalar.

    >>> masked_mean(torch.tensor([[1., 2., 99.]]), torch.tensor([[1, 1, 0]]))
    tensor(1.5000)
    """
    if x.shape != mask.shape:
        raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} must have one shape")
    if mask.dtype == torch.bool:  # the same values in fewer ops: x * 1 is x, counts are exact
        kept = x.masked_fill(~mask, 0)
        num = kept.sum() if dim is None else kept.sum(dim)
        den = mask.sum() if dim is None else mask.sum(dim)
        return num / den.clamp_min(1).to(num.dtype)
    num = _masked(x, mask).sum() if dim is None else _masked(x, mask).sum(dim)
    den = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return torch.where(den != 0, num / torch.where(den != 0, den, 1), torch.zeros_like(num))


def agg_loss(
    loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", *, max_len: int | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Aggregate a per-token loss ``(N, T)`` under ``mask`` ``(N, T)`` into a scalar, as
    the library whose name ``mode`` is computes it (the table of this module):

      - verl: ``token-mean`` (DAPO, arXiv:2503.14476; Lite PPO, arXiv:2508.08221),
        ``seq-mean-token-mean`` (original GRPO), ``seq-mean-token-sum``,
        ``seq-mean-token-sum-norm`` (Dr.GRPO's constant normaliser, verl's way: divided
        by ``max_len`` alone). The ``seq-mean-*`` modes average over the rows that have a
        valid token.
      - TRL's ``loss_type``: ``grpo`` (every row's token mean, empty rows as 0, mean over
        all N), ``bnpo`` and ``dapo`` (tokens of the batch), ``dr_grpo`` (divided by
        ``N * max_len``).

    ``max_len``: the generation budget (TRL's ``max_completion_length``, verl's
    ``loss_scale_factor``), used by ``seq-mean-token-sum-norm`` and ``dr_grpo``; default
    T. Pass the budget when the batch is padded to less than it, so that the normaliser
    is the same constant every step.

    Padding positions may hold any value, even inf or nan: they never reach the result.

    ``weights`` ``(N, T)``: per-token weights that replace the mode's normaliser, the
    result being ``sum(loss * mask * weights)``. Pass the rows of :func:`agg_weights` of a
    *whole* batch to get one micro-batch's share of that batch's loss: the shares of its
    micro-batches sum to the whole batch's loss in every mode (gradient accumulation).
    ``mode`` and ``max_len`` are still checked, and have no other effect.

    >>> loss = torch.tensor([[1., 1., 1., 1.], [4., 0., 0., 0.], [9., 9., 9., 9.]])
    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    >>> {m: round(agg_loss(loss, mask, m).item(), 3) for m in AGG_MODES}  # doctest: +NORMALIZE_WHITESPACE
    {'token-mean': 1.6, 'seq-mean-token-mean': 2.5, 'seq-mean-token-sum': 4.0,
     'seq-mean-token-sum-norm': 2.0, 'grpo': 1.667, 'bnpo': 1.6, 'dapo': 1.6,
     'dr_grpo': 0.667}
    """
    check_agg_mode(mode)
    if loss_mat.dim() != 2 or loss_mat.shape != mask.shape:
        raise ValueError(
            f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} must both be (N, T)"
        )
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        bad = mask[(mask != 0) & (mask != 1)][0].item()
        raise ValueError(
            f"mask must hold only 0 and 1 (which tokens count), got {bad:.4g}; a mask is not a "
            "weight: scale the per-token loss instead, or pass a bool mask")
    _check_max_len(max_len)
    if weights is not None:
        if weights.shape != loss_mat.shape:
            raise ValueError(
                f"weights {tuple(weights.shape)} must have the shape of loss_mat "
                f"{tuple(loss_mat.shape)}: pass the rows of agg_weights(whole_batch_mask, mode) "
                "that belong to this micro-batch")
        return (_masked(loss_mat, mask) * weights.to(loss_mat.device, loss_mat.dtype)).sum()
    n, t = loss_mat.shape
    if mode in ("token-mean", "bnpo", "dapo"):
        return masked_mean(loss_mat, mask)
    seq_sum = _masked(loss_mat, mask).sum(dim=1)  # (N,)
    if mode in ("seq-mean-token-sum-norm", "dr_grpo"):
        scale = t if max_len is None else max_len
        return seq_sum.sum() / (scale * (n if mode == "dr_grpo" else 1))
    lengths = mask.to(loss_mat.dtype).sum(dim=1)  # (N,)
    if mode == "grpo":
        return (seq_sum / lengths.clamp(min=1)).mean() if n else seq_sum.sum()
    nonempty = lengths > 0
    per_row = seq_sum if mode == "seq-mean-token-sum" else seq_sum / torch.where(
        nonempty, lengths, torch.ones_like(lengths))
    count = nonempty.sum()
    return torch.where(count > 0, per_row.sum() / count.clamp(min=1), per_row.sum() * 0)


def _check_max_len(max_len: int | None) -> None:
    if max_len is not None:  # checked in every mode: a bad budget is a bug wherever it is
        from rlnb.checks import check_number

        check_number(max_len, "max_len", 0, low_open=True,
                     meaning="generation budget in tokens, TRL's max_completion_length")


def agg_weights(
    mask: Tensor, mode: str = "token-mean", *, max_len: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Per-token weights ``(N, T)`` of an aggregation mode: ``agg_loss(x, mask, mode)``
    equals ``sum(x * mask * agg_weights(mask, mode))`` for every ``x`` (up to rounding).

    The weights of a token depend on the whole batch (the token count in ``token-mean``,
    the number of rows in the per-sequence modes), which is what gradient accumulation
    needs: compute them once on the whole batch's ``mask``, slice the rows of each
    micro-batch, and pass them as ``agg_loss(..., weights=w[rows])``; the micro-batch
    losses then add up to the whole batch's loss and gradient.

      - ``token-mean``, ``bnpo``, ``dapo``: ``1 / sum(mask)`` on every valid token.
      - ``seq-mean-token-mean``: ``1 / (N+ * L_i)`` on the valid tokens of row ``i``
        (``N+`` rows with a valid token); ``grpo``: ``1 / (N * L_i)``.
      - ``seq-mean-token-sum``: ``1 / N+``.
      - ``seq-mean-token-sum-norm``: ``1 / max_len``; ``dr_grpo``: ``1 / (N * max_len)``
        (``max_len`` defaults to T).

    Padding positions get weight 0, and so does every token of a batch with none valid.
    ``dtype``: of the weights (default: the mask's if it is floating, else float32).

    Footgun: weights computed on a micro-batch's own mask give each micro-batch the
    weight of a whole batch; the accumulated loss is then ``k`` times too large (``k``
    micro-batches) in the per-sequence modes, and wrongly weighted in ``token-mean``.

    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    >>> agg_weights(mask, "seq-mean-token-mean")
    tensor([[0.1250, 0.1250, 0.1250, 0.1250],
            [0.5000, 0.0000, 0.0000, 0.0000]])
    >>> loss = torch.tensor([[1., 1., 1., 1.], [4., 0., 0., 0.]])
    >>> w = agg_weights(mask, "token-mean")
    >>> agg_loss(loss[:1], mask[:1], weights=w[:1]) + agg_loss(loss[1:], mask[1:], weights=w[1:])
    tensor(1.6000)
    """
    check_agg_mode(mode)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (N, T), got shape {tuple(mask.shape)}")
    _check_max_len(max_len)
    if dtype is None:
        dtype = mask.dtype if mask.is_floating_point() else torch.float32
    m = (mask != 0).to(dtype)  # (N, T)
    n, t = m.shape
    if mode in ("token-mean", "bnpo", "dapo"):
        count = m.sum()
        return m / count if count > 0 else torch.zeros_like(m)
    if mode in ("seq-mean-token-sum-norm", "dr_grpo"):
        scale = t if max_len is None else max_len
        return m / (scale * (n if mode == "dr_grpo" else 1))
    lengths = m.sum(dim=1, keepdim=True)  # (N, 1)
    rows = n if mode == "grpo" else int((lengths > 0).sum())
    if rows == 0:
        return torch.zeros_like(m)
    if mode == "seq-mean-token-sum":
        return m / rows
    return torch.where(lengths > 0, m / (rows * lengths.clamp(min=1)), torch.zeros_like(m))
