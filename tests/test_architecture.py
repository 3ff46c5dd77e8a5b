"""The layers hold: the import-linter contracts of pyproject.toml are kept, and no two
modules of rlnb import each other, directly or through others (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parent.parent

#: Imports that close a cycle today, each with why it is there. They are left out of the
#: cycle check below and reported by test_known_cycles (a skip naming them while they last).
KNOWN_CYCLE_EDGES = {
    ("rlnb.serialization", "rlnb.envs"): "serialization._resolve imports rlnb.envs inside the "
    "function so that rlnb's own classes are registered before a spec is rebuilt",
    ("rlnb.serialization", "rlnb.policies"): "the same, for rlnb.policies",
}


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


def _in_lm_split(cycle: list[str]) -> bool:
    """A cycle among the modules of the language-model policy package only (being split)."""
    return all(m.startswith(("rlnb.policies.lm", "rlnb.policies.native")) for m in cycle)


def test_no_import_cycles_between_modules():
    cycles = _cycles(_graph(), frozenset(KNOWN_CYCLE_EDGES))
    ours = [c for c in cycles if not _in_lm_split(c)]
    assert not ours, "import cycles between rlnb modules:\n" + "\n".join(
        " <-> ".join(c) for c in ours
    )
    if cycles:
        pytest.skip("import cycles inside the language-model policy package (being split): "
                    + "; ".join(" <-> ".join(c) for c in cycles))


def test_known_cycles():
    """The imports KNOWN_CYCLE_EDGES exempts still close a cycle: say so, by name."""
    graph = _graph()
    still = [
        f"{a} -> {b} ({why})"
        for (a, b), why in KNOWN_CYCLE_EDGES.items()
        if b in graph.find_modules_directly_imported_by(a)
    ]
    if still:
        pytest.skip("known import cycle rlnb.serialization -> rlnb.envs / rlnb.policies -> "
                    "rlnb.envs.base / rlnb.policies.base -> rlnb.serialization: " + "; ".join(still))


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
    if cmd is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
