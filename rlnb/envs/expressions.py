"""Arithmetic expressions without ``eval``: :func:`parse_expression` (what the countdown
task's verifier reads) and :func:`combine` (how its generator and solver write them, with
minimal parentheses)."""

from __future__ import annotations

from rlnb.envs.task_tools import MAX_LITERAL_DIGITS


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
            len(tok) > MAX_LITERAL_DIGITS or (len(tok) > 1 and tok[0] == "0")
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


PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def combine(a: tuple[int, str, int], b: tuple[int, str, int], op: str) -> tuple[int, str, int]:
    """Join two (value, text, precedence) expressions with minimal parentheses."""
    p = PRECEDENCE[op]
    left = f"({a[1]})" if a[2] < p else a[1]
    right = f"({b[1]})" if b[2] < p or (op == "-" and b[2] == p) else b[1]
    value = a[0] + b[0] if op == "+" else a[0] - b[0] if op == "-" else a[0] * b[0]
    return value, f"{left}{op}{right}", p

