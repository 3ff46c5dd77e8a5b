"""Same seed, same numbers — the README's own examples, run as a reader runs them.

The README promises "same seed, same metrics, bit for bit, on CPU". These tests take its
code blocks literally (only the step budget is cut) and run them twice: in one process
(nothing may come from the global random state), and in two processes, the second while
another process keeps the other core busy (nothing may depend on timing or load: thread
counts are settings of the run, see ``TrainConfig.torch_threads`` / ``matmul_threads``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _first_example() -> str:
    block = _readme_blocks()[0]
    assert "Trainer(" in block and "card_base_logits" in block, block
    return block


def _lm_example(steps: int) -> str:
    """The README's language-model block, with its imports from the first block, cut to
    ``steps`` training steps and without the pass@k sampling after training."""
    first, lm = _readme_blocks()[0], _readme_blocks()[1]
    assert "LMPolicy" in lm and "max_steps=300" in lm, lm
    imports = "\n".join(ln for ln in first.splitlines() if ln.startswith(("import", "from")))
    lm = lm.replace("max_steps=300", f"max_steps={steps}")
    lm = lm[: lm.index("counts = sample_counts")]
    return imports + "\n" + lm


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_the_first_example_gives_the_same_metrics_twice_in_one_process(tmp_path, monkeypatch):
    code = _first_example().replace("training_curves(df", "_fig = training_curves(df")
    runs = []
    for i in range(2):
        work = tmp_path / f"run{i}"
        work.mkdir()
        monkeypatch.chdir(work)
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
        runs.append(_metrics(work / "runs" / "sb-grpo"))
    assert len(runs[0]) == 100
    assert runs[0] == runs[1]


SCRIPT = """
import json, os, sys
os.chdir(sys.argv[1])
{code}
rows = [json.loads(l) for l in open("runs/factor-grpo/metrics.jsonl")]
print("METRICS " + json.dumps([{{k: v for k, v in r.items() if not k.startswith("time/")}}
                               for r in rows]))
"""


def _run_lm_example(work: Path, env: dict[str, str]) -> list[dict]:
    work.mkdir()
    script = work.parent / f"{work.name}.py"
    script.write_text(SCRIPT.format(code=textwrap.indent(_lm_example(12), "")))
    out = subprocess.run([sys.executable, str(script), str(work)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("METRICS "))
    return json.loads(line.removeprefix("METRICS "))


@pytest.mark.slow
def test_the_lm_example_gives_the_same_metrics_with_the_other_core_busy(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "RLNB_CACHE": os.environ.get("RLNB_CACHE", str(tmp_path / "cache")),
           "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
    quiet = _run_lm_example(tmp_path / "quiet", env)  # also pre-trains and caches the base
    busy = []
    for _ in range(max(1, (os.cpu_count() or 2) - 1)):  # every other core
        busy.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
    try:
        time.sleep(0.5)
        loaded = _run_lm_example(tmp_path / "loaded", env)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert len(quiet) == 12
    for a, b in zip(quiet, loaded, strict=True):
        assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
