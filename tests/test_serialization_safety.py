"""Opening a run directory, a task data set or a kernel cache made by someone else runs
none of their code: nothing is imported because a file names it, and no library is loaded
from a folder another user can write to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from rlnb import serialization
from rlnb.envs import Bandit
from rlnb.envs.text import DATASET_SPEC_KEY, ExactMatchTask, TextTask
from rlnb.policies import TabularPolicy
from rlnb.policies.lm.fast import native
from rlnb.serialization import load_component, register_serializable, save_component
from rlnb.train import TrainConfig, Trainer, load_run, resume

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("their code ran")

from rlnb.envs import Bandit

class Thing(Bandit):
    pass
"""


def _config(**kw):
    return TrainConfig(**{"max_steps": 2, "num_prompts_per_step": 2, "num_generations": 2,
                          "optimizer": "sgd", "learning_rate": 0.5, "progress_bar": False,
                          **kw})


def _run(run_dir):
    env = Bandit(means=torch.tensor([0.2, 0.8]))
    with Trainer(TabularPolicy.for_env(env), env, _config(), run_dir=run_dir) as t:
        t.train()
    return env


@pytest.fixture
def crafted(tmp_path, monkeypatch):
    """A run directory whose env.json names ``evilmod:Thing``, a module next to it that
    writes a marker when imported (and is importable: its folder is on sys.path)."""
    run = tmp_path / "run"
    _run(run)
    marker = tmp_path / "marker.txt"
    (tmp_path / "evilmod.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return run, marker


def _rename_class(path, key):
    spec = json.loads(path.read_text())
    spec["class"] = key
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize("name", ["env", "policy"])
@pytest.mark.parametrize("how", ["resume", "load_run", "load_component"])
def test_a_crafted_spec_is_refused_and_its_module_never_imported(crafted, name, how):
    run, marker = crafted
    _rename_class(run / f"{name}.json", "evilmod:Thing")
    call = {"resume": lambda: resume(run, progress_bar=False),
            "load_run": lambda: load_run(run),
            "load_component": lambda: load_component(run, name)}[how]
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "evilmod:Thing" in message and "register_serializable(Thing)" in message
    assert f"{name}.json" in message and "never imports" in message
    assert not marker.exists(), "the module named by the run directory was imported"
    assert "evilmod" not in sys.modules


def test_a_crafted_task_data_set_is_refused(crafted):
    from datasets import Dataset, DatasetInfo

    _, marker = crafted
    spec = {"class": "evilmod:Thing", "config": {}}
    ds = Dataset.from_dict({"prompt": ["a"], "answer": ["b"]},
                           info=DatasetInfo(description=json.dumps({DATASET_SPEC_KEY: spec})))
    with pytest.raises(ValueError, match="register_serializable") as info:
        TextTask.from_dataset(ds)
    assert "dataset" in str(info.value) and not marker.exists()


def test_malformed_class_names_are_refused(tmp_path):
    _run(tmp_path / "run")
    for key in ("no-colon", "a:b:c", 42):
        _rename_class(tmp_path / "run" / "env.json", key)
        with pytest.raises(ValueError, match="module:ClassName|not a component spec"):
            load_run(tmp_path / "run")


class _MyBandit(Bandit):
    """A user's sandbox, defined outside rlnb."""


def test_a_user_class_loads_once_registered(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "_REGISTRY", dict(serialization._REGISTRY))
    env = _MyBandit(means=torch.tensor([0.1, 0.9]))
    save_component(env, tmp_path, "env")
    with pytest.raises(ValueError, match=r"defined in this process but not registered.*"
                                         r"register_serializable\(_MyBandit\)"):
        load_component(tmp_path, "env")
    assert register_serializable(_MyBandit) is _MyBandit
    back = load_component(tmp_path, "env")
    assert type(back) is _MyBandit and torch.equal(back.means, env.means)
    # a class that moved: registered under the name the directory recorded
    _rename_class(tmp_path / "env.json", "old_place:MyBandit")
    with pytest.raises(ValueError, match="not a registered"):
        load_component(tmp_path, "env")
    register_serializable(_MyBandit, name="old_place:MyBandit")
    assert type(load_component(tmp_path, "env")) is _MyBandit


def test_register_serializable_needs_a_serializable_class():
    with pytest.raises(TypeError, match="subclass of rlnb.serialization.Serializable"):
        register_serializable(dict)
    with pytest.raises(TypeError, match="Serializable"):
        register_serializable(Bandit(means=torch.tensor([0.5, 0.5])))
    with pytest.raises(ValueError, match="module:ClassName"):
        register_serializable(_MyBandit, name="nocolon")


def test_rlnb_classes_still_load_by_their_recorded_keys(tmp_path):
    env = ExactMatchTask(["2+2="], ["4"])
    save_component(env, tmp_path, "env")
    assert json.loads((tmp_path / "env.json").read_text())["class"] == "rlnb.envs.text:ExactMatchTask"
    assert load_component(tmp_path, "env") == env


def test_damaged_spec_and_tensor_files_are_named(tmp_path):
    _run(tmp_path / "run")
    (tmp_path / "run" / "env.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ValueError, match=r"env\.safetensors is corrupt or truncated"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "policy.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"policy\.json is not valid JSON"):
        load_component(tmp_path / "run", "policy")
    (tmp_path / "run" / "policy.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"policy\.json is not a component spec"):
        load_component(tmp_path / "run", "policy")


# --- the compiled-kernel cache ----------------------------------------------------------
needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="no C compiler on this machine")

PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("%s", "w");
    if (f) { fputs("their code ran", f); fclose(f); }
}
"""


@pytest.fixture
def shared_cache(tmp_path, monkeypatch):
    """RLNB_CACHE in a folder every user may write to, a private temp folder of its own,
    and no kernels loaded yet."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("RLNB_CACHE", str(tmp_path / "shared"))
    (tmp_path / "tmp").mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cache = tmp_path / "shared" / "native"
    cache.mkdir(parents=True)
    return cache


