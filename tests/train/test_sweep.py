"""rlnb.train.sweep: a grid of configs x seeds into one folder of run directories, the
same numbers on both backends, resumed after a kill, bad input refused before a write."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer, load_runs, ray_session, sweep
from rlnb.train.rundir import read_metrics
from rlnb.train.sweep import run_label


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _env():
    return StrategyBandit.from_card(num_problems=16, num_strategies=8, generator=_gen(0))


def _logits(seed, env):
    return torch.randn(env.states_per_prompt, env.num_actions, generator=_gen(100 + seed))


def _policy(env, seed):  # a seed-dependent initial policy (a policy function)
    return TabularPolicy.for_env(env, shared=True, logits=_logits(seed, env))


def _base(**kw):
    options = dict(max_steps=12, num_prompts_per_step=4, num_generations=4, optimizer="sgd",
                   learning_rate=0.5, progress_bar=False)
    options.update(kw)
    return TrainConfig(**options)


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _rows(run_dir):
    return _strip(read_metrics(Path(run_dir) / "metrics.jsonl"))


def _alone(env, policy, config):
    """The metrics rows and final weights of ``config`` trained in memory, alone."""
    trainer = Trainer(policy, env, config.replace(progress_bar=False))
    trainer.train()
    return _strip(json.loads(json.dumps(trainer.history))), policy.logits.detach().clone()


def _final_logits(run_dir):
    from rlnb.train import load_run

    policy, _, _ = load_run(run_dir)
    return policy.logits.detach()


def _stats(run_dir):
    """What a run directory's files are, to see that nothing rewrote them."""
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(run_dir).iterdir())}


def _strip_frame(df):
    return df[~df.metric.str.startswith("time/")].reset_index(drop=True)


# --- the local backend -------------------------------------------------------------------
def test_local_sweep_trains_each_run_as_a_trainer_alone_would(tmp_path):
    env = _env()
    configs = [_base(), _base(learning_rate=1.0, advantage="rloo")]
    t0 = time.perf_counter()
    df = sweep(env, _policy, configs, seeds=[0, 3], root=tmp_path / "grid", workers=2,
               progress_bar=False)
    print(f"local sweep of 4 runs: {time.perf_counter() - t0:.1f} s")
    names = {f"{run_label(c)}-seed{s}" for c in configs for s in (0, 3)}
    assert {p.name for p in (tmp_path / "grid").iterdir()} == names
    assert set(df["run"]) == names
    assert run_label(configs[1]) == "advantage=rloo,learning_rate=1.0,num_generations=4," \
        "num_prompts_per_step=4,optimizer=sgd"
    # the frame is load_runs's, plus the labels
    pd.testing.assert_frame_equal(df.drop(columns="config"), load_runs(tmp_path / "grid"))
    assert (df["config"] + "-seed" + df["seed"].astype(str) == df["run"]).all()
    for config in configs:
        for seed in (0, 3):
            run = tmp_path / "grid" / f"{run_label(config)}-seed{seed}"
            rows, logits = _alone(env, _policy(env, seed), config.replace(seed=seed))
            assert _rows(run) == rows
            assert torch.equal(_final_logits(run), logits)
            assert json.loads((run / "config.json").read_text())["seed"] == seed


def test_a_finished_sweep_trains_nothing_again(tmp_path):
    env = _env()
    policy = TabularPolicy.for_env(env, shared=True)
    configs = {"a": _base(max_steps=5)}
    first = sweep(env, policy, configs, seeds=[1, 2], root=tmp_path, progress_bar=False)
    before = {run: _stats(tmp_path / run) for run in ("a-seed1", "a-seed2")}
    again = sweep(env, policy, configs, seeds=[1, 2], root=tmp_path, progress_bar=False)
    # no worker ran: a resumed run rewrites its metrics file and runtime.json
    assert {run: _stats(tmp_path / run) for run in before} == before
    pd.testing.assert_frame_equal(again, first)
    # a larger max_steps extends the runs, to the numbers of runs made that long
    longer = sweep(env, policy, {"a": _base(max_steps=9)}, seeds=[1, 2], root=tmp_path,
                   progress_bar=False, wide=True)
    assert sorted(longer.step.unique()) == list(range(1, 10))
    for seed in (1, 2):
        rows, _ = _alone(env, TabularPolicy.for_env(env, shared=True),
                         _base(max_steps=9, seed=seed))
        assert _rows(tmp_path / f"a-seed{seed}") == rows


