"""``LMPolicy``: a Hugging Face causal LM and its tokenizer on the policy protocol.

This file holds the policy itself (options, special tokens, prompt checks, serialization)
and the two calls the trainer makes, each routed to the reference path or to the fast
engine: sampling (:mod:`rlnb.policies.lm.sampling`, with a stepper per engine) and scoring
(:mod:`rlnb.policies.lm.scoring`, or :class:`rlnb.policies.lm.fast.FastEngine`). See
:mod:`rlnb.policies.lm` for the layout of a rollout and the footguns.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rlnb import allocator, threads
from rlnb.policies.base import Policy, Rollout, validate_sampling_args
from rlnb.policies.lm import hidden, precision, sampling, scoring
from rlnb.policies.lm import lora as adapters
from rlnb.policies.lm.fast import FastEngine, fast_engine_support
from rlnb.policies.lm.layout import left_pad
from rlnb.policies.lm.load import (
    check_device,
    dtype_name,
    load_model,
    load_tokenizer,
    resolve_dtype,
    special_tokens,
)
from rlnb.policies.lm.text import PromptChecker, decode_rows

ENGINES = ("auto", "fast", "hf", "hf-nocache")

#: ``engine="auto"`` runs the fast engine on models up to this many parameters (the tiny
#: models it was written for, ~0.1-10M); a larger model runs on its own forward, where the
#: fast engine's fused weight copies (q|k|v, gate|up, the folded LM head: about the size
#: of the model) would add to the peak memory of every call.
AUTO_FAST_MAX_PARAMS = 100_000_000


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
        mixed_precision: with a bf16/fp16 ``dtype``, keep float32 master weights and
            optimiser state and compute in ``dtype`` (``torch.autocast``), as accelerate
            and DeepSpeed train: the default (None) for bf16/fp16. ``False`` stores the
            weights in ``dtype`` itself, where updates smaller than the dtype's spacing
            are lost (:mod:`rlnb.policies.lm.precision`). Ignored for float32.
        lora: a ``peft.LoraConfig`` (or a dict of its fields): train LoRA adapters only,
            the base model frozen (:mod:`rlnb.policies.lm.lora`). ``model`` may also be a
            directory of adapters written by ``save_pretrained`` of such a policy.
        chat_template: render prompts through the tokenizer's chat template (a user
            message, after the optional ``system_prompt``). None: when the tokenizer has
            one; True: require one; False: plain text.
        system_prompt: a system message before each prompt (chat templates only).
        engine: ``"auto"`` (the functional "fast" forward for llama/qwen2/mistral/gpt2
            models of up to :data:`AUTO_FAST_MAX_PARAMS` parameters in float32, the
            model's own forward otherwise), ``"fast"``, ``"hf"`` (model forward with
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
        mixed_precision: bool | None = None,
        lora: Any = None,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        dev = check_device(device if device is not None else
                            ("cuda" if torch.cuda.is_available() else "cpu"))
        dt = resolve_dtype(dtype, dev)
        mixed = precision.resolve_mixed_precision(mixed_precision, dt)
        weights_dtype = torch.float32 if mixed else dt
        adapter_dir = None  # a directory of LoRA adapters, loaded onto its base model
        if isinstance(model, (str, os.PathLike)) and adapters.adapter_dir_exists(model):
            if lora is not None:
                raise ValueError(f"{str(model)!r} holds LoRA adapters with their own settings "
                                 "(adapter_config.json); do not pass lora= as well")
            adapter_dir = Path(model).expanduser().resolve()
            base, lora = adapters.read_adapter_dir(adapter_dir)
            hf, tok = load_model(base, dev, weights_dtype)
            if (adapter_dir / "tokenizer_config.json").exists():
                tok = load_tokenizer(adapter_dir)
        else:
            hf, tok = load_model(model, dev, weights_dtype)
        local = Path(model).expanduser()
        # A local directory is recorded as an absolute path, so a run directory rebuilds
        # the policy from any working directory; a hub name is kept as given.
        ref = str(local.resolve()) if local.is_dir() else str(model)
        self._setup(hf, tok, ref, dev, dtype, max_new_tokens, top_p, hidden_states, engine,
                    compute_dtype=dt if mixed else None, lora=lora,
                    chat_template=chat_template, system_prompt=system_prompt)
        self._mixed_option = mixed_precision
        self._adapter_dir = adapter_dir
        if adapter_dir is not None:
            adapters.load_adapter_weights(self._peft, adapter_dir)
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
        lora: Any = None,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
    ) -> LMPolicy:
        """Wrap an already loaded model (kept on its device and dtype, so no mixed
        precision: load it in float32 and use ``LMPolicy(dir, dtype="bfloat16")`` for
        that). Such a policy has no directory to rebuild from: ``save_pretrained`` it
        before training with a ``run_dir``. ``lora`` injects adapters into ``model``
        itself."""
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
                    dtype_name(next(model.parameters()).dtype), max_new_tokens, top_p,
                    hidden_states, engine, lora=lora, chat_template=chat_template,
                    system_prompt=system_prompt)
        self._device_option = str(self.device)
        self._mixed_option = None
        self._adapter_dir = None
        return self

    def _setup(self, model, tokenizer, ref, device, dtype, max_new_tokens, top_p,
               hidden_states, engine, *, compute_dtype=None, lora=None, chat_template=None,
               system_prompt=None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if chat_template is not None and not isinstance(chat_template, bool):
            raise TypeError(f"chat_template must be True, False or None, got {chat_template!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a str or None, got "
                            f"{type(system_prompt).__name__}")
        from rlnb.checks import check_int, check_number

        max_new_tokens = check_int(max_new_tokens, "max_new_tokens", 1,
                                   meaning="completion length budget")
        top_p = check_number(top_p, "top_p", 0, 1, low_open=True, meaning="nucleus sampling")
        if not isinstance(hidden_states, bool):
            raise TypeError(f"hidden_states must be True or False, got {hidden_states!r}")
        #: The compute dtype of mixed precision (weights in float32), or None.
        self.compute_dtype = compute_dtype
        self._peft = None  # the peft wrapper of a LoRA policy
        self._lora = None
        if lora is not None:
            self._lora = adapters.lora_config(lora)
            # Kept out of the module tree (its modules are this model's, registered once).
            object.__setattr__(self, "_peft", adapters.add_adapters(model, self._lora))
            model = self._peft.get_base_model()  # the same model, LoRA layers injected
        self._trainable = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
        self._checkpointed: list[torch.nn.Module] = []  # layers recomputed in the backward
        self.chat_template, self.system_prompt = chat_template, system_prompt
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_ref = ref
        self.device = torch.device(device)
        self._dtype_option = None if dtype is None else (
            dtype_name(dtype) if isinstance(dtype, torch.dtype) else str(dtype))
        self.max_new_tokens = max_new_tokens
        self.top_p = float(top_p)
        self.record_hidden_states = bool(hidden_states)
        self.engine_option = engine
        why_not = fast_engine_support(model)
        if why_not is None and compute_dtype is not None:
            why_not = ("mixed precision computes under torch.autocast, which the fast "
                       "engine's fused kernels do not follow")
        if why_not is None and self._peft is not None:
            why_not = "LoRA layers run only in the model's own forward"
        if engine == "fast" and why_not is not None:
            raise ValueError(f"engine='fast' cannot run this model: {why_not}; use engine='hf'")
        self._num_params = num_params = sum(p.numel() for p in model.parameters())
        # Above this size the fast engine's fused copies of the layer weights (rebuilt at
        # every call) cost more memory than its speed is worth: "auto" leaves it out.
        big = num_params > AUTO_FAST_MAX_PARAMS
        self.engine = ("fast" if why_not is None and not big else "hf") if engine == "auto" \
            else engine
        # The fast engine, where it runs (None: everything on the model's own forward).
        self._fast = FastEngine(model, self.device) if self.engine == "fast" else None
        self.pad_id, self.eos_ids = special_tokens(model, tokenizer)
        self._eos_t = torch.tensor(self.eos_ids, device=self.device)
        self._prompts = PromptChecker(tokenizer, model.config, chat_template=chat_template,
                                      system_prompt=system_prompt)
        self.max_positions = self._prompts.max_positions  # the model's context, or None
        self._takes_logits_to_keep = sampling.takes_logits_to_keep(model)
        self._cache_keyword = sampling.cache_keyword(model)

    # --- Serializable ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        if self.model_ref is None:
            raise ValueError(
                "this LMPolicy wraps an in-memory model that has no directory to be rebuilt "
                "from; call policy.save_pretrained(dir) and train LMPolicy(dir) instead"
            )
        config = {
            "model": self.model_ref,
            "device": self._device_option,
            "dtype": self._dtype_option,
            "max_new_tokens": self.max_new_tokens,
            "top_p": self.top_p,
            "hidden_states": self.record_hidden_states,
            "engine": self.engine_option,
        }
        # Options added later are recorded only when set, so that the spec of a policy
        # without them stays what older run directories hold.
        optional = {"mixed_precision": self._mixed_option,
                    "chat_template": self.chat_template, "system_prompt": self.system_prompt}
        if self._lora is not None and self._adapter_dir is None:  # a directory has its own
            optional["lora"] = adapters.lora_spec(self._lora)
        config.update({k: v for k, v in optional.items() if v is not None})
        return config

    def save_pretrained(self, directory: str | os.PathLike, *, merge_lora: bool = False) -> Path:
        """Write model and tokenizer with ``save_pretrained``; ``LMPolicy(directory)``
        loads them back. A LoRA policy writes its adapters only (``adapter_config.json``
        naming the base model's directory, ``adapter_model.safetensors``), or with
        ``merge_lora=True`` a plain model with the adapters merged into its weights."""
        directory = Path(directory)
        if self._peft is None:
            self.model.save_pretrained(directory)
        elif merge_lora:
            adapters.merged_copy(self._peft).save_pretrained(directory)
        else:
            adapters.save_adapters(self._peft, directory, self._base_ref())
        self.tokenizer.save_pretrained(directory)
        return directory

    def _base_ref(self) -> str | None:
        """The base model a LoRA policy's adapters apply to."""
        if self._adapter_dir is not None:
            return adapters.read_adapter_dir(self._adapter_dir)[0]
        return self.model_ref

    @property
    def lora(self) -> Any:
        """The ``peft.LoraConfig`` of a LoRA policy, else None."""
        return self._lora

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Within the block, the policy is its base model (LoRA adapters off)."""
        if self._peft is None:
            raise ValueError("this policy has no LoRA adapters to disable")
        with self._peft.disable_adapter():
            yield

    def reference_policy(self) -> Policy:
        """The frozen policy for the KL term: for a LoRA policy, this very model with its
        adapters disabled (no second copy of the weights); else a frozen copy."""
        if self._peft is not None:
            return adapters.AdaptersDisabled(self)
        return super().reference_policy()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer layer's activations in the backward pass instead of
        keeping them (Hugging Face's activation checkpointing, non-reentrant): less memory,
        about a third more compute. The policy then runs on the model's own forward (the
        fast engine, where ``engine="auto"`` chose it, is switched off: it has no
        checkpointing); ``engine="fast"`` raises. The trainer calls this for
        ``TrainConfig(gradient_checkpointing=True)``."""
        if self.engine_option == "fast":
            raise ValueError("engine='fast' has no activation checkpointing; use "
                             "engine='auto' or 'hf' with gradient_checkpointing")
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.model).__name__} does not support gradient "
                             "checkpointing")
        from transformers.modeling_layers import GradientCheckpointingLayer

        enable = getattr(self.model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.2x names it so
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        # Hugging Face checkpoints a layer only in training mode; the layers alone are put
        # in it (their dropout sub-modules stay in eval mode), at every scoring call.
        self._checkpointed = [m for m in self.model.modules()
                              if isinstance(m, GradientCheckpointingLayer)]
        self.engine, self._fast = "hf", None

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether :meth:`enable_gradient_checkpointing` is in force."""
        return bool(self._checkpointed)

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
        is its embedding): safetensors refuses to save one tensor twice. A LoRA policy's
        state is its adapters alone (the base weights are those of its model directory)."""
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for name in self._aliases():
            sd.pop(prefix + name, None)
        if self._peft is not None:
            sd = type(sd)((k, v) for k, v in sd.items()
                          if k.removeprefix(prefix) in self._trainable)
        return sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        expected = set(self.state_dict())
        missing = [k for k in result.missing_keys if k not in self._aliases() and k in expected]
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
        return self._prompts.encode(text)

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
        self._prompts.check(texts, [self.encode_prompt(t) for t in texts],
                            [f"prompt {i}" for i in range(len(texts))], T)

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
        (a :class:`~rlnb.policies.lm.fast.replay.Tape`), so that the *next* :meth:`log_probs`
        of this rollout, if the weights have not changed in between, runs no forward pass
        (the trainer's single update per batch; :mod:`rlnb.policies.lm.fast.replay`). Ignored
        where the fast engine's replay does not apply (:attr:`replay_supported`). Weights
        replaced or modified in place are detected (tensor identity, version counters),
        except by kernels that do not bump version counters, such as PyTorch's fused
        Adam: call ``log_probs`` before ``optimizer.step()``, as the trainer does.
        """
        validate_sampling_args(n, temperature)
        prompts = torch.as_tensor(prompts, dtype=torch.long).reshape(-1).cpu()
        texts = [env.prompt(int(i)) for i in prompts.tolist()]
        seqs = [self.encode_prompt(t) for t in texts]
        self._prompts.check(texts, seqs, [f"prompt {int(i)}" for i in prompts.tolist()],
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
        if self.compute_dtype is not None:
            info["compute_dtype"] = str(self.compute_dtype)
        if self._peft is not None:
            info["lora"] = True
        if self._checkpointed:
            info["gradient_checkpointing"] = True
        if self._fast is not None:
            info.update(self._fast.runtime_info())
        return info

    # The trainer's rollout keeps the sampler's activations where the fast engine can
    # replay them (replay_supported): the first update then runs no forward pass.
    training_rollout = functools.partialmethod(rollout, keep_activations=True)

    def after_update(self, rollout: Rollout) -> None:
        rollout.extra.pop("activations", None)  # computed with the old weights: stale

    @property
    def replay_supported(self) -> bool:
        """Whether ``rollout(..., keep_activations=True)`` can spare the next update its
        forward pass: the fast engine on a float32 Llama-family model on the CPU."""
        return self._fast is not None and self._fast.replay_supported

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
        from rlnb.checks import check_int

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
        return decode_rows(self.tokenizer, actions, mask)

    def decode(self, rollout: Rollout) -> list[str]:
        """The completions of a rollout as text (special tokens removed)."""
        if "completions" in rollout.extra:
            return list(rollout.extra["completions"])
        return self._decode_rows(rollout.actions, rollout.mask)

    def _sample(self, seqs: Sequence[Sequence[int]], n: int, temperature: float,
                generator: torch.Generator | None, T: int,
                keep_activations: bool = False) -> dict[str, Any]:
        # The trainer's rule (rlnb.threads): a small model samples on one CPU thread.
        one_thread = threads.is_small(self._num_params, self.device)
        tape = self._fast.new_tape(temperature) if keep_activations else None
        with self._compute():
            return sampling.sample(
                self._stepper, seqs, n, T, temperature=temperature, generator=generator,
                top_p=self.top_p, pad_id=self.pad_id, eos_ids=self.eos_ids, eos_t=self._eos_t,
                vocab_size=self._vocab_size(), device=self.device,
                compact=self.engine == "fast", tape=tape, one_thread=one_thread,
                trim_every=sampling.TRIM_EVERY if self._num_params > allocator.MAX_PARAMS
                and self.device.type == "cpu" else 0)

    def _vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def _compute(self) -> contextlib.AbstractContextManager:
        """The compute context of every forward pass: autocast to the compute dtype under
        mixed precision, nothing otherwise."""
        return precision.autocast(self.device, self.compute_dtype)

    def _stepper(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, T: int,
                 tape: Any = None):
        """A generator: yields the next-token logits ``(B, V)`` of the rows it computes
        and receives ``(tokens (B,), keep)``. One implementation per engine; all must yield
        the same logits. ``keep`` (indices into the ``B`` rows, or None) drops finished rows
        from the batch; only the fast engine is sent one (:meth:`FastEngine.decoder`), and
        only it fills a ``tape``."""
        if self._fast is not None:
            return self._fast.decoder(prompt_ids, prompt_mask, n, T, tape=tape)
        if self.engine == "hf":
            return sampling.hf_steps(self.model, prompt_ids, prompt_mask, n, T,
                                     self._takes_logits_to_keep, self._cache_keyword)
        return sampling.hf_nocache_steps(self.model, prompt_ids, prompt_mask, n)

    # --- scoring --------------------------------------------------------------------------
    def completion_logits(self, rollout: Rollout) -> torch.Tensor:
        """Logits ``(N, T, V)`` that score each completion token (position ``Lp - 1 + t``
        predicts completion token ``t``), with gradients."""
        ids, Lp, pos, key_valid = scoring.completion_inputs(rollout, self.device)
        self._checkpointing_on()
        with self._compute():
            if self._fast is None:
                return scoring.completion_logits(self.model, ids, pos, key_valid,
                                                 rollout.actions.shape[1],
                                                 self._takes_logits_to_keep)
            return self._fast.completion_logits(ids, pos, key_valid, Lp, rollout.group_size)

    def _checkpointing_on(self) -> None:
        """Hugging Face recomputes a layer only while that layer is in training mode."""
        for layer in self._checkpointed:
            layer.training = True

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
        packs the completion tokens (:func:`rlnb.policies.lm.fast.score.packed_hidden`).
        The LM head runs on a bounded number of positions at a time
        (:func:`rlnb.policies.lm.scoring.chunked_token_stats`): the ``(S, V)`` float32
        logits of a large vocabulary never exist at once."""
        validate_sampling_args(1, temperature)
        mask = rollout.mask.to(rollout.actions.device)  # (N, T)
        V = self._vocab_size()
        self._checkpointing_on()
        with self._compute():
            if self._fast is not None:  # packed, or replayed from the sampler's activations
                h, actions, head = self._fast.scored_hidden(rollout, mask, temperature)
            else:  # the model's own forward over the columns up to the last masked one
                trimmed = scoring.trim_to_mask(rollout, mask)
                if scoring.hidden_path_supported(self.model):
                    ids, _, pos, key_valid = scoring.completion_inputs(trimmed, self.device)
                    h = scoring.completion_hidden(self.model, ids, pos, key_valid,
                                                  trimmed.actions.shape[1])  # (N, Te, d)
                    head = scoring.linear_head(self.model.get_output_embeddings())
                else:  # a head with soft-capping or scaling: the model's own logits
                    h, head = self.completion_logits(trimmed), (lambda x: x)
                m = trimmed.mask.to(h.device)
                h, actions = h[m], trimmed.actions.to(h.device)[m]
            stats = scoring.chunked_token_stats(head, h, actions, temperature, V)
        return tuple(scoring.scatter_masked(mask, *stats))

    # --- internals ------------------------------------------------------------------------
    @torch.no_grad()
    def hidden_states(
        self,
        source: Rollout | Sequence[str],
        layers: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named hidden states of a rollout (prompt + completion, ``extra["input_ids"]``)
        or of a list of texts (left-padded), detached, on the CPU: ``"embed"`` (the token
        and position embeddings, input of layer 0), ``"layers.{i}.resid_post"`` (the
        residual stream after layer ``i``), ``"final_norm"`` (the last layer's output
        after the final norm: what the LM head reads), each ``(N, L, d)``, and
        ``"attention_mask"`` ``(N, L)``, 1 on real tokens.

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
            ids, am = left_pad([self.encode_prompt(t) for t in source], self.pad_id)
        with self._compute():
            states = hidden.hidden_states(self.model, ids.to(self.device), am.to(self.device),
                                          layers)
        return {k: v.float() if v.is_floating_point() else v for k, v in states.items()}

    def extra_repr(self) -> str:
        return (f"model={self.model_ref!r}, engine={self.engine!r}, "
                f"max_new_tokens={self.max_new_tokens}, top_p={self.top_p}")
