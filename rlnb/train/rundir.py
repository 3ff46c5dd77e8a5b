"""A run is a directory. Everything in it is plain JSON or safetensors, never pickle.

::

    run_dir/
      config.json              TrainConfig, field by field
      env.json (+ .safetensors)     the sandbox, rebuildable (rlnb.serialization)
      policy.json              the policy's constructor arguments
      reference.safetensors    the frozen initial policy (only when beta > 0)
      metrics.jsonl            one JSON object per finished step, appended as it happens
      checkpoint.safetensors   policy, optimiser and sampler state of the last saved step
      rollouts.jsonl           samples of completions (when log_rollouts_steps > 0)
      runtime.json             what the numbers depend on besides the config: thread
                               counts, CPU kernel set, torch, engine (Trainer.runtime)

Crash safety: each step appends its metrics line first and then replaces the checkpoint
atomically (temporary file + ``os.replace``). A process killed at any instant leaves at
worst a partial last metrics line and a checkpoint one step behind; on resume the partial
line and any line newer than the checkpoint are dropped, and those steps re-run — with
the saved generator state, to the same numbers. With ``TrainConfig.fsync`` (the default)
each metrics line and each checkpoint reach the disk before the step counts as done, so a
power cut keeps them too. A killed write may leave a temporary file (``.<name>.tmp*``, or
safetensors' ``.tmpXXXXXX``); the next Trainer that opens the directory removes it.

One writer per run directory: a Trainer holds an exclusive lock (``fcntl.flock`` on
``.rlnb.lock`` in the directory, with the holder's process id in it) from the moment it
opens the directory until ``close()``, the end of a ``with`` block, or its garbage
collection; the operating system drops it when the process dies, even by SIGKILL. A second
Trainer on the same directory, in this process or another, is refused with
:class:`RunDirLocked`. Reading a run (``load_runs``, ``load_run``) takes no lock.
"""

from __future__ import annotations

import gc
import glob
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open

from rlnb.serialization import atomic_save_safetensors, atomic_write_bytes, stale_temporary
from rlnb.train.config import TrainConfig

try:
    import fcntl
except ImportError:  # not POSIX: the in-process table still guards against two Trainers
    fcntl = None  # type: ignore[assignment]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
REFERENCE = "reference.safetensors"
ROLLOUTS = "rollouts.jsonl"
RUNTIME = "runtime.json"
LOCK = ".rlnb.lock"
#: The files rlnb writes atomically in a run directory (their temporaries are cleaned up).
WRITTEN = (CONFIG, METRICS, CHECKPOINT, REFERENCE, "env.json", "env.safetensors",
           "policy.json", "policy.safetensors")


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # "nan"/"inf": JSON has no literal for them
    return v


class MetricsWriter:
    """Appends one JSON line per step and flushes it, so a killed process keeps every
    finished step. A line is written with a single ``write`` call."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._f.flush()
        if self.fsync:  # on the disk before the checkpoint that counts the step
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file. A partially written last line (a process killed in
    the middle of a write) is ignored; a corrupt line elsewhere raises."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline yet: the write in flight when killed
                break
            raise ValueError(
                f"{path}: line {i + 1} is not valid JSON: {line[:80]!r}; the file is damaged: "
                "repair or delete that line, or start a new run directory") from None
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(
                f"{path}: line {i + 1} is not a metrics row (a JSON object with an integer "
                f"'step'): {line[:80]!r}; repair or delete that line, or start a new run "
                "directory")
        rows.append(row)
    return rows


def truncate_metrics(path: str | os.PathLike, last_step: int, *, fsync: bool = True) -> None:
    """Keep only complete rows with ``step <= last_step`` (atomic rewrite)."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode(), fsync=fsync)


def missing_steps(rows: list[dict[str, Any]], last_step: int) -> list[int]:
    """The steps ``1..last_step`` that have no row in ``rows``."""
    have = {r["step"] for r in rows}
    return [s for s in range(1, last_step + 1) if s not in have]


