"""Named hidden states of a ``torch.nn.Module``: where each lives, and how one forward
records them. The one implementation of hidden-state capture, used by the language-model
policy (:mod:`rlnb.policies.lm.hidden`, behind ``LMPolicy.hidden_states``) and by the
probes' :func:`rlnb.probes.activations.capture` (which re-exports the lookups).

- Where: the decoder layers and the final norm of a causal LM, by architecture
  (:func:`find_layers`, :func:`find_final_norm`), and the module whose input or output is
  a named state (:func:`resolve_state`). Names: ``"embed"``, ``"layers.{i}.resid_pre"``,
  ``"layers.{i}.resid_post"``, ``"final_norm"``, ``"output"`` or a module path (the table
  in :mod:`rlnb.probes.activations`).
- How: :func:`record_states` runs a forward with hooks on those modules;
  :func:`read_hidden_states` names the ``output_hidden_states=True`` tuple of a Hugging
  Face model instead. Both hand each state, as the forward computed it, to ``keep(name,
  tensor)``: what to keep of it (a float32 CPU copy, a pooled one) is the caller's choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = [
    "LAYER_PATHS",
    "LAYER_STATE",
    "NORM_NAMES",
    "find_final_norm",
    "find_layers",
    "first_tensor",
    "hidden_state_index",
    "read_hidden_states",
    "record_states",
    "resolve_state",
    "submodule",
]

#: Where decoder layers live in common architectures (tried in order; also found nested,
#: e.g. ``model.model.layers`` for a policy that wraps a causal LM as ``self.model``).
LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma
    "transformer.h",  # GPT-2, GPT-J
    "gpt_neox.layers",  # Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "model.language_model.layers",  # multimodal wrappers
    "layers",  # a bare LlamaModel
    "h",  # a bare GPT2Model
    "blocks",
)
#: Names of the final norm, a sibling of the decoder layers (``model.norm``,
#: ``transformer.ln_f``, ``gpt_neox.final_layer_norm``, ``transformer.norm_f``).
NORM_NAMES: tuple[str, ...] = ("norm", "ln_f", "final_layer_norm", "norm_f")
#: A per-layer state name: ``layers.{i}.resid_pre`` (input of layer i) or
#: ``layers.{i}.resid_post`` (its output); group 1 is i, group 2 the kind.
LAYER_STATE = re.compile(r"^layers\.(\d+)\.(resid_pre|resid_post)$")

Keep = Callable[[str, Tensor], None]


# --- WHERE: the layers, the final norm, the module of a named state ---------------------


def submodule(model: nn.Module, path: str) -> nn.Module | None:
    """``model.get_submodule(path)``, or None where there is no such submodule."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, layers)`` of the decoder layers of ``model``, or None if none is found.

    Tries :data:`LAYER_PATHS` from the root, then the shortest submodule path that ends in
    one of them (a wrapper's ``model.model.layers``).

    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> find_layers(net) is None
    True
    """
    for path in LAYER_PATHS:
        mod = submodule(model, path)
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path, mod
    nested = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0
        and any(name.endswith("." + p) for p in LAYER_PATHS[:6])
    ]
    return min(nested, key=lambda item: len(item[0])) if nested else None


def find_final_norm(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, module)`` of the norm after the last decoder layer -- a sibling of the
    layers named as in :data:`NORM_NAMES` -- or None."""
    found = find_layers(model)
    if found is None:
        return None
    parent = found[0].rpartition(".")[0]
    for name in NORM_NAMES:
        path = f"{parent}.{name}" if parent else name
        mod = submodule(model, path)
        if mod is not None and not isinstance(mod, nn.ModuleList):
            return path, mod
    return None


def resolve_state(
    model: nn.Module, name: str, modules: Mapping[str, Any] | None = None
) -> tuple[nn.Module, str]:
    """``(module, "in" | "out")`` whose input or output is the state called ``name``.

    ``modules`` maps extra names to a submodule (or its dotted path) whose output is kept.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    >>> resolve_state(net, "1")
    (Tanh(), 'out')
    """
    modules = modules or {}
    if name in modules:
        target = modules[name]
        mod = target if isinstance(target, nn.Module) else submodule(model, str(target))
        if mod is None:
            raise KeyError(f"modules[{name!r}] = {target!r} is not a submodule of the model")
        return mod, "out"
    if name == "output":
        return model, "out"
    m = LAYER_STATE.match(name)
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


def hidden_state_index(name: str, L: int) -> int:
    """Index of the state ``name`` in the ``output_hidden_states`` tuple of an ``L``-layer
    Hugging Face model: ``embed`` 0, ``layers.{i}.resid_post`` i + 1 (= ``resid_pre`` of
    layer i + 1), ``final_norm`` L.

    Footgun: the tuple's last entry is taken *after* the final norm, so the raw output of
    the last layer, ``layers.{L-1}.resid_post``, is not in it (a KeyError says so).

    >>> hidden_state_index("layers.0.resid_post", 2), hidden_state_index("final_norm", 2)
    (1, 2)
    """
    m = LAYER_STATE.match(name)
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


# --- HOW: record the states of one forward --------------------------------------------


def first_tensor(x: Any) -> Tensor | None:
    """The first tensor in a module's output (a tensor, tuple, list or dict of them), or
    None."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for item in x:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


def _keeper(keep: Keep) -> tuple[Keep, set[str]]:
    """``keep`` behind the checks every state passes: a tensor, computed once."""
    seen: set[str] = set()

    def add(name: str, value: Any) -> None:
        t = first_tensor(value)
        if t is None:
            raise TypeError(f"{name!r}: the module produced no tensor ({type(value).__name__})")
        if name in seen:
            raise RuntimeError(
                f"{name!r} was computed more than once in one capture (a generate loop, a "
                "module used twice, or gradient checkpointing re-running it): capture a "
                "single forward pass, e.g. score the finished sequences"
            )
        keep(name, t)
        seen.add(name)

    return add, seen


def record_states(
    model: nn.Module,
    forward: Callable[[], Any],
    names: Sequence[str],
    keep: Keep,
    *,
    modules: Mapping[str, Any] | None = None,
) -> None:
    """Run ``forward()`` once with hooks on the modules of ``names`` (:func:`resolve_state`);
    call ``keep(name, tensor)`` with each state as the forward computes it.

    The tensor is the module's own (its output, or the first input of a decoder layer for
    ``embed`` and ``resid_pre``), not a copy: copy it in ``keep`` if later in-place ops
    could change it. The hooks are removed even when the forward fails; grad mode is
    ``forward``'s business. A state computed twice (a module run twice) or never is an error.

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    >>> got = {}
    >>> record_states(net, lambda: net(torch.ones(1, 2)), ["0"], got.__setitem__)
    >>> got["0"].shape
    torch.Size([1, 3])
    """
    add, seen = _keeper(keep)
    handles = []
    try:
        for name in names:
            mod, where = resolve_state(model, name, modules)
            if where == "out":
                handles.append(mod.register_forward_hook(
                    lambda _m, _a, out, name=name: add(name, out)))
            else:
                handles.append(mod.register_forward_pre_hook(
                    lambda _m, args, kwargs, name=name: add(
                        name, args[0] if args else kwargs.get("hidden_states")),
                    with_kwargs=True))
        forward()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise RuntimeError(
            f"the forward never ran the modules of {missing}: does this forward use them?"
        )


def read_hidden_states(
    hidden_states: Sequence[Tensor], names: Sequence[str] | None, keep: Keep
) -> list[str]:
    """Call ``keep(name, tensor)`` for each of ``names`` from the ``hidden_states`` tuple
    (L + 1 tensors) of a Hugging Face model (:func:`hidden_state_index`); return the names,
    in order, without repeats. Default names: ``embed``, ``layers.{i}.resid_post`` for
    i < L - 1, ``final_norm``."""
    L = len(hidden_states) - 1
    if L < 1:
        raise ValueError(
            f"hidden_states must hold L + 1 >= 2 tensors (embeddings, then one per layer), "
            f"got {len(hidden_states)}"
        )
    if names is None:
        names = ["embed", *[f"layers.{i}.resid_post" for i in range(L - 1)], "final_norm"]
    names = list(dict.fromkeys(names))
    add, _ = _keeper(keep)
    for name in names:
        add(name, hidden_states[hidden_state_index(name, L)])
    return names
