"""Runs made elsewhere load into load_runs' tidy frame (rlnb.train.foreign_runs).

TRL: a real output directory, written by trl.GRPOTrainer training a tiny model for two
steps on the CPU (a checkpoint each step, logging each step); what is read is compared
with the trainer's own ``state.log_history``.

verl (not installable here): the log files are written by verl's own formatting code,
restated below from verl's repository at commit b178a3cd56f58b2d502255daba591e92833930a7
(January 2026): the console logger's ``concat_dict_to_str``
(``verl/utils/logger/aggregate_logger.py``, copied as it stands) and the file logger's
``FileLogger.log`` (``verl/utils/tracking.py``: ``orjson.dumps({"step": step, "data":
data}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\\n"``, restated with the json module since
orjson is not installed: the same compact separators, NumPy scalars as numbers, NaN and
infinities as null). The metric dicts use the names verl logs
(``verl/trainer/ppo/metric_utils.py`` ``compute_data_metrics``,
``compute_timing_metrics``; ``verl/workers/actor/dp_actor.py`` ``update_policy``;
``verl/trainer/ppo/ray_trainer.py`` ``_val_metrics_update``) with the value types verl
gives them (``np.mean`` of micro-batch lists: ``np.float64``).

Bad input is refused with errors that say what was expected, and loading writes nothing.
"""

from __future__ import annotations

import json
import math
import numbers
import pprint

import numpy as np
import pandas as pd
import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer, load_runs
from rlnb.train.foreign_runs import (
    TRL_NAMES,
    VERL_NAMES,
    foreign_kind,
    load_trl_run,
    load_verl_log,
    verl_log_format,
)
from rlnb.viz import training_curves


# --- verl's formats, as verl writes them (commit b178a3c) ------------------------------
def concat_dict_to_str(dict: dict, step):  # noqa: A002 - verl's own signature
    """verl/utils/logger/aggregate_logger.py, concat_dict_to_str, as it stands: the line
    LocalLogger.log prints for the console logger."""
    output = [f"step:{step}"]
    for k, v in dict.items():
        if isinstance(v, numbers.Number):
            output.append(f"{k}:{pprint.pformat(v)}")
    output_str = " - ".join(output)
    return output_str


def _orjson_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)


def _nan_to_null(v):
    if isinstance(v, dict):
        return {k: _nan_to_null(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_null(x) for x in v]
    if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
        return None  # orjson writes NaN and infinities as null
    return v


def file_logger_line(data: dict, step: int) -> bytes:
    """verl/utils/tracking.py, FileLogger.log: orjson.dumps({"step": step, "data": data},
    option=orjson.OPT_SERIALIZE_NUMPY) + b"\\n"."""
    obj = _nan_to_null({"step": step, "data": data})
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_orjson_default).encode() + b"\n"


def _verl_steps() -> list[tuple[int, dict]]:
    """What a GRPO run's Tracking.log receives: the validation before training (step 0),
    then three training steps."""
    val = {"val-core/openai/gsm8k/reward/mean@1": np.float64(0.125),
           "val-aux/openai/gsm8k/reward/std@1": np.float64(0.25)}
    out = [(0, val)]
    for s in (1, 2, 3):
        out.append((s, {
            "actor/entropy": np.float64(1.5 - 0.25 * s),
            "actor/pg_loss": -0.01 * s,
            "actor/kl_loss": 0.001 * s,
            "actor/ppo_kl": np.float64(1e-06 * s),
            "actor/pg_clipfrac": np.float64(0.03125 * s),
            "actor/pg_clipfrac_lower": np.float64(0.0),
            "actor/grad_norm": np.float64(0.75 / s),
            "actor/lr": 1e-06,
            "critic/score/mean": 0.2 * s,
            "critic/score/max": 1.0,
            "critic/rewards/mean": 0.2 * s,
            "critic/advantages/mean": np.float64(-1.25e-08),
            "response_length/mean": 100.5 + s,
            "response_length/max": 256.0,
            "response_length/min": 12.0,
            "response_length/clip_ratio": 0.0625,
            "timing_s/gen": 3.5,
            "timing_s/reward": 0.25,
            "timing_s/step": 7.75,
            "perf/total_num_tokens": np.int64(40_000 + s),
            "training/global_step": s,
            "training/epoch": 0,
            "actor/nan_metric": float("nan"),  # left out (NaN)
            "rollout_corr/flag": True,  # a bool is a number: 1.0
            "response/lengths": [3, 4],  # not a number: the console logger drops it
        }))
    return out


def _write_jsonl(path, steps):
    path.write_bytes(b"".join(file_logger_line(d, s) for s, d in steps))
    return path


