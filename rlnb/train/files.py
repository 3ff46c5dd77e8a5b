"""The files of a run directory: their names, the config file, leftovers of killed writes.

The layout and its guarantees are described in :mod:`rlnb.train.rundir`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rlnb.serialization import stale_temporary
from rlnb.train.config import TrainConfig

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
