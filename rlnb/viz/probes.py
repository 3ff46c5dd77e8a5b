"""Figures of the probes: boundary categories, per-token entropy over text, rank dynamics.

Each is a function of the frame or arrays a probe returns, and returns a
``plotly.graph_objects.Figure``; nothing here calls ``.show()``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from rlnb.viz.colors import ENTROPY_COLORSCALE, token_label
from rlnb.viz.training import PALETTE, style_figure, training_curves

__all__ = ["boundary_table", "entropy_heatstrip", "rank_trajectory"]

CATEGORY_COLORS = {
    "both": "#999999",
    "base only": PALETTE[0],  # the base model's colour in passk_curves
    "rl only": PALETTE[1],  # the RL model's colour
    "neither": "#dddddd",
}


#: A bar segment under this share of its bar shows its number beside the bar.
SMALL_SEGMENT = 0.08


def boundary_table(df: pd.DataFrame, *, fraction: bool = False, title: str | None = None) -> go.Figure:
    """Stacked bars of the boundary categories at each budget k.

    Args:
        df: the ``summary`` of :func:`rlnb.probes.boundary` (columns ``k, category, count,
            fraction``) -- or its ``per_problem`` frame (columns ``k, category``), which is
            counted here.
        fraction: plot fractions of the problems instead of counts.
        title: figure title.

    Returns:
        a ``go.Figure`` with one bar trace per category (both, base only, rl only, neither),
        x = k as categories.

    >>> from rlnb.probes import boundary
    >>> _, summary = boundary([4, 1, 0], [4, 0, 2], n_base=4, n_rl=4, k=[1, 4])
    >>> [t.name for t in boundary_table(summary).data]
    ['both', 'base only', 'rl only', 'neither']

    Reading it: the "base only" block growing with k is card 1's shrinking boundary; the
    "rl only" block is what RL genuinely added.
    """
    if not {"k", "category"} <= set(df.columns):
        raise KeyError(
            f"boundary_table needs columns k, category (from rlnb.probes.boundary); got "
            f"{list(df.columns)}"
        )
    if "count" not in df.columns:  # a per-problem frame
        df = df.groupby(["k", "category"], observed=False).size().rename("count").reset_index()
        df["fraction"] = df["count"] / df.groupby("k")["count"].transform("sum")
    value = "fraction" if fraction else "count"
    if value not in df.columns:
        raise KeyError(f"column {value!r} missing; pass fraction={not fraction}")
    cats = [c for c in CATEGORY_COLORS if c in set(df["category"].astype(str))]
    cats += [c for c in dict.fromkeys(df["category"].astype(str)) if c not in cats]
    ks = sorted(df["k"].unique())
    values = {cat: df[df["category"].astype(str) == cat].set_index("k").reindex(ks)[value]
              .fillna(0).to_numpy(dtype=float) for cat in cats}
    totals = sum(values.values()) if values else np.zeros(len(ks))
    bottom = np.zeros(len(ks))
    fig = go.Figure()
    for cat in cats:
        y = values[cat]
        color = CATEGORY_COLORS.get(cat, PALETTE[len(fig.data) % len(PALETTE)])
        label = [f"{v:.2f}" if fraction else f"{int(round(v))}" for v in y]
        # a segment under SMALL_SEGMENT of its bar cannot hold its number: it goes beside
        # the bar, level with the segment, in the segment's colour
        small = (y > 0) & (y < SMALL_SEGMENT * np.maximum(totals, 1e-12))
        fig.add_trace(go.Bar(
            x=[str(k) for k in ks], y=y, name=cat, marker_color=color,
            text=["" if s else t for t, s in zip(label, small, strict=True)],
            textposition="inside", insidetextanchor="middle",
            hovertemplate=f"{cat}: %{{y}}<extra>k = %{{x}}</extra>",
        ))
        for j in np.flatnonzero(small):
            # x: the category index plus half a bar (plotly's bars fill 1 - bargap = 0.8)
            fig.add_annotation(x=j + 0.41, y=bottom[j] + y[j] / 2, text=label[j],
                               showarrow=False, xanchor="left", xshift=2,
                               font=dict(color="#666" if cat == "neither" else color, size=12))
        bottom = bottom + y
    fig.update_layout(barmode="stack", hovermode="closest", legend_title_text="solved by")
    fig.update_xaxes(title_text="k (samples per problem)", type="category")
    fig.update_yaxes(title_text="fraction of problems" if fraction else "problems")
    return style_figure(fig, title if title is not None else "Which model solves each problem")


def entropy_heatstrip(
    tokens: Sequence[Sequence[str]],
    entropy: Any,
    mask: Any = None,
    *,
    row_labels: Sequence[str] | None = None,
    max_entropy: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """Per-token entropy coloured over the completion text, one row per completion.

    Args:
        tokens: per completion, the strings of its tokens; ``tokens[i][t]`` sits at
            ``entropy[i, t]``. Rows may be shorter than T (the rest is blank).
        entropy: ``(N, T)`` per-token entropy (from :func:`rlnb.probes.token_entropy`).
        mask: ``(N, T)`` valid tokens; others are left uncoloured.
        row_labels: a label per row (e.g. reward), default ``"0", "1", ...``.
        max_entropy: top of the colour scale (e.g. ``log V``); default the largest value.
        title: figure title.

    Returns:
        a ``go.Figure`` with one ``go.Heatmap`` whose cells show the token text.

    >>> fig = entropy_heatstrip([["a", "b"], ["c"]], np.array([[0.1, 2.0], [0.5, 0.0]]),
    ...                         np.array([[1, 1], [1, 0]]))
    >>> fig.data[0].type, fig.data[0].text[1]
    ('heatmap', ['c', ''])

    Reading it: coloured cells are forking tokens, where the policy hesitates between
    continuations (:data:`rlnb.viz.colors.ENTROPY_COLORSCALE`: white at 0, vermillion at
    the top, as in :class:`rlnb.widgets.RolloutBrowser`); after RL most of a completion goes
    white and the coloured cells that remain mark the decisions still open. An
    end-of-sequence token reads ``EOS``.
    """
    h = np.asarray(entropy.detach().cpu() if hasattr(entropy, "detach") else entropy, float)
    if h.ndim != 2:
        raise ValueError(f"entropy must be (N, T), got shape {h.shape}")
    N, T = h.shape
    if len(tokens) != N:
        raise ValueError(f"tokens has {len(tokens)} rows but entropy has {N}")
    m = np.ones_like(h, bool) if mask is None else np.asarray(
        mask.detach().cpu() if hasattr(mask, "detach") else mask).astype(bool)
    if m.shape != h.shape:
        raise ValueError(f"mask {m.shape} must match entropy {h.shape}")
    text = []
    for i, row in enumerate(tokens):
        if len(row) > T:
            raise ValueError(f"row {i} has {len(row)} tokens but entropy has T = {T} columns")
        # EOS labelled (plotly drops "</s>" as a tag); other text escaped for plotly's HTML
        text.append([html.escape(token_label(str(s)), quote=False) for s in row]
                    + [""] * (T - len(row)))
    z = np.where(m, h, np.nan)
    labels = [str(i) for i in range(N)] if row_labels is None else [str(r) for r in row_labels]
    zmax = float(np.nanmax(z)) if max_entropy is None and np.isfinite(z).any() else max_entropy
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", y=labels, x=list(range(T)),
        colorscale=ENTROPY_COLORSCALE, zmin=0.0, zmax=zmax, colorbar=dict(title="entropy (nats)"),
        hovertemplate="row %{y}, token %{x}: %{text}<br>entropy %{z:.3f}<extra></extra>",
        xgap=1, ygap=2,
    ))
    fig.update_yaxes(autorange="reversed", title_text="completion", type="category",
                     showgrid=False)  # no line across the white (certain) cells
    fig.update_xaxes(title_text="token position", showgrid=False)
    style_figure(fig, title if title is not None else "Per-token entropy",
                 height=max(220, 120 + 28 * N))
    fig.update_layout(hovermode="closest")
    return fig


def rank_trajectory(
    df: pd.DataFrame,
    *,
    x: str | None = None,
    metrics: Sequence[str] | None = None,
    color: str | None = None,
    band: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Effective rank and its dynamics as lines, one subplot per metric.

    Args:
        df: ``rank_dynamics(...).prefixes`` (columns ``t, er, delta, era``), a concat of
            several with a label column (e.g. ``layer``), or a frame over training
            (``step, er, erv, era``, say from :func:`rlnb.probes.rank_by_layer` averaged per
            checkpoint).
        x: the x column; default ``t`` if present, else ``step``.
        metrics: default those of ``er, delta, era, erv`` present.
        color: the column with one line per value; default the first of ``layer, name,
            model, run`` present.
        band: a column to average over with a shaded band (e.g. ``row`` or ``seed``).
        title: figure title.

    >>> from rlnb.probes import rank_dynamics
    >>> import torch
    >>> fig = rank_trajectory(rank_dynamics(torch.randn(32, 8), stride=4).prefixes)
    >>> fig.layout.yaxis.title.text, fig.layout.yaxis3.title.text
    ('er', 'era')

    Reading it: ER rising with t means the response keeps using new directions; ERV is its
    mean rise over earlier prefixes, ERA whether the rise is speeding up.
    """
    if x is None:
        x = "t" if "t" in df.columns else "step"
    if x not in df.columns:
        raise KeyError(f"x column {x!r} not in the frame (columns: {list(df.columns)})")
    if metrics is None:
        metrics = [m for m in ("er", "delta", "era", "erv") if m in df.columns]
    if not metrics:
        raise KeyError(f"no rank metrics (er, delta, era, erv) among the columns {list(df.columns)}")
    if color is None:
        color = next((c for c in ("layer", "name", "model", "run") if c in df.columns), "run")
    keep = [c for c in (x, color, band) if c is not None and c in df.columns]
    wide = df[keep + [m for m in metrics if m not in keep]]
    return training_curves(wide, list(metrics), x=x, color=color, band=band,
                           title=title if title is not None else "Effective rank")
