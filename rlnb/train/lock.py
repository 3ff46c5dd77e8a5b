"""One writer per run directory: an exclusive lock held while a run writes into it."""

from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
from pathlib import Path

from rlnb.train.files import LOCK

try:
    import fcntl
except ImportError:  # not POSIX: the in-process table still guards against two Trainers
    fcntl = None  # type: ignore[assignment]


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
