"""Bad run directories: crafted specs naming modules or unknown classes, a directory held
by another writer, gaps and damage in its files, another sandbox, policy or config, paths
that are files. Each is refused with the file named and what to do, and nothing in the
directory changes (no lock file, no rewritten metrics, no imported module's bytecode).

Most rows copy one small finished run (made once, outside the rows' directories) to
``run/`` in their working directory and then damage it."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tests.bad_inputs import BadInput

_HELD: list = []  # Trainers and processes that hold a row's run directory until the end


def _env(seed: int = 0):
    from rlnb.envs import StrategyBandit

    return StrategyBandit.from_card(generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    from rlnb.train import TrainConfig

    return TrainConfig(**{"max_steps": 3, "num_prompts_per_step": 4, "num_generations": 4,
                          "optimizer": "sgd", "learning_rate": 1.0, "progress_bar": False,
                          **kw})


def _trainer(run_dir, *, seed: int = 0, shared: bool = True, **kw):
    from rlnb.policies import TabularPolicy
    from rlnb.train import Trainer

    env = _env(seed)
    return Trainer(TabularPolicy.for_env(env, shared=shared), env, _cfg(**kw), run_dir=run_dir)


@functools.cache
def _base(kind: str = "plain") -> Path:
    """A finished 3-step run (``kl``: with beta > 0, so it has a reference policy)."""
    root = Path(tempfile.mkdtemp(prefix=f"rlnb-bad-rundir-{kind}-"))
    with _trainer(root / "run", **({"beta": 0.1} if kind == "kl" else {})) as t:
        t.train()
    return root / "run"


def _copy(work: Path, kind: str = "plain") -> Path:
    shutil.copytree(_base(kind), work / "run")
    return work / "run"


def _setup(change=None, kind: str = "plain"):
    """Copy the base run to ``run/``, then ``change(run_dir)``."""
    def setup(work: Path) -> None:
        run = _copy(work, kind)
        if change is not None:
            change(run)
    return setup


def _spec_class(name: str, key):
    def change(run: Path) -> None:
        spec = json.loads((run / f"{name}.json").read_text())
        spec["class"] = key
        (run / f"{name}.json").write_text(json.dumps(spec))
    return change


def _write(name: str, data: str | bytes):
    def change(run: Path) -> None:
        path = run / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return change


def _truncate(name: str):
    def change(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    return change


def _drop_metrics_row(step: int):
    def change(run: Path) -> None:
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        (run / "metrics.jsonl").write_text(
            "".join(ln for ln in lines if json.loads(ln)["step"] != step))
    return change


def _metrics_line(index: int, text: str):
    def change(run: Path) -> None:
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        lines[index] = text + "\n"
        (run / "metrics.jsonl").write_text("".join(lines))
    return change


def _evil(work: Path) -> None:
    """A module next to the run that leaves a file behind when imported."""
    (work / "evilmod.py").write_text(
        "import pathlib\npathlib.Path('marker.txt').write_text('their code ran')\n"
        "from rlnb.envs import Bandit\nclass Thing(Bandit):\n    pass\n")


def _crafted(name: str):
    def setup(work: Path) -> None:
        _copy(work)
        _spec_class(name, "evilmod:Thing")(work / "run")
        _evil(work)
    return setup


def _importable(call):
    """Run ``call`` with the working directory importable (as in ``python -c`` or a
    notebook started there), so that a regression that imports the module shows."""
    def wrapped(work: Path):
        sys.path.insert(0, str(work))
        try:
            return call(work)
        finally:
            sys.path.remove(str(work))
            sys.modules.pop("evilmod", None)
    return wrapped


def _resume(work: Path):
    from rlnb.train import resume

    return resume("run", progress_bar=False)


def _load_run(work: Path):
    from rlnb.train import load_run

    return load_run("run")


def _load_runs(work: Path):
    from rlnb.train import load_runs

    return load_runs("run")


def _load_component(name: str):
    def call(work: Path):
        from rlnb.serialization import load_component

        return load_component("run", name)
    return call


def _crafted_dataset(work: Path):
    from datasets import Dataset, DatasetInfo

    from rlnb.envs.text import DATASET_SPEC_KEY, TextTask

    spec = {"class": "evilmod:Thing", "config": {}}
    ds = Dataset.from_dict({"prompt": ["a"], "answer": ["b"]},
                           info=DatasetInfo(description=json.dumps({DATASET_SPEC_KEY: spec})))
    sys.path.insert(0, str(work))
    try:
        TextTask.from_dataset(ds)
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("evilmod", None)


def _hold_in_process(work: Path) -> None:
    _copy(work)
    _HELD.append(_trainer(work / "run"))


_HOLDER = """
import sys, time
from rlnb.train.rundir import RunDirLock
lock = RunDirLock(sys.argv[1])
lock.acquire(create=True)
lock.mark()
print("ready", flush=True)
time.sleep(120)
"""


def _hold_in_another_process(work: Path) -> None:
    _copy(work)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work / "run")],
                            stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).parents[2]))
    assert proc.stdout.readline().strip() == "ready"
    _HELD.append(proc)


def _against_holder(work: Path):
    proc = _HELD[-1]
    try:
        _trainer("run")
    finally:  # the holder dies with its lock file in place: the tree does not change
        proc.kill()
        proc.wait()


def _closed_trainer(work: Path) -> None:
    _copy(work)
    t = _trainer(work / "run")
    t.close()
    _HELD.append(t)


class _Unsaveable:
    """A policy whose spec cannot be written (like an LMPolicy around an in-memory model)."""

    @staticmethod
    def make():
        from rlnb.policies import TabularPolicy

        class Unsaveable(TabularPolicy):
            def get_config(self):
                raise ValueError("this policy has no directory to be rebuilt from: save it "
                                 "with save_pretrained first")

        env = _env()
        return Unsaveable.for_env(env, shared=True), env


def _unsaveable(work: Path):
    from rlnb.train import Trainer

    policy, env = _Unsaveable.make()
    Trainer(policy, env, _cfg(), run_dir="runs/new")


def _other_class_sandbox(work: Path):
    from rlnb.envs import Bandit
    from rlnb.policies import TabularPolicy
    from rlnb.train import Trainer

    env = _env()
    bandit = Bandit(means=torch.full((env.num_prompts, env.num_actions), 0.5))
    Trainer(TabularPolicy.for_env(bandit, shared=True), bandit, _cfg(), run_dir="run")


def _foreign_checkpoint(run: Path) -> None:
    """A checkpoint of a policy of another shape (e.g. copied from another run)."""
    from rlnb.policies import TabularPolicy
    from rlnb.train import rundir

    pi = TabularPolicy(3, 5)
    rundir.save_checkpoint(run / "checkpoint.safetensors", step=3, policy=pi,
                           optimizer=torch.optim.SGD(pi.parameters(), lr=1.0),
                           generator=torch.Generator())


def _plain_safetensors(run: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(run / "checkpoint.safetensors"))


def _register(work: Path):
    from rlnb.serialization import register_serializable

    register_serializable(dict)


_TRUNCATED = ("corrupt or truncated", "start a new run directory")

CASES = [
    # --- nothing is imported because a file names it ---
    BadInput("rundir/env-json-names-a-module-resume", _importable(_resume), ValueError,
             ["env.json", "evilmod:Thing", "register_serializable(Thing)", "never imports"],
             setup=_crafted("env")),
    BadInput("rundir/policy-json-names-a-module-resume", _importable(_resume), ValueError,
             ["policy.json", "evilmod:Thing", "register_serializable"], setup=_crafted("policy")),
    BadInput("rundir/env-json-names-a-module-load-run", _importable(_load_run), ValueError,
             ["env.json", "evilmod:Thing", "register_serializable"], setup=_crafted("env")),
    BadInput("rundir/policy-json-names-a-module-load-run", _importable(_load_run), ValueError,
             ["policy.json", "evilmod:Thing"], setup=_crafted("policy")),
    BadInput("rundir/env-json-names-a-module-load-component",
             _importable(_load_component("env")), ValueError,
             ["env.json", "evilmod:Thing", "register_serializable"], setup=_crafted("env")),
    BadInput("rundir/dataset-spec-names-a-module", _crafted_dataset, ValueError,
             ["dataset", "evilmod:Thing", "register_serializable"], setup=_evil),
    BadInput("rundir/env-json-unknown-rlnb-class", _resume, ValueError,
             ["env.json", "rlnb.envs.bandit:NoSuchBandit", "register_serializable"],
             setup=_setup(_spec_class("env", "rlnb.envs.bandit:NoSuchBandit"))),
    BadInput("rundir/env-json-class-without-module", _resume, ValueError,
             ["env.json", "justaname", "module:ClassName"],
             setup=_setup(_spec_class("env", "justaname"))),
    BadInput("rundir/register-a-non-serializable", _register, TypeError,
             ["register_serializable", "Serializable", "dict"]),
    # --- damaged component files ---
    BadInput("rundir/env-json-garbage", _resume, ValueError,
             ["env.json", "not valid JSON", "new run directory"],
             setup=_setup(_write("env.json", "{garbage"))),
    BadInput("rundir/policy-json-list", _load_run, ValueError,
             ["policy.json", "not a component spec"], setup=_setup(_write("policy.json", "[1]"))),
    BadInput("rundir/policy-json-missing", _resume, FileNotFoundError,
             ["policy.json", "does not exist"],
             setup=_setup(lambda run: (run / "policy.json").unlink())),
    BadInput("rundir/env-safetensors-truncated", _resume, ValueError,
             ["env.safetensors", *_TRUNCATED], setup=_setup(_truncate("env.safetensors"))),
    # --- config.json ---
    BadInput("rundir/config-garbage-resume", _resume, ValueError,
             ["config.json", "not valid JSON", "new run directory"],
             setup=_setup(_write("config.json", "{not json"))),
    BadInput("rundir/config-list-resume", _resume, ValueError,
             ["config.json", "list", "TrainConfig"], setup=_setup(_write("config.json", "[1, 2]"))),
    BadInput("rundir/config-garbage-load-run", _load_run, ValueError,
             ["config.json", "not valid JSON"], setup=_setup(_write("config.json", "\x00\x01"))),
    BadInput("rundir/config-list-load-runs", _load_runs, ValueError,
             ["config.json", "list"], setup=_setup(_write("config.json", "[]"))),
    BadInput("rundir/config-string-trainer", lambda w: _trainer("run"), ValueError,
             ["config.json", "str"], setup=_setup(_write("config.json", '"x"'))),
    BadInput("rundir/config-unknown-option-resume", _resume, ValueError,
             ["config.json", "learning_rat"],
             setup=_setup(_write("config.json", '{"learning_rat": 1.0}'))),
    BadInput("rundir/config-bad-value-load-run", _load_run, ValueError,
             ["config.json", "max_steps"], setup=_setup(_write("config.json", '{"max_steps": -4}'))),
    BadInput("rundir/other-config", lambda w: _trainer("run", learning_rate=0.5), ValueError,
             ["run", "different config", "learning_rate", "resume"], setup=_setup()),
    # --- one writer per run directory ---
    BadInput("rundir/locked-by-a-trainer-of-this-process", lambda w: _trainer("run"),
             RuntimeError, ["run", "another Trainer in this process", "pid", "close"],
             setup=_hold_in_process),
    BadInput("rundir/resume-locked-by-a-trainer-of-this-process", _resume, RuntimeError,
             ["run", "in this process", "close"], setup=_hold_in_process),
    BadInput("rundir/locked-by-another-process", _against_holder, RuntimeError,
             ["run", "locked by another process", "pid", "choose another run_dir"],
             setup=_hold_in_another_process),
    BadInput("rundir/closed-trainer-saves-a-checkpoint",
             lambda w: _HELD[-1].save_checkpoint(), RuntimeError,
             ["closed", "run", "rlnb.train.resume"], setup=_closed_trainer),
    BadInput("rundir/closed-trainer-steps", lambda w: _HELD[-1].train_step(), RuntimeError,
             ["closed", "lock", "resume"], setup=_closed_trainer),
    # --- metrics.jsonl ---
    BadInput("rundir/metrics-gap-resume", _resume, ValueError,
             ["metrics.jsonl", "step(s) 2", "checkpoint (step 3)", "allow_metrics_gap=True",
              "new run directory"], setup=_setup(_drop_metrics_row(2))),
    BadInput("rundir/metrics-gap-trainer", lambda w: _trainer("run", max_steps=5), ValueError,
             ["metrics.jsonl", "1", "allow_metrics_gap"], setup=_setup(_drop_metrics_row(1))),
    BadInput("rundir/metrics-corrupt-middle-line", _resume, ValueError,
             ["metrics.jsonl", "line 2", "not valid JSON"],
             setup=_setup(_metrics_line(1, '{"step": 2, "rew'))),
    BadInput("rundir/metrics-row-not-an-object", _load_runs, ValueError,
             ["metrics.jsonl", "line 1", "not a metrics row"],
             setup=_setup(_metrics_line(0, "[1, 2]"))),
    BadInput("rundir/metrics-row-without-step", _resume, ValueError,
             ["metrics.jsonl", "line 3", "integer 'step'"],
             setup=_setup(_metrics_line(2, '{"reward": 1.0}'))),
    # --- checkpoints ---
    BadInput("rundir/checkpoint-truncated-resume", _resume, ValueError,
             ["checkpoint.safetensors", *_TRUNCATED],
             setup=_setup(_truncate("checkpoint.safetensors"))),
    BadInput("rundir/checkpoint-garbage-load-run", _load_run, ValueError,
             ["checkpoint.safetensors", *_TRUNCATED],
             setup=_setup(_write("checkpoint.safetensors", b"\xff" * 40))),
    BadInput("rundir/checkpoint-empty-trainer", lambda w: _trainer("run", max_steps=5),
             ValueError, ["checkpoint.safetensors", *_TRUNCATED],
             setup=_setup(_write("checkpoint.safetensors", b""))),
    BadInput("rundir/checkpoint-not-rlnb", _resume, ValueError,
             ["checkpoint.safetensors", "not a rlnb checkpoint"],
             setup=_setup(_plain_safetensors)),
    BadInput("rundir/checkpoint-of-another-policy", _resume, ValueError,
             ["checkpoint.safetensors", "does not fit", "policy", "start a new run directory"],
             setup=_setup(_foreign_checkpoint)),
    BadInput("rundir/reference-missing", _resume, FileNotFoundError,
             ["reference.safetensors", "missing", "beta"],
             setup=_setup(lambda run: (run / "reference.safetensors").unlink(), kind="kl")),
    # --- the directory holds another run ---
    BadInput("rundir/another-sandbox-same-config", lambda w: _trainer("run", seed=1),
             ValueError, ["run", "another sandbox", "env.safetensors", "resume"],
             setup=_setup()),
    BadInput("rundir/another-sandbox-class", _other_class_sandbox, ValueError,
             ["another sandbox", "env.json", "rlnb.envs.strategy_bandit:StrategyBandit",
              "rlnb.envs.bandit:Bandit"], setup=_setup()),
    BadInput("rundir/another-policy", lambda w: _trainer("run", shared=False), ValueError,
             ["another policy", "shared", "policy.json", "new run_dir"], setup=_setup()),
    # --- paths ---
    BadInput("rundir/run-dir-is-a-file", lambda w: _trainer("notes.txt"), NotADirectoryError,
             ["notes.txt", "is a file", "directory"],
             setup=lambda w: (w / "notes.txt").write_text("x")),
    BadInput("rundir/run-dir-below-a-file", lambda w: _trainer("notes.txt/run"),
             NotADirectoryError, ["notes.txt/run", "cannot create run_dir", "directory"],
             setup=lambda w: (w / "notes.txt").write_text("x")),
    BadInput("rundir/resume-a-file", lambda w: _resume_path("notes.txt"), FileNotFoundError,
             ["notes.txt", "not a rlnb run directory", "config.json"],
             setup=lambda w: (w / "notes.txt").write_text("x")),
    BadInput("rundir/resume-an-empty-folder", lambda w: _resume_path("empty"),
             FileNotFoundError, ["empty", "not a rlnb run directory", "config.json"],
             setup=lambda w: (w / "empty").mkdir()),
    BadInput("rundir/policy-that-cannot-be-saved", _unsaveable, ValueError,
             ["no directory to be rebuilt from"]),
]


def _resume_path(path: str):
    from rlnb.train import resume

    return resume(path, progress_bar=False)
