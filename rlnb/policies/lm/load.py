"""Loading a model and its tokenizer: devices, dtypes, and the checks that make a bad model
directory fail with the file and the fix rather than deep inside ``transformers``."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def check_device(device: str | torch.device) -> torch.device:
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


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_tokenizer(path: str | os.PathLike) -> Any:
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


def check_model_dir(p: Path) -> None:
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


#: Set to 1 to see Hugging Face's own "Loading weights" progress bars when rlnb loads a model.
PROGRESS_ENV = "RLNB_LOAD_PROGRESS"


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hold back Hugging Face's per-file "Loading weights" progress bars while rlnb loads a
    model (a tiny model prints one per load, twice in a notebook cell that loads base and
    policy); ``RLNB_LOAD_PROGRESS=1`` keeps them. Restores the previous setting after."""
    from transformers.utils import logging as hf_logging

    if os.environ.get(PROGRESS_ENV, "") == "1" or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_model(model: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    with quiet_loading():
        return _load_model(model, device, dtype)


def _load_model(model: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
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
        check_model_dir(p)
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
            tok = load_tokenizer(p)
        except Exception as err:
            raise ValueError(
                f"could not load the tokenizer in {str(p)!r}: {type(err).__name__}: {err}. "
                f"Its tokenizer files (tokenizer.json, tokenizer_config.json) are missing or "
                f"corrupt; {_RESAVE}"
            ) from err
        return hf.to(device), tok
    hf = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype, use_safetensors=True)
    tok = load_tokenizer(model)
    return hf.to(device), tok


def special_tokens(model: Any, tokenizer: Any) -> tuple[int, list[int]]:
    """The pad id and the sorted EOS ids (the tokenizer's, and the generation config's) of a
    model; a tokenizer without a pad token pads with its EOS token (with a warning)."""
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
            "is safe.", stacklevel=4)  # the caller of LMPolicy(...) / from_model(...)
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
    return int(tokenizer.pad_token_id), sorted(eos)
