"""Every bad input gets a clear error, before anything is written.

The rows live in ``tests/bad_inputs/<area>.py`` (``CASES``, lists of
:class:`tests.bad_inputs.BadInput`); this file runs them all. See that package's
docstring for what each row asserts.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import tests.bad_inputs as tables
from tests.bad_inputs import BadInput


def _collect() -> list[BadInput]:
    rows: list[BadInput] = []
    for info in sorted(pkgutil.iter_modules(tables.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{tables.__name__}.{info.name}")
        rows.extend(module.CASES)
    return rows


CASES = _collect()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_the_tables_are_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(CASES) >= 150, f"{len(CASES)} bad inputs; the promise is at least 150"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=list(c.marks)) for c in CASES])
def test_bad_input_is_refused_clearly_and_writes_nothing(case: BadInput, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if case.setup is not None:
        case.setup(work)
    before = _tree(work)
    with pytest.raises(case.raises) as info:
        case.call(work)
    message = str(info.value)
    if hasattr(info.value, "stderr"):
        message = info.value.stderr
    missing = [w for w in case.words if w.lower() not in message.lower()]
    assert not missing, f"message lacks {missing}: {message!r}"
    assert _tree(work) == before, "files were left behind or changed"
