"""The one interface between :class:`~rlnb.policies.LMPolicy` and the fast engine.

:class:`FastEngine` is all the policy sees of this sub-package: it decodes
(:meth:`~FastEngine.decoder`), scores (:meth:`~FastEngine.scored_logits`, replaying the
sampler's activations where it can), and says what it runs on. ``LMPolicy(engine="hf")``
never builds one (the model's own forward and Hugging Face's KV cache do everything), and
``RLNB_NATIVE=0`` keeps it on PyTorch's operations (:mod:`rlnb.policies.lm.fast.native`).
"""

from __future__ import annotations

from typing import Any

import torch

from rlnb.policies.lm.fast import native, replay, score
from rlnb.policies.lm.fast.forward import Forward


class FastEngine:
    """The fast engine of one policy's model (see :func:`fast_engine_support` for which
    models it runs). The fused weights are rebuilt from the current parameters at every
    call, so an engine stays valid while the model trains; only the RoPE tables (functions
    of the config) are kept."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = torch.device(device)
        self.rope_cache: dict = {}

    def forward(self) -> Forward:
        """The functional forward on the parameters as they are now."""
        return Forward(self.model, self.rope_cache)

    # --- sampling -----------------------------------------------------------------------
    def decoder(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, T: int,
                tape: replay.Tape | None = None):
        """The incremental decoder (:meth:`Forward.decoder`): a generator that yields
        next-token logits ``(B, V)`` and receives ``(tokens (B,), keep)``."""
        return self.forward().decoder(prompt_ids, prompt_mask, n, T, tape=tape)

    @property
    def replay_supported(self) -> bool:
        """Whether a sampler's activations can replace the next update's forward pass
        (:mod:`rlnb.policies.lm.fast.replay`: float32 Llama-family models on the CPU)."""
        return self.device.type == "cpu" and replay.supported(self.model)

    def new_tape(self, temperature: float) -> replay.Tape:
        """An empty :class:`~rlnb.policies.lm.fast.replay.Tape` for :meth:`decoder` to fill."""
        return replay.Tape(list(self.model.parameters()), temperature)

    # --- scoring ------------------------------------------------------------------------
    def completion_logits(self, ids: torch.Tensor, pos: torch.Tensor, key_valid: torch.Tensor,
                          Lp: int, n: int) -> torch.Tensor:
        """Logits ``(N, T, V)`` of every completion position (:func:`score.completion_logits`)."""
        return score.completion_logits(self.forward(), ids, pos, key_valid, Lp, n)

    def scored_logits(self, rollout: Any, mask: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(S, V)`` that predict the masked tokens (row-major) and those tokens
        ``(S,)``, with gradients (:meth:`scored_hidden` through its head)."""
        h, actions, head = self.scored_hidden(rollout, mask, temperature)
        return head(h), actions

    def scored_hidden(self, rollout: Any, mask: torch.Tensor, temperature: float
                      ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Hidden states ``(S, d)`` that predict the masked tokens (row-major), those tokens
        ``(S,)``, and the head that maps hidden states to logits (final norm and LM head),
        with gradients: from the sampler's activations when the rollout kept them for these
        very weights and temperature, else packed (:func:`score.scored_hidden`). The
        caller applies the head (in chunks, for a large vocabulary)."""
        # The sampler's activations serve one call at most, of the policy that sampled
        # with these very weights: whatever comes next recomputes.
        tape = rollout.extra.get("activations")
        if tape is not None and tape.valid_for(list(self.model.parameters()), temperature):
            del rollout.extra["activations"]
            out = self._replayed_hidden(tape, rollout, mask)
            if out is not None:
                return out
        fwd = self.forward()
        return (*score.scored_hidden(fwd, rollout, mask, self.device), fwd.final)

    def _replayed_hidden(self, tape: replay.Tape, rollout: Any, mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        """:meth:`scored_hidden` from the tape, already checked to belong to these weights
        and temperature; None where the mask asks for a token the sampler did not compute."""
        mask = mask.cpu()
        N, T = mask.shape
        if N != tape.n * tape.prompt_ids.shape[0]:
            return None
        cells, J = replay.cell_index(tape)
        r, t = mask.nonzero(as_tuple=True)
        if t.numel() and int(t.max()) > J:
            return None
        cell = cells[r, (t - 1).clamp_(min=0)]
        if bool(((t > 0) & (cell < 0)).any()):
            return None
        G = tape.prompt_ids.shape[0]
        src = torch.where(t == 0, r // tape.n, G + cell).to(self.device)
        h = replay.replay(tape, src)
        actions = rollout.actions.cpu()[r, t].to(self.device)
        return h, actions, tape.fast.final

    def runtime_info(self) -> dict[str, Any]:
        """On the CPU, whether the fused kernels are in use (they change the last bits)."""
        if self.device.type != "cpu":
            return {}
        return {"native_kernels": native.kernels() is not None}
