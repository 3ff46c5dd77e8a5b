"""Scoring a rollout on the fast engine: only what the masked tokens depend on.

Each group's shared prompt runs once; the completion tokens that are inputs of a scored
token run packed (no padding rows through the projections and the MLP); the LM head runs
on the scored positions alone. The plain version (every position of every row through the
model's own forward) is :func:`rlnb.policies.lm.scoring.completion_logits`, the oracle
these are tested against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rlnb.policies.lm.fast.attention import attend, attention_bias, completion_bias, row_keys
from rlnb.policies.lm.fast.forward import Forward
from rlnb.policies.lm.layout import positions


def scored_logits(fwd: Forward, rollout: Any, mask: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(S, V)`` that predict the masked tokens of ``rollout`` (row-major) and those
    tokens ``(S,)``, with gradients, through :func:`packed_hidden`."""
    h, actions = scored_hidden(fwd, rollout, mask, device)
    return fwd.final(h), actions


def scored_hidden(fwd: Forward, rollout: Any, mask: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's output ``(S, d)`` (before the final norm; ``fwd.final`` maps it to
    logits) at the positions that predict the masked tokens of ``rollout`` (row-major),
    and those tokens ``(S,)``, with gradients, through :func:`packed_hidden`."""
    # Index bookkeeping on the CPU (where rollouts live), one copy each to the device.
    ids = rollout.extra["input_ids"].cpu()  # (N, Lp + T)
    Lp = int(rollout.extra["prompt_length"])
    actions = rollout.actions.cpu()
    N, T = actions.shape
    mask = mask.cpu()
    prompt_ids = ids[:, :Lp]
    prompt_mask = rollout.extra["attention_mask"][:, :Lp].cpu()
    n = rollout.group_size
    shared = n > 1 and N % n == 0 and torch.equal(
        prompt_ids.reshape(N // n, n, Lp), prompt_ids[::n, None].expand(N // n, n, Lp))
    if shared:
        prompt_ids, prompt_mask = prompt_ids[::n], prompt_mask[::n]
    else:
        n = 1
    G = N // n
    # Completion token t (t >= 1) is predicted from completion input t - 1: row r needs
    # its inputs 0 .. last_r - 1, last_r its last masked column; token 0 is predicted
    # from the prompt's last position.
    cols = torch.arange(T)
    need = torch.where(mask, cols, -1).amax(1).clamp_(min=0) if T else cols[:0]  # (N,)
    Tc = int(need.max()) if need.numel() else 0
    grid = cols[:Tc][None, :] < need[:, None]  # (N, Tc): packed cells
    slots = grid.reshape(-1).nonzero().squeeze(1)  # (M,)
    comp_ids = ids[:, Lp:Lp + Tc].reshape(-1)[slots]
    comp_pos = (prompt_mask.sum(1).repeat_interleave(n)[:, None] + cols[:Tc]).reshape(-1)[slots]
    # Source of each scored (row, t): the prompt (t == 0) or packed input t - 1.
    start = need.cumsum(0) - need  # (N,) first packed index of each row
    r, t = mask.nonzero(as_tuple=True)
    src = torch.where(t == 0, r // n, G + start[r] + t - 1)
    dev = device
    h = packed_hidden(fwd, prompt_ids.to(dev), prompt_mask.to(dev), n, comp_ids.to(dev),
                      comp_pos.to(dev), slots.to(dev), Tc, src.to(dev))  # (S, d)
    return h, actions[r, t].to(dev)


def completion_logits(fwd: Forward, ids: torch.Tensor, pos: torch.Tensor,
                      key_valid: torch.Tensor, Lp: int, n: int) -> torch.Tensor:
    """Logits ``(N, T, V)`` that score every completion token of ``ids (N, Lp + T)`` (the
    fast engine's :meth:`LMPolicy.completion_logits`): each group's shared prompt once,
    the completions attending to it; the whole rows where the prompts are not shared."""
    N, T = ids.shape[0], ids.shape[1] - Lp
    shared = n > 1 and N % n == 0 and torch.equal(
        ids[:, :Lp].view(N // n, n, Lp), ids[::n, None, :Lp].expand(N // n, n, Lp))
    if not shared:
        h, _ = fwd.forward(ids[:, :-1], pos[:, :-1], key_valid[:, :-1])
        return fwd.final(h[:, Lp - 1:])
    # The prompt once per group (P rows), the completions (N rows) attending to it.
    P = N // n
    hp, kvs = fwd.forward(ids[::n, :Lp], pos[::n, :Lp], key_valid[::n, :Lp], return_kv=True)
    h_last = hp[:, -1:].repeat_interleave(n, 0)  # (N, 1, d) predicts token 0
    if T == 1:
        return fwd.final(h_last)
    past = [(k[:, None].expand(P, n, *k.shape[1:]).reshape(N, *k.shape[1:]),
             v[:, None].expand(P, n, *v.shape[1:]).reshape(N, *v.shape[1:])) for k, v in kvs]
    hc, _ = fwd.forward(ids[:, Lp:-1], pos[:, Lp:-1], key_valid[:, :-1], past)
    return fwd.final(torch.cat([h_last, hc], 1))  # (N, T, V)


def packed_hidden(
    fwd: Forward,
    prompt_ids: torch.Tensor,
    prompt_valid: torch.Tensor,
    n: int,
    comp_ids: torch.Tensor,
    comp_pos: torch.Tensor,
    slots: torch.Tensor,
    num_cols: int,
    src: torch.Tensor,
) -> torch.Tensor:
    """Hidden states ``(S, d)`` (before the final norm) that predict ``S`` scored
    completion tokens, with gradients, computing only what they depend on.

    * ``prompt_ids (G, Lp)`` (left-padded; ``prompt_valid`` its mask) run once each;
      completion rows ``g*n .. g*n+n-1`` (``R = G * n`` rows) continue prompt ``g`` and
      attend to its keys and values (expanded to the rows, with gradients).
    * ``comp_ids, comp_pos (M,)``: the completion tokens that are inputs of a scored
      token, packed row after row; ``slots (M,)`` their cells in the ``(R, num_cols)``
      grid (row ``r`` holds a prefix of its completion, columns ``0 .. c_r - 1``).
    * ``src (S,)`` picks, from ``[last prompt position of each prompt (G) ; the M
      packed tokens]``, the state that predicts each scored token.

    The ``G * Lp + M`` prompt and completion tokens go through every position-wise
    step (norms, projections, RoPE, MLP) together, packed; attention runs on the
    ``(G, Lp)`` prompt grid and on the ``(R, num_cols)`` completion grid (padding cells
    are computed and dropped: causality keeps them out of the real cells). The last
    layer runs its MLP on the ``G + M`` rows that predict something.
    """
    G, Lp = prompt_ids.shape
    R, Tc, M = G * n, num_cols, comp_ids.shape[0]
    Np = G * Lp
    H, KV, hd = fwd.H, fwd.KV, fwd.hd
    W = H + 2 * KV  # heads of the fused projection
    dev = prompt_ids.device
    prompt_valid = prompt_valid.bool()
    pos = torch.cat([positions(prompt_valid).reshape(-1), comp_pos])  # (Np + M,)
    h = fwd.embed_ids(torch.cat([prompt_ids.reshape(-1), comp_ids]), pos)  # (Np + M, d)
    rope = fwd.rope_qkv(pos)
    bias_p = attention_bias(prompt_valid, Lp, h.dtype)  # (G, 1, Lp, Lp)
    if Tc:  # completion keys: [the prompt's (Lp) ; the row's own completion (Tc), causal]
        bias_c = completion_bias(prompt_valid, n, Tc, h.dtype)
    last = len(fwd.layers) - 1
    for i, p in enumerate(fwd.layers):
        qkv = F.linear(fwd.apply_norm(h, p["ln1"]), p["w_qkv"], p["b_qkv"]).unflatten(-1, (W, hd))
        if rope is not None:
            qkv = fwd.rotate(qkv, rope)  # (Np + M, W, hd)
        qp, kp, vp = qkv[:Np].view(G, Lp, W, hd).split([H, KV, KV], dim=2)
        kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)  # (G, KV, Lp, hd)
        if i == last:  # the prompt's last position is the only one still needed
            attn = [attend(qp[:, -1:], kp, vp, bias_p[:, :, -1:]).view(G, H * hd)]
        else:
            attn = [attend(qp, kp, vp, bias_p).view(Np, H * hd)]
        if Tc:
            grid = qkv.new_zeros((R * Tc, W, hd)).index_copy(0, slots, qkv[Np:])
            qc, kc, vc = grid.view(R, Tc, W, hd).split([H, KV, KV], dim=2)
            out = attend(qc, row_keys(kp, kc, n), row_keys(vp, vc, n),
                          bias_c).view(R * Tc, H * hd)
            attn.append(out.index_select(0, slots))  # (M, H * hd)
        if i == last:
            rows = torch.cat([torch.arange(Lp - 1, Np, Lp, device=dev),
                              torch.arange(Np, Np + M, device=dev)])
            h = h.index_select(0, rows)  # (G + M, d)
        h = fwd.post(i, h, torch.cat(attn) if len(attn) > 1 else attn[0])
    return h.index_select(0, src)
