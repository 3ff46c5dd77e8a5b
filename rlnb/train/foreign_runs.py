"""Runs made elsewhere, read into rlnb's tidy metrics frame: a TRL (or any transformers
``Trainer``) output directory, and verl's metric logs.

:func:`load_trl_run` reads ``trainer_state.json``'s ``log_history``; :func:`load_verl_log`
reads verl's file logger (``trainer.logger=['file']``: one JSON line
``{"step": N, "data": {...}}`` per ``Tracking.log`` call, ``verl/utils/tracking.py``
``FileLogger``) or its console logger (``trainer.logger=['console']``: lines
``step:N - key:value - key:value ...``, ``verl/utils/logger/aggregate_logger.py``
``concat_dict_to_str``, as printed to stdout, Ray's ``(TaskRunner pid=...)`` prefix and
colour codes allowed). :func:`rlnb.train.load_runs` takes such directories and files as it
takes rlnb run directories, so ``load_runs([rlnb_dir, trl_dir, "verl.jsonl"])`` puts the
three runs in one frame.

Both return the tidy frame of ``load_runs``: ``run, step, metric, value``, plus
``source`` (``"trl"`` or ``"verl"``) and ``source_metric``, the name in the log. A metric
is under rlnb's name where rlnb logs the same quantity, under its own name otherwise:

- TRL: ``reward``, ``entropy``, ``kl``, ``frac_reward_zero_std``, ``clip_ratio/low_mean``,
  ``clip_ratio/high_mean``, ``clip_ratio/region_mean``, ``completions/mean_length``,
  ``completions/min_length``, ``completions/max_length``, ``completions/clipped_ratio``,
  ``loss``, ``grad_norm``, ``learning_rate`` are rlnb's names already (rlnb's Trainer logs
  TRL's names with TRL's formulas). One is not: TRL's ``reward_std`` (TRL 1.16: the std of
  all the batch's rewards) is read as ``trl/reward_std``, since rlnb's ``reward_std`` is
  the mean of the groups' stds.
- verl: ``critic/score/mean`` -> ``reward`` (mean verifier score of a completion);
  ``actor/entropy`` -> ``entropy`` (verl aggregates it by ``loss_agg_mode``: with
  ``token-mean``, rlnb's token mean); ``actor/kl_loss`` -> ``kl`` (KL to the reference in
  the loss, ``use_kl_loss``); ``actor/pg_loss`` -> ``pg_loss`` (verl sums it over
  mini-batches and epochs: the same with one mini-batch and ``ppo_epochs=1``);
  ``actor/grad_norm`` -> ``grad_norm``; ``actor/lr`` -> ``learning_rate``;
  ``actor/pg_clipfrac`` -> ``clip_ratio/region_mean`` (tokens with A > 0 and
  r > 1 + eps_high or A < 0 and r < 1 - eps_low); ``actor/pg_clipfrac_lower`` ->
  ``clip_ratio/dual_mean`` (A < 0 and r > ``clip_ratio_c``); ``response_length/mean``,
  ``/min``, ``/max`` -> ``completions/mean_length``, ``min_length``, ``max_length``;
  ``response_length/clip_ratio`` -> ``completions/clipped_ratio`` (verl: the length
  reached ``max_response_length``; TRL and rlnb: no EOS within the budget);
  ``timing_s/gen``, ``timing_s/reward``, ``timing_s/step`` -> ``time/rollout_seconds``,
  ``time/reward_seconds``, ``time/step_seconds``. verl averages its actor metrics over
  its micro-batches.

Every other name is kept as the log spells it (TRL's ``policy_loss``, ``num_tokens``,
``rewards/<function>/mean``, ``eval_*``; verl's ``actor/ppo_kl`` (a k1 estimate: rlnb's
``approx_kl`` is k2), ``critic/advantages/mean``, ``val-core/<data source>/...``,
``perf/...``). If a log also holds a metric under the rlnb name itself, that one keeps the
name and the mapped one keeps its source name. The table is :data:`TRL_NAMES` and
:data:`VERL_NAMES`, and docs/NAMES.md ("Metrics read from TRL and verl runs").

What a step is: TRL's and transformers' ``global_step`` (optimiser steps) and verl's
``global_steps`` (one rollout batch each; step 0 holds the validation before training).
A metric logged twice for a step (a resumed run that replayed steps) keeps its last value.
Values that are not numbers (verl's lists, strings) and missing values (NaN, which verl's
file logger writes as ``null``) are left out; booleans count as 0 and 1.
transformers' end-of-training summary (the entry with ``train_loss`` and ``total_flos``:
``train_runtime``, ``train_samples_per_second``, ...) is not a step's metric: it is left
out of the frame and kept in ``df.attrs["summary"]`` (a list of dicts, one per
``train()`` call).

>>> df = load_trl_run("out/grpo")                  # doctest: +SKIP
>>> df[df.metric == "reward"].set_index("step").value  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

#: TRL metric names whose quantity differs from rlnb's metric of the same name, and the
#: name they are read under. Every other TRL name is rlnb's own or kept as it is.
TRL_NAMES: dict[str, str] = {
    "reward_std": "trl/reward_std",
}

#: verl metric names read under rlnb's name for the same quantity.
VERL_NAMES: dict[str, str] = {
    "critic/score/mean": "reward",
    "actor/entropy": "entropy",
    "actor/kl_loss": "kl",
    "actor/pg_loss": "pg_loss",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "learning_rate",
    "actor/pg_clipfrac": "clip_ratio/region_mean",
    "actor/pg_clipfrac_lower": "clip_ratio/dual_mean",
    "response_length/mean": "completions/mean_length",
    "response_length/min": "completions/min_length",
    "response_length/max": "completions/max_length",
    "response_length/clip_ratio": "completions/clipped_ratio",
    "timing_s/gen": "time/rollout_seconds",
    "timing_s/reward": "time/reward_seconds",
    "timing_s/step": "time/step_seconds",
}

TRAINER_STATE = "trainer_state.json"
COLUMNS = ["run", "step", "metric", "value", "source", "source_metric"]
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_SUMMARY_KEYS = ("train_loss", "total_flos")  # transformers' Trainer._finalize_training
#: What is read, in words (for error messages).
FOREIGN_RUNS = (
    "a TRL or transformers output directory (trainer_state.json, or checkpoint-N/"
    "trainer_state.json), or a verl log: its file logger's JSONL (trainer.logger=['file']) "
    "or its console output (trainer.logger=['console'])"
)


# --- shared ---------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    """A finite or infinite float of a logged value; None for NaN and non-numbers."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        v = float(v)
        return None if math.isnan(v) else v
    return None


