"""What the built-in text tasks share: their alphabets' digits, checked knobs, numbers
parsed out of prompts, distinct prompts drawn from a seeded generator, and reference
answers checked against the computed ones (:mod:`rlnb.envs.text_tasks`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from rlnb.checks import check_int

DIGITS = "0123456789"

# Longest integer literal a prompt or an expression may hold (keeps every parse cheap).
MAX_LITERAL_DIGITS = 18


def alphabet_of(*parts: str) -> str:
    """The distinct characters of ``parts``, sorted: a task's fixed alphabet."""
    return "".join(sorted(set("".join(parts))))


def check_knob(name: str, value: Any, minimum: int, maximum: int | None = None,
               meaning: str | None = None) -> int:
    """A generator's integer knob ``name``, checked to lie in ``[minimum, maximum]``."""
    return check_int(value, name, minimum, maximum, meaning=meaning)


def parse_uint(text: str, *, canonical: bool = True) -> int | None:
    """A non-negative decimal integer written in ASCII digits, or None. ``canonical``
    rejects leading zeros ("07"). ``str.isdigit`` alone would accept "²" and Arabic-Indic
    digits, which ``int`` then parses: check ASCII first."""
    if not text or len(text) > MAX_LITERAL_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    if canonical and len(text) > 1 and text[0] == "0":
        return None
    return int(text)


def bad_prompt(task: str, prompt: Any, example: str) -> ValueError:
    """The error for a string that is not a ``task`` prompt (shown cut to 60 characters)."""
    shown = prompt if not isinstance(prompt, str) or len(prompt) <= 60 else prompt[:60] + "..."
    return ValueError(f"{shown!r} is not a {task} prompt; expected the form {example!r}")


def distinct_pairs(
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


def resolve_answers(
    task: str, prompts: list[str], answers: Sequence[str] | None, expected: list[str]
) -> list[str]:
    """``answers`` when each equals the computed ``expected`` one (``ValueError`` naming the
    first wrong one), or ``expected`` when ``answers`` is None."""
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


def operand_range(digits: int) -> tuple[int, int]:
    """Numbers with exactly ``digits`` digits (0-9 for one digit)."""
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1

