"""What every reproduction module in analysis/ provides, and the check record it returns.

A reproduction module defines::

    TITLE: str                      # the figure's title, with the paper
    CARD: int                       # the card number in shared/papers/cards.md
    PAPER: str                      # the paper's claim and headline number, as the card states them
    SHOWS: str                      # one paragraph: what this reproduction shows and what it does not
    def run(quick: bool = False, seed: int = 0) -> dict   # JSON-able results
    def figure(results: dict) -> plotly.graph_objects.Figure
    def checks(results: dict) -> list[Check]

``quick=True`` is the reduced budget the test suite uses; ``quick=False`` is the full
protocol of the card, run by ``make reproduce``.

``PAPER`` and ``SHOWS`` are printed beside our numbers in the report: the reader sees the
paper's claim, the toy's result and the limits of the comparison in one place. Criteria the
card marks *unvalidated* are ``Check(..., required=False)``; every check is judged on the
worst of at least three seeds.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Check:
    """One named pass/fail criterion: ``value <op> threshold``.

    ``required=False`` marks a criterion the paper card calls *unvalidated*: a proposal
    nobody had run. It is reported (as "not reproduced" when it fails) but does not fail
    the report or the tests, because the honest outcome of an unvalidated criterion may be
    that the toy does not show the effect.
    """

    name: str
    value: float
    op: str
    threshold: float
    description: str = ""
    required: bool = True

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {self.op!r}")

    @property
    def passed(self) -> bool:
        return bool(_OPS[self.op](self.value, self.threshold))

    @property
    def verdict(self) -> str:
        if self.passed:
            return "pass"
        return "FAIL" if self.required else "not reproduced"

    @property
    def ok(self) -> bool:
        """Passed, or an unvalidated criterion (which may honestly fail)."""
        return self.passed or not self.required

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict}

    def __str__(self) -> str:
        return f"[{self.verdict}] {self.name}: {self.value:.4g} {self.op} {self.threshold:.4g}"
