"""One writer per run directory, and no debris: a second Trainer (another process or this
one) is refused while the first holds the directory, a SIGKILLed holder never leaves it
locked, temporaries are unique and cleaned up, and a directory that does not match what
is asked of it is refused before anything is written."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.serialization import atomic_save_safetensors, atomic_write_bytes
from rlnb.train import TrainConfig, Trainer, load_run, load_runs, resume, rundir
from rlnb.train.rundir import RunDirLocked, read_metrics

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time, torch
    import rlnb.serialization
    from rlnb.envs import StrategyBandit
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    mode = sys.argv[2]
    def slow(trainer, metrics):
        time.sleep(0.02)

    if mode == "die-in-checkpoint":  # SIGKILL between the checkpoint's write and rename
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith("checkpoint.safetensors") and "step" in globals():
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        rlnb.serialization.os.replace = replace

    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    pi = TabularPolicy.for_env(env, shared=True)
    cfg = TrainConfig(max_steps=int(sys.argv[3]), num_prompts_per_step=4, num_generations=4,
                      optimizer="sgd", learning_rate=1.0, progress_bar=False)
    t = Trainer(pi, env, cfg, run_dir=sys.argv[1], callbacks=[slow])
    step = 0  # from here on the checkpoint replacement kills (mode die-in-checkpoint)
    t.train()
    print("OK")
    """
)


def _env(seed=0):
    return StrategyBandit.from_card(generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 3, "num_prompts_per_step": 4, "num_generations": 4,
                          "optimizer": "sgd", "learning_rate": 1.0, "progress_bar": False,
                          **kw})


def _trainer(run_dir, seed=0, **kw):
    env = _env(seed)
    return Trainer(TabularPolicy.for_env(env, shared=True), env, _cfg(**kw), run_dir=run_dir)


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _start(tmp_path, run_dir, mode="train", steps=2000):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(run_dir), mode, str(steps)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_rows(proc, metrics, n, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(read_metrics(metrics)) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the training process made no progress")


# --- one writer ---------------------------------------------------------------------------
@pytest.mark.slow
def test_another_process_is_refused_and_a_sigkilled_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    holder = _start(tmp_path, run)
    try:
        _wait_rows(holder, run / "metrics.jsonl", 5)
        # a second process: refused, with the directory and the holder's pid
        second = _start(tmp_path, run)
        out, err = second.communicate(timeout=120)
        assert second.returncode != 0 and "OK" not in out
        assert "RunDirLocked" in err and str(run) in err and f"pid {holder.pid}" in err
        # this process: refused too, and resume as well; nothing changed by the attempts
        with pytest.raises(RunDirLocked, match=f"locked by another process \\(pid {holder.pid}"):
            _trainer(run)
        with pytest.raises(RunDirLocked, match=str(run)):
            resume(run, progress_bar=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    kept = read_metrics(run / "metrics.jsonl")
    # the killed holder leaves no lock: the directory opens, with every finished step
    with _trainer(run, max_steps=2000) as t:
        assert t.step >= len(kept) - 1
        steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
        assert steps == list(range(1, t.step + 1))
        t.train(t.step + 2)
    assert not (run / rundir.LOCK).exists()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, t.step + 1))


