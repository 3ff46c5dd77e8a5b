"""Checkpoints: policy, optimiser and sampler state of one step in one safetensors file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from rlnb.serialization import atomic_save_safetensors
from rlnb.train.files import CHECKPOINT


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, _, idx, key = name.split(".", 3)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    step: int,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    fsync: bool = True,
) -> None:
    """One safetensors file: ``policy.*`` parameters, ``optimizer.*`` state, the sampling
    generator's state, and the step in the metadata. Replaced atomically."""
    tensors = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["generator.state"] = generator.get_state()
    meta = {"step": str(step), "optimizer": json.dumps(opt_meta), "format": "rlnb-checkpoint-1"}
    atomic_save_safetensors(tensors, path, meta, fsync=fsync)


_DAMAGED = "restore it from a copy, or start a new run directory"


class Checkpoint:
    """A checkpoint read into memory and checked (nothing applied yet)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        except Exception as err:  # SafetensorError (truncated, garbage), OSError
            raise ValueError(f"{path} is corrupt or truncated ({err}); {_DAMAGED}") from None
        if meta.get("format") != "rlnb-checkpoint-1":
            raise ValueError(f"{path} is not a rlnb checkpoint (metadata {meta}); {_DAMAGED}")
        try:
            self.step = int(meta["step"])
            self.optimizer_meta = json.loads(meta["optimizer"])
            if self.step < 0 or "generator.state" not in tensors:
                raise ValueError("no generator state" if self.step >= 0 else "negative step")
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path} has damaged metadata ({err}); {_DAMAGED}") from None
        self.tensors = tensors

    def policy_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("policy."): v for k, v in self.tensors.items()
                if k.startswith("policy.")}

    def check_fits(self, policy: torch.nn.Module) -> None:
        """Raise, naming the file, when the policy's parameters are not the checkpoint's."""
        mine = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in self.policy_state().items()}
        if mine != saved:
            diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
            raise ValueError(
                f"{self.path} does not fit this run's policy: parameters {diff[:6]} differ "
                f"(names or shapes), so it is not a checkpoint of this run; {_DAMAGED}")

    def apply(self, *, policy: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
              generator: torch.Generator | None = None) -> int:
        try:
            policy.load_state_dict(self.policy_state())
            if optimizer is not None:
                opt = {k: v for k, v in self.tensors.items() if k.startswith("optimizer.")}
                optimizer.load_state_dict(_unflatten_optimizer(opt, self.optimizer_meta))
            if generator is not None:
                generator.set_state(self.tensors["generator.state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path} does not fit this run's policy and optimiser "
                             f"({err}); {_DAMAGED}") from None
        return self.step


def load_checkpoint(
    path: str | os.PathLike,
    *,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Restore what :func:`save_checkpoint` wrote; returns the step."""
    return Checkpoint(path).apply(policy=policy, optimizer=optimizer, generator=generator)


def checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {})["step"])
    except Exception as err:
        raise ValueError(f"{path} is corrupt or truncated ({err}); {_DAMAGED}") from None


#: ``save_steps=None`` checkpoints every step while a checkpoint is at most this many
#: bytes (:func:`checkpoint_bytes`), else every :data:`AUTO_SAVE_STEPS_LARGE` steps.
AUTO_SAVE_MAX_BYTES = 256 * 2**20
#: Steps between checkpoints of ``save_steps=None`` for a checkpoint over the limit.
AUTO_SAVE_STEPS_LARGE = 100


def checkpoint_bytes(policy: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Estimated size in bytes of one checkpoint: the tensors of ``policy.state_dict()``
    (what is saved: a LoRA policy's adapters only) plus the optimiser state, counted as
    two copies of the trainable parameters for Adam / AdamW (``exp_avg``,
    ``exp_avg_sq``), one for SGD with momentum, none for plain SGD.

    >>> net = torch.nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    >>> checkpoint_bytes(net, torch.optim.Adam(net.parameters()))
    1320
    """
    state = sum(v.numel() * v.element_size() for v in policy.state_dict().values()
                if isinstance(v, torch.Tensor))
    if isinstance(optimizer, torch.optim.SGD):
        moments = 1 if any(g.get("momentum", 0) for g in optimizer.param_groups) else 0
    else:
        moments = 2
    trainable = sum(p.numel() * p.element_size()
                    for g in optimizer.param_groups for p in g["params"] if p.requires_grad)
    return state + moments * trainable


def auto_save_steps(checkpoint_size: int) -> int:
    """``save_steps`` when ``TrainConfig.save_steps`` is None: 1 (every step) for a
    checkpoint of at most :data:`AUTO_SAVE_MAX_BYTES` (256 MiB), else
    :data:`AUTO_SAVE_STEPS_LARGE` (100). ``checkpoint_size`` in bytes
    (:func:`checkpoint_bytes`).

    >>> auto_save_steps(10 * 2**20), auto_save_steps(2**30)
    (1, 100)
    """
    return 1 if checkpoint_size <= AUTO_SAVE_MAX_BYTES else AUTO_SAVE_STEPS_LARGE
