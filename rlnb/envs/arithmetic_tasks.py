"""Arithmetic text tasks: two-number addition (``"12+34="``) and sums modulo m
(``"(3+8+5)%10="``), each a task class and its seeded generator."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rlnb.envs.task_tools import (
    DIGITS,
    MAX_LITERAL_DIGITS,
    alphabet_of,
    bad_prompt,
    check_knob,
    distinct_pairs,
    operand_range,
    parse_uint,
    resolve_answers,
)
from rlnb.envs.text import TextTask, strip_completion
from rlnb.envs.text_spec import mark_generated, seeded_generator

# Most terms a modular-sum prompt may hold (prompts stay short enough to parse fast).
_MAX_TERMS = 256


# ------------------------------------------------------------------------------------------
# addition
# ------------------------------------------------------------------------------------------
class AdditionTask(TextTask):
    """Two-number addition: prompt ``"a+b="``, answer ``str(a + b)``.

    Score 1.0 iff the stripped completion is exactly the decimal sum, with no sign, spaces or
    leading zeros (``"046"`` scores 0.0). ``digits`` and ``seed`` record how the prompts
    were generated (see :func:`addition`). Alphabet: ``"+0123456789="``.

    Card 1's footgun: correct addition solves every problem, so RL beats the base model at
    every k here; use :class:`FactorTask` to see the pass@k crossover.
    """

    task_name = "addition"
    ALPHABET = alphabet_of(DIGITS, "+=")

    def __init__(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        digits: int = 2,
        seed: int = 0,
        min_digits: int | None = None,
    ) -> None:
        prompts = list(prompts)
        self._operands = [self.parse_prompt(p) for p in prompts]
        expected = [str(a + b) for a, b in self._operands]
        super().__init__(
            prompts,
            resolve_answers("addition", prompts, answers, expected),
            alphabet=self.ALPHABET,
        )
        self.digits, self.seed, self.min_digits = digits, seed, min_digits

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[int, int]:
        """``"12+34="`` -> ``(12, 34)``; ``ValueError`` for anything else."""
        if isinstance(prompt, str) and prompt.endswith("=") and prompt.count("+") == 1:
            a, b = (parse_uint(x, canonical=False) for x in prompt[:-1].split("+"))
            if a is not None and b is not None:
                return a, b
        raise bad_prompt("addition", prompt, "12+34=")

    def score(self, prompt: str, completion: str) -> float:
        i = self._index.get(prompt)
        expected = self._answers[i] if i is not None else str(sum(self.parse_prompt(prompt)))
        return float(strip_completion(completion, len(expected)) == expected)

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {"a": [a for a, _ in self._operands], "b": [b for _, b in self._operands]}

    def get_config(self) -> dict[str, Any]:
        config = {
            "prompts": self.prompts,
            "answers": self.answers,
            "digits": self.digits,
            "seed": self.seed,
        }
        if self.min_digits is not None:  # absent at the default: cache keys stay as they were
            config["min_digits"] = self.min_digits
        return config



@seeded_generator("addition")
def addition(num_prompts: int, digits: int = 2, seed: int = 0,
             min_digits: int | None = None) -> AdditionTask:
    """``num_prompts`` distinct problems ``"a+b="`` with ``a`` and ``b`` drawn uniformly among
    the ``digits``-digit numbers (0-9 when ``digits == 1``).

    ``min_digits`` (default None: every operand has ``digits`` digits) gives operands of
    varying length: each operand independently draws its number of digits uniformly from
    ``min_digits .. digits``, then its value uniformly among the numbers of that many
    digits, so answers of every length appear (``min_digits=1, digits=3``: answers of 1 to
    4 characters, card 13's variable-length completions). When the space of problems is
    small (at most 4x ``num_prompts`` pairs) the prompts are instead a uniform sample of
    all its pairs, as at the default.

    Lengths: prompt ``2 * digits + 2`` characters, answer ``digits`` or ``digits + 1``
    (with ``min_digits``: prompt ``2 * min_digits + 2`` to ``2 * digits + 2``, answer
    ``min_digits`` to ``digits + 1``).

    >>> addition(2, digits=1, seed=1).prompts
    ['2+9=', '1+4=']
    >>> sorted({len(a) for a in addition(200, digits=3, min_digits=1, seed=0).answers})
    [1, 2, 3, 4]
    """
    check_knob("num_prompts", num_prompts, 1)
    check_knob("digits", digits, 1, MAX_LITERAL_DIGITS, "digits per operand")
    if min_digits is not None:
        check_knob("min_digits", min_digits, 1, digits,
                   "fewest digits per operand, at most digits")
    lo, hi = operand_range(digits)
    if min_digits is not None:
        lo = operand_range(min_digits)[0]
    count = hi - lo + 1

    def operand(rng: random.Random) -> int:
        if min_digits is None:
            return rng.randint(lo, hi)
        low, high = operand_range(rng.randint(min_digits, digits))
        return rng.randint(low, high)

    def draw(rng: random.Random) -> tuple[str, str]:
        a, b = operand(rng), operand(rng)
        return f"{a}+{b}=", str(a + b)

    def everything() -> list[tuple[str, str]]:
        return [(f"{a}+{b}=", str(a + b)) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]

    small = count * count <= 4 * num_prompts
    pairs = distinct_pairs(
        num_prompts, draw, random.Random(seed), "addition", everything if small else None
    )
    task = AdditionTask([p for p, _ in pairs], [a for _, a in pairs], digits=digits, seed=seed,
                        min_digits=min_digits)
    settings: dict[str, Any] = {"num_prompts": num_prompts, "digits": digits, "seed": seed}
    if min_digits is not None:
        settings["min_digits"] = min_digits
    return mark_generated(task, "addition", **settings)


# ------------------------------------------------------------------------------------------
# modular sum
# ------------------------------------------------------------------------------------------
class ModularSumTask(TextTask):
    """Sum of terms modulo ``m``: prompt ``"(t1+t2+...+tk)%m="``, answer
    ``str((t1 + ... + tk) % m)``.

    The parentheses make the order of operations explicit (``%`` binds tighter than ``+``
    in most languages). Score 1.0 iff the stripped completion is exactly the canonical
    decimal result (``0 <= result < m``, no leading zeros). Alphabet: ``"%()+0123456789="``.

    >>> ModularSumTask(["(3+8+5)%10="]).answers
    ['6']
    """

    task_name = "modular_sum"
    ALPHABET = alphabet_of(DIGITS, "+%()=")

    def __init__(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        terms: int = 3,
        modulus: int = 10,
        seed: int = 0,
    ) -> None:
        prompts = list(prompts)
        self._parsed = [self.parse_prompt(p) for p in prompts]
        expected = [str(sum(t) % m) for t, m in self._parsed]
        super().__init__(
            prompts,
            resolve_answers("modular_sum", prompts, answers, expected),
            alphabet=self.ALPHABET,
        )
        self.terms, self.modulus, self.seed = terms, modulus, seed

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[list[int], int]:
        """``"(3+8+5)%10="`` -> ``([3, 8, 5], 10)``; ``ValueError`` for anything else."""
        if isinstance(prompt, str) and prompt.startswith("(") and prompt.endswith("="):
            inner, sep, mod = prompt[1:-1].rpartition(")%")
            m = parse_uint(mod, canonical=False) if sep else None
            terms = [parse_uint(t, canonical=False) for t in inner.split("+")] if sep else []
            if m is not None and m >= 1 and terms and all(t is not None for t in terms):
                return terms, m  # type: ignore[return-value]
        raise bad_prompt("modular_sum", prompt, "(3+8+5)%10=")

    def score(self, prompt: str, completion: str) -> float:
        i = self._index.get(prompt)
        if i is not None:
            expected = self._answers[i]
        else:
            t, m = self.parse_prompt(prompt)
            expected = str(sum(t) % m)
        return float(strip_completion(completion, len(expected)) == expected)

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {"terms": [t for t, _ in self._parsed], "modulus": [m for _, m in self._parsed]}

    def get_config(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "answers": self.answers,
            "terms": self.terms,
            "modulus": self.modulus,
            "seed": self.seed,
        }


@seeded_generator("modular_sum")
def modular_sum(
    num_prompts: int, terms: int = 3, modulus: int = 10, seed: int = 0
) -> ModularSumTask:
    """``num_prompts`` distinct problems ``"(t1+...+tk)%m="`` with ``k = terms`` terms drawn
    uniformly from ``0..modulus-1``.

    Lengths at the defaults: prompt 11 characters, answer 1.

    >>> modular_sum(2, seed=0).prompts
    ['(6+6+0)%10=', '(4+8+7)%10=']
    """
    check_knob("num_prompts", num_prompts, 1)
    check_knob("terms", terms, 1, _MAX_TERMS, "numbers summed per prompt")
    check_knob("modulus", modulus, 2, 10**MAX_LITERAL_DIGITS - 1)

    def make(ts: Sequence[int]) -> tuple[str, str]:
        return f"({'+'.join(map(str, ts))})%{modulus}=", str(sum(ts) % modulus)

    def draw(rng: random.Random) -> tuple[str, str]:
        return make([rng.randrange(modulus) for _ in range(terms)])

    def everything() -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for code in range(modulus**terms):
            ts = [(code // modulus**j) % modulus for j in range(terms)]
            out.append(make(ts[::-1]))
        return out

    small = modulus**terms <= 4 * num_prompts
    pairs = distinct_pairs(
        num_prompts, draw, random.Random(seed), "modular_sum", everything if small else None
    )
    task = ModularSumTask(
        [p for p, _ in pairs], [a for _, a in pairs], terms=terms, modulus=modulus, seed=seed
    )
    return mark_generated(task, "modular_sum", num_prompts=num_prompts, terms=terms,
                          modulus=modulus, seed=seed)

