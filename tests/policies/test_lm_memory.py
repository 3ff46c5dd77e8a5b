"""Memory that fits a real model: the LM head in chunks (no (S, V) float32 logits at once),
gradient checkpointing on the reference path."""

import pytest
import torch

from rlnb.envs.text import ExactMatchTask
from rlnb.policies import LMPolicy
from rlnb.policies.lm import scoring
from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

ALPHABET = "0123456789+="
TASK = ExactMatchTask(["1+2=", "12+3=", "7+7=", "3+40="], ["3", "15", "14", "43"])


def _policy(arch="llama", engine="auto", vocab_pad=0, **options):
    tok = char_tokenizer(ALPHABET)
    cfg = tiny_config(arch, len(tok) + vocab_pad)
    torch.manual_seed(0)
    return LMPolicy.from_model(tiny_model(cfg), tok, max_new_tokens=5, engine=engine, **options)


def _scale_close(a, b, rel=1e-5):
    assert a.shape == b.shape
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max()) / scale


def _rollout(pi, seed=0):
    return pi.rollout(TASK, torch.arange(4), 3, generator=torch.Generator().manual_seed(seed))


def _grads(pi, rollout):
    pi.zero_grad(set_to_none=True)
    logp, ent = pi.log_probs(rollout)
    (logp.sum() + 0.1 * ent.sum()).backward()
    return logp.detach(), ent.detach(), [p.grad.clone() for p in pi.parameters()
                                         if p.grad is not None]


def test_chunked_token_stats_equals_token_stats_in_values_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    h = torch.randn(23, 8, requires_grad=True)
    a = torch.randint(0, 50, (23,))
    ref = scoring.token_stats(head(h), a, 0.7)
    (ref[0].sum() + ref[1].sum()).backward()
    ref_grads = [h.grad.clone(), head.weight.grad.clone()]
    h.grad, head.weight.grad = None, None
    out = scoring.chunked_token_stats(head, h, a, 0.7, 50, chunk_elements=5 * 50)  # 5 rows
    (out[0].sum() + out[1].sum()).backward()
    for x, y in zip(out, ref):
        _scale_close(x.detach(), y.detach())
    for x, y in zip([h.grad, head.weight.grad], ref_grads):
        _scale_close(x, y)
    with torch.no_grad():  # no autograd: plain chunks, same numbers
        for x, y in zip(scoring.chunked_token_stats(head, h, a, 0.7, 50, 250), ref):
            _scale_close(x, y.detach())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_large_head_equals_token_stats_in_values_and_gradients(temperature, with_bias):
    """A large head (:class:`scoring.LinearHead`) runs its chunks through one autograd
    function with the backward written out: log-probs, entropies and the gradients of
    the hidden states, the weight and the bias equal plain autograd's through
    ``token_stats``, for any weighting of the two outputs."""
    torch.manual_seed(1)
    W = (0.5 * torch.randn(300, 16)).requires_grad_()
    b = torch.randn(300, requires_grad=True) if with_bias else None
    h = torch.randn(41, 16, requires_grad=True)
    a = torch.randint(0, 300, (41,))
    u, v = torch.randn(41), torch.randn(41)
    head = scoring.LinearHead(W, b)
    params = [h, W] + ([b] if with_bias else [])
    ref = scoring.token_stats(head(h), a, temperature)
    ref_grads = torch.autograd.grad((ref[0] * u).sum() + (ref[1] * v).sum(), params)
    out = scoring.chunked_token_stats(head, h, a, temperature, 300, chunk_elements=6 * 300)
    grads = torch.autograd.grad((out[0] * u).sum() + (out[1] * v).sum(), params)
    for x, y in zip(out, ref):
        _scale_close(x.detach(), y.detach())
    for x, y in zip(grads, ref_grads):
        _scale_close(x, y)
    frozen = scoring.LinearHead(W.detach(), None)  # a frozen head (LoRA): h's gradient only
    g, = torch.autograd.grad(scoring.chunked_token_stats(frozen, h, a, temperature, 300,
                                                         chunk_elements=6 * 300)[1].sum(), [h])
    g_ref, = torch.autograd.grad(scoring.token_stats(frozen(h), a, temperature)[1].sum(), [h])
    _scale_close(g, g_ref)


