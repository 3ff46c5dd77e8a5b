"""``HiddenStatesExplorer``: pick a layer and a checkpoint, read its effective rank and
its probe score beside the other layers' and the other checkpoints'.

It draws results already computed (notebook 04: a rank frame with one row per checkpoint
and layer, and a probe frame with one row per checkpoint and layer probed); it trains and
captures nothing itself, so every control answers at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlnb.viz.training import PALETTE, style_figure
from rlnb.widgets.display import bundle

__all__ = ["HiddenStatesExplorer"]

_CHOSEN, _OTHER, _CONTROL = PALETTE[1], "#b8c4d6", "#888888"
_LAYER_COLUMNS = ("name", "layer")


def _layer_column(frame: pd.DataFrame, column: str | None, what: str) -> str:
    if column is not None:
        if column not in frame.columns:
            raise KeyError(f"{what} has no column {column!r} (columns: {list(frame.columns)})")
        return column
    found = next((c for c in _LAYER_COLUMNS if c in frame.columns), None)
    if found is None:
        raise KeyError(f"{what} needs a layer column, 'name' or 'layer' (the cache's names, "
                       f"e.g. 'layers.0.resid_post'); columns are {list(frame.columns)}")
    return found


class HiddenStatesExplorer:
    """A layer dropdown, a rank-metric dropdown and a checkpoint slider over computed
    results; two figures:

    - **rank**: the chosen layer's metric over the checkpoints (the other layers faint), a
      marker at the chosen checkpoint; and every layer's value at that checkpoint, the
      chosen layer highlighted;
    - **probe**: every probed layer's score at the chosen checkpoint (error bars from the
      ``error`` column; rows whose layer is no rank layer, such as a control, in grey),
      and the chosen layer's score over the probed checkpoints beside the controls'.

    Args:
        rank: one row per (checkpoint, layer): a ``step`` column, a layer column (``name``
            or ``layer``) and one numeric column per rank metric (notebook 04's
            ``rank_frame``: ``er per response``, ..., ``er across completions``).
        probes: optional, one row per (checkpoint, probed layer): ``step``, a layer column
            and the ``score`` column (notebook 04's ``probes``). Checkpoints without a
            probe say so on the probe figure.
        metrics: the rank columns offered (default: every numeric column but ``step``).
        layer, step, metric: shown first (default: the last layer, the last checkpoint,
            the first metric).
        score, error: the probe frame's score column and its spread (``error=None``: no
            error bars; a missing ``cv std`` column is no error).
        chance: a dashed reference line on the probe figure (0.5: AUROC of a coin); None
            for none.
        layer_column, probe_layer_column: the layer columns, when not ``name``/``layer``.

    Attributes: ``layer``, ``metric`` (Dropdowns), ``step`` (SelectionSlider),
    ``rank_figure``, ``probe_figure`` (FigureWidgets), ``widget``.

    >>> rank = pd.DataFrame({"step": [0, 0, 50, 50], "name": ["embed", "final_norm"] * 2,
    ...                      "er": [4.0, 3.0, 2.0, 2.5]})
    >>> ex = HiddenStatesExplorer(rank)
    >>> ex.step.value = 0; ex.rank_figure.data[-1].y.tolist()   # every layer at step 0
    [4.0, 3.0]

    Footgun: the figures compare what the frames hold. A rank over sequences of different
    lengths, or a probe whose control scores as well as the layer, says little about the
    representation (notebook 04's reading cells say why).
    """

    def __init__(self, rank: pd.DataFrame, probes: pd.DataFrame | None = None, *,
                 metrics: Sequence[str] | None = None, layer: str | None = None,
                 step: Any = None, metric: str | None = None, score: str = "cv AUROC",
                 error: str | None = "cv std", chance: float | None = 0.5,
                 layer_column: str | None = None,
                 probe_layer_column: str | None = None) -> None:
        if not isinstance(rank, pd.DataFrame):
            raise TypeError(f"rank must be a DataFrame (one row per checkpoint and layer), got "
                            f"{type(rank).__name__}")
        if rank.empty:
            raise ValueError("rank holds no rows: pass the frame of rank per step and layer")
        if "step" not in rank.columns:
            raise KeyError(f"rank needs a 'step' column (the checkpoint); columns are "
                           f"{list(rank.columns)}")
        self.layer_col = _layer_column(rank, layer_column, "rank")
        numeric = [c for c in rank.columns if c not in ("step", self.layer_col)
                   and pd.api.types.is_numeric_dtype(rank[c])]
        metrics = list(metrics) if metrics is not None else numeric
        unknown = [m for m in metrics if m not in numeric]
        if unknown:
            raise KeyError(f"metrics {unknown} are not numeric columns of rank "
                           f"(those are {numeric})")
        if not metrics:
            raise ValueError(f"rank has no numeric metric column besides 'step' (columns: "
                             f"{list(rank.columns)})")
        if rank.duplicated(["step", self.layer_col]).any():
            raise ValueError("rank has several rows for one (step, layer): average them first "
                             "(e.g. frame.groupby(['step', 'name']).mean())")
        self.rank = rank
        self.metrics = metrics
        self.layers = list(dict.fromkeys(rank[self.layer_col]))
        self.probes, self.probe_layer_col, self.score, self.error = self._check_probes(
            probes, score, error, probe_layer_column)
        steps = set(rank["step"]) | (set(self.probes["step"]) if self.probes is not None else set())
        self.steps = sorted(steps)
        self.chance = chance

        layer = self.layers[-1] if layer is None else layer
        if layer not in self.layers:
            raise ValueError(f"layer must be one of {self.layers}, got {layer!r}")
        step = self.steps[-1] if step is None else step
        if step not in self.steps:
            raise ValueError(f"step must be one of the checkpoints {self.steps}, got {step!r}")
        metric = self.metrics[0] if metric is None else metric
        if metric not in self.metrics:
            raise ValueError(f"metric must be one of {self.metrics}, got {metric!r}")

        self.layer = W.Dropdown(options=self.layers, value=layer, description="layer")
        self.metric = W.Dropdown(options=self.metrics, value=metric, description="rank")
        self.step = W.SelectionSlider(options=self.steps, value=step, description="checkpoint",
                                      continuous_update=True, layout=W.Layout(width="420px"))
        # built from the first figures, so the page draws them from the widgets' first state
        self.rank_figure = go.FigureWidget(self._rank())
        self.probe_figure = go.FigureWidget(self._probe() if self.probes is not None else None)
        children: list[Any] = [W.HBox([self.layer, self.metric, self.step]), self.rank_figure]
        if self.probes is not None:
            children.append(self.probe_figure)
        self.widget = W.VBox(children)
        for control in (self.layer, self.metric, self.step):
            control.observe(lambda _: self.update(), names="value")

    @staticmethod
    def _check_probes(probes: Any, score: str, error: str | None,
                      column: str | None) -> tuple[pd.DataFrame | None, str | None, str, str | None]:
        if probes is None:
            return None, None, score, None
        if not isinstance(probes, pd.DataFrame):
            raise TypeError(f"probes must be a DataFrame (one row per checkpoint and layer), "
                            f"got {type(probes).__name__}")
        if probes.empty:
            raise ValueError("probes holds no rows: pass None for no probe figure")
        layer_col = _layer_column(probes, column, "probes")
        missing = [c for c in ("step", score) if c not in probes.columns]
        if missing:
            raise KeyError(f"probes lacks columns {missing} (columns: {list(probes.columns)}); "
                           "name the score column with score=")
        if error is not None and error not in probes.columns:
            error = None
        return probes, layer_col, score, error

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return bundle(self.widget, [self.rank_figure, self.probe_figure], **kwargs)

    # --- the values on display ------------------------------------------------------------
    def rank_at(self, step: Any = None) -> pd.Series:
        """The chosen metric of every layer at ``step`` (default: the chosen checkpoint)."""
        step = self.step.value if step is None else step
        part = self.rank[self.rank["step"] == step].set_index(self.layer_col)
        return part[self.metric.value].reindex(self.layers)

    def probes_at(self, step: Any = None) -> pd.DataFrame:
        """The probe rows of ``step`` (default: the chosen checkpoint), in the frame's order."""
        if self.probes is None:
            return pd.DataFrame()
        step = self.step.value if step is None else step
        return self.probes[self.probes["step"] == step]

    # --- figures ---------------------------------------------------------------------------
    def update(self) -> None:
        """Redraw both figures for the chosen layer, metric and checkpoint."""
        self._replace(self.rank_figure, self._rank())
        if self.probes is not None:
            self._replace(self.probe_figure, self._probe())

    @staticmethod
    def _replace(widget: go.FigureWidget, fresh: go.Figure) -> None:
        with widget.batch_update():
            widget.data = ()
            widget.layout = fresh.layout
        widget.add_traces(list(fresh.data))

    def _rank(self) -> go.Figure:
        metric, chosen, step = self.metric.value, self.layer.value, self.step.value
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, column_widths=[0.6, 0.4],
                            subplot_titles=(f"{chosen}: {metric} over training",
                                            f"every layer at step {step}"))
        for name in self.layers:  # the other layers first, faint, so the chosen one is on top
            if name == chosen:
                continue
            part = self.rank[self.rank[self.layer_col] == name].sort_values("step")
            fig.add_trace(go.Scatter(x=part["step"], y=part[metric], mode="lines", name=name,
                                     line=dict(color=_OTHER, width=1.5), showlegend=False,
                                     hovertemplate=f"{name}: %{{y:.3f}} at step %{{x}}<extra></extra>"),
                          1, 1)
        part = self.rank[self.rank[self.layer_col] == chosen].sort_values("step")
        fig.add_trace(go.Scatter(x=part["step"], y=part[metric], mode="lines+markers",
                                 name=chosen, line=dict(color=_CHOSEN, width=3),
                                 showlegend=False), 1, 1)
        here = part[part["step"] == step]
        fig.add_trace(go.Scatter(x=here["step"], y=here[metric], mode="markers", showlegend=False,
                                 name=f"step {step}",
                                 marker=dict(size=14, color=_CHOSEN, symbol="circle-open",
                                             line=dict(width=3))), 1, 1)
        values = self.rank_at(step)
        fig.add_trace(go.Bar(x=self.layers, y=values.to_numpy(), showlegend=False, name=metric,
                             marker_color=[_CHOSEN if n == chosen else _OTHER for n in self.layers],
                             text=[f"{v:.2f}" if np.isfinite(v) else "" for v in values],
                             textposition="outside"), 1, 2)
        fig.update_xaxes(title_text="training step (checkpoint)", row=1, col=1)
        fig.update_xaxes(title_text="layer", row=1, col=2)
        fig.update_yaxes(title_text=metric, row=1, col=1)
        fig.update_yaxes(title_text=metric, row=1, col=2)
        style_figure(fig, f"Effective rank of the states: {metric}", height=400)
        fig.update_layout(width=1050, hovermode="closest")
        return fig

    def _probe(self) -> go.Figure:
        assert self.probes is not None and self.probe_layer_col is not None
        col, chosen, step = self.probe_layer_col, self.layer.value, self.step.value
        rows = self.probes_at(step)
        probed = sorted(set(self.probes["step"]))
        left = (f"every probe at step {step}" if len(rows)
                else f"no probe at step {step} (probed: {', '.join(map(str, probed))})")
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, column_widths=[0.45, 0.55],
                            subplot_titles=(left, f"{chosen}: {self.score} over training"
                                            if chosen in set(self.probes[col])
                                            else f"{chosen} was not probed; the others"))
        names = [str(n) for n in rows[col]]
        colors = [_CHOSEN if n == chosen else _OTHER if n in self.layers else _CONTROL
                  for n in rows[col]]
        err = (dict(type="data", array=rows[self.error].to_numpy(), color="#555")
               if self.error is not None else None)
        fig.add_trace(go.Bar(x=names, y=rows[self.score].to_numpy(), error_y=err,
                             marker_color=colors, showlegend=False, name=self.score,
                             text=[f"{v:.2f}" for v in rows[self.score]],
                             textposition="inside"), 1, 1)
        for name in dict.fromkeys(self.probes[col]):
            if name in self.layers and name != chosen:
                continue
            part = self.probes[self.probes[col] == name].sort_values("step")
            is_chosen = name == chosen
            fig.add_trace(go.Scatter(
                x=part["step"], y=part[self.score], mode="lines+markers", name=str(name),
                line=dict(color=_CHOSEN if is_chosen else _CONTROL, width=3 if is_chosen else 1.5,
                          dash="solid" if is_chosen else "dash")), 1, 2)
        if self.chance is not None:
            for c in (1, 2):
                fig.add_hline(y=self.chance, line=dict(color="#555", dash="dot", width=1),
                              row=1, col=c)
        fig.add_vline(x=step, line=dict(color=_CHOSEN, dash="dot", width=1), row=1, col=2)
        fig.update_xaxes(title_text="probed layer", row=1, col=1)
        fig.update_xaxes(title_text="training step (checkpoint)", row=1, col=2)
        fig.update_yaxes(title_text=self.score, row=1, col=1)
        fig.update_yaxes(title_text=self.score, row=1, col=2)
        style_figure(fig, f"Linear probe: {self.score} per layer"
                     + ("" if self.chance is None else f" (dotted: chance, {self.chance:g})"),
                     height=420)
        fig.update_layout(width=1050, hovermode="closest", margin=dict(t=115),
                          legend=dict(y=1.16))  # above the panel titles
        return fig
