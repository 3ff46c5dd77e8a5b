"""Plotly figures as functions of tidy DataFrames; nothing here calls ``.show()``.

- :func:`training_curves` -- metrics over steps, one row per metric, mean and band over seeds.
- :func:`passk_curves` -- pass@k against k on a log2 axis, from ``pass_at_k_curve``.
- :func:`write_png`, :func:`write_html` -- export (PNG via kaleido and the system Chromium).
- :data:`PALETTE`, :data:`TEMPLATE`, :func:`style_figure` -- the shared look.
"""

from rlnb.viz.export import find_chromium, write_html, write_png
from rlnb.viz.passk import passk_curves
from rlnb.viz.training import (
    PALETTE,
    TEMPLATE,
    add_line_with_band,
    color_map,
    style_figure,
    training_curves,
)

__all__ = [
    "PALETTE",
    "TEMPLATE",
    "add_line_with_band",
    "color_map",
    "find_chromium",
    "passk_curves",
    "style_figure",
    "training_curves",
    "write_html",
    "write_png",
]
