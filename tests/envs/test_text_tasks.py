"""Verifiable text tasks: generators, verifiers, robustness, rewards, round trips, reasoning-gym."""

from __future__ import annotations

import doctest
import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlnb.envs.arithmetic_tasks as arithmetic_module
import rlnb.envs.countdown_task as countdown_module
import rlnb.envs.expressions as expressions_module
import rlnb.envs.factor_task as factor_module
import rlnb.envs.task_tools as task_tools_module
import rlnb.envs.text as text_module
import rlnb.envs.text_tasks as tasks_module
from rlnb.envs.text import ExactMatchTask, TextTask, strip_completion
from rlnb.envs.text_tasks import (
    TASKS,
    AdditionTask,
    CountdownTask,
    FactorTask,
    ModularSumTask,
    addition,
    countdown,
    factor,
    make_task,
    modular_sum,
    parse_expression,
    prime_factors,
    primes_below,
    register_task,
)
from rlnb.policies import Rollout
from rlnb.serialization import load_component, save_component

try:
    import reasoning_gym  # noqa: F401

    HAS_RG = True
except ImportError:
    HAS_RG = False

needs_rg = pytest.mark.skipif(
    not HAS_RG, reason="reasoning-gym is not installed (pip install reasoning-gym)"
)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """Keep every Hugging Face cache inside the test's tmp dir."""
    import datasets.config

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    return tmp_path


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_rollout(prompts: list[int], completions: list[str], group_size: int = 1) -> Rollout:
    N = len(prompts)
    return Rollout(
        prompts=torch.tensor(prompts),
        actions=torch.zeros(N, 1, dtype=torch.long),
        mask=torch.ones(N, 1, dtype=torch.bool),
        logp=torch.zeros(N, 1),
        group_size=group_size,
        extra={"completions": completions},
    )


# name -> (generator, easy kwargs, hard kwargs)
GENERATORS = {
    "addition": (addition, {"digits": 1}, {"digits": 4}),
    "modular_sum": (modular_sum, {"terms": 2}, {"terms": 5, "modulus": 100}),
    "countdown": (countdown, {"numbers": 2}, {"numbers": 5, "max_number": 50}),
    "factor": (factor, {"digits": 4}, {"digits": 8}),
}


def default_tasks(num_prompts: int = 50) -> list[TextTask]:
    return [fn(num_prompts, seed=1) for fn, _, _ in GENERATORS.values()]


def wrong_answer(task: TextTask, i: int) -> str:
    """An answer in the task's own format that is certainly wrong."""
    p, a = task.prompt(i), task.answer(i)
    if isinstance(task, AdditionTask):
        return str(int(a) + 1)
    if isinstance(task, ModularSumTask):
        return str((int(a) + 1) % task.parse_prompt(p)[1])
    if isinstance(task, CountdownTask):
        return f"({a})+1"
    if isinstance(task, FactorTask):
        n = task.parse_prompt(p)
        return next(str(d) for d in range(2, n) if n % d)
    raise AssertionError(type(task))


# --- generators ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_determinism_and_answers(name):
    fn, _, _ = GENERATORS[name]
    a, b, c = fn(60, seed=3), fn(60, seed=3), fn(60, seed=4)
    assert a == b and a.prompts == b.prompts and a.answers == b.answers
    assert a.prompts != c.prompts
    assert a.num_prompts == 60 and len(set(a.prompts)) == 60
    assert (a.horizon, a.num_actions, a.states_per_prompt) == (0, 0, 1)
    for i in range(a.num_prompts):
        assert a.score(a.prompt(i), a.answer(i)) == 1.0
        assert a.score(a.prompt(i), f"  {a.answer(i)}\n") == 1.0  # surrounding whitespace
        assert a.score(a.prompt(i), wrong_answer(a, i)) == 0.0
        assert a.score(a.prompt(i), a.answer(i) + "x") == 0.0
        assert a.score(a.prompt(i), "") == 0.0
    # short enough for a tiny character-level model at default difficulty
    assert max(len(p) for p in a.prompts) <= 20 and max(len(s) for s in a.answers) <= 20
    assert set("".join(a.prompts + a.answers)) <= set(a.alphabet)
    assert make_task(name, num_prompts=60, seed=3) == a


