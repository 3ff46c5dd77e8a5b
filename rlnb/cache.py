"""Where rlnb keeps what it makes once and re-uses (base models, compiled kernels).

A cache that holds code (the compiled kernels of :mod:`rlnb.policies.lm.fast.native`) must be
private: a folder another user can write to would let them plant a library that this
process then loads. :func:`untrusted` says why a path is not private, and
:func:`private_dir` gives a per-user folder (mode 0o700) to use instead.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def cache_dir(name: str) -> Path:
    """``$RLNB_CACHE/<name>`` if ``RLNB_CACHE`` is set, else ``~/.cache/rlnb/<name>``
    (read at each call, so tests and users may point it elsewhere at any time)."""
    root = os.environ.get("RLNB_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "rlnb"
    return base / name


def untrusted(path: str | os.PathLike) -> str | None:
    """Why another user could change what ``path`` (an existing file or folder) holds, or
    None when it is private: a symbolic link, owned by another user, writable by group or
    others; for a folder also a folder above it that another user owns or may write to
    (unless it is sticky, as ``/tmp`` is). Always None where there are no user ids."""
    if not hasattr(os, "getuid"):
        return None
    uid, path = os.getuid(), Path(path)
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"{path} cannot be inspected ({err.strerror or err})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if st.st_uid != uid:
        return f"{path} is owned by another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    if stat.S_ISDIR(st.st_mode):
        for parent in Path(os.path.realpath(path)).parents:
            try:
                pst = os.stat(parent)
            except OSError as err:
                return f"{parent} cannot be inspected ({err.strerror or err})"
            if pst.st_uid not in (uid, 0):
                return f"{parent}, a folder above {path}, is owned by another user"
            if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
                return f"{parent}, a folder above {path}, is writable by other users"
    return None


def private_dir(name: str) -> Path:
    """A folder only this user can write to: ``<tmp>/rlnb-<uid>-<name>`` (made with mode
    0o700), or, when that one is not private (made by someone else), a fresh
    ``tempfile.mkdtemp`` folder of this process."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    path = Path(tempfile.gettempdir()) / f"rlnb-{uid}-{name}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"rlnb-{name}-"))
    if untrusted(path) is not None:
        return Path(tempfile.mkdtemp(prefix=f"rlnb-{name}-"))
    return path
