"""Log-axis ticks that read at a glance: labels at powers of ten, written out in full.

Plotly's default log axis labels minor ticks with a bare leading digit ("2", "5"), so a
reader cannot tell 0.5 from 0.05 without finding the nearest decade. :func:`decade_ticks`
labels decades only ("0.01", "0.1", "1"), marks 2 ... 9 times each decade with unlabelled
minor ticks, and falls back to 1-2-5 labels, each written in full, when the data span less
than one decade (a log axis with a single label cannot be read).

>>> fig.update_yaxes(type="log", **decade_ticks(tv_curves))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["decade_ticks", "format_tick"]


def format_tick(value: float) -> str:
    """A positive tick value in full, never a bare mantissa: ``0.05 -> "0.05"``, ``2e4 -> "20k"``.

    Between 1e-4 and 1e6 the number is written as a decimal (``k`` and ``M`` above 1000);
    outside that range in scientific notation (``"1e-6"``).
    """
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"a log-axis tick must be positive and finite, got {value!r}")
    exponent = math.floor(math.log10(value) + 1e-9)
    if exponent < -4 or exponent >= 7:
        mantissa = value / 10.0**exponent
        return f"{mantissa:.3g}e{exponent}"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= 10 * scale or (suffix == "M" and value >= scale):
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.{max(-exponent, 0) + 2}f}".rstrip("0").rstrip(".")


def _positive_range(values: tuple[Any, ...]) -> tuple[float, float]:
    flat = np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in values]) if values else []
    flat = np.asarray(flat, dtype=float)
    flat = flat[np.isfinite(flat) & (flat > 0)]
    if flat.size == 0:
        raise ValueError("decade_ticks needs at least one positive, finite value to place ticks")
    return float(flat.min()), float(flat.max())


def decade_ticks(*values: Any, minor: bool = True, max_labels: int = 8) -> dict:
    """Axis settings that label a log axis at its decades only, each label in full.

    ``values`` are the numbers the axis shows (arrays, lists or scalars; non-positive and
    non-finite ones are ignored, as a log axis cannot show them). Returns keyword arguments
    for ``fig.update_xaxes`` / ``update_yaxes``: ``tickvals`` and ``ticktext`` at every power
    of ten from just below the smallest value to just above the largest, and, with
    ``minor``, unlabelled minor ticks at 2 ... 9 times each decade. When fewer than two
    decades fall inside the data's range, the labels are 1, 2 and 5 times each decade,
    still written in full. Over more than ``max_labels`` decades every second (third, ...)
    decade is labelled.

    The footgun: pass the values the axis *draws* (bands included), not a summary of them,
    or the outer decades go unlabelled.

    >>> decade_ticks([0.004, 0.9])["ticktext"]
    ['0.001', '0.01', '0.1', '1']
    """
    lo, hi = _positive_range(values)
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    last = max(last, first + 1)
    exponents = range(first, last + 1)
    decades = [float(f"1e{k}") for k in exponents]
    inside = [d for d in decades if lo * (1 - 1e-9) <= d <= hi * (1 + 1e-9)]
    if len(inside) >= 2:
        major = decades[:: math.ceil(len(decades) / max_labels)]
    else:
        major = [float(f"{m}e{k}") for k in exponents for m in (1, 2, 5) if k < last or m == 1]
    settings: dict = {"tickmode": "array", "tickvals": major,
                      "ticktext": [format_tick(v) for v in major]}
    if minor:
        labelled = {round(math.log10(v), 9) for v in major}
        settings["minor"] = dict(
            tickmode="array", ticks="outside", ticklen=3, showgrid=False,
            tickvals=[v for k in exponents[:-1] for m in range(2, 10)
                      if round(math.log10(v := float(f"{m}e{k}")), 9) not in labelled],
        )
    return settings
