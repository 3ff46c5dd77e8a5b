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
    loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", *, max_len: int | None = None
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
