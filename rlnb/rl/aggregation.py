"""Turning a per-token loss matrix into one number: the aggregation modes.

How per-token losses are averaged decides how much each sequence and each token weighs,
and it is one of the main differences between GRPO, DAPO and Dr.GRPO. The mode names are
verl's; TRL's ``GRPOConfig.loss_type`` maps onto them as follows (single process):

=================  ===========================  ==========================================
TRL ``loss_type``  mode here                    normaliser
=================  ===========================  ==========================================
``grpo``           ``seq-mean-token-mean``      each sequence by its length, then over N
``bnpo``           ``token-mean``               tokens in the (local) batch
``dapo``           ``token-mean``               tokens in the global batch (all processes)
``dr_grpo``        ``seq-mean-token-sum-norm``  the constant N * max_completion_length
=================  ===========================  ==========================================

The footgun: ``seq-mean-token-mean`` gives each *sequence* equal weight, so a token in a
long wrong answer is pushed down less than a token in a short one; that is the length bias
Dr.GRPO (arXiv:2503.20783) removes by dividing by a constant instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.registry import unknown_name_error

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


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
    num = _masked(x, mask).sum() if dim is None else _masked(x, mask).sum(dim)
    den = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return torch.where(den != 0, num / torch.where(den != 0, den, 1), torch.zeros_like(num))


def agg_loss(
    loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", *, max_len: int | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Aggregate a per-token loss ``(N, T)`` under ``mask`` ``(N, T)`` into a scalar.

    Modes (verl names):
      - ``token-mean``: sum(loss * mask) / sum(mask). Every token weighs the same (DAPO,
        arXiv:2503.14476; Lite PPO, arXiv:2508.08221).
      - ``seq-mean-token-mean``: mean over the N sequences of each sequence's token mean
        (original GRPO). A sequence with no valid token counts as 0 and stays in the mean
        over N, as in TRL's ``loss_type="grpo"`` (its ``clamp(min=1)`` denominator).
      - ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
      - ``seq-mean-token-sum-norm``: sum(loss * mask) / (N * max_len), a constant
        normaliser (Dr.GRPO, arXiv:2503.20783; TRL's ``dr_grpo``). ``max_len`` defaults to
        T; pass the generation budget (TRL's ``max_completion_length``) to match TRL when
        the batch is padded to less than that. (verl's mode of this name divides by T only.)

    Padding positions may hold any value, even inf or nan: they never reach the result.

    ``weights`` ``(N, T)``: per-token weights that replace the mode's normaliser, the
    result being ``sum(loss * mask * weights)``. Pass the rows of :func:`agg_weights` of a
    *whole* batch to get one micro-batch's share of that batch's loss: the shares of its
    micro-batches sum to the whole batch's loss in every mode (gradient accumulation).
    ``mode`` and ``max_len`` are still checked, and have no other effect.

    >>> loss = torch.tensor([[1., 1., 1., 1.], [4., 0., 0., 0.]])
    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    >>> [round(agg_loss(loss, mask, m).item(), 3) for m in AGG_MODES]
    [1.6, 2.5, 4.0, 1.0]
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
    n, t = loss_mat.shape
    if max_len is not None:  # checked in every mode: a bad budget is a bug wherever it is
        from rlnb.checks import check_number

        check_number(max_len, "max_len", 0, low_open=True,
                     meaning="generation budget in tokens, TRL's max_completion_length")
    if weights is not None:
        if weights.shape != loss_mat.shape:
            raise ValueError(
                f"weights {tuple(weights.shape)} must have the shape of loss_mat "
                f"{tuple(loss_mat.shape)}: pass the rows of agg_weights(whole_batch_mask, mode) "
                "that belong to this micro-batch")
        return (_masked(loss_mat, mask) * weights.to(loss_mat.device, loss_mat.dtype)).sum()
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_mat, mask, dim=1).mean()  # (N,) -> ()
    seq_sum = _masked(loss_mat, mask).sum(dim=1)  # (N,)
    if mode == "seq-mean-token-sum":
        return seq_sum.mean()
    max_len = t if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be a positive number of tokens, got {max_len}")
    return seq_sum.sum() / (n * max_len)


def agg_weights(
    mask: Tensor, mode: str = "token-mean", *, max_len: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Per-token weights ``(N, T)`` of an aggregation mode: ``agg_loss(x, mask, mode)``
    equals ``sum(x * mask * agg_weights(mask, mode))`` for every ``x`` (up to rounding).

    The weights of a token depend on the whole batch (the token count in ``token-mean``,
    the number of sequences N in the ``seq-mean-*`` modes), which is what gradient
    accumulation needs: compute them once on the whole batch's ``mask``, slice the rows
    of each micro-batch, and pass them as ``agg_loss(..., weights=w[rows])``; the
    micro-batch losses then add up to the whole batch's loss and gradient.

      - ``token-mean``: ``1 / sum(mask)`` on every valid token.
      - ``seq-mean-token-mean``: ``1 / (N * len_i)`` on the valid tokens of row ``i``.
      - ``seq-mean-token-sum``: ``1 / N``.
      - ``seq-mean-token-sum-norm``: ``1 / (N * max_len)`` (``max_len`` defaults to T).

    Padding positions get weight 0, and so does every token of a batch with none valid.
    ``dtype``: of the weights (default: the mask's if it is floating, else float32).

    Footgun: weights computed on a micro-batch's own mask give each micro-batch the
    weight of a whole batch; the accumulated loss is then ``k`` times too large (``k``
    micro-batches) in the ``seq-mean-*`` modes, and wrongly weighted in ``token-mean``.

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
    if dtype is None:
        dtype = mask.dtype if mask.is_floating_point() else torch.float32
    m = (mask != 0).to(dtype)  # (N, T)
    n, t = m.shape
    if mode == "token-mean":
        count = m.sum()
        return m / count if count > 0 else torch.zeros_like(m)
    if mode == "seq-mean-token-mean":
        lengths = m.sum(dim=1, keepdim=True)  # (N, 1)
        return torch.where(lengths > 0, m / (n * lengths.clamp(min=1)), torch.zeros_like(m))
    if mode == "seq-mean-token-sum":
        return m / n
    if max_len is not None:
        from rlnb.checks import check_number

        check_number(max_len, "max_len", 0, low_open=True,
                     meaning="generation budget in tokens, TRL's max_completion_length")
    return m / (n * (t if max_len is None else max_len))