@pytest.mark.parametrize("name", list(GENERATORS))
def test_difficulty_knob_changes_lengths(name):
    fn, easy, hard = GENERATORS[name]
    e, h = fn(40, seed=0, **easy), fn(40, seed=0, **hard)

    def mean_len(xs):
        return sum(map(len, xs)) / len(xs)

    assert mean_len(h.prompts) > mean_len(e.prompts)
    assert mean_len(h.answers) >= mean_len(e.answers)
    assert e.alphabet == h.alphabet  # fixed alphabet: one tokenizer for every difficulty


@pytest.mark.parametrize("name", list(GENERATORS))
def test_split_is_disjoint_and_complete(name):
    task = GENERATORS[name][0](50, seed=2)
    train, test = task.split(10, seed=0)
    assert type(train) is type(task) and type(test) is type(task)
    assert (train.num_prompts, test.num_prompts) == (40, 10)
    assert not set(train.prompts) & set(test.prompts)
    assert sorted(train.prompts + test.prompts) == sorted(task.prompts)
    assert train.alphabet == test.alphabet == task.alphabet
    for sub in (train, test):
        for i in range(sub.num_prompts):
            assert sub.answer(i) == task.answer_for(sub.prompt(i))
    frac_train, frac_test = task.split(0.2, seed=1)
    assert frac_test.num_prompts == 10 and frac_test.prompts != test.prompts
    assert task.split(10, seed=0) == (train, test)  # seeded


def test_split_errors_and_duplicates():
    task = ExactMatchTask(["a", "b", "a", "c"], ["1", "2", "1", "3"])
    train, test = task.split(1, seed=0)
    assert not set(train.prompts) & set(test.prompts)  # duplicates stay on one side
    assert train.num_prompts + test.num_prompts == 4
    with pytest.raises(ValueError, match="both parts"):
        task.split(3)
    with pytest.raises(ValueError, match="fraction"):
        task.split(1.5)


def test_too_many_prompts_is_a_clear_error():
    with pytest.raises(ValueError, match="only 100 exist"):
        addition(101, digits=1)
    with pytest.raises(ValueError, match="only 100 exist"):
        modular_sum(101, terms=2, modulus=10)
    assert len(set(addition(100, digits=1).prompts)) == 100  # the whole space is reachable
    with pytest.raises(ValueError, match="too few"):
        countdown(500, numbers=2, max_number=3)
    with pytest.raises(ValueError, match="digits must be an integer in \\[1, 18\\]"):
        addition(5, digits=0)


def test_addition_and_modular_formats():
    task = AdditionTask(["12+34=", "99+1="])
    assert task.answers == ["46", "100"]
    assert task.score("12+34=", "046") == 0.0  # canonical digits only
    assert task.score("5+5=", "10") == 1.0  # a prompt outside the task is parsed
    with pytest.raises(ValueError, match="is wrong"):
        AdditionTask(["12+34="], ["47"])
    with pytest.raises(ValueError, match="not a addition prompt"):
        AdditionTask(["12-34="])
    m = ModularSumTask(["(3+8+5)%10=", "(7)%3="])
    assert m.answers == ["6", "1"]
    assert m.parse_prompt("(3+8+5)%10=") == ([3, 8, 5], 10)
    with pytest.raises(ValueError, match="not a modular_sum prompt"):
        ModularSumTask(["3+8+5%10="])


