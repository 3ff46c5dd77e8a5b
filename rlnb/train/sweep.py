"""Grids of configs x seeds, trained into one folder of run directories.

:func:`sweep` trains every config of a grid with every seed, each run in its own run
directory ``root/<label>-seed<k>``, in local worker processes (the default) or on Ray, and
returns the runs' metrics as :func:`rlnb.train.load_runs` reads them, plus a ``config``
column holding each run's label::

    import torch
    from rlnb.envs import StrategyBandit
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, sweep

    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    policy = TabularPolicy.for_env(env, shared=True)
    base = TrainConfig(max_steps=200, num_generations=4, optimizer="sgd")
    df = sweep(env, policy,
               {"lr0.1": base.replace(learning_rate=0.1),
                "lr1": base.replace(learning_rate=1.0)},
               seeds=[0, 1, 2], root="runs/lr-sweep")     # 6 runs: runs/lr-sweep/lr1-seed2, ...
    df[df.metric == "reward"].groupby(["config", "step"]).value.mean()

    df = sweep(env, policy, [...], seeds=[0, 1], root="runs/rloo", backend="ray")

Calling it again with the same arguments resumes the sweep: a finished run is skipped, a
run a killed sweep left partly done continues from its last checkpoint (to the numbers an
uninterrupted run makes: :mod:`rlnb.train.rundir`), a missing one starts. A larger
``max_steps`` extends finished runs. Every run the folder already holds is first checked
against the grid (config, sandbox, policy, as ``Trainer(run_dir=...)`` checks one), and a
grid that no longer matches is refused before anything is written.

How runs are described and shipped: the sweep writes each new run directory itself (the
sandbox, the policy, the config and the step-0 checkpoint: what ``Trainer(run_dir=...)``
writes), then a worker continues the run with :func:`rlnb.train.resume`. A worker is sent
a path, never a pickled sandbox or policy, and rebuilds both from the directory's
declarative files (:mod:`rlnb.serialization`): only registered classes, nothing imported
because a file names it. Sandbox and policy classes defined outside rlnb must be
registered (:func:`rlnb.serialization.register_serializable`); the sweep registers the
classes it was given in its workers.

Backends:

- ``"local"``: a pool of ``workers`` processes (default: one per core, at most one per
  run), forked from a ``forkserver`` that has imported rlnb once (``spawn`` where there is
  none). They end with the process that started them, even when it is killed, so a
  killed notebook kernel leaves no run locked (the runs resume from their checkpoints).
- ``"ray"``: one Ray task per run. Without ``address``, a Ray for this sweep alone on
  127.0.0.1, with the dashboard off, usage statistics off, token authentication with a
  token of its own, and its session files in a temporary directory removed afterwards
  (nothing under the home directory). With
  ``address`` (``"auto"``, ``"ray://head:10001"``), that cluster: its nodes must see
  ``root`` (a shared file system) and have rlnb installed. A Ray session already started
  in this process (``ray.init``, or :func:`ray_session` to keep one across sweeps) is used
  as it is and left running.

Same grid, same numbers on both backends, bit for bit on the CPU: each run is seeded, and
runs on ``threads_per_run`` torch threads (default: cores // workers) when its config
leaves ``torch_threads`` None -- a policy under a million parameters runs on one thread
whatever it is (:mod:`rlnb.threads`). The thread count is recorded in each run's
``runtime.json``; continuing a run under another one warns.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import re
import secrets
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rlnb import threads as thread_rules
from rlnb.checks import check_int
from rlnb.policies.base import Policy
from rlnb.serialization import (
    Serializable,
    class_key,
    register_serializable,
    resolve_class,
)
from rlnb.train import rundir
from rlnb.train.checkpoint import checkpoint_step
from rlnb.train.config import TrainConfig
from rlnb.train.files import CHECKPOINT, CONFIG
from rlnb.train.metrics import load_runs
from rlnb.train.resume import resume
from rlnb.train.trainer import Trainer

__all__ = ["BACKENDS", "ray_session", "run_label", "sweep"]

#: The ways :func:`sweep` runs a grid.
BACKENDS = ("local", "ray")

#: Characters a label made from a config keeps (others become ``_``).
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_LABEL = 96


@dataclass
class _GridRun:
    """One run of the grid: its name, label, config, directory and components."""

    name: str
    label: str
    config: TrainConfig
    path: Path
    env: Any
    policy: Any
    step: int | None = None  # the step of the checkpoint the directory holds, if any

    @property
    def finished(self) -> bool:
        return self.step is not None and self.step >= self.config.max_steps


def sweep(
    env: Any,
    policy: Any,
    configs: TrainConfig | Sequence[TrainConfig] | Mapping[str, TrainConfig],
    *,
    root: str | os.PathLike,
    seeds: Sequence[int] | None = None,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    threads_per_run: int | None = None,
    progress_bar: bool = True,
    wide: bool = False,
) -> pd.DataFrame:
    """Train every config with every seed into ``root/<label>-seed<k>`` and return the
    runs' metrics (tidy, as :func:`rlnb.train.load_runs` reads them, with a ``config``
    column of labels).

    Args:
        env: the sandbox (any rlnb sandbox or registered class), or a function
            ``env(seed)`` returning one for each seed (a seed-dependent layout). A function
            is called here, once per seed, not in the workers: it need not be picklable.
        policy: the initial policy (every run starts from its current weights), or a
            function ``policy(env, seed)`` returning one for each seed.
        configs: a :class:`TrainConfig`, a list of them, or a dict ``{label: config}``.
            A list's labels are made from each config's options that differ from the
            defaults (:func:`run_label`), so adding a config keeps the others' names.
        root: the folder of run directories (created when missing; may hold other runs).
        seeds: each run's seed replaces its config's; None keeps each config's own seed.
        backend: ``"local"`` (worker processes) or ``"ray"`` (see the module's notes).
        workers: runs trained at once. Local: default one per core, at most one per run;
            Ray: default as many as the cluster schedules.
        address: with ``backend="ray"``, the cluster to use (``"auto"``,
            ``"ray://head:10001"``); None starts a local Ray for the sweep.
        threads_per_run: torch threads of each run whose config leaves ``torch_threads``
            None (small policies use one whatever it is); default cores // workers.
        progress_bar: a ``tqdm.auto`` bar over the runs.
        wide: return one column per metric instead of the tidy ``metric, value`` pair.

    Raises:
        TypeError / ValueError: a bad argument, or a run directory in ``root`` that holds
            another run than the grid's; nothing is written then.
        RuntimeError: some runs failed (the others are finished): it names each and why;
            call ``sweep`` again once fixed to continue them.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if address is not None:
        if backend != "ray":
            raise ValueError(
                f"address={address!r} is the address of a Ray cluster: pass backend='ray' "
                "with it (the local backend runs processes on this machine)")
        if not isinstance(address, str) or not address:
            raise TypeError(f"address must be a str such as 'auto' or 'ray://head:10001', "
                            f"got {address!r}")
    if workers is not None:
        workers = check_int(workers, "workers", 1, meaning="runs trained at once")
    if threads_per_run is not None:
        threads_per_run = check_int(threads_per_run, "threads_per_run", 1,
                                    meaning="torch threads of each run")
    for name, flag in (("progress_bar", progress_bar), ("wide", wide)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    root = _root(root)
    labelled = _labelled(configs)
    seeds = _seeds(seeds)
    make_env, make_policy = _source(env, "env"), _source(policy, "policy")
    ray = _import_ray() if backend == "ray" else None

    runs = _plan(labelled, seeds, root, make_env, make_policy)
    classes = _outside_classes(runs, backend)
    cores = _cores()
    grid_workers = workers if workers is not None else min(cores, len(runs))
    threads = threads_per_run or max(1, cores // grid_workers)

    # Everything is checked: from here on the sweep writes.
    todo = [r for r in runs if not r.finished]
    for run in todo:
        if run.step is None:
            _create(run)
    failures: list[tuple[_GridRun, BaseException]] = []
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run",
                   disable=not progress_bar, leave=True)
        try:
            if backend == "local":
                _run_local(todo, min(grid_workers, len(todo)), threads, classes, bar, failures)
            else:
                _run_ray(ray, todo, workers, threads, classes, address, cores, bar, failures)
        finally:
            bar.close()
    if failures:
        raise _failed(failures, len(todo))
    return _frame(runs, wide)


# --- the grid ------------------------------------------------------------------------
def run_label(config: TrainConfig) -> str:
    """The label :func:`sweep` gives a config of a list: its options that define a run and
    differ from the defaults, ``key=value`` joined by commas in the options' order of
    names (``"default"`` when none does); the seed, ``max_steps`` and the options a run
    directory continues with (``RunDir.NOT_COMPARED``) are left out. A label longer than
    96 characters is cut and ends in a hash of the whole.

    >>> run_label(TrainConfig(learning_rate=0.5, advantage="rloo", seed=3, progress_bar=False))
    'advantage=rloo,learning_rate=0.5'
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run_label needs a TrainConfig, got {type(config).__name__}")
    defaults = TrainConfig.defaults()
    parts = [f"{k}={_value_text(v)}" for k, v in sorted(_defining(config).items())
             if v != defaults.get(k)]
    label = _LABEL_CHARS.sub("_", ",".join(parts)) or "default"
    if len(label) > _MAX_LABEL:
        digest = hashlib.sha1(",".join(parts).encode()).hexdigest()[:10]
        label = f"{label[:_MAX_LABEL - 11]}-{digest}"
    return label


def _defining(config: TrainConfig) -> dict[str, Any]:
    """The options of ``config`` that define its runs (all but the seed and
    ``RunDir.NOT_COMPARED``)."""
    skip = rundir.RunDir.NOT_COMPARED | {"seed"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def _value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "_".join(_value_text(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def _root(root: Any) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be the path of a folder (a str or a Path), got "
                        f"{type(root).__name__} {root!r}")
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"root {path} is a file, not a folder: pass the folder that holds (or will hold) "
            "the sweep's run directories")
    return path


def _labelled(configs: Any) -> list[tuple[str, TrainConfig]]:
    """``[(label, config)]`` of the ``configs`` argument, checked."""
    fix = "build one with TrainConfig(**options) (or TrainConfig.from_dict(d))"
    if isinstance(configs, TrainConfig):
        configs = [configs]
    if isinstance(configs, Mapping):
        items = list(configs.items())
        for label, config in items:
            _check_label(label)
            if not isinstance(config, TrainConfig):
                raise TypeError(f"configs[{label!r}] must be a TrainConfig, got "
                                f"{type(config).__name__}; {fix}")
    elif isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence):
        raise TypeError(
            f"configs must be a TrainConfig, a list of them or a dict {{label: TrainConfig}}, "
            f"got {type(configs).__name__}")
    else:
        items = []
        for i, config in enumerate(configs):
            if not isinstance(config, TrainConfig):
                raise TypeError(f"configs[{i}] must be a TrainConfig, got "
                                f"{type(config).__name__}; {fix}")
            items.append((run_label(config), config))
        seen: dict[str, int] = {}
        for i, (label, config) in enumerate(items):
            if label in seen:
                j = seen[label]
                same = _defining(config) == _defining(items[j][1])
                why = ("define the same runs (they differ at most in the seed or in options "
                       "a run continues with, such as max_steps)" if same else
                       f"get the same label {label!r}")
                raise ValueError(
                    f"configs[{j}] and configs[{i}] {why}; drop one, or pass a dict "
                    "{label: TrainConfig} to name the runs yourself")
            seen[label] = i
    if not items:
        raise ValueError("configs is empty: pass at least one TrainConfig")
    return items


def _check_label(label: Any) -> None:
    if not isinstance(label, str):
        raise TypeError(f"the labels of configs (the dict's keys) must be str, got "
                        f"{type(label).__name__} {label!r}")
    bad = [c for c in ("/", "\\", "\0", os.sep, os.altsep) if c and c in label]
    if not label.strip() or label.startswith(".") or bad or len(label) > 200:
        raise ValueError(
            f"config label {label!r} cannot name a run directory (<label>-seed<k>): use a "
            "non-empty name of at most 200 characters, without '/' or '\\' and not starting "
            "with '.', such as 'lr0.1'")


def _seeds(seeds: Any) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be a list of ints such as [0, 1, 2] (or None: each "
                        f"config's own seed), got {type(seeds).__name__} {seeds!r}")
    out = [check_int(s, f"seeds[{i}]", meaning="a run's seed") for i, s in enumerate(list(seeds))]
    if not out:
        raise ValueError("seeds is empty: pass at least one seed, or None for each config's "
                         "own seed")
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:
        raise ValueError(f"seeds {twice} appear more than once: each seed is one run per "
                         "config; list each once")
    return out


def _source(obj: Any, what: str) -> Callable[..., Any]:
    """A function of the seed (``env``) or of the sandbox and the seed (``policy``) that
    returns the run's component, checked to be one."""
    if what == "policy":
        if isinstance(obj, Policy):
            return lambda env, seed: obj
        if isinstance(obj, torch.nn.Module) or not callable(obj):
            raise TypeError(
                f"policy must be an rlnb Policy (TabularPolicy, MLPPolicy, LMPolicy, or a "
                f"registered subclass of rlnb.policies.Policy) or a function "
                f"policy(env, seed) returning one, got {type(obj).__name__}")

        def make_policy(env: Any, seed: int) -> Any:
            out = obj(env, seed)
            if not isinstance(out, Policy):
                raise TypeError(f"policy(env, seed={seed}) returned a {type(out).__name__}; "
                                "the function must return an rlnb Policy")
            return out

        return make_policy
    if isinstance(obj, Policy):
        raise TypeError("env is a policy: the arguments are sweep(env, policy, configs, ...)")
    if isinstance(obj, Serializable):
        return lambda seed: obj
    if not callable(obj):
        raise TypeError(
            f"env must be a sandbox rlnb can save into a run directory (an rlnb sandbox, or "
            f"a registered subclass of rlnb.serialization.Serializable) or a function "
            f"env(seed) returning one, got {type(obj).__name__}")

    def make_env(seed: int) -> Any:
        out = obj(seed)
        if not isinstance(out, Serializable) or isinstance(out, Policy):
            raise TypeError(f"env(seed={seed}) returned a {type(out).__name__}; the function "
                            "must return an rlnb sandbox")
        return out

    return make_env


def _plan(labelled: list[tuple[str, TrainConfig]], seeds: list[int] | None, root: Path,
          make_env: Callable[..., Any], make_policy: Callable[..., Any]) -> list[_GridRun]:
    """Every run of the grid, with its components built and checked, and the state of its
    directory read and checked against it (nothing written)."""
    components: dict[int, tuple[Any, Any]] = {}  # seed -> (env, policy)
    runs: list[_GridRun] = []
    names: set[str] = set()
    for label, base in labelled:
        for seed in (seeds if seeds is not None else [base.seed]):
            config = base.replace(seed=seed)
            if seed not in components:
                env = make_env(seed)
                components[seed] = (env, make_policy(env, seed))
            env, policy = components[seed]
            name = f"{label}-seed{seed}"
            if name in names:
                raise ValueError(f"two runs of the grid are both named {name!r}: give the "
                                 "configs labels that do not end in -seed<k>")
            names.add(name)
            runs.append(_GridRun(name, label, config, root / name, env, policy))
    checked: set[tuple[str, int, int]] = set()
    for run in runs:
        key = (run.label, id(run.env), id(run.policy))
        if key not in checked:
            checked.add(key)
            _check_components(run)
            # In memory: every check a Trainer makes (the pair, the optimiser, the loss).
            Trainer(run.policy, run.env, run.config.replace(progress_bar=False)).close()
        _read_existing(run)
    return runs


def _check_components(run: _GridRun) -> None:
    for obj, what in ((run.env, "env"), (run.policy, "policy")):
        try:
            spec = json.loads(json.dumps(obj.spec()))
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"the {what} of run {run.name} ({type(obj).__name__}) cannot be saved into a "
                f"run directory: {err}") from None
        resolve_class(spec.get("class"), f"the {what} of run {run.name}")


def _read_existing(run: _GridRun) -> None:
    """Check the run the directory already holds (if any) against ``run`` and read its
    checkpoint's step, reading only."""
    path = run.path
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} (run {run.name} of the sweep) is a file: move it "
                                 "away, or choose another root")
    if not (path / CONFIG).exists():
        return
    try:
        # What Trainer(run_dir=...) checks before it writes a byte: the config (but the
        # options a run continues with), the sandbox, the policy, checkpoint and metrics.
        rundir.RunDir(path)._inspect(
            rundir._Run(run.config, run.env, run.policy, None, None, None),
            allow_metrics_gap=False)
        run.step = checkpoint_step(path)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(
            f"the sweep cannot continue its run {run.name} in {path}: {err}. If the grid "
            "changed since that run was made, give the changed config another label, use "
            "another root, or move that directory away") from None