def _write_console(path, steps, *, prefix="\x1b[36m(TaskRunner pid=4242)\x1b[0m "):
    """A console log as `python -m verl.trainer.main_ppo ... > train.log` leaves it: the
    pprint of the config first, Ray's coloured prefix on the trainer's lines, a progress
    bar redrawn with carriage returns."""
    lines = [pprint.pformat({"actor_rollout_ref": {"rollout": {"n": 8}}}),
             prefix + "Training from scratch"]
    for s, d in steps:
        line = prefix + concat_dict_to_str(d, step=s)
        if s == 2:
            line = f"Training Progress:  33%|###   | 1/3 [00:07<00:15]\r{line}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# --- verl -------------------------------------------------------------------------------
def test_the_console_line_is_verls(tmp_path):
    """The restated formatter gives verl's line for NumPy >= 2 scalars (their repr)."""
    line = concat_dict_to_str({"a/b": np.float64(0.5), "c": 3, "s": "x", "l": [1]}, step=7)
    assert line == "step:7 - a/b:np.float64(0.5) - c:3"


@pytest.mark.parametrize("fmt", ["jsonl", "console"])
def test_a_verl_log_loads_under_rlnb_names(tmp_path, fmt):
    steps = _verl_steps()
    write = _write_jsonl if fmt == "jsonl" else _write_console
    path = write(tmp_path / f"qwen_grpo.{'jsonl' if fmt == 'jsonl' else 'log'}", steps)
    before = _tree(tmp_path)
    df = load_verl_log(path)
    assert _tree(tmp_path) == before  # nothing written
    assert df.attrs["format"] == fmt == verl_log_format(path)
    assert list(df.columns) == ["run", "step", "metric", "value", "source", "source_metric"]
    assert set(df.run) == {"qwen_grpo"} and set(df.source) == {"verl"}
    assert sorted(set(df.step)) == [0, 1, 2, 3]

    want = {}
    for s, d in steps:
        for k, v in d.items():
            if isinstance(v, bool):
                want[(s, k)] = float(v)
            elif isinstance(v, numbers.Number) and not math.isnan(float(v)):
                want[(s, k)] = float(v)
    got = {(r.step, r.source_metric): r.value for r in df.itertuples()}
    assert got == want  # every number, exactly; the NaN and the list left out
    for r in df.itertuples():
        assert r.metric == VERL_NAMES.get(r.source_metric, r.source_metric)
    by = df.set_index(["step", "metric"]).value
    assert by[(2, "reward")] == 0.4 and by[(3, "entropy")] == 0.75
    assert by[(1, "completions/mean_length")] == 101.5 and by[(1, "kl")] == 0.001
    assert by[(2, "clip_ratio/region_mean")] == 0.0625 and by[(1, "pg_loss")] == -0.01
    assert by[(1, "learning_rate")] == 1e-06 and by[(3, "time/step_seconds")] == 7.75
    assert by[(0, "val-core/openai/gsm8k/reward/mean@1")] == 0.125
    assert by[(1, "actor/ppo_kl")] == 1e-06  # a k1 estimate: kept under verl's name
    assert by[(1, "perf/total_num_tokens")] == 40_001 and by[(1, "rollout_corr/flag")] == 1.0
    assert "actor/entropy" not in set(df.metric) and "approx_kl" not in set(df.metric)


def test_the_two_verl_formats_give_one_frame(tmp_path):
    steps = _verl_steps()
    a = load_verl_log(_write_jsonl(tmp_path / "run.jsonl", steps))
    b = load_verl_log(_write_console(tmp_path / "run.log", steps))
    pd.testing.assert_frame_equal(a, b)


def test_a_replayed_step_keeps_its_last_values_and_a_killed_write_is_ignored(tmp_path):
    log = [(1, {"critic/score/mean": 0.1}), (2, {"critic/score/mean": 0.2}),
           (2, {"critic/score/mean": 0.3}), (3, {"critic/score/mean": 0.4})]
    path = _write_jsonl(tmp_path / "r.jsonl", log)
    path.write_bytes(path.read_bytes() + file_logger_line({"critic/score/mean": 0.5}, 4)[:20])
    df = load_verl_log(path)
    assert df.set_index("step").value.to_dict() == {1: 0.1, 2: 0.3, 3: 0.4}
    console = _write_console(tmp_path / "r.log", log, prefix="")
    assert load_verl_log(console).set_index("step").value.to_dict() == {1: 0.1, 2: 0.3, 3: 0.4}


def test_a_logged_rlnb_name_keeps_its_name(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [(1, {"actor/entropy": 0.5, "entropy": 0.7})])
    df = load_verl_log(path).set_index("metric")
    assert df.value.to_dict() == {"actor/entropy": 0.5, "entropy": 0.7}


