"""Addition with the written working: reference completions, the result-only reward, the
pre-training corpus, seeded generation and argument errors."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from rlnb.envs import (
    TASKS,
    WrittenAdditionTask,
    addition,
    make_task,
    written_addition,
    written_sum,
)

module = importlib.import_module("rlnb.envs.written_addition")  # the name is also a function


def test_doctests():
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("a, b, expected", [
    (47, 38, "7+8=15,4+3+1=8:85"),
    (97, 38, "7+8=15,9+3+1=13:135"),
    (12, 34, "2+4=6,1+3=4:46"),
    (99, 99, "9+9=18,9+9+1=19:198"),
    (10, 10, "0+0=0,1+1=2:20"),
    (0, 0, "0+0=0:0"),
    (5, 123, "5+3=8,0+2=2,0+1=1:128"),
    (995, 7, "5+7=12,9+0+1=10,9+0+1=10:1002"),
])
def test_written_sum_known_strings(a, b, expected):
    assert written_sum(a, b) == expected


@pytest.mark.parametrize("a, b", [(-1, 2), (1.5, 2), (True, 2), ("3", 4)])
def test_written_sum_rejects_bad_operands(a, b):
    with pytest.raises(ValueError, match="non-negative int"):
        written_sum(a, b)


def test_written_sum_result_is_the_sum_everywhere():
    for a in range(0, 200, 7):
        for b in range(0, 200, 3):
            text = written_sum(a, b)
            assert text.split(":")[1] == str(a + b)
            # the last column's sum starts the result; each column's last digit is a digit of it
            columns = text.split(":")[0].split(",")
            digits = "".join(c.split("=")[1][-1] for c in columns)[::-1]
            assert str(a + b).endswith(digits.lstrip("0") or "0")


def test_reward_judges_the_result_only():
    task = WrittenAdditionTask(["47+38=", "12+34="])
    assert task.answers == ["7+8=15,4+3+1=8:85", "2+4=6,1+3=4:46"]
    cases = {
        "7+8=15,4+3+1=8:85": 1.0,       # the reference
        " 7+8=15,4+3+1=8:85\n": 1.0,    # surrounding whitespace is ignored
        "7+8=15,4+3=7:85": 1.0,         # wrong working, right result: still 1
        ":85": 1.0,                     # no working at all: still 1
        "7+8=15,4+3+1=8:84": 0.0,       # right working, wrong result
        "7+8=15,4+3+1=8:085": 0.0,      # leading zero
        "7+8=15,4+3+1=8:85,": 0.0,      # trailing text after the result
        "85": 0.0,                      # no separator
        "7+8=15:4+3+1=8:85": 0.0,       # two separators
        "": 0.0,
        "7+8=15,4+3+1=8:85" * 3: 0.0,   # far longer than the reference
    }
    for completion, want in cases.items():
        assert task.score("47+38=", completion) == want, completion
    assert task.score("12+34=", "2+4=6,1+3=4:46") == 1.0
    # prompts outside the task are parsed and judged too
    assert task.score("5+123=", "junk:128") == 1.0
    with pytest.raises(ValueError, match="not a written_addition prompt"):
        task.score("5*3=", ":15")


def test_working_is_reference_is_separate_from_the_score():
    task = WrittenAdditionTask(["47+38="])
    assert task.working_is_reference("47+38=", "7+8=15,4+3+1=8:84")
    assert not task.working_is_reference("47+38=", "7+8=15,4+3=7:85")
    assert not task.working_is_reference("47+38=", "85")
    assert not task.working_is_reference("47+38=", None)


def test_score_never_raises_on_odd_text():
    task = written_addition(8, seed=0)
    for text in ["", ":", "::", "\x00:1", "é:12", "9" * 10_000, ":" + "1" * 30, "=,+:"]:
        assert task.score(task.prompt(0), text) in (0.0, 1.0)


def test_corpus_is_the_written_working():
    task = written_addition(64, seed=3)
    examples = task.sft_examples(200, torch.Generator().manual_seed(0))
    assert len(examples) == 200
    for prompt, completion in examples:
        a, b = WrittenAdditionTask.parse_prompt(prompt)
        assert completion == written_sum(a, b) == task.answer_for(prompt)
        assert task.score(prompt, completion) == 1.0
        assert set(completion) <= set(task.alphabet)
    assert task.alphabet == "+,0123456789:="
    lengths = {len(a) for a in written_addition(2304, digits=2, seed=0).answers}
    assert min(lengths) == 14 and max(lengths) == 19
    assert len(written_sum(99, 99)) == 19


def test_seeded_generation():
    a, b = written_addition(50, digits=2, seed=7), written_addition(50, digits=2, seed=7)
    assert a.prompts == b.prompts and a.answers == b.answers
    assert written_addition(50, digits=2, seed=8).prompts != a.prompts
    assert len(set(a.prompts)) == 50
    # the same prompts as plain addition with the same arguments
    assert a.prompts == addition(50, digits=2, seed=7).prompts
    # registered and rebuilt from its spec
    assert "written_addition" in TASKS
    assert make_task("written_addition", num_prompts=50, digits=2, seed=7) == a
    rebuilt = WrittenAdditionTask.from_spec(a.spec(), a.get_tensors())
    assert isinstance(rebuilt, WrittenAdditionTask) and rebuilt.answers == a.answers
    train, held = written_addition(2304, digits=2, seed=0).split(256, seed=0)
    assert not set(train.prompts) & set(held.prompts) and held.num_prompts == 256
    three = written_addition(20, digits=3, seed=0)
    assert all(len(p) == 8 for p in three.prompts)
    assert all(three.score(p, c) == 1.0 for p, c in zip(three.prompts, three.answers))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="num_prompts"):
        written_addition(0)
    with pytest.raises(ValueError, match="digits"):
        written_addition(10, digits=0)
    with pytest.raises(ValueError, match="digits"):
        written_addition(10, digits=module.MAX_WRITTEN_DIGITS + 1)
    with pytest.raises(ValueError, match="only 100 exist"):
        written_addition(101, digits=1)
    with pytest.raises(ValueError, match="not a written_addition prompt"):
        WrittenAdditionTask(["47-38="])
    with pytest.raises(ValueError, match="is wrong; the reference answer is"):
        WrittenAdditionTask(["47+38="], ["85"])
    with pytest.raises(ValueError, match="no knob"):
        make_task("written_addition", num_prompts=5, digit=2)