def _tidy(records: Iterable[tuple[int, dict[str, Any]]], names: dict[str, str], run: str,
          source: str) -> pd.DataFrame:
    """The tidy frame of ``(step, {name: value})`` records, names mapped by ``names``."""
    rows = [(step, k, x) for step, data in records for k, v in data.items()
            if (x := _number(v)) is not None]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows, columns=["step", "source_metric", "value"])
    df = df.drop_duplicates(["step", "source_metric"], keep="last")  # replayed steps
    logged = set(df["source_metric"])
    rename = {k: v for k, v in names.items() if k in logged and v not in logged}
    df["metric"] = df["source_metric"].map(lambda k: rename.get(k, k))
    df["run"] = run
    df["source"] = source
    df["step"] = df["step"].astype("int64")
    df["value"] = df["value"].astype("float64")
    return df[COLUMNS].sort_values(["step", "metric"], kind="stable").reset_index(drop=True)


# --- TRL ------------------------------------------------------------------------------
def _checkpoints(d: Path) -> list[tuple[int, Path]]:
    out = []
    if d.is_dir():
        for c in d.iterdir():
            m = _CHECKPOINT.fullmatch(c.name)
            if m and (c / TRAINER_STATE).is_file():
                out.append((int(m.group(1)), c))
    return sorted(out)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the file is damaged: read "
                         "another checkpoint's trainer_state.json") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError(f"{path} is not a transformers TrainerState: it has no "
                         "'log_history' list; pass a TRL or transformers output directory")
    return state


