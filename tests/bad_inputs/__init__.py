"""Tables of bad inputs, one module per area, collected by ``tests/test_bad_inputs.py``.

Each row is a :class:`BadInput`: a call that must fail with a clear error. The test runs
it in an empty working directory (its ``tmp`` argument), then asserts

* the exception type (``raises``),
* that every word of ``words`` appears in the message (case-insensitive): the parameter
  or file, the value, the allowed range or valid names, what to do,
* that no file was left behind: the tree under ``tmp`` is the same after the call as
  before it (files a row's ``setup`` made are allowed; nothing new, nothing changed).

A CLI row raises :class:`CLIExit` through :func:`cli` (status and the one-line message
printed on standard error), so the same three assertions apply to it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BadInput:
    id: str
    """Unique, short: ``area/what-is-wrong``."""
    call: Callable[[Path], Any]
    """The bad call, given the row's working directory (already the cwd)."""
    raises: type[BaseException] | tuple[type[BaseException], ...]
    """The exception the call must raise."""
    words: Sequence[str] = ()
    """Words the message must contain (case-insensitive)."""
    setup: Callable[[Path], Any] | None = None
    """Prepares the directory before the call (its files are not 'left behind')."""
    marks: Sequence[Any] = field(default_factory=tuple)
    """pytest marks for this row (e.g. ``pytest.mark.slow``)."""


def row_maker(area: str) -> Callable[..., BadInput]:
    """``row(id, call, raises, *words)`` for a call that needs no working directory:
    ``call()`` takes no argument and the row's id is ``<area>/<id>``."""

    def row(id: str, call: Callable[[], Any], raises, *words: str) -> BadInput:
        return BadInput(id=f"{area}/{id}", call=lambda _tmp: call(), raises=raises, words=words)

    return row


class CLIExit(Exception):
    """``rlnb`` exited non-zero: ``status`` and what it printed on standard error."""

    def __init__(self, status: int, stderr: str) -> None:
        super().__init__(f"exit status {status}: {stderr.strip()}")
        self.status, self.stderr = status, stderr


def cli(*argv: str, expect_status: int = 2) -> None:
    """Run ``rlnb *argv`` in this process; raise :class:`CLIExit` when it exits non-zero
    with ``expect_status`` and one line on standard error. A traceback, another status or
    a zero status raise AssertionError (the row then fails)."""
    from rlnb.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as e:  # argparse's own errors exit 2
            status = e.code if isinstance(e.code, int) else 1
    text = err.getvalue()
    if status == 0:
        raise AssertionError(f"rlnb {' '.join(argv)} exited 0; stderr: {text!r}")
    if status != expect_status:
        raise AssertionError(f"rlnb {' '.join(argv)} exited {status}, not {expect_status}: {text!r}")
    lines = [ln for ln in text.strip().splitlines()
             if ln.strip() and not ln.startswith(("usage:", " "))]
    if "Traceback" in text or len(lines) != 1:
        raise AssertionError(f"rlnb {' '.join(argv)} must print one error line, got {text!r}")
    raise CLIExit(status, lines[0])