def test_bad_verl_logs_are_refused_with_what_to_do(tmp_path):
    good = file_logger_line({"critic/score/mean": 0.1}, 1).decode()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "{not json\n" + good, encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2 is not a line of verl's file logger"):
        load_verl_log(bad)
    rlnb_metrics = tmp_path / "metrics.jsonl"
    rlnb_metrics.write_text(good + '{"step": 2, "reward": 0.5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 .*rlnb metrics.jsonl row.*load_runs"):
        load_verl_log(rlnb_metrics)
    rlnb_metrics.write_text('{"step": 1, "reward": 0.5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="no verl metrics .a rlnb metrics.jsonl row"):
        load_verl_log(rlnb_metrics)
    notes = tmp_path / "notes.txt"
    notes.write_text("training went well\nstep 3 looked odd\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds no verl metrics.*trainer.logger"):
        load_verl_log(notes)
    with pytest.raises(ValueError, match="holds no verl metrics"):  # named: read, refused
        load_runs([notes])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_verl_log(tmp_path / "missing.jsonl")
    with pytest.raises(IsADirectoryError, match="load_runs"):
        load_verl_log(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert load_verl_log(empty).empty  # a run that logged nothing yet
    assert foreign_kind(notes) is None and foreign_kind(empty) is None


# --- TRL --------------------------------------------------------------------------------
def _reward_length(completions, **kwargs):
    """Longer completions score more: rewards differ within a group."""
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    """A TRL GRPO output directory: two steps of a tiny Llama, a checkpoint and a log
    entry each step, a KL to the reference (beta > 0)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

    tok = char_tokenizer("+0123456789=")
    root = tmp_path_factory.mktemp("trl")
    # saved first: with beta > 0 TRL loads the reference from the model's directory
    tiny_model(tiny_config("llama", len(tok), d_model=64, n_head=4),
               seed=0).save_pretrained(root / "base")
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    out = root / "grpo"
    config = GRPOConfig(
        output_dir=str(out), bf16=False, use_cpu=True, report_to=[], max_steps=2,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=4,
        logging_steps=1, save_strategy="steps", save_steps=1, learning_rate=1e-2,
        beta=0.1, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=_reward_length, args=config,
                          train_dataset=Dataset.from_dict({"prompt": ["1+2=", "3+4="] * 2}),
                          processing_class=tok)
    trainer.train()
    return trainer, out


def _entries(log_history):
    return [e for e in log_history if "train_loss" not in e]


def test_a_trl_output_dir_loads_its_log_history(trl_run):
    trainer, out = trl_run
    assert not (out / "trainer_state.json").exists()  # only the checkpoints have one
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    before = _tree(out)
    df = load_trl_run(out)
    assert _tree(out) == before  # nothing written
    assert df.attrs["trainer_state"] == str(out / "checkpoint-2" / "trainer_state.json")
    assert df.attrs["summary"] == []  # the summary comes after the last checkpoint
    assert set(df.run) == {"grpo"} and set(df.source) == {"trl"}
    assert sorted(set(df.step)) == [1, 2]

    entries = _entries(trainer.state.log_history)
    assert [e["step"] for e in entries] == [1, 2]
    want = {(e["step"], k): float(v) for e in entries for k, v in e.items()
            if k != "step" and isinstance(v, (int, float)) and not math.isnan(v)}
    got = {(r.step, r.source_metric): r.value for r in df.itertuples()}
    assert got == want
    for r in df.itertuples():
        assert r.metric == TRL_NAMES.get(r.source_metric, r.source_metric)
    metrics = set(df.metric)
    # the names rlnb's figures and notebooks read
    assert {"reward", "entropy", "kl", "loss", "grad_norm", "learning_rate",
            "completions/mean_length", "clip_ratio/region_mean",
            "frac_reward_zero_std"} <= metrics
    # TRL's reward_std is the batch's std, not rlnb's mean group std
    assert "reward_std" not in metrics and "trl/reward_std" in metrics
    by = df.set_index(["step", "metric"]).value
    assert by[(2, "reward")] == entries[1]["reward"]
    assert by[(1, "trl/reward_std")] == entries[0]["reward_std"]


def test_a_checkpoint_and_a_saved_state_load(trl_run, tmp_path):
    trainer, out = trl_run
    one = load_trl_run(out / "checkpoint-1")
    assert set(one.run) == {"grpo/checkpoint-1"} and set(one.step) == {1}
    two = load_trl_run(out)
    pd.testing.assert_frame_equal(one.drop(columns="run"),
                                  two[two.step == 1].drop(columns="run").reset_index(drop=True))

    saved = tmp_path / "grpo"  # trainer.save_state(): the whole history, summary included
    saved.mkdir()
    trainer.state.save_to_json(str(saved / "trainer_state.json"))
    full = load_trl_run(saved)
    [summary] = full.attrs["summary"]
    assert {"train_runtime", "train_loss", "total_flos"} <= set(summary)
    assert "train_runtime" not in set(full.metric) and "train_loss" not in set(full.metric)
    pd.testing.assert_frame_equal(full, two)


def test_bad_trl_directories_are_refused_with_what_to_do(tmp_path, trl_run):
    _, out = trl_run
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no trainer_state.json.*save_state"):
        load_trl_run(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trl_run(tmp_path / "missing")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "trainer_state.json").write_text('{"log_history": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"damaged.trainer_state.json is not valid JSON"):
        load_trl_run(damaged)
    (damaged / "trainer_state.json").write_text('{"global_step": 3}', encoding="utf-8")
    with pytest.raises(ValueError, match="no 'log_history' list"):
        load_trl_run(damaged)
    # a model saved by save_model: weights and tokenizer, no log
    model = tmp_path / "final"
    model.mkdir()
    assert (out / "checkpoint-2" / "model.safetensors").exists()
    for name in ("config.json", "model.safetensors"):
        (model / name).write_bytes((out / "checkpoint-2" / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"is a saved model.*trainer_state.json"):
        load_runs(model)


# --- load_runs ----------------------------------------------------------------------------
def _rlnb_run(run_dir):
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=2, num_prompts_per_step=4, num_generations=4,
                      optimizer="sgd", learning_rate=1.0, progress_bar=False, seed=5)
    t = Trainer(TabularPolicy.for_env(env, shared=True), env, cfg, run_dir=run_dir)
    t.train()
    t.close()
    return run_dir


def test_load_runs_takes_rlnb_trl_and_verl_runs_together(tmp_path, trl_run):
    _, trl_dir = trl_run
    rlnb_dir = _rlnb_run(tmp_path / "bandit")
    jsonl = _write_jsonl(tmp_path / "verl_file.jsonl", _verl_steps())
    console = _write_console(tmp_path / "verl_console.log", _verl_steps())
    before = _tree(tmp_path), _tree(trl_dir)
    df = load_runs([rlnb_dir, trl_dir, jsonl, console])
    assert (_tree(tmp_path), _tree(trl_dir)) == before  # nothing written
    assert list(df.columns) == ["run", "step", "metric", "value", "seed", "source",
                                "source_metric"]
    sources = df.groupby("run").source.first().to_dict()
    assert sources == {"bandit": "rlnb", "grpo": "trl", "verl_file": "verl",
                       "verl_console": "verl"}
    assert (df[df.run == "bandit"].seed == 5).all()
    assert df[df.run != "bandit"].seed.isna().all()  # no TrainConfig: no seed
    for run in sources:  # the same names in every run, whoever wrote it
        names = set(df[df.run == run].metric)
        assert {"reward", "entropy", "completions/mean_length"} <= names, run
    rlnb_rows = df[df.run == "bandit"]
    assert (rlnb_rows.metric == rlnb_rows.source_metric).all()
    pd.testing.assert_frame_equal(
        df[df.run == "grpo"].drop(columns="seed").reset_index(drop=True),
        load_trl_run(trl_dir), check_dtype=False)

    # rlnb's figures take the mixed frame as they take rlnb's: one line per run and metric
    shared = ["reward", "entropy", "completions/mean_length"]
    fig = training_curves(df, shared)
    assert len(fig.data) == 4 * len(shared)
    for trace in fig.data[:4]:  # the reward row
        run = df[(df.run == trace.name) & (df.metric == "reward")].sort_values("step")
        assert list(trace.y) == list(run.value)

    wide = load_runs([rlnb_dir, trl_dir, jsonl, console], wide=True)
    assert "source_metric" not in wide.columns and {"reward", "entropy"} <= set(wide.columns)
    assert len(wide) == len(df[["run", "step"]].drop_duplicates())
    row = wide[(wide.run == "verl_file") & (wide.step == 2)].iloc[0]
    assert row.reward == 0.4 and row.source == "verl"

    # a folder of them: its rlnb run and its verl logs
    folder = load_runs(tmp_path)
    assert set(folder.run) == {"bandit", "verl_file", "verl_console"}
    rlnb_only = load_runs(rlnb_dir)  # an rlnb run alone: the frame it always was
    assert list(rlnb_only.columns) == ["run", "step", "metric", "value", "seed"]


def test_a_directory_that_is_no_run_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("notes\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_runs(tmp_path)
    msg = str(err.value)
    assert "no runs found" in msg and "metrics.jsonl" in msg
    assert "trainer_state.json" in msg and "verl" in msg and "console" in msg
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        load_trl_run(tmp_path)
    with pytest.raises(IsADirectoryError):
        load_verl_log(tmp_path)
    assert _tree(tmp_path) == before
