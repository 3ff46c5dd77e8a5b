"""Where the decoder layers and the final norm of a causal LM live, by architecture.

One lookup for every layer that needs it: the policies' hidden states
(:mod:`rlnb.policies.lm.hidden`) and the probes' activation capture
(:mod:`rlnb.probes.activations`, which re-exports these names).
"""

from __future__ import annotations

from torch import nn

__all__ = ["LAYER_PATHS", "NORM_NAMES", "find_final_norm", "find_layers", "submodule"]

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