# --- robustness -------------------------------------------------------------------------------
ROBUST_TASKS = default_tasks(20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_score_never_raises_on_arbitrary_text(data):
    task = data.draw(st.sampled_from(ROBUST_TASKS))
    i = data.draw(st.integers(0, task.num_prompts - 1))
    completion = data.draw(
        st.one_of(st.text(), st.text(alphabet=task.alphabet + " \n-"), st.text(max_size=3))
    )
    assert task.score(task.prompt(i), completion) in (0.0, 1.0)


@pytest.mark.parametrize("task", ROBUST_TASKS, ids=lambda t: t.task_name)
def test_score_edge_cases(task):
    p = task.prompt(0)
    megabyte = "7" * 1_000_000
    cases = [
        "",
        " ",
        "\x00",
        "٣",
        "²",
        "３",
        "🙂" * 10,
        megabyte,
        "(" * 1_000_000,
        "(" * 500 + "1" + ")" * 500,
        task.answer(0) + " " * 1_000_000,
        " " * 1_000_000 + task.answer(0),
        task.answer(0) * 1000,
    ]
    for c in cases:
        assert task.score(p, c) in (0.0, 1.0)
    assert task.score(p, task.answer(0) + " " * 1_000_000) == 1.0
    # How fast hostile completions are scored is measured by
    # benchmarks/adversarial_scoring.py (a parser fed a megabyte takes minutes), not here.
    with pytest.raises(TypeError, match="must be a str"):
        task.score(p, b"12")


def test_countdown_parenthesis_bomb():
    task = CountdownTask(["3,5,7>22:"])
    for depth in (5, 16, 17, 40, 10_000):
        bomb = "(" * depth + "3*5+7" + ")" * depth
        assert task.score("3,5,7>22:", bomb) == float(depth <= 16 and len(bomb) <= 64)


# --- countdown parser ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr, value",
    [
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("2*3+4", 10),
        ("2*(3+4)", 14),
        ("7-2-1", 4),
        ("7-(2-1)", 6),
        ("10-2*3", 4),
        ("(((5)))", 5),
        ("2*(3-(4+1))", -4),
        (" 2 + 3 ", 5),
        ("1", 1),
        ("0", 0),
        ("12*12", 144),
    ],
)
def test_parser_precedence_and_parentheses(expr, value):
    result = parse_expression(expr)
    assert result is not None and result[0] == value == eval(expr)  # oracle on trusted input


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "+",
        "2+",
        "-2",
        "2*-3",
        "2/3",
        "2**3",
        "(2",
        "2)",
        "()",
        "2(3)",
        "(2)(3)",
        "07",
        "2 3",
        "2+x",
        "٣",
        "1_000",
        "1e3",
        "2.5",
        "(" * 17 + "1" + ")" * 17,
    ],
)
def test_parser_rejects(expr):
    assert parse_expression(expr) is None


def test_parser_limits_and_numbers_used():
    assert parse_expression("1+2+3", max_numbers=2) is None
    assert parse_expression("1+2+3")[1] == [1, 2, 3]
    assert parse_expression("1" * 65) is None  # longer than max_chars
    assert parse_expression("(" * 16 + "1" + ")" * 16) == (1, [1])


def test_countdown_multiset_rules():
    task = CountdownTask(["3,5,7>22:", "3,3,7>42:", "2,4,9>17:"])
    p = "3,5,7>22:"
    assert task.score(p, "3*5+7") == 1.0
    assert task.score(p, "(7*3)+(5-3)+1") == 0.0  # 3 reused, 1 not given
    assert task.score(p, "5*5-3") == 0.0  # 5 reused
    assert task.score(p, "2*11") == 0.0  # numbers not in the prompt
    assert task.score(p, "22") == 0.0
    assert task.score("3,3,7>42:", "3*7+3*7") == 0.0  # 7 appears once
    assert task.score("3,3,7>42:", "(3+3)*7") == 1.0  # both 3s may be used
    assert task.score("2,4,9>17:", "9+4*2") == 1.0
    assert task.score("2,4,9>17:", "2*9-1") == 0.0
    # a subset of the numbers is enough
    assert CountdownTask(["2,4,9>13:"]).score("2,4,9>13:", "9+4") == 1.0


def test_countdown_generation_and_solver():
    task = countdown(300, seed=5)
    for i in range(task.num_prompts):
        nums, target = task.parse_prompt(task.prompt(i))
        assert nums == sorted(nums) and len(nums) == 3
        assert all(1 <= n <= 10 for n in nums) and target >= 1 and target not in nums
        value, used = parse_expression(task.answer(i))
        assert value == target and sorted(used) == nums  # the reference uses every number
    solved = CountdownTask(["3,5,7>22:", "2,4,9>17:"])  # answers found by search
    assert all(solved.score(p, a) == 1.0 for p, a in zip(solved.prompts, solved.answers))
    with pytest.raises(ValueError, match="no solution"):
        CountdownTask(["1,1>100:"])


