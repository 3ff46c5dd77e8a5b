"""``InterventionExplorer``: one entropy intervention, the one knob that matters for it,
a short run through the Trainer, its entropy and reward over the baseline's (card 4).

Each intervention of notebook 06 changes one thing in PPO, and that thing has a size:
the upper clip of clip-higher, the fraction of tokens Clip-Cov detaches, the coefficient
of KL-Cov's penalty, the entropy bonus's coefficient. Pick one, set its size, press Run:
a real :class:`rlnb.train.Trainer` run (seconds on the tree MDP) is drawn over the
baseline's, which is trained once with the configuration as given.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlnb.policies import TabularPolicy
from rlnb.train import Trainer
from rlnb.train.config import TrainConfig
from rlnb.viz.training import PALETTE, style_figure
from rlnb.widgets.display import bundle

__all__ = ["INTERVENTION_KNOBS", "InterventionExplorer", "InterventionRun", "Knob"]

_BASELINE = "#000000"


@dataclass(frozen=True)
class Knob:
    """The slider of one intervention: which config field it sets, over which range."""

    field: str
    """The :class:`rlnb.train.TrainConfig` field the slider sets."""
    label: str
    """The slider's description."""
    min: float
    max: float
    step: float
    default: float | None
    """The slider's first value; None: the baseline config's value of ``field``."""
    changes: dict[str, Any] = field(default_factory=dict)
    """The other config changes that make the intervention (e.g. ``policy_loss``)."""
    readout: str = ".2f"


#: Card 4's interventions with their knob. The changes and defaults are those of
#: ``rlnb.recipes.ENTROPY_INTERVENTIONS`` (notebook 06's table): Clip-Cov detaches tokens
#: with covariance above 1 and no upper bound, KL-Cov treats the top 2% of tokens.
INTERVENTION_KNOBS: dict[str, Knob] = {
    "PPO": Knob("epsilon", "clip ε", 0.05, 0.5, 0.01, None),
    "clip-higher": Knob("epsilon_high", "upper clip ε_high", 0.1, 1.0, 0.02, 0.28),
    "Clip-Cov": Knob("clip_cov_ratio", "detached fraction", 0.005, 0.2, 0.005, 0.02,
                     {"policy_loss": "clip_cov", "clip_cov_ub": 1e9}, ".3f"),
    "KL-Cov": Knob("kl_cov_coef", "KL-Cov coef", 0.0, 10.0, 0.1, 1.0,
                   {"policy_loss": "kl_cov", "kl_cov_ratio": 0.02}),
    "entropy bonus": Knob("entropy_coef", "entropy coef", 0.0, 0.5, 0.01, 0.1, {}, ".3f"),
}


class InterventionRun(NamedTuple):
    """One trained run of the explorer."""

    intervention: str
    value: float
    """The knob's value (``config.<knob field>``)."""
    config: TrainConfig
    history: pd.DataFrame
    """The Trainer's metrics, one row per step."""
    seconds: float


