"""CPU thread counts: every rule rlnb runs its CPU work by, in one place.

Thread counts are settings, never chosen by timing or by the load of the machine: a float
sum is not bitwise the same on one thread and on two, so a count picked at run time would
change a run's numbers (``docs/RELIABILITY.md``).

- :func:`default_threads`: a model under :data:`SMALL_MODEL` parameters trains and samples
  on one CPU thread (its many small ops run faster on one thread than split across
  several); a larger one on torch's current count. ``TrainConfig.torch_threads`` overrides
  it for training.
- :func:`torch_threads`: run a block on ``n`` threads, restoring torch's setting after.
- :func:`matmul_threads` / :func:`current_matmul_threads`: the count the hand-written
  backward pass runs its large matrix products on (``TrainConfig.matmul_threads``).

>>> import torch
>>> before = torch.get_num_threads()
>>> with torch_threads(1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
>>> default_threads(10_000)
1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["SMALL_MODEL", "current_matmul_threads", "default_threads", "is_small",
           "matmul_threads", "torch_threads"]

#: Parameter count below which a model runs on one CPU thread.
SMALL_MODEL = 1_000_000


def is_small(num_params: int, device: torch.device | str = "cpu") -> bool:
    """Whether a model of ``num_params`` parameters on ``device`` runs on one CPU thread
    (under :data:`SMALL_MODEL` parameters, on the CPU)."""
    return torch.device(device).type == "cpu" and num_params < SMALL_MODEL


def default_threads(num_params: int, device: torch.device | str = "cpu") -> int:
    """The CPU thread count for a model of ``num_params`` parameters on ``device``: 1 for a
    small one (:func:`is_small`), torch's current count otherwise."""
    return 1 if is_small(num_params, device) else torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch threads (None: leave the count alone), then restore
    the count it had."""
    before = torch.get_num_threads()
    change = n is not None and n != before
    if change:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


_MATMUL_THREADS = 1


@contextlib.contextmanager
def matmul_threads(n: int) -> Iterator[None]:
    """Within the block, the hand-written backward pass runs its large matrix products
    on ``n`` threads (the rest of its work stays on torch's current count). The trainer
    sets ``TrainConfig.matmul_threads`` here."""
    global _MATMUL_THREADS
    before = _MATMUL_THREADS
    _MATMUL_THREADS = max(1, int(n))
    try:
        yield
    finally:
        _MATMUL_THREADS = before


def current_matmul_threads() -> int:
    """The count set by the innermost :func:`matmul_threads` (1 outside any)."""
    return _MATMUL_THREADS
