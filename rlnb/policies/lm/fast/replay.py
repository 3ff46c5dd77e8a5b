"""Re-using the sampler's activations for the update that follows it (fast engine, Llama).

In on-policy training with one update per batch (GRPO, RLOO, REINFORCE, ...:
``num_iterations=1``), the weights that score the sampled tokens are the weights that
sampled them, so the scoring forward pass recomputes exactly what the sampler already
computed, token by token. A :class:`Tape` keeps those activations (references to tensors
the sampler made anyway: nothing is copied while sampling), and :func:`replay` turns them
into the hidden states that predict the scored tokens, with a hand-written backward pass
through every decoder layer and the embedding, so that the update runs no forward pass of
its own. The final norm, the LM head, the log-softmax and the loss stay ordinary autograd.

The backward pass is the one of :meth:`rlnb.policies.lm.fast.score.packed_hidden` (tested against it and
against the model's own forward): prompt positions and completion tokens go through the
position-wise steps together, packed; attention runs on the ``(G, Lp)`` prompt grid and on
the ``(R, J)`` completion grid (``J`` decoding steps), whose keys are the group's prompt
keys then the row's own completion keys. Supported: Llama-family models (RMSNorm, RoPE, grouped-query attention,
SiLU-gated MLP, optional projection biases, tied or untied embeddings) in float32; other
models and dtypes score with the forward pass as before.

A tape is valid for one update only: :meth:`rlnb.policies.LMPolicy.log_probs` checks that the parameters
are the very tensors the sampler read and that none was modified in place since (their
version counters), and the trainer drops the tape after its first update; anything else
scores with the forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rlnb.policies.lm.fast.attention import (
    attention_bias,
    completion_bias,
    grouped_probs,
    prompt_start,
    row_keys,
)
from rlnb.policies.lm.fast.forward import LLAMA_LIKE, activation
from rlnb.policies.lm.fast.rmsnorm import norm_backward, norm_forward
from rlnb.threads import current_matmul_threads, torch_threads


class Tape:
    """What one sampling call computed, per layer, for the update that follows.

    ``prompt[i]``: the prompt pass of layer ``i``: ``[h_in (G, Lp, d), q (G, Lp, H, hd),
    k (G, KV, Lp, hd), v (G, KV, Lp, hd), attn (G, L', H*hd), h_mid (G, L', d),
    gu (G, L', 2I)]`` with ``L' = Lp``, or 1 at the last layer (only the last position
    goes on). ``steps[j]``: decoding iteration ``j`` (completion token ``j`` as input):
    per layer ``[h_in (B, d), q (B, H, hd), k (B, KV, hd), v (B, KV, hd), attn (B, H*hd),
    h_mid (B, d), gu (B, 2I)]``, plus its tokens, rope rows and output ``(B, d)``.
    ``rows[j]``: which of the ``N`` rows iteration ``j`` computed. ``fast``: the engine
    (:class:`rlnb.policies.lm.fast.forward.Forward`) whose decoder filled it."""

    def __init__(self, params: list[torch.Tensor], temperature: float) -> None:
        self.fast: Any = None
        self.params = params
        self.temperature = float(temperature)
        self.versions = [p._version for p in params]
        self.prompt: list[list[torch.Tensor]] = []
        self.prompt_rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self.prompt_ids: torch.Tensor | None = None
        self.prompt_valid: torch.Tensor | None = None
        self.prompt_out: torch.Tensor | None = None  # (G, d)
        self.n = 1
        self.steps: list[list[list[torch.Tensor]]] = []
        self.step_tokens: list[torch.Tensor] = []
        self.step_rope: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.step_out: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []
        self.cells: tuple[torch.Tensor, int] | None = None  # cell_index, once computed

    def valid_for(self, params: list[torch.Tensor], temperature: float) -> bool:
        """Whether the weights and temperature are still those the sampler used."""
        return (float(temperature) == self.temperature and len(params) == len(self.params)
                and all(p is q and p._version == v
                        for p, q, v in zip(params, self.params, self.versions)))


def supported(model: Any) -> bool:
    """Whether :func:`replay` implements ``model`` (a Hugging Face causal LM the fast
    engine runs): a Llama-family model with SiLU-gated MLPs, in float32."""
    if getattr(model.config, "model_type", None) not in LLAMA_LIKE:
        return False
    if model.get_input_embeddings().weight.dtype != torch.float32:
        return False
    return all(activation(layer.mlp.act_fn) is F.silu for layer in model.model.layers)


def replay(tape: Tape, src: torch.Tensor) -> torch.Tensor:
    """Hidden states ``(S, d)`` (before the final norm) at the sources ``src (S,)`` (indices
    into ``[prompt last positions (G) ; completion cells in tape order (C)]``), attached
    to the trunk's parameters through the hand-written backward pass."""
    return _Replay.apply(tape, src, *tape.params)


def cell_index(tape: Tape) -> tuple[torch.Tensor, int]:
    """``(N, J)`` map from (row, decoding iteration) to the cell's index in tape order
    (-1 where the row was not computed; ``N`` rows: ``n`` per prompt), and ``J``. Computed
    once per tape (the scoring call and the backward pass both need it)."""
    if tape.cells is None:
        J = len(tape.rows)
        index = torch.full((tape.n * tape.prompt_ids.shape[0], max(J, 1)), -1, dtype=torch.long)
        if J:
            rows = torch.cat(tape.rows).cpu()
            cols = torch.cat([torch.full((len(r),), j, dtype=torch.long)
                              for j, r in enumerate(tape.rows)])
            index[rows, cols] = torch.arange(len(rows))
        tape.cells = (index, J)
    return tape.cells


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tape: Tape, src: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.tape, ctx.src = tape, src
        outs = [tape.prompt_out] + tape.step_out
        return torch.cat(outs).index_select(0, src)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        tape = ctx.tape
        grads = _backward(tape, ctx.src, grad)
        return (None, None, *[grads.get(id(p)) for p in tape.params])


def _unrope(d: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    """Backward of ``Forward.rotate`` (``x cos + roll(x, half) sin``, signed sin)."""
    return d * cos + (d * sin).roll(half, -1)


def attend_backward(q, k, v, bias, dout):
    """Backward of ``attend`` (pre-scaled queries): q ``(B, Lq, H, hd)``, k, v
    ``(B, KV, Lk, hd)``, bias ``(B, 1, Lq, Lk)``, dout ``(B, Lq, H*hd)`` -> dq
    ``(B, Lq, H, hd)``, dk, dv ``(B, KV, Lk, hd)``."""
    B, Lq, H, hd = q.shape
    KV = k.shape[1]
    rep = H // KV
    qg, p = grouped_probs(q, k, bias)
    dog = dout.reshape(B, Lq, KV, rep, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, rep * Lq, hd)
    dv = torch.matmul(p.transpose(-1, -2), dog)
    ds = torch.ops.aten._softmax_backward_data(torch.matmul(dog, v.transpose(-1, -2)), p, -1,
                                               p.dtype)
    dq = torch.matmul(ds, k).view(B, KV, rep, Lq, hd).permute(0, 3, 1, 2, 4).reshape(B, Lq, H, hd)
    dk = torch.matmul(ds.transpose(-1, -2), qg)
    return dq, dk, dv


def _add(grads: dict[int, torch.Tensor], p: torch.Tensor | None, g: torch.Tensor) -> None:
    if p is None:
        return
    key = id(p)
    grads[key] = g if key not in grads else grads[key] + g


_MM_MIN_WORK = 1 << 20  # multiply-adds below which a product runs on torch's current count


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; one of ``_MM_MIN_WORK`` multiply-adds or more on the configured thread
    count (:func:`rlnb.threads.matmul_threads`), the rest on torch's current count."""
    if a.shape[0] * a.shape[1] * b.shape[1] < _MM_MIN_WORK:
        return a @ b
    with torch_threads(current_matmul_threads()):
        return a @ b


def _every_prompt_position(x: torch.Tensor, G: int, Lp: int) -> torch.Tensor:
    """Rows ``[prompt last positions (G) ; cells]`` -> ``[every prompt position (G * Lp),
    0 but at the last ; cells]``."""
    full = x.new_zeros((G, Lp, x.shape[1]))
    full[:, -1] = x[:G]
    return torch.cat([full.view(G * Lp, -1), x[G:]])


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def _backward(tape: Tape, src: torch.Tensor, grad: torch.Tensor) -> dict[int, torch.Tensor]:
    """Gradients (by parameter id) of ``sum(grad * replay(tape, src))``."""
    f = tape.fast
    G, Lp = tape.prompt_ids.shape
    n, H, KV, hd, d = tape.n, f.H, f.KV, f.hd, f.d
    W, HK = H + 2 * KV, H + KV
    half = hd // 2
    dev, dt = grad.device, grad.dtype
    J = len(tape.steps)
    C = sum(len(r) for r in tape.rows)
    R, Np = G * n, G * Lp
    num_layers = len(f.layers)
    inner = f.model.model
    grads: dict[int, torch.Tensor] = {}

    # Completion cells, in tape order (iteration after iteration). Their attention's keys
    # are the group's prompt, then the row's own completion up to the query (causal): the
    # native kernel reads them cell by cell, else attention runs on the (R, J) grid.
    native = f.native if C else None
    if C:
        cos_c = _cat([c for c, _ in tape.step_rope])  # (C, 1, hd)
        sin_c = _cat([s for _, s in tape.step_rope])
        if native is not None:
            pstart = prompt_start(tape.prompt_valid)  # (G,) keys form one range, or None
            native = native if pstart is not None else None
        if native is None:
            slots = torch.cat([r * J + j for j, r in enumerate(tape.rows)])  # grid cells
            bias_c = completion_bias(tape.prompt_valid, n, J, dt)
    cos_p, sin_p = tape.prompt_rope  # (G, Lp, 1, hd)
    bias_p = attention_bias(tape.prompt_valid, Lp, dt)  # (G, 1, Lp, Lp)

    # Gradient at the last layer's output: [prompt last positions (G) ; cells (C)].
    dH = torch.zeros((G + C, d), dtype=dt, device=dev).index_add_(0, src, grad)
    for i in reversed(range(num_layers)):
        p, lay = f.layers[i], inner.layers[i]
        attn_mod, mlp = lay.self_attn, lay.mlp
        pr = tape.prompt[i]
        steps = [s[i] for s in tape.steps]
        last = i == num_layers - 1

        # --- MLP and output projection, on the rows that go on: every prompt position,
        # or at the last layer only the prompt's last one.
        Lq = 1 if last else Lp
        h_mid = _cat([pr[5].reshape(G * Lq, d)] + [s[5] for s in steps])
        gu = _cat([pr[6].reshape(G * Lq, -1)] + [s[6] for s in steps])
        attn = _cat([pr[4].reshape(G * Lq, H * hd)] + [s[4] for s in steps])
        inter = gu.shape[1] // 2
        gate, up = gu[:, :inter], gu[:, inter:]
        silu = F.silu(gate)
        _add(grads, mlp.down_proj.weight, _mm(dH.t(), silu * up))
        _add(grads, mlp.down_proj.bias, dH.sum(0))
        da = _mm(dH, p["w_down"])
        dgu = torch.empty_like(gu)
        torch.ops.aten.silu_backward.grad_input(da * up, gate, grad_input=dgu[:, :inter])
        torch.mul(da, silu, out=dgu[:, inter:])
        ln2 = lay.post_attention_layernorm
        y2, state2 = norm_forward(f.native, h_mid, ln2)
        dWgu = _mm(y2.t(), dgu).t()
        _add(grads, mlp.gate_proj.weight, dWgu[:inter])
        _add(grads, mlp.up_proj.weight, dWgu[inter:])
        if mlp.gate_proj.bias is not None:
            dbgu = dgu.sum(0)
            _add(grads, mlp.gate_proj.bias, dbgu[:inter])
            _add(grads, mlp.up_proj.bias, dbgu[inter:])
        dmid, dw2 = norm_backward(f.native, _mm(dgu, p["w_gu"]), h_mid, state2, ln2, dH)
        _add(grads, ln2.weight, dw2)  # dmid: the gradient at h_mid
        _add(grads, attn_mod.o_proj.weight, _mm(attn.t(), dmid).t())
        _add(grads, attn_mod.o_proj.bias, dmid.sum(0))
        dattn = _mm(dmid, p["w_o"])  # (G * Lq + C, H * hd)
        if last:  # back to every prompt position (the others had no gradient)
            dmid, dattn = _every_prompt_position(dmid, G, Lp), _every_prompt_position(dattn, G, Lp)

        # --- attention: the prompt grid, then the completion grid.
        dq_p, dk_p, dv_p = attend_backward(pr[1], pr[2], pr[3], bias_p,
                                            dattn[:Np].view(G, Lp, H * hd))
        d_qkv = torch.empty((Np + C, W, hd), dtype=dt, device=dev)
        if C:  # the cells' q (C, H, hd), k and v (C, KV, hd)
            q_c, k_c, v_c = (_cat([s[j] for s in steps]) for j in (1, 2, 3))
        if native is not None:
            dkp, dvp = native.attend_cells_backward(
                q_c, k_c, v_c, pr[2], pr[3], dattn[Np:], cos_c, sin_c, cell_index(tape)[0],
                pstart, d_qkv[Np:], n)
            dk_p, dv_p = dk_p + dkp, dv_p + dvp
        elif C:
            grid = torch.zeros((R * J, W, hd), dtype=dt, device=dev)
            grid[:, :H].index_copy_(0, slots, q_c)
            grid[:, H:HK].index_copy_(0, slots, k_c)
            grid[:, HK:].index_copy_(0, slots, v_c)
            qc, kc, vc = grid.view(R, J, W, hd).split([H, KV, KV], dim=2)
            k, v = row_keys(pr[2], kc, n), row_keys(pr[3], vc, n)
            dout = torch.zeros((R * J, H * hd), dtype=dt, device=dev).index_copy_(
                0, slots, dattn[Np:])
            dq_c, dk, dv = attend_backward(qc, k, v, bias_c, dout.view(R, J, H * hd))
            dk, dv = dk.view(G, n, KV, Lp + J, hd), dv.view(G, n, KV, Lp + J, hd)
            dk_p = dk_p + dk[:, :, :, :Lp].sum(1)
            dv_p = dv_p + dv[:, :, :, :Lp].sum(1)
            dgrid = torch.cat([dq_c, dk[:, :, :, Lp:].transpose(2, 3).reshape(R, J, KV, hd),
                               dv[:, :, :, Lp:].transpose(2, 3).reshape(R, J, KV, hd)], dim=2)
            dcell = dgrid.view(R * J, W, hd).index_select(0, slots)  # (C, W, hd)
            d_qkv[Np:, :HK] = _unrope(dcell[:, :HK], cos_c, sin_c, half)
            d_qkv[Np:, HK:] = dcell[:, HK:]
        dqk_p = torch.cat([dq_p, dk_p.transpose(1, 2)], dim=2)  # (G, Lp, H + KV, hd)
        d_qkv[:Np, :HK] = _unrope(dqk_p, cos_p, sin_p, half).view(Np, HK, hd)
        d_qkv[:Np, HK:] = dv_p.transpose(1, 2).reshape(Np, KV, hd)
        d_qkv = d_qkv.view(Np + C, W * hd)

        # --- the fused q|k|v projection (q pre-scaled) and the input norm.
        h_in = _cat([pr[0].reshape(Np, d)] + [s[0] for s in steps])
        ln1 = lay.input_layernorm
        y1, state1 = norm_forward(f.native, h_in, ln1)
        dWqkv = _mm(y1.t(), d_qkv).t()
        s = attn_mod.scaling
        nq, nk = H * hd, KV * hd
        _add(grads, attn_mod.q_proj.weight, dWqkv[:nq] * s)
        _add(grads, attn_mod.k_proj.weight, dWqkv[nq:nq + nk])
        _add(grads, attn_mod.v_proj.weight, dWqkv[nq + nk:])
        if attn_mod.q_proj.bias is not None:
            db = d_qkv.sum(0)
            _add(grads, attn_mod.q_proj.bias, db[:nq] * s)
            _add(grads, attn_mod.k_proj.bias, db[nq:nq + nk])
            _add(grads, attn_mod.v_proj.bias, db[nq + nk:])
        dH, dw1 = norm_backward(f.native, _mm(d_qkv, p["w_qkv"]), h_in, state1, ln1, dmid)
        _add(grads, ln1.weight, dw1)

    # --- the embedding (the padding row gets no gradient, as nn.Embedding's).
    ids = torch.cat([tape.prompt_ids.reshape(-1)] + tape.step_tokens)
    dE = torch.zeros_like(f.embed).index_add_(0, ids, dH)
    if f.padding_idx is not None:
        dE[f.padding_idx] = 0
    _add(grads, f.embed, dE)
    return grads
