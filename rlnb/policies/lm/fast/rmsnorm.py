"""RMSNorm pieces of the fast engine: the decoder's weightless norm (:class:`UnitRMS`) and
the replayed backward's norm forward and backward (PyTorch's fused kernel, or the native
kernels where given)."""

from __future__ import annotations

import math
from typing import Any

import torch


class UnitRMS:
    """``x / sqrt(mean(x^2) + eps) / sqrt(d)`` = ``x / sqrt(|x|^2 + d * eps)``: RMSNorm
    without its weight and its ``sqrt(d)``, both folded into the next projection
    (:meth:`Forward.folded`)."""

    __slots__ = ("c", "c2", "native")

    def __init__(self, d: int, eps: float, device: torch.device, native: Any = None) -> None:
        self.c = torch.tensor(math.sqrt(d * eps), device=device)
        self.c2 = d * eps
        self.native = native  # rlnb.policies.lm.fast.native.Kernels (CPU float32 rows), or None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None and x.dim() == 2:
            return self.native.unit_rms(x, self.c2)
        return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self.c)


def rms(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x / rms(x)`` and ``1 / rms(x)`` (rows of ``x``), PyTorch's fused kernel."""
    return torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], None, eps)


def rms_backward(dy: torch.Tensor, xhat: torch.Tensor, r: torch.Tensor,
                 w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``y = xhat * w``, ``xhat = x * r``: ``(dx, dw)``."""
    dw = (dy * xhat).sum(0)
    g = dy * w
    c = (g * xhat).mean(-1, keepdim=True)
    return g.sub_(xhat * c).mul_(r), dw


def norm_forward(native: Any, x: torch.Tensor, ln: Any) -> tuple[torch.Tensor, Any]:
    """RMSNorm ``ln`` (weight ``w``) of the rows of ``x``: ``x / rms(x) * w`` and what
    :func:`norm_backward` needs (the native kernels where given)."""
    w = ln.weight
    if native is not None:
        return native.rms_forward(x, w, ln.variance_epsilon)
    xhat, r = rms(x, ln.variance_epsilon)
    return xhat * w, (xhat, r)


def norm_backward(native: Any, dy: torch.Tensor, x: torch.Tensor, state: Any, ln: Any,
                   res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`norm_forward` at ``dy``: ``(dx + res, dw)``."""
    if native is not None:
        return native.rms_backward(dy, x, state, ln.weight, res)
    dx, dw = rms_backward(dy, *state, ln.weight)
    return dx.add_(res), dw
