"""Input checks shared by the sandboxes: cheap, and with messages that say what to do."""

from __future__ import annotations

import torch


def check_probs(probs: torch.Tensor, name: str = "probs", atol: float = 1e-3) -> None:
    """Raise ValueError unless every row of ``probs`` is a distribution over the last dim."""
    if not torch.is_floating_point(probs):
        raise ValueError(
            f"{name} must be a floating-point tensor of probabilities, got {probs.dtype}"
        )
    if probs.numel() == 0:
        return
    lo = probs.min()
    if lo < 0:
        raise ValueError(f"{name} must be >= 0 (probabilities), got min {lo.item():.4g}")
    sums = probs.sum(-1)
    if (sums - 1).abs().max() > atol:
        raise ValueError(
            f"{name} must sum to 1 over the last (action) dimension; got row sums in "
            f"[{sums.min().item():.4g}, {sums.max().item():.4g}]. Pass softmax(logits), not logits"
        )


def check_index(values: torch.Tensor, high: int, name: str, meaning: str) -> None:
    """Cheap range check (one min and one max) of an index tensor: ``0 <= values < high``."""
    if values.numel() == 0:
        return
    lo, hi = values.min().item(), values.max().item()
    if lo < 0 or hi >= high:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} must lie in [0, {high - 1}] ({meaning}), got {bad}")


def one_step_actions(
    prompts: torch.Tensor,
    actions: torch.Tensor,
    num_prompts: int,
    num_actions: int,
    *,
    prompt_meaning: str,
    action_meaning: str,
) -> torch.Tensor:
    """Validate a horizon-1 batch: prompts ``(N,)``, actions ``(N, 1)`` or ``(N,)``;
    returns actions as ``(N,)``."""
    if prompts.ndim != 1:
        raise ValueError(f"prompts must have shape (N,), got {tuple(prompts.shape)}")
    if actions.ndim == 2 and actions.shape[1] == 1:
        actions = actions[:, 0]
    if actions.shape != prompts.shape:
        raise ValueError(
            f"actions must have shape (N, 1) or (N,) with N = len(prompts) = "
            f"{prompts.shape[0]}, got {tuple(actions.shape)}"
        )
    check_index(prompts, num_prompts, "prompts", prompt_meaning)
    check_index(actions, num_actions, "actions", action_meaning)
    return actions


def binary_matrix(values: torch.Tensor, name: str, why: str, row: str, col: str) -> torch.Tensor:
    """``values`` as a float tensor, after checking every entry is 0 or 1; the error names
    the first bad entry by ``row`` and ``col``."""
    M = torch.as_tensor(values)
    if not torch.is_floating_point(M):
        M = M.to(torch.get_default_dtype())
    bad = (M != 0) & (M != 1)
    if bad.any():
        i, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{name} values must be 0 or 1 ({why}); got {M[i, j].item():.4g} at {row} {i}, {col} {j}"
        )
    return M
