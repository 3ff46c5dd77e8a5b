"""The forward pass of Llama-family and GPT-2 models, written with plain tensor operations on
the model's own parameters: the fast engine's whole forward (:meth:`Forward.forward`) and
its incremental decoder with a pre-allocated KV cache (:meth:`Forward.decoder`).

Its reference is the model's own ``forward`` (``engine="hf"``), which it is tested against;
:func:`fast_engine_support` says which models it runs. Scoring a rollout packed, with only
the positions the mask needs, is :mod:`rlnb.policies.lm.fast.score`; the replayed backward
is :mod:`rlnb.policies.lm.fast.replay`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from rlnb.policies.lm.fast import native
from rlnb.policies.lm.fast.attention import attend, attend_step, attention_bias, prompt_start
from rlnb.policies.lm.fast.rmsnorm import UnitRMS
from rlnb.policies.lm.layout import positions

LLAMA_LIKE = ("llama", "qwen2", "mistral")
GPT2_LIKE = ("gpt2",)


def fast_engine_support(model: Any) -> str | None:
    """Why the fast engine cannot run ``model`` (a message), or None when it can."""
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if mt in LLAMA_LIKE:
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers"):
            return f"{type(model).__name__} does not have the Llama module layout"
        for layer in inner.layers:
            if getattr(layer.self_attn, "sliding_window", None) is not None:
                return "sliding-window attention is not implemented in the fast engine"
        if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
            return "logit soft-capping is not implemented in the fast engine"
        return None
    if mt in GPT2_LIKE:
        if getattr(cfg, "add_cross_attention", False):
            return "GPT-2 with cross-attention is not supported by the fast engine"
        return None
    return (f"model_type {mt!r} is not one of the fast engine's architectures "
            f"{LLAMA_LIKE + GPT2_LIKE}")


def activation(module: Any) -> Any:
    """An MLP's activation module as a function: ``F.silu`` or tanh-approximated GELU for
    the modules that compute them, else the module itself."""
    name = type(module).__name__
    if name in ("SiLUActivation", "SiLU"):
        return F.silu
    if name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUPytorchTanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return module


class Forward:
    """The forward pass of a supported model written with plain tensor ops on the model's
    own parameters (gradients flow to them). Built once per rollout or scoring call: the
    fused weights (q|k|v with the attention scale folded into q, and gate|up) are
    differentiable functions of the current parameters."""

    def __init__(self, model: Any, rope_cache: dict | None = None) -> None:
        cfg = model.config
        self.model = model
        self.kind = "gpt2" if cfg.model_type in GPT2_LIKE else "llama"
        self.d = cfg.hidden_size
        self.layers: list[dict[str, Any]] = []
        if self.kind == "llama":
            inner = model.model
            self.embed = inner.embed_tokens.weight
            # As nn.Embedding: the padding row gets no gradient (even where it is sampled).
            self.padding_idx = inner.embed_tokens.padding_idx
            for layer in inner.layers:
                a, m = layer.self_attn, layer.mlp
                s = a.scaling
                w_qkv = torch.cat([a.q_proj.weight * s, a.k_proj.weight, a.v_proj.weight], 0)
                b_qkv = None
                if a.q_proj.bias is not None:
                    b_qkv = torch.cat([a.q_proj.bias * s, a.k_proj.bias, a.v_proj.bias], 0)
                self.layers.append({
                    "ln1": layer.input_layernorm, "ln2": layer.post_attention_layernorm,
                    "w_qkv": w_qkv, "b_qkv": b_qkv,
                    "w_o": a.o_proj.weight, "b_o": a.o_proj.bias,
                    "w_gu": torch.cat([m.gate_proj.weight, m.up_proj.weight], 0),
                    "b_gu": (torch.cat([m.gate_proj.bias, m.up_proj.bias], 0)
                             if m.gate_proj.bias is not None else None),
                    "w_down": m.down_proj.weight, "b_down": m.down_proj.bias,
                    "act": activation(m.act_fn),
                })
            self.hd = inner.layers[0].self_attn.head_dim
            self.H = cfg.num_attention_heads
            self.KV = cfg.num_key_value_heads
            self.norm = inner.norm
            self.rotary = inner.rotary_emb
        else:
            tr = model.transformer
            self.embed = tr.wte.weight
            self.padding_idx = tr.wte.padding_idx
            self.wpe = tr.wpe.weight
            self.H = self.KV = cfg.n_head
            self.hd = self.d // self.H
            for i, block in enumerate(tr.h):
                a = block.attn
                s = 1.0 / math.sqrt(self.hd) if a.scale_attn_weights else 1.0
                if a.scale_attn_by_inverse_layer_idx:
                    s /= float(i + 1)
                w = a.c_attn.weight.t()  # Conv1D stores (in, out)
                self.layers.append({
                    "ln1": block.ln_1, "ln2": block.ln_2,
                    "w_qkv": torch.cat([w[: self.d] * s, w[self.d:]], 0),
                    "b_qkv": torch.cat([a.c_attn.bias[: self.d] * s, a.c_attn.bias[self.d:]], 0),
                    "w_o": a.c_proj.weight.t(), "b_o": a.c_proj.bias,
                    "w_fc": block.mlp.c_fc.weight.t(), "b_fc": block.mlp.c_fc.bias,
                    "w_proj": block.mlp.c_proj.weight.t(), "b_proj": block.mlp.c_proj.bias,
                    "act": activation(block.mlp.act),
                })
            self.norm = tr.ln_f
        self.lm_head = model.get_output_embeddings()
        self.max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 4096)
        self._rope_cache = {} if rope_cache is None else rope_cache
        # Fused CPU kernels for decoding and the replayed backward (float32 Llama).
        self.native = None
        if (self.kind == "llama" and self.embed.device.type == "cpu"
                and self.embed.dtype == torch.float32):
            self.native = native.kernels()

    # --- pieces -----------------------------------------------------------------------
    def apply_norm(self, x: torch.Tensor, ln: Any) -> torch.Tensor:
        if type(ln) is UnitRMS:
            return ln(x)
        if self.kind == "gpt2":
            return F.layer_norm(x, (self.d,), ln.weight, ln.bias, ln.eps)
        if x.dtype == torch.float32:
            return F.rms_norm(x, (self.d,), ln.weight, ln.variance_epsilon)
        return ln(x)  # half precision: the module's own fp32 upcast

    def _rope_table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``(max_pos, hd)`` from the model's own rotary module (so
        every RoPE variant it implements is honoured), built once per policy. The sin's
        first half is negated, so that rotate-half is a swap of the halves (:meth:`rotate`)."""
        dtype = self.embed.dtype
        key = (self.max_pos, device, dtype)
        if key not in self._rope_cache:
            # Ordinary tensors even when first built under inference mode (sampling): the
            # cache is reused by log_probs, under autograd.
            with torch.inference_mode(False), torch.no_grad():
                like = torch.empty((), dtype=dtype, device=device)
                cos, sin = self.rotary(like, torch.arange(self.max_pos, device=device)[None])
                sin = sin[0].clone()
                sin[:, : self.hd // 2].neg_()
                self._rope_cache[key] = (cos[0].clone(), sin)
        return self._rope_cache[key]

    def rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos and signed sin ``(*pos.shape, 1, hd)`` at positions ``pos`` (broadcast over
        heads); None for GPT-2 (learned positions)."""
        if self.kind == "gpt2":
            return None
        cos, sin = self._rope_table(pos.device)
        return cos[pos].unsqueeze(-2), sin[pos].unsqueeze(-2)

    def rope_qkv(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`rope` for all ``H + 2 KV`` heads of a fused projection at ``pos (L,)``:
        ``(L, H + 2 KV, hd)``, with cos 1 and sin 0 on the value heads, so that one
        rotation leaves the values unchanged, bit for bit."""
        rope = self.rope(pos)
        if rope is None:
            return None
        L, heads, values = pos.shape[0], self.H + self.KV, self.KV
        cos, sin = rope  # (L, 1, hd)
        return (torch.cat([cos.expand(L, heads, self.hd), cos.new_ones(L, values, self.hd)], 1),
                torch.cat([sin.expand(L, heads, self.hd), sin.new_zeros(L, values, self.hd)], 1))

    def rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """RoPE on ``x (..., heads, hd)``: ``x cos + rotate_half(x) sin`` with
        ``rotate_half(x) = [-x2, x1]``, computed as ``[x2, x1] * [-sin1, sin2]`` (the same
        numbers, bit for bit: only signs move)."""
        cos, sin = rope
        return torch.addcmul(x * cos, x.roll(self.hd // 2, -1), sin)

    def split_qkv(self, qkv: torch.Tensor, rope: Any):
        """Split a fused projection ``(..., (H + 2 KV) * hd)`` into q ``(..., H, hd)``
        (pre-scaled), k and v ``(..., KV, hd)``, RoPE applied to q and k."""
        H, KV, hd = self.H, self.KV, self.hd
        qk, v = qkv.split([(H + KV) * hd, KV * hd], dim=-1)
        qk = qk.unflatten(-1, (H + KV, hd))
        if rope is not None:
            qk = self.rotate(qk, rope)  # q and k at once
        q, k = qk.split([H, KV], dim=-2)
        return q, k, v.unflatten(-1, (KV, hd))

    def _qkv(self, i: int, h: torch.Tensor, rope: Any):
        """q ``(B, L, H, hd)`` (pre-scaled), k, v ``(B, KV, L, hd)`` of layer ``i``."""
        p = self.layers[i]
        q, k, v = self.split_qkv(F.linear(self.apply_norm(h, p["ln1"]), p["w_qkv"], p["b_qkv"]), rope)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def post(self, i: int, h: torch.Tensor, attn: torch.Tensor,
              rec: list | None = None, p: dict | None = None) -> torch.Tensor:
        """Output projection, residual, MLP, residual. ``rec`` (a list) receives the
        attention output, the state after the first residual and the gate|up projection
        (Llama; for :mod:`rlnb.policies.lm.fast.replay`). ``p``: layer ``i``'s weights, or
        their norm-folded form (:meth:`folded`)."""
        p = self.layers[i] if p is None else p
        h = add_linear(h, attn, p["w_o"], p["b_o"])
        x = self.apply_norm(h, p["ln2"])
        if self.kind == "llama":
            gu = F.linear(x, p["w_gu"], p["b_gu"])
            if rec is not None:
                rec += (attn, h, gu)
            gate, up = gu.chunk(2, dim=-1)
            return add_linear(h, p["act"](gate) * up, p["w_down"], p["b_down"])
        return add_linear(h, p["act"](F.linear(x, p["w_fc"], p["b_fc"])), p["w_proj"],
                           p["b_proj"])

    def embed_ids(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = F.embedding(ids, self.embed, self.padding_idx)
        return h + F.embedding(pos, self.wpe) if self.kind == "gpt2" else h

    def folded(self) -> tuple[list[dict[str, Any]], Any] | None:
        """For decoding without gradients (float32 Llama): each layer's weights with its
        RMSNorm weight folded into the projection that follows (``norm(x) @ W.T`` =
        ``unit(x) @ (W * (sqrt(d) * g)).T``, ``unit(x) = x / sqrt(|x|^2 + d * eps)``:
        :class:`UnitRMS`, three ops where ``F.rms_norm`` takes about ten on the CPU),
        and the final norm folded into the LM head (a function ``(B, d) -> (B, V)``).
        None where it does not apply."""
        if self.kind != "llama" or self.embed.dtype != torch.float32:
            return None
        if type(self.lm_head) is not torch.nn.Linear:
            return None
        root, dev = math.sqrt(self.d), self.embed.device
        k = self.native
        layers = []
        for p in self.layers:
            g1, g2 = p["ln1"].weight * root, p["ln2"].weight * root
            layers.append({**p, "ln1": UnitRMS(self.d, p["ln1"].variance_epsilon, dev, k),
                           "w_qkv": p["w_qkv"] * g1,
                           "ln2": UnitRMS(self.d, p["ln2"].variance_epsilon, dev, k),
                           "w_gu": p["w_gu"] * g2})
        unit = UnitRMS(self.d, self.norm.variance_epsilon, dev, k)
        w_head = self.lm_head.weight * (self.norm.weight * root)
        b_head = self.lm_head.bias

        def head(h: torch.Tensor) -> torch.Tensor:
            return F.linear(unit(h), w_head, b_head)

        return layers, head

    def final(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm then the LM head: ``(..., d) -> (..., V)`` logits."""
        x = self.apply_norm(h, self.norm)
        if type(self.lm_head) is torch.nn.Linear:  # skip the module call's overhead
            return F.linear(x, self.lm_head.weight, self.lm_head.bias)
        return self.lm_head(x)

    # --- whole passes -----------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        key_valid: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        return_kv: bool = False,
        last_only: bool = False,
        tape: Any = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run ``ids (B, L)`` at positions ``pos (B, L)`` after optional ``past`` keys and
        values (per layer ``(B, KV, Lpast, hd)``). ``key_valid (B, Lpast + L)`` marks the
        keys that are not padding. Returns the last hidden states ``(B, L, d)`` (before the
        final norm; ``(B, 1, d)``, the last position's, with ``last_only``) and, if asked,
        each layer's new keys and values. ``tape`` (a :class:`~rlnb.policies.lm.fast.replay.Tape`,
        no ``past``) keeps each layer's activations."""
        h = self.embed_ids(ids, pos)
        rope = self.rope(pos)
        bias = attention_bias(key_valid, ids.shape[1], h.dtype)
        if tape is not None:
            tape.prompt_rope = rope
        kvs = []
        last = len(self.layers) - 1
        for i in range(len(self.layers)):
            q, k, v = self._qkv(i, h, rope)
            rec = None
            if tape is not None:
                rec = [h, q, k, v]
                tape.prompt.append(rec)
            if return_kv:
                kvs.append((k, v))
            if past is not None:
                k = torch.cat([past[i][0], k], dim=2)
                v = torch.cat([past[i][1], v], dim=2)
            if last_only and i == last:  # the other positions' outputs are not needed
                q, bias, h = q[:, -1:], bias[:, :, -1:], h[:, -1:]
            h = self.post(i, h, attend(q, k, v, bias), rec)
        return h, kvs


    def decoder(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, T: int,
                tape: Any = None):
        """Incremental decoding, as a generator: yields the next-token logits ``(B, V)``
        of the ``B`` rows still computed and receives ``(tokens (B,), keep)``: the sampled
        tokens, and None or the indices (into the ``B`` rows) of the rows to go on with
        (finished rows are dropped from the batch, which shrinks every later step).

        The prompts ``(P, Lp)`` run once; their keys and values are copied to the group's
        ``n`` rows of a pre-allocated cache (per layer ``(2, B, KV, Lp + T, hd)``).
        ``tape`` (a :class:`~rlnb.policies.lm.fast.replay.Tape`) keeps every step's activations
        (references, no copies); the caller records the rows of each step."""
        P, Lp = prompt_ids.shape
        N = P * n
        dev = prompt_ids.device
        KV, hd = self.KV, self.hd
        # The prompt once per group, then its keys/values copied to the group's n rows.
        h, kvs = self.forward(prompt_ids, positions(prompt_mask), prompt_mask.bool(),
                              return_kv=True, last_only=True, tape=tape)
        if tape is not None:
            tape.fast, tape.n = self, n
            tape.prompt_ids, tape.prompt_valid, tape.prompt_out = prompt_ids, prompt_mask.bool(), h[:, -1]
        caches = []
        for k, v in kvs:  # (P, KV, Lp, hd)
            c = k.new_zeros((2, N, KV, Lp + T, hd))  # zeros: unwritten keys are read, at 0 weight
            c[0, :, :, :Lp] = k.repeat_interleave(n, 0)
            c[1, :, :, :Lp] = v.repeat_interleave(n, 0)
            caches.append(c)
        # Completion token t sits at position (real prompt length + t).
        pos = prompt_mask.sum(1).repeat_interleave(n)[:, None] + torch.arange(T, device=dev)
        rope = self.rope(pos)  # (N, T, 1, hd) each, or None
        norm, layers, final = self.apply_norm, self.layers, self.final
        folded = self.folded()
        if folded is not None:
            layers, final = folded
        # The native kernel reads each row's keys as one range: its valid prompt keys (a
        # suffix of the prompt, left padding before it), then its completion so far.
        native, start = None, None
        if self.native is not None and folded is not None and rope is not None:
            start = prompt_start(prompt_mask)
            if start is not None:
                native, start = self.native, start.repeat_interleave(n)  # (B,)
        bias = min_keys = None
        if native is None:
            # Additive key bias, per KV head as bmm wants it: -inf on the prompts' left
            # padding and on the completion keys not written yet (0 from the step that
            # writes them).
            key_valid = torch.zeros((N, Lp + T), dtype=torch.bool, device=dev)
            key_valid[:, :Lp] = prompt_mask.bool().repeat_interleave(n, 0)
            bias = torch.zeros((N, 1, Lp + T), dtype=h.dtype, device=dev)
            bias.masked_fill_(~key_valid[:, None], float("-inf"))
            bias = bias.repeat_interleave(KV, 0)  # (N * KV, 1, Lp + T)
            # Attend to at least 16 keys (future ones weigh 0): PyTorch's CPU softmax is
            # several times slower on rows shorter than its vector width (16 floats).
            min_keys = min(16, Lp + T)
        H, W = self.H, self.H + 2 * KV
        tok, keep = yield self.final(h[:, -1]).repeat_interleave(n, 0)
        for t in range(T - 1):
            if keep is not None:  # drop the finished rows from every per-row state
                caches = [c.index_select(1, keep) for c in caches]
                pos = pos.index_select(0, keep)
                rope = None if rope is None else (rope[0].index_select(0, keep),
                                                  rope[1].index_select(0, keep))
                if native is not None:
                    start = start.index_select(0, keep)
                else:
                    bias = bias.view(-1, KV, 1, Lp + T).index_select(0, keep).view(-1, 1, Lp + T)
            at = Lp + t
            if native is None:
                bias[:, :, at] = 0.0
                w = max(at + 1, min_keys)  # keys read this step
            x = self.embed_ids(tok, pos[:, t])  # (B, d)
            r_t = None if rope is None else (rope[0][:, t], rope[1][:, t])  # (B, 1, hd)
            recs = None
            if tape is not None:
                recs = []
                tape.steps.append(recs)
                tape.step_tokens.append(tok)
                tape.step_rope.append(r_t)
            for i, (c, p) in enumerate(zip(caches, layers)):
                qkv = F.linear(norm(x, p["ln1"]), p["w_qkv"], p["b_qkv"])
                if native is not None:  # RoPE, cache write and attention in one call
                    attn = native.decode_attend(qkv, r_t[0], r_t[1], c, start, at, H, KV)
                    q, k, v = qkv.view(-1, W, hd).split([H, KV, KV], dim=1)
                else:
                    q, k, v = self.split_qkv(qkv, r_t)  # (B, H | KV, hd)
                    c[0, :, :, at] = k
                    c[1, :, :, at] = v
                    attn = attend_step(q, c[0, :, :, :w], c[1, :, :, :w], bias[:, :, :w])
                rec = None
                if recs is not None:
                    rec = [x, q, k, v]
                    recs.append(rec)
                x = self.post(i, x, attn, rec, p)
            if tape is not None:
                tape.step_out.append(x)
            tok, keep = yield final(x)


def add_linear(h: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None) -> torch.Tensor:
    """``h + x @ w.T (+ b)``: the residual add fused into the matmul when there is no
    bias (one op, and one backward node, instead of two)."""
    if b is None:
        if h.dim() == 2:
            return torch.addmm(h, x, w.t())
        return torch.addmm(h.flatten(0, -2), x.flatten(0, -2), w.t()).view(h.shape)
    return h + F.linear(x, w, b)


# ======================================================================================
