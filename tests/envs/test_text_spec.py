"""How text tasks are stored in run directories: a generated task as its generator's name and
settings, any other task with its data in env.safetensors, never the data set in env.json;
older specs with the data inline still load and resume; crafted generator names are refused."""

from __future__ import annotations

import json

import pytest
import torch

import rlnb.envs.text_spec as text_spec_module
from rlnb.envs import (
    AdditionTask,
    CountdownTask,
    ExactMatchTask,
    FactorTask,
    ModularSumTask,
    addition,
    countdown,
    factor,
    make_task,
    modular_sum,
)
from rlnb.envs.text_spec import SEEDED_GENERATORS, decode_strings, encode_strings
from rlnb.policies import LMPolicy
from rlnb.serialization import build_component, load_component, save_component
from rlnb.train import TrainConfig, Trainer, load_run, resume
from rlnb.train.rundir import read_metrics

GENERATED = [
    lambda: addition(50, digits=2, seed=3),
    lambda: modular_sum(40, terms=2, modulus=7, seed=1),
    lambda: countdown(30, seed=2),
    lambda: factor(60, digits=4, seed=5),
    lambda: factor(40, seed=1, allow_even_and_5=True),
]


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def _old_format(task, key):
    """The env.json rlnb wrote before: the class under its old key, the data inline."""
    return {"class": key, "config": task.get_config()}


# --- generated tasks -------------------------------------------------------------------------
def test_a_factor_run_stores_the_generator_settings_not_the_data(tmp_path):
    task = factor(10_000, seed=0)
    save_component(task, tmp_path, "env")
    assert _files(tmp_path) == ["env.json"]
    text = (tmp_path / "env.json").read_text()
    assert len(text) < 1000  # the data inline took ~280 kB
    assert task.prompt(0) not in text
    spec = json.loads(text)
    assert spec["class"] == "rlnb.envs.factor_task:FactorTask"
    generated = spec["config"]["generated_by"]
    assert generated["generator"] == "factor"
    assert generated["settings"] == {"num_prompts": 10_000, "digits": 6, "max_prime": 50,
                                     "seed": 0, "allow_even_and_5": False}
    rebuilt = load_component(tmp_path, "env")
    assert type(rebuilt) is FactorTask and rebuilt == task
    assert rebuilt.prompts == task.prompts and rebuilt.answers == task.answers
    assert rebuilt.spec() == task.spec() and rebuilt.get_tensors() == {}


@pytest.mark.parametrize("make", GENERATED)
def test_every_generated_task_is_rebuilt_by_its_generator(make, tmp_path):
    task = make()
    save_component(task, tmp_path, "env")
    assert _files(tmp_path) == ["env.json"]
    rebuilt = load_component(tmp_path, "env")
    assert type(rebuilt) is type(task) and rebuilt == task
    assert rebuilt.alphabet == task.alphabet and repr(rebuilt) == repr(task)
    assert rebuilt.spec() == task.spec()
    assert build_component(task.spec()) == task


def test_make_task_marks_its_tasks_too():
    assert make_task("factor", num_prompts=5, digits=4, seed=1).origin == {
        "generator": "factor",
        "settings": {"num_prompts": 5, "digits": 4, "max_prime": 50, "seed": 1,
                     "allow_even_and_5": False}}
    assert sorted(SEEDED_GENERATORS) == ["addition", "countdown", "factor", "modular_sum",
                                         "written_addition"]


def test_a_split_of_a_generated_task_stores_the_split(tmp_path):
    train, held_out = factor(10_128, seed=0).split(128, seed=0)  # card 1's problems
    for part, name in ((train, "train"), (held_out, "held")):
        save_component(part, tmp_path / name, "env")
        assert _files(tmp_path / name) == ["env.json"]
        spec = json.loads((tmp_path / name / "env.json").read_text())
        assert spec["config"]["generated_by"]["splits"] == [
            {"held_out": 128, "seed": 0, "part": "train" if part is train else "held_out"}]
        rebuilt = load_component(tmp_path / name, "env")
        assert rebuilt == part and rebuilt.prompts == part.prompts
    twice = addition(40, seed=0).split(0.25, seed=3)[0].split(5, seed=1)[1]
    save_component(twice, tmp_path / "twice", "env")
    assert load_component(tmp_path / "twice", "env") == twice


def test_a_seed_that_cannot_be_replayed_stores_the_data(tmp_path):
    task = factor(20, digits=4, seed=None)  # a fresh seed each call
    assert task.origin is None
    save_component(task, tmp_path, "env")
    assert _files(tmp_path) == ["env.json", "env.safetensors"]
    assert load_component(tmp_path, "env") == task


