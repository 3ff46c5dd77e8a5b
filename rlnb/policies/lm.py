"""``LMPolicy``: any Hugging Face causal LM as an rlnb policy.

The trainer talks to a policy through two calls (see :mod:`rlnb.policies.base`)::

    rollout = policy.rollout(env, prompts, n, temperature=1.0, generator=g)   # no grad
    logp, entropy = policy.log_probs(rollout, temperature=1.0)                # with grad

``rollout`` left-pads the prompts, samples ``n`` completions per prompt with a KV cache and
an explicit ``torch.Generator`` (same generator state, same completions), and stops each
row at its EOS. ``log_probs`` re-scores the sampled tokens in one forward pass over
prompt + completion.

Layout of a rollout of ``P`` prompts, ``n`` completions each (``N = P * n`` rows, groups
contiguous: rows ``g*n .. g*n+n-1`` answer prompt ``g``)::

    extra["input_ids"]   (N, Lp + T)   <pad><pad><s>1 2 + 3 4 = | 4 6 </s><pad><pad>
    extra["attention_mask"]            0    0    1 ...        1 | 1 1 1    0    0
    mask                 (N, T)                               | T T T    F    F
    actions              (N, T)                               | 4 6 </s> <pad><pad>

Footguns this module takes care of, and that any re-implementation must too:

* the mask excludes the prompt and the padding, and *includes* the EOS token (the model
  must learn to stop);
* prompts are left-padded, so position ids are ``cumsum(attention_mask) - 1``, not
  ``arange``: with ``arange`` a padded prompt sees shifted positions and its log-probs
  silently differ from those of the same prompt unpadded;
* the logits that score completion token ``t`` sit at position ``Lp - 1 + t`` (one to the
  left): an off-by-one here trains on garbage without raising anything;
* dropout is disabled (the wrapped model stays in eval mode even under ``policy.train()``):
  PPO's ratio ``exp(logp - old_logp)`` assumes sampling and scoring are the same function.

Speed: for Llama-family (llama, qwen2, mistral) and GPT-2 models, ``engine="auto"`` runs a
functional re-implementation of the forward pass on the model's own parameters (fused
projections, a pre-allocated KV cache, the prompt computed once per group). The model's
own ``forward`` (``engine="hf"``, with Hugging Face's KV cache) is the reference it is
tested against, and what other architectures use. Only needed work is done:

* sampling drops rows that have emitted EOS from the batch (:meth:`_Fast.decoder`) and
  stops when every row has;
* ``log_probs`` computes only what the masked tokens depend on: each group's prompt once,
  the completion tokens up to each row's last masked one, packed (no padding rows through
  the projections and MLP), and the LM head on the scored positions alone
  (:meth:`_Fast.score`). ``completion_logits`` keeps the plain whole-sequence version;
* an update that follows its rollout with unchanged weights (the trainer's first update
  of every batch) runs no forward pass at all: ``rollout(..., keep_activations=True)``
  keeps what the sampler computed and ``log_probs`` differentiates through it with a
  hand-written backward pass (:mod:`rlnb.policies.lm_replay`; float32 Llama-family
  models on the CPU).
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlnb.policies.base import Policy, Rollout, validate_sampling_args

ENGINES = ("auto", "fast", "hf", "hf-nocache")
_LLAMA_LIKE = ("llama", "qwen2", "mistral")
_GPT2_LIKE = ("gpt2",)
# Pre-draw the sampling noise of a whole rollout at once when it is at most this many
# numbers (one call instead of one per token); larger vocabularies draw per step.
_PREDRAW_LIMIT = 1 << 22


# ======================================================================================
# Loading
# ======================================================================================
def _check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a clear error for a GPU this torch cannot use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                         f"got {device!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} but torch sees no CUDA GPU here (torch "
                f"{torch.__version__}, torch.cuda.is_available() is False). Use device='cpu', "
                "or on a GPU machine install a CUDA build of torch "
                "(make install RLNB_CONSTRAINTS=none)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r} but only {torch.cuda.device_count()} CUDA "
                             "GPU(s) are visible")
    return dev


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
               "float": "float32"}
    name = aliases.get(name, name)
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype or its name, got {dtype!r}")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved beside a model. A generic fast tokenizer (``tokenizer_class``
    ``PreTrainedTokenizerFast`` / ``TokenizersBackend``, as :func:`char_tokenizer` saves)
    is loaded with ``PreTrainedTokenizerFast``: ``AutoTokenizer`` would force the model
    type's own class (qwen2, phi3, ...), which drops the spaces and newlines of a character
    vocabulary. Any other tokenizer (a real checkpoint's) goes through ``AutoTokenizer``."""
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    cfg_path = p / "tokenizer_config.json"
    if p.is_dir() and (p / "tokenizer.json").exists() and cfg_path.exists():
        cls = json.loads(cfg_path.read_text()).get("tokenizer_class")
        if cls in ("PreTrainedTokenizerFast", "TokenizersBackend"):
            return PreTrainedTokenizerFast.from_pretrained(str(p))
    return AutoTokenizer.from_pretrained(str(path))


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_RESAVE = ("write the directory again with model.save_pretrained(dir) and "
           "tokenizer.save_pretrained(dir), or copy it again from where it came from")


def _check_model_dir(p: Path) -> None:
    """Refuse a local model directory whose config.json or weights cannot be read, before
    ``transformers`` fails on it with a message that names neither the file nor a fix."""
    import json

    cfg_path = p / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(cfg_path)!r} is not valid JSON ({err}); the file is corrupt or truncated: "
            f"{_RESAVE}"
        ) from None
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{str(cfg_path)!r} holds a JSON {type(cfg).__name__}, not an object of model "
            f"settings (model_type, hidden_size, ...); {_RESAVE}"
        )
    if not isinstance(cfg.get("model_type"), str):
        raise ValueError(
            f"{str(cfg_path)!r} has no 'model_type' (such as 'llama' or 'gpt2'), so no model "
            f"class can be chosen for it; {_RESAVE}"
        )
    pickled = [name for name in _WEIGHT_FILES if "safetensors" not in name and (p / name).exists()]
    if pickled and not any((p / name).exists() for name in _WEIGHT_FILES if "safetensors" in name):
        raise ValueError(
            f"model directory {str(p)!r} holds its weights only as {pickled[0]} (a pickle, "
            "which runs code when loaded); rlnb loads weights from safetensors only. If you "
            "trust the file, convert it once: AutoModelForCausalLM.from_pretrained(dir, "
            "use_safetensors=False).save_pretrained(dir) writes model.safetensors"
        )
    if not any((p / name).exists() for name in _WEIGHT_FILES):
        raise FileNotFoundError(
            f"model directory {str(p)!r} has a config.json but no weights (expected one of "
            f"{', '.join(_WEIGHT_FILES)}); {_RESAVE}"
        )


def _load(model: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a directory path or a hub name (str or Path), got "
            f"{type(model).__name__}; wrap an already loaded model with LMPolicy.from_model"
        )
    p = Path(model).expanduser()
    looks_local = p.is_absolute() or str(model).startswith((".", "~")) or p.exists()
    if looks_local:
        if not p.exists():
            raise FileNotFoundError(
                f"model directory {str(p)!r} does not exist; expected a folder written by "
                "save_pretrained (config.json, weights, tokenizer files), e.g. the path "
                "returned by rlnb.policies.pretrain_base(task)"
            )
        if not p.is_dir() or not (p / "config.json").exists():
            raise ValueError(
                f"{str(p)!r} holds no model: expected config.json, the weights "
                "(model.safetensors) and the tokenizer files written by save_pretrained"
            )
        _check_model_dir(p)
        try:
            hf = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, use_safetensors=True)
        except Exception as err:  # SafetensorError, OSError, RuntimeError, ... from a bad file
            files = [name for name in _WEIGHT_FILES if (p / name).exists()]
            raise ValueError(
                f"could not load the weights in {str(p / files[0]) if files else str(p)!r}: "
                f"{type(err).__name__}: {err}. The file is corrupt, truncated or of another "
                f"model than config.json describes; {_RESAVE}"
            ) from err
        try:
            tok = _load_tokenizer(p)
        except Exception as err:
            raise ValueError(
                f"could not load the tokenizer in {str(p)!r}: {type(err).__name__}: {err}. "
                f"Its tokenizer files (tokenizer.json, tokenizer_config.json) are missing or "
                f"corrupt; {_RESAVE}"
            ) from err
        return hf.to(device), tok
    hf = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype, use_safetensors=True)
    tok = _load_tokenizer(model)
    return hf.to(device), tok


