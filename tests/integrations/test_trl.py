"""rlnb.integrations.trl: an rlnb task and TrainConfig trained by TRL's GRPOTrainer, with
an rlnb run directory (TRL's metrics, rlnb's probes) written while it trains.

The names are checked against the GRPOConfig TRL builds from them; the training runs are
real TRL runs on a tiny model on the CPU (in this process, as ``python -m``, and as two
processes under torchrun), and their run directories are read back with the project's
readers (load_runs, load_run, load_config, the figures)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

trl = pytest.importorskip("trl")

from rlnb.envs.text import ExactMatchTask  # noqa: E402
from rlnb.envs.text_tasks import make_task  # noqa: E402
from rlnb.integrations.trl import (  # noqa: E402
    TRL_CONFIG,
    RlnbCallback,
    TaskReward,
    grpo_options,
    main,
    task_dataset,
    task_reward,
    to_grpo_config,
    train_config_from_grpo,
    unmapped_grpo_settings,
)
from rlnb.train import TrainConfig, load_run, load_runs, read_metrics  # noqa: E402
from rlnb.train.files import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ALPHABET = "+0123456789="  # the addition task's
TRL_METRICS = ("loss", "reward", "reward_std", "frac_reward_zero_std", "rewards/score/mean",
               "entropy", "completions/mean_length", "grad_norm", "learning_rate")
PROBE_METRICS = ("probe/pass@1", "probe/pass@4", "probe/entropy_mean", "probe/entropy_q50",
                 "probe/forking_share", "probe/forking_threshold",
                 "probe/effective_rank/layers.1.resid_post")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama pre-trained on 1-digit addition to a pass@1 of about 0.4, so that
    completions of one prompt differ in reward and GRPO's steps move the weights."""
    from rlnb.policies.tiny import pretrain_base

    task = make_task("addition", num_prompts=64, digits=1, seed=0)
    return pretrain_base(task, d_model=64, n_head=4, steps=400, batch_size=64,
                         eval_every=10, eval_samples=64, target_pass_at_1=0.4,
                         target_malformed=0.2, cache_dir=tmp_path_factory.mktemp("base"),
                         progress=False)


def _task():
    return make_task("addition", num_prompts=24, digits=1, seed=0).split(8, seed=0)


def _config(**changes):
    base = dict(max_steps=2, num_prompts_per_step=2, num_generations=4, learning_rate=1e-2,
                progress_bar=False)
    return TrainConfig(**{**base, **changes})


# --------------------------------------------------------------------------------------
# Names: TrainConfig -> GRPOConfig
# --------------------------------------------------------------------------------------
def test_a_train_config_becomes_the_grpo_config_that_computes_its_step(tmp_path):
    config = _config(epsilon_high=0.28, delta=2.0, beta=0.04, max_grad_norm=None,
                     scale_rewards="batch", mask_truncated_completions=True)
    args = to_grpo_config(config, output_dir=tmp_path, max_completion_length=4, world_size=1,
                          use_cpu=True, bf16=False)
    assert isinstance(args, trl.GRPOConfig)
    expected = {"seed": 0, "max_steps": 2, "num_generations": 4, "temperature": 1.0,
                "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                "max_completion_length": 4, "loss_type": "dapo", "epsilon": 0.2,
                "epsilon_high": 0.28, "delta": 2.0, "beta": 0.04, "scale_rewards": "batch",
                "mask_truncated_completions": True, "learning_rate": 1e-2,
                "max_grad_norm": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
                "weight_decay": 0.0, "logging_steps": 1, "top_p": 1.0, "top_k": 0}
    for name, value in expected.items():
        assert getattr(args, name) == value, name
    def value(v):
        return getattr(v, "value", v)

    assert value(args.optim) == "adamw_torch" and value(args.lr_scheduler_type) == "constant"
    assert value(args.save_strategy) == "no" and args.disable_tqdm
    assert unmapped_grpo_settings(args) == {}
    # TRL's names pass through; verl's become the TRL loss_type computing the same
    for mode, loss_type in (("grpo", "grpo"), ("bnpo", "bnpo"), ("dapo", "dapo"),
                            ("dr_grpo", "dr_grpo"), ("token-mean", "dapo"),
                            ("seq-mean-token-mean", "grpo")):
        opts = grpo_options(_config(loss_agg_mode=mode), max_completion_length=4)
        assert opts["loss_type"] == loss_type, mode
    # one rollout batch, num_iterations optimiser steps: TRL counts the latter
    opts = grpo_options(_config(num_iterations=3, save_steps=5), max_completion_length=4)
    assert (opts["max_steps"], opts["num_iterations"], opts["save_steps"]) == (6, 3, 15)
    assert grpo_options(_config(optimizer="sgd"), max_completion_length=4)["optim"] == "sgd"


