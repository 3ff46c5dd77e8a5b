"""What a capture holds: an :class:`ActivationCache` of hidden states by stable name, and
:func:`pool_states`, which turns per-token states ``(N, L, d)`` into one vector per row.

Filled by :func:`rlnb.probes.activations.capture` or
:func:`rlnb.probes.activations.from_hidden_states` (the names are tabled there); read by
the probes (effective rank, linear probes, CKA). Both names are re-exported by
:mod:`rlnb.probes.activations` and :mod:`rlnb.probes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from rlnb.policies.layers import LAYER_STATE

__all__ = ["POOLINGS", "ActivationCache", "pool_states"]

#: The ways to pool per-token states into one vector per row.
POOLINGS = ("mean", "last")


# --- POOLING ----------------------------------------------------------------------------


def pool_states(x: Tensor, mask: Tensor | None = None, how: str = "mean") -> Tensor:
    """Pool per-token states ``(N, L, d)`` into one vector per row, ``(N, d)``.

    Args:
        x: ``(N, L, d)``; an ``(N, d)`` input is returned as it is (already pooled).
        mask: ``(N, L)`` valid positions; None means every position. Footgun: with a padded
            batch, leaving the mask out averages the padding in (and ``"last"`` picks a pad
            token under right padding).
        how: ``"mean"`` over the valid positions, or ``"last"`` valid position (the state
            that predicts the next token; works with left or right padding).

    Returns:
        ``(N, d)``, at least float32.

    >>> x = torch.tensor([[[1.0], [3.0], [99.0]]])
    >>> pool_states(x, torch.tensor([[1, 1, 0]])).tolist(), pool_states(x, torch.tensor([[1, 1, 0]]), "last").tolist()
    ([[2.0]], [[3.0]])
    """
    if how not in POOLINGS:
        raise ValueError(f"how must be one of {POOLINGS}, got {how!r}")
    if x.ndim == 2:
        return x
    if x.ndim != 3:
        raise ValueError(f"states must be (N, L, d) or pooled (N, d); got shape {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    if mask is None:
        m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    else:
        m = torch.as_tensor(mask)
        if tuple(m.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"mask {tuple(m.shape)} must be (N, L) = {tuple(x.shape[:2])}, one flag per "
                "position of the states"
            )
        m = m.to(device=x.device, dtype=torch.bool)
    counts = m.sum(dim=1)  # (N,)
    if (counts == 0).any():
        row = int(torch.nonzero(counts == 0)[0])
        raise ValueError(
            f"row {row} has no valid position under the mask: drop empty completions before "
            "pooling (a zero vector would silently enter the probe)"
        )
    if how == "mean":
        return (x.to(dtype) * m[..., None]).sum(dim=1) / counts[:, None].to(dtype)
    L = x.shape[1]
    last = L - 1 - torch.argmax(m.flip(1).to(torch.int8), dim=1)  # (N,) last True position
    return x[torch.arange(x.shape[0], device=x.device), last].to(dtype)


# --- THE CACHE ---------------------------------------------------------------------------


class ActivationCache(Mapping):
    """Captured states by stable name: ``cache["layers.3.resid_post"]`` is ``(N, L, d)``.

    A read-only mapping name -> tensor (detached, on CPU unless captured otherwise).

    Attributes:
        mask: ``(N, L)`` bool, the valid positions (from ``attention_mask`` or the ``mask``
            given to :func:`capture`), or None. Pooling uses it by default.
        pooled: None, or ``"mean"``/``"last"`` when the entries were pooled at capture
            (then each is ``(N, d)``).

    >>> cache = ActivationCache({"h": torch.ones(2, 3, 4)}, mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    >>> cache["h"].shape, cache.pool("h").shape
    (torch.Size([2, 3, 4]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor] | None = None,
        mask: Any = None,
        *,
        pooled: str | None = None,
    ) -> None:
        self._data: dict[str, Tensor] = dict(tensors or {})
        self.mask: Tensor | None = None if mask is None else torch.as_tensor(mask).to(torch.bool)
        self.pooled = pooled

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not in the cache; it holds {list(self._data)}. Ask capture() "
                "for it with names=[...]"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        lines = [f"ActivationCache({len(self)} entries, {self.nbytes / 2**20:.2f} MiB"
                 + ("" if self.mask is None else f", mask {tuple(self.mask.shape)}")
                 + ("" if self.pooled is None else f", pooled={self.pooled!r}") + ")"]
        lines += [f"  {k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
                  for k, v in self._data.items()]
        return "\n".join(lines)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape."""
        return {k: tuple(v.shape) for k, v in self._data.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors."""
        return sum(v.numel() * v.element_size() for v in self._data.values())

    def layer_names(self, kind: str = "resid_post") -> list[str]:
        """The ``layers.{i}.{kind}`` names present, in layer order."""
        found = [(int(m.group(1)), k) for k in self._data
                 if (m := LAYER_STATE.match(k)) and m.group(2) == kind]
        return [k for _, k in sorted(found)]

    def pool(self, name: str, mask: Any = None, how: str = "mean") -> Tensor:
        """``(N, d)``: the states of ``name`` pooled per row (see :func:`pool_states`).

        ``mask`` defaults to the cache's mask. Pass the completion mask to pool over the
        answer only; the cache's mask (an attention mask) covers the prompt too.
        """
        if self.pooled is not None and how != self.pooled:
            raise ValueError(
                f"the entries were pooled with {self.pooled!r} at capture; how={how!r} needs "
                "a capture without pool="
            )
        return pool_states(self[name], self.mask if mask is None else mask, how)

    def to_numpy(self, name: str, *, how: str | None = None, mask: Any = None) -> np.ndarray:
        """float32 numpy array of ``name`` -- pooled to ``(N, d)`` when ``how`` is given."""
        x = self[name] if how is None else self.pool(name, mask, how)
        return x.detach().to(device="cpu", dtype=torch.float32).numpy()

    @classmethod
    def concat(cls, caches: Sequence[ActivationCache]) -> ActivationCache:
        """Stack the rows of several caches (batches) with the same names.

        Shorter sequences are right-padded with zeros and a False mask, so pooling still
        sees only the valid positions.
        """
        caches = list(caches)
        if not caches:
            raise ValueError("concat needs at least one cache")
        names = list(caches[0])
        for c in caches[1:]:
            if list(c) != names:
                raise ValueError(f"caches hold different names: {names} vs {list(c)}")
        if len({c.pooled for c in caches}) > 1:
            raise ValueError("cannot concat pooled and unpooled caches")
        if not names:
            return cls({}, None)
        widths = [max((v.shape[1] for v in c.values() if v.ndim == 3), default=0) for c in caches]
        L = max(widths)
        out: dict[str, Tensor] = {}
        for n in names:
            parts = [c[n] if c[n].ndim != 3 else F.pad(c[n], (0, 0, 0, L - c[n].shape[1]))
                     for c in caches]
            out[n] = torch.cat(parts, dim=0)
        mask = None
        if any(c.mask is not None for c in caches) or len(set(widths)) > 1:
            ms = []
            for c, w in zip(caches, widths):
                rows = next(iter(c.values())).shape[0]
                ms.append(c.mask if c.mask is not None else torch.ones(rows, w, dtype=torch.bool))
            width = max(m.shape[1] for m in ms)
            mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in ms])  # pads False
        return cls(out, mask, pooled=caches[0].pooled)
