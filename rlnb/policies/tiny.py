"""Tiny base models made here, not downloaded: a character tokenizer (and a chat-templated
one, :func:`chat_tokenizer`, for the code paths of instruct models), small Llama / GPT-2 /
Qwen2 configs, and :func:`pretrain_base`, supervised pre-training on a text task to a base
model fit for RL studies (low pass@1, high pass@k), cached on disk.

>>> tok = char_tokenizer("0123456789+=")
>>> tok.decode(tok("12+3=")["input_ids"], skip_special_tokens=True)
'12+3='
>>> cfg = tiny_config("llama", len(tok))
>>> cfg.num_hidden_layers, cfg.hidden_size
(2, 64)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlnb.cache import cache_dir as _cache_dir
from rlnb.policies.lm import LMPolicy, fast_engine_support
from rlnb.policies.lm.fast.forward import Forward as _Fast
from rlnb.threads import torch_threads

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
ARCHS = ("llama", "gpt2", "qwen2")
# Bump when the pre-training recipe changes, so cached base models are not reused.
RECIPE_VERSION = 1


# ======================================================================================
# Tokenizer
# ======================================================================================
def char_tokenizer(alphabet: str, *, model_max_length: int = 64) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: one token per character of
    ``alphabet`` (ids from 4 on, in order of first appearance) after the special tokens
    ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3. Encoding prepends ``<s>``; decoding
    with ``skip_special_tokens=True`` gives the text back, spaces and newlines included.
    Padding is on the left (sampling continues from the right end of every prompt).

    Footguns: load a saved one with ``PreTrainedTokenizerFast.from_pretrained`` —
    ``AutoTokenizer`` forces its own class for model types such as qwen2 and drops spaces
    and newlines. A character outside ``alphabet`` becomes ``<unk>``, which decoding drops.

    >>> tok = char_tokenizer("ab \\n")
    >>> tok("ab a")["input_ids"]
    [1, 4, 5, 6, 4]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet must be a non-empty string of characters, got {alphabet!r}")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    # padding_side must be given to the constructor: set afterwards it is not saved.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=model_max_length)


IM_START, IM_END = "<|im_start|>", "<|im_end|>"
#: ChatML, the turn format of Qwen's instruct models: ``<|im_start|>{role}\n{content}<|im_end|>\n``
#: per message, then ``<|im_start|>assistant\n`` to open the answer. It starts with BOS
#: (Qwen's does not) so that a test can tell a template that writes the special tokens from
#: an encoding that adds them a second time.
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_CHAT_CHARS = "\nassistantsystemuser"  # what CHATML_TEMPLATE writes around the contents


def chat_tokenizer(alphabet: str, *, model_max_length: int = 64) -> Any:
    """:func:`char_tokenizer` made an instruct model's tokenizer: the special tokens
    ``<|im_start|>`` and ``<|im_end|>`` (one id each, after the characters), the ChatML
    :data:`CHATML_TEMPLATE` as its ``chat_template``, and ``<|im_end|>`` as EOS, so a
    completion ends where the assistant's turn does. The characters the template writes
    (newline, the role names) join the vocabulary after ``alphabet``'s. ``save_pretrained``
    writes the template (``chat_template.jinja``) and ``from_pretrained`` reads it back.

    Plain encoding still prepends ``<s>``; the template writes ``<s>`` itself, so encode a
    rendered chat with ``add_special_tokens=False`` (as ``apply_chat_template`` does).
    Give the model ``eos_token_id=tok.eos_token_id`` (:func:`tiny_config`).

    >>> tok = chat_tokenizer("0123456789+=")
    >>> tok.apply_chat_template([{"role": "user", "content": "1+1="}],
    ...                         add_generation_prompt=True, tokenize=False)
    '<s><|im_start|>user\\n1+1=<|im_end|>\\n<|im_start|>assistant\\n'
    >>> tok.eos_token, tok.convert_tokens_to_ids(tok.eos_token) == len(tok) - 1
    ('<|im_end|>', True)
    """
    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet must be a non-empty string of characters, got {alphabet!r}")
    extra = "".join(sorted(set(_CHAT_CHARS) - set(alphabet)))
    tok = char_tokenizer(alphabet + extra, model_max_length=model_max_length)
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.eos_token = IM_END
    tok.chat_template = CHATML_TEMPLATE
    return tok


# ======================================================================================
# Configs
# ======================================================================================
def tiny_config(
    arch: str,
    vocab_size: int,
    n_layer: int = 2,
    d_model: int = 64,
    n_head: int = 4,
    n_kv_head: int = 2,
    max_len: int = 64,
    *,
    d_ff: int | None = None,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> Any:
    """A small ``transformers`` config: ``arch`` one of llama, gpt2, qwen2.

    ``d_ff`` defaults to ``4 * d_model``; GPT-2 has no grouped-query attention and
    ignores ``n_kv_head``. Dropout is 0 (RL compares sampling and scoring log-probs) and
    input and output embeddings are untied. Special-token ids match :func:`char_tokenizer`.
    """
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if d_model % n_head:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
    if arch != "gpt2" and n_head % n_kv_head:
        raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
    d_ff = 4 * d_model if d_ff is None else d_ff
    ids = {"pad_token_id": pad_token_id, "bos_token_id": bos_token_id,
           "eos_token_id": eos_token_id}
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=max_len, n_embd=d_model, n_layer=n_layer,
            n_head=n_head, n_inner=d_ff, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            tie_word_embeddings=False, **ids)
    cls = LlamaConfig if arch == "llama" else Qwen2Config
    return cls(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff,
        num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv_head,
        max_position_embeddings=max_len, attention_dropout=0.0, tie_word_embeddings=False,
        **ids)


def tiny_model(config: Any, *, seed: int = 0) -> Any:
    """``AutoModelForCausalLM.from_config(config)`` initialised from ``seed`` (the global
    random state is left as it was)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


