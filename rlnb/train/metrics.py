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
from rlnb.train.foreign_runs import FOREIGN_RUNS, foreign_kind, load_foreign, model_dir_error


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
def _kind(p: Path) -> str | None:
    """``"rlnb"`` (a run directory), ``"trl"``, ``"verl"`` (:mod:`rlnb.train.foreign_runs`)
    or None. A TRL checkpoint also holds a config.json (the model's): trainer_state.json
    tells it apart."""
    if (p / CONFIG).exists() and (p / METRICS).exists():
        return "rlnb"
    kind = foreign_kind(p)
    if kind is None and (p / CONFIG).exists() and model_dir_error(p) is None:
        kind = "rlnb"  # a run that has logged no step yet
    return kind


def _expand(runs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[tuple[Path, str]]:
    items = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    out: list[tuple[Path, str]] = []
    for item in items:
        p = Path(item)
        if p.is_file():  # a log named explicitly: load_verl_log says what is wrong with it
            out.append((p, foreign_kind(p) or "verl"))
        elif kind := _kind(p):
            out.append((p, kind))
        elif error := model_dir_error(p):
            raise FileNotFoundError(error)
        elif p.is_dir():  # a parent folder of runs
            out.extend((c, k) for c in sorted(p.iterdir()) if (k := _kind(c)))
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item)))
            out.extend((m, k) for m in matches if (k := _kind(m)))
    if not out:
        raise FileNotFoundError(
            f"no runs found in {runs!r}: expected a rlnb run directory ({CONFIG} and "
            f"{METRICS}), {FOREIGN_RUNS}, or a folder of them"
        )
    return out


def load_runs(
    runs: str | os.PathLike | Iterable[str | os.PathLike], *, wide: bool = False
) -> pd.DataFrame:
    """Load the metrics of one or many runs into one DataFrame.

    Args:
        runs: a run directory, a folder of run directories, a glob, or a list of them.
            Runs made elsewhere load too (:mod:`rlnb.train.foreign_runs`): a TRL or
            transformers output or checkpoint directory (found by its
            ``trainer_state.json``) and a verl log file (its file logger's JSONL or its
            console output: a named file is read as one, in a folder or a glob a
            ``.jsonl``, ``.log``, ``.txt`` or ``.out`` file in one of those formats).
        wide: one column per metric instead of the tidy ``metric, value`` pair.

    Returns:
        Tidy: ``run, step, metric, value`` plus ``seed`` and one column for every config
        option whose value differs between the loaded rlnb runs (the sweep's axes). The
        ``run`` column is the run directory's name. In the wide form a config column whose
        name is also a metric's (``learning_rate``) is called ``config/<name>``. With runs
        made elsewhere, also ``source`` (``rlnb``, ``trl``, ``verl``) and, tidy only,
        ``source_metric`` (the name in the log; metrics are under rlnb's names where they
        compute the same thing, docs/NAMES.md); their seed and config columns are empty.

    >>> df = load_runs("runs/")                         # doctest: +SKIP
    >>> df[df.metric == "reward"].groupby("step").value.mean()  # doctest: +SKIP
    """
    found = _expand(runs)
    dirs = [p for p, kind in found if kind == "rlnb"]
    foreign = len(dirs) < len(found)
    configs = {d: read_config(d) for d in dirs}
    keys = sorted({k for c in configs.values() for k in c})
    varying = [
        k for k in keys
        if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1
    ]
    columns = ["seed", *[v for v in varying if v != "seed"]]
    frames = []
    for d, kind in found:
        if kind != "rlnb":
            df = load_foreign(d, kind)
            for k in columns:
                df[k] = None
            if not df.empty:
                frames.append(df)
            continue
        rows = read_metrics(d / METRICS)
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df = df.melt(id_vars="step", var_name="metric", value_name="value")
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        df.insert(0, "run", d.name)
        for k in columns:
            val = configs[d].get(k)
            df[k] = json.dumps(val) if isinstance(val, (list, dict)) else val
        if foreign:
            df["source"], df["source_metric"] = "rlnb", df["metric"]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    out = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    if foreign:
        out = out[["run", "step", "metric", "value", *columns, "source", "source_metric"]]
    out = out.sort_values(["run", "step", "metric"], kind="stable").reset_index(drop=True)
    if wide:
        out = out.drop(columns="source_metric", errors="ignore")
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
