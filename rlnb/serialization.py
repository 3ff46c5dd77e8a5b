"""Save and rebuild sandboxes and policies from a run directory, without pickle.

A component is described by a JSON *spec* (its class and constructor keyword arguments)
plus a dict of tensors stored as safetensors. ``resume(run_dir)`` uses this to rebuild the
exact sandbox and policy of a run: random layouts (a strategy bandit's solve matrix, a
tree's rewarded leaves) are stored as tensors, never regenerated.

Subclasses of :class:`Serializable` implement ``get_config()`` (JSON-able keyword
arguments) and, when they hold data, ``get_tensors()``; ``cls(**config, **tensors)`` must
rebuild an equal object.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_REGISTRY: dict[str, type] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class Serializable:
    """Mixin: a JSON config plus named tensors rebuild the object."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[_key(cls)] = cls

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not define get_config()")

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def spec(self) -> dict[str, Any]:
        return {"class": _key(type(self)), "config": self.get_config()}


def _resolve(key: str) -> type:
    if key not in _REGISTRY:
        module, _, _ = key.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"cannot rebuild component of class {key!r}: module {module!r} does not import "
                f"({err}); import the module that defines it before loading the run"
            ) from err
    if key not in _REGISTRY:
        raise ValueError(
            f"class {key!r} is not a rlnb Serializable; only subclasses of "
            "rlnb.serialization.Serializable can be rebuilt from a run directory"
        )
    return _REGISTRY[key]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a
    partial one (temporary file in the same directory, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata)
    os.replace(tmp, path)


def save_component(obj: Serializable, directory: str | os.PathLike, name: str) -> None:
    """Write ``<name>.json`` (spec) and, when the object holds data, ``<name>.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = obj.get_tensors()
    if tensors:
        atomic_save_safetensors(tensors, directory / f"{name}.safetensors")
    atomic_write_bytes(directory / f"{name}.json", json.dumps(obj.spec(), indent=2).encode())


def build_component(spec: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Any:
    cls = _resolve(spec["class"])
    return cls(**spec.get("config", {}), **(tensors or {}))


def load_component(directory: str | os.PathLike, name: str) -> Any:
    """Rebuild a component written by :func:`save_component`."""
    directory = Path(directory)
    spec_path = directory / f"{name}.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"{spec_path} does not exist: is {directory} a rlnb run directory?")
    spec = json.loads(spec_path.read_text())
    tensor_path = directory / f"{name}.safetensors"
    tensors = load_file(str(tensor_path)) if tensor_path.exists() else {}
    return build_component(spec, tensors)
