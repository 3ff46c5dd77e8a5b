"""Attention as the fast engine computes it: additive masks and grouped-query attention.

Queries arrive pre-scaled (the ``1 / sqrt(hd)`` is folded into the q projection). Masks
are additive biases, 0 or -inf. On the CPU, tiny models attend with plain matmuls that
never copy the keys and values per query head; elsewhere through PyTorch's fused kernel
(:func:`attend_sdpa`). The replayed backward (:mod:`rlnb.policies.lm.fast.replay`)
differentiates :func:`attend` by hand, through :func:`grouped_probs`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_bias(key_valid: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias ``(B, 1, Lq, Lk)`` (0 or -inf) for queries at the last
    ``q_len`` of ``Lk`` positions: a query sees the valid keys at or before itself, and
    always itself (so a query at a left-padding position never sees an all-masked row,
    whose softmax is NaN and would leak into the real rows through the values)."""
    B, Lk = key_valid.shape
    device = key_valid.device
    q_idx = torch.arange(Lk - q_len, Lk, device=device)[:, None]  # (Lq, 1)
    k_idx = torch.arange(Lk, device=device)[None, :]  # (1, Lk)
    allowed = ((k_idx <= q_idx) & key_valid[:, None, :]) | (k_idx == q_idx)  # (B, Lq, Lk)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill_(~allowed, float("-inf"))[:, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention with pre-scaled queries. q ``(B, Lq, H, hd)``; k, v
    ``(B, KV, Lk, hd)``; bias ``(B, 1, Lq, Lk)`` -> ``(B, Lq, H * hd)``. Query head ``h``
    reads KV head ``h // (H // KV)`` (Hugging Face's ``repeat_kv``). On the CPU, for tiny
    models, plain matmuls without copying K and V; elsewhere PyTorch's fused kernel
    (:func:`attend_sdpa`), which never holds the whole score matrix."""
    if q.device.type != "cpu":
        return attend_sdpa(q, k, v, bias)
    B, Lq, H, hd = q.shape
    KV = k.shape[1]
    _, probs = grouped_probs(q, k, bias)
    out = torch.matmul(probs, v)  # (B, KV, rep*Lq, hd)
    return out.view(B, KV, H // KV, Lq, hd).permute(0, 3, 1, 2, 4).reshape(B, Lq, H * hd)


def grouped_probs(q: torch.Tensor, k: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first half of :func:`attend` on the CPU: the queries grouped by the KV head
    they read, ``(B, KV, rep * Lq, hd)``, and the attention probabilities
    ``(B, KV, rep * Lq, Lk)``. The backward pass of :mod:`rlnb.policies.lm.fast.replay`
    recomputes them with it."""
    B, Lq, H, hd = q.shape
    KV, Lk = k.shape[1], k.shape[2]
    rep = H // KV
    qg = q.reshape(B, Lq, KV, rep, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, rep * Lq, hd)
    scores = torch.matmul(qg, k.transpose(-1, -2))  # (B, KV, rep*Lq, Lk)
    scores = scores.view(B, KV, rep, Lq, Lk) + bias[:, :, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return qg, probs.view(B, KV, rep * Lq, Lk)


def completion_bias(prompt_valid: torch.Tensor, n: int, Tc: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias ``(G * n, 1, Tc, Lp + Tc)`` (0 or -inf) of the completion
    grid: row ``g * n + j``'s query at column ``t`` sees the valid keys of its prompt
    ``g`` (``prompt_valid (G, Lp)``), then its own completion keys up to ``t``."""
    G, Lp = prompt_valid.shape
    t = torch.arange(Tc, device=prompt_valid.device)
    key_ok = torch.cat([prompt_valid[:, None, None].expand(G, n, Tc, Lp),
                        (t[None, :] <= t[:, None]).expand(G, n, Tc, Tc)], dim=3)
    bias = torch.zeros(key_ok.shape, dtype=dtype, device=prompt_valid.device)
    return bias.masked_fill_(~key_ok, float("-inf")).view(G * n, 1, Tc, Lp + Tc)


def prompt_start(valid: torch.Tensor) -> torch.Tensor | None:
    """The first valid key of each left-padded prompt ``valid (G, Lp)``, ``(G,)``, so that
    its keys are the range ``start .. Lp - 1``; None where a mask is not of that form
    (the native kernels read key ranges, not masks)."""
    if not bool((valid[:, 1:] >= valid[:, :-1]).all()):
        return None
    return valid.shape[1] - valid.sum(1)


def row_keys(kp: torch.Tensor, kc: torch.Tensor, n: int) -> torch.Tensor:
    """The keys (or values) each completion row attends to, ``(G * n, KV, Lp + Tc, hd)``:
    its prompt's ``kp (G, KV, Lp, hd)`` (one copy per row, made inside the cat), then its
    own ``kc (G * n, Tc, KV, hd)``."""
    G, KV, Lp, hd = kp.shape
    return torch.cat([kp[:, None].expand(G, n, KV, Lp, hd),
                      kc.transpose(1, 2).unflatten(0, (G, n))], dim=3).flatten(0, 1)


def attend_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                 fused: bool | None = None) -> torch.Tensor:
    """:func:`attend` for one query per row (a decoding step). q ``(B, H, hd)``
    (pre-scaled); k, v ``(B, KV, L, hd)`` (a slice of the cache); bias ``(B * KV, 1, L)``
    -> ``(B, H * hd)``. ``fused`` (default: off the CPU) uses PyTorch's fused kernel;
    otherwise two batched matmuls, the bias added inside the first."""
    B, H, hd = q.shape
    KV, L = k.shape[1], k.shape[2]
    if fused if fused is not None else q.device.type != "cpu":
        return attend_sdpa(q[:, None], k, v, bias.view(B, KV, 1, L)[:, :1])[:, 0]
    s = torch.baddbmm(bias, q.reshape(B * KV, H // KV, hd),
                      k.reshape(B * KV, L, hd).transpose(1, 2))  # (B * KV, rep, L)
    probs = torch.softmax(s, dim=-1, dtype=torch.float32).to(s.dtype)
    return torch.bmm(probs, v.reshape(B * KV, L, hd)).view(B, H * hd)


def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """:func:`attend` through ``F.scaled_dot_product_attention`` (same arguments)."""
    B, Lq, H, hd = q.shape
    rep = H // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=bias, scale=1.0)
    return out.transpose(1, 2).reshape(B, Lq, H * hd)
