"""Named hidden states of a language model, on the reference path (the model's own forward).

Names follow :mod:`rlnb.probes.activations`: ``"embed"``, ``"layers.{i}.resid_post"``,
``"final_norm"``; the capture itself is :mod:`rlnb.policies.layers` (the probes' capture
runs on it too). Hugging Face returns the last layer's output *after* the final norm; the
raw residual stream of that layer is recovered with a forward hook on the last decoder
layer (found with :func:`rlnb.policies.layers.find_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlnb.policies.layers import find_layers, read_hidden_states, record_states
from rlnb.policies.lm.layout import positions


@torch.no_grad()
def hidden_states(model: Any, ids: torch.Tensor, am: torch.Tensor,
                  layers: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """``embed``, ``layers.{i}.resid_post`` (the layers asked for, negative from the end;
    all by default) and ``final_norm``, each ``(N, L, d)`` float32, and ``attention_mask``,
    of left-padded ``ids`` / ``am (N, L)``, detached, on the CPU."""
    n_layers = model.config.num_hidden_layers
    wanted = range(n_layers) if layers is None else [i % n_layers for i in layers]
    last = f"layers.{n_layers - 1}.resid_post"
    names = ["embed", *[f"layers.{i}.resid_post" for i in wanted if i < n_layers - 1],
             *([last] if n_layers - 1 in wanted else []), "final_norm"]
    states: dict[str, torch.Tensor] = {}
    out = model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                output_hidden_states=True, use_cache=False)
    # embed, layer 0 .. L-2 outputs, final norm (of layer L-1)
    read_hidden_states(out.hidden_states, [n for n in names if n != last], states.__setitem__)
    if last in names:
        # Hugging Face returns the last layer *after* the final norm; recover the raw
        # residual stream with a hook on the last layer.
        states[last] = last_layer_output(model, ids, am)
    result = {k: states[k].detach().float().cpu() for k in names}
    result["attention_mask"] = am.cpu()
    return result


def last_layer_output(model: Any, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """The last decoder layer's output ``(N, L, d)`` (before the final norm)."""
    found = find_layers(model)
    if found is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    name = f"layers.{len(found[1]) - 1}.resid_post"
    captured: dict[str, torch.Tensor] = {}
    record_states(
        model,
        lambda: model(input_ids=ids, attention_mask=am, position_ids=positions(am), use_cache=False),
        [name], captured.__setitem__)
    return captured[name]