def trl_state_file(path: str | os.PathLike) -> Path:
    """The ``trainer_state.json`` that holds the most steps of the run at ``path``: its
    own, or its last ``checkpoint-N``'s (a run saved only in checkpoints), or ``path``
    itself when it names the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; pass a TRL output directory, a "
                                "checkpoint-N directory, or a trainer_state.json")
    if p.is_file():
        if p.name != TRAINER_STATE:
            raise ValueError(f"{p} is not a {TRAINER_STATE}; pass a TRL output directory, a "
                             f"checkpoint-N directory, or its {TRAINER_STATE}")
        return p
    own = p / TRAINER_STATE
    ckpts = _checkpoints(p)
    if not own.is_file() and not ckpts:
        raise FileNotFoundError(
            f"{p} holds no {TRAINER_STATE} (nor checkpoint-N/{TRAINER_STATE}): a TRL or "
            "transformers Trainer writes it in every checkpoint (save_strategy='steps') and "
            f"with trainer.save_state(); pass its output_dir or a checkpoint-N directory")
    if not ckpts:
        return own
    last = ckpts[-1][1] / TRAINER_STATE
    if own.is_file() and _read_state(own).get("global_step", 0) >= ckpts[-1][0]:
        return own  # save_state() after train(): the whole run, the summary included
    return last


def _trl_run_name(path: Path) -> str:
    """The directory given (a trainer_state.json: its directory), checkpoints as
    ``<output dir>/checkpoint-N``."""
    d = path.resolve()
    d = d.parent if d.is_file() else d
    return f"{d.parent.name}/{d.name}" if _CHECKPOINT.fullmatch(d.name) else d.name


def load_trl_run(path: str | os.PathLike, *, run: str | None = None) -> pd.DataFrame:
    """The metrics of a TRL (or transformers ``Trainer``) run as a tidy frame.

    Args:
        path: the run's ``output_dir`` (its ``trainer_state.json``, or the last
            ``checkpoint-N/trainer_state.json`` if it has none), a ``checkpoint-N``
            directory (the steps up to N), or a ``trainer_state.json``.
        run: the ``run`` column; default the output directory's name
            (``<output dir>/checkpoint-N`` for a checkpoint).

    Returns:
        ``run, step, metric, value, source ("trl"), source_metric``, names mapped as the
        module's table says; ``attrs["summary"]``: the end-of-training summaries,
        ``attrs["trainer_state"]``: the file read.
    """
    state_file = trl_state_file(path)
    state = _read_state(state_file)
    records, summary = [], []
    for i, entry in enumerate(state["log_history"]):
        step = entry.get("step") if isinstance(entry, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{state_file}: log_history entry {i} has no integer 'step' "
                             f"({str(entry)[:80]}); the file is not a TrainerState's")
        data = {k: v for k, v in entry.items() if k != "step"}
        if any(k in data for k in _SUMMARY_KEYS):
            summary.append(entry)
        else:
            records.append((step, data))
    df = _tidy(records, TRL_NAMES, run if run is not None else _trl_run_name(Path(path)), "trl")
    df.attrs["summary"] = summary
    df.attrs["trainer_state"] = str(state_file)
    return df


# --- verl -----------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# concat_dict_to_str: "step:{step}" then " - {key}:{pprint.pformat(value)}" per number;
# preceded by Ray's "(TaskRunner pid=...)" prefix or a progress bar's leftovers, if any
_CONSOLE = re.compile(r"(?:^|(?<=[\s)]))step:(-?\d+)((?: - .*)?)$")
# pprint.pformat of a NumPy scalar under NumPy >= 2: np.float64(0.5), np.int64(3)
_NUMPY_REPR = re.compile(r"np\.[a-z]+\d*\((.*)\)")


def _console_value(text: str) -> float | None:
    text = text.strip()
    m = _NUMPY_REPR.fullmatch(text)
    if m:
        text = m.group(1)
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return _number(float(text))
    except ValueError:
        return None  # e.g. a complex number: not a metric


def _console_record(line: str) -> tuple[int, dict[str, float]] | None:
    m = _CONSOLE.search(_ANSI.sub("", line).rstrip())
    if m is None:
        return None
    data: dict[str, float] = {}
    for part in m.group(2).split(" - ")[1:]:
        key, sep, value = part.rpartition(":")
        if sep and key and (x := _console_value(value)) is not None:
            data[key] = x
    return int(m.group(1)), data


def _jsonl_record(line: str) -> tuple[int, dict[str, Any]] | None:
    """``(step, data)`` of a line of verl's file logger; None if the line is not one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    step, data = row.get("step"), row.get("data")
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(data, dict):
        return None
    return step, data


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line in f:
            # a progress bar redraws with carriage returns: each redraw is a line
            yield from line.replace("\r\n", "\n").split("\r")


def verl_log_format(path: str | os.PathLike) -> str | None:
    """``"jsonl"`` (verl's file logger), ``"console"`` (its console logger) or None: what
    the file at ``path`` is: JSONL if its first non-blank line is a file logger record,
    console if any line is in the console format."""
    p = Path(path)
    if not p.is_file():
        return None
    first = True
    for line in _lines(p):
        if not line.strip():
            continue
        if first and _jsonl_record(line) is not None:
            return "jsonl"
        first = False  # (a console log may open with verl's pprint of its config: "{...")
        if _console_record(line) is not None:
            return "console"
    return None