class InterventionExplorer:
    """An intervention dropdown, the slider of its knob, a Run button with a progress bar,
    and two panels (reward, entropy per step) with the run drawn over the baseline's.

    Args:
        env: the sandbox (notebook 06: ``TreeMDP.random(...)``).
        config: the baseline, e.g. ``rlnb.recipes.tree_ppo_config(steps=60)`` (card 4's
            PPO: four epochs per batch, so the ratio leaves 1 and the clips can act). Every
            run is this config with the intervention's changes and the knob's value.
        policy: builds a fresh policy per run; default ``TabularPolicy.for_env(env)`` (the
            uniform start).
        knobs: the interventions offered (default :data:`INTERVENTION_KNOBS`).
        intervention: the one selected first.

    Attributes: ``intervention`` (Dropdown), ``knob`` (FloatSlider), ``run_button``,
    ``progress`` (IntProgress), ``status`` (HTML), ``figure`` (FigureWidget), ``widget``;
    ``baseline`` and ``current`` (:class:`InterventionRun`, None before the first Run) and
    ``runs`` (every run so far, by ``(intervention, value)``: a setting already trained is
    drawn again without retraining).

    >>> from rlnb.envs import TreeMDP
    >>> from rlnb.train import TrainConfig
    >>> import torch
    >>> env = TreeMDP.random(generator=torch.Generator().manual_seed(0))
    >>> base = TrainConfig(max_steps=3, num_prompts_per_step=4, num_generations=4,
    ...                    num_iterations=4, progress_bar=False)
    >>> ex = InterventionExplorer(env, base, intervention="entropy bonus")
    >>> ex.knob.value = 0.2; ex.run_button.click()     # trains the baseline, then the run
    >>> ex.current.config.entropy_coef, len(ex.current.history)
    (0.2, 3)

    Footgun: one seed, one short run. Two settings whose curves differ by less than the
    seed-to-seed spread (notebook 06's bands) are not different; use the notebook's sweep
    over seeds before concluding.
    """

    def __init__(self, env: Any, config: TrainConfig, *,
                 policy: Callable[[], Any] | None = None,
                 knobs: Mapping[str, Knob] | None = None,
                 intervention: str = "Clip-Cov") -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig (the baseline run, e.g. "
                            f"rlnb.recipes.tree_ppo_config(steps=60)), got {type(config).__name__}")
        config.validate()
        self.knobs = dict(INTERVENTION_KNOBS if knobs is None else knobs)
        if not self.knobs:
            raise ValueError("knobs is empty: offer at least one intervention")
        for name, k in self.knobs.items():
            if not hasattr(config, k.field):
                raise ValueError(f"intervention {name!r}: {k.field!r} is not a TrainConfig field")
        if intervention not in self.knobs:
            raise ValueError(f"intervention must be one of {list(self.knobs)}, got {intervention!r}")
        self.env, self.config = env, config
        self.policy = policy if policy is not None else (lambda: TabularPolicy.for_env(env))
        colors = [c for c in PALETTE if c != _BASELINE]
        self.colors = {name: colors[i % len(colors)] for i, name in enumerate(self.knobs)}
        self.runs: dict[tuple[str, float], InterventionRun] = {}
        self.baseline: InterventionRun | None = None
        self.current: InterventionRun | None = None

        self.intervention = W.Dropdown(options=list(self.knobs), value=intervention,
                                       description="intervention")
        self.knob = W.FloatSlider(continuous_update=False, style={"description_width": "120px"},
                                  layout=W.Layout(width="400px"))
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.progress = W.IntProgress(value=0, min=0, max=max(config.max_steps, 1),
                                      description="", layout=W.Layout(width="260px"))
        self.status = W.HTML()
        self.figure = self._empty_figure()
        self.widget = W.VBox([
            W.HBox([self.intervention, self.knob]),
            W.HBox([self.run_button, self.progress]),
            self.status, self.figure])
        self._set_knob()
        self.intervention.observe(lambda _: self._set_knob(), names="value")
        self.knob.observe(lambda _: self._say_waiting(), names="value")
        self.run_button.on_click(lambda _: self.run())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return bundle(self.widget, [self.figure], **kwargs)  # figures with their full state

    # --- configuration -------------------------------------------------------------------
    def config_for(self, intervention: str, value: float) -> TrainConfig:
        """The baseline config with ``intervention``'s changes and its knob at ``value``."""
        k = self.knobs[intervention]
        return self.config.replace(**{**k.changes, k.field: float(value)})

    def _default(self, name: str) -> float:
        k = self.knobs[name]
        if k.default is not None:
            return k.default
        value = getattr(self.config, k.field)
        return float(value if value is not None else self.config.epsilon)

    def _set_knob(self) -> None:
        """Point the slider at the chosen intervention's knob, at its default."""
        k, s = self.knobs[self.intervention.value], self.knob
        s.max = max(s.max, k.max)   # widen first: min may never exceed max in between
        s.min, s.max, s.step = k.min, k.max, k.step
        s.readout_format, s.description = k.readout, k.label
        s.value = min(max(self._default(self.intervention.value), k.min), k.max)
        self._say_waiting()

    # --- training ------------------------------------------------------------------------
    def _fit(self, config: TrainConfig, label: str) -> tuple[pd.DataFrame, float]:
        """One Trainer run of ``config`` from a fresh policy, the progress bar following it."""
        self.progress.max, self.progress.value = max(config.max_steps, 1), 0
        self.progress.description = label

        def tick(trainer: Trainer, metrics: dict[str, Any]) -> None:
            self.progress.value = trainer.step

        start = time.perf_counter()
        history = Trainer(self.policy(), self.env, config, callbacks=[tick]).train()
        return history, time.perf_counter() - start

    def run(self) -> InterventionRun:
        """Train the chosen setting (and, the first time, the baseline) and redraw."""
        name, value = self.intervention.value, float(self.knob.value)
        key = (name, round(value, 10))
        self.run_button.disabled = True
        try:
            if self.baseline is None:
                self.status.value = self._line("training the baseline (the config as given)…")
                history, seconds = self._fit(self.config, "baseline")
                self.baseline = InterventionRun("baseline", float("nan"), self.config, history,
                                                seconds)
            if key not in self.runs:
                config = self.config_for(name, value)
                if config == self.config:  # the baseline itself (PPO at its own clip)
                    history, seconds = self.baseline.history, self.baseline.seconds
                else:
                    self.status.value = self._line(f"training {html.escape(name)}…")
                    history, seconds = self._fit(config, name)
                self.runs[key] = InterventionRun(name, value, config, history, seconds)
            self.current = self.runs[key]
            self.progress.value = self.progress.max
        except Exception as error:
            self.status.value = self._line(
                f"<span style='color:{PALETTE[1]}'>{html.escape(repr(error))}</span>")
            raise
        finally:
            self.run_button.disabled = False
        self._draw()
        return self.current

    # --- figure --------------------------------------------------------------------------
    def _empty_figure(self) -> go.FigureWidget:
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
            "reward: fraction of the step's completions correct",
            "entropy of the sampled tokens (nats per token)"))
        for col, metric in ((1, "reward"), (2, "entropy")):
            fig.add_trace(go.Scatter(mode="lines", name="baseline (PPO)",
                                     line=dict(color=_BASELINE, width=3), legendgroup="baseline",
                                     showlegend=col == 1, x=[], y=[],
                                     hovertemplate=f"baseline {metric} %{{y:.3f}}<extra></extra>"),
                          1, col)
        for col, metric in ((1, "reward"), (2, "entropy")):
            fig.add_trace(go.Scatter(mode="lines", name="run", line=dict(width=2.5),
                                     legendgroup="run", showlegend=col == 1, x=[], y=[],
                                     hovertemplate=f"run {metric} %{{y:.3f}}<extra></extra>"),
                          1, col)
        steps = max(self.config.max_steps, 1)
        for col in (1, 2):
            fig.update_xaxes(title_text="training step", range=[0, steps], row=1, col=col)
        fig.update_yaxes(title_text="reward", range=[0, 1.02], row=1, col=1)
        fig.update_yaxes(title_text="entropy (nats)", rangemode="tozero", row=1, col=2)
        style_figure(fig, "Press Run: the chosen intervention against the baseline", height=420)
        fig.update_layout(width=1050, margin=dict(t=115),
                          legend=dict(y=1.16))  # above the panel titles
        return go.FigureWidget(fig)

    def _draw(self) -> None:
        b, r = self.baseline, self.current
        assert b is not None and r is not None
        k = self.knobs[r.intervention]
        label = f"{r.intervention}, {k.field} = {r.value:{k.readout}}"
        color = self.colors[r.intervention]
        with self.figure.batch_update():
            for trace, metric in zip(self.figure.data[:2], ("reward", "entropy"), strict=True):
                trace.x, trace.y = b.history["step"].to_numpy(), b.history[metric].to_numpy()
            for trace, metric in zip(self.figure.data[2:], ("reward", "entropy"), strict=True):
                trace.x, trace.y = r.history["step"].to_numpy(), r.history[metric].to_numpy()
                trace.name, trace.line.color = label, color
            self.figure.layout.title.text = f"{label} against the baseline (one seed)"
        self.status.value = self._line(self._summary(b, r, label))

    def _summary(self, b: InterventionRun, r: InterventionRun, label: str) -> str:
        def tail(run: InterventionRun, metric: str) -> float:
            return float(run.history[metric].tail(5).mean())

        return (f"<b style='color:{self.colors[r.intervention]}'>{html.escape(label)}</b> · "
                f"reward (last 5 steps) {tail(r, 'reward'):.3f} (baseline {tail(b, 'reward'):.3f}) · "
                f"entropy {tail(r, 'entropy'):.3f} (baseline {tail(b, 'entropy'):.3f}) · "
                f"{len(r.history)} steps in {r.seconds:.1f} s")

    def _say_waiting(self) -> None:
        k = self.knobs[self.intervention.value]
        shown = self.current is not None and (self.current.intervention, self.current.value) == (
            self.intervention.value, float(self.knob.value))
        if not shown:
            self.status.value = self._line(
                f"{html.escape(self.intervention.value)} with {k.field} = "
                f"{self.knob.value:{k.readout}}: press Run to train {self.config.max_steps} steps"
                + ("" if self.baseline is not None else " (and the baseline, once)"))

    @staticmethod
    def _line(text: str) -> str:
        return f"<div style='font-family:monospace;font-size:13px;margin:4px 0'>{text}</div>"