# --- factor --------------------------------------------------------------------------------------
def test_factor_constraints():
    task = factor(500, seed=0)
    small = [p for p in primes_below(50) if p not in (2, 5)]
    for i in range(task.num_prompts):
        n = task.n(i)
        assert 100_000 <= n <= 999_999 and n % 2 and n % 5
        assert any(n % p == 0 for p in small)
        primes = task.prime_factors(i)
        assert primes[0] < n and math.prod(primes) <= n  # composite
        assert task.answer(i) == str(primes[0])
    ns = [task.n(i) for i in range(task.num_prompts)]
    assert 0.44 < sum(n % 3 == 0 for n in ns) / len(ns) < 0.60  # theory: 0.51
    loose = factor(500, seed=0, allow_even_and_5=True)
    ns = [loose.n(i) for i in range(loose.num_prompts)]
    assert any(n % 2 == 0 for n in ns) and any(n % 5 == 0 for n in ns)
    assert all(len(p) == 7 for p in task.prompts)
    with pytest.raises(ValueError, match="is prime"):
        FactorTask(["101="])
    with pytest.raises(ValueError, match="no allowed prime"):
        factor(3, max_prime=4 - 1)


def test_factor_score_accepts_every_nontrivial_divisor():
    task = factor(30, seed=7)
    for i in range(task.num_prompts):
        n, p = task.n(i), task.prompt(i)
        divisors = {d for d in range(2, math.isqrt(n) + 1) if n % d == 0}
        divisors |= {n // d for d in divisors}
        for d in divisors:
            assert task.score(p, str(d)) == 1.0
        assert task.score(p, "1") == 0.0 and task.score(p, str(n)) == 0.0
        assert task.score(p, "0") == 0.0 and task.score(p, str(2 * n)) == 0.0
        d = min(divisors)
        for bad in (f"0{d}", f"+{d}", f"{d}x", f"{d} {d}", f"{d}.0", f"-{d}"):
            assert task.score(p, bad) == 0.0
        assert task.score(p, f"\n{d} ") == 1.0
        assert task.score(p, wrong_answer(task, i)) == 0.0


def test_factor_sft_is_uniform_over_prime_factors():
    scipy_stats = pytest.importorskip("scipy.stats")
    task = FactorTask(["1155=", "255255=", "9=", "123459="])  # 4, 6, 1, 3 distinct primes
    pairs = task.sft_examples(24_000, gen(0))
    assert len(pairs) == 24_000
    by_prompt: dict[str, Counter] = {}
    for prompt, completion in pairs:
        by_prompt.setdefault(prompt, Counter())[completion] += 1
    assert set(by_prompt) == set(task.prompts)
    for i, prompt in enumerate(task.prompts):
        primes = [str(q) for q in task.prime_factors(i)]
        counts = by_prompt[prompt]
        assert set(counts) == set(primes)  # every prime, large ones included, nothing else
        if len(primes) > 1:
            assert scipy_stats.chisquare([counts[q] for q in primes]).pvalue > 1e-3
    assert task.sft_examples(10, gen(1)) == task.sft_examples(10, gen(1))
    # a generated task: completions are always prime factors of N
    g = factor(40, seed=1)
    for prompt, completion in g.sft_examples(500, gen(2)):
        n, q = int(prompt[:-1]), int(completion)
        assert n % q == 0 and prime_factors(q) == [q] and g.score(prompt, completion) == 1.0


def test_other_tasks_sft_examples_are_reference_answers():
    task = addition(30, seed=0)
    for prompt, completion in task.sft_examples(100, gen(0)):
        assert completion == task.answer_for(prompt)
    assert task.sft_examples(0, gen(0)) == []


# --- reward_rollout --------------------------------------------------------------------------------
def test_reward_rollout_scores_completions():
    task = addition(4, seed=0)
    completions = [task.answer(2), "nope", task.answer(0) + "\n", task.answer(2) + "0"]
    rewards = task.reward_rollout(make_rollout([2, 2, 0, 2], completions, group_size=2), gen(0))
    assert rewards.dtype == torch.float32 and rewards.shape == (4,)
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert task.sample_prompts(4, gen(0)).sort().values.tolist() == [0, 1, 2, 3]


class NoneTask(TextTask):
    def score(self, prompt, completion):
        return None if completion == "bad" else 1.0


class NanTask(TextTask):
    def score(self, prompt, completion):
        return float("nan")


def test_reward_rollout_rejects_non_finite_scores():
    task = NoneTask(["p0:", "p1:"], ["a", "b"])
    rollout = make_rollout([0, 1], ["ok", "bad"])
    with pytest.raises(ValueError, match="finite float") as err:
        task.reward_rollout(rollout)
    message = str(err.value)
    assert "NoneTask" in message and "row 1" in message and "'p1:'" in message and "None" in message
    with pytest.raises(ValueError, match="nan"):
        NanTask(["p"], ["a"]).reward_rollout(make_rollout([0], ["x"]))
    with pytest.raises(ValueError, match="no 'completions'"):
        task.reward_rollout(
            Rollout(torch.tensor([0]), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1), 1)
        )
    with pytest.raises(ValueError, match="one completion per row"):
        task.reward_rollout(make_rollout([0, 1], ["ok"]))
    with pytest.raises(NotImplementedError, match="reward_rollout"):
        task.reward(torch.tensor([0]), torch.zeros(1, 1, dtype=torch.long))


