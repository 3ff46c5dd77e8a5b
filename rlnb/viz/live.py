"""Training curves that grow while a run trains: :class:`LiveFigure` and :class:`LivePlot`.

:class:`LiveFigure` is the one live figure of rlnb: panels of curves in a plotly
``FigureWidget``, one trace per run and metric, refreshed from the rows the runs log (the
Trainer's per-step dicts). :class:`rlnb.widgets.LiveTraining` draws its dashboard with it
(a grid of panels, one colour per run); :class:`LivePlot` wraps it as a Trainer callback
for a notebook cell that just trains (one panel per metric, stacked)::

    live = LivePlot(["reward", "entropy", "completions/mean_length"], every=5)
    display(live.figure)                        # in a notebook: the empty plot appears
    Trainer(policy, task, config, callbacks=[live]).train()   # ... and fills in

Each refresh sends the figure one ``batch_update`` -- a single message to the browser, so
a fast loop does not flood it. With ``smooth > 1`` each metric is drawn twice: the raw
per-step value (thin, faint) and its running mean over the last ``smooth`` steps (thick):
a reward measured on 256 completions moves by several hundredths from step to step by
chance alone, and the running mean is what to read.

Headless (nbclient, a script) the widget simply is not displayed anywhere; updating it
costs microseconds, so leave the callback in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlnb.viz.training import PALETTE, rgba, style_figure

__all__ = ["LABELS", "LiveFigure", "LivePlot", "Panel"]

#: Axis titles of the metrics the Trainer logs most often.
LABELS: dict[str, str] = {
    "reward": "reward",
    "entropy": "token entropy (nats)",
    "completions/mean_length": "completion length (tokens)",
    "kl": "KL to reference",
    "grad_norm": "gradient norm",
}

#: Line styles of the metrics that share a panel, in order.
DASHES = ("solid", "dash", "dot", "dashdot")


@dataclass(frozen=True)
class Panel:
    """One subplot: its title and the logged metrics it draws."""

    title: str
    metrics: tuple[str, ...]


class LiveFigure:
    """Panels of training curves that grow as rows arrive, for one run or several.

    Args:
        panels: the subplots (:class:`Panel`), in order.
        arrangement: ``"grid"`` -- titled panels, up to three in a row (four as 2 x 2),
            one colour per run and a legend of runs (a dashboard of runs); ``"stack"`` --
            one panel per row on a shared step axis, the title on the y axis, one colour
            per panel (one run's metrics).
        smooth: also draw the running mean over this many steps (1: raw values only).
        width: the figure's width in pixels (a ``FigureWidget`` drawn before it is
            attached to the page cannot measure it); None lets plotly choose.
        height: pixels (default from the number of panel rows).
        title: a figure title.

    Attributes:
        figure: the ``plotly.graph_objects.FigureWidget`` to display.

    >>> fig = LiveFigure([Panel("reward", ("reward",))])
    >>> fig.add_run("a")
    >>> fig.update("a", [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 1.0}])
    >>> list(fig.trace("a", "reward").y)
    [0.5, 1.0]
    """

    def __init__(self, panels: Sequence[Panel], *, arrangement: str = "grid", smooth: int = 1,
                 width: int | None = None, height: int | None = None,
                 title: str | None = None) -> None:
        if arrangement not in ("grid", "stack"):
            raise ValueError(f"arrangement must be 'grid' or 'stack', got {arrangement!r}")
        if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
            raise ValueError(f"smooth must be an integer >= 1, got {smooth!r}")
        self.panels = tuple(panels)
        if not self.panels:
            raise ValueError("a LiveFigure needs at least one panel")
        self.arrangement, self.smooth = arrangement, smooth
        self.width, self.height, self.title = width, height, title
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._traces: dict[str, dict[str, tuple[int, ...]]] = {}
        self.figure = self._build()

    # --- runs and rows ----------------------------------------------------------------
    @property
    def runs(self) -> list[str]:
        """The runs drawn, in the order they were added."""
        return list(self._traces)

    def add_run(self, run: str) -> None:
        """Add the (empty) traces of a run; a run already drawn is left as it is."""
        if run in self._traces:
            return
        self._rows.setdefault(run, [])
        self._add_traces(run)

    def update(self, run: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Draw ``rows`` (dicts with ``step`` and metric values; all the run's rows so
        far) as the run's curves, in one batched update. A metric a row lacks, or holds
        as a non-number, leaves a gap."""
        self.add_run(run)
        self._rows[run] = [dict(r) for r in rows]
        with self.figure.batch_update():
            self._draw(run)

    def trace(self, run: str, metric: str, *, smoothed: bool = False) -> go.Scatter:
        """The trace of ``metric`` for ``run`` (its running mean with ``smoothed``)."""
        indices = self._traces[run][metric]
        return self.figure.data[indices[1] if smoothed else indices[0]]

    def with_panels(self, panels: Sequence[Panel]) -> LiveFigure:
        """A new figure of the same kind with other panels, the runs so far redrawn (the
        caller shows its :attr:`figure` in place of this one's)."""
        other = LiveFigure(panels, arrangement=self.arrangement, smooth=self.smooth,
                           width=self.width, height=self.height, title=self.title)
        for run, rows in self._rows.items():
            other.update(run, rows)
        return other

    # --- drawing ----------------------------------------------------------------------
    def _columns(self) -> int:
        n = len(self.panels)
        return 1 if self.arrangement == "stack" else (n if n <= 3 else 2)

    def _build(self) -> go.FigureWidget:
        n, cols = len(self.panels), self._columns()
        rows = math.ceil(n / cols)
        if self.arrangement == "stack":
            fig = make_subplots(rows=n, cols=1, shared_xaxes=True,
                                vertical_spacing=min(0.08, 0.3 / n))
            for i, panel in enumerate(self.panels, start=1):
                fig.update_yaxes(title_text=panel.title, row=i, col=1)
            fig.update_xaxes(title_text="step", row=n, col=1)
            style_figure(fig, self.title, height=self.height or max(300, 90 + 190 * n))
            fig.update_layout(hovermode="x", margin=dict(t=60 if self.title else 30))
        else:
            fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in self.panels],
                                horizontal_spacing=0.08, vertical_spacing=0.2)
            for i in range(n):
                r, col = divmod(i, cols)
                fig.update_xaxes(title_text="step" if r == rows - 1 or i + cols >= n else None,
                                 row=r + 1, col=col + 1)
            height, top, bottom = self.height or 130 + 250 * rows, 80, 50
            style_figure(fig, self.title, height=height)
            fig.update_layout(margin=dict(l=60, r=20, t=top, b=bottom), hovermode="x",
                              legend=dict(orientation="h", x=0, xanchor="left",
                                          y=1 + 34 / (height - top - bottom),
                                          yanchor="bottom", title_text="run"))
            fig.update_annotations(font_size=13)
        if self.width is not None:
            fig.update_layout(width=self.width)
        return go.FigureWidget(fig)

    def _add_traces(self, run: str) -> None:
        cols, grid = self._columns(), self.arrangement == "grid"
        run_color = PALETTE[len(self._traces) % len(PALETTE)]
        index: dict[str, tuple[int, ...]] = {}
        for i, panel in enumerate(self.panels):
            r, col = divmod(i, cols)
            color = run_color if grid else PALETTE[i % len(PALETTE)]
            for j, metric in enumerate(panel.metrics):
                dash = DASHES[j % len(DASHES)]
                faint = self.smooth > 1
                raw = go.Scatter(
                    x=[], y=[], mode="lines", legendgroup=run if grid else None,
                    name=run if grid else f"{metric} (per step)",
                    showlegend=grid and i == 0 and j == 0,
                    line=dict(color=rgba(color, 0.35) if faint else color,
                              width=1 if faint else 2, dash=dash),
                    hovertemplate=f"{metric} %{{y:.4g}}<extra>{run}</extra>")
                self.figure.add_trace(raw, row=r + 1, col=col + 1)
                found = (len(self.figure.data) - 1,)
                if faint:
                    mean = go.Scatter(
                        x=[], y=[], mode="lines", legendgroup=run if grid else None,
                        name=f"{metric} (mean of last {self.smooth})", showlegend=False,
                        line=dict(color=color, width=2.5, dash=dash),
                        hovertemplate=f"{metric} mean %{{y:.4g}}<extra>{run}</extra>")
                    self.figure.add_trace(mean, row=r + 1, col=col + 1)
                    found += (len(self.figure.data) - 1,)
                index[metric] = found
        self._traces[run] = index

    def _draw(self, run: str) -> None:
        rows = self._rows[run]
        for metric, indices in self._traces[run].items():
            pts = [(r["step"], r[metric]) for r in rows
                   if isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
            steps, values = [p[0] for p in pts], [p[1] for p in pts]
            self.figure.data[indices[0]].x, self.figure.data[indices[0]].y = steps, values
            if len(indices) == 2:
                mean = pd.Series(values, dtype=float).rolling(self.smooth, min_periods=1).mean()
                self.figure.data[indices[1]].x = steps
                self.figure.data[indices[1]].y = np.round(mean.to_numpy(), 6).tolist()


class LivePlot:
    """A live-updating figure of one run's metrics; call it as a Trainer callback.

    Args:
        metrics: names of logged metrics (keys of the Trainer's per-step dict, e.g.
            ``"reward"``, ``"entropy"``, ``"completions/mean_length"``), one subplot row each.
        every: push to the figure every this many steps (the data is recorded at every
            step whatever ``every`` is).
        smooth: window of the running mean drawn over the raw values (1: raw only).
        labels: axis titles by metric name (default: :data:`LABELS`, else the name).
        title: figure title.
        height_per_metric: pixels per subplot row.

    Attributes:
        figure: the ``plotly.graph_objects.FigureWidget`` to display.
        rows: the recorded rows, ``{"step": ..., metric: value, ...}``.

    >>> live = LivePlot(["reward"], every=2, smooth=2)
    >>> class Fake:  # what the callback reads from a Trainer: step and config.max_steps
    ...     class config: max_steps = 3
    ...     step = 0
    >>> t = Fake()
    >>> for step, r in enumerate([0.0, 1.0, 0.5], start=1):
    ...     t.step = step
    ...     live(t, {"step": step, "reward": r})
    >>> list(live.figure.data[0].y), list(live.figure.data[1].y)  # raw, running mean
    ([0.0, 1.0, 0.5], [0.0, 0.5, 0.75])

    Footgun: a metric the Trainer does not log raises ``KeyError`` at the first step
    (listing the ones it does), not silently an empty panel.
    """

    RUN = "run"

    def __init__(
        self,
        metrics: Sequence[str] = ("reward", "entropy", "completions/mean_length"),
        every: int = 5,
        *,
        smooth: int = 10,
        labels: Mapping[str, str] | None = None,
        title: str | None = None,
        height_per_metric: int = 190,
    ) -> None:
        if isinstance(metrics, str):
            metrics = [metrics]
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("metrics is empty: name at least one logged metric, e.g. 'reward'")
        for name, v in (("every", every), ("smooth", smooth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.every, self.smooth = every, smooth
        self.rows: list[dict[str, float]] = []
        names = {**LABELS, **(labels or {})}
        self.live = LiveFigure(
            [Panel(names.get(m, m), (m,)) for m in self.metrics], arrangement="stack",
            smooth=smooth, title=title,
            height=max(300, 90 + height_per_metric * len(self.metrics)))
        self.live.add_run(self.RUN)

    @property
    def figure(self) -> go.FigureWidget:
        return self.live.figure

    # --- the callback ---------------------------------------------------------------------
    def __call__(self, trainer: Any, metrics: Mapping[str, Any]) -> None:
        missing = [m for m in self.metrics if m not in metrics]
        if missing:
            raise KeyError(
                f"LivePlot: metrics {missing} are not logged by this run; it logs "
                f"{sorted(k for k in metrics if not k.startswith('time/'))}"
            )
        self.rows.append({"step": metrics.get("step", trainer.step),
                          **{m: float(metrics[m]) for m in self.metrics}})
        last = getattr(getattr(trainer, "config", None), "max_steps", None)
        if trainer.step % self.every == 0 or (last is not None and trainer.step >= last):
            self.flush()

    def flush(self) -> None:
        """Push everything recorded so far to the figure (one batched update)."""
        if self.rows:
            self.live.update(self.RUN, self.rows)

    def frame(self) -> pd.DataFrame:
        """The recorded metrics, one row per step (wide)."""
        return pd.DataFrame(self.rows)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        from IPython.display import display

        display(self.figure)
