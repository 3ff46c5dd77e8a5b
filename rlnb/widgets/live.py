"""``LiveTraining``: train a policy from a dashboard and watch the curves move.

The dashboard wraps one :class:`rlnb.train.Trainer` at a time. Sliders and dropdowns set
the knobs that matter, Start / Pause / Stop drive the loop, and plotly ``FigureWidget``
panels (reward, entropy, KL when ``beta > 0``, exact pass@k when a callback logs it) grow
as the steps land.

When a knob takes effect:

- **next step** -- learning rate, temperature, beta, epsilon_high, entropy coef and the
  step budget. The worker thread copies them into ``trainer.config`` (and the optimiser's
  ``param_groups``) between two steps, so a step never sees half a change. Every logged
  row records the values it ran with (``learning_rate`` and ``knobs/*``).
- **restart** -- algorithm (the advantage estimator), group size and ``scale_rewards``
  change what one step *is* (the batch layout, the advantage formula), so they apply to
  the next run: press Stop, then Start. Every Start after a Stop (or after the run
  finished) builds a fresh policy with ``policy_factory`` and a new run directory.

Why a background thread: a step is one blocking call (a language-model step can take
seconds); scheduled on the kernel's event loop it would block the kernel for its whole
length, and ipykernel's loop is not a public API to schedule on. In a thread, torch
releases the GIL inside its kernels and the kernel keeps answering other cells and widget
events. ipywidgets and plotly send their updates as comm messages through ipykernel's
IOPub thread, which accepts them from any thread. Headless execution (nbclient) never
blocks: nothing trains until Start is pressed or :meth:`LiveTraining.start` is called.

Thread safety: the Trainer is not thread-safe. While a run is in flight only the worker
thread touches it, holding :attr:`LiveTraining.lock` for each step; the notebook reads
``dashboard.trainer`` safely when the dashboard is paused, stopped or finished (or inside
``with dashboard.lock:``). Figure updates are batched and sent at most every
``refresh_seconds`` (default 0.25 s, 4 Hz), so a fast toy does not flood the browser.

Footgun: ``epsilon`` / ``epsilon_high`` clip the importance ratio, which is exactly 1
with ``num_iterations = 1`` (on-policy, TRL's default): the clip-range slider then does
nothing. Set ``num_iterations >= 2`` in the config to see clip-higher act.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlnb import rl
from rlnb.policies.base import Policy
from rlnb.train.callbacks import ExactSuccess
from rlnb.train.config import TrainConfig
from rlnb.train.trainer import Callback, Trainer
from rlnb.viz.training import PALETTE, style_figure

__all__ = ["LIVE_KNOBS", "RESTART_KNOBS", "LiveTraining"]

#: Config fields applied at the next step of the running run.
LIVE_KNOBS: tuple[str, ...] = (
    "learning_rate", "temperature", "beta", "epsilon_high", "entropy_coef", "max_steps",
)
#: Config fields that apply to the next run (Stop, then Start).
RESTART_KNOBS: tuple[str, ...] = ("advantage", "num_generations", "scale_rewards")

_DASHES = ("solid", "dash", "dot", "dashdot")
_LABEL_STYLE = {"description_width": "105px"}
_SLIDER_LAYOUT = {"width": "370px"}


@dataclass(frozen=True)
class _Panel:
    title: str
    metrics: tuple[str, ...]


def _algorithms() -> list[str]:
    """Outcome advantage estimators of the registry (GAE needs a critic: not offered)."""
    return [name for name in rl.list_advantages() if name != "gae"]


class LiveTraining:
    """A training dashboard: knobs, Start / Pause / Stop, live curves, a progress bar.

    Args:
        env: the sandbox to train on (any rlnb sandbox).
        policy_factory: a function of no arguments returning a *fresh* policy, e.g.
            ``lambda: TabularPolicy.for_env(env, shared=True)``. Each new run calls it, so
            runs never share weights.
        config: the :class:`TrainConfig` the widgets start from (defaults if None). Knobs
            without a widget (optimizer, policy loss, prompts per step, seed...) come from
            it unchanged. ``progress_bar`` is turned off: the dashboard has its own.
        run_root: folder that receives one run directory per Start of a new run
            (``001-grpo``, ``002-rloo``, ...). Default: a fresh temporary folder.
        callbacks: trainer callbacks ``f(trainer, metrics) -> dict | None``. Pass
            ``rlnb.train.ExactSuccess(ks=(1, 64))`` on a sandbox with exact answers and the
            dashboard adds an exact pass@k panel.
        refresh_seconds: at most one figure/status update per this many seconds.
        title: a heading shown above the controls.
        figure_width: the figure's width in pixels.

    Which knobs apply when (also shown next to the controls):

    - next step: learning rate, temperature, beta, epsilon_high, entropy coef, steps.
      Beta needs a reference policy, which a run only has if it started with beta > 0;
      raising beta from 0 therefore applies on restart.
    - on restart (Stop, then Start): algorithm, group size, scale_rewards.

    After (or during) training, ``dashboard.history`` is the tidy log of every run
    (``run, step, metric, value``), ``dashboard.trainer`` the last run's Trainer and
    ``dashboard.run_dir`` its directory: ``rlnb.train.load_runs(dashboard.run_root)``
    loads every run, ``rlnb.train.resume(dashboard.run_dir, max_steps=...)`` continues one.

    >>> import torch
    >>> from rlnb.envs import StrategyBandit
    >>> from rlnb.policies import TabularPolicy
    >>> env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    >>> dash = LiveTraining(env, lambda: TabularPolicy.for_env(env, shared=True),
    ...                     TrainConfig(max_steps=3, num_generations=4, optimizer="sgd",
    ...                                 learning_rate=1.0))
    >>> dash.start()      # returns at once: the steps run in a background thread
    >>> dash.wait(timeout=60), dash.state
    (True, 'finished')
    >>> sorted(set(dash.history["step"]))
    [1, 2, 3]

    In a notebook, end a cell with ``dash`` to display it.

    Footguns: re-running the dashboard's cell builds a *new* dashboard, and a run in flight
    in the old one keeps training until it ends -- press Stop first. The worker thread
    ends with the kernel, not with the notebook tab; a killed kernel loses at most the
    step in flight (the run directory is crash-safe, see :mod:`rlnb.train.rundir`).
    """

    def __init__(
        self,
        env: Any,
        policy_factory: Callable[[], Policy],
        config: TrainConfig | None = None,
        *,
        run_root: str | os.PathLike | None = None,
        callbacks: Sequence[Callback] = (),
        refresh_seconds: float = 0.25,
        title: str | None = None,
        figure_width: int = 960,
    ) -> None:
        if isinstance(policy_factory, Policy) or not callable(policy_factory):
            raise TypeError(
                "policy_factory must be a function that builds a fresh policy, e.g. "
                "lambda: TabularPolicy.for_env(env, shared=True): every new run trains a "
                f"new one; got {type(policy_factory).__name__}"
            )
        self.env = env
        self.policy_factory = policy_factory
        base = TrainConfig() if config is None else config
        base.validate()
        self.base_config = TrainConfig.from_dict({**base.to_dict(), "progress_bar": False})
        self.callbacks = list(callbacks)
        self.refresh_seconds = float(refresh_seconds)
        self.figure_width = int(figure_width)
        self.run_root = Path(run_root) if run_root is not None else Path(
            tempfile.mkdtemp(prefix="rlnb-live-"))
        self.run_root.mkdir(parents=True, exist_ok=True)

        #: Held by the worker thread for each step; hold it to touch ``trainer`` mid-run.
        self.lock = threading.RLock()
        self._state_lock = threading.Lock()  # state, requests, pending knobs, rows
        self._ui_lock = threading.Lock()  # one figure/status update at a time
        self._thread: threading.Thread | None = None
        self._trainer: Trainer | None = None
        self._trainer_open = False  # its metrics file is open (not yet finished)
        self._run_name: str | None = None
        self._run_dirs: list[Path] = []
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._request: str | None = None  # "pause" | "stop", read by the worker between steps
        self._pending: dict[str, Any] = {}
        self._step_times: deque[float] = deque(maxlen=30)
        self._state = "idle"
        self.error: BaseException | None = None

        self._exact_ks = sorted({k for cb in self.callbacks if isinstance(cb, ExactSuccess)
                                 for k in cb.ks})
        self._build_controls(title)
        self._panels: tuple[_Panel, ...] = ()
        self._traces: dict[str, dict[str, int]] = {}
        self.figure = self._new_figure(self._wanted_panels(self.base_config.beta > 0))
        self._fig_box = W.Box([self.figure], layout=W.Layout(width="100%"))
        self.widget = W.VBox(
            [self._header, W.HBox([self._live_box, self._restart_box]), self._note,
             W.HBox([self.start_button, self.pause_button, self.stop_button, self.progress]),
             self.status, self._fig_box],
            layout=W.Layout(width="100%"),
        )
        self._refresh()

    # --- public API -----------------------------------------------------------------
    @property
    def state(self) -> str:
        """``idle`` (no run yet), ``running``, ``paused``, ``stopped``, ``finished`` or ``error``."""
        return self._state

    @property
    def trainer(self) -> Trainer | None:
        """The current (or last) run's Trainer. Touch it only when not running, or under
        ``with dashboard.lock:``."""
        return self._trainer

    @property
    def run_dir(self) -> Path | None:
        """The current (or last) run's directory."""
        return self._run_dirs[-1] if self._run_dirs else None

    @property
    def runs(self) -> list[Path]:
        """Every run directory this dashboard made, oldest first."""
        return list(self._run_dirs)

    @property
    def history(self) -> pd.DataFrame:
        """Tidy log of every run of this dashboard: ``run, step, metric, value``."""
        with self._state_lock:
            rows = {run: list(r) for run, r in self._rows.items()}
        frames = []
        for run, run_rows in rows.items():
            if not run_rows:
                continue
            wide = pd.DataFrame(run_rows)
            tidy = wide.melt(id_vars="step", var_name="metric", value_name="value")
            tidy.insert(0, "run", run)
            frames.append(tidy.sort_values(["metric", "step"], kind="stable"))
        if not frames:
            return pd.DataFrame(columns=["run", "step", "metric", "value"])
        return pd.concat(frames, ignore_index=True)

    def start(self) -> None:
        """Start a new run, or resume a paused one (the Start / Resume button)."""
        with self._state_lock:
            if self._thread is not None and self._thread.is_alive():
                if self._request == "pause":  # Resume pressed before the pause landed
                    self._request = None
                    self._state = "running"
                return
            resume = self._state == "paused" and self._trainer is not None
        if not resume:
            try:
                self._new_run()
            except Exception as err:  # show it next to the buttons, then raise it
                with self._state_lock:
                    self.error, self._state = err, "error"
                self._refresh()
                raise
        with self._state_lock:
            self._request = None
            self._state = "running"
            self.error = None
            self._step_times.clear()
            self._thread = threading.Thread(target=self._work, args=(self._trainer,),
                                            name="rlnb-live-training", daemon=True)
        self._refresh()
        self._thread.start()

    def pause(self) -> None:
        """Pause after the step in flight; Start resumes the same run."""
        with self._state_lock:
            if self._state == "running":
                self._request = "pause"
        self._refresh()

    def stop(self) -> None:
        """End the run after the step in flight and leave a complete run directory
        (checkpoint of the last step, ``config.json`` with the knobs in force)."""
        with self._state_lock:
            if self._state == "running":
                self._request = "stop"
                paused = False
            else:
                paused = self._state == "paused"
        if paused:
            with self.lock:
                self._finish(self._trainer, "stopped")
        self._refresh()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker thread ends (finished, paused or stopped); True if it
        did within ``timeout`` seconds. Re-raises an error the run hit."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        if self.error is not None:
            raise RuntimeError(f"training failed: {self.error!r}") from self.error
        return True

    @property
    def controls(self) -> dict[str, W.ValueWidget]:
        """The knob widgets by config field name (``learning_rate``, ``advantage``...)."""
        return dict(self._controls)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # --- controls -------------------------------------------------------------------
    def _build_controls(self, title: str | None) -> None:
        c = self.base_config
        log_lr = math.log10(c.learning_rate)
        eps_high = c.epsilon_high if c.epsilon_high is not None else c.epsilon
        algos = _algorithms()
        if c.advantage not in algos:
            algos.append(c.advantage)
        def common() -> dict[str, Any]:  # one Layout per widget: a shared one is shared state
            return {"style": _LABEL_STYLE, "layout": W.Layout(**_SLIDER_LAYOUT),
                    "continuous_update": False}

        live = {
            "learning_rate": W.FloatLogSlider(
                value=c.learning_rate, base=10, min=math.floor(log_lr) - 2,
                max=math.floor(log_lr) + 1, step=0.1, readout_format=".3g",
                description="learning rate", **common()),
            "temperature": W.FloatSlider(
                value=c.temperature, min=0.1, max=max(2.0, c.temperature), step=0.05,
                readout_format=".2f", description="temperature", **common()),
            "beta": W.FloatSlider(
                value=c.beta, min=0.0, max=max(1.0, c.beta), step=0.01, readout_format=".2f",
                description="beta (KL)", **common()),
            "epsilon_high": W.FloatSlider(
                value=eps_high, min=0.05, max=max(0.5, eps_high), step=0.01,
                readout_format=".2f", description="epsilon_high", **common()),
            "entropy_coef": W.FloatSlider(
                value=c.entropy_coef, min=0.0, max=max(0.1, c.entropy_coef), step=0.001,
                readout_format=".3f", description="entropy coef", **common()),
            "max_steps": W.BoundedIntText(
                value=c.max_steps, min=1, max=10**7, description="steps",
                style=_LABEL_STYLE, layout=W.Layout(width="230px")),
        }
        restart = {
            "advantage": W.Dropdown(options=algos, value=c.advantage, description="algorithm",
                                    style=_LABEL_STYLE, layout=W.Layout(width="280px")),
            "num_generations": W.IntSlider(
                value=c.num_generations, min=1, max=max(32, c.num_generations),
                description="group size", **common()),
            "scale_rewards": W.Dropdown(
                options=list(rl.SCALE_REWARDS), value=c.scale_rewards,
                description="scale_rewards", style=_LABEL_STYLE,
                layout=W.Layout(width="280px")),
        }
        self._controls: dict[str, W.ValueWidget] = {**live, **restart}
        for name, w in live.items():
            w.observe(lambda change, name=name: self._on_live(name, change["new"]), names="value")
        for w in restart.values():
            w.observe(lambda change: self._sync_note(), names="value")

        self._header = W.HTML(f"<h3 style='margin:4px 0'>{html.escape(title)}</h3>" if title
                              else "")
        self._live_box = W.VBox([W.HTML("<b>applied at the next step</b>"), *live.values()])
        self._restart_box = W.VBox([W.HTML("<b>applied on restart</b> (Stop, then Start)"),
                                    *restart.values()])
        self._note = W.HTML()
        self.start_button = W.Button(description="Start", icon="play", button_style="success",
                                     tooltip="start a new run, or resume a paused one")
        self.pause_button = W.Button(description="Pause", icon="pause",
                                     tooltip="pause after the step in flight")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip="end the run; the next Start makes a new run")
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.pause())
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = W.IntProgress(value=0, min=0, max=max(c.max_steps, 1),
                                      layout=W.Layout(width="320px", margin="6px 0 0 12px"))
        self.status = W.HTML()

    def _on_live(self, name: str, value: Any) -> None:
        """A live knob moved: queue it for the worker (applied before the next step)."""
        with self._state_lock:
            self._pending[name] = value
        if name == "max_steps":
            self.progress.max = max(int(value), 1)
        self._sync_note()

    def _knob_values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self._controls.items()}

    def _sync_note(self) -> None:
        parts = ["Learning rate, temperature, beta, epsilon_high, entropy coef and steps apply "
                 "at the next step; algorithm, group size and scale_rewards on restart "
                 "(Stop, then Start makes a new run)."]
        trainer = self._trainer
        if trainer is not None and self._state in ("running", "paused"):
            c = trainer.config
            waiting = [f"{w.description} = {w.value}" for name, w in self._controls.items()
                       if name in RESTART_KNOBS and getattr(c, name) != w.value]
            if trainer.reference is None and self._controls["beta"].value > 0:
                waiting.append("beta > 0 (this run has no reference policy)")
            if waiting:
                parts.append("<b>Waiting for a restart:</b> " + html.escape(", ".join(waiting)))
        self._note.value = ("<div style='font-size:12px;color:#555;margin:2px 0 6px 0'>"
                            + "<br>".join(parts) + "</div>")

    # --- runs -----------------------------------------------------------------------
    def _new_run(self) -> None:
        """Build a fresh policy, config and run directory from the current knobs."""
        knobs = self._knob_values()
        config = TrainConfig.from_dict({**self.base_config.to_dict(), **knobs})
        index = len(self._run_dirs) + 1
        while any(self.run_root.glob(f"{index:03d}-*")):
            index += 1
        name = f"{index:03d}-{config.advantage}"
        run_dir = self.run_root / name
        with self.lock:
            policy = self.policy_factory()
            if not isinstance(policy, Policy):
                raise TypeError(f"policy_factory returned {type(policy).__name__}, not a Policy")
            trainer = Trainer(policy, self.env, config, run_dir=run_dir,
                              callbacks=[*self.callbacks, _record_knobs])
            with self._state_lock:
                self._trainer, self._run_name, self._trainer_open = trainer, name, True
                self._run_dirs.append(run_dir)
                self._rows[name] = []
                self._pending.clear()
        panels = self._wanted_panels(config.beta > 0 or any(p.title.startswith("KL")
                                                            for p in self._panels))
        with self._ui_lock:
            if panels != self._panels:  # e.g. the first run with beta > 0 adds a KL panel
                self.figure = self._new_figure(panels)
                self._fig_box.children = [self.figure]
            self._add_run_traces(name)
        self.progress.max = max(config.max_steps, 1)

    def _work(self, trainer: Trainer) -> None:
        """The worker thread: steps until max_steps, a pause or a stop request."""
        end, last_refresh = "finished", 0.0
        # The run's thread counts, as Trainer.train uses them.
        with trainer.thread_settings():
            try:
                while True:
                    with self._state_lock:
                        if self._request is not None:
                            end = "paused" if self._request == "pause" else "stopped"
                            break
                        pending, self._pending = self._pending, {}
                    with self.lock:
                        self._apply(trainer, pending)
                        # trainer.stop() from a callback (e.g. early stopping) ends the run too.
                        if trainer.step >= trainer.config.max_steps or trainer.stop_requested:
                            break
                        metrics = trainer.train_step()
                    with self._state_lock:
                        self._rows[self._run_name].append(_plain(metrics))
                        self._step_times.append(time.perf_counter())
                    now = time.perf_counter()
                    if now - last_refresh >= self.refresh_seconds:
                        self._refresh()
                        last_refresh = time.perf_counter()
            except Exception as err:  # shown in the status line and re-raised by wait()
                self.error, end = err, "error"
        with self.lock:
            if end == "paused":
                try:
                    self._save(trainer)
                except Exception as err:  # e.g. a full disk: the run ends here
                    self.error = err
                    self._finish(trainer, "error")
                else:
                    with self._state_lock:
                        self._state, self._request = "paused", None
            else:
                self._finish(trainer, end)
        self._refresh()

    def _apply(self, trainer: Trainer, pending: dict[str, Any]) -> None:
        """Copy queued live knobs into the trainer (worker thread, between steps)."""
        if trainer.reference is None:
            pending.pop("beta", None)  # beta > 0 needs a reference policy: applies on restart
        if pending:
            trainer.update_config(**pending)

    def _save(self, trainer: Trainer) -> None:
        """Checkpoint the last step and record the knobs in force in config.json, so the
        run directory resumes with what the dashboard ran last. Both writes go through the
        Trainer, which refuses them unless it holds the run directory's lock."""
        if trainer.run_dir is None:
            return
        trainer.save_checkpoint()
        trainer.save_config()

    def _finish(self, trainer: Trainer | None, end: str) -> None:
        """Leave a complete run directory and close its metrics file (holding ``lock``)."""
        try:
            if trainer is not None and self._trainer_open:
                try:
                    self._save(trainer)
                finally:
                    trainer.close()
                    self._trainer_open = False
        except Exception as err:  # the state must still leave "running"
            self.error = self.error or err
            end = "error"
        finally:
            with self._state_lock:
                self._state, self._request = end, None

    # --- figure ---------------------------------------------------------------------
    def _wanted_panels(self, with_kl: bool) -> tuple[_Panel, ...]:
        panels = [_Panel("reward (batch mean)", ("reward",)),
                  _Panel("entropy (nats per token)", ("entropy",))]
        if with_kl:
            panels.append(_Panel("KL to the reference", ("kl",)))
        if self._exact_ks:
            dashes = ", ".join(f"{_DASHES[i % len(_DASHES)]} k={k}"
                               for i, k in enumerate(self._exact_ks))
            panels.append(_Panel(f"exact pass@k ({dashes})",
                                 tuple(f"exact/pass@{k}" for k in self._exact_ks)))
        return tuple(panels)

    def _new_figure(self, panels: tuple[_Panel, ...]) -> go.FigureWidget:
        self._panels = panels
        cols = _columns(len(panels))
        rows = math.ceil(len(panels) / cols)
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in panels],
                            horizontal_spacing=0.08, vertical_spacing=0.2)
        for i in range(len(panels)):
            r, col = divmod(i, cols)
            fig.update_xaxes(title_text="step" if r == rows - 1 or i + cols >= len(panels)
                             else None, row=r + 1, col=col + 1)
        height, top, bottom = 130 + 250 * rows, 80, 50
        style_figure(fig, height=height)
        # An explicit width: a FigureWidget is drawn before it is attached to the page, so
        # plotly.js cannot measure the notebook and would fall back to 700 px.
        fig.update_layout(width=self.figure_width, margin=dict(l=60, r=20, t=top, b=bottom),
                          hovermode="x", legend=dict(orientation="h", x=0, xanchor="left",
                                                     y=1 + 34 / (height - top - bottom),
                                                     yanchor="bottom", title_text="run"))
        fig.update_annotations(font_size=13)
        widget = go.FigureWidget(fig)
        self._traces = {}
        for run in self._rows:  # a rebuilt figure keeps the runs drawn so far
            self._add_run_traces(run, widget)
            self._update_traces(run, widget)
        return widget

    def _add_run_traces(self, run: str, fig: go.FigureWidget | None = None) -> None:
        fig = self.figure if fig is None else fig
        color = PALETTE[len(self._traces) % len(PALETTE)]
        cols = _columns(len(self._panels))
        index: dict[str, int] = {}
        for i, panel in enumerate(self._panels):
            r, col = divmod(i, cols)
            for j, metric in enumerate(panel.metrics):
                fig.add_trace(
                    go.Scatter(x=[], y=[], mode="lines", name=run, legendgroup=run,
                               showlegend=i == 0 and j == 0,
                               line=dict(color=color, width=2, dash=_DASHES[j % len(_DASHES)]),
                               hovertemplate=f"{metric} %{{y:.4g}}<extra>{run}</extra>"),
                    row=r + 1, col=col + 1,
                )
                index[metric] = len(fig.data) - 1
        self._traces[run] = index

    def _update_traces(self, run: str, fig: go.FigureWidget) -> None:
        with self._state_lock:
            rows = list(self._rows.get(run, ()))
        with fig.batch_update():
            for metric, i in self._traces.get(run, {}).items():
                pts = [(r["step"], r[metric]) for r in rows
                       if isinstance(r.get(metric), (int, float))]
                fig.data[i].x = [p[0] for p in pts]
                fig.data[i].y = [p[1] for p in pts]

    def _refresh(self) -> None:
        """Push the current run's curves, the progress bar and the status line."""
        with self._ui_lock:
            if self._run_name is not None:
                self._update_traces(self._run_name, self.figure)
            self._sync_ui()

    def _sync_ui(self) -> None:
        state = self._state
        trainer = self._trainer
        running = state == "running"
        self.start_button.description = "Resume" if state == "paused" else "Start"
        self.start_button.disabled = running
        self.pause_button.disabled = not running or self._request is not None
        self.stop_button.disabled = state not in ("running", "paused")
        step = trainer.step if trainer is not None else 0
        self.progress.value = min(step, self.progress.max)
        self._sync_note()
        self.status.value = self._status_html(state, step)

    def _status_html(self, state: str, step: int) -> str:
        colors = {"running": PALETTE[2], "paused": PALETTE[4], "error": PALETTE[1],
                  "finished": PALETTE[0], "stopped": "#555", "idle": "#555"}
        label = state if self._request is None else f"{self._request} requested"
        parts = [f"<b style='color:{colors.get(state, '#555')}'>{label}</b>"]
        if self._run_name is not None:
            total = self._trainer.config.max_steps if self._trainer is not None else 0
            parts.append(f"run {html.escape(self._run_name)}")
            parts.append(f"step {step}/{total}")
        times = list(self._step_times)
        if len(times) >= 2 and state == "running":
            parts.append(f"{(len(times) - 1) / max(times[-1] - times[0], 1e-9):.1f} steps/s")
        rows = self._rows.get(self._run_name or "", [])
        if rows:
            last = rows[-1]
            parts.append(f"lr {last['learning_rate']:.3g}")
            parts.append(f"reward {last['reward']:.3f}")
            if self._exact_ks and f"exact/pass@{self._exact_ks[0]}" in last:
                parts += [f"pass@{k} {last[f'exact/pass@{k}']:.3f}" for k in self._exact_ks
                          if f"exact/pass@{k}" in last]
        if state == "idle":
            parts.append("press Start to train")
        if self.error is not None:
            parts.append(f"<span style='color:{PALETTE[1]}'>{html.escape(repr(self.error))}</span>")
        return ("<div style='font-family:monospace;font-size:13px;margin:4px 0'>"
                + " · ".join(parts) + "</div>")


def _columns(num_panels: int) -> int:
    """Panels per figure row: 1, 2, 3 in a row; four as a 2 x 2 grid."""
    return num_panels if num_panels <= 3 else 2


def _record_knobs(trainer: Trainer, metrics: dict[str, Any]) -> dict[str, float]:
    """Log the live knobs each step ran with (the learning rate is logged by the trainer)."""
    c = trainer.config
    return {
        "knobs/temperature": c.temperature,
        "knobs/beta": c.beta,
        "knobs/epsilon_high": c.epsilon_high if c.epsilon_high is not None else c.epsilon,
        "knobs/entropy_coef": c.entropy_coef,
    }


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as Python scalars (tensors become floats), for the figure and the log."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        out[k] = v
    return out
