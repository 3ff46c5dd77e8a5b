"""reasoning-gym tasks that ask for the answer inside a tag (``answer_tag``) and score only
the text inside it; without the option, tasks are as they were."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.envs.text import TextTask
from rlnb.policies import Rollout
from rlnb.serialization import load_component, save_component

reasoning_gym = pytest.importorskip("reasoning_gym")

from rlnb.envs.reasoning_gym import (  # noqa: E402
    ReasoningGymTask,
    answer_instruction_for,
    extract_tagged,
)
from rlnb.envs.text_tasks import make_task  # noqa: E402

INSTRUCTION = "\nProvide your final answer between <answer> and </answer> tags."


def _rollout(prompts, completions):
    N = len(prompts)
    return Rollout(prompts=torch.tensor(prompts), actions=torch.zeros(N, 1, dtype=torch.long),
                   mask=torch.ones(N, 1, dtype=torch.bool), logp=torch.zeros(N, 1),
                   group_size=1, extra={"completions": completions})


_TASKS: dict = {}


def _task(**options):
    key = tuple(sorted(options.items()))
    if key not in _TASKS:
        _TASKS[key] = ReasoningGymTask("chain_sum", size=12, seed=3, **options)
    return _TASKS[key]


# --- extraction -----------------------------------------------------------------------------
FRAGMENTS = ["<answer>", "</answer>", "<answer", "answer>", "</", "<", ">", "/", "a", "7",
             " ", "\n", "\t", "<think>", "</think>", "<ANSWER>", "x y"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join))
def test_extract_tagged_agrees_with_reasoning_gym(completion):
    from reasoning_gym.utils import extract_answer as rg_extract

    assert extract_tagged(completion, "answer") == rg_extract(completion, tag_name="answer")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_extract_tagged_agrees_with_reasoning_gym_on_any_text(text):
    from reasoning_gym.utils import extract_answer as rg_extract

    for completion in (text, f"<answer>{text}</answer>", f"{text}<answer>{text}</answer>{text}"):
        assert extract_tagged(completion) == rg_extract(completion)


def test_extract_tagged_cases():
    assert extract_tagged("no tag here") is None
    assert extract_tagged("<answer>unclosed") is None
    assert extract_tagged("<answer> 4 </answer>") == "4"
    assert extract_tagged("<answer>1</answer><answer>2</answer>") == "2"
    assert extract_tagged("<answer>1</answer><answer>2") == "1"  # an unclosed last tag
    assert extract_tagged("<answer>a<answer>b</answer>") == "a<answer>b"  # as the regex does
    assert extract_tagged("<final>9</final>", "final") == "9"
    assert extract_tagged("<answer>9</answer>", "final") is None
    runaway = "<answer>" * 200_000  # linear: a regex that retries every tag would crawl
    assert extract_tagged(runaway) is None


# --- the task option ------------------------------------------------------------------------
def test_answer_tag_asks_for_the_tag_and_scores_only_inside_it():
    plain, tagged = _task(), _task(answer_tag="answer")
    assert answer_instruction_for("answer") == INSTRUCTION
    assert tagged.prompts == [p + INSTRUCTION for p in plain.prompts]
    assert tagged.answers == plain.answers
    assert set("".join(tagged.prompts + tagged.answers) + "<answer></answer>") <= set(
        tagged.alphabet)
    for i in range(tagged.num_prompts):
        p, a = tagged.prompt(i), tagged.answer(i)
        assert tagged.entry(i)["question"] == plain.prompt(i)
        assert tagged.score(p, a) == 0.0  # the bare answer: the prompt asked for the tag
        assert tagged.score(p, f"<answer>{a}</answer>") == 1.0
        assert tagged.score(p, f"<think>sum them</think>\n<answer> {a} </answer>\n") == 1.0
        assert tagged.score(p, f"<answer>{a}</answer> wait <answer>none</answer>") == 0.0
        assert tagged.score(p, f"<answer>none</answer> wait <answer>{a}</answer>") == 1.0
        assert tagged.score(p, f"<answer>{a}") == 0.0 and tagged.score(p, "<answer></answer>") == 0.0
        assert tagged.score(p, "<answer>" + "9" * 1_000_000 + "</answer>") == 0.0
        assert tagged.sft_completion(i) == f"<answer>{a}</answer>"
        assert tagged.score(p, tagged.sft_completion(i)) == 1.0
        # the plain task takes the tag when it is there and the bare answer otherwise
        assert plain.score(plain.prompt(i), a) == 1.0
        assert plain.score(plain.prompt(i), f"<answer>{a}</answer>") == 1.0
        assert plain.sft_completion(i) == a
    answers = [tagged.answer(0), f"<answer>{tagged.answer(1)}</answer>"]
    assert tagged.reward_rollout(_rollout([0, 1], answers)).tolist() == [0.0, 1.0]
    assert plain.reward_rollout(_rollout([0, 1], answers)).tolist() == [1.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(completion=st.text())
def test_tagged_score_never_raises(completion):
    task = _task(answer_tag="answer")
    for c in (completion, f"<answer>{completion}</answer>"):
        assert 0.0 <= task.score(task.prompt(0), c) <= 1.0


def test_without_the_option_the_task_is_as_before():
    task = _task()
    dataset = reasoning_gym.create_dataset("chain_sum", size=12, seed=3)
    entries = [dataset[i] for i in range(12)]
    assert task.prompts == [e["question"] for e in entries]
    assert task.alphabet == "".join(sorted(set().union(
        *(e["question"] + e["answer"] for e in entries))))
    assert task.get_config() == {"dataset_name": "chain_sum", "size": 12, "seed": 3}
    assert task.answer_tag is None and task.answer_instruction is None
    assert "answer_tag" not in repr(task)


def test_instruction_options():
    quiet = _task(answer_tag="answer", answer_instruction="")
    assert quiet.prompts == _task().prompts  # asked for by a system prompt instead
    assert set("<answer></answer>") <= set(quiet.alphabet)
    assert quiet.score(quiet.prompt(0), quiet.answer(0)) == 0.0
    assert quiet.score(quiet.prompt(0), f"<answer>{quiet.answer(0)}</answer>") == 1.0

    own = _task(answer_tag="final", answer_instruction=" Reply as <final>N</final>.")
    assert own.prompt(0) == _task().prompt(0) + " Reply as <final>N</final>."
    assert own.score(own.prompt(0), f"<final>{own.answer(0)}</final>") == 1.0
    assert own.score(own.prompt(0), f"<answer>{own.answer(0)}</answer>") == 0.0
    assert own.get_config() == {"dataset_name": "chain_sum", "size": 12, "seed": 3,
                                "answer_tag": "final",
                                "answer_instruction": " Reply as <final>N</final>."}

    for bad in ("<answer>", "", "my answer", "1st", "ans/wer", 3):
        with pytest.raises(ValueError, match="answer_tag must be a tag name"):
            ReasoningGymTask("chain_sum", size=2, answer_tag=bad)
    with pytest.raises(ValueError, match="answer_instruction is only used with answer_tag"):
        ReasoningGymTask("chain_sum", size=2, answer_instruction="Tag it.")
    with pytest.raises(TypeError, match="answer_instruction must be a str"):
        ReasoningGymTask("chain_sum", size=2, answer_tag="answer", answer_instruction=1)


def test_answer_tag_survives_configs_run_directories_splits_and_datasets(tmp_path):
    task = make_task("reasoning_gym:chain_sum", size=12, seed=3, answer_tag="answer")
    assert task == _task(answer_tag="answer")
    config = task.get_config()
    assert config == {"dataset_name": "chain_sum", "size": 12, "seed": 3, "answer_tag": "answer"}
    assert ReasoningGymTask(**config).prompts == task.prompts
    assert repr(task).endswith("answer_tag='answer')")

    save_component(task, tmp_path / "run", "env")
    loaded = load_component(tmp_path / "run", "env")
    assert loaded == task and loaded.prompts == task.prompts and loaded.answer_tag == "answer"
    assert loaded.score(loaded.prompt(0), loaded.answer(0)) == 0.0

    train, test = task.split(4, seed=0)
    assert train.answer_tag == test.answer_tag == "answer"
    assert train.alphabet == test.alphabet == task.alphabet
    assert all(p.endswith(INSTRUCTION) for p in train.prompts + test.prompts)
    assert ReasoningGymTask(**test.get_config()).prompts == test.prompts

    ds = test.to_dataset()
    back = TextTask.from_dataset(ds)
    assert back == test and back.prompts == test.prompts
    assert back.score(back.prompt(0), f"<answer>{back.answer(0)}</answer>") == 1.0