# --- tasks built from data -------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: factor(100, seed=0).subset(range(0, 100, 3)),
    lambda: FactorTask(["123459=", "1155="], digits=6),
    lambda: CountdownTask(["3,5,7>22:"]),
    lambda: AdditionTask(["1+2=", "10+20="]),
    lambda: ModularSumTask(["(3+8+5)%10="], modulus=10),
    lambda: ExactMatchTask(["é?", "", "a\udc80"], ["日本", "x", ""], alphabet=None),
])
def test_a_task_built_from_data_keeps_its_data_out_of_env_json(make, tmp_path):
    task = make()
    save_component(task, tmp_path, "env")
    assert _files(tmp_path) == ["env.json", "env.safetensors"]
    spec = json.loads((tmp_path / "env.json").read_text())
    assert "prompts" not in spec["config"] and "answers" not in spec["config"]
    assert "generated_by" not in spec["config"]
    rebuilt = load_component(tmp_path, "env")
    assert type(rebuilt) is type(task) and rebuilt == task and rebuilt.prompts == task.prompts


def test_strings_round_trip_through_tensors():
    strings = ["", "abc", "é日本", "a\udc80b", "\x00"]
    assert decode_strings(*encode_strings(strings), "prompt") == strings
    assert decode_strings(*encode_strings([]), "prompt") == []
    data, lengths = encode_strings(["ab"])
    with pytest.raises(ValueError, match="damaged.*add up"):
        decode_strings(data, lengths + 1, "prompt")
    with pytest.raises(ValueError, match="damaged.*UTF-8"):
        decode_strings(torch.tensor([0xFF], dtype=torch.uint8), torch.tensor([1]), "prompt")
    with pytest.raises(ValueError, match="damaged"):
        decode_strings(data.long(), lengths, "prompt")


def test_data_in_both_the_json_and_the_tensors_is_refused(tmp_path):
    task = AdditionTask(["1+2="])
    save_component(task, tmp_path, "env")
    path = tmp_path / "env.json"
    spec = json.loads(path.read_text())
    spec["config"]["prompts"] = ["1+2="]
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="both in its config and in tensors"):
        load_component(tmp_path, "env")


# --- older run directories -------------------------------------------------------------------
@pytest.mark.parametrize("task, key", [
    (factor(300, seed=0), "rlnb.envs.text_tasks:FactorTask"),
    (countdown(20, seed=0), "rlnb.envs.text_tasks:CountdownTask"),
    (factor(300, seed=0).split(30)[0], "rlnb.envs.text_tasks:FactorTask"),
    (ExactMatchTask(["2+2="], ["4"]), "rlnb.envs.text:ExactMatchTask"),
])
def test_an_old_format_env_json_still_loads(task, key, tmp_path):
    (tmp_path / "env.json").write_text(json.dumps(_old_format(task, key), indent=2))
    rebuilt = load_component(tmp_path, "env")
    assert type(rebuilt) is type(task) and rebuilt == task and rebuilt.prompts == task.prompts
    # saved as it was read, so the trainer still recognises its run directory
    assert rebuilt.spec() == _old_format(task, key) and rebuilt.get_tensors() == {}
    # what is made from it is stored the new way
    part = rebuilt.subset([0])
    assert "prompts" not in part.spec()["config"]


def test_a_data_set_that_names_the_old_module_still_loads():
    from datasets import Dataset, DatasetInfo

    from rlnb.envs.text import DATASET_SPEC_KEY, TextTask

    task = factor(5, digits=4, seed=0)
    config = {k: v for k, v in task.get_config().items() if k not in ("prompts", "answers")}
    spec = {DATASET_SPEC_KEY: {"class": "rlnb.envs.text_tasks:FactorTask", "config": config}}
    ds = Dataset.from_dict({"prompt": task.prompts, "answer": task.answers},
                           info=DatasetInfo(description=json.dumps(spec)))
    rebuilt = TextTask.from_dataset(ds)
    assert type(rebuilt) is FactorTask and rebuilt == task


# --- crafted specs ---------------------------------------------------------------------------
def _crafted(tmp_path, change):
    save_component(factor(20, digits=4, seed=0), tmp_path, "env")
    path = tmp_path / "env.json"
    spec = json.loads(path.read_text())
    change(spec["config"]["generated_by"])
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize("name", ["os:system", "builtins.eval", "rlnb.envs.factor_task.factor",
                                  "_test_mine", 42])
def test_a_crafted_generator_name_is_refused(name, tmp_path):
    from rlnb.envs.text_tasks import TASKS, register_task

    called = []
    register_task("_test_mine")(lambda num_prompts, seed=0: called.append(1))  # a user's task
    try:
        _crafted(tmp_path, lambda g: g.update(generator=name))
        with pytest.raises(ValueError, match="unknown seeded generator") as info:
            load_component(tmp_path, "env")
        assert "never imports or runs" in str(info.value) and not called
    finally:
        TASKS._fns.pop("_test_mine", None)


