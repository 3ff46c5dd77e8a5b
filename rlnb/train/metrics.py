"""The metrics file of a run (``metrics.jsonl``): appending, reading, loading many runs."""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rlnb.serialization import atomic_write_bytes
from rlnb.train.files import CONFIG, METRICS, read_config


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # "nan"/"inf": JSON has no literal for them
    return v


class MetricsWriter:
    """Appends one JSON line per step and flushes it, so a killed process keeps every
    finished step. A line is written with a single ``write`` call."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._f.flush()
        if self.fsync:  # on the disk before the checkpoint that counts the step
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file. A partially written last line (a process killed in
    the middle of a write) is ignored; a corrupt line elsewhere raises."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline yet: the write in flight when killed
                break
            raise ValueError(
                f"{path}: line {i + 1} is not valid JSON: {line[:80]!r}; the file is damaged: "
                "repair or delete that line, or start a new run directory") from None
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(
                f"{path}: line {i + 1} is not a metrics row (a JSON object with an integer "
                f"'step'): {line[:80]!r}; repair or delete that line, or start a new run "
                "directory")
        rows.append(row)
    return rows


def truncate_metrics(path: str | os.PathLike, last_step: int, *, fsync: bool = True) -> None:
    """Keep only complete rows with ``step <= last_step`` (atomic rewrite)."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode(), fsync=fsync)


def missing_steps(rows: list[dict[str, Any]], last_step: int) -> list[int]:
    """The steps ``1..last_step`` that have no row in ``rows``."""
    have = {r["step"] for r in rows}
    return [s for s in range(1, last_step + 1) if s not in have]


def describe_steps(steps: list[int], limit: int = 12) -> str:
    """``"4, 7-9, 12"``: a short list of step numbers (ranges collapsed)."""
    parts: list[str] = []
    start = prev = None
    for s in steps:
        if prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = s
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    more = f" and {len(parts) - limit} more ranges" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# --- loading runs back ---------------------------------------------------------------
def _expand(runs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    items = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if (p / CONFIG).exists():
            out.append(p)
        elif p.is_dir():  # a parent folder of runs
            out.extend(sorted(c for c in p.iterdir() if (c / CONFIG).exists()))
        else:
            out.extend(sorted(Path(m) for m in glob.glob(str(item)) if (Path(m) / CONFIG).exists()))
    if not out:
        raise FileNotFoundError(
            f"no run directories found in {runs!r}: a run directory holds {CONFIG} and {METRICS}"
        )
    return out


def load_runs(
    runs: str | os.PathLike | Iterable[str | os.PathLike], *, wide: bool = False
) -> pd.DataFrame:
    """Load the metrics of one or many runs into one DataFrame.

    Args:
        runs: a run directory, a folder of run directories, a glob, or a list of them.
        wide: one column per metric instead of the tidy ``metric, value`` pair.

    Returns:
        Tidy: ``run, step, metric, value`` plus ``seed`` and one column for every config
        option whose value differs between the loaded runs (the sweep's axes). The
        ``run`` column is the run directory's name. In the wide form a config column whose
        name is also a metric's (``learning_rate``) is called ``config/<name>``.

    >>> df = load_runs("runs/")                         # doctest: +SKIP
    >>> df[df.metric == "reward"].groupby("step").value.mean()  # doctest: +SKIP
    """
    dirs = _expand(runs)
    configs = {d: read_config(d) for d in dirs}
    keys = sorted({k for c in configs.values() for k in c})
    varying = [
        k for k in keys
        if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1
    ]
    frames = []
    for d in dirs:
        rows = read_metrics(d / METRICS)
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df = df.melt(id_vars="step", var_name="metric", value_name="value")
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        df.insert(0, "run", d.name)
        for k in ["seed", *[v for v in varying if v != "seed"]]:
            val = configs[d].get(k)
            df[k] = json.dumps(val) if isinstance(val, (list, dict)) else val
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    out = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    out = out.sort_values(["run", "step", "metric"], kind="stable").reset_index(drop=True)
    if wide:
        # a config column named like a metric (learning_rate) becomes config/<name>
        clash = {c: f"config/{c}" for c in out.columns
                 if c not in ("run", "step") and c in set(out["metric"])}
        out = out.rename(columns=clash)
        index = [c for c in out.columns if c not in ("metric", "value")]
        metrics = sorted(set(out["metric"]))
        # dropna=False keeps runs whose sweep value is None (e.g. epsilon_high=None)
        out = out.pivot_table(index=index, columns="metric", values="value", sort=True,
                              dropna=False)
        out = out.dropna(how="all", subset=metrics).reset_index()
        out.columns.name = None
    return out
