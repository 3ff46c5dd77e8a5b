"""Hidden states of any ``torch.nn.Module``, captured by name into an :class:`ActivationCache`.

Probes take a cache, not a model (STYLE principle 7): capture once, then measure effective
rank, fit linear probes, compare checkpoints. Two routes fill a cache:

- :func:`capture` (forward hooks): works on any module -- a Hugging Face causal LM, the
  rlnb ``MLPPolicy``, a plain ``nn.Sequential`` -- and on any forward you run
  (``capture(policy, lambda: policy.log_probs(rollout))``).
- :func:`from_hidden_states`: the ``output_hidden_states=True`` tuple a Hugging Face model
  returns, e.g. from a checkpoint trained with TRL, verl or OpenRLHF.

Stable names (``N`` rows, ``L`` positions, ``d`` hidden width):

==========================  =========  =====================================================
name                        shape      what it is
==========================  =========  =====================================================
``"embed"``                 (N, L, d)  input to the first decoder layer (token embeddings;
                                       + position embeddings for GPT-2)
``"layers.{i}.resid_pre"``  (N, L, d)  input to decoder layer i (``embed`` for i = 0)
``"layers.{i}.resid_post"`` (N, L, d)  output of decoder layer i: the residual stream
``"final_norm"``            (N, L, d)  after the final norm: what the LM head reads
``"output"``                as output  the model's own output (first tensor of it)
a module path, ``"net.0"``  as output  that submodule's output (``model.named_modules()``)
==========================  =========  =====================================================

The decoder layers are found at ``model.model.layers`` (Llama, Qwen2, Mistral),
``model.transformer.h`` (GPT-2), ``model.gpt_neox.layers`` and a few more, also inside a
wrapper such as a policy holding the LM as ``self.model`` (:func:`find_layers`); for anything
else name the modules yourself with ``modules=``.

Memory, for long runs: every tensor is detached and *copied* (never a view of the model's
activations, which a later in-place op could change), moved to ``device`` (CPU by default)
and optionally cast (``dtype=torch.float16`` halves it). No autograd graph is kept. A
capture refuses to hold more than ``max_bytes`` (1 GiB by default) or ``max_tokens`` vectors
per name, and says so before copying; ``pool="mean"`` or ``"last"`` stores ``(N, d)``
instead of ``(N, L, d)``, L times smaller. Budget: ``N * L * d * 4`` bytes per name in
float32 -- 64 completions x 512 tokens x 4096 wide is 512 MiB per layer.

Footgun: ``output_hidden_states`` in ``transformers`` returns L + 1 tensors whose *last* is
taken after the final norm (it equals ``last_hidden_state``), not the raw output of the
last layer. :func:`from_hidden_states` names it ``"final_norm"``; the raw
``"layers.{L-1}.resid_post"`` needs the hook route.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlnb.policies.layers import (
    LAYER_PATHS,
    NORM_NAMES,
    find_final_norm,
    find_layers,
    submodule,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ActivationCache",
    "capture",
    "find_final_norm",
    "find_layers",
    "from_hidden_states",
    "pool_states",
]

#: Default cap on the bytes one capture may hold (all names together).
DEFAULT_MAX_BYTES = 2**30

_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(resid_pre|resid_post)$")
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
                 if (m := _LAYER_NAME.match(k)) and m.group(2) == kind]
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


# --- CAPTURE ----------------------------------------------------------------------------


class _Store:
    """Detach, bound, pool, copy: where every captured tensor goes."""

    def __init__(self, *, mask: Tensor | None, pool: str | None, dtype: torch.dtype | None,
                 device: Any, max_tokens: int | None, max_bytes: int | None) -> None:
        if pool is not None and pool not in POOLINGS:
            raise ValueError(f"pool must be None or one of {POOLINGS}, got {pool!r}")
        for name, v in (("max_tokens", max_tokens), ("max_bytes", max_bytes)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be None (no cap) or >= 1, got {v}")
        self.mask, self.pool, self.dtype, self.device = mask, pool, dtype, device
        self.max_tokens, self.max_bytes = max_tokens, max_bytes
        self.data: dict[str, Tensor] = {}
        self.bytes = 0

    def add(self, name: str, value: Any) -> None:
        t = _first_tensor(value)
        if t is None:
            raise TypeError(f"{name!r}: the module produced no tensor ({type(value).__name__})")
        if name in self.data:
            raise RuntimeError(
                f"{name!r} was computed more than once in one capture (a generate loop, a "
                "module used twice, or gradient checkpointing re-running it): capture a "
                "single forward pass, e.g. score the finished sequences"
            )
        t = t.detach()
        if self.pool is not None and t.ndim == 3:
            m = None if self.mask is None else self.mask.to(t.device)
            t = pool_states(t, m, self.pool)
        dtype = self.dtype or t.dtype
        tokens = t.numel() // max(t.shape[-1], 1) if t.ndim else 1
        nbytes = t.numel() * torch.empty((), dtype=dtype).element_size()
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise MemoryError(
                f"{name!r} {tuple(t.shape)} holds {tokens} vectors, over max_tokens "
                f"({self.max_tokens}): capture fewer rows or pool at capture (pool='mean')"
            )
        if self.max_bytes is not None and self.bytes + nbytes > self.max_bytes:
            raise MemoryError(
                f"capturing {name!r} {tuple(t.shape)} would bring this capture to "
                f"{(self.bytes + nbytes) / 2**20:.1f} MiB, over max_bytes "
                f"({self.max_bytes / 2**20:.1f} MiB): capture fewer rows or names, pool at "
                "capture (pool='mean'), store dtype=torch.float16, or raise max_bytes"
            )
        device = t.device if self.device is None else self.device
        self.data[name] = t.to(device=device, dtype=dtype, copy=True)  # never a view
        self.bytes += nbytes

    def cache(self, names: Sequence[str]) -> ActivationCache:
        return ActivationCache({n: self.data[n] for n in names if n in self.data},
                               self.mask, pooled=self.pool)


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _standard_names(model: nn.Module) -> list[str]:
    found = find_layers(model)
    if found is None:
        return []
    names = ["embed"] + [f"layers.{i}.resid_post" for i in range(len(found[1]))]
    return names + (["final_norm"] if find_final_norm(model) is not None else [])


def _leaf_names(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    return names or ["output"]


def _resolve(model: nn.Module, name: str, modules: Mapping[str, Any]) -> tuple[nn.Module, str]:
    """``(module, "in" | "out")`` whose input or output is the state called ``name``."""
    if name in modules:
        target = modules[name]
        mod = target if isinstance(target, nn.Module) else submodule(model, str(target))
        if mod is None:
            raise KeyError(f"modules[{name!r}] = {target!r} is not a submodule of the model")
        return mod, "out"
    if name == "output":
        return model, "out"
    m = _LAYER_NAME.match(name)
    if name == "embed" or m:
        found = find_layers(model)
        if found is None:
            raise KeyError(
                f"{name!r}: no decoder layers found on {type(model).__name__} (looked at "
                f"{', '.join(LAYER_PATHS)}); map names to modules with modules={{...}}"
            )
        path, layers = found
        i = 0 if name == "embed" else int(m.group(1))
        if i >= len(layers):
            raise KeyError(f"{name!r}: the model has {len(layers)} layers ({path}.0..{len(layers) - 1})")
        return layers[i], "in" if name == "embed" or m.group(2) == "resid_pre" else "out"
    if name == "final_norm":
        found_norm = find_final_norm(model)
        if found_norm is None:
            raise KeyError(
                f"'final_norm': no final norm found on {type(model).__name__} (looked for "
                f"{', '.join(NORM_NAMES)} beside the decoder layers); name it with "
                "modules={'final_norm': ...}"
            )
        return found_norm[1], "out"
    mod = submodule(model, name)
    if mod is None:
        some = [n for n, _ in model.named_modules() if n][:8]
        raise KeyError(
            f"{name!r} is neither a stable name (embed, layers.{{i}}.resid_pre/post, final_norm, "
            f"output) nor a submodule path; submodules include {some}"
        )
    return mod, "out"


def _mask_from(mask: Any, inputs: Any) -> Tensor | None:
    if mask is None and isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
    return None if mask is None else torch.as_tensor(mask).to(torch.bool)


def _run(model: nn.Module, inputs: Any, **extra: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs, **extra)
    if isinstance(inputs, Tensor):
        return model(inputs, **extra)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **extra)
    if callable(inputs) and not extra:
        return inputs()
    raise TypeError(
        f"inputs must be a dict of model kwargs, a tensor, a tuple of arguments, or (with "
        f"hooks=True) a function of no arguments that runs the forward; got "
        f"{type(inputs).__name__}"
    )


def capture(
    model: nn.Module,
    inputs: Mapping[str, Any] | Tensor | tuple | Callable[[], Any],
    names: Sequence[str] | None = None,
    *,
    modules: Mapping[str, nn.Module | str] | None = None,
    hooks: bool = True,
    mask: Any = None,
    pool: str | None = None,
    dtype: torch.dtype | None = None,
    device: Any = "cpu",
    max_tokens: int | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    grad: bool = False,
) -> ActivationCache:
    """Run one forward pass of ``model`` and keep the named hidden states.

    Args:
        model: any ``nn.Module``: a ``transformers`` causal LM, an rlnb policy, a Sequential.
        inputs: what to run: a dict of keyword arguments (``tokenizer(...)`` output:
            ``model(**inputs)``), a tensor (``model(inputs)``), a tuple (``model(*inputs)``),
            or a function of no arguments that runs the forward itself, e.g.
            ``lambda: policy.log_probs(rollout)``.
        names: the states to keep (see the module docstring). Default: ``embed``, every
            ``layers.{i}.resid_post`` and ``final_norm`` when decoder layers are found,
            otherwise every leaf module's output (``"net.0"``, ``"net.1"``, ...), plus the
            keys of ``modules``.
        modules: extra names -> a submodule (or its dotted path) whose output to keep.
        hooks: True: forward hooks. False: ``output_hidden_states=True`` and
            :func:`from_hidden_states` (Hugging Face models; ``inputs`` must not be a
            function). Both give identical tensors for the names both know.
        mask: ``(N, L)`` valid positions stored with the cache; default
            ``inputs["attention_mask"]`` when there is one.
        pool: None keeps ``(N, L, d)``; ``"mean"``/``"last"`` stores ``(N, d)`` pooled under
            ``mask`` -- L times less memory.
        dtype: storage dtype (e.g. ``torch.float16``); default the model's.
        device: where to keep the states; default CPU (frees accelerator memory). None
            leaves them where they were computed.
        max_tokens: cap on vectors (``N * L``) per name; None for no cap.
        max_bytes: cap on the bytes of the whole capture (default 1 GiB); None for none.
        grad: False runs the forward under ``torch.no_grad()``. True leaves grad mode
            alone (to capture inside a training step). The stored states never carry a graph.

    Returns:
        :class:`ActivationCache` with the names in the order asked.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> cache = capture(net, torch.randn(5, 3))
    >>> cache.shapes
    {'0': (5, 4), '1': (5, 4), '2': (5, 2)}

    Footgun: the model's train/eval mode is left as it is -- dropout in train mode makes
    the captured states random. Call ``model.eval()`` first to measure the policy itself.
    """
    modules = dict(modules or {})
    store = _Store(mask=_mask_from(mask, inputs), pool=pool, dtype=dtype, device=device,
                   max_tokens=max_tokens, max_bytes=max_bytes)
    grad_mode = contextlib.nullcontext() if grad else torch.no_grad()
    if not hooks:
        if callable(inputs) and not isinstance(inputs, Tensor):
            raise TypeError(
                "hooks=False calls model(..., output_hidden_states=True) itself: give inputs "
                "as a dict of model kwargs or a tensor of input ids, not a function"
            )
        if modules:
            raise ValueError("modules= needs hooks=True: output_hidden_states has no submodules")
        with grad_mode:
            out = _run(model, inputs, output_hidden_states=True)
        hs = getattr(out, "hidden_states", None)
        if hs is None and isinstance(out, Mapping):
            hs = out.get("hidden_states")
        if hs is None:
            raise ValueError(
                f"{type(model).__name__} returned no hidden_states for "
                "output_hidden_states=True; use hooks=True"
            )
        return _from_hidden_states(hs, names, store)

    if names is None:
        names = (_standard_names(model) or _leaf_names(model)) + [
            k for k in modules if k not in _standard_names(model)]
    names = list(dict.fromkeys(names))
    handles = []
    try:
        for name in names:
            mod, where = _resolve(model, name, modules)
            if where == "out":
                handles.append(mod.register_forward_hook(
                    lambda _m, _a, out, name=name: store.add(name, out)))
            else:
                handles.append(mod.register_forward_pre_hook(
                    lambda _m, args, kwargs, name=name: store.add(
                        name, args[0] if args else kwargs.get("hidden_states")),
                    with_kwargs=True))
        with grad_mode:
            _run(model, inputs)  # the output is dropped here: no graph outlives the call
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in store.data]
    if missing:
        raise RuntimeError(
            f"the forward never ran the modules of {missing}: does this forward use them?"
        )
    return store.cache(names)


def _hidden_state_index(name: str, L: int) -> int:
    m = _LAYER_NAME.match(name)
    if name == "embed":
        return 0
    if name == "final_norm":
        return L
    if m is None:
        raise KeyError(
            f"{name!r}: from hidden_states only embed, layers.{{i}}.resid_pre/resid_post and "
            "final_norm exist; use capture(..., hooks=True) for submodules"
        )
    i = int(m.group(1))
    if m.group(2) == "resid_pre":
        if i >= L:
            raise KeyError(f"{name!r}: hidden_states describe {L} layers (0..{L - 1})")
        return i
    if i == L - 1:
        raise KeyError(
            f"{name!r}: transformers' last hidden state is taken after the final norm (it is "
            "'final_norm' here); the raw output of the last layer needs capture(..., hooks=True)"
        )
    if i >= L:
        raise KeyError(f"{name!r}: hidden_states describe {L} layers (0..{L - 1})")
    return i + 1


def _from_hidden_states(hidden_states: Sequence[Tensor], names: Sequence[str] | None,
                        store: _Store) -> ActivationCache:
    L = len(hidden_states) - 1
    if L < 1:
        raise ValueError(
            f"hidden_states must hold L + 1 >= 2 tensors (embeddings, then one per layer), "
            f"got {len(hidden_states)}"
        )
    if names is None:
        names = ["embed", *[f"layers.{i}.resid_post" for i in range(L - 1)], "final_norm"]
    names = list(dict.fromkeys(names))
    for name in names:
        store.add(name, hidden_states[_hidden_state_index(name, L)])
    return store.cache(names)


def from_hidden_states(
    hidden_states: Sequence[Tensor],
    names: Sequence[str] | None = None,
    *,
    mask: Any = None,
    pool: str | None = None,
    dtype: torch.dtype | None = None,
    device: Any = "cpu",
    max_tokens: int | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> ActivationCache:
    """A cache from the ``hidden_states`` tuple of a ``transformers`` model.

    ``hidden_states`` has L + 1 tensors ``(N, S, d)``: index 0 is ``"embed"``, index i is
    ``"layers.{i-1}.resid_post"`` (= ``"layers.{i}.resid_pre"``), and the last, index L,
    is ``"final_norm"`` -- see the module footgun. Arguments as in :func:`capture`.

    >>> hs = tuple(torch.randn(2, 5, 8) for _ in range(3))   # a 2-layer model
    >>> list(from_hidden_states(hs))
    ['embed', 'layers.0.resid_post', 'final_norm']
    """
    store = _Store(mask=None if mask is None else torch.as_tensor(mask).to(torch.bool),
                   pool=pool, dtype=dtype, device=device, max_tokens=max_tokens,
                   max_bytes=max_bytes)
    return _from_hidden_states(hidden_states, names, store)