def _rlnb_hint(line: str) -> str:
    """A hint if ``line`` looks like a row of rlnb's own metrics.jsonl."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return ""
    if isinstance(row, dict) and "step" in row and "data" not in row:
        return (" (a rlnb metrics.jsonl row? load its run directory with "
                "rlnb.train.load_runs)")
    return ""


def _verl_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    lines = list(_lines(path))
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        rec = _jsonl_record(line)
        if rec is not None:
            records.append(rec)
            continue
        if i == len(lines) - 1 and not line.endswith("\n"):
            break  # the line being written when the run was killed
        raise ValueError(
            f"{path}: line {i + 1} is not a line of verl's file logger, "
            f'{{"step": N, "data": {{...}}}}: {line[:80]!r}{_rlnb_hint(line)}; repair or '
            "delete that line")
    return records


def load_verl_log(path: str | os.PathLike, *, run: str | None = None) -> pd.DataFrame:
    """The metrics of a verl run, from its file logger's JSONL or its console output.

    Args:
        path: the JSONL file verl's ``FileLogger`` writes
            (``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``, or
            ``$VERL_FILE_LOGGER_PATH``), or a file holding its console output (stdout
            redirected, Ray's prefixes and other lines allowed: lines that are not
            ``step:N - key:value ...`` are skipped).
        run: the ``run`` column; default the file's name without its suffix.

    Returns:
        ``run, step, metric, value, source ("verl"), source_metric``, names mapped as the
        module's table says; ``attrs["format"]``: ``"jsonl"`` or ``"console"``. An empty
        file (a run that logged nothing yet) gives an empty frame.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; pass verl's file logger JSONL or a "
                                "file of its console output")
    if p.is_dir():
        raise IsADirectoryError(
            f"{p} is a directory; pass one verl log file (its file logger writes "
            "<project>/<experiment>.jsonl), or give the folder to rlnb.train.load_runs")
    name = run if run is not None else p.stem
    fmt = verl_log_format(p)
    if fmt is None:
        first = next((line for line in _lines(p) if line.strip()), None)
        if first is None:
            df = _tidy([], VERL_NAMES, name, "verl")
            df.attrs["format"] = None
            return df
        raise ValueError(
            f"{p} holds no verl metrics{_rlnb_hint(first)}: expected its file logger's "
            'lines {"step": N, "data": {...}} (trainer.logger=[\'file\']) or its console '
            "lines 'step:N - key:value - ...' (trainer.logger=['console']); pass that file, "
            "or run verl with one of those loggers")
    if fmt == "jsonl":
        records = _verl_jsonl(p)
    else:
        records = [r for line in _lines(p) if (r := _console_record(line)) is not None]
    df = _tidy(records, VERL_NAMES, name, "verl")
    df.attrs["format"] = fmt
    return df


# --- for load_runs --------------------------------------------------------------------
#: The suffixes of the files :func:`foreign_kind` looks into for verl's formats.
LOG_SUFFIXES = (".jsonl", ".log", ".txt", ".out")


def foreign_kind(path: str | os.PathLike) -> str | None:
    """``"trl"`` for a TRL output or checkpoint directory (or its trainer_state.json),
    ``"verl"`` for a verl log file (a name ending in one of :data:`LOG_SUFFIXES`, lines in
    one of verl's formats), None for anything else."""
    p = Path(path)
    if p.is_dir():
        return "trl" if (p / TRAINER_STATE).is_file() or _checkpoints(p) else None
    if p.is_file():
        if p.name == TRAINER_STATE:
            return "trl"
        if p.suffix in LOG_SUFFIXES and verl_log_format(p) is not None:
            return "verl"
    return None


_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "adapter_config.json", "generation_config.json", "tokenizer.json")


def model_dir_error(path: str | os.PathLike) -> str | None:
    """What to say about a saved model directory (``save_pretrained``: weights, tokenizer,
    no training log) given as a run, or None if ``path`` is not one."""
    p = Path(path)
    if not p.is_dir() or (p / TRAINER_STATE).is_file() or not any(
            (p / f).is_file() for f in _MODEL_FILES):
        return None
    return (f"{p} is a saved model (save_pretrained), not a run: it has no training log. "
            f"Load the run from the directory holding its {TRAINER_STATE} (TRL's output_dir "
            "or a checkpoint-N), or analyse the model itself (notebook 09's MODEL_DIR)")


def load_foreign(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """:func:`load_trl_run` (``kind="trl"``) or :func:`load_verl_log` (``"verl"``)."""
    if kind == "trl":
        return load_trl_run(path)
    if kind == "verl":
        return load_verl_log(path)
    raise ValueError(f"kind must be 'trl' or 'verl', got {kind!r}")


__all__ = ["FOREIGN_RUNS", "LOG_SUFFIXES", "TRL_NAMES", "VERL_NAMES", "foreign_kind", "load_foreign", "model_dir_error", "load_trl_run",
           "load_verl_log", "trl_state_file", "verl_log_format"]