def test_two_trainers_in_one_process_are_refused_until_the_first_closes(tmp_path):
    first = _trainer(tmp_path / "run")
    assert (tmp_path / "run" / rundir.LOCK).exists()
    assert json.loads((tmp_path / "run" / rundir.LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(RunDirLocked, match=f"another Trainer in this process \\(pid {os.getpid()}"):
        _trainer(tmp_path / "run")
    with pytest.raises(RunDirLocked, match="close"):
        _trainer(tmp_path / "run" / ".." / "run")  # the same directory by another path
    first.train()
    first.close()
    first.close()  # idempotent
    assert not (tmp_path / "run" / rundir.LOCK).exists()
    with _trainer(tmp_path / "run", max_steps=5) as second:
        assert second.step == 3
        second.train()
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_garbage_collection_releases_the_lock(tmp_path):
    t = _trainer(tmp_path / "run")
    del t
    _trainer(tmp_path / "run").close()  # freed at once: no reference left
    t = _trainer(tmp_path / "run")
    t.callbacks.append(lambda trainer, metrics, t=t: None)  # a reference cycle
    del t
    _trainer(tmp_path / "run").close()  # the cycle is collected before refusing


def test_a_closed_trainer_cannot_write(tmp_path):
    with _trainer(tmp_path / "run") as t:
        t.train(1)
    before = _tree(tmp_path)
    for call in (t.train_step, t.save_checkpoint, t.save_config, t.train):
        with pytest.raises(RuntimeError, match=r"closed.*rlnb\.train\.resume"):
            call()
    assert _tree(tmp_path) == before
    assert t.step == 1 and len(t.history) == 1  # still readable


def test_a_stale_lock_file_of_a_dead_process_does_not_block(tmp_path):
    _trainer(tmp_path / "run").close()
    (tmp_path / "run" / rundir.LOCK).write_text(json.dumps({"pid": 999999999}))
    with _trainer(tmp_path / "run", max_steps=4) as t:
        t.train()
        assert json.loads((tmp_path / "run" / rundir.LOCK).read_text())["pid"] == os.getpid()


def test_the_dashboard_holds_the_lock_while_its_run_is_open(tmp_path):
    from rlnb.widgets import LiveTraining

    env = _env()
    holder = {}

    def pause_at_2(trainer, metrics):
        if metrics["step"] == 2:
            holder["dash"].pause()

    dash = LiveTraining(env, lambda: TabularPolicy.for_env(env, shared=True), _cfg(max_steps=4),
                        run_root=tmp_path, callbacks=[pause_at_2])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(120) and dash.state == "paused"
    with pytest.raises(RunDirLocked, match="in this process"):
        resume(dash.run_dir, progress_bar=False)
    dash.stop()
    trainer = dash.trainer
    with pytest.raises(RuntimeError, match="closed"):  # its writes need the lock
        trainer.save()
    assert resume(dash.run_dir, max_steps=4, progress_bar=False).step == 4


# --- temporaries ----------------------------------------------------------------------------
def test_temporary_names_are_unique_across_threads(tmp_path):
    errors = []

    def write(i):
        try:
            for j in range(15):
                atomic_write_bytes(tmp_path / "config.json", f"{i} {j}".encode())
                atomic_save_safetensors({"x": torch.full((64,), float(i))},
                                        tmp_path / "checkpoint.safetensors")
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "config.json"]


def test_two_trainers_in_one_process_save_checkpoints_side_by_side(tmp_path):
    a, b = _trainer(tmp_path / "a", max_steps=20), _trainer(tmp_path / "b", max_steps=20)
    errors = []

    def run(t):
        try:
            t.train()
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run, args=(t,)) for t in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    a.close()
    b.close()
    assert not errors, errors
    assert rundir.checkpoint_step(tmp_path / "a") == rundir.checkpoint_step(tmp_path / "b") == 20


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_temporaries_that_the_next_open_removes(tmp_path):
    run = tmp_path / "run"
    proc = _start(tmp_path, run, mode="die-in-checkpoint", steps=5)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert any(n.startswith(".checkpoint.safetensors.tmp") for n in left), left
    (run / ".tmpAb12Cd").write_bytes(b"safetensors' own temporary")
    (run / "notes.tmp").write_text("not ours")
    (run / ".tmp-notes").write_text("not ours either")
    with _trainer(run, max_steps=5) as t:
        names = sorted(p.name for p in run.iterdir())
        assert not any(n.startswith((".checkpoint.", ".metrics.", ".config.")) for n in names)
        assert ".tmpAb12Cd" not in names and {"notes.tmp", ".tmp-notes"} <= set(names)
        t.train()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]


# --- fsync --------------------------------------------------------------------------------
@pytest.mark.parametrize("fsync", [True, False])
def test_metrics_lines_and_checkpoints_are_fsynced_before_they_count(tmp_path, monkeypatch,
                                                                     fsync):
    with _trainer(tmp_path / "run", max_steps=1) as t:
        calls = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(os.readlink(
            f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd), real(fd))[1])
        t.config.fsync = fsync
        t.directory.fsync = fsync
        t.train(3)
        monkeypatch.undo()
    if not fsync:
        assert calls == []
        return
    names = [os.path.basename(str(c)) for c in calls]
    assert names.count("metrics.jsonl") == 3  # one per step
    assert sum(n.startswith(".checkpoint.safetensors.tmp") for n in names) == 3
    assert names.count("run") >= 3  # the directory, after each rename
    # the order: a step's metrics line, then its checkpoint file, then the rename
    assert names[:3] == ["metrics.jsonl", names[1], "run"] and names[1].startswith(".check")


