"""Addition with the working written out: a text task whose completions are long enough for
per-token and per-prefix probes (card 7's effective rank over prefixes, for instance).

Prompt ``"47+38="``; the reference completion writes the columns from the units up, each
``x+y=s`` with the incoming carry appended as ``+1`` when there is one, separated by
``,``, then ``:`` and the sum::

    47+38=  ->  7+8=15,4+3+1=8:85
    97+38=  ->  7+8=15,9+3+1=13:135
    12+34=  ->  2+4=6,1+3=4:46

With 2-digit operands a completion is 14-19 characters (15-20 tokens with the EOS), where
plain :class:`~rlnb.envs.AdditionTask` answers are 2-3.

The score judges the result only: 1.0 iff the completion holds exactly one ``:`` and the
text after it is the canonical decimal sum. The working before the ``:`` is not checked
-- a completion with wrong (or no) working and the right sum scores 1.0, and right working
with a wrong sum scores 0.0; :meth:`WrittenAdditionTask.working_is_reference` tells
whether the working is the reference one, for analyses that want to look at it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rlnb.envs.task_tools import (
    DIGITS,
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
from rlnb.envs.text_tasks import register_task

__all__ = ["MAX_WRITTEN_DIGITS", "WrittenAdditionTask", "written_addition", "written_sum"]

#: Most digits per operand: a 4-digit prompt and its completion (at most 49 characters) fit
#: in the 64 positions of :func:`rlnb.policies.pretrain_base`'s default model.
MAX_WRITTEN_DIGITS = 4

SEPARATOR = ":"
"""What separates the working from the result in a completion."""


def written_sum(a: int, b: int) -> str:
    """The reference completion for ``a + b``: the columns from the units up, each
    ``"x+y=s"`` (``"x+y+1=s"`` with an incoming carry), joined by ``","``, then ``":"`` and
    the sum. The shorter operand is padded with zeros.

    >>> written_sum(47, 38)
    '7+8=15,4+3+1=8:85'
    >>> written_sum(5, 123)
    '5+3=8,0+2=2,0+1=1:128'
    """
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    xs, ys = str(a), str(b)
    width = max(len(xs), len(ys))
    xs, ys = xs.zfill(width)[::-1], ys.zfill(width)[::-1]
    columns, carry = [], 0
    for x, y in zip(xs, ys):
        s = int(x) + int(y) + carry
        columns.append(f"{x}+{y}" + ("+1" if carry else "") + f"={s}")
        carry = s // 10
    return ",".join(columns) + SEPARATOR + str(a + b)


class WrittenAdditionTask(TextTask):
    """Two-number addition with the column-by-column working: prompt ``"a+b="``, reference
    completion :func:`written_sum` ``(a, b)``, e.g. ``"7+8=15,4+3+1=8:85"``.

    Score 1.0 iff the stripped completion contains exactly one ``":"`` and what follows it
    is exactly the decimal sum (no sign, spaces or leading zeros); the working before it is
    **not** checked (see :meth:`working_is_reference`). Completions longer than twice the
    reference score 0.0 without being parsed. Alphabet: ``"+,0123456789:="``.

    >>> task = WrittenAdditionTask(["47+38="])
    >>> task.answers
    ['7+8=15,4+3+1=8:85']
    >>> [task.score("47+38=", c) for c in ("7+8=15,4+3+1=8:85", "wrong:85", "85", "7+8=15:84")]
    [1.0, 1.0, 0.0, 0.0]
    """

    task_name = "written_addition"
    ALPHABET = alphabet_of(DIGITS, "+=,", SEPARATOR)

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
        expected = [written_sum(a, b) for a, b in self._operands]
        super().__init__(
            prompts,
            resolve_answers("written_addition", prompts, answers, expected),
            alphabet=self.ALPHABET,
        )
        self.digits, self.seed = digits, seed

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[int, int]:
        """``"47+38="`` -> ``(47, 38)``; ``ValueError`` for anything else."""
        if isinstance(prompt, str) and prompt.endswith("=") and prompt.count("+") == 1:
            a, b = (parse_uint(x, canonical=False) for x in prompt[:-1].split("+"))
            if a is not None and b is not None:
                return a, b
        raise bad_prompt("written_addition", prompt, "47+38=")

    def _operands_of(self, prompt: str) -> tuple[int, int]:
        i = self._index.get(prompt)
        return self._operands[i] if i is not None else self.parse_prompt(prompt)

    def score(self, prompt: str, completion: str) -> float:
        a, b = self._operands_of(prompt)
        text = strip_completion(completion, 2 * len(written_sum(a, b)))
        if text is None or text.count(SEPARATOR) != 1:
            return 0.0
        return float(text.partition(SEPARATOR)[2] == str(a + b))

    def working_is_reference(self, prompt: str, completion: str) -> bool:
        """Whether the stripped completion's working (the text before its ``":"``) is the
        reference working of ``prompt``; False when there is no ``":"``. Not part of the
        score."""
        if not isinstance(completion, str) or SEPARATOR not in completion:
            return False
        a, b = self._operands_of(prompt)
        return (completion.strip().partition(SEPARATOR)[0]
                == written_sum(a, b).partition(SEPARATOR)[0])

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {"a": [a for a, _ in self._operands], "b": [b for _, b in self._operands]}

    def get_config(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "answers": self.answers, "digits": self.digits,
                "seed": self.seed}


@register_task("written_addition")
@seeded_generator("written_addition")
def written_addition(num_prompts: int, digits: int = 2, seed: int = 0) -> WrittenAdditionTask:
    """``num_prompts`` distinct problems ``"a+b="`` with ``a`` and ``b`` drawn uniformly among
    the ``digits``-digit numbers (0-9 when ``digits == 1``), answered with the written
    working (:func:`written_sum`). The same prompts as :func:`rlnb.envs.addition` with the
    same arguments.

    Lengths: prompt ``2 * digits + 2`` characters; completion at ``digits=2`` 14-19
    characters, in general ``7 * digits`` to ``10 * digits - 1``.

    >>> written_addition(2, digits=1, seed=1).answers
    ['2+9=11:11', '1+4=5:5']
    """
    check_knob("num_prompts", num_prompts, 1)
    check_knob("digits", digits, 1, MAX_WRITTEN_DIGITS, "digits per operand")
    lo, hi = operand_range(digits)
    count = hi - lo + 1

    def draw(rng: random.Random) -> tuple[str, str]:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return f"{a}+{b}=", written_sum(a, b)

    def everything() -> list[tuple[str, str]]:
        return [(f"{a}+{b}=", written_sum(a, b)) for a in range(lo, hi + 1)
                for b in range(lo, hi + 1)]

    small = count * count <= 4 * num_prompts
    pairs = distinct_pairs(num_prompts, draw, random.Random(seed), "written_addition",
                           everything if small else None)
    task = WrittenAdditionTask([p for p, _ in pairs], [a for _, a in pairs], digits=digits,
                               seed=seed)
    return mark_generated(task, "written_addition", num_prompts=num_prompts, digits=digits,
                          seed=seed)
