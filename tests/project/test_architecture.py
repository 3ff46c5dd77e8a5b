"""The layers hold: the import-linter contracts of pyproject.toml are kept, and no two
modules of rlnb import each other, directly or through others (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]

def _cycles(graph, skip: frozenset[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {
        m: sorted(d for d in graph.find_modules_directly_imported_by(m) if (m, d) not in skip)
        for m in graph.modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            for j in range(i, len(edges[v])):
                w = edges[v][j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
    return found


def _graph():
    return grimp.build_graph("rlnb", include_external_packages=False)


def test_no_import_cycles_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between rlnb modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_cycle_finder_finds_a_cycle():
    class Graph:  # a -> b -> c -> a, and d alone
        modules = {"a", "b", "c", "d"}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}[m]

    assert _cycles(Graph()) == [["a", "b", "c"]]
    assert _cycles(Graph(), frozenset({("c", "a")})) == []


def test_import_contracts_are_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert cmd is not None, "import-linter is part of the dev extra: pip install -e '.[dev]'"
    proc = subprocess.run([cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _doc_snippets():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_architecture_page_has_its_snippets():
    assert len(_doc_snippets()) >= 6  # a sandbox, an objective, a probe, a figure, a
    # reproduction, driving a run


@pytest.mark.slow
@pytest.mark.parametrize("index", range(6))
def test_each_snippet_of_the_architecture_page_runs(index, tmp_path):
    """What docs/ARCHITECTURE.md shows a contributor runs as it stands (in a fresh
    process, in an empty folder, with this checkout first on the path)."""
    code = _doc_snippets()[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, code + "\n" + proc.stderr[-3000:]