# --- a killed sweep resumes ---------------------------------------------------------------
KILL_STEPS = 300

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from rlnb.envs import StrategyBandit
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, sweep

    if __name__ == "__main__":
        env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
        config = TrainConfig(max_steps=MAX_STEPS, num_generations=4, optimizer="adam",
                             learning_rate=0.05, progress_bar=False)
        sweep(env, TabularPolicy.for_env(env, shared=True), {"adam": config},
              seeds=[0, 1, 2], root=sys.argv[1], workers=1, progress_bar=False)
    """
).replace("MAX_STEPS", str(KILL_STEPS))


def _lock_free(run_dir):
    """Whether no process holds the run directory's lock."""
    path = Path(run_dir) / ".rlnb.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_unfinished_runs_only(tmp_path, capsys):
    root = tmp_path / "grid"
    script = tmp_path / "sweep_script.py"
    script.write_text(SCRIPT)
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=log, stderr=log,
                            start_new_session=True)
    first, second, third = (root / f"adam-seed{s}" for s in (0, 1, 2))
    t0 = time.perf_counter()
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if len(read_metrics(first / "metrics.jsonl")) == KILL_STEPS \
                    and len(read_metrics(second / "metrics.jsonl")) >= 5:
                break
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.005)
        else:
            pytest.fail("the sweep did not reach its second run in time")
        os.kill(proc.pid, signal.SIGKILL)  # the sweep's process alone, as a killed kernel
        proc.wait()
        # its worker dies with it: the run it was training is not left locked
        deadline = time.time() + 30
        while not _lock_free(second) and time.time() < deadline:
            time.sleep(0.05)
        assert _lock_free(second), "the worker outlived the killed sweep"
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
    print(f"killed after {time.perf_counter() - t0:.1f} s")
    done_before = _rows(second)
    assert 5 <= len(done_before) < KILL_STEPS, "the kill did not land in the second run"
    assert _rows(third) == []
    finished = _stats(first)

    env = StrategyBandit.from_card(generator=_gen(0))
    config = TrainConfig(max_steps=KILL_STEPS, num_generations=4, optimizer="adam",
                         learning_rate=0.05, progress_bar=False)
    t0 = time.perf_counter()
    capsys.readouterr()
    df = sweep(env, TabularPolicy.for_env(env, shared=True), {"adam": config},
               seeds=[0, 1, 2], root=root, workers=1, progress_bar=True)
    print(f"resumed sweep: {time.perf_counter() - t0:.1f} s")
    bar = capsys.readouterr().err
    assert "sweep" in bar and "3/3" in bar  # the bar over runs, starting at 1 of 3 done

    assert _stats(first) == finished, "a finished run was trained again"
    assert _rows(second)[:len(done_before) - 1] == done_before[:-1]
    for seed, run in enumerate((first, second, third)):
        rows, logits = _alone(env, TabularPolicy.for_env(env, shared=True),
                              config.replace(seed=seed))
        assert _rows(run) == rows, f"{run.name} differs from an uninterrupted run"
        assert torch.equal(_final_logits(run), logits)
    assert sorted(df["run"].unique()) == ["adam-seed0", "adam-seed1", "adam-seed2"]


def test_an_interrupted_sweep_stops_its_workers_and_resumes(tmp_path):
    env = StrategyBandit.from_card(generator=_gen(0))
    config = TrainConfig(max_steps=KILL_STEPS, num_generations=4, optimizer="adam",
                         learning_rate=0.05, progress_bar=False)
    run = tmp_path / "adam-seed0"

    def interrupt():  # Ctrl-C (a notebook's interrupt) once the run is under way
        deadline = time.time() + 120
        while time.time() < deadline and len(read_metrics(run / "metrics.jsonl")) < 5:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        sweep(env, TabularPolicy.for_env(env, shared=True), {"adam": config}, seeds=[0],
              root=tmp_path, progress_bar=False)
    watcher.join()
    assert _lock_free(run)  # the worker was stopped, not left training
    assert 5 <= len(_rows(run)) < KILL_STEPS
    sweep(env, TabularPolicy.for_env(env, shared=True), {"adam": config}, seeds=[0],
          root=tmp_path, progress_bar=False)
    rows, logits = _alone(env, TabularPolicy.for_env(env, shared=True), config)
    assert _rows(run) == rows
    assert torch.equal(_final_logits(run), logits)


