"""Input checks shared by the sandboxes, policies, objectives and probes: cheap, and with
messages that name the parameter, the value, the allowed range and what to do.

Bad *types* raise ``TypeError``, bad *values* (out of range, nan, wrong shape) ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def _context(meaning: str | None) -> str:
    return f" ({meaning})" if meaning else ""


def check_int(
    value: Any,
    name: str,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    meaning: str | None = None,
) -> int:
    """``value`` as an ``int`` after checking it is an integer (``TypeError`` otherwise; a
    bool, a float or a string is not one) within ``[minimum, maximum]`` (``ValueError``).

    >>> check_int(3, "depth", 1)
    3
    >>> check_int(0, "depth", 1, meaning="actions per episode")
    Traceback (most recent call last):
    ...
    ValueError: depth must be an integer >= 1 (actions per episode), got 0
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer{_context(meaning)}, got {type(value).__name__} {value!r}"
        )
    value = int(value)
    if minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            raise ValueError(
                f"{name} must be an integer in [{minimum}, {maximum}]{_context(meaning)}, "
                f"got {value}"
            )
    elif minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{_context(meaning)}, got {value}")
    elif maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}{_context(meaning)}, got {value}")
    return value


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    meaning: str | None = None,
) -> float:
    """``value`` as a ``float`` after checking it is a real number (``TypeError`` for a
    string, a bool, None, ...) that is not nan and lies between ``low`` and ``high``
    (``ValueError``; ``low_open`` / ``high_open`` exclude the bounds). A one-element tensor
    counts as a number.

    >>> check_number(0.5, "slip", 0, 1)
    0.5
    >>> check_number(1.5, "slip", 0, 1, meaning="probability that a move goes sideways")
    Traceback (most recent call last):
    ...
    ValueError: slip must lie in [0, 1] (probability that a move goes sideways), got 1.5
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number{_context(meaning)}, got {type(value).__name__} "
            f"{value!r}"
        )
    x = float(value)
    lo_ok = low is None or (x > low if low_open else x >= low)
    hi_ok = high is None or (x < high if high_open else x <= high)
    if math.isnan(x) or not (lo_ok and hi_ok):
        lo_txt = f"{'(' if low_open else '['}{low:g}" if low is not None else None
        hi_txt = f"{high:g}{')' if high_open else ']'}" if high is not None else None
        if lo_txt and hi_txt:
            rng = f"lie in {lo_txt}, {hi_txt}"
        elif lo_txt:
            rng = f"be {'>' if low_open else '>='} {low:g}"
        elif hi_txt:
            rng = f"be {'<' if high_open else '<='} {high:g}"
        else:
            rng = "be a number, not nan"
        raise ValueError(f"{name} must {rng}{_context(meaning)}, got {value!r}")
    return x


def as_tensor(values: Any, name: str, what: str) -> torch.Tensor:
    """``torch.as_tensor(values)``, with a ``TypeError`` that names ``name`` and says what
    it should hold (``what``) when torch cannot read it (strings, None, ragged lists)."""
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be {what}, got {type(values).__name__} {_short(values)}"
        ) from err


def check_finite(values: torch.Tensor, name: str, what: str) -> None:
    """``ValueError`` naming the first nan/inf entry of ``values`` (one pass over it)."""
    if values.numel() and not bool(torch.isfinite(values).all()):
        idx = tuple(int(i) for i in (~torch.isfinite(values)).nonzero()[0])
        where = f" at index {idx[0] if len(idx) == 1 else idx}" if idx else ""
        raise ValueError(
            f"{name} must be finite ({what}); got {values[idx].item()}{where}"
        )


#: Largest number of entries a sandbox builds in one table (2**26 float32 entries: 256 MiB).
MAX_TABLE_ENTRIES = 1 << 26


def check_size(size: int, what: str, formula: str, todo: str,
               limit: int = MAX_TABLE_ENTRIES) -> None:
    """``ValueError`` before allocating a table of ``size`` entries when it exceeds
    ``limit``: names the size asked (``formula`` = ``size``), the limit and what to do."""
    if size > limit:
        raise ValueError(
            f"{what} would hold {formula} = {size:,} entries, over the limit of {limit:,} "
            f"(2**{limit.bit_length() - 1}, about {limit * 4 / 2**20:,.0f} MiB of float32); {todo}"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    """Cheap range check (one min and one max) of an index tensor: ``0 <= values < high``.
    A floating-point or bool tensor is a ``TypeError`` (indices are integers)."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor of integer indices ({meaning}), got "
            f"{type(values).__name__}; wrap it in torch.tensor(..., dtype=torch.long)"
        )
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor ({meaning}), got dtype {values.dtype}; "
            "convert with .long()"
        )
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
