"""The policy protocol: one interface for tabular toys, MLPs and language models.

A policy answers prompts. ``rollout`` samples ``n`` completions per prompt and returns a
:class:`Rollout`; ``log_probs`` recomputes, with gradients, the per-token log-probabilities
and entropies of the sampled tokens. The trainer only ever talks to these two methods.

Shapes use ``N = num_prompts * n`` rows (groups laid out contiguously, as TRL lays them
out: rows ``g*n .. g*n+n-1`` answer the same prompt) and ``T`` completion tokens.

Footgun: ``mask`` marks the *completion* tokens that count. Prompt tokens and padding are
excluded; forgetting the mask silently trains on the prompt and on padding.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from rlnb.serialization import Serializable


@dataclass
class Rollout:
    """Completions sampled by a policy for a batch of prompts.

    Attributes:
        prompts: ``(N,)`` prompt index of each completion (repeated ``n`` times per group).
        actions: ``(N, T)`` sampled token / action ids.
        mask: ``(N, T)`` bool, True on completion tokens that count.
        logp: ``(N, T)`` log-probabilities of ``actions`` under the sampling policy
            (detached; the "old" log-probs of PPO).
        group_size: ``n``, completions per prompt.
        states: ``(N, T)`` decision states (tabular sandboxes) or None.
        extra: policy-specific tensors (input ids, attention masks, ...).
    """

    prompts: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor
    group_size: int
    states: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.actions.shape[0]

    def detach(self) -> Rollout:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw["logp"] = self.logp.detach()
        return Rollout(**kw)


class Policy(torch.nn.Module, Serializable):
    """Base class of rlnb policies (``torch.nn.Module`` + rebuildable from a spec)."""

    def rollout(
        self,
        env: Any,
        prompts: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample ``n`` completions for each prompt in ``prompts`` ``(P,)``."""
        raise NotImplementedError

    def training_rollout(
        self,
        env: Any,
        prompts: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """The rollout the trainer updates on: :meth:`rollout`'s samples, plus whatever the
        policy keeps to spare the update work (a language model keeps its sampler's
        activations for the first update, :mod:`rlnb.policies.lm`). Same samples, same
        numbers as :meth:`rollout`. Default: :meth:`rollout`."""
        return self.rollout(env, prompts, n, temperature=temperature, generator=generator)

    def after_update(self, rollout: Rollout) -> None:
        """Called once the weights have moved after the updates on ``rollout``: drop what
        :meth:`training_rollout` kept that the new weights make stale. Default: nothing."""

    def log_probs(
        self, rollout: Rollout, *, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(logp, entropy)``, each ``(N, T)``, of ``rollout.actions`` under the
        current parameters, with gradients. Entropy is of the temperature-scaled
        distribution at each position. Values outside ``rollout.mask`` are 0."""
        raise NotImplementedError

    def reference_policy(self) -> Policy:
        """A frozen copy of the current policy for the KL term (``TrainConfig.beta > 0``):
        the trainer scores each rollout with it, without gradients, and saves its
        ``state_dict()`` in the run directory (``reference.safetensors``). Default: a deep
        copy with every parameter's ``requires_grad`` off, in eval mode. A policy that
        can express its initial self more cheaply overrides it (a LoRA language model:
        the same model with its adapters switched off, whose ``state_dict()`` is empty).

        Footgun: the copy must not share trainable tensors with this policy; a "copy"
        that follows the updates makes the KL term zero."""
        ref = copy.deepcopy(self)
        ref.requires_grad_(False)
        return ref.eval()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them
        (``TrainConfig.gradient_checkpointing``). Only policies whose forward keeps large
        activations (Hugging Face language models) implement it; the default refuses."""
        raise ValueError(
            f"{type(self).__name__} has no activations worth recomputing; "
            "gradient_checkpointing applies to language-model policies (LMPolicy): set "
            "TrainConfig(gradient_checkpointing=False) for this policy")

    def runtime_info(self) -> dict[str, Any]:
        """What this policy's numbers depend on besides its weights and the run's config:
        which engine and kernels compute them on this machine (JSON-able). The trainer
        records it in the run directory (``runtime.json``)."""
        return {}


def validate_sampling_args(n: int, temperature: float) -> None:
    """``n`` an integer >= 1, ``temperature`` a finite real > 0 (``TypeError`` for a bad
    type, ``ValueError`` for a bad value; both name the argument and its range)."""
    from rlnb.checks import check_number

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        kind = ValueError if isinstance(n, int) and not isinstance(n, bool) else TypeError
        raise kind(f"n (completions per prompt) must be an integer >= 1, got {n!r}")
    if type(temperature) is float and 0 < temperature < math.inf:
        return  # the common case, without the general check's cost
    t = check_number(temperature, "temperature", 0, low_open=True,
                     meaning="for greedy decoding use a small temperature such as 1e-3")
    if math.isinf(t):
        raise ValueError(f"temperature must be finite (> 0), got {temperature!r}")