# ======================================================================================
# The functional forward ("fast" engine)
# ======================================================================================
def fast_engine_support(model: Any) -> str | None:
    """Why the fast engine cannot run ``model`` (a message), or None when it can."""
    cfg = model.config
    mt = getattr(cfg, "model_type", None)
    if mt in _LLAMA_LIKE:
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers"):
            return f"{type(model).__name__} does not have the Llama module layout"
        for layer in inner.layers:
            if getattr(layer.self_attn, "sliding_window", None) is not None:
                return "sliding-window attention is not implemented in the fast engine"
        if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
            return "logit soft-capping is not implemented in the fast engine"
        return None
    if mt in _GPT2_LIKE:
        if getattr(cfg, "add_cross_attention", False):
            return "GPT-2 with cross-attention is not supported by the fast engine"
        return None
    return (f"model_type {mt!r} is not one of the fast engine's architectures "
            f"{_LLAMA_LIKE + _GPT2_LIKE}")


def _activation(module: Any) -> Any:
    name = type(module).__name__
    if name in ("SiLUActivation", "SiLU"):
        return F.silu
    if name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUPytorchTanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return module


def _attention_bias(key_valid: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
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


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention with pre-scaled queries. q ``(B, Lq, H, hd)``; k, v
    ``(B, KV, Lk, hd)``; bias ``(B, 1, Lq, Lk)`` -> ``(B, Lq, H * hd)``. Query head ``h``
    reads KV head ``h // (H // KV)`` (Hugging Face's ``repeat_kv``). On the CPU, for tiny
    models, plain matmuls without copying K and V; elsewhere PyTorch's fused kernel
    (:func:`_attend_sdpa`), which never holds the whole score matrix."""
    if q.device.type != "cpu":
        return _attend_sdpa(q, k, v, bias)
    B, Lq, H, hd = q.shape
    KV = k.shape[1]
    _, probs = _grouped_probs(q, k, bias)
    out = torch.matmul(probs, v)  # (B, KV, rep*Lq, hd)
    return out.view(B, KV, H // KV, Lq, hd).permute(0, 3, 1, 2, 4).reshape(B, Lq, H * hd)


def _grouped_probs(q: torch.Tensor, k: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first half of :func:`_attend` on the CPU: the queries grouped by the KV head
    they read, ``(B, KV, rep * Lq, hd)``, and the attention probabilities
    ``(B, KV, rep * Lq, Lk)``. The backward pass of :mod:`rlnb.policies.lm_replay`
    recomputes them with it."""
    B, Lq, H, hd = q.shape
    KV, Lk = k.shape[1], k.shape[2]
    rep = H // KV
    qg = q.reshape(B, Lq, KV, rep, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, rep * Lq, hd)
    scores = torch.matmul(qg, k.transpose(-1, -2))  # (B, KV, rep*Lq, Lk)
    scores = scores.view(B, KV, rep, Lq, Lk) + bias[:, :, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return qg, probs.view(B, KV, rep * Lq, Lk)


def _completion_bias(prompt_valid: torch.Tensor, n: int, Tc: int,
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


def _prompt_start(valid: torch.Tensor) -> torch.Tensor | None:
    """The first valid key of each left-padded prompt ``valid (G, Lp)``, ``(G,)``, so that
    its keys are the range ``start .. Lp - 1``; None where a mask is not of that form
    (the native kernels read key ranges, not masks)."""
    if not bool((valid[:, 1:] >= valid[:, :-1]).all()):
        return None
    return valid.shape[1] - valid.sum(1)


def _row_keys(kp: torch.Tensor, kc: torch.Tensor, n: int) -> torch.Tensor:
    """The keys (or values) each completion row attends to, ``(G * n, KV, Lp + Tc, hd)``:
    its prompt's ``kp (G, KV, Lp, hd)`` (one copy per row, made inside the cat), then its
    own ``kc (G * n, Tc, KV, hd)``."""
    G, KV, Lp, hd = kp.shape
    return torch.cat([kp[:, None].expand(G, n, KV, Lp, hd),
                      kc.transpose(1, 2).unflatten(0, (G, n))], dim=3).flatten(0, 1)


def _attend_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                 fused: bool | None = None) -> torch.Tensor:
    """:func:`_attend` for one query per row (a decoding step). q ``(B, H, hd)``
    (pre-scaled); k, v ``(B, KV, L, hd)`` (a slice of the cache); bias ``(B * KV, 1, L)``
    -> ``(B, H * hd)``. ``fused`` (default: off the CPU) uses PyTorch's fused kernel;
    otherwise two batched matmuls, the bias added inside the first."""
    B, H, hd = q.shape
    KV, L = k.shape[1], k.shape[2]
    if fused if fused is not None else q.device.type != "cpu":
        return _attend_sdpa(q[:, None], k, v, bias.view(B, KV, 1, L)[:, :1])[:, 0]
    s = torch.baddbmm(bias, q.reshape(B * KV, H // KV, hd),
                      k.reshape(B * KV, L, hd).transpose(1, 2))  # (B * KV, rep, L)
    probs = torch.softmax(s, dim=-1, dtype=torch.float32).to(s.dtype)
    return torch.bmm(probs, v.reshape(B * KV, L, hd)).view(B, H * hd)


def _attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """:func:`_attend` through ``F.scaled_dot_product_attention`` (same arguments)."""
    B, Lq, H, hd = q.shape
    rep = H // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=bias, scale=1.0)
    return out.transpose(1, 2).reshape(B, Lq, H * hd)


class _Fast:
    """The forward pass of a supported model written with plain tensor ops on the model's
    own parameters (gradients flow to them). Built once per rollout or scoring call: the
    fused weights (q|k|v with the attention scale folded into q, and gate|up) are
    differentiable functions of the current parameters."""

    def __init__(self, model: Any, rope_cache: dict | None = None) -> None:
        cfg = model.config
        self.model = model
        self.kind = "gpt2" if cfg.model_type in _GPT2_LIKE else "llama"
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
                    "act": _activation(m.act_fn),
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
                    "act": _activation(block.mlp.act),
                })
            self.norm = tr.ln_f
        self.lm_head = model.get_output_embeddings()
        self.max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 4096)
        self._rope_cache = {} if rope_cache is None else rope_cache
        # Fused CPU kernels for decoding and the replayed backward (float32 Llama).
        self.native = None
        if (self.kind == "llama" and self.embed.device.type == "cpu"
                and self.embed.dtype == torch.float32):
            from rlnb.policies import native

            self.native = native.kernels()

    # --- pieces -----------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, ln: Any) -> torch.Tensor:
        if type(ln) is _UnitRMS:
            return ln(x)
        if self.kind == "gpt2":
            return F.layer_norm(x, (self.d,), ln.weight, ln.bias, ln.eps)
        if x.dtype == torch.float32:
            return F.rms_norm(x, (self.d,), ln.weight, ln.variance_epsilon)
        return ln(x)  # half precision: the module's own fp32 upcast

    def _rope_table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``(max_pos, hd)`` from the model's own rotary module (so
        every RoPE variant it implements is honoured), built once per policy. The sin's
        first half is negated, so that rotate-half is a swap of the halves (:meth:`_rotate`)."""
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

    def _rope_qkv(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
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

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """RoPE on ``x (..., heads, hd)``: ``x cos + rotate_half(x) sin`` with
        ``rotate_half(x) = [-x2, x1]``, computed as ``[x2, x1] * [-sin1, sin2]`` (the same
        numbers, bit for bit: only signs move)."""
        cos, sin = rope
        return torch.addcmul(x * cos, x.roll(self.hd // 2, -1), sin)

    def _split_qkv(self, qkv: torch.Tensor, rope: Any):
        """Split a fused projection ``(..., (H + 2 KV) * hd)`` into q ``(..., H, hd)``
        (pre-scaled), k and v ``(..., KV, hd)``, RoPE applied to q and k."""
        H, KV, hd = self.H, self.KV, self.hd
        qk, v = qkv.split([(H + KV) * hd, KV * hd], dim=-1)
        qk = qk.unflatten(-1, (H + KV, hd))
        if rope is not None:
            qk = self._rotate(qk, rope)  # q and k at once
        q, k = qk.split([H, KV], dim=-2)
        return q, k, v.unflatten(-1, (KV, hd))

    def _qkv(self, i: int, h: torch.Tensor, rope: Any):
        """q ``(B, L, H, hd)`` (pre-scaled), k, v ``(B, KV, L, hd)`` of layer ``i``."""
        p = self.layers[i]
        q, k, v = self._split_qkv(F.linear(self._norm(h, p["ln1"]), p["w_qkv"], p["b_qkv"]), rope)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    def _post(self, i: int, h: torch.Tensor, attn: torch.Tensor,
              rec: list | None = None, p: dict | None = None) -> torch.Tensor:
        """Output projection, residual, MLP, residual. ``rec`` (a list) receives the
        attention output, the state after the first residual and the gate|up projection
        (Llama; for :mod:`rlnb.policies.lm_replay`). ``p``: layer ``i``'s weights, or
        their norm-folded form (:meth:`_folded`)."""
        p = self.layers[i] if p is None else p
        h = _add_linear(h, attn, p["w_o"], p["b_o"])
        x = self._norm(h, p["ln2"])
        if self.kind == "llama":
            gu = F.linear(x, p["w_gu"], p["b_gu"])
            if rec is not None:
                rec += (attn, h, gu)
            gate, up = gu.chunk(2, dim=-1)
            return _add_linear(h, p["act"](gate) * up, p["w_down"], p["b_down"])
        return _add_linear(h, p["act"](F.linear(x, p["w_fc"], p["b_fc"])), p["w_proj"],
                           p["b_proj"])

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = F.embedding(ids, self.embed, self.padding_idx)
        return h + F.embedding(pos, self.wpe) if self.kind == "gpt2" else h

    def _folded(self) -> tuple[list[dict[str, Any]], Any] | None:
        """For decoding without gradients (float32 Llama): each layer's weights with its
        RMSNorm weight folded into the projection that follows (``norm(x) @ W.T`` =
        ``unit(x) @ (W * (sqrt(d) * g)).T``, ``unit(x) = x / sqrt(|x|^2 + d * eps)``:
        :class:`_UnitRMS`, three ops where ``F.rms_norm`` takes about ten on the CPU),
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
            layers.append({**p, "ln1": _UnitRMS(self.d, p["ln1"].variance_epsilon, dev, k),
                           "w_qkv": p["w_qkv"] * g1,
                           "ln2": _UnitRMS(self.d, p["ln2"].variance_epsilon, dev, k),
                           "w_gu": p["w_gu"] * g2})
        unit = _UnitRMS(self.d, self.norm.variance_epsilon, dev, k)
        w_head = self.lm_head.weight * (self.norm.weight * root)
        b_head = self.lm_head.bias

        def head(h: torch.Tensor) -> torch.Tensor:
            return F.linear(unit(h), w_head, b_head)

        return layers, head

    def final(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm then the LM head: ``(..., d) -> (..., V)`` logits."""
        x = self._norm(h, self.norm)
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
        each layer's new keys and values. ``tape`` (a :class:`~rlnb.policies.lm_replay.Tape`,
        no ``past``) keeps each layer's activations."""
        h = self._embed(ids, pos)
        rope = self.rope(pos)
        bias = _attention_bias(key_valid, ids.shape[1], h.dtype)
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
            h = self._post(i, h, _attend(q, k, v, bias), rec)
        return h, kvs

    def score(
        self,
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
        H, KV, hd = self.H, self.KV, self.hd
        W = H + 2 * KV  # heads of the fused projection
        dev = prompt_ids.device
        prompt_valid = prompt_valid.bool()
        pos = torch.cat([positions(prompt_valid).reshape(-1), comp_pos])  # (Np + M,)
        h = self._embed(torch.cat([prompt_ids.reshape(-1), comp_ids]), pos)  # (Np + M, d)
        rope = self._rope_qkv(pos)
        bias_p = _attention_bias(prompt_valid, Lp, h.dtype)  # (G, 1, Lp, Lp)
        if Tc:  # completion keys: [the prompt's (Lp) ; the row's own completion (Tc), causal]
            bias_c = _completion_bias(prompt_valid, n, Tc, h.dtype)
        last = len(self.layers) - 1
        for i, p in enumerate(self.layers):
            qkv = F.linear(self._norm(h, p["ln1"]), p["w_qkv"], p["b_qkv"]).unflatten(-1, (W, hd))
            if rope is not None:
                qkv = self._rotate(qkv, rope)  # (Np + M, W, hd)
            qp, kp, vp = qkv[:Np].view(G, Lp, W, hd).split([H, KV, KV], dim=2)
            kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)  # (G, KV, Lp, hd)
            if i == last:  # the prompt's last position is the only one still needed
                attn = [_attend(qp[:, -1:], kp, vp, bias_p[:, :, -1:]).view(G, H * hd)]
            else:
                attn = [_attend(qp, kp, vp, bias_p).view(Np, H * hd)]
            if Tc:
                grid = qkv.new_zeros((R * Tc, W, hd)).index_copy(0, slots, qkv[Np:])
                qc, kc, vc = grid.view(R, Tc, W, hd).split([H, KV, KV], dim=2)
                out = _attend(qc, _row_keys(kp, kc, n), _row_keys(vp, vc, n),
                              bias_c).view(R * Tc, H * hd)
                attn.append(out.index_select(0, slots))  # (M, H * hd)
            if i == last:
                rows = torch.cat([torch.arange(Lp - 1, Np, Lp, device=dev),
                                  torch.arange(Np, Np + M, device=dev)])
                h = h.index_select(0, rows)  # (G + M, d)
            h = self._post(i, h, torch.cat(attn) if len(attn) > 1 else attn[0])
        return h.index_select(0, src)

    def decoder(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, T: int,
                tape: Any = None):
        """Incremental decoding, as a generator: yields the next-token logits ``(B, V)``
        of the ``B`` rows still computed and receives ``(tokens (B,), keep)``: the sampled
        tokens, and None or the indices (into the ``B`` rows) of the rows to go on with
        (finished rows are dropped from the batch, which shrinks every later step).

        The prompts ``(P, Lp)`` run once; their keys and values are copied to the group's
        ``n`` rows of a pre-allocated cache (per layer ``(2, B, KV, Lp + T, hd)``).
        ``tape`` (a :class:`~rlnb.policies.lm_replay.Tape`) keeps every step's activations
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
        norm, layers, final = self._norm, self.layers, self.final
        folded = self._folded()
        if folded is not None:
            layers, final = folded
        # The native kernel reads each row's keys as one range: its valid prompt keys (a
        # suffix of the prompt, left padding before it), then its completion so far.
        native, start = None, None
        if self.native is not None and folded is not None and rope is not None:
            start = _prompt_start(prompt_mask)
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
            x = self._embed(tok, pos[:, t])  # (B, d)
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
                    q, k, v = self._split_qkv(qkv, r_t)  # (B, H | KV, hd)
                    c[0, :, :, at] = k
                    c[1, :, :, at] = v
                    attn = _attend_step(q, c[0, :, :, :w], c[1, :, :, :w], bias[:, :, :w])
                rec = None
                if recs is not None:
                    rec = [x, q, k, v]
                    recs.append(rec)
                x = self._post(i, x, attn, rec, p)
            if tape is not None:
                tape.step_out.append(x)
            tok, keep = yield final(x)


class _UnitRMS:
    """``x / sqrt(mean(x^2) + eps) / sqrt(d)`` = ``x / sqrt(|x|^2 + d * eps)``: RMSNorm
    without its weight and its ``sqrt(d)``, both folded into the next projection
    (:meth:`_Fast._folded`)."""

    __slots__ = ("c", "c2", "native")

    def __init__(self, d: int, eps: float, device: torch.device, native: Any = None) -> None:
        self.c = torch.tensor(math.sqrt(d * eps), device=device)
        self.c2 = d * eps
        self.native = native  # rlnb.policies.native.Kernels (CPU float32 rows), or None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None and x.dim() == 2:
            return self.native.unit_rms(x, self.c2)
        return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self.c)


def _add_linear(h: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None) -> torch.Tensor:
    """``h + x @ w.T (+ b)``: the residual add fused into the matmul when there is no
    bias (one op, and one backward node, instead of two)."""
    if b is None:
        if h.dim() == 2:
            return torch.addmm(h, x, w.t())
        return torch.addmm(h.flatten(0, -2), x.flatten(0, -2), w.t()).view(h.shape)
    return h + F.linear(x, w, b)


# ======================================================================================
# Sampling helpers
# ======================================================================================
def _top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf the tokens outside the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2019). ``logp (B, V)``; the top token always stays."""
    sorted_lp, order = torch.sort(logp, dim=-1, descending=True)
    cum = sorted_lp.exp().cumsum(-1)
    drop_sorted = (cum - sorted_lp.exp()) >= top_p  # mass before this token already enough
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logp.masked_fill(drop, float("-inf"))


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_(1e-20, 1.0)))


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``ids (B, L)`` and ``attention_mask (B, L)`` (long)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, L - len(s):] = 1
    return ids, mask


