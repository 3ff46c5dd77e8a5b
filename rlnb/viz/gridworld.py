"""Gridworld figures: a value heatmap with the greedy policy's arrows, and the effective
horizon's ``H_k`` per ``k``. Functions of tensors and DataFrames; nothing here calls
``.show()``.

>>> import torch
>>> fig = value_heatmap("S.L\\n..G", torch.tensor([[0.5, 0.7, 0.0], [0.6, 1.0, 0.0]]),
...                     torch.tensor([[1, 2, -1], [1, 1, -1]]))
>>> len(fig.data), len(fig.layout.annotations) > 0
(1, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import torch

from rlnb.viz.training import PALETTE, rgba, style_figure

__all__ = ["effective_horizon_bars", "value_heatmap"]

_ARROWS = ("↑", "→", "↓", "←")
# cell character -> (fill colour, label)
_CELL_STYLE = {
    "#": ("#4d4d4d", ""),
    "L": (PALETTE[1], "L"),
    "G": (PALETTE[2], "G"),
    "g": (rgba(PALETTE[2], 0.45), "g"),
    "K": (None, "K"),
    "D": ("#8c6d31", "D"),
    "S": (None, "S"),
}


def _rows(layout: str | Sequence[str]) -> list[str]:
    if isinstance(layout, str):
        return [r for r in layout.strip("\n").split("\n")]
    return list(layout)


def value_heatmap(
    layout: str | Sequence[str],
    values: torch.Tensor,
    actions: torch.Tensor | None = None,
    *,
    title: str | None = None,
    value_name: str = "V*",
    zmin: float | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """Heatmap of ``values (H, W)`` over the map with walls, lava, goals, key and door
    drawn, and an arrow per cell for ``actions (H, W)`` (long, -1 = no arrow).

    Args:
        layout: the map's ASCII rows (``env.layout()``).
        values: one number per cell, e.g. ``env.grid_view(V*[:-1])`` at some step ``t``.
        actions: greedy action per cell (0 up, 1 right, 2 down, 3 left); arrows are not
            drawn on walls or terminal cells.
        title, value_name: figure title and colour-bar label.
        zmin, zmax: colour range (default: the values' range).

    Footgun: values of a finite-horizon MDP depend on the time step; a heatmap shows one
    step ``t`` (and one key bit / previous action), so say which in the title.
    """
    rows = _rows(layout)
    H, W = len(rows), len(rows[0])
    z = torch.as_tensor(values, dtype=torch.float64)
    if z.shape != (H, W):
        raise ValueError(f"values must have shape (height, width) = ({H}, {W}), got {tuple(z.shape)}")
    if actions is not None and tuple(actions.shape) != (H, W):
        raise ValueError(f"actions must have shape ({H}, {W}), got {tuple(actions.shape)}")
    zl = [[None if rows[r][c] == "#" else float(z[r, c]) for c in range(W)] for r in range(H)]
    text = [[f"row {r}, col {c}<br>{value_name} = {z[r, c]:.4g}" for c in range(W)] for r in range(H)]
    fig = go.Figure(go.Heatmap(
        z=zl, x=list(range(W)), y=list(range(H)), colorscale="Blues", zmin=zmin, zmax=zmax,
        colorbar=dict(title=value_name), text=text, hoverinfo="text", xgap=1, ygap=1,
    ))
    for r in range(H):
        for c in range(W):
            ch = rows[r][c]
            fill, label = _CELL_STYLE.get(ch, (None, ""))
            if fill is not None:
                fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5,
                              fillcolor=fill, line=dict(width=0), layer="above")
            if label:
                fig.add_annotation(x=c - 0.32, y=r - 0.3, text=f"<b>{label}</b>", showarrow=False,
                                   font=dict(size=11, color="white" if fill else "#222"))
            if actions is not None and ch not in "#GgL" and int(actions[r, c]) >= 0:
                fig.add_annotation(x=c, y=r, text=_ARROWS[int(actions[r, c])], showarrow=False,
                                   font=dict(size=20, color="#111"))
    fig.update_xaxes(showgrid=False, zeroline=False, tickmode="array", tickvals=list(range(W)),
                     title_text="column", constrain="domain")
    fig.update_yaxes(showgrid=False, zeroline=False, tickmode="array", tickvals=list(range(H)),
                     autorange="reversed", title_text="row", scaleanchor="x")
    style_figure(fig, title, height=max(320, 70 * H + 140))
    fig.update_layout(hovermode="closest")
    return fig


def effective_horizon_bars(per_k: pd.DataFrame, horizon: int, *, title: str | None = None) -> go.Figure:
    """Bars of ``H_k = k + log_A m_k`` per ``k`` (split into ``k`` and ``log_A m_k``), a
    dashed line at the horizon ``T``; ``k`` that do not work are marked. Takes
    ``EffectiveHorizon.frame()``."""
    df = per_k.copy()
    ok = df["works"].astype(bool)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=df["k"], y=df["k"].where(ok, 0), name="k (look-ahead)",
                         marker_color=PALETTE[0]))
    fig.add_trace(go.Bar(x=df["k"], y=df["log_m"].where(ok, 0), name="log_A m_k (rollouts)",
                         marker_color=PALETTE[4]))
    bad = df[~ok]
    if len(bad):
        fig.add_trace(go.Scatter(x=bad["k"], y=[0.5] * len(bad), mode="text", text=["✗"] * len(bad),
                                 name="greedy on Q^k not optimal", textfont=dict(size=18,
                                                                                color=PALETTE[1])))
    fig.add_hline(y=horizon, line_dash="dash", line_color="#555",
                  annotation_text=f"horizon T = {horizon}", annotation_position="top left")
    fig.update_layout(barmode="stack", xaxis_title="k  (Q^k = k - 1 optimal backups of Q_rand)",
                      yaxis_title="H_k")
    style_figure(fig, title, height=380)
    return fig