def test_fsync_is_not_part_of_what_defines_a_run(tmp_path):
    _trainer(tmp_path / "run").train()
    with _trainer(tmp_path / "run", max_steps=4, fsync=False) as t:
        assert t.step == 3
        t.train()


# --- the directory must match ------------------------------------------------------------------
def test_a_gap_in_the_metrics_is_detected(tmp_path):
    run = tmp_path / "run"
    _trainer(run, max_steps=5).train()
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2] + lines[3:]))  # step 3 lost
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"metrics\.jsonl lacks the rows of step\(s\) 3, which "
                                         r"the checkpoint \(step 5\).*allow_metrics_gap=True"):
        resume(run, max_steps=6, progress_bar=False)
    with pytest.raises(ValueError, match="allow_metrics_gap"):
        _trainer(run, max_steps=6)
    assert _tree(tmp_path) == before
    t = resume(run, max_steps=6, progress_bar=False, allow_metrics_gap=True)
    assert t.step == 6
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 4, 5, 6]


def test_another_sandbox_or_policy_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    _trainer(run).train()
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"another sandbox.*env\.safetensors.*resume"):
        _trainer(run, seed=1, max_steps=5)  # same config, another solve matrix
    env = _env()
    with pytest.raises(ValueError, match=r"another policy.*\['shared'\].*policy\.json"):
        Trainer(TabularPolicy.for_env(env, shared=False), env, _cfg(max_steps=5), run_dir=run)
    from rlnb.envs import Bandit
    bandit = Bandit(means=torch.rand(env.num_prompts, env.num_actions,
                                     generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"env\.json holds a rlnb\.envs\.strategy_bandit"):
        Trainer(TabularPolicy.for_env(bandit, shared=True), bandit, _cfg(max_steps=5),
                run_dir=run)
    assert _tree(tmp_path) == before
    assert torch.equal(load_run(run)[1].solve_matrix, env.solve_matrix)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_named(tmp_path, damage):
    run = tmp_path / "run"
    _trainer(run).train()
    data = (run / "checkpoint.safetensors").read_bytes()
    data = {"truncated": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}[damage]
    (run / "checkpoint.safetensors").write_bytes(data)
    before = _tree(tmp_path)
    for call in (lambda: resume(run, progress_bar=False), lambda: load_run(run),
                 lambda: _trainer(run), lambda: rundir.checkpoint_step(run)):
        with pytest.raises(ValueError, match=r"checkpoint\.safetensors is corrupt or truncated"
                                             r".*start a new run directory"):
            call()
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("text", ["{oops", "[1, 2, 3]", '"a string"', '{"learning_rat": 1}'])
def test_a_damaged_config_is_named(tmp_path, text):
    run = tmp_path / "run"
    _trainer(run).train()
    (run / "config.json").write_text(text)
    before = _tree(tmp_path)
    calls = [lambda: resume(run, progress_bar=False), lambda: load_run(run)]
    if text != '{"learning_rat": 1}':  # load_runs reads any options; a Trainer names them
        calls += [lambda: load_runs(run), lambda: _trainer(run)]
    for call in calls:
        with pytest.raises(ValueError, match=r"config\.json"):
            call()
    assert _tree(tmp_path) == before


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        _trainer(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match="cannot create run_dir"):
        _trainer(tmp_path / "file" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_policy_that_cannot_be_saved_leaves_no_directory(tmp_path):
    class Unsaveable(TabularPolicy):
        def get_config(self):
            raise ValueError("this policy has no directory to be rebuilt from")

    env = _env()
    with pytest.raises(ValueError, match="no directory to be rebuilt from"):
        Trainer(Unsaveable(env.num_prompts, env.num_actions), env, _cfg(),
                run_dir=tmp_path / "a" / "run")
    assert list(tmp_path.iterdir()) == []
    gc.collect()