def _outside_classes(runs: list[_GridRun], backend: str) -> list[tuple[str, type]]:
    """The sandbox and policy classes defined outside rlnb, for the workers to register:
    ``[(name in the spec, class)]``."""
    out: dict[str, type] = {}
    for run in runs:
        for obj in (run.env, run.policy):
            cls, name = type(obj), obj.spec()["class"]
            if name.startswith("rlnb.") or name in out:
                continue
            out[name] = cls
    if backend == "local":
        main = sys.modules.get("__main__")
        for name, cls in out.items():
            if cls.__module__ == "__main__" and not getattr(main, "__file__", None):
                raise ValueError(
                    f"{cls.__qualname__} is defined in this notebook or interactive session, "
                    "which the local worker processes cannot import: define it in a module "
                    "(a .py file) and import it from there, or use backend='ray' (which sends "
                    "the class itself)")
            try:
                pickle.dumps(cls)
            except Exception as err:
                raise TypeError(
                    f"{name} cannot be sent to the worker processes ({err}): define it at "
                    "the top level of a module") from None
    return sorted(out.items())


def _create(run: _GridRun) -> None:
    """Write a new run directory (what ``Trainer(run_dir=...)`` writes, with the step-0
    checkpoint of the policy's current weights), or finish one a kill left before its
    first checkpoint."""
    with Trainer(run.policy, run.env, run.config, run_dir=run.path) as trainer:
        if not (run.path / CHECKPOINT).exists():
            trainer.save_checkpoint()
    run.step = 0


