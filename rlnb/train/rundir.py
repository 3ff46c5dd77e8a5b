"""A run is a directory. Everything in it is plain JSON or safetensors, never pickle.

::

    run_dir/
      config.json              TrainConfig, field by field
      env.json (+ .safetensors)     the sandbox, rebuildable (rlnb.serialization)
      policy.json              the policy's constructor arguments
      reference.safetensors    the frozen initial policy (only when beta > 0): the
                               state_dict() of Policy.reference_policy(), which may be
                               empty (a view of the policy itself, such as a LoRA model
                               with its adapters off); an empty file is valid
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

import json
import os
import shutil
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rlnb.serialization import (
    atomic_save_safetensors,
    atomic_write_bytes,
    load_component,
    read_spec,
    read_tensors,
    resolve_class,
    save_component,
)
from rlnb.train.checkpoint import (
    Checkpoint,
    checkpoint_step,
    load_checkpoint,
    save_checkpoint,
)
from rlnb.train.config import TrainConfig
from rlnb.train.files import (
    CHECKPOINT,
    CONFIG,
    LOCK,
    METRICS,
    REFERENCE,
    ROLLOUTS,
    RUNTIME,
    WRITTEN,
    fingerprint,
    load_config,
    read_config,
    remove_stale_temporaries,
)
from rlnb.train.lock import RunDirLock, RunDirLocked
from rlnb.train.metrics import (
    MetricsWriter,
    describe_steps,
    load_runs,
    missing_steps,
    read_metrics,
    truncate_metrics,
)

__all__ = [
    "CHECKPOINT", "CONFIG", "LOCK", "METRICS", "REFERENCE", "ROLLOUTS", "RUNTIME", "WRITTEN",
    "Checkpoint", "MetricsWriter", "RunDir", "RunDirLock", "RunDirLocked", "RunResources", "checkpoint_step",
    "describe_steps", "fingerprint", "load_checkpoint", "load_config", "load_runs",
    "missing_steps", "numbered_run", "read_config", "read_metrics",
    "remove_stale_temporaries", "save_checkpoint", "truncate_metrics",
]


class RunDir:
    """One run directory as one writer holds it: opening (lock, check, create or
    continue), appending metrics and rollouts, checkpointing, closing.

    ``RunDir(path)`` touches nothing; :meth:`open` locks the directory and checks
    everything in it before it writes a byte, then either writes a new run's files or
    restores the run it holds (checkpoint, reference policy, metrics rows). The lock is
    held until :meth:`close` (idempotent), the end of a ``with`` block, or the object's
    garbage collection. A :class:`rlnb.train.Trainer` given ``run_dir=...`` makes and
    drives one; it is public for tools that step a run themselves.
    """

    #: Config options that do not define a run: a run directory continues with others.
    NOT_COMPARED = frozenset({"max_steps", "progress_bar", "torch_threads",
                              "keep_freed_memory", "fsync", "save_steps"})

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = bool(fsync)
        # What must be closed (the lock, the metrics file) lives apart from this object,
        # so that garbage collection of it (or of the Trainer holding it) releases them.
        self._resources = RunResources()
        self._finalizer = weakref.finalize(self, self._resources.close)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, {'open' if self.held else 'closed'})"

    @property
    def fsync(self) -> bool:
        """Whether each metrics line and each file written reach the disk before the
        write returns (``TrainConfig.fsync``)."""
        return self._fsync

    @fsync.setter
    def fsync(self, value: bool) -> None:
        self._fsync = bool(value)
        if self._resources.metrics is not None:
            self._resources.metrics.fsync = self._fsync

    @property
    def held(self) -> bool:
        """Whether this object holds the directory's lock (opened and not closed)."""
        lock = self._resources.lock
        return lock is not None and lock.held

    # --- opening ----------------------------------------------------------------------
    def open(self, *, config: TrainConfig, env: Any, policy: torch.nn.Module,
             optimizer: torch.optim.Optimizer, generator: torch.Generator,
             reference: torch.nn.Module | None = None, runtime: dict[str, Any] | None = None,
             allow_metrics_gap: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Lock, check, then create or continue the run; returns ``(step, metrics rows)``.

        A new run's files are written (sandbox, policy, reference, config, the step-0
        checkpoint). A run the directory already holds must have the same config (but
        :attr:`NOT_COMPARED`), sandbox and policy, else a ``ValueError`` says what differs
        and nothing is written; its checkpoint is then loaded into ``policy``,
        ``optimizer``, ``generator`` (and ``reference``) and its metrics rows after the
        checkpoint's step are dropped. ``runtime`` is recorded in ``runtime.json``
        (continuing under another one warns)."""
        d = self.path
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(
                f"run_dir {d} is a file, not a directory: pass the path of a directory "
                "(it is created when missing)")
        if self.held:
            raise RuntimeError(f"{self!r} is already open")
        run = _Run(config, env, policy, optimizer, generator, reference)
        lock = RunDirLock(d)
        self._resources.lock = lock
        made: Path | None = None  # the top directory this call created
        marked = False
        try:
            # An existing lock file is taken without writing to it; a new one is made only
            # once every check has passed.
            held = d.is_dir() and lock.acquire(create=False)
            plan = self._inspect(run, allow_metrics_gap)
            if not held:
                made = _first_missing(d)
                try:
                    d.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    made = None
                    raise NotADirectoryError(
                        f"cannot create run_dir {d}: {err.strerror or err} (is a parent "
                        "folder a file?); pass the path of a directory") from None
                lock.acquire(create=True)
                marked = True  # from here on the lock file is this call's to remove
                if fingerprint(d) != plan["fingerprint"]:  # changed meanwhile
                    plan = self._inspect(run, allow_metrics_gap)
            lock.mark()
            marked = True
            remove_stale_temporaries(d)
            step, rows = self._apply(run, plan)
            self._record_runtime(runtime or {}, step)
        except BaseException:
            metrics, self._resources.metrics = self._resources.metrics, None
            if metrics is not None:
                metrics.close()
            lock.release(remove=marked)
            self._resources.lock = None
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise
        return step, rows

    def _inspect(self, run: _Run, allow_metrics_gap: bool) -> dict[str, Any]:
        """Every check of an existing run directory, reading only."""
        d = self.path
        plan: dict[str, Any] = {"fingerprint": fingerprint(d) if d.is_dir() else None}
        if not (d / CONFIG).exists():
            # A new run (or one killed before its config was written: started again).
            for obj in (run.env, run.policy):
                json.dumps(obj.spec())  # a component that cannot be saved fails here
            plan["fresh"] = True
            return plan
        # Options added to TrainConfig after the run was made take their defaults.
        saved = {**TrainConfig.defaults(), **read_config(d)}
        mine = run.config.to_dict()
        diff = sorted(k for k in set(saved) | set(mine)
                      if k not in self.NOT_COMPARED and saved.get(k) != mine.get(k))
        if diff:
            raise ValueError(
                f"{d} already holds a run with a different config (options {diff} differ); "
                "choose a new run_dir, or continue that run with rlnb.train.resume(run_dir)"
            )
        self._check_components(run)
        checkpoint = None
        if (d / CHECKPOINT).exists():
            checkpoint = Checkpoint(d / CHECKPOINT)
            checkpoint.check_fits(run.policy)
        reference = None
        if run.reference is not None and checkpoint is not None:
            reference = read_tensors(d / REFERENCE) if (d / REFERENCE).exists() else None
            if reference is None:
                raise FileNotFoundError(
                    f"{d / REFERENCE} is missing: this run (beta > 0) needs its "
                    "reference policy; restore the file, or start a new run directory")
        step = checkpoint.step if checkpoint is not None else 0
        metrics_path = d / METRICS
        rows = [r for r in read_metrics(metrics_path) if r["step"] <= step]
        missing = missing_steps(rows, step)
        if missing and not allow_metrics_gap:
            raise ValueError(
                f"{metrics_path} lacks the rows of step(s) {describe_steps(missing)}, "
                f"which the checkpoint (step {step}) already covers (a failed write?): "
                "continuing would log a run with those steps missing. Pass "
                "allow_metrics_gap=True (to Trainer or rlnb.train.resume) to continue "
                "anyway, or start a new run directory")
        plan.update(fresh=False, write_config=saved.get("max_steps") != mine.get("max_steps"),
                    checkpoint=checkpoint, reference=reference, rows=rows)
        return plan

    def _check_components(self, run: _Run) -> None:
        """The sandbox and the policy given must be the ones the directory holds: the same
        class (under any name it was registered by, e.g. before it moved module) and the
        same options and data -- or, for a class that compares by value (a text task, by
        its prompts and answers), equal to the one the directory rebuilds."""
        d = self.path
        for name, obj, what in (("env", run.env, "sandbox"), ("policy", run.policy, "policy")):
            path = d / f"{name}.json"
            saved = read_spec(path)
            mine = json.loads(json.dumps(obj.spec()))
            ignore = ("device",) if name == "policy" else ()  # where it runs, not what it is
            if resolve_class(saved["class"], str(path)) is not type(obj):
                problem = f"{path} holds a {saved['class']}, the {what} given is a {mine['class']}"
            else:
                a, b = saved.get("config", {}), mine.get("config", {})
                keys = sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))
                problem = f"its options {keys} differ from {path}" if keys else ""
            if not problem and name == "env":
                tensor_path = d / "env.safetensors"
                held = read_tensors(tensor_path) if tensor_path.exists() else {}
                given = obj.get_tensors()
                differ = sorted(k for k in set(held) | set(given)
                                if k not in held or k not in given
                                or not torch.equal(held[k], given[k].detach().cpu()))
                if differ:
                    problem = f"its data {differ} differ from {tensor_path}"
            if problem and name == "env" and _compares_by_value(obj) \
                    and load_component(d, name) == obj:
                problem = ""  # the same data, written another way (an older format)
            if problem:
                raise ValueError(
                    f"{d} holds a run on another {what} than the one given ({problem}); "
                    f"continue that run with rlnb.train.resume({str(d)!r}), which rebuilds "
                    f"its sandbox and policy from the directory, or choose a new run_dir for "
                    f"this {what}")

    def _apply(self, run: _Run, plan: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        """Write a new run's files or load an existing run's state (under the lock)."""
        d, fsync = self.path, self.fsync
        metrics_path = d / METRICS
        if plan["fresh"]:
            save_component(run.env, d, "env", fsync=fsync)
            save_component(run.policy, d, "policy", fsync=fsync)
            if run.reference is not None:
                atomic_save_safetensors(run.reference.state_dict(), d / REFERENCE, fsync=fsync)
            self.save_config(run.config)
            # step 0: the initial weights, so a resume never re-initialises
            self.save_checkpoint(0, run.policy, run.optimizer, run.generator)
            checkpoint = Checkpoint(d / CHECKPOINT)
            reference = read_tensors(d / REFERENCE) if run.reference is not None else None
            rows: list[dict[str, Any]] = []
        else:
            if plan["write_config"]:
                self.save_config(run.config)
            checkpoint, reference, rows = plan["checkpoint"], plan["reference"], plan["rows"]
        step = 0
        if checkpoint is not None:
            step = checkpoint.apply(policy=run.policy, optimizer=run.optimizer,
                                    generator=run.generator)
            if run.reference is not None and reference is not None:
                _load_reference(run.reference, reference, d / REFERENCE)
        # Drop a partial last line and the rows of steps the checkpoint does not hold.
        if metrics_path.exists():
            atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in rows).encode(),
                               fsync=fsync)
        self._resources.metrics = MetricsWriter(metrics_path, fsync=fsync)
        return step, rows

    def _record_runtime(self, now: dict[str, Any], step: int) -> None:
        """Write runtime.json; warn when a run continues under another runtime (its later
        steps then differ in the last bits from those of a run that never stopped)."""
        path = self.path / RUNTIME
        try:
            before = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            before = None
        if isinstance(before, dict) and step > 0:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if changed:
                warnings.warn(
                    f"{self.path} continues at step {step} under another runtime than it ran "
                    f"with ({', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in changed)}); "
                    "the following steps will not be bitwise those of an uninterrupted run. "
                    "Set TrainConfig.torch_threads (or RLNB_NATIVE, ATEN_CPU_CAPABILITY) as "
                    "before to repeat its numbers exactly", stacklevel=4)
        atomic_write_bytes(path, json.dumps(now, indent=2).encode(), fsync=self.fsync)

    # --- writing ----------------------------------------------------------------------
    def writable(self) -> Path:
        """The directory's path, when this object holds its lock (else a clear error)."""
        if not self.held:
            raise RuntimeError(
                f"the run directory {self.path} was closed and its lock released, so "
                f"nothing can be written there any more; continue the run with "
                f"rlnb.train.resume({str(self.path)!r})")
        return self.path

    def append(self, metrics: dict[str, Any]) -> None:
        """Append one step's metrics line (flushed, and synced with ``fsync``)."""
        self.writable()
        self._resources.metrics.write(metrics)

    def append_rollouts(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (JSON objects) to ``rollouts.jsonl``."""
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        with open(self.writable() / ROLLOUTS, "a", encoding="utf-8") as f:
            f.write(lines)

    def save_checkpoint(self, step: int, policy: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        """Replace the checkpoint with ``step``'s (atomically)."""
        save_checkpoint(self.writable() / CHECKPOINT, step=step, policy=policy,
                        optimizer=optimizer, generator=generator, fsync=self.fsync)

    def save_config(self, config: TrainConfig) -> None:
        """Replace ``config.json`` with ``config`` (atomically)."""
        atomic_write_bytes(self.writable() / CONFIG, config.to_json().encode(), fsync=self.fsync)

    def close(self) -> None:
        """Close the metrics file and release the lock (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def numbered_run(root: str | os.PathLike, label: str) -> Path:
    """``root/NNN-label``: the path of the next run in a folder of numbered runs (the
    smallest number from 001 up that no run directory in ``root`` uses yet)."""
    root = Path(root)
    index = 1
    while any(root.glob(f"{index:03d}-*")):
        index += 1
    return root / f"{index:03d}-{label}"


class _Run:
    """What :meth:`RunDir.open` checks and restores, in one bundle."""

    def __init__(self, config, env, policy, optimizer, generator, reference) -> None:
        self.config, self.env, self.policy = config, env, policy
        self.optimizer, self.generator, self.reference = optimizer, generator, reference


class RunResources:
    """An open run directory's lock and metrics file, closed together.

    Every writer of a run directory (the rlnb :class:`RunDir`, the TRL callback in
    :mod:`rlnb.integrations.trl`) holds one: ``close()`` flushes and closes the metrics
    file, then releases the lock even if closing the file raised, and is safe to call twice.
    """

    def __init__(self) -> None:
        self.lock: RunDirLock | None = None
        self.metrics: MetricsWriter | None = None

    def close(self) -> None:
        metrics, self.metrics = self.metrics, None
        lock, self.lock = self.lock, None
        try:
            if metrics is not None:
                metrics.close()
        finally:
            if lock is not None:
                lock.release()


def _load_reference(reference: torch.nn.Module, state: dict[str, torch.Tensor],
                    path: Path) -> None:
    """Load the saved reference state (possibly empty: a reference that is a view of the
    policy saves nothing), with an error naming the file when it does not fit."""
    mine = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if mine != saved:
        diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
        raise ValueError(
            f"{path} does not fit this run's reference policy: tensors {diff[:6]} differ "
            f"(names or shapes; the file holds {len(saved)}, the reference {len(mine)}); "
            "restore the file from a copy, or start a new run directory")
    if saved:
        reference.load_state_dict(state)


def _compares_by_value(obj: Any) -> bool:
    """Whether ``obj``'s class defines its own ``==`` (not object identity)."""
    return type(obj).__eq__ is not object.__eq__


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if it exists)."""
    top = None
    while not path.exists():
        top, parent = path, path.parent
        if parent == path:
            break
        path = parent
    return top
