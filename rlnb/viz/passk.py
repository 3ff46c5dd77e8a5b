"""pass@k curves: one line per model against k on a log2 axis (Yue et al. 2025, card 1)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from rlnb.viz.training import add_line_with_band, color_map, style_figure

__all__ = ["passk_curves"]


def _ordered_unique(values: pd.Series) -> list:
    return list(dict.fromkeys(values.tolist()))


def passk_curves(
    df: pd.DataFrame,
    *,
    log_x: bool = True,
    title: str | None = None,
    band_kind: str = "minmax",
) -> go.Figure:
    """pass@k against k, one line per model, on a log2 k axis.

    Args:
        df: the frame of :func:`rlnb.probes.pass_at_k_curve`: columns ``model, k,
            pass_at_k``; optional ``lo, hi`` (a bootstrap band, drawn shaded); optional
            ``seed`` (several training seeds: the line is the mean over seeds per
            (model, k) and the band spans the seeds -- min-max, or +/- one std with
            ``band_kind="std"``; ``lo, hi`` are then ignored).
        log_x: log axis with ticks at powers of two (the paper's view: the crossover sits
            at k of tens to hundreds). ``False`` for a linear k axis.
        title: figure title.
        band_kind: ``"minmax"`` or ``"std"``, for the band over seeds.

    Returns:
        a ``go.Figure``; y spans [0, 1] (a hair above, so a line at 1.0 is not clipped).

    >>> from rlnb.probes import pass_at_k_curve
    >>> curve = pass_at_k_curve({"base": [1, 3, 0], "rl": [4, 4, 0]}, n=4)
    >>> fig = passk_curves(curve)
    >>> fig.layout.xaxis.type, [t.name for t in fig.data]
    ('log', ['base', 'rl'])

    Reading it: the model on top at k=1 is the sharper one; where the lines cross, the
    other model's wider support starts to pay. Curves from different n are comparable only
    at k up to the smaller n.
    """
    missing = {"model", "k", "pass_at_k"} - set(df.columns)
    if missing:
        raise KeyError(
            f"passk_curves needs columns model, k, pass_at_k (from pass_at_k_curve); "
            f"missing {sorted(missing)}"
        )
    if band_kind not in ("std", "minmax"):
        raise ValueError(f"band_kind must be 'std' or 'minmax', got {band_kind!r}")
    models = _ordered_unique(df["model"])
    colors = color_map(models)
    fig = go.Figure()
    for model in models:
        part = df[df["model"] == model]
        lo = hi = None
        if "seed" in part.columns:
            stats = part.groupby("k", sort=True)["pass_at_k"].agg(["mean", "std", "min", "max"])
            k, y = stats.index.to_numpy(), stats["mean"]
            if band_kind == "std":
                spread = stats["std"].fillna(0.0)
                lo, hi = (y - spread).clip(0, 1), (y + spread).clip(0, 1)
            else:
                lo, hi = stats["min"], stats["max"]
        else:
            if part["k"].duplicated().any():
                raise ValueError(
                    f"model {model!r} has several rows per k: add a 'seed' column to average "
                    "over seeds, or give each curve its own model label"
                )
            part = part.sort_values("k")
            k, y = part["k"].to_numpy(), part["pass_at_k"]
            if {"lo", "hi"} <= set(part.columns):
                lo, hi = part["lo"], part["hi"]
        add_line_with_band(fig, k, y, lo=lo, hi=hi, name=str(model), color=colors[model],
                           mode="lines+markers")

    k_max = int(np.max(df["k"])) if len(df) else 1
    if log_x:
        ticks = [2**j for j in range(int(math.log2(max(k_max, 1))) + 1)]
        fig.update_xaxes(
            type="log", tickvals=ticks, ticktext=[str(t) for t in ticks],
            title_text="k (samples per problem, log scale)",
        )
    else:
        fig.update_xaxes(title_text="k (samples per problem)")
    fig.update_yaxes(range=[0, 1.02], tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0], title_text="pass@k")
    style_figure(fig, title if title is not None else "pass@k")
    fig.update_layout(legend_title_text="model", hovermode="x")
    return fig
