"""Save and rebuild sandboxes and policies from a run directory, without pickle.

A component is described by a JSON *spec* (its class and constructor keyword arguments)
plus a dict of tensors stored as safetensors. ``resume(run_dir)`` uses this to rebuild the
exact sandbox and policy of a run: random layouts (a strategy bandit's solve matrix, a
tree's rewarded leaves) are stored as tensors, never regenerated.

Subclasses of :class:`Serializable` implement ``get_config()`` (JSON-able keyword
arguments) and, when they hold data, ``get_tensors()``; ``cls(**config, **tensors)`` must
rebuild an equal object. A class whose spec is not its constructor's arguments (a text task
stores its generator's name and settings) overrides ``spec()`` and ``from_spec()`` too.

Opening a directory someone else made is safe: a spec names its class, but nothing is
imported because a file says so. Only registered classes are rebuilt: rlnb's own (every
one is defined by ``import rlnb.envs`` and ``import rlnb.policies``) and the ones a user
registers, by name, with :func:`register_serializable` before loading::

    @register_serializable
    class MyTask(ExactMatchTask): ...

    resume("runs/my-task")      # env.json names "mymodule:MyTask": rebuilt
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_REGISTRY: dict[str, type] = {}
"""Classes that may be rebuilt from a file: rlnb's own and the user's registered ones."""
_DEFINED: dict[str, type] = {}
"""Every Serializable subclass defined in this process (for the error messages)."""


def class_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_rlnb(cls: type) -> bool:
    return cls.__module__ == "rlnb" or cls.__module__.startswith("rlnb.")


class Serializable:
    """Mixin: a JSON config plus named tensors rebuild the object."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _DEFINED[class_key(cls)] = cls
        if _is_rlnb(cls):
            _REGISTRY[class_key(cls)] = cls

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not define get_config()")

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def spec(self) -> dict[str, Any]:
        return {"class": class_key(type(self)), "config": self.get_config()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
        """The object ``spec`` (whose class resolved to ``cls``) and ``tensors`` describe."""
        return cls(**spec.get("config", {}), **tensors)


def register_serializable(cls: type, name: str | None = None) -> type:
    """Allow run directories (and task data sets) to rebuild ``cls``, a subclass of
    :class:`Serializable` defined outside rlnb. Registered under its own name
    (``"module:QualName"``, what ``spec()`` writes) and, when given, under ``name`` too
    (e.g. the name a run directory recorded before the class moved). Returns ``cls``, so
    it also works as a class decorator. Register before ``resume`` / ``load_run``."""
    if not (isinstance(cls, type) and issubclass(cls, Serializable)):
        raise TypeError(
            f"register_serializable needs a subclass of rlnb.serialization.Serializable "
            f"(a Sandbox or a Policy), got {cls!r}"
        )
    _REGISTRY[class_key(cls)] = cls
    if name is not None:
        if not isinstance(name, str) or name.count(":") != 1:
            raise ValueError(f"name must look like 'module:ClassName', got {name!r}")
        _REGISTRY[name] = cls
    return cls


def resolve_class(key: Any, source: str | None = None) -> type:
    """The registered class named ``key``. Never imports anything: the modules of rlnb's
    own classes are already loaded, and other classes must be registered by the user."""
    where = f"{source}: " if source else ""
    if not isinstance(key, str) or key.count(":") != 1:
        raise ValueError(
            f"{where}the class name {key!r} is not of the form 'module:ClassName'; this is "
            "not a spec rlnb wrote (the file is damaged or was made elsewhere)"
        )
    if key in _REGISTRY:
        return _REGISTRY[key]
    name = key.partition(":")[2].rpartition(".")[2]
    if key in _DEFINED:
        hint = (f"the class is defined in this process but not registered: call "
                f"rlnb.serialization.register_serializable({name}) before loading")
    else:
        hint = (f"if you trust this file and {name} is your class, import or define it, then "
                f"call rlnb.serialization.register_serializable({name}) before loading")
    raise ValueError(
        f"{where}refusing to rebuild class {key!r}: it is not a registered rlnb class, and "
        f"rlnb never imports a module because a file names it; {hint}"
    )


# --- writing files atomically ---------------------------------------------------------
_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def temporary_name(path: Path) -> Path:
    """A temporary name next to ``path``, unique across processes, threads and calls:
    ``.<name>.tmp<pid>-<n>-<random>``. Stale ones match :func:`stale_temporary`."""
    with _counter_lock:
        n = next(_counter)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{n}-{uuid.uuid4().hex[:8]}")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: str | os.PathLike, write: Any, fsync: bool) -> None:
    """``write(tmp)`` a uniquely named temporary file beside ``path``, then rename it over
    ``path`` (readers see the old file or the new one, never a partial one). With
    ``fsync`` the data reach the disk before the rename and the rename before the return.
    A failed write leaves no temporary behind."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a
    partial one (a uniquely named temporary file in the same directory, then
    ``os.replace``). With ``fsync`` the data reach the disk before the rename and the
    rename before the return, so a power cut leaves the old file or the new one too."""

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    _publish(path, write, fsync)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None,
    *, fsync: bool = True,
) -> None:
    """:func:`atomic_write_bytes` for a safetensors file (written by ``save_file``)."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _publish(path, lambda tmp: save_file(cpu, str(tmp), metadata), fsync)


def stale_temporary(name: str, targets: tuple[str, ...]) -> bool:
    """Whether ``name`` is a temporary file left by a killed write of one of ``targets``
    (file names): rlnb's ``.<target>.tmp*``, or safetensors' own ``.tmpXXXXXX``."""
    if any(name.startswith(f".{t}.tmp") for t in targets):
        return True
    rest = name[4:]
    return name.startswith(".tmp") and len(rest) == 6 and rest.isascii() and rest.isalnum()


# --- components -----------------------------------------------------------------------
def save_component(obj: Serializable, directory: str | os.PathLike, name: str, *,
                   fsync: bool = True) -> None:
    """Write ``<name>.json`` (spec) and, when the object holds data, ``<name>.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = obj.get_tensors()
    if tensors:
        atomic_save_safetensors(tensors, directory / f"{name}.safetensors", fsync=fsync)
    atomic_write_bytes(directory / f"{name}.json", json.dumps(obj.spec(), indent=2).encode(),
                       fsync=fsync)