# --- bad input: a clear error, nothing written ----------------------------------------------
def _refused(tmp_path, error, match, *args, **kwargs):
    root = tmp_path / "grid"
    env = _env()
    args = args or (env, TabularPolicy.for_env(env, shared=True), {"a": _base()})
    kwargs.setdefault("root", root)
    with pytest.raises(error, match=match):
        sweep(*args, progress_bar=False, **kwargs)
    assert not root.exists()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(backend="dask"), ValueError, r"backend must be one of \('local', 'ray'\)"),
    (dict(address="auto"), ValueError, "pass backend='ray'"),
    (dict(workers=0), ValueError, "workers must be an integer >= 1"),
    (dict(threads_per_run=1.5), TypeError, "threads_per_run must be an integer"),
    (dict(seeds=[0, 1, 0]), ValueError, r"seeds \[0\] appear more than once"),
    (dict(seeds=[]), ValueError, "seeds is empty"),
    (dict(seeds="012"), TypeError, "seeds must be a list of ints"),
    (dict(seeds=[0.5]), TypeError, r"seeds\[0\] must be an integer"),
    (dict(root=3), TypeError, "root must be the path of a folder"),
    (dict(progress_bar=None), TypeError, "progress_bar must be True or False"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, error, match):
    if "progress_bar" in kwargs:
        env = _env()
        with pytest.raises(error, match=match):
            sweep(env, TabularPolicy.for_env(env, shared=True), {"a": _base()},
                  root=tmp_path / "grid", **kwargs)
        assert not (tmp_path / "grid").exists()
        return
    _refused(tmp_path, error, match, **kwargs)


def test_bad_grids_are_refused(tmp_path):
    env = _env()
    pi = TabularPolicy.for_env(env, shared=True)
    _refused(tmp_path, ValueError, "configs is empty", env, pi, {})
    _refused(tmp_path, TypeError, r"configs\['a'\] must be a TrainConfig, got dict",
             env, pi, {"a": {"learning_rate": 0.1}})
    _refused(tmp_path, TypeError, r"configs\[1\] must be a TrainConfig", env, pi,
             [_base(), "lr=0.1"])
    _refused(tmp_path, ValueError, r"configs\[0\] and configs\[1\] define the same runs",
             env, pi, [_base(), _base(max_steps=50, seed=3)])
    _refused(tmp_path, ValueError, "cannot name a run directory", env, pi, {"a/b": _base()})
    _refused(tmp_path, ValueError, "cannot name a run directory", env, pi, {".a": _base()})
    _refused(tmp_path, TypeError, "must be str", env, pi, {1: _base()})
    # what a Trainer refuses, the sweep refuses before it writes a run
    _refused(tmp_path, ValueError, "num_actions=3 but StrategyBandit has num_actions=8",
             env, TabularPolicy(1, 3, shared=True), {"a": _base()})
    _refused(tmp_path, ValueError, "gradient_checkpointing",
             env, pi, {"a": _base(), "b": _base(gradient_checkpointing=True)})


def test_bad_components_are_refused(tmp_path):
    env = _env()
    pi = TabularPolicy.for_env(env, shared=True)
    _refused(tmp_path, TypeError, "env is a policy", pi, env, {"a": _base()})
    _refused(tmp_path, TypeError, "policy must be an rlnb Policy", env, torch.nn.Linear(2, 2),
             {"a": _base()})
    _refused(tmp_path, TypeError, "env must be a sandbox", env.solve_matrix, pi, {"a": _base()})
    _refused(tmp_path, TypeError, r"policy\(env, seed=0\) returned a str",
             env, lambda env, seed: "pi", {"a": _base()}, seeds=[0])
    _refused(tmp_path, TypeError, r"env\(seed=2\) returned a NoneType",
             lambda seed: None, pi, {"a": _base()}, seeds=[2])