def test_user_task_in_a_few_lines():
    class Reverse(TextTask):
        def score(self, prompt, completion):
            return float(strip_completion(completion, len(prompt)) == prompt[:-1][::-1])

    task = Reverse(prompts=["abc:", "xy:"], answers=["cba", "yx"])
    assert task.alphabet == ":abcxy"
    rewards = task.reward_rollout(make_rollout([0, 1, 1], ["cba", "yx ", "xy"]))
    assert rewards.tolist() == [1.0, 1.0, 0.0]
    assert Reverse(**task.get_config()) == task
    train, test = task.split(1)
    assert train.alphabet == task.alphabet  # kept from the parent
    with pytest.raises(ValueError, match="not one of the 2 prompts"):
        task.answer_for("zzz:")
    with pytest.raises(IndexError, match="out of range"):
        task.prompt(2)
    with pytest.raises(ValueError, match="not in alphabet"):
        Reverse(["abc:"], ["cba"], alphabet="abc")
    with pytest.raises(NotImplementedError, match="must implement score"):
        TextTask(["a"], ["b"]).score("a", "b")


# --- serialization and datasets ----------------------------------------------------------------
ALL_KINDS = [
    addition(12, digits=3, seed=1),
    modular_sum(12, terms=4, modulus=7, seed=1),
    countdown(12, numbers=4, seed=1),
    factor(12, digits=5, max_prime=30, allow_even_and_5=True, seed=1),
    ExactMatchTask(["hi", "yo"], ["HI", "YO"]),
]


@pytest.mark.parametrize("task", ALL_KINDS, ids=lambda t: type(t).__name__)
def test_dataset_round_trip(task, hf_home):
    import datasets

    ds = task.to_dataset()
    assert ds.column_names[:2] == ["prompt", "answer"] and len(ds) == task.num_prompts
    assert ds["prompt"] == task.prompts and ds["answer"] == task.answers
    path = hf_home / "ds"
    ds.save_to_disk(str(path))
    loaded = datasets.load_from_disk(str(path))
    assert TextTask.from_dataset(loaded) == task
    assert type(task).from_dataset(loaded) == task
    assert TextTask.load_from_disk(path) == task
    last = task.num_prompts - 1
    sub = TextTask.from_dataset(loaded.select([last, 0]))
    assert sub.prompts == [task.prompt(last), task.prompt(0)] and sub.alphabet == task.alphabet
    if not isinstance(task, AdditionTask):
        with pytest.raises(ValueError, match="not a AdditionTask"):
            AdditionTask.from_dataset(loaded)