@pytest.mark.parametrize("micro, world, per_device, accumulation", [
    (None, 1, 16, 1),   # the whole batch at once
    (None, 2, 8, 1),    # each process its half at once
    (4, 1, 4, 4),       # rlnb's micro-batch kept, its accumulation derived
    (4, 2, 4, 2),
    (8, 4, 4, 1),       # a process's share is smaller than the micro-batch
])
def test_the_batch_is_shared_by_processes_and_micro_batches(micro, world, per_device,
                                                            accumulation):
    config = _config(num_prompts_per_step=4, num_generations=4,
                     per_device_train_batch_size=micro)
    opts = grpo_options(config, max_completion_length=4, world_size=world)
    assert (opts["per_device_train_batch_size"], opts["gradient_accumulation_steps"]) == (
        per_device, accumulation)
    # TRL's step holds rlnb's: per process x processes x accumulation = N completions
    assert per_device * world * accumulation == 16


@pytest.mark.parametrize("changes, message", [
    ({"loss_agg_mode": "seq-mean-token-sum"}, "'seq-mean-token-sum' .* has no TRL loss_type"),
    ({"loss_agg_mode": "seq-mean-token-sum-norm"}, "N times more; use loss_agg_mode='dr_grpo'"),
    ({"loss_agg_mode": "seq-mean-token-mean", "mask_truncated_completions": True},
     "counts them as 0"),
    ({"advantage": "rloo"}, "advantage 'rloo'"),
    ({"policy_loss": "clip_cov"}, "policy_loss 'clip_cov'"),
    ({"policy_loss": "vanilla_pg"}, "its gradient is vanilla policy gradient's"),
    ({"beta": 0.1, "kl_estimator": "k2"}, "the k3 estimator only"),
    ({"entropy_coef": 0.01, "loss_agg_mode": "grpo"}, "token mean of the entropy"),
    ({"optimizer": "adam", "weight_decay": 0.1}, "use optimizer='adamw'"),
    ({"num_generations": 1, "advantage": "reinforce_baseline"}, "at least 2 completions"),
    ({"num_prompts_per_step": 3, "num_generations": 3}, "cannot be shared equally by 2"),
    ({"num_prompts_per_step": 3, "num_generations": 4, "per_device_train_batch_size": 4},
     "do not divide each process's share of 6"),
])
def test_settings_without_a_trl_equivalent_are_refused(changes, message):
    with pytest.raises(ValueError, match="no TRL equivalent") as err:
        grpo_options(_config(**changes), max_completion_length=4, world_size=2)
    assert err.match(message)


def test_every_refusal_is_listed_at_once_and_overrides_do_not_replace_the_config(tmp_path):
    with pytest.raises(ValueError) as err:
        grpo_options(_config(advantage="rloo", policy_loss="kl_cov"), max_completion_length=4)
    assert "advantage 'rloo'" in str(err.value) and "policy_loss 'kl_cov'" in str(err.value)
    with pytest.raises(ValueError, match="learning_rate come.* from the TrainConfig"):
        to_grpo_config(_config(), output_dir=tmp_path, max_completion_length=4,
                       learning_rate=1e-6, use_cpu=True, bf16=False)
    assert not any(tmp_path.iterdir())


