"""The sampler: ``n`` completions per prompt, Gumbel-max on an explicit generator.

The loop is the same for every engine; what changes is the *stepper*, a generator that
yields next-token logits ``(B, V)`` and receives ``(tokens (B,), keep)``. The reference
steppers are here: the model's own forward with Hugging Face's KV cache (:func:`hf_steps`,
``engine="hf"``) and the whole sequence re-run at every token (:func:`hf_nocache_steps`,
``engine="hf-nocache"``: slow, the proof that the caches are right). The fast engine's
decoder (:meth:`rlnb.policies.lm.fast.FastEngine.decoder`) also drops finished rows from
the batch (``compact``) and can keep its activations on a tape for the update.

Same generator state, same completions: the noise of a whole rollout is drawn at once in
one call where it is small enough (``PREDRAW_LIMIT``), else per step for all ``N`` rows, so
that each row keeps its own noise whichever rows are still computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlnb import allocator
from rlnb.policies.lm import fast
from rlnb.policies.lm.layout import left_pad, positions
from rlnb.threads import torch_threads

#: A large model's sampler hands the C heap's freed memory back every this many tokens
#: (``sample(trim_every=...)``).
TRIM_EVERY = 4

# Pre-draw the sampling noise of a whole rollout at once when it is at most this many
# numbers (one call instead of one per token); larger vocabularies draw per step.
PREDRAW_LIMIT = 1 << 22


def top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf the tokens outside the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2019). ``logp (B, V)``; the top token always stays."""
    sorted_lp, order = torch.sort(logp, dim=-1, descending=True)
    cum = sorted_lp.exp().cumsum(-1)
    drop_sorted = (cum - sorted_lp.exp()) >= top_p  # mass before this token already enough
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logp.masked_fill(drop, float("-inf"))


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel noise from uniform noise ``u``, computed in ``u``'s memory."""
    return u.clamp_(1e-20, 1.0).log_().neg_().log_().neg_()



