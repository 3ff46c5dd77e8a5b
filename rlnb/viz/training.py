"""Training curves from tidy run logs, and the house style every rlnb figure shares.

Style: :data:`PALETTE` (Okabe-Ito, readable by colour-blind readers and in greyscale print),
:data:`TEMPLATE` (white background, light grid, legend on top) and :func:`style_figure`.
Figures built here and in :mod:`rlnb.viz.passk` use them, so a notebook's figures look alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "PALETTE",
    "TEMPLATE",
    "add_line_with_band",
    "color_map",
    "rgba",
    "style_figure",
    "training_curves",
]

# --- STYLE ---------------------------------------------------------------------------

#: Okabe-Ito colours, reordered so the first two (base vs RL, the usual pair) contrast most.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: faint on white)
)

#: The plotly template of every rlnb figure (``fig.update_layout(template=TEMPLATE)``).
TEMPLATE = go.layout.Template(
    layout=go.Layout(
        font=dict(family="Inter, Helvetica, Arial, sans-serif", size=13, color="#222"),
        paper_bgcolor="white",
        plot_bgcolor="white",
        colorway=list(PALETTE),
        hovermode="x unified",
        margin=dict(l=70, r=25, t=80, b=55),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0),
        xaxis=dict(
            showgrid=True, gridcolor="#e6e6e6", zeroline=False, showline=True,
            linecolor="#888", ticks="outside", automargin=True,
        ),
        yaxis=dict(
            showgrid=True, gridcolor="#e6e6e6", zeroline=False, showline=True,
            linecolor="#888", ticks="outside", automargin=True,
        ),
    )
)

#: Opacity of the shaded band around a mean line.
BAND_ALPHA = 0.18


def rgba(hex_color: str, alpha: float) -> str:
    """``"#0072B2", 0.2 -> "rgba(0,114,178,0.2)"`` (plotly fills need an alpha)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def color_map(keys: Sequence[Any]) -> dict[Any, str]:
    """One palette colour per key, in order; cycles after eight keys."""
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(keys)}


def style_figure(fig: go.Figure, title: str | None = None, *, height: int | None = None) -> go.Figure:
    """Apply :data:`TEMPLATE` (and a title) to ``fig`` in place; returns it for chaining."""
    fig.update_layout(template=TEMPLATE)
    if title is not None:
        fig.update_layout(title=dict(text=title, x=0.015, xanchor="left", y=0.98, yanchor="top"))
    if height is not None:
        fig.update_layout(height=height)
    return fig


def _ordered_unique(values: pd.Series) -> list[Any]:
    return list(dict.fromkeys(values.tolist()))


def add_line_with_band(
    fig: go.Figure,
    x: Any,
    y: Any,
    *,
    name: str,
    color: str,
    lo: Any = None,
    hi: Any = None,
    row: int | None = None,
    col: int | None = None,
    showlegend: bool = True,
    mode: str = "lines",
    secondary_y: bool | None = None,
) -> None:
    """Add a line and, when ``lo``/``hi`` are given, a shaded band between them.

    The band is two traces (upper edge, then lower edge with ``fill="tonexty"``) grouped
    with the line in the legend, so clicking the legend entry hides all three.
    ``secondary_y=True`` draws them on the subplot's second y axis (one made with
    ``make_subplots(specs=[[{"secondary_y": True}]])``), for a metric in other units.
    """
    where = {} if row is None else {"row": row, "col": col}
    if secondary_y is not None:
        where["secondary_y"] = secondary_y
    if lo is not None and hi is not None:
        fig.add_trace(
            go.Scatter(
                x=x, y=hi, mode="lines", line=dict(width=0, color=color), name=f"{name} (band)",
                legendgroup=name, showlegend=False, hoverinfo="skip",
            ),
            **where,
        )
        fig.add_trace(
            go.Scatter(
                x=x, y=lo, mode="lines", line=dict(width=0, color=color), fill="tonexty",
                fillcolor=rgba(color, BAND_ALPHA), name=f"{name} (band)", legendgroup=name,
                showlegend=False, hoverinfo="skip",
            ),
            **where,
        )
    fig.add_trace(
        go.Scatter(
            x=x, y=y, mode=mode, line=dict(color=color, width=2), marker=dict(size=6),
            name=name, legendgroup=name, showlegend=showlegend,
        ),
        **where,
    )


# --- TRAINING CURVES -----------------------------------------------------------------


def _to_tidy(df: pd.DataFrame, metrics: Sequence[str] | None, x: str, color: str,
             band: str | None) -> pd.DataFrame:
    """A tidy ``(..., metric, value)`` frame from a tidy or a wide log."""
    if {"metric", "value"} <= set(df.columns):
        return df
    # Wide: one column per metric. Keep x, color, band and every non-numeric column as ids.
    ids = [c for c in (x, color, band) if c is not None and c in df.columns]
    if metrics is None:
        metrics = [
            c for c in df.columns
            if c not in ids and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        ]
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise KeyError(
            f"metrics {missing} are not columns of the wide frame (columns: {list(df.columns)}); "
            "a tidy frame needs 'metric' and 'value' columns instead"
        )
    ids += [c for c in df.columns if c not in ids and c not in metrics and not pd.api.types.is_numeric_dtype(df[c])]
    return df.melt(id_vars=ids, value_vars=list(metrics), var_name="metric", value_name="value")