def test_a_grpo_config_goes_back_to_the_train_config_it_came_from(tmp_path):
    for config in (_config(), _config(loss_agg_mode="dr_grpo", num_iterations=2, save_steps=3,
                                      per_device_train_batch_size=4, optimizer="sgd",
                                      max_grad_norm=1.0, epsilon_high=0.3)):
        args = to_grpo_config(config, output_dir=tmp_path, max_completion_length=4,
                              use_cpu=True, bf16=False)
        back = train_config_from_grpo(args)
        assert grpo_options(back, max_completion_length=4) == grpo_options(
            config, max_completion_length=4)
        assert (back.max_steps, back.num_prompts_per_step) == (config.max_steps, 2)
    args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False,
                          per_device_train_batch_size=4, num_generations=4, loss_type="cispo")
    with pytest.raises(ValueError, match="loss_type 'cispo'"):
        train_config_from_grpo(args)
    plain = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False,
                           per_device_train_batch_size=4, num_generations=4, top_p=0.9)
    assert unmapped_grpo_settings(plain) == {"lr_scheduler_type": "linear", "top_p": 0.9}


# --------------------------------------------------------------------------------------
# The task as TRL's data and reward
# --------------------------------------------------------------------------------------
def test_the_task_becomes_trls_dataset_and_reward_function():
    train, _ = _task()
    ds = task_dataset(train)
    assert ds.column_names[:2] == ["prompt", "answer"] and ds["prompt"] == train.prompts
    chat = task_dataset(train, conversational=True, system_prompt="Add.")
    assert chat[0]["prompt"] == [{"role": "system", "content": "Add."},
                                 {"role": "user", "content": train.prompt(0)}]
    with pytest.raises(ValueError, match="needs conversational=True"):
        task_dataset(train, system_prompt="Add.")

    reward = task_reward(train)
    assert reward.__name__ == "score"
    prompts = train.prompts[:4]
    completions = [train.answer(0), "x", " " + train.answer(2) + "\n", train.answer(0)]
    got = reward(prompts=prompts, completions=completions, completion_ids=[[]] * 4,
                 answer=train.answers[:4], trainer_state=None)
    assert got == [train.score(p, c) for p, c in zip(prompts, completions)]
    assert got[:3] == [1.0, 0.0, 1.0]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    answers = [[{"role": "assistant", "content": c}] for c in completions]
    assert reward(prompts=messages, completions=answers) == got
    with pytest.raises(ValueError, match="is not one of the 1 prompts"):
        task_reward(ExactMatchTask(["1+1="], ["2"]))(prompts=["9+9="], completions=["18"])

    class Broken(ExactMatchTask):
        def score(self, prompt, completion):
            return float("nan")

    with pytest.raises(ValueError, match="row 0 .* must return a finite float"):
        TaskReward(Broken(["1+1="], ["2"]))(prompts=["1+1="], completions=["2"])


