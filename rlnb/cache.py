"""Where rlnb keeps what it makes once and re-uses (base models, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """``$RLNB_CACHE/<name>`` if ``RLNB_CACHE`` is set, else ``~/.cache/rlnb/<name>``
    (read at each call, so tests and users may point it elsewhere at any time)."""
    root = os.environ.get("RLNB_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "rlnb"
    return base / name
