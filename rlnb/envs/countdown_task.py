"""The countdown task: reach a target with the given numbers, ``+ - *`` and parentheses
(``"3,5,7>22:"``, answer e.g. ``"3*5+7"``); the task class and its seeded generator."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rlnb.envs.expressions import combine, parse_expression
from rlnb.envs.task_tools import (
    DIGITS,
    MAX_LITERAL_DIGITS,
    alphabet_of,
    bad_prompt,
    check_knob,
    distinct_pairs,
    parse_uint,
)
from rlnb.envs.text import TextTask, strip_completion
from rlnb.envs.text_spec import mark_generated, seeded_generator

# Bounds of the generator's knobs: prompts stay short enough to tokenize and parse fast.
_MAX_COUNTDOWN_NUMBERS = 12
_MAX_COUNTDOWN_VALUE = 10**6


class CountdownTask(TextTask):
    """Reach a target with the given numbers, ``+ - *`` and parentheses, each number used at
    most once.

    Prompt ``"n1,n2,...,nk>target:"`` with the numbers in ascending order (repeats allowed,
    e.g. ``"3,3,7>42:"``); reference answer: one solution, e.g. ``"3*5+7"`` for
    ``"3,5,7>22:"``. Score 1.0 iff the stripped completion parses (see
    :func:`parse_expression`: no unary minus, no division, no leading zeros, at most
    ``max(64, 12 * len(numbers))`` characters and 16 levels of parentheses), uses each
    literal no more often than it appears in the prompt (a sub-multiset: not every number
    need be used) and equals the target. Alphabet: ``"()*+,-0123456789:>"``.

    >>> task = CountdownTask(["3,5,7>22:"])
    >>> [task.score("3,5,7>22:", c) for c in ["3*5+7", "7+5*3", "(7+4)*2", "7*3+1", "22"]]
    [1.0, 1.0, 0.0, 0.0, 0.0]
    """

    task_name = "countdown"
    ALPHABET = alphabet_of(DIGITS, "+-*(),>:")
    # An expression longer than max(64, 12 * len(numbers)) characters scores 0.0 unparsed.
    min_expression_chars = 64

    def __init__(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        numbers: int = 3,
        max_number: int = 10,
        seed: int = 0,
    ) -> None:
        prompts = list(prompts)
        self._parsed = {p: self.parse_prompt(p) for p in prompts}
        if answers is None:
            answers = [self.solve(p) for p in prompts]
        super().__init__(prompts, answers, alphabet=self.ALPHABET)
        for p, a in zip(self._prompts, self._answers):
            if self.score(p, a) != 1.0:
                raise ValueError(f"countdown answer {a!r} does not solve prompt {p!r}")
        self.numbers, self.max_number, self.seed = numbers, max_number, seed

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[list[int], int]:
        """``"3,5,7>22:"`` -> ``([3, 5, 7], 22)``; ``ValueError`` for anything else."""
        if isinstance(prompt, str) and prompt.endswith(":") and prompt.count(">") == 1:
            nums, target = prompt[:-1].split(">")
            values = [parse_uint(x) for x in nums.split(",")]
            t = parse_uint(target)
            if t is not None and values and all(v is not None for v in values):
                return values, t  # type: ignore[return-value]
        raise bad_prompt("countdown", prompt, "3,5,7>22:")

    #: Most numbers :meth:`solve` searches (6 numbers take up to seconds; each more
    #: multiplies the search by ~50): pass the answers for longer prompts.
    MAX_SOLVE_NUMBERS = 6

    @classmethod
    def solve(cls, prompt: str) -> str:
        """A solution by exhaustive search (up to :attr:`MAX_SOLVE_NUMBERS` numbers; the
        generator keeps the expression it built instead). ``ValueError`` if there is none."""
        nums, target = cls.parse_prompt(prompt)
        if len(nums) > cls.MAX_SOLVE_NUMBERS:
            raise ValueError(
                f"countdown prompt {prompt!r} has {len(nums)} numbers; the exhaustive solver "
                f"searches at most {cls.MAX_SOLVE_NUMBERS} (it grows ~50x per number): pass "
                "answers=[...] with one solution per prompt, or use fewer numbers"
            )
        pool = [(n, str(n), 3) for n in nums]
        failed: set[tuple[int, ...]] = set()  # value multisets already searched in vain

        def search(items: list[tuple[int, str, int]]) -> str | None:
            for item in items:
                if item[0] == target:
                    return item[1]
            key = tuple(sorted(x[0] for x in items))
            if key in failed:  # same values, same outcome: nothing to find here
                return None
            for i in range(len(items)):
                for j in range(len(items)):
                    if i == j:
                        continue
                    rest = [x for k, x in enumerate(items) if k not in (i, j)]
                    for op in "+-*":
                        found = search([*rest, combine(items[i], items[j], op)])
                        if found is not None:
                            return found
            failed.add(key)
            return None

        found = search(pool)
        if found is None:
            raise ValueError(f"countdown prompt {prompt!r} has no solution")
        return found

    def score(self, prompt: str, completion: str) -> float:
        parsed = self._parsed.get(prompt)
        nums, target = parsed if parsed is not None else self.parse_prompt(prompt)
        max_chars = max(self.min_expression_chars, 12 * len(nums))
        text = strip_completion(completion, max_chars)
        if text is None:
            return 0.0
        result = parse_expression(text, max_chars=max_chars, max_numbers=len(nums))
        if result is None or result[0] != target:
            return 0.0
        return float(not Counter(result[1]) - Counter(nums))

    def metadata_columns(self) -> dict[str, list[Any]]:
        parsed = [self._parsed[p] for p in self._prompts]
        return {"numbers": [n for n, _ in parsed], "target": [t for _, t in parsed]}

    def get_config(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "answers": self.answers,
            "numbers": self.numbers,
            "max_number": self.max_number,
            "seed": self.seed,
        }


@seeded_generator("countdown")
def countdown(
    num_prompts: int, numbers: int = 3, max_number: int = 10, seed: int = 0
) -> CountdownTask:
    """``num_prompts`` distinct solvable countdown problems.

    Each draws ``numbers`` integers uniformly from ``1..max_number`` (repeats allowed),
    combines all of them in a random order with random ``+ - *`` into a random expression
    tree, and keeps it when its value (the target) is >= 1 and is not one of the numbers.
    That expression, with minimal parentheses, is the reference answer; any other solution
    scores 1.0 as well.

    Lengths at the defaults: prompt at most 14 characters (``"10,10,10>1000:"``), answer
    at most 10.

    >>> task = countdown(2, seed=0)
    >>> task.prompts, task.answers
    (['4,9,10>126:', '3,5,10>150:'], ['9*(10+4)', '10*5*3'])
    """
    check_knob("num_prompts", num_prompts, 1)
    check_knob("numbers", numbers, 2, _MAX_COUNTDOWN_NUMBERS, "numbers per prompt")
    check_knob("max_number", max_number, 1, _MAX_COUNTDOWN_VALUE, "largest number drawn")

    def draw(rng: random.Random) -> tuple[str, str] | None:
        nums = [rng.randint(1, max_number) for _ in range(numbers)]
        pool = [(n, str(n), 3) for n in nums]
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            new = combine(pool[i], pool[j], rng.choice("+-*"))
            pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [new]
        target, text, _ = pool[0]
        if target < 1 or target in nums or len(str(target)) > MAX_LITERAL_DIGITS:
            return None
        return f"{','.join(map(str, sorted(nums)))}>{target}:", text

    pairs = distinct_pairs(num_prompts, draw, random.Random(seed), "countdown")
    task = CountdownTask(
        [p for p, _ in pairs],
        [a for _, a in pairs],
        numbers=numbers,
        max_number=max_number,
        seed=seed,
    )
    return mark_generated(task, "countdown", num_prompts=num_prompts, numbers=numbers,
                          max_number=max_number, seed=seed)