# --- running ---------------------------------------------------------------------------
def _train_run(path: str, max_steps: int, threads: int,
               classes: Sequence[tuple[str, type]] = ()) -> int:
    """In a worker: continue the run in ``path`` until ``max_steps``; returns its step."""
    _register(classes)
    with thread_rules.torch_threads(threads):
        trainer = resume(path, max_steps=max_steps, progress_bar=False)
    return trainer.step


def _register(classes: Sequence[tuple[str, type]]) -> None:
    for name, cls in classes:
        register_serializable(cls, None if name == class_key(cls) else name)


def _worker_start(sweep_pid: int, classes: Sequence[tuple[str, type]]) -> None:
    """A local worker's set-up: end with the sweep's process, register the classes."""
    if os.name == "posix":
        threading.Thread(target=_end_with, args=(sweep_pid,), daemon=True,
                         name="rlnb-sweep-watch").start()
    _register(classes)


def _end_with(pid: int) -> None:
    """Wait for process ``pid`` to end, then end this one as a kill would (its run
    directory's lock is released by the system, the run resumes from its checkpoint).

    A worker's parent may be the forkserver, which outlives the sweep's process while any
    worker lives, so this watches the sweep's process itself: a pidfd on Linux (woken when
    it ends), else a check every half second."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1  # ended already
    except (AttributeError, OSError):
        fd = None
    if fd is not None and fd >= 0:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    elif fd is None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except OSError:  # it exists, and is not ours to signal
                pass
    os.kill(os.getpid(), signal.SIGKILL)


def _pool_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with rlnb imported in the server (each worker then starts in
    milliseconds instead of importing torch), else ``spawn``; never ``fork`` (a process
    with threads, a notebook kernel, cannot be forked safely)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _run_local(todo: list[_GridRun], workers: int, threads: int,
               classes: list[tuple[str, type]], bar: Any,
               failures: list[tuple[_GridRun, BaseException]]) -> None:
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(),
        initializer=_worker_start, initargs=(os.getpid(), classes))
    futures: dict[cf.Future, _GridRun] = {}
    try:
        for run in todo:
            futures[pool.submit(_train_run, str(run.path), run.config.max_steps, threads)] = run
        for future in cf.as_completed(futures):
            run = futures[future]
            err = future.exception()
            if err is not None:
                failures.append((run, err))
            bar.set_postfix_str(run.name, refresh=False)
            bar.update(1)
    except BaseException:  # an interrupt: stop the workers now (the runs resume later)
        for future in futures:
            future.cancel()
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: cf.ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        with contextlib.suppress(Exception):
            terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "backend='ray' needs Ray: pip install 'ray>=2.30' (or rlnb[scale]); "
            "backend='local' runs the sweep without it") from None
    return ray


@contextlib.contextmanager
def _environ(values: Mapping[str, str], restore: Sequence[str] = ()) -> Iterator[None]:
    """Set the environment variables of ``values`` that are not set yet, for the block;
    afterwards those and the variables ``restore`` names are as they were before."""
    keys = {*values, *restore}
    before = {k: os.environ.get(k) for k in keys}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(address: str | None = None, *,
                num_cpus: int | None = None) -> Iterator[Path | None]:
    """Ray for the block, as :func:`sweep` starts it: keeps one Ray session across several
    sweeps (starting Ray takes seconds)::

        with ray_session():
            a = sweep(env, policy, configs_a, root="runs/a", backend="ray")
            b = sweep(env, policy, configs_b, root="runs/b", backend="ray")

    Without ``address``: a Ray on 127.0.0.1 with ``num_cpus`` CPUs (default: this
    machine's cores), the dashboard and usage statistics off, token authentication with a
    new token, its session files and the token in a new temporary directory (the value of
    the ``with``), removed when the block ends: nothing under the home directory. With
    ``address`` (``"auto"``, ``"ray://head:10001"``): that cluster (the value is None). A
    Ray session already started in this process is used as it is and left running (None);
    otherwise the block ends with ``ray.shutdown()``.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield None
        return
    if address is not None:
        if not isinstance(address, str) or not address:
            raise TypeError(f"address must be a str such as 'auto' or 'ray://head:10001', "
                            f"got {address!r}")
        ray.init(address=address)
        try:
            yield None
        finally:
            ray.shutdown()
        return
    if num_cpus is not None:
        num_cpus = check_int(num_cpus, "num_cpus", 1, meaning="the CPUs Ray schedules")
    base = tempfile.gettempdir()
    if len(base) > 32 and os.path.isdir("/tmp"):  # Ray's socket paths must stay short
        base = "/tmp"
    temp = tempfile.mkdtemp(prefix="rlnb-ray-", dir=base)
    try:
        # Ray sets RAY_AUTH_MODE=token in this process when it starts: undone afterwards.
        with _environ({"RAY_USAGE_STATS_ENABLED": "0", **_ray_token(Path(temp))},
                      restore=("RAY_AUTH_MODE",)):
            ray.init(address="local", num_cpus=num_cpus or _cores(), include_dashboard=False,
                     _temp_dir=temp, _node_ip_address="127.0.0.1")
            try:
                yield Path(temp)
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _ray_token(temp: Path) -> dict[str, str]:
    """The environment of a local Ray's token authentication (on by default since Ray
    2.5x, which otherwise writes a token to ~/.ray/auth_token): a random token in a file
    of the session's temporary directory, readable by this user only. Left to Ray where
    RAY_AUTH_MODE, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is set."""
    if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return {}
    global _RAY_TOKEN
    if _RAY_TOKEN is None:  # one per process: Ray's driver keeps the first token it reads
        _RAY_TOKEN = secrets.token_hex(32)
    path = temp / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_RAY_TOKEN)
    return {"RAY_AUTH_TOKEN_PATH": str(path)}


