"""Scoring on the reference path: the model's own forward over prompt + completion.

:func:`completion_logits` is the plain whole-sequence version, the oracle the fast
engine's packed scoring (:mod:`rlnb.policies.lm.fast.score`) is tested against. The logits
that score completion token ``t`` sit at position ``Lp - 1 + t`` (one to the left): an
off-by-one here trains on garbage without raising anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from rlnb.policies.base import Rollout
from rlnb.policies.lm.layout import positions


def completion_inputs(rollout: Rollout, device: torch.device):
    """``ids (N, Lp + T)``, ``Lp``, position ids and the valid keys ``(N, Lp + T)`` of a
    rollout, on ``device``. The completion's positions continue from the real prompt
    length (tokens after EOS get positions too; they are masked out)."""
    ids = rollout.extra["input_ids"].to(device)  # (N, Lp + T)
    Lp = int(rollout.extra["prompt_length"])
    T = rollout.actions.shape[1]
    prompt_mask = rollout.extra["attention_mask"][:, :Lp].to(device)
    lengths = prompt_mask.sum(1)
    pos = torch.cat([positions(prompt_mask),
                     lengths[:, None] + torch.arange(T, device=device)], 1)
    key_valid = torch.cat([prompt_mask.bool(),
                           torch.ones((ids.shape[0], T), dtype=torch.bool, device=device)], 1)
    return ids, Lp, pos, key_valid


def completion_logits(model: Any, ids: torch.Tensor, pos: torch.Tensor, key_valid: torch.Tensor,
                      T: int, takes_logits_to_keep: bool) -> torch.Tensor:
    """Logits ``(N, T, V)`` of the model's own forward that score the ``T`` completion
    tokens of ``ids (N, Lp + T)``. The last completion token predicts nothing we score: it
    is dropped. The LM head runs on the last ``T`` positions only where the model can be
    told so (``takes_logits_to_keep``)."""
    keep = {"logits_to_keep": T} if takes_logits_to_keep else {}
    out = model(input_ids=ids[:, :-1], attention_mask=key_valid[:, :-1].long(),
                position_ids=pos[:, :-1], use_cache=False, **keep)
    return out.logits[:, -T:]


#: Logits computed at once by :func:`chunked_token_stats`: 2**24 float32 values (64 MiB),
#: e.g. 110 scored tokens of a 151,936-token vocabulary (Qwen2.5), all of a tiny model's.
CHUNK_ELEMENTS = 2 ** 24

#: Config settings of LM heads that do more than one linear map (soft-capping, scaling):
#: such models are scored from their own logits (:func:`completion_logits`).
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def hidden_path_supported(model: Any) -> bool:
    """Whether the model's logits are ``lm_head(base_model(...).last_hidden_state)``, so that
    :func:`completion_hidden` and a chunked head reproduce them: a ``base_model`` distinct
    from the model, an ``nn.Linear`` head, no soft-capping or logit scaling in the config."""
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, key, None) not in (None, 1, 1.0) for key in _HEAD_EXTRAS):
        return False
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return base is not None and base is not model and type(head) is torch.nn.Linear


def completion_hidden(model: Any, ids: torch.Tensor, pos: torch.Tensor,
                      key_valid: torch.Tensor, T: int) -> torch.Tensor:
    """The final hidden states ``(N, T, d)`` (after the final norm: what the LM head reads)
    that score the ``T`` completion tokens of ``ids (N, Lp + T)``, with gradients: the
    model's own base forward without its LM head, so no ``(N, T, V)`` logits exist."""
    out = model.base_model(input_ids=ids[:, :-1], attention_mask=key_valid[:, :-1].long(),
                           position_ids=pos[:, :-1], use_cache=False)
    return out.last_hidden_state[:, -T:]


#: Heads of at least this many weights are applied as ``(W @ h.T).T``
#: (:func:`linear_head`).
LARGE_HEAD = 2 ** 22


