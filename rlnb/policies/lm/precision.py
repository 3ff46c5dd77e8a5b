"""Mixed precision: float32 master weights, bfloat16 (or float16) compute.

bfloat16 keeps 8 bits of mantissa. A weight of magnitude 0.05 sits on a grid of spacing
2**-12 (2.4e-4), so an Adam step of 1e-5 or 1e-6 -- the learning rates of full-scale
RL -- rounds to nothing when the optimiser updates bf16 weights in place: the policy
barely moves. Mixed precision, as accelerate (``mixed_precision="bf16"``) and DeepSpeed
do it, keeps the weights and the optimiser state in float32 and computes the forward and
backward passes in the low dtype (``torch.autocast``): matrix products run in bf16, small
updates accumulate in float32.

``LMPolicy(dtype="bfloat16")`` (the default on a GPU) trains this way;
``LMPolicy(dtype="bfloat16", mixed_precision=False)`` keeps the weights themselves in
bf16 (half the weight memory, and the lost updates described above: an explicit opt-in).
float32 has nothing to mix: ``mixed_precision`` is then ignored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def resolve_mixed_precision(option: bool | None, dtype: torch.dtype) -> bool:
    """Whether a policy of compute dtype ``dtype`` keeps float32 master weights: the
    default (None) for bf16/fp16, never for float32 or float64."""
    if option is not None and not isinstance(option, bool):
        raise TypeError(f"mixed_precision must be True, False or None, got {option!r}")
    if dtype not in LOW_PRECISION:
        return False
    return True if option is None else option


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Compute in ``dtype`` on ``device`` (``torch.autocast``), or as the weights are when
    ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