def _plain_fast_tokenizer(tokenizer: Any) -> Any:
    """The ``tokenizers`` object behind a Hugging Face fast tokenizer whose decoding is
    exactly ``backend.decode`` (the stock ``_decode``, no clean-up of spaces), else None."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - older transformers
        return None
    if (isinstance(tokenizer, TokenizersBackend)
            and type(tokenizer)._decode is TokenizersBackend._decode
            and not tokenizer.clean_up_tokenization_spaces):
        return tokenizer._tokenizer
    return None


def _shorten(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: ``cumsum(mask) - 1``, 0 on the padding.

    >>> positions(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tensor([[0, 0, 0, 1],
            [0, 1, 2, 3]])
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


# ======================================================================================
# The policy
# ======================================================================================
class LMPolicy(Policy):
    """A Hugging Face causal LM + tokenizer as an rlnb policy.

    Args:
        model: a directory written by ``save_pretrained`` (model and tokenizer), or a hub
            name (read from the local Hugging Face cache when ``HF_HUB_OFFLINE=1``).
        device: ``"cpu"``, ``"cuda"``, ... ; None picks cuda when available.
        dtype: parameter dtype; None = bfloat16 on GPU, float32 on CPU.
        max_new_tokens: completion length budget T. A completion without EOS within it is
            ``truncated`` (its tokens still count in the mask).
        top_p: nucleus sampling. The recorded ``logp`` is under the temperature-scaled
            distribution *without* the top-p cut (what ``log_probs`` recomputes), so with
            ``top_p < 1`` the PPO ratio is against the untruncated policy, as in TRL.
        hidden_states: also store ``extra["hidden_states"]`` (see :meth:`hidden_states`)
            in every rollout.
        engine: ``"auto"`` (the functional "fast" forward for llama/qwen2/mistral/gpt2,
            the model's own forward otherwise), ``"fast"``, ``"hf"`` (model forward with
            Hugging Face's KV cache) or ``"hf-nocache"`` (the whole sequence re-run at every
            token: slow, the reference that proves the caches right).

    >>> from rlnb.envs.text import ExactMatchTask
    >>> from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model
    >>> tok = char_tokenizer("0123456789+=")
    >>> pi = LMPolicy.from_model(tiny_model(tiny_config("llama", len(tok))), tok, max_new_tokens=4)
    >>> task = ExactMatchTask(["1+1=", "12+3="], ["2", "15"])
    >>> r = pi.rollout(task, torch.tensor([0, 1]), 3, generator=torch.Generator().manual_seed(0))
    >>> r.actions.shape, r.extra["prompt_length"], len(r.extra["completions"])
    (torch.Size([6, 4]), 6, 6)
    >>> logp, entropy = pi.log_probs(r)  # with gradients, 0 outside r.mask
    >>> torch.allclose(logp, r.logp, atol=1e-5)
    True
    >>> len(pi.sample_texts(["1+1="], 5, generator=torch.Generator().manual_seed(0))[0])
    5

    Footgun: the wrapped model never leaves eval mode (dropout off), and its dropout
    probabilities are left untouched for anyone who uses the model elsewhere.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_new_tokens: int = 16,
        top_p: float = 1.0,
        hidden_states: bool = False,
        engine: str = "auto",
    ) -> None:
        super().__init__()
        dev = _check_device(device if device is not None else
                            ("cuda" if torch.cuda.is_available() else "cpu"))
        dt = _resolve_dtype(dtype, dev)
        hf, tok = _load(model, dev, dt)
        local = Path(model).expanduser()
        # A local directory is recorded as an absolute path, so a run directory rebuilds
        # the policy from any working directory; a hub name is kept as given.
        ref = str(local.resolve()) if local.is_dir() else str(model)
        self._setup(hf, tok, ref, dev, dtype, max_new_tokens, top_p, hidden_states, engine)
        self._device_option = None if device is None else str(device)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 16,
        top_p: float = 1.0,
        hidden_states: bool = False,
        engine: str = "auto",
    ) -> LMPolicy:
        """Wrap an already loaded model (kept on its device and dtype). Such a policy has
        no directory to rebuild from: ``save_pretrained`` it before training with a
        ``run_dir``."""
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(
                f"model must be a loaded Hugging Face causal LM (a torch.nn.Module with a "
                f"config), got {type(model).__name__}; for a directory use LMPolicy(path)"
            )
        if not all(hasattr(tokenizer, a) for a in ("pad_token_id", "eos_token_id", "decode")):
            raise TypeError(
                f"tokenizer must be a Hugging Face tokenizer (pad_token_id, eos_token_id, "
                f"decode), got {type(tokenizer).__name__}"
            )
        self = cls.__new__(cls)
        Policy.__init__(self)
        ref = getattr(model, "name_or_path", "") or ""
        ref = ref if ref and (Path(ref) / "config.json").exists() else None
        self._setup(model, tokenizer, ref, next(model.parameters()).device,
                    _dtype_name(next(model.parameters()).dtype), max_new_tokens, top_p,
                    hidden_states, engine)
        self._device_option = str(self.device)
        return self

    def _setup(self, model, tokenizer, ref, device, dtype, max_new_tokens, top_p,
               hidden_states, engine) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        from rlnb.envs._checks import check_int, check_number

        max_new_tokens = check_int(max_new_tokens, "max_new_tokens", 1,
                                   meaning="completion length budget")
        top_p = check_number(top_p, "top_p", 0, 1, low_open=True, meaning="nucleus sampling")
        if not isinstance(hidden_states, bool):
            raise TypeError(f"hidden_states must be True or False, got {hidden_states!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_ref = ref
        self.device = torch.device(device)
        self._dtype_option = None if dtype is None else (
            _dtype_name(dtype) if isinstance(dtype, torch.dtype) else str(dtype))
        self.max_new_tokens = max_new_tokens
        self.top_p = float(top_p)
        self.record_hidden_states = bool(hidden_states)
        self.engine_option = engine
        why_not = fast_engine_support(model)
        if engine == "fast" and why_not is not None:
            raise ValueError(f"engine='fast' cannot run this model: {why_not}; use engine='hf'")
        self.engine = ("fast" if why_not is None else "hf") if engine == "auto" else engine
        # Special tokens.
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    "the tokenizer has neither a pad token nor an EOS token; set one before "
                    "wrapping it, e.g. tokenizer.add_special_tokens({'pad_token': '<pad>'}) "
                    "and model.resize_token_embeddings(len(tokenizer))"
                )
            warnings.warn(
                "the tokenizer has no pad token: using its EOS token "
                f"{tokenizer.eos_token!r} as padding (set tokenizer.pad_token to silence "
                "this). Masks come from where each row stopped, never from pad ids, so this "
                "is safe.", stacklevel=3)
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no EOS token, so completions could never stop; set "
                "tokenizer.eos_token to the token the model was trained to end answers with"
            )
        eos = {int(tokenizer.eos_token_id)}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            eos |= {int(e) for e in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])}
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = sorted(eos)
        self._eos_t = torch.tensor(self.eos_ids, device=self.device)
        self.max_positions = None
        self._context_source = None
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(model.config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.max_positions, self._context_source = value, key
                break
        self._prompt_cache: dict[str, list[int]] = {}
        self._prompt_ok: set[str] = set()  # prompts whose tokens are all in the vocabulary
        unk = getattr(tokenizer, "unk_token_id", None)
        self._unk_id = int(unk) if isinstance(unk, int) else None
        self._rope_cache: dict = {}
        self._num_params = sum(p.numel() for p in model.parameters())
        try:
            self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(
                model.forward).parameters
        except (TypeError, ValueError):
            self._takes_logits_to_keep = False

    # --- Serializable ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        if self.model_ref is None:
            raise ValueError(
                "this LMPolicy wraps an in-memory model that has no directory to be rebuilt "
                "from; call policy.save_pretrained(dir) and train LMPolicy(dir) instead"
            )
        return {
            "model": self.model_ref,
            "device": self._device_option,
            "dtype": self._dtype_option,
            "max_new_tokens": self.max_new_tokens,
            "top_p": self.top_p,
            "hidden_states": self.record_hidden_states,
            "engine": self.engine_option,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write model and tokenizer with ``save_pretrained``; ``LMPolicy(directory)``
        loads them back."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    def train(self, mode: bool = True) -> LMPolicy:
        """Set the policy's mode flag; the wrapped model stays in eval mode (no dropout).
        (Not recursive: walking thousands of modules twice a step costs a millisecond.)"""
        self.training = bool(mode)
        if self.model.training:
            self.model.eval()
        return self

    def _aliases(self) -> set[str]:
        seen: set[int] = set()
        aliases = set()
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                aliases.add(name)
            seen.add(id(p))
        return aliases

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The parameters, without the duplicate names of tied weights (GPT-2's ``lm_head``
        is its embedding): safetensors refuses to save one tensor twice."""
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for name in self._aliases():
            sd.pop(prefix + name, None)
        return sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in self._aliases()]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"LMPolicy.load_state_dict: missing keys {missing}, unexpected keys "
                f"{result.unexpected_keys}: the checkpoint is of another model"
            )
        result.missing_keys[:] = missing
        return result

    # --- prompts --------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt (with the tokenizer's special tokens, e.g. BOS), cached."""
        ids = self._prompt_cache.get(text)
        if ids is None:
            if len(self._prompt_cache) > 100_000:
                self._prompt_cache.clear()
            ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            self._prompt_cache[text] = ids
        return ids

    def check_prompts(self, prompts: Sequence[str], *, max_new_tokens: int | None = None) -> None:
        """Refuse prompts this policy cannot answer faithfully, before any sampling:

        * a prompt with characters the tokenizer cannot represent (they would become its
          unknown token, and the model would see something else than the text);
        * a prompt whose token length plus ``max_new_tokens`` (default: the policy's)
          exceeds the model's context (``max_position_embeddings`` / ``n_positions`` of
          its config, when it has one).

        ``TypeError`` for a single string or a non-string entry, else ``ValueError`` naming
        the first bad prompt (index and repr) and what to do. The vocabulary check is done
        once per distinct prompt (cached), so calling this before every sampling call
        costs a set lookup per prompt.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got a single string; "
                            "wrap it in a list: [prompt]")
        T = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        texts = list(prompts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt {i} must be a str, got {type(t).__name__} {t!r}"[:200])
        self._check_prompt_texts(texts, [self.encode_prompt(t) for t in texts],
                                 [f"prompt {i}" for i in range(len(texts))], T)

    def _check_prompt_texts(self, texts: Sequence[str], seqs: Sequence[Sequence[int]],
                            labels: Sequence[str], max_new_tokens: int) -> None:
        ok = self._prompt_ok
        for text, ids, label in zip(texts, seqs, labels):
            if text in ok:
                continue
            if self._unk_id is not None and self._unk_id in ids:
                bad = self._unrepresentable(text)
                if bad:
                    raise ValueError(
                        f"{label} {_shorten(text)} holds characters the tokenizer cannot "
                        f"represent: {', '.join(map(repr, bad))} (each becomes its unknown token "
                        f"{self.tokenizer.unk_token!r}, so the model would not see the text); "
                        "remove or replace them, or use a tokenizer whose vocabulary has them "
                        "(char_tokenizer(task.alphabet) for a text task)"
                    )
            if len(ok) > 100_000:
                ok.clear()
            ok.add(text)
        if self.max_positions is None:
            return
        for text, ids, label in zip(texts, seqs, labels):
            if len(ids) + max_new_tokens > self.max_positions:
                room = self.max_positions - len(ids)
                raise ValueError(
                    f"{label} {_shorten(text)} has {len(ids)} tokens; with max_new_tokens="
                    f"{max_new_tokens} that is {len(ids) + max_new_tokens} positions, more than "
                    f"the model's context of {self.max_positions} ({self._context_source}). "
                    "Use shorter prompts or a smaller max_new_tokens"
                    + (f" (at most {room - 1} for this prompt)" if room > 1 else "")
                )

    def _unrepresentable(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that the tokenizer maps to its unknown token
        (a literal unknown-token string in the text is not one of them)."""
        unk, unk_text = self._unk_id, getattr(self.tokenizer, "unk_token", None)
        bad: list[str] = []
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            pieces = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                      if i == unk]
        except (NotImplementedError, TypeError, ValueError, KeyError):  # a slow tokenizer
            pieces = [ch for ch in dict.fromkeys(text)
                      if unk in self.tokenizer(ch, add_special_tokens=False)["input_ids"]]
        for piece in pieces:
            if piece and piece != unk_text and piece not in bad:
                bad.append(piece)
        return bad

    # --- sampling -------------------------------------------------------------------------
    def rollout(
        self,
        env: Any,
        prompts: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        keep_activations: bool = False,
    ) -> Rollout:
        """Sample ``n`` completions of each prompt ``prompts (P,)`` of ``env`` (a text task:
        ``env.prompt(i) -> str``). Returns a :class:`Rollout` with ``N = P * n`` rows,
        groups contiguous, ``T`` = the longest completion (at most ``max_new_tokens``)::

            actions (N, T)  completion ids, pad after EOS
            mask    (N, T)  True on completion tokens up to and including EOS
            logp    (N, T)  log-prob of each sampled token at this temperature (0 off mask)
            extra   input_ids (N, Lp+T), attention_mask (N, Lp+T), prompt_length Lp,
                    completions list[str] (decoded, special tokens removed),
                    truncated (N,) bool (no EOS within max_new_tokens)

        All tensors are on the CPU, whatever the model's device. The attention mask is 0
        on left padding and on the padding after each EOS.

        ``keep_activations``: keep what the sampler computed in ``extra["activations"]``
        (a :class:`~rlnb.policies.lm_replay.Tape`), so that the *next* :meth:`log_probs`
        of this rollout, if the weights have not changed in between, runs no forward pass
        (the trainer's single update per batch; :mod:`rlnb.policies.lm_replay`). Ignored
        where the fast engine's replay does not apply (:attr:`replay_supported`). Weights
        replaced or modified in place are detected (tensor identity, version counters),
        except by kernels that do not bump version counters, such as PyTorch's fused
        Adam: call ``log_probs`` before ``optimizer.step()``, as the trainer does.
        """
        validate_sampling_args(n, temperature)
        prompts = torch.as_tensor(prompts, dtype=torch.long).reshape(-1).cpu()
        texts = [env.prompt(int(i)) for i in prompts.tolist()]
        seqs = [self.encode_prompt(t) for t in texts]
        self._check_prompt_texts(texts, seqs, [f"prompt {int(i)}" for i in prompts.tolist()],
                                 self.max_new_tokens)
        keep = keep_activations and self.replay_supported
        out = self._sample(seqs, n, temperature, generator, self.max_new_tokens, keep)
        rollout = Rollout(
            prompts=prompts.repeat_interleave(n),
            actions=out["actions"],
            mask=out["mask"],
            logp=out["logp"],
            group_size=n,
            extra={
                "input_ids": out["input_ids"],
                "attention_mask": out["attention_mask"],
                "prompt_length": out["prompt_length"],
                "completions": self._decode_rows(out["actions"], out["mask"]),
                "truncated": out["truncated"],
            },
        )
        if keep:
            rollout.extra["activations"] = out["tape"]
        if self.record_hidden_states:
            rollout.extra["hidden_states"] = self.hidden_states(rollout)
        return rollout

    def runtime_info(self) -> dict[str, Any]:
        """The engine, device, dtype and (for the fast engine on the CPU) whether the
        fused kernels are in use: each changes the last bits of the numbers."""
        info: dict[str, Any] = {"engine": self.engine, "device": str(self.device),
                                "dtype": str(next(self.model.parameters()).dtype)}
        if self.engine == "fast" and self.device.type == "cpu":
            from rlnb.policies import native

            info["native_kernels"] = native.kernels() is not None
        return info

    @property
    def replay_supported(self) -> bool:
        """Whether ``rollout(..., keep_activations=True)`` can spare the next update its
        forward pass: the fast engine on a float32 Llama-family model on the CPU."""
        if self.engine != "fast" or self.device.type != "cpu":
            return False
        from rlnb.policies import lm_replay

        return lm_replay.supported(self.model)

    def sample_texts(
        self,
        prompts: Sequence[str],
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 4096,
    ) -> list[list[str]]:
        """``n`` sampled completions (decoded) for each prompt string, for evaluation:
        ``result[i][j]`` is sample ``j`` of ``prompts[i]``. Same sampler as ``rollout``;
        prompts are processed ``batch_size // n`` at a time (the draws depend on this
        chunking: same generator, prompts and ``batch_size``, same texts)."""
        texts, _ = self.sample_with_flags(prompts, n, temperature=temperature,
                                          generator=generator, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)
        return texts

    def sample_with_flags(
        self,
        prompts: Sequence[str],
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 4096,
    ) -> tuple[list[list[str]], list[list[bool]]]:
        """Like :meth:`sample_texts`, plus ``truncated[i][j]``: sample ``j`` of prompt ``i``
        reached ``max_new_tokens`` without an EOS token."""
        validate_sampling_args(n, temperature)
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got a single string")
        from rlnb.envs._checks import check_int

        T = self.max_new_tokens if max_new_tokens is None else check_int(
            max_new_tokens, "max_new_tokens", 1, meaning="completion length budget")
        batch_size = check_int(batch_size, "batch_size", 1, meaning="completions sampled at once")
        prompts = list(prompts)
        self.check_prompts(prompts, max_new_tokens=T)
        seqs = [self.encode_prompt(p) for p in prompts]
        per = max(1, batch_size // n)
        texts: list[list[str]] = []
        flags: list[list[bool]] = []
        for start in range(0, len(seqs), per):
            out = self._sample(seqs[start:start + per], n, temperature, generator, T)
            rows = self._decode_rows(out["actions"], out["mask"])
            trunc = out["truncated"].tolist()
            for j in range(len(rows) // n):
                texts.append(rows[j * n:(j + 1) * n])
                flags.append(trunc[j * n:(j + 1) * n])
        return texts, flags

    def _decode_rows(self, actions: torch.Tensor, mask: torch.Tensor) -> list[str]:
        lengths = mask.sum(1).tolist()
        rows = [r[:k] for r, k in zip(actions.tolist(), lengths)]
        backend = _plain_fast_tokenizer(self.tokenizer)
        if backend is not None:  # what batch_decode does, without its per-id type checks
            return [backend.decode(r, skip_special_tokens=True) for r in rows]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def decode(self, rollout: Rollout) -> list[str]:
        """The completions of a rollout as text (special tokens removed)."""
        if "completions" in rollout.extra:
            return list(rollout.extra["completions"])
        return self._decode_rows(rollout.actions, rollout.mask)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Uniform noise on the model's device from ``generator`` (a CPU generator drives a
        device generator seeded from it, so results depend on the generator alone)."""
        if self.device.type == "cpu" or generator is None:
            return torch.rand(shape, generator=generator, device=self.device)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        g = torch.Generator(device=self.device).manual_seed(seed)
        return torch.rand(shape, generator=g, device=self.device)

    def _sample(self, seqs: Sequence[Sequence[int]], n: int, temperature: float,
                generator: torch.Generator | None, T: int,
                keep_activations: bool = False) -> dict[str, Any]:
        # A tiny model's token-by-token loop is many small ops: on CPU one thread runs it
        # faster than several (which mostly wait on each other, and collapse when another
        # process holds a core). Same rule as the trainer's: under a million parameters.
        single = self.device.type == "cpu" and self._num_params < 1_000_000
        threads_before = torch.get_num_threads()
        if single and threads_before != 1:
            torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                out = self._sample_loop(seqs, n, temperature, generator, T, keep_activations)
            # Inference tensors cannot enter autograd later (log_probs embeds input_ids):
            # hand out ordinary copies.
            return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        finally:
            if single and threads_before != 1:
                torch.set_num_threads(threads_before)

    def _sample_loop(self, seqs: Sequence[Sequence[int]], n: int, temperature: float,
                     generator: torch.Generator | None, T: int,
                     keep_activations: bool = False) -> dict[str, Any]:
        P = len(seqs)
        N = P * n
        dev = self.device
        prompt_ids, prompt_mask = _left_pad(seqs, self.pad_id)  # (P, Lp)
        prompt_ids, prompt_mask = prompt_ids.to(dev), prompt_mask.to(dev)
        Lp = prompt_ids.shape[1]
        V = self.model.get_output_embeddings().weight.shape[0]
        predraw = N * T * V <= _PREDRAW_LIMIT
        noise = _gumbel(self._noise((T, N, V), generator)) if predraw else None

        compact = self.engine == "fast"
        rows = torch.arange(N, device=dev)  # the rows the model still computes (B of them)
        raw_tok = torch.full((N, T), self.pad_id, dtype=torch.long, device=dev)
        raw_lp = torch.zeros((N, T), dtype=torch.float32, device=dev)
        toks, lps, start = [], [], 0  # this stretch's samples, (B,) and (B, 1) a step
        done = torch.zeros(N, dtype=torch.bool, device=dev)  # computed rows past their EOS
        tape = None
        if keep_activations:
            from rlnb.policies.lm_replay import Tape

            tape = Tape(list(self.model.parameters()), temperature)
        step = self._stepper(prompt_ids, prompt_mask, n, T, tape)
        # One fused call per step where it applies (rlnb.policies.native): the same draw.
        kernels = None
        if (noise is not None and noise.dtype == torch.float32 and self.top_p >= 1.0
                and dev.type == "cpu"):
            from rlnb.policies import native

            kernels = native.kernels()
        logits = next(step)  # (B, V)
        for t in range(T):
            # --- sample token t of every computed row ---
            if kernels is not None and logits.dtype == torch.float32 and logits.is_contiguous():
                tok, lp, n_done = kernels.sample_step(logits, noise[t], temperature,
                                                      self._eos_t, done)
                toks.append(tok)
                lps.append(lp)
            else:
                logits = logits.float()
                if temperature != 1.0:  # x / 1.0 == x: skipping it changes no bit
                    logits = logits / temperature
                logp_all = torch.log_softmax(logits, dim=-1)  # (B, V)
                scores = _top_p_filter(logp_all, self.top_p) if self.top_p < 1.0 else logp_all
                if noise is not None:
                    g = noise[t]
                else:  # all N rows draw, so that every row keeps its own noise
                    g = _gumbel(self._noise((N, V), generator))
                    g = g if len(rows) == N else g.index_select(0, rows)
                tok = torch.argmax(scores + g, dim=-1)  # (B,)  Gumbel-max
                toks.append(tok)
                lps.append(logp_all.gather(-1, tok[:, None]))
                done = done | self._is_eos(tok)
                n_done = int(done.sum())
            last = t == T - 1 or n_done == len(rows)
            # Rows past their EOS leave the batch once they are an eighth of it (each
            # drop copies the cache); until then they are fed their own ignored samples:
            # every row is computed on its own, so this changes nothing in the others.
            drop = compact and not last and n_done >= max(1, len(rows) // 8)
            if last or drop:  # write this stretch of steps into the (N, T) tables
                raw_tok[rows, start:t + 1] = torch.stack(toks, 1)
                raw_lp[rows, start:t + 1] = torch.cat(lps, 1)
                toks, lps, start = [], [], t + 1
            if last:
                break
            keep = None
            if drop:
                keep = (~done).nonzero().squeeze(1)
                rows, tok, done = rows[keep], tok[keep], done[keep]
                if noise is not None:
                    noise = noise.index_select(1, keep)
            if tape is not None:
                tape.rows.append(rows)
            logits = step.send((tok, keep))
        step.close()
        steps = start
        raw_tok, raw_lp = raw_tok[:, :steps], raw_lp[:, :steps]
        # A token counts up to and including the row's first EOS.
        is_eos = self._is_eos(raw_tok)  # (N, T')
        done_before = (is_eos.cumsum(1) - is_eos.long()) > 0
        mask = ~done_before
        actions = raw_tok.masked_fill_(done_before, self.pad_id)
        logps = raw_lp.masked_fill_(done_before, 0.0)
        finished = is_eos.any(1)
        rep_ids = prompt_ids.repeat_interleave(n, 0)
        rep_mask = prompt_mask.repeat_interleave(n, 0)
        return {
            "actions": actions.cpu(),
            "mask": mask.cpu(),
            "logp": logps.cpu(),
            "input_ids": torch.cat([rep_ids, actions], 1).cpu(),
            "attention_mask": torch.cat([rep_mask, mask.long()], 1).cpu(),
            "prompt_length": Lp,
            "truncated": (~finished).cpu(),
            "tape": tape,
        }

    def _is_eos(self, tok: torch.Tensor) -> torch.Tensor:
        if len(self.eos_ids) == 1:
            return tok == self.eos_ids[0]
        return torch.isin(tok, self._eos_t)

    def _stepper(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, T: int,
                 tape: Any = None):
        """A generator: yields the next-token logits ``(B, V)`` of the rows it computes
        and receives ``(tokens (B,), keep)``. One implementation per engine; all must yield
        the same logits. ``keep`` (indices into the ``B`` rows, or None) drops finished rows
        from the batch; only the fast engine is sent one (:meth:`_Fast.decoder`), and only
        it fills a ``tape``."""
        if self.engine == "fast":
            return _Fast(self.model, self._rope_cache).decoder(prompt_ids, prompt_mask, n, T,
                                                               tape=tape)
        if self.engine == "hf":
            return self._step_hf(prompt_ids, prompt_mask, n)
        return self._step_hf_nocache(prompt_ids, prompt_mask, n)

    def _step_hf(self, prompt_ids, prompt_mask, n):
        from transformers import DynamicCache

        ids = prompt_ids.repeat_interleave(n, 0)
        am = prompt_mask.repeat_interleave(n, 0)
        lengths = am.sum(1)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                         past_key_values=cache, use_cache=True)
        t = 0
        while True:
            tok, _ = yield out.logits[:, -1]
            am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
            out = self.model(input_ids=tok[:, None], attention_mask=am,
                             position_ids=(lengths + t)[:, None], past_key_values=out.past_key_values,
                             use_cache=True)
            t += 1

    def _step_hf_nocache(self, prompt_ids, prompt_mask, n):
        ids = prompt_ids.repeat_interleave(n, 0)
        am = prompt_mask.repeat_interleave(n, 0)
        while True:
            logits = self.model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                                use_cache=False).logits
            tok, _ = yield logits[:, -1]
            ids = torch.cat([ids, tok[:, None]], 1)
            am = torch.cat([am, torch.ones_like(am[:, :1])], 1)

    # --- scoring --------------------------------------------------------------------------
    def completion_logits(self, rollout: Rollout) -> torch.Tensor:
        """Logits ``(N, T, V)`` that score each completion token (position ``Lp - 1 + t``
        predicts completion token ``t``), with gradients."""
        ids = rollout.extra["input_ids"].to(self.device)  # (N, Lp + T)
        Lp = int(rollout.extra["prompt_length"])
        T = rollout.actions.shape[1]
        prompt_mask = rollout.extra["attention_mask"][:, :Lp].to(self.device)
        lengths = prompt_mask.sum(1)
        # Positions: the prompt's from its mask, then the completion's continue from the
        # real prompt length (tokens after EOS get positions too; they are masked out).
        pos = torch.cat([positions(prompt_mask),
                         lengths[:, None] + torch.arange(T, device=self.device)], 1)
        key_valid = torch.cat([prompt_mask.bool(),
                               torch.ones((ids.shape[0], T), dtype=torch.bool, device=self.device)], 1)
        if self.engine != "fast":
            # The last completion token predicts nothing we score: drop it. The LM head runs
            # on the last T positions only where the model can be told so.
            keep = {"logits_to_keep": T} if self._takes_logits_to_keep else {}
            out = self.model(input_ids=ids[:, :-1], attention_mask=key_valid[:, :-1].long(),
                             position_ids=pos[:, :-1], use_cache=False, **keep)
            return out.logits[:, -T:]
        fast = _Fast(self.model, self._rope_cache)
        n = rollout.group_size
        N = ids.shape[0]
        shared = n > 1 and N % n == 0 and torch.equal(
            ids[:, :Lp].view(N // n, n, Lp), ids[::n, None, :Lp].expand(N // n, n, Lp))
        if not shared:
            h, _ = fast.forward(ids[:, :-1], pos[:, :-1], key_valid[:, :-1])
            return fast.final(h[:, Lp - 1:])
        # The prompt once per group (P rows), the completions (N rows) attending to it.
        P = N // n
        hp, kvs = fast.forward(ids[::n, :Lp], pos[::n, :Lp], key_valid[::n, :Lp], return_kv=True)
        h_last = hp[:, -1:].repeat_interleave(n, 0)  # (N, 1, d) predicts token 0
        if T == 1:
            return fast.final(h_last)
        past = [(k[:, None].expand(P, n, *k.shape[1:]).reshape(N, *k.shape[1:]),
                 v[:, None].expand(P, n, *v.shape[1:]).reshape(N, *v.shape[1:])) for k, v in kvs]
        hc, _ = fast.forward(ids[:, Lp:-1], pos[:, Lp:-1], key_valid[:, :-1], past)
        return fast.final(torch.cat([h_last, hc], 1))  # (N, T, V)

    def log_probs(
        self, rollout: Rollout, *, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(logp, entropy)``, each ``(N, T)`` float32, of ``rollout.actions``
        under the current parameters at ``temperature``, with gradients; 0 outside
        ``rollout.mask``, on the rollout's device. Equals ``rollout.logp`` (same weights and
        temperature; with ``top_p < 1`` too, since neither applies the cut).

        Only what the masked tokens depend on is computed: the completion columns after
        the last masked token of every row are dropped and the LM head runs on the scored
        positions alone; the fast engine also runs each group's shared prompt once and
        packs the completion tokens (:meth:`_Fast.score`)."""
        validate_sampling_args(1, temperature)
        out = rollout.actions.device
        mask = rollout.mask.to(out)  # (N, T)
        N, T = mask.shape
        if self.engine == "fast":
            logp_s, ent_s = self._score_fast(rollout, mask, temperature)  # (S,) each
        else:
            logp_s, ent_s = self._score_hf(rollout, mask, temperature)
        # Scatter the scored tokens back; the copies are differentiable, so gradients reach
        # a GPU model from the rollout's device (the CPU, next to rewards and advantages).
        flat = mask.reshape(-1).nonzero().squeeze(1)
        zeros = torch.zeros(N * T, dtype=torch.float32, device=out)
        logp = zeros.index_copy(0, flat, logp_s.to(out)).view(N, T)
        entropy = zeros.index_copy(0, flat, ent_s.to(out)).view(N, T)
        return logp, entropy

    def _token_stats(self, logits: torch.Tensor, actions: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits (S, V)`` -> log-prob of ``actions (S,)`` and entropy, float32 ``(S,)``."""
        logits = logits.float()
        if temperature != 1.0:  # x / 1.0 == x: skipping it changes no bit
            logits = logits / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, actions[:, None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def _score_fast(self, rollout: Rollout, mask: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob and entropy ``(S,)`` of the masked tokens (row-major), fast engine."""
        # The sampler's activations serve one call at most, of the policy that sampled
        # with these very weights: whatever comes next recomputes.
        tape = rollout.extra.get("activations")
        if tape is not None and tape.valid_for(list(self.model.parameters()), temperature):
            del rollout.extra["activations"]
            out = self._score_replay(tape, rollout, mask, temperature)
            if out is not None:
                return out
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
        dev = self.device
        fast = _Fast(self.model, self._rope_cache)
        h = fast.score(prompt_ids.to(dev), prompt_mask.to(dev), n, comp_ids.to(dev),
                       comp_pos.to(dev), slots.to(dev), Tc, src.to(dev))  # (S, d)
        return self._token_stats(fast.final(h), actions[r, t].to(dev), temperature)

    def _score_replay(self, tape: Any, rollout: Rollout, mask: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`_score_fast` from the sampler's activations (:mod:`rlnb.policies.lm_replay`),
        already checked to belong to these weights and temperature; None where the mask
        asks for a token the sampler did not compute."""
        from rlnb.policies import lm_replay

        mask = mask.cpu()
        N, T = mask.shape
        if N != tape.n * tape.prompt_ids.shape[0]:
            return None
        cells, J = lm_replay.cell_index(tape)
        r, t = mask.nonzero(as_tuple=True)
        if t.numel() and int(t.max()) > J:
            return None
        cell = cells[r, (t - 1).clamp_(min=0)]
        if bool(((t > 0) & (cell < 0)).any()):
            return None
        G = tape.prompt_ids.shape[0]
        src = torch.where(t == 0, r // tape.n, G + cell).to(self.device)
        h = lm_replay.replay(tape, src)
        fast = tape.fast
        actions = rollout.actions.cpu()[r, t].to(self.device)
        return self._token_stats(fast.final(h), actions, temperature)

    def _score_hf(self, rollout: Rollout, mask: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob and entropy ``(S,)`` of the masked tokens (row-major), the model's own
        forward over the columns up to the last masked one."""
        T = rollout.actions.shape[1]
        cols = torch.arange(T, device=mask.device)
        # At least one column, so that even an empty result is attached to the parameters.
        Te = max(1, int(torch.where(mask, cols, -1).max()) + 1) if mask.numel() else 1
        Lp = int(rollout.extra["prompt_length"])
        trimmed = Rollout(prompts=rollout.prompts, actions=rollout.actions[:, :Te],
                          mask=mask[:, :Te], logp=rollout.logp[:, :Te],
                          group_size=rollout.group_size,
                          extra={**rollout.extra,
                                 "input_ids": rollout.extra["input_ids"][:, :Lp + Te]})
        logits = self.completion_logits(trimmed)  # (N, Te, V)
        m = trimmed.mask.to(logits.device)
        return self._token_stats(logits[m], trimmed.actions.to(logits.device)[m], temperature)

    # --- internals ------------------------------------------------------------------------
    @torch.no_grad()
    def hidden_states(
        self,
        source: Rollout | Sequence[str],
        layers: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named hidden states of a rollout (prompt + completion, ``extra["input_ids"]``)
        or of a list of texts (left-padded), detached, on the CPU:

        * ``"embed"`` ``(N, L, d)``: the token (+ position) embeddings, input of layer 0;
        * ``"layers.{i}.resid_post"`` ``(N, L, d)``: the residual stream after layer ``i``;
        * ``"final_norm"`` ``(N, L, d)``: the last layer's output after the final norm
          (what the LM head reads);
        * ``"attention_mask"`` ``(N, L)``: 1 on real tokens.

        Footgun: positions run over the whole left-padded sequence. For the completion
        only, take ``[:, Lp:]`` and weight by ``rollout.mask``; padding rows hold garbage.
        """
        if isinstance(source, Rollout):
            ids = source.extra["input_ids"]
            am = source.extra["attention_mask"]
        else:
            if isinstance(source, str):
                raise TypeError("pass a list of texts, not a single string")
            source = list(source)
            self.check_prompts(source, max_new_tokens=0)
            ids, am = _left_pad([self.encode_prompt(t) for t in source], self.pad_id)
        ids, am = ids.to(self.device), am.to(self.device)
        n_layers = self.model.config.num_hidden_layers
        wanted = range(n_layers) if layers is None else [i % n_layers for i in layers]
        out = self.model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                         output_hidden_states=True, use_cache=False)
        hs = out.hidden_states  # embed, layer 0 .. L-2 outputs, final norm (of layer L-1)
        states = {"embed": hs[0]}
        for i in wanted:
            if i < n_layers - 1:
                states[f"layers.{i}.resid_post"] = hs[i + 1]
        if n_layers - 1 in wanted:
            # Hugging Face returns the last layer *after* the final norm; recover the raw
            # residual stream with a hook on the last layer.
            states[f"layers.{n_layers - 1}.resid_post"] = self._last_layer_output(ids, am)
        states["final_norm"] = hs[-1]
        result = {k: v.detach().float().cpu() for k, v in states.items()}
        result["attention_mask"] = am.cpu()
        return result

    def _last_layer_output(self, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        blocks = None
        for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
            obj = self.model
            try:
                for attr in path.split("."):
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            blocks = obj
            break
        if blocks is None:
            raise ValueError(f"cannot find the decoder layers of {type(self.model).__name__}")
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output

        handle = blocks[-1].register_forward_hook(hook)
        try:
            self.model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                       use_cache=False)
        finally:
            handle.remove()
        return captured["h"]

    def extra_repr(self) -> str:
        return (f"model={self.model_ref!r}, engine={self.engine!r}, "
                f"max_new_tokens={self.max_new_tokens}, top_p={self.top_p}")
