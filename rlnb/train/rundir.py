"""A run is a directory. Everything in it is plain JSON or safetensors, never pickle.

::

    run_dir/
      config.json              TrainConfig, field by field
      env.json (+ .safetensors)     the sandbox, rebuildable (rlnb.serialization)
      policy.json              the policy's constructor arguments
      reference.safetensors    the frozen initial policy (only when beta > 0)
      metrics.jsonl            one JSON object per finished step, appended as it happens
      checkpoint.safetensors   policy, optimiser and sampler state of the last saved step
      rollouts.jsonl           samples of completions (when log_rollouts_steps > 0)

Crash safety: each step appends its metrics line first and then replaces the checkpoint
atomically (temporary file + ``os.replace``). A process killed at any instant leaves at
worst a partial last metrics line and a checkpoint one step behind; on resume the partial
line and any line newer than the checkpoint are dropped, and those steps re-run — with
the saved generator state, to the same numbers.
"""

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
from safetensors import safe_open

from rlnb.serialization import atomic_save_safetensors, atomic_write_bytes

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
REFERENCE = "reference.safetensors"
ROLLOUTS = "rollouts.jsonl"


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # "nan"/"inf": JSON has no literal for them
    return v


class MetricsWriter:
    """Appends one JSON line per step and flushes it, so a killed process keeps every
    finished step. A line is written with a single ``write`` call."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._f.flush()

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
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline yet: the write in flight when killed
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON: {line[:80]!r}") from None
    return rows


def truncate_metrics(path: str | os.PathLike, last_step: int) -> None:
    """Keep only complete rows with ``step <= last_step`` (atomic rewrite)."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


# --- checkpoints ---------------------------------------------------------------------
def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, _, idx, key = name.split(".", 3)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    step: int,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """One safetensors file: ``policy.*`` parameters, ``optimizer.*`` state, the sampling
    generator's state, and the step in the metadata. Replaced atomically."""
    tensors = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["generator.state"] = generator.get_state()
    meta = {"step": str(step), "optimizer": json.dumps(opt_meta), "format": "rlnb-checkpoint-1"}
    atomic_save_safetensors(tensors, path, meta)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Restore what :func:`save_checkpoint` wrote; returns the step."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "rlnb-checkpoint-1":
            raise ValueError(f"{path} is not a rlnb checkpoint (metadata {meta})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    policy.load_state_dict(
        {k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")}
    )
    if optimizer is not None:
        opt = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt, json.loads(meta["optimizer"])))
    if generator is not None:
        generator.set_state(tensors["generator.state"])
    return int(meta["step"])


def checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {})["step"])


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
    configs = {d: json.loads((d / CONFIG).read_text()) for d in dirs}
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
