"""A capability radar: several runs compared on several final metrics at once."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from rlnb.viz.training import color_map, rgba, style_figure


def capability_radar(
    df: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: str = "run",
    normalise: bool = True,
    lower_is_better: Sequence[str] = (),
    title: str | None = None,
) -> go.Figure:
    """One polygon per ``by`` value over ``metrics`` (at least three axes).

    Args:
        df: tidy (``by, metric, value`` plus optional ``step``: the last step of each run
            is used, averaged over any other rows such as seeds) or wide (one row per
            ``by`` value, one column per metric).
        metrics: the axes, in order.
        normalise: rescale each metric to [0, 1] across the runs (min -> 0, max -> 1), so
            axes of different units share one radius; the hover text keeps raw values.
        lower_is_better: metrics to flip (1 - x after normalising), so that outward is
            always better, e.g. ``["kl"]``.
        title: figure title.

    >>> wide = pd.DataFrame({"run": ["grpo", "nsr"], "pass@1": [0.5, 0.3],
    ...                      "pass@256": [0.7, 0.99], "entropy": [0.1, 2.0]})
    >>> [t.name for t in capability_radar(wide, ["pass@1", "pass@256", "entropy"]).data]
    ['grpo', 'nsr']

    Footgun: normalised radii only rank runs against each other; a run at the rim is the
    best *of those shown*, not good in any absolute sense (set ``normalise=False``).
    """
    metrics = list(metrics)
    if len(metrics) < 3:
        raise ValueError(f"a radar needs at least 3 metrics, got {metrics}")
    if {"metric", "value"} <= set(df.columns):
        tidy = df[df["metric"].isin(metrics)]
        if "step" in tidy:
            last = tidy.groupby(by)["step"].transform("max")
            tidy = tidy[tidy["step"] == last]
        wide = tidy.pivot_table(index=by, columns="metric", values="value", aggfunc="mean")
    else:
        wide = df.groupby(by)[[m for m in metrics if m in df.columns]].mean()
    missing = [m for m in metrics if m not in wide.columns]
    if missing:
        raise KeyError(f"metrics {missing} are not in the frame; it has {sorted(wide.columns)}")
    raw = wide[metrics]
    radius = raw.copy()
    if normalise:
        span = (raw.max() - raw.min()).replace(0, 1.0)
        radius = (raw - raw.min()) / span
    for m in lower_is_better:
        radius[m] = (1.0 - radius[m]) if normalise else -radius[m]
    colours = color_map(list(radius.index))
    fig = go.Figure()
    for run, row in radius.iterrows():
        theta = [*metrics, metrics[0]]
        r = [*row.tolist(), row.iloc[0]]
        text = [f"{m}: {raw.loc[run, m]:.4g}" for m in theta]
        fig.add_trace(go.Scatterpolar(r=r, theta=theta, name=str(run), text=text,
                                      hoverinfo="name+text", fill="toself",
                                      line=dict(color=colours[run]),
                                      fillcolor=rgba(colours[run], 0.12)))
    fig.update_layout(polar=dict(radialaxis=dict(range=[0, 1.05] if normalise else None,
                                                 showticklabels=not normalise)))
    return style_figure(fig, title)