def test_a_root_holding_another_run_is_refused_before_any_write(tmp_path):
    env = _env()
    pi = TabularPolicy.for_env(env, shared=True)
    with Trainer(pi, env, _base(max_steps=2, learning_rate=0.1),
                 run_dir=tmp_path / "a-seed0") as trainer:
        trainer.train()
    before = _stats(tmp_path / "a-seed0")
    with pytest.raises(ValueError, match=r"a-seed0.*options \['learning_rate'\] differ"):
        sweep(env, pi, {"b": _base(), "a": _base()}, seeds=[0], root=tmp_path,
              progress_bar=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-seed0"]
    assert _stats(tmp_path / "a-seed0") == before
    # a damaged checkpoint is named, with what to do
    ckpt = tmp_path / "a-seed0" / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"run a-seed0 .*corrupt or truncated.*restore it"):
        sweep(env, pi, {"a": _base(learning_rate=0.1)}, seeds=[0, 1], root=tmp_path,
              progress_bar=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-seed0"]
    (tmp_path / "c-seed0").write_text("a file")
    with pytest.raises(NotADirectoryError, match="c-seed0"):
        sweep(env, pi, {"c": _base()}, seeds=[0], root=tmp_path, progress_bar=False)
    with pytest.raises(NotADirectoryError, match="is a file"):
        sweep(env, pi, {"c": _base()}, seeds=[0], root=tmp_path / "c-seed0",
              progress_bar=False)


# --- Ray ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """One local Ray for the module's tests, started (by ray_session, as sweep starts it)
    with an empty home directory, which must still be empty when it stops."""
    pytest.importorskip("ray", reason="Ray is part of the dev extra: pip install -e '.[dev]'")
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(home))
    t0 = time.perf_counter()
    try:
        with ray_session(num_cpus=2) as temp:
            print(f"ray started in {time.perf_counter() - t0:.1f} s")
            assert temp is not None and temp.is_dir()
            yield home
        assert not temp.exists(), "Ray's session files were left behind"
        assert list(home.rglob("*")) == [], "Ray wrote under the home directory"
    finally:
        patch.undo()


@pytest.mark.slow  # starting Ray takes ~30 s on 2 cores
def test_ray_and_local_give_the_same_numbers(tmp_path, ray_home):
    env = _env()
    configs = {"sgd": _base(), "adam": _base(optimizer="adam", learning_rate=0.1)}
    local = sweep(env, _policy, configs, seeds=[0, 1], root=tmp_path / "local",
                  progress_bar=False)
    t0 = time.perf_counter()
    on_ray = sweep(env, _policy, configs, seeds=[0, 1], root=tmp_path / "ray",
                   backend="ray", progress_bar=False)
    print(f"ray sweep of 4 runs: {time.perf_counter() - t0:.1f} s")
    pd.testing.assert_frame_equal(_strip_frame(on_ray), _strip_frame(local))
    for name in ("sgd-seed0", "sgd-seed1", "adam-seed0", "adam-seed1"):
        assert _rows(tmp_path / "ray" / name) == _rows(tmp_path / "local" / name)
        assert torch.equal(_final_logits(tmp_path / "ray" / name),
                           _final_logits(tmp_path / "local" / name))
        runtime = [json.loads((tmp_path / b / name / "runtime.json").read_text())
                   for b in ("local", "ray")]
        assert runtime[0] == runtime[1]
    assert {p.name for p in (tmp_path / "ray").iterdir()} == set(local["run"])
    assert list(ray_home.rglob("*")) == []


@pytest.mark.slow  # starting Ray takes ~30 s on 2 cores
def test_ray_resumes_a_partly_trained_run(tmp_path, ray_home):
    env = _env()
    config = _base(max_steps=10)
    # a run some earlier sweep left at step 4, with the partial line of a killed write
    run = tmp_path / "a-seed5"
    with Trainer(_policy(env, 5), env, config.replace(seed=5), run_dir=run) as trainer:
        trainer.train(4)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')
    before = _rows(run)
    assert len(before) == 4
    df = sweep(env, _policy, {"a": config}, seeds=[5, 6], root=tmp_path, backend="ray",
               workers=1, progress_bar=False)
    assert _rows(run)[:4] == before
    for seed in (5, 6):
        rows, logits = _alone(env, _policy(env, seed), config.replace(seed=seed))
        assert _rows(tmp_path / f"a-seed{seed}") == rows
        assert torch.equal(_final_logits(tmp_path / f"a-seed{seed}"), logits)
    assert set(df.run) == {"a-seed5", "a-seed6"}


@pytest.mark.slow  # starting Ray takes ~30 s on 2 cores
def test_ray_names_a_failing_run_and_finishes_the_others(tmp_path, ray_home):
    env = _env()
    config = _base(max_steps=6)
    # a run another process is training (holding its lock): its worker fails
    held = Trainer(_policy(env, 0), env, config.replace(seed=0), run_dir=tmp_path / "a-seed0")
    try:
        held.train(2)
        with pytest.raises(RuntimeError, match="1 of the 2 runs") as info:
            sweep(env, _policy, {"a": config}, seeds=[0, 1], root=tmp_path, backend="ray",
                  progress_bar=False)
    finally:
        held.close()
    message = str(info.value)
    assert "a-seed0: RunDirLocked:" in message and "locked by another process" in message
    assert "call sweep(...) again" in message and "a-seed1" not in message
    assert len(_rows(tmp_path / "a-seed0")) == 2
    assert len(_rows(tmp_path / "a-seed1")) == 6  # the other run finished
    sweep(env, _policy, {"a": config}, seeds=[0, 1], root=tmp_path, backend="ray",
          progress_bar=False)
    for seed in (0, 1):
        rows, _ = _alone(env, _policy(env, seed), config.replace(seed=seed))
        assert _rows(tmp_path / f"a-seed{seed}") == rows