_RAY_TOKEN: str | None = None


def _run_ray(ray: Any, todo: list[_GridRun], workers: int | None, threads: int,
             classes: list[tuple[str, type]], address: str | None, cores: int, bar: Any,
             failures: list[tuple[_GridRun, BaseException]]) -> None:
    with ray_session(address, num_cpus=None if address is not None else cores):
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < threads:
            raise ValueError(
                f"each run asks Ray for {threads} CPUs (threads_per_run) but the cluster has "
                f"{cpus:g}: pass a smaller threads_per_run")
        task = ray.remote(num_cpus=threads)(_train_run)
        queue, pending = list(todo), {}
        cap = workers or len(todo)
        try:
            while queue or pending:
                while queue and len(pending) < cap:
                    run = queue.pop(0)
                    ref = task.remote(str(run.path), run.config.max_steps, threads, classes)
                    pending[ref] = run
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    run = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as err:
                        failures.append((run, getattr(err, "cause", None) or err))
                    bar.set_postfix_str(run.name, refresh=False)
                    bar.update(1)
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --- results ---------------------------------------------------------------------------
def _failed(failures: list[tuple[_GridRun, BaseException]], ran: int) -> RuntimeError:
    def say(err: BaseException) -> str:
        text = " ".join(str(err).split())
        if isinstance(err, BrokenProcessPool):
            text = "a worker process died (killed, or out of memory)"
        return f"{type(err).__name__}: {text[:300]}"

    shown = "; ".join(f"{run.name}: {say(err)}" for run, err in failures[:5])
    more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
    error = RuntimeError(
        f"{len(failures)} of the {ran} runs the sweep trained failed ({shown}{more}); the "
        "others are finished. Fix the cause and call sweep(...) again with the same "
        "arguments: finished runs are skipped, the failed ones continue from their last "
        "checkpoint")
    error.__cause__ = failures[0][1]
    return error


def _frame(runs: list[_GridRun], wide: bool) -> pd.DataFrame:
    df = load_runs([run.path for run in runs], wide=wide)
    df.insert(1, "config", df["run"].map({run.name: run.label for run in runs}))
    return df
