"""Stepping a run from outside: Trainer.steps() and Trainer.run(until, should_stop), and
the RunDir object that owns a run directory (what the dashboards drive)."""

import contextlib

import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer, resume
from rlnb.train.rundir import RunDir, RunDirLocked, checkpoint_step, numbered_run, read_metrics


def _env():
    return StrategyBandit.from_card(num_problems=16, num_strategies=8,
                                    generator=torch.Generator().manual_seed(0))


def _trainer(env, run_dir=None, **kw):
    cfg = TrainConfig(**{"max_steps": 6, "num_prompts_per_step": 4, "num_generations": 4,
                         "optimizer": "sgd", "learning_rate": 1.0, "progress_bar": False, **kw})
    return Trainer(TabularPolicy.for_env(env, shared=True), env, cfg, run_dir=run_dir)


def _numbers(history):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in history]


def test_steps_yields_the_metrics_of_train_step_by_step():
    env = _env()
    stepped = _trainer(env)
    yielded = list(stepped.steps())
    trained = _trainer(env)
    trained.train()
    assert [m["step"] for m in yielded] == [1, 2, 3, 4, 5, 6]
    assert _numbers(yielded) == _numbers(trained.history)


def test_steps_reads_max_steps_before_every_step_and_honours_stop():
    t = _trainer(_env())
    seen = []
    for metrics in t.steps():
        seen.append(metrics["step"])
        if metrics["step"] == 2:
            t.update_config(max_steps=4)  # a live change: the loop ends at the new budget
    assert seen == [1, 2, 3, 4]
    t.update_config(max_steps=10)
    for metrics in t.steps():
        if metrics["step"] == 6:
            t.stop()
    assert t.step == 6 and t.stop_requested
    assert [m["step"] for m in t.steps(until=8)] == [7, 8]  # a new iterator starts again


def test_run_asks_should_stop_before_each_step_and_until_bounds_it():
    t = _trainer(_env())
    asked = []

    def should_stop():
        asked.append(t.step)
        return t.step == 3

    frame = t.run(should_stop=should_stop)
    assert t.step == 3 and frame["step"].tolist() == [1, 2, 3] and asked == [0, 1, 2, 3]
    t.run(until=5)
    assert t.step == 5


def test_steps_holds_the_run_thread_settings_until_closed():
    before = torch.get_num_threads()
    t = _trainer(_env(), torch_threads=1)
    torch.set_num_threads(2)
    try:
        with contextlib.closing(t.steps()) as steps:
            next(steps)
            assert torch.get_num_threads() == 1  # between two steps: the run's setting
        assert torch.get_num_threads() == 2  # closed early: restored at once
    finally:
        torch.set_num_threads(before)


def test_a_stepped_run_directory_resumes_like_an_uninterrupted_run(tmp_path):
    env = _env()
    with _trainer(env, tmp_path / "a") as t:
        for metrics in t.steps():
            if metrics["step"] == 3:
                break
        t.save()  # what a dashboard does when it pauses
    assert checkpoint_step(tmp_path / "a") == 3
    resume(tmp_path / "a", progress_bar=False)
    with _trainer(env, tmp_path / "b") as whole:
        whole.train()
    assert _numbers(read_metrics(tmp_path / "a" / "metrics.jsonl")) == \
        _numbers(read_metrics(tmp_path / "b" / "metrics.jsonl"))


def test_run_dir_object_locks_opens_appends_and_closes(tmp_path):
    env = _env()
    t = _trainer(env)
    d = RunDir(tmp_path / "run")
    assert not d.held and not (tmp_path / "run").exists()  # making one touches nothing
    step, rows = d.open(config=t.config, env=env, policy=t.policy, optimizer=t.optimizer,
                        generator=t.generator, runtime={"torch": torch.__version__})
    assert (step, rows) == (0, []) and d.held
    assert checkpoint_step(d.path) == 0
    with pytest.raises(RunDirLocked, match="in use by another Trainer"):
        Trainer(t.policy, env, t.config, run_dir=d.path)
    d.append({"step": 1, "reward": 0.5})
    d.save_checkpoint(1, t.policy, t.optimizer, t.generator)
    d.close()
    d.close()  # idempotent
    assert not d.held
    with pytest.raises(RuntimeError, match="closed.*resume"):
        d.append({"step": 2, "reward": 0.5})
    again = RunDir(d.path)
    step, rows = again.open(config=t.config, env=env, policy=t.policy, optimizer=t.optimizer,
                            generator=t.generator, runtime={"torch": torch.__version__})
    assert step == 1 and [r["step"] for r in rows] == [1]
    again.close()


def test_numbered_runs_take_the_next_free_number(tmp_path):
    assert numbered_run(tmp_path, "grpo").name == "001-grpo"
    (tmp_path / "001-grpo").mkdir()
    (tmp_path / "003-rloo").mkdir()
    assert numbered_run(tmp_path, "rloo").name == "002-rloo"