def _plant(cache, tmp_path):
    """A library with the name the kernels would have, that writes a marker when loaded."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    marker = tmp_path / "planted-ran.txt"
    src = tmp_path / "planted.c"
    src.write_text(PLANTED % marker)
    lib = cache / native._library_name(cc, version)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib, marker


@needs_compiler
def test_a_world_writable_cache_is_never_loaded_from(shared_cache, tmp_path):
    lib, marker = _plant(shared_cache, tmp_path)
    os.chmod(shared_cache, 0o777)
    k = native.kernels()
    assert not marker.exists(), "a library from a world-writable cache was loaded"
    assert k is not None, native.status()
    assert k.path.parent == tmp_path / "tmp" / f"rlnb-{os.getuid()}-native"
    assert (k.path.parent.stat().st_mode & 0o777) == 0o700
    status = native.status()
    assert status.startswith(f"loaded: {k.path}")
    assert "not private" in status and "writable by other users" in status
    assert str(shared_cache) in status
    assert lib.read_bytes() and not (shared_cache / k.path.name).samefile(k.path)


@needs_compiler
def test_a_group_writable_library_in_a_private_cache_is_not_loaded(shared_cache, tmp_path):
    os.chmod(shared_cache, 0o700)
    lib, marker = _plant(shared_cache, tmp_path)
    os.chmod(lib, 0o775)
    k = native.kernels()
    assert not marker.exists() and k is not None and k.path.parent != shared_cache
    assert "writable by other users" in native.status() and lib.name in native.status()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a folder to another user needs root")
@needs_compiler
def test_a_cache_owned_by_another_user_is_not_loaded_from(shared_cache, tmp_path):
    lib, marker = _plant(shared_cache, tmp_path)
    os.chmod(shared_cache, 0o755)
    os.chown(shared_cache, 12345, 12345)
    k = native.kernels()
    assert not marker.exists() and k is not None and k.path.parent != shared_cache
    assert "owned by another user" in native.status()


def test_untrusted_paths():
    from rlnb.cache import untrusted

    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o700)
        assert untrusted(d) is None
        os.chmod(d, 0o770)
        assert "writable by other users" in untrusted(d)
        os.chmod(d, 0o700)
        os.symlink(d, d + "-link")
        try:
            assert "symbolic link" in untrusted(d + "-link")
        finally:
            os.unlink(d + "-link")