@pytest.mark.parametrize("engine", ["fast", "hf"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_log_probs_never_hold_the_full_logits(arch, engine, monkeypatch):
    """With a chunk of 7 positions the LM head never sees more than 7 rows at once (its
    outputs are recorded), and log-probs, entropies and gradients equal the unchunked
    ones at the scale of the values."""
    pi = _policy(arch, engine, vocab_pad=500)
    r = _rollout(pi)
    assert int(r.mask.sum()) > 14  # several chunks
    full = _grads(pi, r)
    V = pi.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", 7 * V)
    rows = []
    pi.model.get_output_embeddings().register_forward_hook(
        lambda m, i, out: rows.append(out.reshape(-1, out.shape[-1]).shape[0]))
    r2 = _rollout(pi)
    rows.clear()
    chunked = _grads(pi, r2)
    if engine == "hf":  # the fast engine applies the head's weight without the module call
        assert rows and max(rows) <= 7, rows
    for x, y in zip(chunked[:2], full[:2]):
        _scale_close(x, y)
    for x, y in zip(chunked[2], full[2]):
        _scale_close(x, y)


def test_hidden_path_equals_the_models_own_logits(monkeypatch):
    """The reference path scores from the base model's hidden states through the LM head;
    a model whose head does more (soft-capping) falls back to its own logits: both give
    the same log-probs."""
    pi = _policy("llama", "hf")
    assert scoring.hidden_path_supported(pi.model)
    r = _rollout(pi)
    with torch.no_grad():
        a = pi.log_probs(r)
        monkeypatch.setattr(scoring, "hidden_path_supported", lambda model: False)
        b = pi.log_probs(r)
    for x, y in zip(a, b):
        _scale_close(x, y)
    _scale_close(a[0], r.logp, rel=1e-4)


def test_soft_capped_heads_use_the_models_logits():
    pi = _policy("llama", "hf")
    pi.model.config.final_logit_softcapping = 30.0
    assert not scoring.hidden_path_supported(pi.model)


def _saved_bytes(pi, rollout):
    """Bytes autograd keeps for the backward pass of one log_probs call (the graph's saved
    activations; parameters excluded)."""
    params = {p.data_ptr() for p in pi.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pi.log_probs(rollout)
    return sum(saved)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(arch):
    pi = _policy(arch, "hf")
    r = _rollout(pi)
    plain_saved = _saved_bytes(pi, r)
    plain = _grads(pi, r)
    pi.enable_gradient_checkpointing()
    assert pi.gradient_checkpointing and pi.runtime_info()["gradient_checkpointing"]
    ckpt_saved = _saved_bytes(pi, r)
    ckpt = _grads(pi, r)
    # The layers' activations are not kept for the backward pass (recomputed there).
    assert ckpt_saved < 0.6 * plain_saved, (ckpt_saved, plain_saved)
    for x, y in zip(ckpt[:2], plain[:2]):
        _scale_close(x, y)
    for x, y in zip(ckpt[2], plain[2]):
        _scale_close(x, y)
    # Dropout modules inside the layers stay in eval mode.
    assert not any(m.training for m in pi.model.modules() if isinstance(m, torch.nn.Dropout))


def test_gradient_checkpointing_switches_the_fast_engine_off():
    pi = _policy("llama", "auto")
    assert pi.engine == "fast"
    pi.enable_gradient_checkpointing()
    assert pi.engine == "hf"
    with pytest.raises(ValueError, match="engine='fast' has no activation checkpointing"):
        _policy("llama", "fast").enable_gradient_checkpointing()


def test_trainer_turns_gradient_checkpointing_on(tmp_path):
    from rlnb.train import TrainConfig, Trainer

    pi = _policy("llama", "auto")
    cfg = TrainConfig(max_steps=2, num_prompts_per_step=2, num_generations=3,
                      gradient_checkpointing=True, progress_bar=False)
    Trainer(pi, TASK, cfg).train()
    assert pi.gradient_checkpointing


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_reference_sampler_allocates_its_kv_cache_once(arch, monkeypatch):
    """The ``hf`` engine's KV cache holds the prompt and every new token from the start:
    its key/value tensors are the same storage at every step (no per-token re-allocation,
    which fragments the C heap at full scale), and it samples what the no-cache engine
    samples (the equality itself: test_kv_cache_sampling_equals_no_cache_sampling)."""
    from transformers import StaticCache

    from rlnb.policies.lm import sampling

    made = []
    real = sampling.kv_cache

    def recording(model, max_len):
        made.append((real(model, max_len), max_len))
        return made[-1][0]

    monkeypatch.setattr(sampling, "kv_cache", recording)
    pi = _policy(arch, engine="hf")
    pi.max_new_tokens = 6
    storages = []
    real_forward = pi.model.forward

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        layer = made[-1][0].layers[0]
        storages.append((layer.keys.data_ptr(), layer.values.data_ptr()))
        return out

    monkeypatch.setattr(pi.model, "forward", forward)
    r = _rollout(pi)
    (cache, max_len), = made
    assert isinstance(cache, StaticCache)
    assert max_len == r.extra["prompt_length"] + 6
    assert len(storages) == r.actions.shape[1] and len(set(storages)) == 1
    ref = _policy(arch, engine="hf-nocache")
    ref.max_new_tokens = 6
    assert torch.equal(_rollout(ref).actions, r.actions)


def test_large_models_hand_freed_heap_back_while_sampling(monkeypatch):
    """Above rlnb.allocator.MAX_PARAMS (on the CPU) the sampler calls allocator.trim every
    TRIM_EVERY tokens, and the same completions come out; small models never trim."""
    from rlnb import allocator
    from rlnb.policies.lm import sampling

    calls = []
    monkeypatch.setattr(allocator, "trim", lambda: calls.append(1) or True)
    pi = _policy(engine="hf")
    pi.max_new_tokens = 9
    small = _rollout(pi)
    assert calls == []
    monkeypatch.setattr(allocator, "MAX_PARAMS", 1)
    large = _rollout(pi)
    steps = large.actions.shape[1]
    assert len(calls) == (steps - 1) // sampling.TRIM_EVERY > 0
    assert torch.equal(large.actions, small.actions)
