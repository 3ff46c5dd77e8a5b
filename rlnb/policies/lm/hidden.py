"""Named hidden states of a language model, on the reference path (the model's own forward).

Names follow :mod:`rlnb.probes.activations`: ``"embed"``, ``"layers.{i}.resid_post"``,
``"final_norm"``. Hugging Face returns the last layer's output *after* the final norm; the
raw residual stream of that layer is recovered with a forward hook on the last decoder
layer (found with :func:`rlnb.policies.layers.find_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlnb.policies.layers import find_layers
from rlnb.policies.lm.layout import positions


@torch.no_grad()
def hidden_states(model: Any, ids: torch.Tensor, am: torch.Tensor,
                  layers: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """``embed``, ``layers.{i}.resid_post`` (the layers asked for, negative from the end;
    all by default) and ``final_norm``, each ``(N, L, d)`` float32, and ``attention_mask``,
    of left-padded ``ids`` / ``am (N, L)``, detached, on the CPU."""
    n_layers = model.config.num_hidden_layers
    wanted = range(n_layers) if layers is None else [i % n_layers for i in layers]
    out = model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                output_hidden_states=True, use_cache=False)
    hs = out.hidden_states  # embed, layer 0 .. L-2 outputs, final norm (of layer L-1)
    states = {"embed": hs[0]}
    for i in wanted:
        if i < n_layers - 1:
            states[f"layers.{i}.resid_post"] = hs[i + 1]
    if n_layers - 1 in wanted:
        # Hugging Face returns the last layer *after* the final norm; recover the raw
        # residual stream with a hook on the last layer.
        states[f"layers.{n_layers - 1}.resid_post"] = last_layer_output(model, ids, am)
    states["final_norm"] = hs[-1]
    result = {k: v.detach().float().cpu() for k, v in states.items()}
    result["attention_mask"] = am.cpu()
    return result


def last_layer_output(model: Any, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """The last decoder layer's output ``(N, L, d)`` (before the final norm)."""
    # Imported here: rlnb.probes sits above rlnb.policies (and imports nothing of it at
    # load time), so the policy package stays importable without the probes.

    found = find_layers(model)
    if found is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = found[1][-1].register_forward_hook(hook)
    try:
        model(input_ids=ids, attention_mask=am, position_ids=positions(am), use_cache=False)
    finally:
        handle.remove()
    return captured["h"]
