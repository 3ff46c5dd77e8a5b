"""``LivePlot``: training curves that grow while the Trainer runs, as a Trainer callback.

A plotly ``FigureWidget`` (one row per metric) and a callback in one object::

    live = LivePlot(["reward", "entropy", "completions/mean_length"], every=5)
    display(live.figure)                        # in a notebook: the empty plot appears
    Trainer(policy, task, config, callbacks=[live]).train()   # ... and fills in

Every ``every`` steps (and at the last step of the run) the callback pushes the metrics
logged so far to the figure in one ``batch_update`` -- a single message to the browser,
so a fast loop does not flood it. Each metric is drawn twice: the raw per-step value
(thin, faint) and its running mean over the last ``smooth`` steps (thick): a reward
measured on 256 completions moves by several hundredths from step to step by chance
alone, and the running mean is what to read.

For a dashboard with Start / Pause / Stop and knobs, see :class:`rlnb.widgets.LiveTraining`;
this is the small piece for a notebook cell that just trains.

Headless (nbclient, a script) the widget simply is not displayed anywhere; updating it
costs microseconds, so leave the callback in. The callback runs in the training loop:
it must stay small, and it does (it appends a row; every ``every`` steps it copies a few
lists into the figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlnb.viz.training import PALETTE, rgba, style_figure

__all__ = ["LivePlot"]

#: Axis titles of the metrics the Trainer logs most often.
LABELS: dict[str, str] = {
    "reward": "reward",
    "entropy": "token entropy (nats)",
    "completions/mean_length": "completion length (tokens)",
    "kl": "KL to reference",
    "grad_norm": "gradient norm",
}


class LivePlot:
    """A live-updating figure of training metrics; call it as a Trainer callback.

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
        fig = make_subplots(rows=len(self.metrics), cols=1, shared_xaxes=True,
                            vertical_spacing=min(0.08, 0.3 / len(self.metrics)))
        for i, metric in enumerate(self.metrics, start=1):
            color = PALETTE[(i - 1) % len(PALETTE)]
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=f"{metric} (per step)",
                                     line=dict(color=rgba(color, 0.35), width=1),
                                     showlegend=False), row=i, col=1)
            if smooth > 1:
                fig.add_trace(go.Scatter(x=[], y=[], mode="lines",
                                         name=f"{metric} (mean of last {smooth})",
                                         line=dict(color=color, width=2.5), showlegend=False),
                              row=i, col=1)
            fig.update_yaxes(title_text=names.get(metric, metric), row=i, col=1)
        fig.update_xaxes(title_text="step", row=len(self.metrics), col=1)
        style_figure(fig, title, height=max(300, 90 + height_per_metric * len(self.metrics)))
        fig.update_layout(hovermode="x", margin=dict(t=60 if title else 30))
        self.figure = go.FigureWidget(fig)
        self._per_metric = 2 if smooth > 1 else 1

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
        if not self.rows:
            return
        frame = pd.DataFrame(self.rows)
        steps = frame["step"].tolist()
        with self.figure.batch_update():
            for i, metric in enumerate(self.metrics):
                values = frame[metric]
                j = i * self._per_metric
                self.figure.data[j].x, self.figure.data[j].y = steps, values.tolist()
                if self._per_metric == 2:
                    mean = values.rolling(self.smooth, min_periods=1).mean()
                    self.figure.data[j + 1].x = steps
                    self.figure.data[j + 1].y = np.round(mean.to_numpy(), 6).tolist()

    def frame(self) -> pd.DataFrame:
        """The recorded metrics, one row per step (wide)."""
        return pd.DataFrame(self.rows)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        from IPython.display import display

        display(self.figure)