def describe_steps(steps: list[int], limit: int = 12) -> str:
    """``"4, 7-9, 12"``: a short list of step numbers (ranges collapsed)."""
    parts: list[str] = []
    start = prev = None
    for s in steps:
        if prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = s
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    more = f" and {len(parts) - limit} more ranges" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# --- config ----------------------------------------------------------------------------
def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The options in ``run_dir/config.json`` (a JSON object), with a clear error naming
    the file when it is missing, not JSON, or not an object."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a rlnb run directory: it has no {CONFIG}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is damaged: restore it, "
                         "or start a new run directory") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of "
                         "TrainConfig options; restore the file, or start a new run directory")
    return data


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    """``TrainConfig`` of a run directory; a bad option is reported with the file."""
    data = read_config(run_dir)
    try:
        return TrainConfig.from_dict(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{Path(run_dir) / CONFIG} does not hold a valid TrainConfig: {err}; "
                         "fix the file, or start a new run directory") from None


# --- checkpoints ---------------------------------------------------------------------
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


# --- one writer per run directory ------------------------------------------------------------
class RunDirLocked(RuntimeError):
    """Another Trainer (in this process or another) holds the run directory."""


_HELD: dict[str, RunDirLock] = {}
_HELD_GUARD = threading.Lock()


class RunDirLock:
    """The exclusive lock of one run directory: ``fcntl.flock`` on ``.rlnb.lock`` (so the
    system releases it when the process dies, however it dies) plus an in-process table
    (a second descriptor of the same process must be refused too).

    :meth:`acquire` with ``create=False`` takes the lock only on an existing lock file and
    writes nothing, so a Trainer can check a directory and refuse it before it changes a
    byte; :meth:`mark` then records the holder's process id in the file."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self.key = os.path.realpath(self.directory)
        self._fd: int | None = None
        self._reserved = False

    @property
    def held(self) -> bool:
        return self._reserved and (self._fd is not None or fcntl is None)

    def _reserve(self) -> None:
        for attempt in range(2):
            with _HELD_GUARD:
                other = _HELD.get(self.key)
                if other is None or other is self:
                    _HELD[self.key] = self
                    self._reserved = True
                    return
            if attempt == 0:
                gc.collect()  # an unreachable Trainer (a reference cycle) lets go here
        raise RunDirLocked(
            f"{self.directory} is in use by another Trainer in this process (pid "
            f"{os.getpid()}): one writer per run directory. Close that Trainer first "
            "(trainer.close(), or train it in a `with Trainer(...) as trainer:` block), or "
            "choose another run_dir")

    def _unreserve(self) -> None:
        with _HELD_GUARD:
            if _HELD.get(self.key) is self:
                del _HELD[self.key]
        self._reserved = False

    def acquire(self, *, create: bool) -> bool:
        """Take the lock; False (and nothing held) when ``create`` is False and there is no
        lock file. Raises :class:`RunDirLocked` when another Trainer holds it."""
        if self.held:
            return True
        self._reserve()
        try:
            got = self._flock(create)
        except BaseException:
            self._unreserve()
            raise
        if not got:
            self._unreserve()
        return got

    def _flock(self, create: bool) -> bool:
        if fcntl is None:
            return True
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except (FileNotFoundError, NotADirectoryError):
                if create:
                    raise
                return False
            except PermissionError as err:
                raise PermissionError(
                    f"cannot open {self.path} to lock {self.directory} ({err.strerror}): the "
                    "run directory is not writable by you; copy it, or choose another "
                    "run_dir (reading it with load_runs needs no lock)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirLocked(
                    f"{self.directory} is locked by another process ({holder}) that trains "
                    "into it: one writer per run directory. Wait for it to finish or stop it, "
                    "or choose another run_dir (reading it with load_runs needs no lock)"
                ) from None
            # Its holder may have removed the file between our open and our lock: then
            # this descriptor locks a file nobody else will see; start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    def mark(self) -> None:
        """Write the holder's process id (and host) into the lock file."""
        if self._fd is None:
            return
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text + b"\n", 0)

    def release(self, *, remove: bool = True) -> None:
        """Let go (idempotent). ``remove`` deletes the lock file first (left in place when a
        Trainer that wrote nothing gives up, so the directory is as it found it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if remove and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(fd)
        if self._reserved:
            self._unreserve()


def _holder(fd: int) -> str:
    """``pid 1234 on host`` from a lock file (a holder writes it just after locking)."""
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) and "pid" in info:
            return f"pid {info['pid']} on {info.get('host', 'this host')}"
        time.sleep(0.01)
    return "pid unknown"


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[str]:
    """Delete the temporary files killed writes left in ``run_dir`` (call under the lock):
    ``.<file>.tmp*`` of the files rlnb writes there, and safetensors' ``.tmpXXXXXX``."""
    removed = []
    for p in Path(run_dir).iterdir():
        if stale_temporary(p.name, WRITTEN) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def fingerprint(run_dir: str | os.PathLike) -> tuple:
    """What a Trainer checked in a run directory, to notice that it changed since."""
    out = []
    for name in WRITTEN:
        try:
            st = os.stat(Path(run_dir) / name)
            out.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