def gumbel_into(buf: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel noise drawn into ``buf`` in place: the numbers of
    ``gumbel(uniform_noise(buf.shape, generator, buf.device))`` without a new tensor (a
    large vocabulary's per-step draws would otherwise allocate several (rows, vocabulary)
    temporaries every token)."""
    if buf.device.type == "cpu" or generator is None:
        torch.rand(buf.shape, generator=generator, out=buf)
    else:
        buf.copy_(uniform_noise(tuple(buf.shape), generator, buf.device))
    return gumbel(buf)


def uniform_noise(shape: tuple[int, ...], generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Uniform noise on ``device`` from ``generator`` (a CPU generator drives a device
    generator seeded from it, so results depend on the generator alone)."""
    if device.type == "cpu" or generator is None:
        return torch.rand(shape, generator=generator, device=device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=g, device=device)


def eos_mask(eos_ids: Sequence[int], eos_t: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """Where ``tok`` is one of the EOS ids (``eos_t``: the same ids as a tensor)."""
    if len(eos_ids) == 1:
        return tok == eos_ids[0]
    return torch.isin(tok, eos_t)


def sample(
    stepper: Callable[..., Any],
    seqs: Sequence[Sequence[int]],
    n: int,
    T: int,
    *,
    temperature: float,
    generator: torch.Generator | None,
    top_p: float,
    pad_id: int,
    eos_ids: Sequence[int],
    eos_t: torch.Tensor,
    vocab_size: int,
    device: torch.device,
    compact: bool = False,
    tape: Any = None,
    one_thread: bool = False,
    trim_every: int = 0,
) -> dict[str, Any]:
    """``n`` completions of at most ``T`` tokens for each prompt of ``seqs`` (token ids),
    under ``torch.inference_mode``: actions, mask, logp ``(N, T')``, input_ids and
    attention_mask ``(N, Lp + T')``, prompt_length, truncated, and ``tape``.

    ``stepper(prompt_ids, prompt_mask, n, T, tape)`` makes the stepper; ``compact``: it
    takes ``keep`` (rows to go on with) and finished rows leave the batch. ``one_thread``:
    run on one thread (a tiny model's token-by-token loop is many small ops: on CPU one
    thread runs it faster than several, which mostly wait on each other). ``trim_every``:
    call :func:`rlnb.allocator.trim` every that many tokens (0: never). On a large model
    each token frees tens of MB of temporaries ((rows, vocabulary) logits and noise) that
    glibc serves from a heap it does not shrink: measured on a 2-layer model of
    Qwen2.5-0.5B's widths, 32 rows grew the process by 15-25 MB a token, without bound,
    and by nothing with a trim every token."""
    with torch_threads(1 if one_thread else None), torch.inference_mode():
        out = _sample_loop(stepper, seqs, n, T, temperature, generator, top_p, pad_id,
                           eos_ids, eos_t, vocab_size, device, compact, tape, trim_every)
    # Inference tensors cannot enter autograd later (log_probs embeds input_ids): hand
    # out ordinary copies.
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def _sample_loop(stepper, seqs, n, T, temperature, generator, top_p, pad_id, eos_ids, eos_t,
                 vocab_size, device, compact, tape, trim_every=0) -> dict[str, Any]:
    P = len(seqs)
    N = P * n
    dev = device
    prompt_ids, prompt_mask = left_pad(seqs, pad_id)  # (P, Lp)
    prompt_ids, prompt_mask = prompt_ids.to(dev), prompt_mask.to(dev)
    Lp = prompt_ids.shape[1]
    V = vocab_size
    predraw = N * T * V <= PREDRAW_LIMIT
    noise = gumbel(uniform_noise((T, N, V), generator, dev)) if predraw else None

    rows = torch.arange(N, device=dev)  # the rows the model still computes (B of them)
    raw_tok = torch.full((N, T), pad_id, dtype=torch.long, device=dev)
    raw_lp = torch.zeros((N, T), dtype=torch.float32, device=dev)
    toks, lps, start = [], [], 0  # this stretch's samples, (B,) and (B, 1) a step
    done = torch.zeros(N, dtype=torch.bool, device=dev)  # computed rows past their EOS
    step = stepper(prompt_ids, prompt_mask, n, T, tape)
    # One fused call per step where it applies (rlnb.policies.lm.fast.native), with any
    # engine: the same draw.
    kernels = None
    if top_p >= 1.0 and dev.type == "cpu":
        kernels = fast.kernels()
    # Per-step noise (a large vocabulary) is drawn for all N rows into one buffer.
    step_noise = None if predraw else torch.empty((N, V), device=dev)
    logits = next(step)  # (B, V)
    for t in range(T):
        # --- sample token t of every computed row ---
        if noise is not None:
            g = noise[t]
        else:  # all N rows draw, so that every row keeps its own noise
            g = gumbel_into(step_noise, generator)
            g = g if len(rows) == N else g.index_select(0, rows)
        if (kernels is not None and logits.dtype == torch.float32 == g.dtype
                and logits.is_contiguous()):
            tok, lp, n_done = kernels.sample_step(logits, g, temperature, eos_t, done)
            toks.append(tok)
            lps.append(lp)
        else:
            logits = logits.float()
            if temperature != 1.0:  # x / 1.0 == x: skipping it changes no bit
                logits = logits / temperature
            logp_all = torch.log_softmax(logits, dim=-1)  # (B, V)
            scores = top_p_filter(logp_all, top_p) if top_p < 1.0 else logp_all
            tok = torch.argmax(scores + g, dim=-1)  # (B,)  Gumbel-max
            toks.append(tok)
            lps.append(logp_all.gather(-1, tok[:, None]))
            done = done | eos_mask(eos_ids, eos_t, tok)
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
        if trim_every and t % trim_every == trim_every - 1:
            allocator.trim()
        logits = step.send((tok, keep))
    step.close()
    steps = start
    raw_tok, raw_lp = raw_tok[:, :steps], raw_lp[:, :steps]
    # A token counts up to and including the row's first EOS.
    is_eos = eos_mask(eos_ids, eos_t, raw_tok)  # (N, T')
    done_before = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = ~done_before
    actions = raw_tok.masked_fill_(done_before, pad_id)
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


#: Prefill logits above which the reference stepper computes the last position's alone.
PREFILL_LOGITS = 2 ** 24


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (the LM head on the last
    positions only)."""
    return "logits_to_keep" in _forward_parameters(model)


def _forward_parameters(model: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_keyword(model: Any) -> str:
    """The name the model's forward takes its KV cache under: ``cache`` (transformers
    5.x) or ``past_key_values`` (earlier)."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def kv_cache(model: Any, max_len: int):
    """A KV cache for ``max_len`` positions, allocated once (transformers' ``StaticCache``).

    Hugging Face's default ``DynamicCache`` grows by concatenation: every token re-allocates
    each layer's keys and values one position longer, and those long-lived blocks, between
    the step's large freed temporaries, fragment the C heap (measured on a 0.5B model: the
    heap, not the tensors, was the sampling peak). Models whose config the static cache does
    not take keep the dynamic one."""
    from transformers import DynamicCache, StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return DynamicCache(config=model.config)


def hf_steps(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int,
             T: int, keeps_logits: bool | None = None, cache_kw: str | None = None):
    """The reference stepper: the model's own forward with a KV cache of
    ``prompt length + T`` positions allocated up front (:func:`kv_cache`,
    ``engine="hf"``). Every row is computed to the end (``keep`` is ignored).
    ``keeps_logits``: whether the forward takes ``logits_to_keep``
    (:func:`takes_logits_to_keep`), ``cache_kw`` the cache's keyword
    (:func:`cache_keyword`); both read from the model when None."""
    ids = prompt_ids.repeat_interleave(n, 0)
    am = prompt_mask.repeat_interleave(n, 0)
    lengths = am.sum(1)
    cache = kv_cache(model, ids.shape[1] + T)
    kw = cache_kw or cache_keyword(model)
    # Only the last position's logits are sampled from: a large prefill (rows x prompt
    # length x vocabulary over 2**24 logits) asks for that one alone.
    vocab = model.get_output_embeddings().weight.shape[0]
    if keeps_logits is None:
        keeps_logits = takes_logits_to_keep(model)
    last_only = ids.numel() * vocab > PREFILL_LOGITS and keeps_logits
    out = model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                use_cache=True, **{kw: cache},
                **({"logits_to_keep": 1} if last_only else {}))
    # The whole attention mask, filled in a column a token: no re-allocation either.
    full = torch.ones((am.shape[0], am.shape[1] + T), dtype=am.dtype, device=am.device)
    full[:, :am.shape[1]] = am
    t = 0
    while True:
        tok, _ = yield out.logits[:, -1]
        if t >= T:
            raise RuntimeError(f"hf_steps was asked for more than T={T} tokens")
        out = model(input_ids=tok[:, None], attention_mask=full[:, :am.shape[1] + t + 1],
                    position_ids=(lengths + t)[:, None], use_cache=True, **{kw: cache})
        t += 1


def hf_nocache_steps(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int):
    """The whole sequence re-run at every token (``engine="hf-nocache"``): slow, the
    reference that proves the caches right."""
    ids = prompt_ids.repeat_interleave(n, 0)
    am = prompt_mask.repeat_interleave(n, 0)
    while True:
        logits = model(input_ids=ids, attention_mask=am, position_ids=positions(am),
                       use_cache=False).logits
        tok, _ = yield logits[:, -1]
        ids = torch.cat([ids, tok[:, None]], 1)
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