@pytest.mark.parametrize("task", ALL_KINDS, ids=lambda t: type(t).__name__)
def test_component_round_trip(task, tmp_path):
    assert type(task)(**task.get_config()) == task
    save_component(task, tmp_path, "env")
    rebuilt = load_component(tmp_path, "env")
    assert rebuilt == task and type(rebuilt) is type(task)
    assert rebuilt.alphabet == task.alphabet and repr(rebuilt) == repr(task)


def test_metadata_columns(hf_home):
    ds = factor(5, seed=0).to_dataset()
    assert ds.column_names == ["prompt", "answer", "n", "prime_factors"]
    for row in ds:
        assert row["prompt"] == f"{row['n']}=" and math.prod(row["prime_factors"]) <= row["n"]
    ds = countdown(5, seed=0).to_dataset()
    assert ds.column_names == ["prompt", "answer", "numbers", "target"]


def test_plain_dataset_needs_a_concrete_class(hf_home):
    from datasets import Dataset

    ds = Dataset.from_dict({"prompt": ["1+1="], "answer": ["2"]})
    assert ExactMatchTask.from_dataset(ds).score("1+1=", "2") == 1.0
    assert AdditionTask.from_dataset(ds).answers == ["2"]
    with pytest.raises(ValueError, match="concrete task class"):
        TextTask.from_dataset(ds)
    with pytest.raises(ValueError, match="lacks column"):
        TextTask.from_dataset(Dataset.from_dict({"question": ["x"]}))


# --- registry -------------------------------------------------------------------------------------
def test_registry():
    assert sorted(TASKS) == ["addition", "countdown", "factor", "modular_sum", "written_addition"]
    with pytest.raises(ValueError, match="reasoning_gym:<dataset name>") as err:
        make_task("adition", num_prompts=3)
    assert "did you mean 'addition'" in str(err.value)

    @register_task("_test_upper")
    def upper(num_prompts, seed=0):
        words = [f"w{i}" for i in range(num_prompts)]
        return ExactMatchTask(words, [w.upper() for w in words])

    try:
        assert make_task("_test_upper", num_prompts=2).answers == ["W0", "W1"]
    finally:
        TASKS._fns.pop("_test_upper")
    with pytest.raises(ValueError, match="reserved"):
        register_task("reasoning_gym:mine")


def test_doctests():
    for module in (text_module, tasks_module, arithmetic_module, countdown_module,
                   expressions_module, factor_module, task_tools_module):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__


# --- reasoning-gym --------------------------------------------------------------------------------
@needs_rg
def test_reasoning_gym_verifier_and_determinism():
    from rlnb.envs.reasoning_gym import ReasoningGymTask, extract_answer

    task = make_task("reasoning_gym:chain_sum", size=30, seed=3)
    assert isinstance(task, ReasoningGymTask) and task.num_prompts == 30
    assert task.task_name == "reasoning_gym:chain_sum"
    assert set("".join(task.prompts + task.answers)) <= set(task.alphabet)
    for i in range(task.num_prompts):
        p, a = task.prompt(i), task.answer(i)
        assert task.score(p, a) == 1.0
        assert task.score(p, f"<think>add them</think><answer> {a} </answer>") == 1.0
        assert task.score(p, "garbage") == 0.0 and task.score(p, "") == 0.0
        assert task.score(p, "x" * 1_000_000) == 0.0
    rebuilt = ReasoningGymTask(**task.get_config())
    assert rebuilt == task and rebuilt.prompts == task.prompts and rebuilt.answers == task.answers
    assert ReasoningGymTask("chain_sum", size=30, seed=4).prompts != task.prompts
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    rewards = task.reward_rollout(make_rollout([0, 1], [task.answer(0), "nonsense"]))
    assert rewards.tolist() == [1.0, 0.0]