# --- loading runs back ---------------------------------------------------------------
def _expand(runs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    items = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if (p / CONFIG).exists():
            out.append(p)
        elif p.is_dir():  # a parent folder of runs
            out.extend(sorted(c for c in p.iterdir() if (c / CONFIG).exists()))
        else:
            out.extend(sorted(Path(m) for m in glob.glob(str(item)) if (Path(m) / CONFIG).exists()))
    if not out:
        raise FileNotFoundError(
            f"no run directories found in {runs!r}: a run directory holds {CONFIG} and {METRICS}"
        )
    return out


def load_runs(
    runs: str | os.PathLike | Iterable[str | os.PathLike], *, wide: bool = False
) -> pd.DataFrame:
    """Load the metrics of one or many runs into one DataFrame.

    Args:
        runs: a run directory, a folder of run directories, a glob, or a list of them.
        wide: one column per metric instead of the tidy ``metric, value`` pair.

    Returns:
        Tidy: ``run, step, metric, value`` plus ``seed`` and one column for every config
        option whose value differs between the loaded runs (the sweep's axes). The
        ``run`` column is the run directory's name. In the wide form a config column whose
        name is also a metric's (``learning_rate``) is called ``config/<name>``.

    >>> df = load_runs("runs/")                         # doctest: +SKIP
    >>> df[df.metric == "reward"].groupby("step").value.mean()  # doctest: +SKIP
    """
    dirs = _expand(runs)
    configs = {d: read_config(d) for d in dirs}
    keys = sorted({k for c in configs.values() for k in c})
    varying = [
        k for k in keys
        if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1
    ]
    frames = []
    for d in dirs:
        rows = read_metrics(d / METRICS)
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df = df.melt(id_vars="step", var_name="metric", value_name="value")
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        df.insert(0, "run", d.name)
        for k in ["seed", *[v for v in varying if v != "seed"]]:
            val = configs[d].get(k)
            df[k] = json.dumps(val) if isinstance(val, (list, dict)) else val
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    out = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    out = out.sort_values(["run", "step", "metric"], kind="stable").reset_index(drop=True)
    if wide:
        # a config column named like a metric (learning_rate) becomes config/<name>
        clash = {c: f"config/{c}" for c in out.columns
                 if c not in ("run", "step") and c in set(out["metric"])}
        out = out.rename(columns=clash)
        index = [c for c in out.columns if c not in ("metric", "value")]
        metrics = sorted(set(out["metric"]))
        # dropna=False keeps runs whose sweep value is None (e.g. epsilon_high=None)
        out = out.pivot_table(index=index, columns="metric", values="value", sort=True,
                              dropna=False)
        out = out.dropna(how="all", subset=metrics).reset_index()
        out.columns.name = None
    return out
