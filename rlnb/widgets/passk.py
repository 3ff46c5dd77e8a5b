"""``PassKExplorer``: compare pass@k of runs or checkpoints, then read one problem's samples.

Give it per-problem counts of correct samples for each model (a base model, RL
checkpoints, runs with different settings) and how many samples were drawn. Pick models
and a k range: the figure is :func:`rlnb.viz.passk_curves` of
:func:`rlnb.probes.pass_at_k_curve`. Pick a problem: the samples recorded for it are
listed per model, each marked correct or incorrect. Problems where the models disagree
most come first in the list, because those are the ones that explain a crossover.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from rlnb.probes.passk import default_ks, pass_at_k, pass_at_k_curve
from rlnb.viz.passk import passk_curves
from rlnb.viz.training import PALETTE, color_map
from rlnb.widgets.display import bundle

__all__ = ["PassKExplorer"]

_TEXT_COLUMNS = ("completion", "text", "sample")


def _counts_from(results: Any, n: Any) -> tuple[dict[str, np.ndarray], list[Any], dict[str, Any]]:
    """Normalise ``results`` to ``{model: counts (P,)}``, problem ids and ``{model: n}``."""
    if isinstance(results, pd.DataFrame) and {"model", "problem", "correct"} <= set(results.columns):
        long = results
        wide = long.pivot_table(index="problem", columns="model", values="correct",
                                aggfunc="sum", sort=False)
        if wide.isna().any().any():
            missing = wide.columns[wide.isna().any()].tolist()
            raise ValueError(f"models {missing} lack counts for some problems; every model "
                             "needs one row per problem")
        models = list(dict.fromkeys(long["model"]))
        problems = list(wide.index)
        counts = {str(m): wide[m].to_numpy() for m in models}
        if n is None and "n" in long.columns:
            per = long.groupby("model", sort=False)["n"].agg(["min", "max"])
            if (per["min"] != per["max"]).any():
                n = {str(m): long[long["model"] == m].set_index("problem")["n"]
                     .reindex(problems).to_numpy() for m in models}
            else:
                n = {str(m): int(per.loc[m, "min"]) for m in models}
    elif isinstance(results, pd.DataFrame):  # wide: one column per model, one row per problem
        problems = list(results.index)
        counts = {str(m): results[m].to_numpy() for m in results.columns}
    elif isinstance(results, Mapping):
        counts = {str(m): np.asarray(c.detach().cpu() if hasattr(c, "detach") else c).ravel()
                  for m, c in results.items()}
        sizes = {m: c.size for m, c in counts.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"every model needs one count per problem; got sizes {sizes}")
        problems = list(range(next(iter(sizes.values()), 0)))
    else:
        raise TypeError(
            "results must be a dict {model: counts per problem}, a wide DataFrame (one column "
            "per model) or a long DataFrame with columns model, problem, correct; got "
            f"{type(results).__name__}"
        )
    if not counts or not problems:
        raise ValueError("results holds no models or no problems")
    if n is None:
        raise ValueError("n (samples drawn per problem) is needed: an int, or a dict per model; "
                         "a long DataFrame may carry it in an 'n' column")
    n_by_model = dict(n) if isinstance(n, Mapping) else {m: n for m in counts}
    missing = [m for m in counts if m not in n_by_model]
    if missing:
        raise KeyError(f"n has no entry for models {missing}")
    return counts, problems, {m: n_by_model[m] for m in counts}


def _samples_from(samples: Any) -> dict[str, dict[Any, list[tuple[str, bool]]]]:
    """Normalise ``samples`` to ``{model: {problem: [(text, correct), ...]}}``."""
    if samples is None:
        return {}
    out: dict[str, dict[Any, list[tuple[str, bool]]]] = {}
    if isinstance(samples, pd.DataFrame):
        text = next((c for c in _TEXT_COLUMNS if c in samples.columns), None)
        ok = "correct" if "correct" in samples.columns else "reward" if "reward" in samples.columns else None
        if text is None or ok is None or not {"model", "problem"} <= set(samples.columns):
            raise KeyError(
                "a samples DataFrame needs columns model, problem, a text column "
                f"({' or '.join(_TEXT_COLUMNS)}) and correct (or reward > 0); got "
                f"{list(samples.columns)}"
            )
        for row in samples.itertuples(index=False):
            r = row._asdict()
            good = bool(r[ok]) if ok == "correct" else float(r[ok]) > 0
            out.setdefault(str(r["model"]), {}).setdefault(r["problem"], []).append(
                (str(r[text]), good))
        return out
    for model, by_problem in samples.items():
        for problem, items in by_problem.items():
            rows = []
            for item in items:
                if isinstance(item, Mapping):
                    text = next((item[c] for c in _TEXT_COLUMNS if c in item), None)
                    good = item.get("correct", float(item.get("reward", 0)) > 0)
                else:
                    text, good = item
                rows.append((str(text), bool(good)))
            out.setdefault(str(model), {})[problem] = rows
    return out


class PassKExplorer:
    """Pick models and a k range, see their pass@k curves; pick a problem, read its samples.

    Args:
        results: correct samples per problem for each model, as

            - a dict ``{model: counts}`` with counts of shape ``(P,)`` (problems ``0..P-1``);
            - a wide DataFrame: one column per model, one row per problem (the index
              names the problems);
            - a long DataFrame with columns ``model, problem, correct`` (and optionally
              ``n``), one row per (model, problem).
        n: samples drawn per problem: an int, or a dict ``{model: n}`` (runs evaluated with
            different budgets). May be omitted when a long frame has an ``n`` column.
        samples: optional samples to drill into: ``{model: {problem: [(text, correct),
            ...]}}`` (items may also be dicts with ``completion``/``text`` and
            ``correct``/``reward``), or a DataFrame with columns ``model, problem,
            completion`` (or ``text``) and ``correct`` (or ``reward``, counted correct when
            > 0).
        max_samples: at most this many samples listed per model and problem.
        title: the figure title.

    Attributes: ``models`` (SelectMultiple), ``k_range`` (IntRangeSlider), ``problem``
    (Dropdown), ``figure`` (FigureWidget), ``samples_view`` (HTML), ``widget`` (the whole
    dashboard), ``curve`` (the pass@k frame on display).

    >>> ex = PassKExplorer({"base": [1, 3, 0], "rl": [4, 4, 0]}, n=4)
    >>> [t.name for t in ex.figure.data], ex.curve["k"].tolist()
    (['base', 'rl'], [1, 2, 4, 1, 2, 4])
    >>> ex.k_range.value = (1, 2); ex.curve["k"].tolist()
    [1, 2, 1, 2]

    Footgun: curves of models evaluated with different n are comparable only up to the
    smaller n; the k slider stops there.
    """

    def __init__(
        self,
        results: Any,
        n: int | Mapping[str, Any] | None = None,
        samples: Any = None,
        *,
        max_samples: int = 32,
        title: str | None = None,
    ) -> None:
        self.counts, self.problems, self.n = _counts_from(results, n)
        self.samples = _samples_from(samples)
        self.max_samples = int(max_samples)
        self.title = title
        names = list(self.counts)
        self.colors = color_map(names)
        self.n_max = int(min(np.min(v) for v in self.n.values()))
        if self.n_max < 1:
            raise ValueError(f"n must be >= 1 sample per problem, got {self.n}")
        for m, c in self.counts.items():
            if np.any(np.asarray(c) > np.asarray(self.n[m])) or np.any(np.asarray(c) < 0):
                raise ValueError(f"counts of model {m!r} must lie in [0, n]: c counts correct "
                                 "samples among the n drawn")

        self.models = W.SelectMultiple(options=names, value=tuple(names), description="models",
                                       rows=min(6, max(2, len(names))),
                                       layout=W.Layout(width="300px"))
        self.k_range = W.IntRangeSlider(value=(1, self.n_max), min=1, max=self.n_max,
                                        description="k range", continuous_update=False,
                                        layout=W.Layout(width="420px"))
        self.log_x = W.Checkbox(value=True, description="log k axis", indent=False)
        self.problem = W.Dropdown(options=self._problem_options(), description="problem",
                                  layout=W.Layout(width="560px"))
        self.samples_view = W.HTML()
        self.curve = pd.DataFrame()
        # built from the first figure, so the page draws it from the widget's first state
        # (the messages of later changes can land before the widget's code has loaded)
        self.figure = go.FigureWidget(self._fresh_figure())
        for w in (self.models, self.k_range, self.log_x):
            w.observe(lambda _: self._update_figure(), names="value")
        self.models.observe(lambda _: self._update_samples(), names="value")
        self.k_range.observe(lambda _: self._update_samples(), names="value")
        self.problem.observe(lambda _: self._update_samples(), names="value")
        self.widget = W.VBox([
            W.HBox([self.models, W.VBox([self.k_range, self.log_x])]),
            self.figure,
            self.problem,
            self.samples_view,
        ])
        self._update_samples()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return bundle(self.widget, [self.figure], **kwargs)

    # --- figure ---------------------------------------------------------------------
    def ks(self) -> list[int]:
        """The budgets plotted: powers of two inside the k range, plus its ends."""
        lo, hi = self.k_range.value
        return sorted({lo, hi, *(k for k in default_ks(self.n_max) if lo <= k <= hi)})

    def _fresh_figure(self) -> go.Figure:
        """The figure of the current controls (and :attr:`curve`, its frame)."""
        chosen = [m for m in self.counts if m in self.models.value]
        if chosen:
            self.curve = pass_at_k_curve({m: self.counts[m] for m in chosen},
                                         {m: self.n[m] for m in chosen}, self.ks())
            fresh = passk_curves(self.curve, log_x=self.log_x.value, title=self.title)
            for trace in fresh.data:  # keep each model's colour when others are hidden
                if trace.name in self.colors:
                    trace.line.color = self.colors[trace.name]
        else:
            self.curve = pd.DataFrame(columns=["model", "k", "pass_at_k"])
            fresh = go.Figure()
            fresh.update_layout(title="pick at least one model")
        return fresh

    def _update_figure(self) -> None:
        fresh = self._fresh_figure()
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.layout = fresh.layout
        self.figure.add_traces(list(fresh.data))

    # --- drill-down -----------------------------------------------------------------
    def _problem_options(self) -> list[tuple[str, int]]:
        """Dropdown entries, problems where the models' pass@1 differ most first."""
        rates = np.stack([np.asarray(self.counts[m], float) / np.asarray(self.n[m], float)
                          for m in self.counts])  # (M, P)
        spread = rates.max(0) - rates.min(0)
        order = np.argsort(-spread, kind="stable")
        options = []
        for i in order:
            counts = ", ".join(f"{m} {int(self.counts[m][i])}/{int(np.broadcast_to(self.n[m], rates.shape[1:])[i])}"
                               for m in self.counts)
            options.append((f"{self.problems[i]} — {counts}", int(i)))
        return options

    def _mark(self, ok: bool) -> str:
        return (f"<span style='color:{PALETTE[2] if ok else PALETTE[1]};font-weight:bold'>"
                f"{'✓' if ok else '✗'}</span>")

    def _samples_html(self, items: list[tuple[str, bool]]) -> str:
        """Each distinct completion once, with its count and verdict, most frequent first;
        the samples one per line behind a toggle. An empty completion reads "(empty)"."""
        def show(text: str) -> str:
            return html.escape(text) if text.strip() else "<i style='color:#888'>(empty)</i>"

        tally: dict[tuple[str, bool], int] = {}
        for text, ok in items:
            tally[(text, bool(ok))] = tally.get((text, bool(ok)), 0) + 1
        rows = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0][0]))
        mono = "font-family:monospace"
        table = "".join(
            f"<tr><td style='text-align:right;padding-right:8px'>{count}×</td>"
            f"<td>{self._mark(ok)}</td><td style='white-space:pre-wrap;{mono}'>{show(text)}</td></tr>"
            for (text, ok), count in rows[: self.max_samples])
        more = (f"<div style='color:#888'>… {len(rows) - self.max_samples} more distinct answers</div>"
                if len(rows) > self.max_samples else "")
        every = "".join(f"<div style='white-space:pre-wrap;{mono};margin:1px 0'>{self._mark(ok)} "
                        f"{show(text)}</div>" for text, ok in items[: self.max_samples])
        rest = (f"<div style='color:#888'>… {len(items) - self.max_samples} more</div>"
                if len(items) > self.max_samples else "")
        return (f"<div style='color:#555;margin-top:2px'>{len(rows)} distinct of {len(items)} "
                f"samples</div><table style='border-collapse:collapse'>{table}</table>{more}"
                f"<details><summary style='color:#555;cursor:pointer'>every sample</summary>"
                f"{every}{rest}</details>")

    def _update_samples(self) -> None:
        i = self.problem.value
        if i is None:
            self.samples_view.value = ""
            return
        problem = self.problems[i]
        k_hi = self.k_range.value[1]
        blocks = []
        for m in self.counts:
            if m not in self.models.value:
                continue
            n_i = int(np.broadcast_to(self.n[m], (len(self.problems),))[i])
            c_i = int(self.counts[m][i])
            k = min(k_hi, n_i)
            head = (f"<b style='color:{self.colors[m]}'>{html.escape(m)}</b>: {c_i}/{n_i} correct"
                    f" · pass@1 {pass_at_k(n_i, c_i, 1):.3f} · pass@{k} {pass_at_k(n_i, c_i, k):.3f}")
            items = self.samples.get(m, {}).get(problem)
            if items is None:
                body = "<div style='color:#888'>no samples recorded</div>" if self.samples else ""
            else:
                body = self._samples_html(items)
            blocks.append(f"<div style='margin:6px 0'>{head}{body}</div>")
        self.samples_view.value = (f"<div><b>problem {html.escape(str(problem))}</b>"
                                   + "".join(blocks) + "</div>")
