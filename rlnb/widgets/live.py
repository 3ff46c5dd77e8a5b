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

What the panels show: the reward panel draws the per-step batch mean faint and its mean
over the last ``smooth`` steps (default 50) on top -- over thousands of steps the per-step
line alone is a solid band. Each curve sends at most ``max_points`` points (default 1000)
to the browser, every ``stride``-th step of the run (the running mean is computed over
every step first); :attr:`LiveTraining.history` keeps every step. Before the first step
the panels are empty frames: titled axes over the step budget, and a note to press Start.

How long a run is: a dashboard built without a config runs :data:`DEFAULT_MAX_STEPS`
(10,000) steps -- a toy sandbox does 100-300 steps per second, so a run of a few hundred
steps is over before a slider can be moved. The ``steps`` box changes the budget mid-run;
Pause and Stop act after the step in flight.

Footgun: ``epsilon`` / ``epsilon_high`` clip the importance ratio, which is exactly 1
with ``num_iterations = 1`` (on-policy, TRL's default): the clip-range slider then does
nothing. Set ``num_iterations >= 2`` in the config to see clip-higher act.
"""

from __future__ import annotations

import contextlib
import html
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go

from rlnb.policies.base import Policy
from rlnb.train.callbacks import ExactSuccess
from rlnb.train.config import TrainConfig
from rlnb.train.rundir import numbered_run
from rlnb.train.trainer import Callback, Trainer
from rlnb.viz.live import DASHES, LiveFigure, Panel
from rlnb.viz.training import rgba
from rlnb.widgets.controls import (
    LIVE_KNOBS,
    RESTART_KNOBS,
    knob_widgets,
    status_html,
    waiting_for_restart,
)
from rlnb.widgets.display import bundle, sync_state

__all__ = ["DEFAULT_MAX_STEPS", "LIVE_KNOBS", "REWARD_MEAN", "RESTART_KNOBS", "LiveTraining",
           "display_rows"]

#: Step budget of a dashboard built without a config: minutes at a toy's 100-300 steps/s,
#: long enough to move a slider, pause or stop mid-run (Stop ends it any time).
DEFAULT_MAX_STEPS = 10_000
#: The reward panel's running mean, a display-only curve (not in ``history``).
REWARD_MEAN = "reward, running mean"
#: The ``meta`` of the empty traces that make plotly draw every panel's axes before Start.
FRAME = "empty frame"
#: Axis titles of the panels, by the first metric a panel draws.
_Y_TITLES = {"reward": "reward", "entropy": "nats per token", "kl": "KL"}

class LiveTraining:
    """A training dashboard: knobs, Start / Pause / Stop, live curves, a progress bar.

    Args:
        env: the sandbox to train on (any rlnb sandbox).
        policy_factory: a function of no arguments returning a *fresh* policy, e.g.
            ``lambda: TabularPolicy.for_env(env, shared=True)``. Each new run calls it, so
            runs never share weights.
        config: the :class:`TrainConfig` the widgets start from (if None, the defaults
            with ``max_steps = DEFAULT_MAX_STEPS``). Knobs without a widget (optimizer,
            policy loss, prompts per step, seed...) come from it unchanged. Its
            ``max_steps`` is the budget of each run: give a dashboard thousands of steps,
            not the hundred of a scripted run. ``progress_bar`` is turned off: the
            dashboard has its own.
        run_root: folder that receives one run directory per Start of a new run
            (``001-grpo``, ``002-rloo``, ...). Default: a fresh temporary folder.
        callbacks: trainer callbacks ``f(trainer, metrics) -> dict | None``. Pass
            ``rlnb.train.ExactSuccess(ks=(1, 64))`` on a sandbox with exact answers and the
            dashboard adds an exact pass@k panel.
        refresh_seconds: at most one figure/status update per this many seconds.
        smooth: the reward panel draws the mean of the last ``smooth`` steps over the
            faint per-step values (1: per-step values only).
        max_points: at most this many points per curve go to the browser (plotly's
            per-point cost would otherwise slow every refresh of a long run).
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
        smooth: int = 50,
        max_points: int = 1000,
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
        for name, v in (("smooth", smooth), ("max_points", max_points)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.smooth, self.max_points = smooth, max_points
        base = TrainConfig(max_steps=DEFAULT_MAX_STEPS) if config is None else config
        base.validate()
        self.base_config = base.replace(progress_bar=False)
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
        #: The curves (:class:`rlnb.viz.LiveFigure`): one colour per run.
        self.live_figure = LiveFigure(self._wanted_panels(self.base_config.beta > 0),
                                      width=self.figure_width)
        self._label_axes(empty=True)
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
    def figure(self) -> go.FigureWidget:
        """The figure widget of the curves (``live_figure.figure``)."""
        return self.live_figure.figure

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
        return bundle(self.widget, [self.figure], **kwargs)

    # --- controls -------------------------------------------------------------------
    def _build_controls(self, title: str | None) -> None:
        live, restart = knob_widgets(self.base_config)
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
        self.progress = W.IntProgress(value=0, min=0, max=max(self.base_config.max_steps, 1),
                                      layout=W.Layout(width="320px", margin="6px 0 0 12px"))
        self.status = W.HTML()

    def _on_live(self, name: str, value: Any) -> None:
        """A live knob moved: queue it for the worker (applied before the next step)."""
        with self._state_lock:
            self._pending[name] = value
        if name == "max_steps":
            self.progress.max = max(int(value), 1)
            if self._empty:  # the empty frame spans the budget
                self.figure.update_xaxes(range=(0, max(int(value), 1)))
        self._sync_note()

    def _knob_values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self._controls.items()}

    def _sync_note(self) -> None:
        parts = ["Learning rate, temperature, beta, epsilon_high, entropy coef and steps apply "
                 "at the next step; algorithm, group size and scale_rewards on restart "
                 "(Stop, then Start makes a new run)."]
        trainer = self._trainer
        if trainer is not None and self._state in ("running", "paused"):
            waiting = waiting_for_restart(self._controls, trainer.config,
                                          trainer.reference is not None)
            if waiting:
                parts.append("<b>Waiting for a restart:</b> " + html.escape(", ".join(waiting)))
        self._note.value = ("<div style='font-size:12px;color:#555;margin:2px 0 6px 0'>"
                            + "<br>".join(parts) + "</div>")

    # --- runs -----------------------------------------------------------------------
    def _new_run(self) -> None:
        """Build a fresh policy, config and run directory from the current knobs."""
        config = self.base_config.replace(**self._knob_values())
        run_dir = numbered_run(self.run_root, config.advantage)
        name = run_dir.name
        with self.lock:
            policy = self.policy_factory()
            if not isinstance(policy, Policy):
                raise TypeError(f"policy_factory returned {type(policy).__name__}, not a Policy")
            trainer = Trainer(policy, self.env, config, run_dir=run_dir,
                              callbacks=[*self.callbacks, _record_knobs])
            with self._state_lock:
                self._trainer, self._run_name = trainer, name
                self._run_dirs.append(run_dir)
                self._rows[name] = []
                self._pending.clear()
        had_kl = any(p.title.startswith("KL") for p in self.live_figure.panels)
        panels = self._wanted_panels(config.beta > 0 or had_kl)
        with self._ui_lock:
            if panels != self.live_figure.panels:  # the first run with beta > 0 adds KL
                self.live_figure = self.live_figure.with_panels(panels)
                self._label_axes(empty=not self.live_figure.runs)
                for run in self.live_figure.runs:
                    self._style_reward(run)
                self._fig_box.children = [sync_state(self.figure)]
            self.live_figure.add_run(name)
            self._style_reward(name)
        self.progress.max = max(config.max_steps, 1)

    def _work(self, trainer: Trainer) -> None:
        """The worker thread: drives ``trainer.steps()`` until the run ends (max_steps,
        ``trainer.stop()``) or a pause or stop request lands between two steps."""
        end, last_refresh = "finished", 0.0
        try:
            with contextlib.closing(trainer.steps()) as steps:
                while True:
                    with self._state_lock:
                        if self._request is not None:
                            end = "paused" if self._request == "pause" else "stopped"
                            break
                        pending, self._pending = self._pending, {}
                    with self.lock:
                        self._apply(trainer, pending)
                        metrics = next(steps, None)
                    if metrics is None:
                        break
                    with self._state_lock:
                        self._rows[self._run_name].append(_plain(metrics))
                        self._step_times.append(time.perf_counter())
                    if time.perf_counter() - last_refresh >= self.refresh_seconds:
                        self._refresh()
                        last_refresh = time.perf_counter()
        except Exception as err:  # shown in the status line and re-raised by wait()
            self.error, end = err, "error"
        with self.lock:
            if end == "paused":
                try:
                    trainer.save()  # the run directory resumes from here
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

    def _finish(self, trainer: Trainer | None, end: str) -> None:
        """Leave a complete run directory (``trainer.save()``: the last step's checkpoint,
        the knobs in force in config.json) and close it (holding ``lock``)."""
        try:
            if trainer is not None and trainer.directory.held:  # not yet closed
                try:
                    trainer.save()
                finally:
                    trainer.close()
        except Exception as err:  # the state must still leave "running"
            self.error = self.error or err
            end = "error"
        finally:
            with self._state_lock:
                self._state, self._request = end, None

    # --- figure ---------------------------------------------------------------------
    def _wanted_panels(self, with_kl: bool) -> tuple[Panel, ...]:
        reward = (Panel(f"reward (faint: per step; line: mean of last {self.smooth})",
                        ("reward", REWARD_MEAN)) if self.smooth > 1
                  else Panel("reward (batch mean)", ("reward",)))
        panels = [reward,
                  Panel("entropy (nats per token)", ("entropy",))]
        if with_kl:
            panels.append(Panel("KL to the reference", ("kl",)))
        if self._exact_ks:
            dashes = ", ".join(f"{DASHES[i % len(DASHES)]} k={k}"
                               for i, k in enumerate(self._exact_ks))
            panels.append(Panel(f"exact pass@k ({dashes})",
                                tuple(f"exact/pass@{k}" for k in self._exact_ks)))
        return tuple(panels)

    def _label_axes(self, *, empty: bool) -> None:
        """Title every panel's y axis; with ``empty``, draw the empty frame shown before
        the first step (x over the step budget, y over [0, 1], a note to press Start)."""
        fig = self.figure
        with fig.batch_update():
            for i, panel in enumerate(self.live_figure.panels):
                suffix = "" if i == 0 else str(i + 1)
                first = panel.metrics[0]
                ytitle = "pass@k" if first.startswith("exact/") else _Y_TITLES.get(first, first)
                fig.layout[f"yaxis{suffix}"].title.text = ytitle
                if empty:
                    fig.layout[f"xaxis{suffix}"].range = (0, max(self.base_config.max_steps, 1))
                    fig.layout[f"yaxis{suffix}"].range = (0, 1)
            if empty:
                # plotly draws a subplot's axes only for a trace on them: an empty one each
                for i in range(len(self.live_figure.panels)):
                    axis = "" if i == 0 else str(i + 1)
                    fig.add_trace(go.Scatter(x=[], y=[], xaxis=f"x{axis}", yaxis=f"y{axis}",
                                             meta=FRAME, showlegend=False, hoverinfo="skip"))
                fig.add_annotation(text="no steps yet: press Start", name="placeholder",
                                   xref="paper", yref="paper", x=0.5, y=0.5,
                                   showarrow=False, font=dict(size=15, color="#999"))
        self._empty = empty

    def _release_axes(self) -> None:
        """The first points landed: axes follow the data, the note goes."""
        fig = self.figure
        with fig.batch_update():
            fig.update_xaxes(autorange=True)
            fig.update_yaxes(autorange=True)
            fig.layout.annotations = [a for a in fig.layout.annotations
                                      if a.name != "placeholder"]
        self._empty = False

    def _style_reward(self, run: str) -> None:
        """The per-step reward faint and thin, its running mean solid on top."""
        if self.smooth <= 1:
            return
        raw = self.live_figure.trace(run, "reward")
        mean = self.live_figure.trace(run, REWARD_MEAN)
        color = mean.line.color
        raw.line = dict(color=rgba(color, 0.3), width=1, dash="solid")
        raw.showlegend, mean.showlegend = False, True  # the legend shows the solid line
        raw.hovertemplate = f"reward %{{y:.4g}}<extra>{run}</extra>"
        mean.line = dict(color=color, width=2.5, dash="solid")
        mean.hovertemplate = (f"reward, mean of last {self.smooth} %{{y:.4g}}"
                              f"<extra>{run}</extra>")

    def _refresh(self) -> None:
        """Push the current run's curves, the progress bar and the status line."""
        with self._ui_lock:
            if self._run_name is not None:
                with self._state_lock:
                    rows = list(self._rows.get(self._run_name, ()))
                if rows and self._empty:
                    self._release_axes()
                self.live_figure.update(self._run_name, display_rows(
                    rows, smooth=self.smooth, max_points=self.max_points))
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
        trainer, run = self._trainer, self._run_name
        rows = self._rows.get(run or "", [])
        return status_html(state, self._request, run=run, step=step,
                           total=trainer.config.max_steps if trainer is not None else 0,
                           step_times=list(self._step_times), last=rows[-1] if rows else None,
                           exact_ks=self._exact_ks, error=self.error)


def display_rows(rows: Sequence[dict[str, Any]], *, smooth: int,
                 max_points: int) -> list[dict[str, Any]]:
    """What the dashboard's figure draws of one run's logged ``rows``: each row with the
    reward's mean over the last ``smooth`` rows (fewer at the start) under
    :data:`REWARD_MEAN`, then thinned to at most ``max_points`` rows -- every
    ``stride``-th row from the first, and the last. The mean is taken before thinning,
    so it is the mean over every step.

    >>> rows = [{"step": s, "reward": float(s % 2)} for s in range(1, 10)]
    >>> [(r["step"], r[REWARD_MEAN]) for r in display_rows(rows, smooth=2, max_points=3)]
    [(1, 1.0), (4, 0.5), (9, 0.5)]
    """
    if not rows:
        return []
    out = [dict(r) for r in rows]
    if smooth > 1:
        reward = pd.Series([_number(r.get("reward")) for r in rows], dtype=float)
        mean = reward.rolling(smooth, min_periods=1).mean().round(6)
        for r, m in zip(out, mean.tolist(), strict=True):
            r[REWARD_MEAN] = m
    stride = -(-len(out) // max_points)  # ceil: at most max_points rows kept
    if stride > 1:
        keep = list(range(0, len(out), stride))
        keep[-1] = len(out) - 1  # the newest step is always drawn
        out = [out[i] for i in keep]
    return out


def _record_knobs(trainer: Trainer, metrics: dict[str, Any]) -> dict[str, float]:
    """Log the live knobs each step ran with (the learning rate is logged by the trainer)."""
    c = trainer.config
    return {
        "knobs/temperature": c.temperature,
        "knobs/beta": c.beta,
        "knobs/epsilon_high": c.epsilon_high if c.epsilon_high is not None else c.epsilon,
        "knobs/entropy_coef": c.entropy_coef,
    }


def _number(value: Any) -> float:
    """A logged value as a float for the running mean (NaN when it is not a number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as Python scalars (tensors become floats), for the figure and the log."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        out[k] = v
    return out