def test_bad_callback_arguments_are_refused_before_anything_is_written(tmp_path):
    train, held = _task()
    with pytest.raises(ValueError, match="needs probe_task"):
        RlnbCallback(tmp_path / "a", probe_steps=1)
    with pytest.raises(ValueError, match=r"probe_ks \[32\] exceed probe_samples \(16\)"):
        RlnbCallback(tmp_path / "a", probe_task=held, probe_steps=1, probe_ks=(1, 32))
    with pytest.raises(TypeError, match="rlnb text task"):
        RlnbCallback(tmp_path / "a", task=object())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run"):
        RlnbCallback(tmp_path / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        RlnbCallback(tmp_path / "file")
    assert not (tmp_path / "a").exists()


def test_the_callback_records_what_trl_runs_and_says_what_config_json_cannot(tmp_path):
    from transformers import TrainerControl, TrainerState

    train, _ = _task()
    # a TRL-only setting may be overridden; a TrainConfig one given differently is warned
    args = to_grpo_config(_config(), output_dir=tmp_path / "trl", max_completion_length=4,
                          use_cpu=True, bf16=False, lr_scheduler_type="linear")
    run_dir = tmp_path / "run"
    callback = RlnbCallback(run_dir, task=train, config=_config(learning_rate=0.5),
                            fsync=False)
    state, control = TrainerState(max_steps=2, is_world_process_zero=True), TrainerControl()
    with pytest.warns(UserWarning) as caught:
        callback.on_train_begin(args, state, control)
    messages = " ".join(str(w.message) for w in caught)
    assert "learning_rate: config 0.5, TRL 0.01" in messages
    assert "lr_scheduler_type='linear'" in messages
    assert (run_dir / ".rlnb.lock").exists()  # held while TRL trains
    with pytest.raises(FileExistsError):
        RlnbCallback(run_dir)
    state.global_step = 1
    callback.on_log(args, state, control, logs={"loss": 0.5, "reward": np.float32(0.25),
                                                "table": object()})
    state.global_step = 2
    callback.on_log(args, state, control, logs={"loss": 0.1})
    callback.on_log(args, state, control, logs={"train_runtime": 3.0})  # TRL's summary
    callback.on_train_end(args, state, control)
    assert read_metrics(run_dir / "metrics.jsonl") == [
        {"step": 1, "loss": 0.5, "reward": 0.25}, {"step": 2, "loss": 0.1, "train_runtime": 3.0}]
    assert load_config(run_dir) == _config(learning_rate=0.5)  # what was given
    assert not (run_dir / ".rlnb.lock").exists()
    assert json.loads((run_dir / TRL_CONFIG).read_text())["learning_rate"] == 0.01

    other = tmp_path / "rank1"  # any process but the main one writes nothing
    quiet = RlnbCallback(other, task=train)
    rank1 = TrainerState(max_steps=2, is_world_process_zero=False)
    quiet.on_train_begin(args, rank1, control)
    quiet.on_log(args, rank1, control, logs={"loss": 0.5})
    quiet.on_train_end(args, rank1, control)
    assert not other.exists()


# --------------------------------------------------------------------------------------
# Real TRL runs
# --------------------------------------------------------------------------------------
def _check_run(run_dir: Path, steps: int, probe_steps: set[int]) -> dict:
    """What every TRL run directory must hold; returns the metrics rows by step."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    by_step = {}
    for row in rows:
        assert row["step"] not in by_step, f"two rows for step {row['step']}"
        by_step[row["step"]] = row
    assert sorted(by_step) == [0, *range(1, steps + 1)]
    for step in range(1, steps + 1):
        missing = [m for m in TRL_METRICS if m not in by_step[step]]
        assert not missing, (step, missing, sorted(by_step[step]))
    for step, row in by_step.items():
        has = all(m in row for m in PROBE_METRICS)
        assert has == (step in probe_steps), (step, sorted(row))
    assert "train_runtime" in by_step[steps]  # TRL's summary, in the last row
    for step in probe_steps:
        row = by_step[step]
        passes = [row["probe/pass@1"], row["probe/pass@4"]]
        assert 0 <= passes[0] <= passes[1] <= 1
        assert 0 < row["probe/entropy_mean"] <= math.log(len(ALPHABET) + 4) + 1e-6
        assert 1 <= row["probe/effective_rank/layers.1.resid_post"] <= 64
        assert 0 <= row["probe/forking_share"] <= 1
    # one threshold, measured at the first probe, for the whole run
    assert len({by_step[s]["probe/forking_threshold"] for s in probe_steps}) == 1

    df = load_runs(run_dir)
    assert set(TRL_METRICS) | set(PROBE_METRICS) <= set(df["metric"])
    wide = load_runs(run_dir, wide=True)
    assert list(wide["step"]) == [0, *range(1, steps + 1)]
    from rlnb.viz import training_curves

    fig = training_curves(df, ["reward", "probe/pass@1", "probe/entropy_mean"])
    assert len(fig.data) == 3
    assert json.loads((run_dir / TRL_CONFIG).read_text())["loss_type"] == "dapo"
    assert not (run_dir / ".rlnb.lock").exists()  # released when training ended
    return by_step


def test_trl_trains_and_the_callback_writes_an_rlnb_run(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlnb.policies import LMPolicy
    from rlnb.policies.lm.load import load_tokenizer
    from rlnb.probes import pass_at_k, sample_counts

    train, held = _task()
    config = _config()
    model_dir = base_dir
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    args = to_grpo_config(config, output_dir=tmp_path / "trl", max_completion_length=4,
                          use_cpu=True, bf16=False)
    run_dir = tmp_path / "run"
    callback = RlnbCallback(run_dir, task=train, probe_task=held, probe_steps=2,
                            probe_samples=8, probe_ks=(1, 4), entropy_samples=4)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=task_reward(train), args=args,
                              train_dataset=task_dataset(train), processing_class=tok,
                              callbacks=[callback])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    by_step = _check_run(run_dir, 2, {0, 2})
    assert any(not torch.equal(v, initial[k]) for k, v in trainer.model.state_dict().items())

    # config.json: the TrainConfig of the GRPOConfig TRL ran (derived without config=)
    saved = load_config(run_dir)
    assert grpo_options(saved, max_completion_length=4) == grpo_options(
        config, max_completion_length=4)
    assert json.loads((run_dir / "runtime.json").read_text())["world_size"] == 1
    # env.json rebuilds the training task
    from rlnb.serialization import load_component

    assert load_component(run_dir, "env") == train

    # the last probe measured the trained model: sampling it again gives its numbers
    policy = LMPolicy.from_model(trainer.model, tok, max_new_tokens=4)
    counts = sample_counts(policy, held, n=8, seed=0, progress=False)["c"].to_numpy()
    for k in (1, 4):
        assert by_step[2][f"probe/pass@{k}"] == float(np.mean(pass_at_k(8, counts, k)))
    print(f"in-process TRL run, 2 steps with 2 probes: {seconds:.1f}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_args(model_dir: Path, run_dir: Path, steps: int = 2) -> list[str]:
    return ["--model", str(model_dir), "--task", "addition", "--task-arg", "digits=1",
            "--num-problems", "24", "--held-out", "8", "--max-steps", str(steps),
            "--prompts-per-step", "2", "--num-generations", "4", "--max-completion-length",
            "4", "--learning-rate", "0.01", "--probe-steps", "2", "--probe-samples", "8",
            "--probe-ks", "1,4", "--entropy-samples", "4", "--run-dir", str(run_dir)]


def test_the_command_line_refuses_bad_arguments_before_writing(tiny_lm_dir, tmp_path, capsys):
    model_dir = tiny_lm_dir(ALPHABET)
    out = tmp_path / "run"
    cases = [
        (["--loss-agg-mode", "seq-mean-token-sum"], "no TRL equivalent"),
        (["--config-arg", "advantage=rloo"], "advantage 'rloo'"),
        (["--config-arg", "lr=0.1"], "did you mean 'learning_rate'"),
        (["--task-arg", "digit=1"], "has no knob"),
        (["--probe-ks", "1,64"], "exceed probe_samples"),
        (["--held-out", "0"], "--probe-steps needs held-out problems"),
        (["--model", str(tmp_path)], "is not a model directory"),
    ]
    for extra, message in cases:
        assert main(_cli_args(model_dir, out) + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not out.exists()


@pytest.mark.slow
def test_python_dash_m_trains_one_process_and_load_run_rebuilds_it(base_dir, tmp_path):
    model_dir = base_dir
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlnb.integrations.trl",
                           *_cli_args(model_dir, run_dir, steps=3)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_run(run_dir, 3, {0, 2, 3})
    policy, env, config = load_run(run_dir)
    assert config == TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert (config.max_steps, config.num_prompts_per_step, config.learning_rate) == (3, 2, 0.01)
    assert env == _task()[0]
    trained = policy.model.state_dict()
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # the trained weights
    # the same directory again: refused, and left as it was
    before = sorted(p.name for p in run_dir.iterdir())
    again = subprocess.run([sys.executable, "-m", "rlnb.integrations.trl",
                            *_cli_args(model_dir, run_dir)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before
    print(f"python -m, 3 steps with 3 probes: {seconds:.1f}s")


@pytest.mark.slow
def test_torchrun_trains_with_two_processes_and_rank_zero_writes(base_dir, tmp_path):
    model_dir = base_dir
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "rlnb.integrations.trl", *_cli_args(model_dir, run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-6000:]
    _check_run(run_dir, 2, {0, 2})
    runtime = json.loads((run_dir / "runtime.json").read_text())
    assert runtime["world_size"] == 2 and runtime["torch_threads"] == 1
    trl_args = json.loads((run_dir / TRL_CONFIG).read_text())
    # 2 prompts x 4 completions per step, shared by the two processes
    assert (trl_args["per_device_train_batch_size"], trl_args["gradient_accumulation_steps"]) \
        == (4, 1)
    assert load_config(run_dir) == _config(max_steps=2, learning_rate=0.01, seed=0)
    names = {p.name for p in run_dir.iterdir()}
    required = {"config.json", "env.json", "metrics.jsonl", "runtime.json", TRL_CONFIG,
                "model", "policy.json"}
    assert required <= names <= required | {"env.safetensors", "trl"}, names
    print(f"torchrun, 2 processes, 2 steps with 2 probes: {seconds:.1f}s")
