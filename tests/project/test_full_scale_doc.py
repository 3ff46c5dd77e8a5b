"""docs/FULL_SCALE.md: every snippet runs as it stands (fresh process, empty folder)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _snippets():
    text = (ROOT / "docs" / "FULL_SCALE.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_page_has_its_snippets():
    assert len(_snippets()) == 2  # mixed precision; micro-batches, checkpointing, LoRA


@pytest.mark.parametrize("index", range(2))
def test_each_snippet_runs(index, tmp_path):
    code = _snippets()[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, code + "\n" + proc.stderr[-3000:]
