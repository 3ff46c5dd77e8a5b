"""Plotly figures as functions of tidy DataFrames; nothing here calls ``.show()``.

- :class:`LiveFigure`, :class:`LivePlot` -- curves that grow while a run trains.
- :func:`training_curves` -- metrics over steps, one row per metric, mean and band over seeds.
- :func:`passk_curves` -- pass@k against k on a log2 axis, from ``pass_at_k_curve``.
- :func:`capability_radar` -- several runs compared on several final metrics.
- :func:`boundary_table`, :func:`entropy_heatstrip`, :func:`rank_trajectory` -- probe views.
- :func:`write_png`, :func:`write_html` -- export (PNG via kaleido and the system Chromium).
- :func:`decade_ticks` -- a log axis labelled at its decades, each label in full.
- :func:`styled_table`, :func:`format_number` -- tables: counts as integers, no "-0.000", "—" for missing.
- :func:`add_point_labels` -- point labels placed so that none collide.
- :data:`PALETTE`, :data:`TEMPLATE`, :func:`style_figure` -- the shared look;
  :data:`ENTROPY_COLORSCALE`, :data:`EOS_LABEL` -- every token view's entropy colours.
"""

from rlnb.viz.axes import decade_ticks, format_tick
from rlnb.viz.colors import ENTROPY_COLORSCALE, EOS_LABEL
from rlnb.viz.export import find_chromium, write_html, write_png
from rlnb.viz.gridworld import effective_horizon_bars, value_heatmap
from rlnb.viz.labels import add_point_labels, place_labels
from rlnb.viz.live import LiveFigure, LivePlot, Panel
from rlnb.viz.passk import passk_curves
from rlnb.viz.probes import boundary_table, entropy_heatstrip, rank_trajectory
from rlnb.viz.radar import capability_radar
from rlnb.viz.tables import MISSING, format_number, styled_table
from rlnb.viz.training import (
    PALETTE,
    TEMPLATE,
    add_line_with_band,
    color_map,
    style_figure,
    training_curves,
)

__all__ = [
    "ENTROPY_COLORSCALE",
    "EOS_LABEL",
    "MISSING",
    "LiveFigure",
    "LivePlot",
    "Panel",
    "PALETTE",
    "TEMPLATE",
    "add_line_with_band",
    "add_point_labels",
    "boundary_table",
    "capability_radar",
    "color_map",
    "decade_ticks",
    "effective_horizon_bars",
    "entropy_heatstrip",
    "find_chromium",
    "format_number",
    "format_tick",
    "passk_curves",
    "place_labels",
    "rank_trajectory",
    "style_figure",
    "styled_table",
    "training_curves",
    "value_heatmap",
    "write_html",
    "write_png",
]