def build_component(spec: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
                    *, source: str | None = None) -> Any:
    """Rebuild a component from its spec (``source`` names the file in error messages)."""
    where = f"{source}: " if source else ""
    if not isinstance(spec, dict) or "class" not in spec:
        raise ValueError(f"{where}a component spec is a JSON object with a 'class' key, got "
                         f"{str(spec)[:80]!r}")
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{where}the spec's 'config' must be a JSON object, got "
                         f"{type(config).__name__}")
    cls = resolve_class(spec["class"], source)
    return cls.from_spec(spec, dict(tensors or {}))


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The spec in ``path`` (``env.json``, ``policy.json``), checked to be one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: is {path.parent} a complete rlnb run directory?")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the file is damaged; restore it "
                         "or start a new run directory") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) \
            or not isinstance(spec.get("config", {}), dict):
        raise ValueError(f"{path} is not a component spec (a JSON object with 'class' and "
                         "'config'): the file is damaged; restore it or start a new run "
                         "directory")
    return spec


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``load_file(path)``, with a corrupt or truncated file named in the error."""
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, OSError, ...
        raise ValueError(
            f"{path} is corrupt or truncated ({err}); restore it from a copy, or start a new "
            "run directory"
        ) from None


def load_component(directory: str | os.PathLike, name: str) -> Any:
    """Rebuild a component written by :func:`save_component`."""
    directory = Path(directory)
    spec_path = directory / f"{name}.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"{spec_path} does not exist: is {directory} a rlnb run directory?")
    spec = read_spec(spec_path)
    cls = resolve_class(spec["class"], str(spec_path))  # before reading any tensor
    tensor_path = directory / f"{name}.safetensors"
    tensors = read_tensors(tensor_path) if tensor_path.exists() else {}
    return cls.from_spec(spec, tensors)