def training_curves(
    df: pd.DataFrame,
    metrics: str | Sequence[str] | None = None,
    *,
    x: str = "step",
    color: str = "run",
    band: str | None = None,
    band_kind: str = "std",
    title: str | None = None,
    height_per_metric: int = 230,
) -> go.Figure:
    """One subplot row per metric against a shared x axis, one coloured line per ``color``.

    Accepts either layout of a run log:

    - tidy: columns ``run, step, metric, value`` (plus any extra columns such as ``seed``
      or a ``config`` label -- pass their names as ``color`` or ``band``);
    - wide: one numeric column per metric plus ``step`` and ``run`` (what
      ``DataFrame.pivot`` of the tidy log gives). Without ``metrics`` every numeric column
      other than ``x``/``color``/``band`` is plotted.

    Args:
        df: the log, tidy or wide as above.
        metrics: metric names to plot, in row order (a str for one); default all, in order
            of first appearance.
        x: the x column (``"step"``; also e.g. ``"samples"`` or ``"wall_time"``).
        color: the column whose values get one line and one colour each (``"run"``,
            ``"config"``, ``"beta"``...).
        band: a column to aggregate over, typically ``"seed"``: the line becomes the mean
            over it per (color, x), with a shaded band.
        band_kind: ``"std"`` (mean +/- one standard deviation) or ``"minmax"``.
        title: figure title.
        height_per_metric: pixels per subplot row.

    Returns:
        a ``go.Figure`` with ``len(metrics)`` rows; with a band each line has two extra
        band traces (the second with ``fill="tonexty"``).

    >>> log = pd.DataFrame({"run": "a", "step": [0, 1, 0, 1], "metric": ["loss"] * 2 + ["reward"] * 2,
    ...                     "value": [1.0, 0.5, 0.1, 0.4]})
    >>> fig = training_curves(log, ["loss", "reward"])
    >>> len(fig.data), fig.layout.yaxis2.title.text
    (2, 'reward')

    Footgun: several rows for one (color, x, metric) -- seeds, usually -- are an error
    unless ``band`` names the column that tells them apart; averaging them silently would
    hide the spread.
    """
    if band_kind not in ("std", "minmax"):
        raise ValueError(f"band_kind must be 'std' or 'minmax', got {band_kind!r}")
    if isinstance(metrics, str):
        metrics = [metrics]
    tidy = _to_tidy(df, metrics, x, color, band)
    for col in (x, "metric", "value") + ((band,) if band else ()):
        if col not in tidy.columns:
            raise KeyError(f"column {col!r} not in the frame (columns: {list(tidy.columns)})")
    if color not in tidy.columns:  # a single run without a label
        tidy = tidy.assign(**{color: "run"})
    if metrics is None:
        metrics = _ordered_unique(tidy["metric"])
    unknown = [m for m in metrics if m not in set(tidy["metric"])]
    if unknown:
        raise KeyError(f"metrics {unknown} not in the log; it has {_ordered_unique(tidy['metric'])}")
    if not metrics:
        raise ValueError("nothing to plot: the frame has no metrics")

    groups = _ordered_unique(tidy[color])
    colors = color_map(groups)
    fig = make_subplots(
        rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=None,
        vertical_spacing=min(0.08, 0.3 / max(len(metrics), 1)),
    )
    for row, metric in enumerate(metrics, start=1):
        sub = tidy[tidy["metric"] == metric]
        for g in groups:
            part = sub[sub[color] == g]
            if part.empty:
                continue
            name = str(g)
            if band is None:
                dup = part.duplicated(subset=[x], keep=False)
                if dup.any():
                    at = part.loc[dup, x].iloc[0]
                    raise ValueError(
                        f"several rows share ({color}={g!r}, {x}={at!r}) for metric {metric!r}: "
                        f"pass band='seed' (the column that tells them apart) to plot their "
                        f"mean with a band, or filter the frame"
                    )
                part = part.sort_values(x)
                add_line_with_band(fig, part[x], part["value"], name=name, color=colors[g],
                                   row=row, col=1, showlegend=row == 1)
                continue
            stats = part.groupby(x, sort=True)["value"].agg(["mean", "std", "min", "max", "count"])
            if band_kind == "std":
                spread = stats["std"].fillna(0.0)
                lo, hi = stats["mean"] - spread, stats["mean"] + spread
            else:
                lo, hi = stats["min"], stats["max"]
            add_line_with_band(fig, stats.index, stats["mean"], lo=lo, hi=hi, name=name,
                               color=colors[g], row=row, col=1, showlegend=row == 1)
        fig.update_yaxes(title_text=metric, row=row, col=1)
    fig.update_xaxes(title_text=x, row=len(metrics), col=1)
    if title is None and band is not None:
        title = f"mean over {band} ({'±1 std' if band_kind == 'std' else 'min-max'} band)"
    style_figure(fig, title, height=max(320, 90 + height_per_metric * len(metrics)))
    fig.update_layout(legend_title_text=color)
    return fig