@needs_rg
@settings(max_examples=60, deadline=None)
@given(completion=st.text())
def test_reasoning_gym_score_never_raises(completion):
    from rlnb.envs.reasoning_gym import ReasoningGymTask

    task = _rg_task(ReasoningGymTask)
    value = task.score(task.prompt(0), completion)
    assert 0.0 <= value <= 1.0


_RG_CACHE: dict[str, TextTask] = {}


def _rg_task(cls):
    if "basic" not in _RG_CACHE:
        _RG_CACHE["basic"] = cls("basic_arithmetic", size=5, seed=0)
    return _RG_CACHE["basic"]


@needs_rg
def test_reasoning_gym_serialization_split_and_dataset(tmp_path, hf_home):
    import datasets

    from rlnb.envs.reasoning_gym import ReasoningGymTask, list_reasoning_gym_datasets

    assert {"chain_sum", "basic_arithmetic"} <= set(list_reasoning_gym_datasets())
    task = ReasoningGymTask("chain_sum", size=20, seed=1, min_terms=2, max_terms=3)
    config = task.get_config()
    assert config == {
        "dataset_name": "chain_sum",
        "size": 20,
        "seed": 1,
        "min_terms": 2,
        "max_terms": 3,
    }
    save_component(task, tmp_path, "env")
    assert load_component(tmp_path, "env") == task
    assert load_component(tmp_path, "env").prompts == task.prompts

    train, test = task.split(5, seed=0)
    assert not set(train.prompts) & set(test.prompts)
    assert train.num_prompts + test.num_prompts == 20
    assert train.alphabet == test.alphabet == task.alphabet
    assert ReasoningGymTask(**test.get_config()).prompts == test.prompts

    ds = test.to_dataset()
    assert {"prompt", "answer", "index", "metadata"} <= set(ds.column_names)
    ds.save_to_disk(str(hf_home / "rg"))
    loaded = datasets.load_from_disk(str(hf_home / "rg"))
    assert TextTask.from_dataset(loaded) == test
    assert TextTask.from_dataset(loaded.select([0, 2])).prompts == [test.prompt(0), test.prompt(2)]

    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'chain_summ'"):
        ReasoningGymTask("chain_summ", size=3)
    with pytest.raises(ValueError, match="seed must be an int"):
        ReasoningGymTask("chain_sum", size=3, seed=None)


def test_reasoning_gym_import_error_is_clear(monkeypatch):
    import builtins

    from rlnb.envs import reasoning_gym as adapter

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "reasoning_gym" or name.startswith("reasoning_gym."):
            raise ImportError("No module named 'reasoning_gym'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install reasoning-gym"):
        adapter.ReasoningGymTask("chain_sum", size=2)


def test_addition_min_digits_gives_answers_of_every_length():
    from rlnb.envs.arithmetic_tasks import AdditionTask, addition

    task = addition(400, digits=3, min_digits=1, seed=0)
    ops = [task.parse_prompt(p) for p in task.prompts]
    assert all(0 <= a <= 999 and 0 <= b <= 999 for a, b in ops)
    assert {len(str(a)) for a, _ in ops} == {1, 2, 3}  # each operand's length varies
    assert sorted({len(x) for x in task.answers}) == [1, 2, 3, 4]
    assert all(task.score(p, a) == 1.0 for p, a in zip(task.prompts, task.answers))
    assert task.get_config()["min_digits"] == 1
    again = AdditionTask(**task.get_config())
    assert again.prompts == task.prompts and again.min_digits == 1
    _, held_out = task.split(40, seed=0)
    assert held_out.get_config()["min_digits"] == 1
    assert addition(400, digits=3, min_digits=1, seed=0).prompts == task.prompts
    # the default is unchanged, and keeps no min_digits in its config (cache keys)
    assert "min_digits" not in addition(5, seed=0).get_config()
    assert addition(5, seed=0).prompts == addition(5, digits=2, seed=0, min_digits=None).prompts
    assert {len(str(a)) for p in addition(50, digits=3, min_digits=3, seed=1).prompts
            for a in AdditionTask.parse_prompt(p)} == {3}
    with pytest.raises(ValueError, match="min_digits"):
        addition(5, digits=2, min_digits=3)
