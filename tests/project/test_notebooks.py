"""Every notebook in notebooks/ executes headless, top to bottom, without an error.

Outputs are not compared (plotly figures and widgets differ run to run); an exception in
any cell fails the test with the cell's traceback.
"""

import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no numbered notebooks"


def _git(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, capture_output=True,
                          check=False)


def _in_git() -> bool:
    return _git("rev-parse", "--is-inside-work-tree").returncode == 0


def _staged(path: Path) -> bytes:
    """The notebook as it is in git's index (what a commit would hold)."""
    rel = path.relative_to(ROOT).as_posix()
    return _git("show", f":{rel}").stdout if _in_git() else path.read_bytes()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nb = json.loads(_staged(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} is committed with outputs; strip them"
            assert cell.get("execution_count") is None, f"{path.name}: execution counts committed"


@pytest.mark.skipif(not _in_git(), reason="not a git checkout")
def test_git_strips_outputs_when_a_notebook_is_staged():
    """After `make install`, staging a notebook that JupyterLab saved with outputs stores
    exactly the committed source: the clone stays clean and commits hold no outputs."""
    path = NOTEBOOKS[0]
    rel = path.relative_to(ROOT).as_posix()
    attr = _git("check-attr", "filter", "--", rel).stdout.decode()
    assert attr.strip().endswith("filter: nbstripout"), f".gitattributes names no filter: {attr}"
    clean = _git("config", "--get", "filter.nbstripout.clean").stdout.decode().strip()
    assert clean, "the nbstripout git filter is not configured: run `make install` (or `make git-filters`)"
    committed = _staged(path)
    nb = json.loads(committed)
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 7
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["42\n"]},
                       {"output_type": "display_data", "metadata": {},
                        "data": {"text/plain": ["<Figure>"]}}]
    executed = (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()
    assert executed != committed
    as_staged = _git("hash-object", f"--path={rel}", "--stdin", stdin=executed)
    assert as_staged.returncode == 0, as_staged.stderr.decode()
    want = _git("hash-object", "--no-filters", "--stdin", stdin=committed).stdout
    assert as_staged.stdout == want, "staging the executed notebook would not give the committed source"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RLNB_QUICK", "1")  # notebooks may shrink their budgets under test
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RLNB_CACHE", os.environ.get("RLNB_CACHE", str(tmp_path / "cache")))
    nb = nbformat.reads(_staged(path).decode(), as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
