"""LoRA adapters through ``peft``: only the adapters train, the base model stays frozen.

``LMPolicy(model_dir, lora=LoraConfig(r=16, target_modules=[...]))`` injects LoRA layers
into the loaded model (``peft.get_peft_model``). Then:

* the optimiser sees only the adapters (the only parameters with ``requires_grad``);
* ``policy.state_dict()`` -- hence every checkpoint of a run -- holds only the adapters
  (a few MB where the full weights and their Adam state are GBs), so a run can checkpoint
  every step;
* the KL reference is the same model with its adapters disabled
  (:class:`AdaptersDisabled`, ``peft``'s ``disable_adapter()``), not a second copy of
  the weights;
* ``policy.save_pretrained(dir)`` writes the adapters the ``peft`` way
  (``adapter_config.json`` + ``adapter_model.safetensors``, naming the base model), and
  ``LMPolicy(dir)`` loads them back onto that base; ``save_pretrained(dir,
  merge_lora=True)`` writes a plain model with the adapters merged into its weights.

A run directory stores the LoRA settings as JSON (the fields that differ from
``LoraConfig``'s defaults). Settings that make ``peft`` import a module by name
(``megatron_config`` / ``megatron_core``) are refused, and ``auto_mapping`` (the class
peft's own auto-loader would look up) is ignored: nothing a file names is imported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rlnb.policies.base import Policy, Rollout

#: LoraConfig fields a policy never records (and ignores when given): bookkeeping, set by
#: rlnb itself, or read only by peft's own auto-loading (``auto_mapping``: rlnb loads the
#: base model itself and never looks a class up by name).
_NOT_RECORDED = ("peft_type", "task_type", "peft_version", "base_model_name_or_path",
                 "revision", "inference_mode", "runtime_config", "auto_mapping")
#: Fields that make peft import a module by name: refused.
_REFUSED = ("megatron_config", "megatron_core")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _json_safe(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def lora_config(option: Any) -> Any:
    """A ``peft.LoraConfig`` from a ``LoraConfig`` or a dict of its fields, checked."""
    from peft import LoraConfig

    if isinstance(option, LoraConfig):
        fields = option.to_dict()
    elif isinstance(option, Mapping):
        fields = dict(option)
        known = {f.name for f in dataclasses.fields(LoraConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"lora has unknown LoraConfig fields {unknown}; see "
                             "peft.LoraConfig for the valid ones (r, lora_alpha, "
                             "target_modules, lora_dropout, ...)")
    else:
        raise TypeError(f"lora must be a peft.LoraConfig or a dict of its fields, got "
                        f"{type(option).__name__}")
    default = LoraConfig().to_dict()
    for key in _REFUSED:
        if key in fields and _json_safe(fields[key]) != _json_safe(default.get(key)):
            raise ValueError(f"lora.{key} is not supported by rlnb: it makes peft import "
                             "or map code by name; leave it at its default")
    kept = {k: v for k, v in fields.items() if k not in _NOT_RECORDED and k not in _REFUSED}
    return LoraConfig(task_type="CAUSAL_LM", **kept)


def lora_spec(config: Any) -> dict[str, Any]:
    """The JSON settings of a ``LoraConfig``: the fields that differ from the defaults."""
    from peft import LoraConfig

    mine, default = config.to_dict(), LoraConfig().to_dict()
    return {k: _json_safe(v) for k, v in mine.items()
            if k not in _NOT_RECORDED and k not in _REFUSED
            and _json_safe(v) != _json_safe(default.get(k))}


def add_adapters(model: Any, config: Any) -> Any:
    """Inject LoRA layers into ``model`` (in place) and return the ``peft`` wrapper; the
    base weights are frozen, the adapters train."""
    from peft import get_peft_model

    return get_peft_model(model, config)


def is_adapter_dir(path: Path) -> bool:
    """Whether ``path`` is a directory of LoRA adapters written by ``peft`` (no full model)."""
    return path.is_dir() and (path / ADAPTER_CONFIG).exists() and not (path / "config.json").exists()


def read_adapter_dir(path: Path) -> tuple[str, Any]:
    """The base model and the ``LoraConfig`` of an adapter directory, checked: LoRA only,
    weights as safetensors, a base model named."""
    cfg_path = path / ADAPTER_CONFIG
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(cfg_path)!r} is not valid JSON ({err}); write the adapters "
                         "again with policy.save_pretrained(dir)") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise ValueError(f"{str(cfg_path)!r} does not describe LoRA adapters (peft_type "
                         f"{raw.get('peft_type') if isinstance(raw, dict) else None!r}); rlnb "
                         "loads LoRA adapters only")
    if not (path / ADAPTER_WEIGHTS).exists():
        raise FileNotFoundError(
            f"adapter directory {str(path)!r} has no {ADAPTER_WEIGHTS} (rlnb loads adapter "
            "weights from safetensors only, never a pickle); save them again with "
            "save_pretrained(dir, safe_serialization=True)")
    base = raw.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{str(cfg_path)!r} names no base model "
                         "(base_model_name_or_path); set it to the base model's directory")
    return base, lora_config(raw)


def load_adapter_weights(peft_model: Any, path: Path) -> None:
    """Load ``adapter_model.safetensors`` of ``path`` into ``peft_model``'s adapters."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(path / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{str(path / ADAPTER_WEIGHTS)!r} holds adapters {unexpected[:4]} "
                         "that this base model does not have: adapters of another model")


def save_adapters(peft_model: Any, directory: Path, base_ref: str | None) -> None:
    """``peft``'s ``save_pretrained`` of the adapters, naming the base model's directory."""
    peft_model.peft_config["default"].base_model_name_or_path = base_ref
    peft_model.save_pretrained(str(directory), safe_serialization=True)


def merged_copy(peft_model: Any) -> Any:
    """A plain model with the adapters merged into its weights (the policy is untouched)."""
    return copy.deepcopy(peft_model).merge_and_unload()


class AdaptersDisabled(Policy):
    """The frozen base model of a LoRA policy, seen as a policy: its ``log_probs`` are the
    policy's with the adapters switched off. It owns no parameters (``state_dict()`` is
    empty): the KL reference costs no memory and no checkpoint space."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_policy", policy)  # not a submodule: no parameters here

    def log_probs(self, rollout: Rollout, *, temperature: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._policy.adapters_disabled():
            return self._policy.log_probs(rollout, temperature=temperature)

    def rollout(self, env: Any, prompts: torch.Tensor, n: int, **kwargs: Any) -> Rollout:
        with self._policy.adapters_disabled(), torch.no_grad():
            return self._policy.rollout(env, prompts, n, **kwargs)

    def get_config(self) -> dict[str, Any]:
        raise ValueError("the adapters-disabled view of a LoRA policy is rebuilt from its "
                         "policy (policy.reference_policy()), not from a spec")


def adapter_dir_exists(model: str | os.PathLike) -> bool:
    try:
        return is_adapter_dir(Path(model).expanduser())
    except (TypeError, OSError):
        return False
