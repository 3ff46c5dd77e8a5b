"""What the full-scale benchmarks share: the Qwen2.5-0.5B shape, its random-weight model
directory (built once, cached), the addition task, the LoRA setting and memory readings.

Used by ``benchmarks/full_scale_memory.py`` and ``benchmarks/gpu_check.py`` (both put this
folder on ``sys.path`` when run as scripts).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: The published ``config.json`` of Qwen/Qwen2.5-0.5B, written out by hand (no hub access
#: is needed). Qwen2 attention has biases on q/k/v (fixed in its modeling code, there is
#: no config field for it) and none on o_proj or the MLP.
QWEN25_05B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

#: The modules LoRA adapts (every linear layer of a Qwen2 block).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Prompts of the addition task (2-digit operands; its alphabet is "+0123456789=").
TASK_PROMPTS = 256


def task(seed: int = 0) -> Any:
    """The addition task both trainers draw prompts from: ``addition(256, digits=2)``."""
    from rlnb.envs import addition

    return addition(TASK_PROMPTS, digits=2, seed=seed)


def model_config(layers: int | None = None, vocab: int | None = None) -> Any:
    """The Qwen2.5-0.5B config (``layers`` overrides the depth, ``vocab`` the vocabulary
    size, for quick checks of the logic; the widths stay). The special
    token ids are those of the character tokenizer saved beside the model (pad 0, BOS 1,
    EOS 2) rather than the published 151643, so that both trainers stop on the same EOS;
    the vocabulary stays 151936 (the embedding is what costs memory)."""
    from transformers import AutoConfig

    cfg = dict(QWEN25_05B)
    cfg.pop("architectures")
    model_type = cfg.pop("model_type")
    if layers is not None:
        cfg["num_hidden_layers"] = layers
        cfg["max_window_layers"] = layers
    if vocab is not None:
        cfg["vocab_size"] = vocab
    cfg.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(model_type, **cfg)
    config.architectures = list(QWEN25_05B["architectures"])
    return config


def default_cache() -> Path:
    """``$RLNB_CACHE/benchmarks`` or ``~/.cache/rlnb/benchmarks``."""
    from rlnb.cache import cache_dir

    return cache_dir("benchmarks")


def model_dir(layers: int | None = None, *, vocab: int | None = None, seed: int = 0,
              cache: str | os.PathLike | None = None, log: Any = None) -> Path:
    """A directory with the random-weight model (float32, seeded) and the character
    tokenizer, written once by ``save_pretrained`` and re-used: its name holds a digest of
    the config, the seed and the alphabet, so a change makes a new one. Written into a
    temporary folder and renamed, so an interrupted build leaves nothing half-written.
    24 layers: 494M parameters, 2.0 GB on disk, ~20 s to build."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlnb.policies.tiny import char_tokenizer

    config = model_config(layers, vocab)
    alphabet = task().alphabet
    key = json.dumps({"config": config.to_diff_dict(), "seed": seed, "alphabet": alphabet},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(cache) if cache is not None else default_cache()
    vocab_tag = "" if vocab is None else f"-v{vocab}"
    path = root / f"qwen2.5-0.5b-shape-{config.num_hidden_layers}l{vocab_tag}-seed{seed}-{digest}"
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the random {config.num_hidden_layers}-layer model in {path} (once)")
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=root))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tok = char_tokenizer(alphabet, model_max_length=config.max_position_embeddings)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        try:
            os.rename(tmp, path)
        except OSError:  # built meanwhile by another process
            if not (path / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def parameter_count(config: Any) -> int:
    """Parameters of a Qwen2 model of ``config`` (tied embeddings counted once)."""
    h, f, L, V = (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                  config.vocab_size)
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    attn = h * h + h + 2 * (h * kv + kv) + h * h  # q (+bias), k, v (+biases), o
    block = attn + 3 * h * f + 2 * h
    return V * h * (1 if config.tie_word_embeddings else 2) + L * block + h


def lora_config() -> Any:
    """``LoraConfig(r=16, lora_alpha=32, lora_dropout=0)`` on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                      bias="none", task_type="CAUSAL_LM")


GIB = 1024 ** 3


def proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident memory of this process now."""
    return proc_status("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far: ``VmHWM`` (the high-water mark of this
    program's own address space, which starts afresh at exec), else ``ru_maxrss``."""
    hwm = proc_status("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quiet_transformers() -> None:
    """No download progress bars, no info logs, no deprecation warnings from inside TRL."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