class LinearHead:
    """A large LM head ``h -> (W @ h.T).T + b`` (see :func:`linear_head`); in
    :func:`chunked_token_stats` it runs as one fused autograd function
    (:class:`_LinearHeadStats`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        out = (self.weight @ h.t()).t()
        return out + self.bias if self.bias is not None else out


def linear_head(head: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """``head`` as a function ``(S, d) -> (S, V)``. A large head (at least
    :data:`LARGE_HEAD` weights) computes ``(W @ h.T).T`` (:class:`LinearHead`): its weight's
    gradient is then a contiguous ``(V, d)`` product that autograd adds in place to the
    embedding's gradient of a tied model, where ``F.linear``'s transposed one is added out
    of place -- one ``(V, d)`` float32 buffer less at the peak of the backward pass (545 MB
    for Qwen2.5-0.5B). A small head keeps ``F.linear``, bit for bit."""
    if head.weight.numel() < LARGE_HEAD:
        return head
    return LinearHead(head.weight, head.bias)


class _LinearHeadStats(torch.autograd.Function):
    """Log-prob of ``actions`` and entropy of ``softmax(head(h) / temperature)`` for one
    chunk of rows, with a backward written out that recomputes the logits.

    The generic path (``torch.utils.checkpoint`` over :func:`token_stats`) keeps about ten
    ``(C, V)`` float32 tensors alive in its recomputed backward (logits, their contiguous
    copy, log-softmax, its exp, the entropy product, and a gradient for each); this one
    holds two: ``q`` (logits, then log-probs, then their gradient, in place) and ``p``.
    With ``q = log_softmax(z)``, ``p = exp(q)``, ``H = -sum(p q)``:
    ``d logp_a / dz = onehot(a) - p`` and ``dH / dz = -p (q + H)``."""

    @staticmethod
    def forward(ctx, h, actions, weight, bias, temperature, autocast_state):
        ctx.save_for_backward(h, actions, weight, bias)
        ctx.temperature, ctx.autocast_state = temperature, autocast_state
        q, p = _LinearHeadStats.log_softmax(h, weight, bias, temperature, autocast_state)
        logp = q.gather(-1, actions[:, None]).squeeze(-1)
        entropy = -torch.einsum("sv,sv->s", p, q)
        return logp, entropy

    @staticmethod
    def log_softmax(h, weight, bias, temperature, autocast_state):
        device_type, enabled, dtype = autocast_state
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            z = (weight @ h.t()).t()
            if bias is not None:
                z = z + bias
        with torch.no_grad():
            z = z.float().contiguous()
            if temperature != 1.0:
                z.div_(temperature)
            z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))  # q, in place
            return z, z.exp()

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        h, actions, weight, bias = ctx.saved_tensors
        q, p = _LinearHeadStats.log_softmax(h, weight, bias, ctx.temperature,
                                            ctx.autocast_state)
        with torch.no_grad():
            entropy = -torch.einsum("sv,sv->s", p, q)
            g_logp, g_entropy = g_logp.float(), g_entropy.float()
            # dL/dz = g_logp (onehot - p) - g_H p (q + H), built in q's memory
            grad = q.add_(entropy[:, None]).mul_(-g_entropy[:, None])
            grad.sub_(g_logp[:, None]).mul_(p)
            del p
            grad.scatter_add_(-1, actions[:, None], g_logp[:, None])
            if ctx.temperature != 1.0:
                grad.div_(ctx.temperature)
            need_h, _, need_w, need_b = ctx.needs_input_grad[:4]
            grad = grad.to(weight.dtype)
            g_h = (grad @ weight).to(h.dtype) if need_h else None
            g_w = grad.t() @ h.to(grad.dtype) if need_w else None
            g_b = grad.sum(0) if need_b and bias is not None else None
        return g_h, None, g_w, g_b, None, None


def chunked_token_stats(head: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor,
                        actions: torch.Tensor, temperature: float, vocab_size: int,
                        chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_stats` of ``head(h)`` for hidden states ``h (S, d)``, ``C`` rows at a
    time with ``C * vocab_size <= chunk_elements`` (default :data:`CHUNK_ELEMENTS`): the
    ``(S, V)`` float32 logits, the peak of a step with a 150k vocabulary, never exist at
    once. Under autograd each chunk is recomputed in the backward pass
    (``torch.utils.checkpoint``) instead of keeping its logits. A batch that fits in one
    chunk (every tiny model's) is computed exactly as ``token_stats(head(h), ...)``."""
    limit = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    rows = max(1, limit // max(1, vocab_size))
    S = h.shape[0]
    if S <= rows:
        return token_stats(head(h), actions, temperature)

    if isinstance(head, LinearHead):
        device_type = h.device.type
        state = (device_type, torch.is_autocast_enabled(device_type),
                 torch.get_autocast_dtype(device_type))
        parts = [_LinearHeadStats.apply(h[i:i + rows], actions[i:i + rows], head.weight,
                                        head.bias, temperature, state)
                 for i in range(0, S, rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def stats(hc: torch.Tensor, ac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return token_stats(head(hc), ac, temperature)

    recompute = torch.is_grad_enabled()
    parts = [checkpoint(stats, h[i:i + rows], actions[i:i + rows], use_reentrant=False)
             if recompute else stats(h[i:i + rows], actions[i:i + rows])
             for i in range(0, S, rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def trim_to_mask(rollout: Rollout, mask: torch.Tensor) -> Rollout:
    """The rollout without its completion columns after the last masked token of every
    row (at least one column, so that even an empty result is attached to the parameters)."""
    T = rollout.actions.shape[1]
    cols = torch.arange(T, device=mask.device)
    Te = max(1, int(torch.where(mask, cols, -1).max()) + 1) if mask.numel() else 1
    Lp = int(rollout.extra["prompt_length"])
    return Rollout(prompts=rollout.prompts, actions=rollout.actions[:, :Te],
                   mask=mask[:, :Te], logp=rollout.logp[:, :Te],
                   group_size=rollout.group_size,
                   extra={**rollout.extra, "input_ids": rollout.extra["input_ids"][:, :Lp + Te]})


def token_stats(logits: torch.Tensor, actions: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits (S, V)`` -> log-prob of ``actions (S,)`` and entropy, float32 ``(S,)``."""
    logits = logits.float()
    if temperature != 1.0:  # x / 1.0 == x: skipping it changes no bit
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def scatter_masked(mask: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """Each ``(S,)`` value of the masked cells (row-major) back into an ``(N, T)`` grid on
    ``mask``'s device, 0 elsewhere. The copies are differentiable, so gradients reach a GPU
    model from the rollout's device (the CPU, next to rewards and advantages)."""
    N, T = mask.shape
    out = mask.device
    flat = mask.reshape(-1).nonzero().squeeze(1)
    zeros = torch.zeros(N * T, dtype=torch.float32, device=out)
    return [zeros.index_copy(0, flat, v.to(out)).view(N, T) for v in values]