@pytest.mark.parametrize("change, message", [
    (lambda g: g.update(generator="addition", settings={"num_prompts": 5, "digits": 2,
                                                        "seed": 0}),
     "makes AdditionTasks, not FactorTasks"),
    (lambda g: g["settings"].update(colour="red"), "does not take these settings"),
    (lambda g: g["settings"].update(digits=99), "does not take these settings"),
    (lambda g: g.update(settings=[1, 2]), "'settings' must be a JSON object"),
    (lambda g: g.pop("sha256"), "must hold"),
    (lambda g: g.update(sha256="0" * 64), "other prompts or answers"),
    (lambda g: g["settings"].update(seed=1), "other prompts or answers"),
    (lambda g: g.update(splits=[{"held_out": 2, "seed": 0, "part": "test"}]), "a split must be"),
    (lambda g: g.update(splits="train"), "'splits' must be a list"),
])
def test_a_crafted_generated_spec_is_refused(change, message, tmp_path):
    _crafted(tmp_path, change)
    with pytest.raises(ValueError, match=message):
        load_component(tmp_path, "env")


def test_only_rlnb_functions_become_seeded_generators():
    def mine(num_prompts, seed=0):
        return None

    with pytest.raises(ValueError, match="only rlnb's own"):
        text_spec_module.seeded_generator("mine")(mine)
    assert "mine" not in SEEDED_GENERATORS
    with pytest.raises(TypeError):
        SEEDED_GENERATORS["mine"] = mine  # type: ignore[index]


# --- run directories -------------------------------------------------------------------------
@pytest.fixture
def model_dir(tiny_lm_dir):
    return tiny_lm_dir(addition(8).alphabet, "llama", n_layer=1, d_model=16, n_head=2,
                       n_kv_head=1)


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 1, "num_prompts_per_step": 2, "num_generations": 2,
                          "learning_rate": 1e-3, "optimizer": "adamw", "progress_bar": False,
                          **kw})


def test_a_run_directory_is_recognised_and_resumed(model_dir, tmp_path):
    run = tmp_path / "run"
    Trainer(LMPolicy(model_dir, max_new_tokens=3), addition(64, seed=0), _cfg(),
            run_dir=run).train()
    assert "generated_by" in json.loads((run / "env.json").read_text())["config"]
    assert not (run / "env.safetensors").exists()
    # the same task, made again: the same sandbox
    Trainer(LMPolicy(model_dir, max_new_tokens=3), addition(64, seed=0), _cfg(max_steps=2),
            run_dir=run).train()
    assert resume(run, max_steps=3, progress_bar=False).step == 3
    with pytest.raises(ValueError, match="another sandbox"):
        Trainer(LMPolicy(model_dir, max_new_tokens=3), addition(64, seed=1), _cfg(max_steps=3),
                run_dir=run)
    # a task built from data: recognised by its tensors
    data_run = tmp_path / "data"
    task = addition(64, seed=0).subset(range(32))
    Trainer(LMPolicy(model_dir, max_new_tokens=3), task, _cfg(), run_dir=data_run).train()
    assert (data_run / "env.safetensors").exists()
    assert resume(data_run, max_steps=2, progress_bar=False).step == 2
    with pytest.raises(ValueError, match="data .* differ"):
        Trainer(LMPolicy(model_dir, max_new_tokens=3), addition(64, seed=0).subset(range(1, 33)),
                _cfg(max_steps=2), run_dir=data_run)


def test_an_old_format_run_directory_resumes(model_dir, tmp_path):
    run = tmp_path / "run"
    task = addition(64, seed=0)
    Trainer(LMPolicy(model_dir, max_new_tokens=3), task, _cfg(), run_dir=run).train()
    (run / "env.json").write_text(  # what rlnb wrote before the task classes moved
        json.dumps(_old_format(task, "rlnb.envs.text_tasks:AdditionTask"), indent=2))
    _, env, _ = load_run(run)
    assert env == task
    trainer = resume(run, max_steps=2, progress_bar=False)
    assert trainer.step == 2 and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert json.loads((run / "env.json").read_text()) == _old_format(
        task, "rlnb.envs.text_tasks:AdditionTask")


def test_a_fresh_task_continues_an_old_format_run_directory(model_dir, tmp_path):
    """The task made again by its generator is the sandbox an older directory holds (its
    class under the old key, the data inline): Trainer(..., run_dir=old) continues it, and
    another task is still refused."""
    run = tmp_path / "run"
    task = addition(64, seed=0)
    Trainer(LMPolicy(model_dir, max_new_tokens=3), task, _cfg(), run_dir=run).train()
    (run / "env.json").write_text(
        json.dumps(_old_format(task, "rlnb.envs.text_tasks:AdditionTask"), indent=2))
    with Trainer(LMPolicy(model_dir, max_new_tokens=3), addition(64, seed=0),
                 _cfg(max_steps=2), run_dir=run) as trainer:
        assert trainer.step == 1
        trainer.train()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    with pytest.raises(ValueError, match="another sandbox"):
        Trainer(LMPolicy(model_dir, max_new_tokens=3), addition(64, seed=1),
                _cfg(max_steps=3), run_dir=run)
