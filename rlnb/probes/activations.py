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

The cache and pooling are :mod:`rlnb.probes.activation_cache`; where each name lives in a
module and the hooks that record it are :mod:`rlnb.policies.layers`, the one capture that
``LMPolicy.hidden_states`` runs on too. All their names are re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rlnb.policies.layers import (  # the lookups, importable from here as before
    LAYER_PATHS,  # noqa: F401
    NORM_NAMES,  # noqa: F401
    find_final_norm,
    find_layers,
    read_hidden_states,
    record_states,
    submodule,  # noqa: F401
)
from rlnb.probes.activation_cache import POOLINGS, ActivationCache, pool_states

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


class _Store:
    """Bound, pool, copy: where every captured tensor goes (``keep`` of
    :func:`rlnb.policies.layers.record_states`)."""

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

    def add(self, name: str, t: Tensor) -> None:
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


def _standard_names(model: nn.Module) -> list[str]:
    found = find_layers(model)
    if found is None:
        return []
    names = ["embed"] + [f"layers.{i}.resid_post" for i in range(len(found[1]))]
    return names + (["final_norm"] if find_final_norm(model) is not None else [])


def _leaf_names(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    return names or ["output"]


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

    def forward() -> None:
        with grad_mode:
            _run(model, inputs)  # the output is dropped here: no graph outlives the call

    record_states(model, forward, names, store.add, modules=modules)
    return store.cache(names)


def _from_hidden_states(hidden_states: Sequence[Tensor], names: Sequence[str] | None,
                        store: _Store) -> ActivationCache:
    return store.cache(read_hidden_states(hidden_states, names, store.add))


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
