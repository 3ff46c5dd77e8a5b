"""The controls of the training dashboard: one widget per ``TrainConfig`` field it
exposes, and its status line.

``LIVE_KNOBS`` apply at the next step of the running run, ``RESTART_KNOBS`` to the next
run (:class:`rlnb.widgets.LiveTraining` explains when and why).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import ipywidgets as W

from rlnb import rl
from rlnb.train.config import TrainConfig
from rlnb.viz.training import PALETTE

__all__ = ["LIVE_KNOBS", "RESTART_KNOBS", "knob_widgets", "status_html", "waiting_for_restart"]

#: Config fields applied at the next step of the running run.
LIVE_KNOBS: tuple[str, ...] = (
    "learning_rate", "temperature", "beta", "epsilon_high", "entropy_coef", "max_steps",
)
#: Config fields that apply to the next run (Stop, then Start).
RESTART_KNOBS: tuple[str, ...] = ("advantage", "num_generations", "scale_rewards")

LABEL_STYLE = {"description_width": "105px"}
_SLIDER_LAYOUT = {"width": "370px"}


def algorithms() -> list[str]:
    """Outcome advantage estimators of the registry (GAE needs a critic: not offered)."""
    return [name for name in rl.list_advantages() if name != "gae"]


def knob_widgets(config: TrainConfig) -> tuple[dict[str, W.ValueWidget], dict[str, W.ValueWidget]]:
    """The widgets of the live knobs and of the restart knobs, set to ``config``'s values."""
    c = config
    log_lr = math.log10(c.learning_rate)
    eps_high = c.epsilon_high if c.epsilon_high is not None else c.epsilon
    algos = algorithms()
    if c.advantage not in algos:
        algos.append(c.advantage)
    def common() -> dict[str, Any]:  # one Layout per widget: a shared one is shared state
        return {"style": LABEL_STYLE, "layout": W.Layout(**_SLIDER_LAYOUT),
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
            style=LABEL_STYLE, layout=W.Layout(width="230px")),
    }
    restart = {
        "advantage": W.Dropdown(options=algos, value=c.advantage, description="algorithm",
                                style=LABEL_STYLE, layout=W.Layout(width="280px")),
        "num_generations": W.IntSlider(
            value=c.num_generations, min=1, max=max(32, c.num_generations),
            description="group size", **common()),
        "scale_rewards": W.Dropdown(
            options=list(rl.SCALE_REWARDS), value=c.scale_rewards,
            description="scale_rewards", style=LABEL_STYLE,
            layout=W.Layout(width="280px")),
    }
    return live, restart


def waiting_for_restart(controls: dict[str, W.ValueWidget], config: TrainConfig,
                        has_reference: bool) -> list[str]:
    """The knob settings the running run (``config``) does not use until a restart."""
    waiting = [f"{w.description} = {w.value}" for name, w in controls.items()
               if name in RESTART_KNOBS and getattr(config, name) != w.value]
    if not has_reference and controls["beta"].value > 0:
        waiting.append("beta > 0 (this run has no reference policy)")
    return waiting


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``: the time left, to the nearest second."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_html(state: str, request: str | None, *, run: str | None, step: int, total: int,
                step_times: Sequence[float], last: dict[str, Any] | None,
                exact_ks: Sequence[int], error: BaseException | None) -> str:
    """The dashboard's status line: state, run, step, speed, time left, last reward and
    pass@k."""
    colors = {"running": PALETTE[2], "paused": PALETTE[4], "error": PALETTE[1],
              "finished": PALETTE[0], "stopped": "#555", "idle": "#555"}
    label = state if request is None else f"{request} requested"
    parts = [f"<b style='color:{colors.get(state, '#555')}'>{label}</b>"]
    if run is not None:
        parts.append(f"run {html.escape(run)}")
        parts.append(f"step {step}/{total}")
    if len(step_times) >= 2 and state == "running":
        rate = (len(step_times) - 1) / max(step_times[-1] - step_times[0], 1e-9)
        parts.append(f"{rate:.1f} steps/s")
        if total > step:
            parts.append(f"{_duration((total - step) / rate)} left")
    if last:
        parts.append(f"lr {last['learning_rate']:.3g}")
        parts.append(f"reward {last['reward']:.3f}")
        if exact_ks and f"exact/pass@{exact_ks[0]}" in last:
            parts += [f"pass@{k} {last[f'exact/pass@{k}']:.3f}" for k in exact_ks
                      if f"exact/pass@{k}" in last]
    if state == "idle":
        parts.append("press Start to train")
    if error is not None:
        parts.append(f"<span style='color:{PALETTE[1]}'>{html.escape(repr(error))}</span>")
    return ("<div style='font-family:monospace;font-size:13px;margin:4px 0'>"
            + " · ".join(parts) + "</div>")
