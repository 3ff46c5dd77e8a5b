"""Numbers as a reader should see them: counts as integers, no "-0.000", gaps explained.

:func:`format_number` writes one number (rounded, never a negative zero, optionally with its
sign); :func:`styled_table` shows a results frame with those rules applied per column, and
a dash where a value is missing, so a notebook's table never prints ``68.0``, ``-0.000``,
``44.6667`` or a bare ``NaN``. Say next to the table why a dash is there.

>>> format_number(-0.00004, 3), format_number(-0.00004, 3, signed=True), format_number(44.67, 0)
('0.000', '+0.000', '45')
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pandas as pd

__all__ = ["MISSING", "format_number", "styled_table"]

#: What a table shows where a value is undefined or missing (explain it beside the table).
MISSING = "—"


def format_number(value: Any, digits: int = 3, *, signed: bool = False, missing: str = MISSING) -> str:
    """``value`` rounded to ``digits`` decimals (``digits=0``: an integer), halves away from 0.

    A value that rounds to zero is written without a minus sign ("0.000", or "+0.000" with
    ``signed``); ``None`` and NaN become ``missing``. ``signed`` writes a + before positive
    numbers, for differences such as "pass@1 +0.012 over the baseline".
    """
    if value is None or pd.isna(value):
        return missing
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    # half away from zero on the decimal the float prints as (44.5 -> 45, 0.0125 -> 0.013)
    rounded = float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP))
    if rounded == 0:
        rounded = 0.0  # drops the sign of -0.0
    return f"{rounded:+.{digits}f}" if signed else f"{rounded:.{digits}f}"


def styled_table(
    df: pd.DataFrame,
    *,
    digits: int = 3,
    counts: Iterable[str] = (),
    signed: Iterable[str] = (),
    column_digits: dict[str, int] | None = None,
    missing: str = MISSING,
    caption: str | None = None,
) -> pd.io.formats.style.Styler:
    """A pandas ``Styler`` that shows ``df`` with :func:`format_number` per column.

    Numeric columns get ``digits`` decimals, those in ``counts`` none (counts and step
    numbers, even when a mean over seeds made them floats), those in ``column_digits``
    their own; ``signed`` columns carry a sign. Missing values show as ``missing``;
    ``caption`` goes under the table (the place to say why a value is missing). The frame
    itself is unchanged: ``styled.data`` is ``df``.
    """
    counts, signed = set(counts), set(signed)
    column_digits = dict(column_digits or {})
    unknown = (counts | signed | set(column_digits)) - set(df.columns)
    if unknown:
        raise KeyError(f"styled_table: no column(s) {sorted(unknown)} in the frame; "
                       f"its columns are {list(df.columns)}")
    formats = {}
    for column in df.columns:
        if not pd.api.types.is_numeric_dtype(df[column]) or pd.api.types.is_bool_dtype(df[column]):
            continue
        d = 0 if column in counts else column_digits.get(column, digits)
        formats[column] = (lambda v, d=d, s=column in signed: format_number(v, d, signed=s,
                                                                            missing=missing))
    styled = df.style.format(formats, na_rep=missing)
    if caption is not None:
        styled = styled.set_caption(caption).set_table_styles(
            [{"selector": "caption", "props": "caption-side: bottom; text-align: left; "
                                              "font-size: 0.9em; color: #555;"}])
    return styled