# ======================================================================================
# Supervised pre-training of a base model
# ======================================================================================
def default_cache_dir() -> Path:
    """Where base models are cached: ``$RLNB_CACHE/base_models`` if ``RLNB_CACHE`` is
    set, else ``~/.cache/rlnb/base_models``."""
    return _cache_dir("base_models")


def _task_spec(task: Any) -> dict[str, Any]:
    get_config = getattr(task, "get_config", None)
    if not callable(get_config):
        raise ValueError(
            f"{type(task).__name__} has no get_config(): pretrain_base keys its cache on the "
            "task's settings; give the task a get_config() returning its constructor arguments"
        )
    cls = type(task)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": get_config(),
            "alphabet": task.alphabet}


def pretrain_key(task: Any, settings: dict[str, Any]) -> str:
    """Directory name of a cached base model: ``<task>-<arch>-<hash of everything>``."""
    blob = json.dumps({"recipe": RECIPE_VERSION, "task": _task_spec(task), **settings},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    name = "".join(c for c in type(task).__name__.lower() if c.isalnum())
    return f"{name}-{settings['arch']}-{digest}"


class _Encoder:
    """Token ids of prompts (with BOS) and completions, cached per string."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.prompts: dict[str, list[int]] = {}
        self.completions: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        ids = self.prompts.get(text)
        if ids is None:
            ids = self.prompts[text] = list(self.tok(text)["input_ids"])
        return ids

    def completion(self, text: str) -> list[int]:
        ids = self.completions.get(text)
        if ids is None:
            ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
            ids = self.completions[text] = ids + [self.tok.eos_token_id]
        return ids


def _sft_batch(examples: list[tuple[str, str]], enc: _Encoder, pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``ids (B, L)`` and ``targets (B, L - 1)``: the next token where it is
    a completion or EOS token (the loss positions), -100 on prompt and padding."""
    rows = [(enc.prompt(p), enc.completion(c)) for p, c in examples]
    L = max(len(p) + len(c) for p, c in rows)
    ids = [p + c + [pad_id] * (L - len(p) - len(c)) for p, c in rows]
    targets = [[-100] * len(p) + c + [-100] * (L - len(p) - len(c)) for p, c in rows]
    return torch.tensor(ids), torch.tensor(targets)[:, 1:]


def _sft_loss(model: Any, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the completion tokens (``targets != -100``)."""
    B, L = ids.shape
    inputs = ids[:, :-1]
    pos = torch.arange(L - 1).expand(B, L - 1)
    keep = targets != -100
    if fast_engine_support(model) is None:
        fast = _Fast(model)
        h, _ = fast.forward(inputs, pos, torch.ones_like(inputs, dtype=torch.bool))
        logits = fast.final(h[keep])  # (M, V): only the scored positions
    else:
        logits = model(input_ids=inputs, position_ids=pos, use_cache=False).logits[keep]
    return F.cross_entropy(logits.float(), targets[keep])


def _evaluate(policy: LMPolicy, task: Any, prompts: list[str], n: int, answer_chars: set[str],
              generator: torch.Generator, max_new_tokens: int) -> dict[str, float]:
    """pass@1 (mean score of one sample per (prompt, draw)) and the malformed fraction:
    a completion is malformed when it has no EOS within the budget, is empty, or holds a
    character that no answer uses."""
    texts, truncated = policy.sample_with_flags(prompts, n, generator=generator,
                                                max_new_tokens=max_new_tokens)
    scores, malformed, total = 0.0, 0, 0
    for prompt, row, flags in zip(prompts, texts, truncated):
        for text, trunc in zip(row, flags):
            total += 1
            scores += float(task.score(prompt, text))
            s = text.strip()
            malformed += int(trunc or not s or any(ch not in answer_chars for ch in s))
    return {"pass_at_1": scores / total, "malformed": malformed / total}


def pretrain_base(
    task: Any,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    d_model: int = 64,
    n_head: int = 4,
    n_kv_head: int = 2,
    max_len: int = 64,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    target_malformed: float = 0.01,
    target_pass_at_1: float | None = None,
    eval_every: int = 10,
    eval_samples: int = 512,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    num_threads: int = 1,
) -> Path:
    """Pre-train (SFT) a tiny base model on ``task.sft_examples`` and return its directory.

    The recipe of card 1 ("At LM scale"): a character tokenizer over ``task.alphabet``, a
    tiny ``arch`` model, AdamW at ``lr`` on batches of ``batch_size`` examples, loss on the
    completion and EOS tokens only (never on the prompt). Every ``eval_every`` steps one
    completion is sampled (T=1) for each of ``eval_samples`` (prompt, draw) pairs over the
    task's prompts, giving pass@1 and the fraction of malformed completions (no EOS, empty,
    or a character no answer uses). Training stops at the first evaluation where

    * ``malformed <= target_malformed``, and
    * ``pass@1 >= target_pass_at_1`` (when given),

    or after ``steps`` steps (a warning then says the targets were not met). A base model
    fit for RL has a low pass@1 and a high pass@k. Measured with the defaults (one thread,
    on a shared 2-core machine), pass@k from 256 samples of 128 held-out problems:

    ============================================  =====  =====  =======  ========
    task, settings                                steps  time   pass@1   pass@256
    ============================================  =====  =====  =======  ========
    factor (10k prompts), defaults, seeds 0/1     30-40  7-11s  0.13-0.15  0.99
    addition 2-digit (2k prompts), defaults       50     19s    0.01     0.91
    addition, ``target_pass_at_1=0.2``, seeds 0-2 180-190  25-32s  0.22-0.28  0.99-1.0
    ============================================  =====  =====  =======  ========

    Factor (card 1's task) needs nothing more: the model cannot compute divisibility, so
    once its answers are well formed it holds one answer distribution shared by all
    problems (card 1 reports pass@1 0.10-0.11 and pass@256 0.98-0.99 for its prototype).
    Addition is learnt outright, and fast (pass@1 0.07 -> 0.27 -> 0.55 at steps 100, 150,
    250 of one run): stop it with ``target_pass_at_1=0.2``, which overshoots to ~0.3 on the
    evaluation prompts between two evaluations ``eval_every=10`` steps apart.

    The model and tokenizer are written with ``save_pretrained`` (load them with
    ``LMPolicy(path)``), with ``pretrain.json`` (settings, evaluations, time) beside them,
    into ``cache_dir / "<task>-<arch>-<hash>"``; the hash covers every setting and the
    task's config, so a second call with the same arguments returns at once, and any change
    trains a new model. The default cache is ``$RLNB_CACHE/base_models`` or
    ``~/.cache/rlnb/base_models``. Writing is atomic (a temporary directory renamed into
    place), so an interrupted run leaves no half model behind; a lock per key makes
    concurrent calls for one base (two processes on a fresh cache) train it once.

    Threads: training runs on ``num_threads`` CPU threads (the previous setting is
    restored). One thread is the default: results are then the same on every machine, and
    it is never slow. Two threads are faster for the 512-example batches on an idle 2-core
    machine (a factor step took 71 ms on two threads against 128 ms on one) but many
    times slower when another process is busy on the other core, and the sampling in the
    evaluations always runs on one thread. ``num_threads`` and ``progress`` are not part
    of the cache key; results are deterministic given ``seed`` and ``num_threads``.

    >>> from rlnb.envs.text_tasks import make_task
    >>> path = pretrain_base(make_task("factor", num_prompts=1024, seed=0))  # doctest: +SKIP
    >>> policy = LMPolicy(path)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                    ("eval_samples", eval_samples)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not 0.0 <= target_malformed <= 1.0:
        raise ValueError(f"target_malformed must be in [0, 1], got {target_malformed!r}")
    if target_pass_at_1 is not None and not 0.0 <= target_pass_at_1 <= 1.0:
        raise ValueError(f"target_pass_at_1 must be in [0, 1] or None, got {target_pass_at_1!r}")
    settings = {
        "arch": arch, "n_layer": n_layer, "d_model": d_model, "n_head": n_head,
        "n_kv_head": n_kv_head, "max_len": max_len, "steps": steps, "batch_size": batch_size,
        "lr": lr, "seed": seed, "target_malformed": target_malformed,
        "target_pass_at_1": target_pass_at_1, "eval_every": eval_every,
        "eval_samples": eval_samples,
    }
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / pretrain_key(task, settings)
    if (final / "config.json").exists() and (final / "pretrain.json").exists():
        return final

    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an integer >= 1, got {num_threads!r}")
    root.mkdir(parents=True, exist_ok=True)
    with _key_lock(root, final.name):  # a concurrent twin trains it once; this one waits
        if (final / "config.json").exists() and (final / "pretrain.json").exists():
            return final
        return _train_and_write(task, settings, progress, tqdm, num_threads, root, final)


@contextlib.contextmanager
def _key_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive advisory lock on ``root/.lock-<name>`` (``fcntl.flock``): two processes
    that need the same base (two reproductions run at once on a fresh cache) train it once,
    the second waiting and then loading it. A no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root / f".lock-{name}", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_and_write(task: Any, settings: dict[str, Any], progress: bool, tqdm: Any,
                     num_threads: int, root: Path, final: Path) -> Path:
    t0 = time.perf_counter()
    with torch_threads(num_threads):
        model, tok, record = _pretrain(task, settings, progress, tqdm)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["num_threads"] = num_threads

    tmp = root / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    from transformers.utils import logging as hf_logging

    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" for a 0.5 MB model
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=2, default=str))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "pretrain.json").exists():  # not a concurrent twin: a real error
                raise
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pretrain(task: Any, settings: dict[str, Any], progress: bool, tqdm: Any
              ) -> tuple[Any, Any, dict[str, Any]]:
    s = settings
    tok = char_tokenizer(task.alphabet, model_max_length=s["max_len"])
    config = tiny_config(s["arch"], len(tok), s["n_layer"], s["d_model"], s["n_head"],
                         s["n_kv_head"], s["max_len"], pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = tiny_model(config, seed=s["seed"]).train()
    data_gen = torch.Generator().manual_seed(s["seed"])
    eval_gen = torch.Generator().manual_seed(s["seed"] + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    enc = _Encoder(tok)

    # Evaluation set: the task's prompts, cycled to eval_samples (prompt, draw) pairs.
    P = min(task.num_prompts, s["eval_samples"])
    eval_prompts = [task.prompt(i) for i in range(P)]
    draws = math.ceil(s["eval_samples"] / P)
    probe = [c for _, c in task.sft_examples(1024, torch.Generator().manual_seed(0))]
    answer_chars = {ch for c in probe for ch in c}
    # Room to see a runaway answer, at a small cost (completion tokens include the EOS).
    eval_tokens = max(4, 2 * max(len(enc.completion(c)) for c in probe))
    policy = LMPolicy.from_model(model, tok, max_new_tokens=eval_tokens)

    history: list[dict[str, Any]] = []
    met = False
    bar = tqdm(total=s["steps"], desc=f"pre-training {type(task).__name__}", unit="step",
               disable=not progress)
    step = 0
    try:
        for step in range(1, s["steps"] + 1):
            ids, targets = _sft_batch(task.sft_examples(s["batch_size"], data_gen), enc,
                                      tok.pad_token_id)
            loss = _sft_loss(model, ids, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.update(1)
            if step % s["eval_every"] == 0 or step == s["steps"]:
                model.eval()
                ev = _evaluate(policy, task, eval_prompts, draws, answer_chars, eval_gen,
                               eval_tokens)
                model.train()
                history.append({"step": step, "loss": loss.item(), **ev})
                bar.set_postfix(loss=f"{loss.item():.3f}", pass1=f"{ev['pass_at_1']:.3f}",
                                malformed=f"{ev['malformed']:.3f}", refresh=False)
                met = ev["malformed"] <= s["target_malformed"] and (
                    s["target_pass_at_1"] is None or ev["pass_at_1"] >= s["target_pass_at_1"])
                if met:
                    break
    finally:
        bar.close()
    model.eval()
    if not met:
        last = history[-1] if history else {}
        warnings.warn(
            f"pretrain_base stopped at the step budget ({s['steps']}) before reaching its "
            f"targets (malformed <= {s['target_malformed']}, pass@1 >= "
            f"{s['target_pass_at_1']}); last evaluation: {last}. Raise steps or relax the "
            "targets", stacklevel=3)
    spec = _task_spec(task)  # the key hashes all of it; the record keeps a summary
    spec["config"] = {k: v for k, v in spec["config"].items() if k not in ("prompts", "answers")}
    spec["num_prompts"] = task.num_prompts
    record = {"settings": settings, "task": spec, "recipe": RECIPE_VERSION,
              "steps_run": step, "targets_met": met, "history": history,
              "final": history[-1] if history else None}
    return model, tok, record
