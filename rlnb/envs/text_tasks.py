"""Built-in verifiable text tasks, short enough for a tiny character-level model.

Each generator takes ``num_prompts``, a difficulty knob and a ``seed``, and returns a task
with distinct prompts (at default difficulty, prompts and answers are at most ~15
characters). Formats, with the completion the model should emit before its EOS token:

============  ===========================  ==============  ================================
task          prompt                       reference       score 1.0 iff the stripped
                                           answer          completion ...
============  ===========================  ==============  ================================
addition      ``"12+34="``                 ``"46"``        equals the sum, canonical digits
modular_sum   ``"(3+8+5)%10="``            ``"6"``         equals the sum mod the modulus
countdown     ``"3,5,7>22:"``              ``"3*5+7"``     is an expression over the given
                                                           numbers (each at most once) with
                                                           ``+ - *`` and parentheses that
                                                           equals the target
factor        ``"123459="``                smallest prime  is a divisor ``d`` of N with
                                           factor          ``1 < d < N``
============  ===========================  ==============  ================================

Every task scores a pure function of ``(prompt, completion)``: the reference answer is
only what supervised pre-training teaches. Scores are 0.0 for anything unparseable,
never an exception. Names are registered in :data:`TASKS`; :func:`make_task` also builds
``"reasoning_gym:<dataset>"`` tasks (:mod:`rlnb.envs.reasoning_gym`).

>>> task = make_task("addition", num_prompts=3, digits=2, seed=0)
>>> task.prompts, task.answers
(['59+63=', '15+43=', '75+72='], ['122', '58', '147'])
>>> task.score("15+43=", "58"), task.score("15+43=", "57"), task.score("15+43=", "58 apples")
(1.0, 0.0, 0.0)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlnb.checks import check_int
from rlnb.envs.text import TextTask, strip_completion
from rlnb.registry import Registry, unknown_name_error

DIGITS = "0123456789"
REASONING_GYM_PREFIX = "reasoning_gym:"

# Longest integer literal a prompt or an expression may hold (keeps every parse cheap).
_MAX_LITERAL_DIGITS = 18
# Bounds of the generators' knobs: prompts stay short enough to tokenize and parse fast.
_MAX_TERMS = 256
_MAX_COUNTDOWN_NUMBERS = 12
_MAX_COUNTDOWN_VALUE = 10**6
_MAX_PRIME = 10**6


def _alphabet(*parts: str) -> str:
    return "".join(sorted(set("".join(parts))))


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None,
               meaning: str | None = None) -> int:
    return check_int(value, name, minimum, maximum, meaning=meaning)


def _parse_uint(text: str, *, canonical: bool = True) -> int | None:
    """A non-negative decimal integer written in ASCII digits, or None. ``canonical``
    rejects leading zeros ("07"). ``str.isdigit`` alone would accept "²" and Arabic-Indic
    digits, which ``int`` then parses: check ASCII first."""
    if not text or len(text) > _MAX_LITERAL_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    if canonical and len(text) > 1 and text[0] == "0":
        return None
    return int(text)


def _bad_prompt(task: str, prompt: Any, example: str) -> ValueError:
    shown = prompt if not isinstance(prompt, str) or len(prompt) <= 60 else prompt[:60] + "..."
    return ValueError(f"{shown!r} is not a {task} prompt; expected the form {example!r}")


def _distinct(
    num_prompts: int,
    draw: Callable[[random.Random], tuple[str, str] | None],
    rng: random.Random,
    what: str,
    everything: Callable[[], list[tuple[str, str]]] | None = None,
) -> list[tuple[str, str]]:
    """``num_prompts`` (prompt, answer) pairs with distinct prompts. ``draw`` proposes one
    pair (None = rejected); ``everything`` lists all pairs when the space is small, so that
    asking for most of it does not turn into a coupon-collector loop."""
    if everything is not None:
        items = everything()
        if num_prompts > len(items):
            raise ValueError(
                f"asked for {num_prompts} distinct {what} prompts but only {len(items)} exist at "
                "this difficulty; lower num_prompts or make the task harder"
            )
        return rng.sample(items, num_prompts)
    seen: dict[str, tuple[str, str]] = {}
    limit = 200 * num_prompts + 10_000
    for _ in range(limit):
        item = draw(rng)
        if item is not None:
            seen.setdefault(item[0], item)
            if len(seen) == num_prompts:
                return list(seen.values())
    raise ValueError(
        f"found only {len(seen)} distinct {what} prompts in {limit} draws (asked for "
        f"{num_prompts}); there are too few at this difficulty: lower num_prompts or make the "
        "task harder"
    )


def _resolve_answers(
    task: str, prompts: list[str], answers: Sequence[str] | None, expected: list[str]
) -> list[str]:
    if answers is None:
        return expected
    answers = list(answers)
    if len(answers) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    for p, a, e in zip(prompts, answers, expected):
        if a != e:
            raise ValueError(
                f"{task} answer {a!r} for prompt {p!r} is wrong; the reference answer is {e!r} "
                "(pass answers=None to compute them)"
            )
    return answers


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
    ALPHABET = _alphabet(DIGITS, "+=")

    def __init__(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        digits: int = 2,
        seed: int = 0,
    ) -> None:
        prompts = list(prompts)
        self._operands = [self.parse_prompt(p) for p in prompts]
        expected = [str(a + b) for a, b in self._operands]
        super().__init__(
            prompts,
            _resolve_answers("addition", prompts, answers, expected),
            alphabet=self.ALPHABET,
        )
        self.digits, self.seed = digits, seed

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[int, int]:
        """``"12+34="`` -> ``(12, 34)``; ``ValueError`` for anything else."""
        if isinstance(prompt, str) and prompt.endswith("=") and prompt.count("+") == 1:
            a, b = (_parse_uint(x, canonical=False) for x in prompt[:-1].split("+"))
            if a is not None and b is not None:
                return a, b
        raise _bad_prompt("addition", prompt, "12+34=")

    def score(self, prompt: str, completion: str) -> float:
        i = self._index.get(prompt)
        expected = self._answers[i] if i is not None else str(sum(self.parse_prompt(prompt)))
        return float(strip_completion(completion, len(expected)) == expected)

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {"a": [a for a, _ in self._operands], "b": [b for _, b in self._operands]}

    def get_config(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "answers": self.answers,
            "digits": self.digits,
            "seed": self.seed,
        }


def _operand_range(digits: int) -> tuple[int, int]:
    """Numbers with exactly ``digits`` digits (0-9 for one digit)."""
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


def addition(num_prompts: int, digits: int = 2, seed: int = 0) -> AdditionTask:
    """``num_prompts`` distinct problems ``"a+b="`` with ``a`` and ``b`` drawn uniformly among
    the ``digits``-digit numbers (0-9 when ``digits == 1``).

    Lengths: prompt ``2 * digits + 2`` characters, answer ``digits`` or ``digits + 1``.

    >>> addition(2, digits=1, seed=1).prompts
    ['2+9=', '1+4=']
    """
    _check_int("num_prompts", num_prompts, 1)
    _check_int("digits", digits, 1, _MAX_LITERAL_DIGITS, "digits per operand")
    lo, hi = _operand_range(digits)
    count = hi - lo + 1

    def draw(rng: random.Random) -> tuple[str, str]:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return f"{a}+{b}=", str(a + b)

    def everything() -> list[tuple[str, str]]:
        return [(f"{a}+{b}=", str(a + b)) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]

    small = count * count <= 4 * num_prompts
    pairs = _distinct(
        num_prompts, draw, random.Random(seed), "addition", everything if small else None
    )
    return AdditionTask([p for p, _ in pairs], [a for _, a in pairs], digits=digits, seed=seed)


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
    ALPHABET = _alphabet(DIGITS, "+%()=")

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
            _resolve_answers("modular_sum", prompts, answers, expected),
            alphabet=self.ALPHABET,
        )
        self.terms, self.modulus, self.seed = terms, modulus, seed

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[list[int], int]:
        """``"(3+8+5)%10="`` -> ``([3, 8, 5], 10)``; ``ValueError`` for anything else."""
        if isinstance(prompt, str) and prompt.startswith("(") and prompt.endswith("="):
            inner, sep, mod = prompt[1:-1].rpartition(")%")
            m = _parse_uint(mod, canonical=False) if sep else None
            terms = [_parse_uint(t, canonical=False) for t in inner.split("+")] if sep else []
            if m is not None and m >= 1 and terms and all(t is not None for t in terms):
                return terms, m  # type: ignore[return-value]
        raise _bad_prompt("modular_sum", prompt, "(3+8+5)%10=")

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


def modular_sum(
    num_prompts: int, terms: int = 3, modulus: int = 10, seed: int = 0
) -> ModularSumTask:
    """``num_prompts`` distinct problems ``"(t1+...+tk)%m="`` with ``k = terms`` terms drawn
    uniformly from ``0..modulus-1``.

    Lengths at the defaults: prompt 11 characters, answer 1.

    >>> modular_sum(2, seed=0).prompts
    ['(6+6+0)%10=', '(4+8+7)%10=']
    """
    _check_int("num_prompts", num_prompts, 1)
    _check_int("terms", terms, 1, _MAX_TERMS, "numbers summed per prompt")
    _check_int("modulus", modulus, 2, 10**_MAX_LITERAL_DIGITS - 1)

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
    pairs = _distinct(
        num_prompts, draw, random.Random(seed), "modular_sum", everything if small else None
    )
    return ModularSumTask(
        [p for p, _ in pairs], [a for _, a in pairs], terms=terms, modulus=modulus, seed=seed
    )


# ------------------------------------------------------------------------------------------
# countdown
# ------------------------------------------------------------------------------------------
class _ExpressionParser:
    """Recursive descent over tokens. Grammar: ``expr := term (("+" | "-") term)*``,
    ``term := factor ("*" factor)*``, ``factor := NUMBER | "(" expr ")"``."""

    def __init__(self, tokens: list[str], max_depth: int, max_numbers: int | None) -> None:
        self.tokens, self.pos = tokens, 0
        self.max_depth, self.max_numbers = max_depth, max_numbers
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self, depth: int) -> int | None:
        value = self.term(depth)
        while value is not None and self.peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self.term(depth)
            if rhs is None:
                return None
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> int | None:
        value = self.factor(depth)
        while value is not None and self.peek() == "*":
            self.pos += 1
            rhs = self.factor(depth)
            if rhs is None:
                return None
            value = value * rhs
        return value

    def factor(self, depth: int) -> int | None:
        tok = self.peek()
        if tok is None:
            return None
        self.pos += 1
        if tok == "(":
            if depth >= self.max_depth:
                return None
            value = self.expr(depth + 1)
            if value is None or self.peek() != ")":
                return None
            self.pos += 1
            return value
        if tok[0].isdigit():
            self.numbers.append(int(tok))
            if self.max_numbers is not None and len(self.numbers) > self.max_numbers:
                return None
            return int(tok)
        return None


def _tokenize(text: str) -> list[str] | None:
    tokens: list[str] = []
    number = ""
    for ch in text:
        if "0" <= ch <= "9":
            number += ch
            continue
        if number:
            tokens.append(number)
            number = ""
        if ch in "+-*()":
            tokens.append(ch)
        elif ch != " ":
            return None
    if number:
        tokens.append(number)
    for tok in tokens:
        if tok[0].isdigit() and (
            len(tok) > _MAX_LITERAL_DIGITS or (len(tok) > 1 and tok[0] == "0")
        ):
            return None
    return tokens


def parse_expression(
    text: str, *, max_chars: int = 64, max_depth: int = 16, max_numbers: int | None = None
) -> tuple[int, list[int]] | None:
    """Evaluate an arithmetic expression safely (no ``eval``): non-negative integer
    literals, ``+ - *``, parentheses, spaces between tokens; usual precedence, left to
    right. Returns ``(value, numbers used in order)``, or None when ``text`` is not such an
    expression: a unary minus, ``/``, ``**``, a literal with a leading zero (``"07"``),
    unbalanced parentheses, more than ``max_chars`` characters, parentheses nested deeper
    than ``max_depth`` or more than ``max_numbers`` literals.

    >>> parse_expression("2+3*4"), parse_expression("(2+3)*4"), parse_expression("7-2-1")
    ((14, [2, 3, 4]), (20, [2, 3, 4]), (4, [7, 2, 1]))
    >>> parse_expression("2*-3") is None, parse_expression("((1)") is None
    (True, True)
    """
    if not isinstance(text, str) or not text or len(text) > max_chars:
        return None
    tokens = _tokenize(text)
    if not tokens:
        return None
    parser = _ExpressionParser(tokens, max_depth, max_numbers)
    value = parser.expr(0)
    if value is None or parser.pos != len(tokens):
        return None
    return value, parser.numbers


_PREC = {"+": 1, "-": 1, "*": 2}


def _combine(a: tuple[int, str, int], b: tuple[int, str, int], op: str) -> tuple[int, str, int]:
    """Join two (value, text, precedence) expressions with minimal parentheses."""
    p = _PREC[op]
    left = f"({a[1]})" if a[2] < p else a[1]
    right = f"({b[1]})" if b[2] < p or (op == "-" and b[2] == p) else b[1]
    value = a[0] + b[0] if op == "+" else a[0] - b[0] if op == "-" else a[0] * b[0]
    return value, f"{left}{op}{right}", p


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
    ALPHABET = _alphabet(DIGITS, "+-*(),>:")
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
            values = [_parse_uint(x) for x in nums.split(",")]
            t = _parse_uint(target)
            if t is not None and values and all(v is not None for v in values):
                return values, t  # type: ignore[return-value]
        raise _bad_prompt("countdown", prompt, "3,5,7>22:")

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
                        found = search([*rest, _combine(items[i], items[j], op)])
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
    _check_int("num_prompts", num_prompts, 1)
    _check_int("numbers", numbers, 2, _MAX_COUNTDOWN_NUMBERS, "numbers per prompt")
    _check_int("max_number", max_number, 1, _MAX_COUNTDOWN_VALUE, "largest number drawn")

    def draw(rng: random.Random) -> tuple[str, str] | None:
        nums = [rng.randint(1, max_number) for _ in range(numbers)]
        pool = [(n, str(n), 3) for n in nums]
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            new = _combine(pool[i], pool[j], rng.choice("+-*"))
            pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [new]
        target, text, _ = pool[0]
        if target < 1 or target in nums or len(str(target)) > _MAX_LITERAL_DIGITS:
            return None
        return f"{','.join(map(str, sorted(nums)))}>{target}:", text

    pairs = _distinct(num_prompts, draw, random.Random(seed), "countdown")
    return CountdownTask(
        [p for p, _ in pairs],
        [a for _, a in pairs],
        numbers=numbers,
        max_number=max_number,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------
# factor (card 1 at LM scale)
# ------------------------------------------------------------------------------------------
def primes_below(n: int) -> list[int]:
    """Primes ``p < n`` (sieve of Eratosthenes).

    >>> primes_below(20)
    [2, 3, 5, 7, 11, 13, 17, 19]
    """
    if n <= 2:
        return []
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for p in range(2, math.isqrt(n - 1) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytearray(len(range(p * p, n, p)))
    return [i for i in range(n) if sieve[i]]


def prime_factors(n: int) -> list[int]:
    """Distinct prime factors of ``n >= 2``, ascending (trial division: fine below ~1e12).

    >>> prime_factors(123457), prime_factors(3 * 3 * 7)
    ([123457], [3, 7])
    """
    if n < 2:
        raise ValueError(f"prime_factors needs n >= 2, got {n}")
    out: list[int] = []
    d = 2
    while d * d <= n:
        if n % d == 0:
            out.append(d)
            while n % d == 0:
                n //= d
        d += 1 if d == 2 else 2
    if n > 1:
        out.append(n)
    return out


class FactorTask(TextTask):
    """Name a nontrivial divisor of N (card 1's LM-scale task): prompt ``"N="`` (e.g.
    ``"123459="``), reference answer the smallest prime factor of N.

    Score 1.0 iff the stripped completion is a canonical decimal integer ``d`` (ASCII
    digits only, no sign, no leading zero, at most as many digits as N) with ``1 < d < N``
    and ``N % d == 0``. Any such divisor counts, prime or not; ``"1"``, ``"N"``,
    non-divisors and anything with trailing text (``"3x"``, ``"3 7"``) score 0.0.

    :meth:`sft_examples` pairs each sampled prompt with a *uniformly random distinct prime
    factor* of N (large ones included), not the reference answer: a model that cannot
    test divisibility then learns one answer distribution shared by all N, the strategy
    bandit inside a real task, and RL sharpens it into the pass@k crossover (card 1).
    Alphabet: ``"0123456789="``.

    Every N must be composite (a prime has no divisor ``1 < d < N``) and below 10^12.

    >>> task = FactorTask(["123459="])
    >>> task.answers, task.prime_factors(0)
    (['3'], [3, 7, 5879])
    >>> [task.score("123459=", c) for c in ["3", "21", "5879", "123459", "1", "2", "3x"]]
    [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """

    task_name = "factor"
    ALPHABET = _alphabet(DIGITS, "=")
    _MAX_N_DIGITS = 12

    def __init__(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        *,
        digits: int = 6,
        max_prime: int = 50,
        allow_even_and_5: bool = False,
        seed: int = 0,
    ) -> None:
        prompts = list(prompts)
        self._n = {p: self.parse_prompt(p) for p in prompts}
        self._factors: dict[int, list[int]] = {}
        expected = []
        for p in prompts:
            n = self._n[p]
            spf = _smallest_prime_factor(n)
            if spf == n:
                raise ValueError(
                    f"factor prompt {p!r}: {n} is prime, so no completion can score (a divisor d "
                    "with 1 < d < N is needed); use composite N"
                )
            expected.append(str(spf))
        super().__init__(
            prompts, _resolve_answers("factor", prompts, answers, expected), alphabet=self.ALPHABET
        )
        self.digits, self.max_prime, self.seed = digits, max_prime, seed
        self.allow_even_and_5 = allow_even_and_5

    @classmethod
    def parse_prompt(cls, prompt: str) -> int:
        """``"123459="`` -> ``123459``; ``ValueError`` for anything else."""
        if (
            isinstance(prompt, str)
            and prompt.endswith("=")
            and len(prompt) <= cls._MAX_N_DIGITS + 1
        ):
            n = _parse_uint(prompt[:-1])
            if n is not None and n >= 2:
                return n
        raise _bad_prompt("factor", prompt, "123459=")

    def n(self, i: int) -> int:
        """N of prompt ``i``."""
        return self._n[self.prompt(i)]

    def prime_factors(self, i: int) -> list[int]:
        """Distinct prime factors of N of prompt ``i``, ascending (cached)."""
        n = self.n(i)
        if n not in self._factors:
            self._factors[n] = prime_factors(n)
        return self._factors[n]

    def score(self, prompt: str, completion: str) -> float:
        n = self._n.get(prompt)
        if n is None:
            n = self.parse_prompt(prompt)
        text = strip_completion(completion, len(str(n)))
        d = _parse_uint(text) if text else None
        return float(d is not None and 1 < d < n and n % d == 0)

    def sft_examples(
        self, n: int, generator: torch.Generator | None = None
    ) -> list[tuple[str, str]]:
        """``n`` pairs ``("N=", p)``: prompts uniform with replacement, ``p`` uniform over the
        distinct prime factors of N (multiplicity ignored: 9 = 3*3 gives "3" only).

        >>> task = FactorTask(["1155="])  # 3 * 5 * 7 * 11
        >>> sorted({c for _, c in task.sft_examples(200, torch.Generator().manual_seed(0))})
        ['11', '3', '5', '7']
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n (number of examples) must be an integer >= 0, got {n!r}")
        idx = torch.randint(self.num_prompts, (n,), generator=generator).tolist()
        u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        out = []
        for i, x in zip(idx, u):
            primes = self.prime_factors(i)
            out.append((self._prompts[i], str(primes[min(int(x * len(primes)), len(primes) - 1)])))
        return out

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {
            "n": [self._n[p] for p in self._prompts],
            "prime_factors": [self.prime_factors(i) for i in range(self.num_prompts)],
        }

    def get_config(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "answers": self.answers,
            "digits": self.digits,
            "max_prime": self.max_prime,
            "allow_even_and_5": self.allow_even_and_5,
            "seed": self.seed,
        }


def _smallest_prime_factor(n: int) -> int:
    if n % 2 == 0:
        return 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return d
        d += 2
    return n


def factor(
    num_prompts: int,
    digits: int = 6,
    max_prime: int = 50,
    seed: int = 0,
    allow_even_and_5: bool = False,
) -> FactorTask:
    """``num_prompts`` distinct N drawn uniformly among the ``digits``-digit composites with a
    prime factor below ``max_prime`` that are odd and not divisible by 5 (card 1's task).

    ``allow_even_and_5=True`` drops the last condition: the last digit then reveals the
    factors 2 and 5, RL finds a genuine per-problem gain and the pass@k crossover shrinks
    (card 1). Lengths at the defaults: prompt 7 characters, answer 1-6 (SFT answers may be
    large prime factors).

    How often each answer works: with ``max_prime=50``, 3 divides about 51% of the N and 7
    about 22%. Card 1 quotes 42% and 18%, the shares among *all* 6-digit composites that
    are odd and not divisible by 5 (``max_prime=1000``: every such composite has a prime
    factor below 1000).

    >>> task = factor(3, seed=0)
    >>> task.prompts, task.answers
    (['371493=', '970163=', '246039='], ['3', '23', '3'])
    """
    _check_int("num_prompts", num_prompts, 1)
    _check_int("digits", digits, 1, FactorTask._MAX_N_DIGITS, "digits of N")
    _check_int("max_prime", max_prime, 3, _MAX_PRIME, "bound of the small prime factor")
    if not isinstance(allow_even_and_5, bool):
        raise TypeError(f"allow_even_and_5 must be True or False, got {allow_even_and_5!r}")
    small = [p for p in primes_below(max_prime) if allow_even_and_5 or p not in (2, 5)]
    if not small:
        raise ValueError(
            f"max_prime={max_prime} leaves no allowed prime factor (2 and 5 are excluded unless "
            "allow_even_and_5=True); use max_prime >= 4"
        )
    lo, hi = _operand_range(digits)

    def ok(n: int) -> tuple[str, str] | None:
        if n < 4 or (not allow_even_and_5 and (n % 2 == 0 or n % 5 == 0)):
            return None
        for p in small:
            if n % p == 0 and n != p:
                return f"{n}=", str(_smallest_prime_factor(n))
        return None

    def everything() -> list[tuple[str, str]]:
        return [item for n in range(lo, hi + 1) if (item := ok(n)) is not None]

    pairs = _distinct(
        num_prompts,
        lambda rng: ok(rng.randint(lo, hi)),
        random.Random(seed),
        "factor",
        everything if digits <= 4 else None,
    )
    return FactorTask(
        [p for p, _ in pairs],
        [a for _, a in pairs],
        digits=digits,
        max_prime=max_prime,
        allow_even_and_5=allow_even_and_5,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------
TASKS = Registry("text task")
"""Name -> task generator (``fn(num_prompts, <difficulty>, seed) -> TextTask``). Add your
own with :func:`register_task`; :func:`make_task` also accepts ``"reasoning_gym:<dataset>"``."""


def register_task(name: str) -> Callable[[Any], Any]:
    """Decorator: make a task generator available to :func:`make_task` under ``name``."""
    if name.startswith(REASONING_GYM_PREFIX):
        raise ValueError(f"task names starting with {REASONING_GYM_PREFIX!r} are reserved")
    return TASKS.register(name)


for _name, _fn in (
    ("addition", addition),
    ("modular_sum", modular_sum),
    ("countdown", countdown),
    ("factor", factor),
):
    register_task(_name)(_fn)


def make_task(name: str, **kwargs: Any) -> TextTask:
    """Build a task by name: a :data:`TASKS` generator called with ``kwargs``, or
    ``"reasoning_gym:<dataset>"`` for :class:`rlnb.envs.reasoning_gym.ReasoningGymTask`
    (kwargs: ``size``, ``seed`` and the dataset's own options).

    >>> make_task("factor", num_prompts=2, digits=4, seed=1).prompts
    ['3051=', '9753=']
    >>> make_task("adition", num_prompts=2)
    Traceback (most recent call last):
    ...
    ValueError: unknown text task 'adition'; valid: addition, countdown, factor, modular_sum, reasoning_gym:<dataset name> (did you mean 'addition'?)
    """
    if isinstance(name, str) and name.startswith(REASONING_GYM_PREFIX):
        from rlnb.envs.reasoning_gym import ReasoningGymTask

        return ReasoningGymTask(name[len(REASONING_GYM_PREFIX) :], **kwargs)
    if name not in TASKS:
        raise unknown_name_error(
            "text task", name, [*TASKS, f"{REASONING_GYM_PREFIX}<dataset name>"]
        )
    fn = TASKS[name]
    _check_knobs(name, fn, kwargs)
    return fn(**kwargs)


def _check_knobs(name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """``ValueError`` for a keyword the generator does not take (listing the ones it does,
    with the closest) or a required one that is missing."""
    import difflib
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"text task {name!r} has no knob(s) {', '.join(map(repr, unknown))}; valid knobs: "
            f"{', '.join(valid)}{hint}"
        )
    missing = [k for k, p in params.items() if p.default is p.empty and k in valid
               and k not in kwargs]
    if missing:
        raise ValueError(
            f"text task {name!r} needs {', '.join(f'{k}=...' for k in missing)}; valid knobs: "
            f"{', '.join(valid)}"
        )
