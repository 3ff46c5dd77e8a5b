"""What ``LiveTraining`` shows: a run long enough to play with, a smoothed reward panel,
labelled empty panels before Start (issue 18, "Dashboards")."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.train import ExactSuccess, TrainConfig
from rlnb.widgets import LiveTraining
from rlnb.widgets.controls import _duration, status_html
from rlnb.widgets.live import DEFAULT_MAX_STEPS, FRAME, REWARD_MEAN, display_rows

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60
#: The fastest toy runs about 300 steps per second; a run must last longer than this.
PLAYABLE_SECONDS = 30


@pytest.fixture
def env():
    return StrategyBandit.from_card(num_problems=16, num_strategies=8,
                                    generator=torch.Generator().manual_seed(0))


def factory(env):
    return lambda: TabularPolicy.for_env(env, shared=True)


def small_config(**overrides):
    return TrainConfig(**{"max_steps": 12, "num_prompts_per_step": 4, "num_generations": 4,
                          "optimizer": "sgd", "learning_rate": 1.0,
                          "policy_loss": "vanilla_pg", **overrides})


def plain_running_mean(values, window):
    """The obvious version: the mean of the last ``window`` values (fewer at the start)."""
    return [float(np.mean(values[max(0, i - window + 1): i + 1])) for i in range(len(values))]


# --- the budget --------------------------------------------------------------------------
def test_default_budget_lasts_long_enough_to_move_a_slider(env, tmp_path):
    dash = LiveTraining(env, factory(env), run_root=tmp_path)
    assert dash.base_config.max_steps == DEFAULT_MAX_STEPS
    assert dash.controls["max_steps"].value == DEFAULT_MAX_STEPS
    assert dash.progress.max == DEFAULT_MAX_STEPS
    assert DEFAULT_MAX_STEPS / 300 >= PLAYABLE_SECONDS


def test_the_tour_notebook_gives_its_dashboard_a_long_run():
    """Notebook 00's dashboard config sets a budget of minutes, not the 200 steps (about
    two seconds) it once had."""
    nb = nbformat.read(ROOT / "notebooks" / "00_tour.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and "LiveTraining(" in c.source]
    assert len(cells) == 1
    budgets = [ast.literal_eval(kw.value) for node in ast.walk(ast.parse(cells[0]))
               if isinstance(node, ast.Call) for kw in node.keywords if kw.arg == "max_steps"]
    assert budgets and all(b / 300 >= PLAYABLE_SECONDS for b in budgets), budgets


def test_status_line_says_how_long_the_run_has_left():
    line = status_html("running", None, run="001-grpo", step=100, total=10_100,
                       step_times=[0.0, 1.0, 2.0], last=None, exact_ks=(), error=None)
    assert "1.0 steps/s" in line and "2 h 46 min left" in line
    assert [_duration(s) for s in (0.4, 42, 185, 7800)] == ["0 s", "42 s", "3 min 05 s",
                                                             "2 h 10 min"]
    idle = status_html("paused", None, run="001-grpo", step=100, total=200,
                       step_times=[0.0, 1.0], last=None, exact_ks=(), error=None)
    assert "left" not in idle


# --- the reward panel --------------------------------------------------------------------
def test_reward_panel_draws_the_running_mean_over_faint_per_step_values(env, tmp_path):
    dash = LiveTraining(env, factory(env), small_config(), run_root=tmp_path, smooth=5,
                        refresh_seconds=0.0)
    assert "mean of last 5" in dash.figure.layout.annotations[0].text
    dash.start()
    assert dash.wait(TIMEOUT) and dash.state == "finished"
    run = dash.run_dir.name
    raw = dash.live_figure.trace(run, "reward")
    mean = dash.live_figure.trace(run, REWARD_MEAN)
    logged = dash.history.query("metric == 'reward'").sort_values("step")["value"].tolist()
    assert list(raw.y) == logged and list(raw.x) == list(range(1, 13))
    assert list(mean.x) == list(raw.x)
    np.testing.assert_allclose(mean.y, plain_running_mean(logged, 5), atol=1e-6)
    assert len(set(logged)) > 1 and list(mean.y) != logged  # it does smooth
    # Per-step values faint and thin, the mean solid and thick; the legend shows the mean.
    assert raw.line.width < mean.line.width and raw.line.color.startswith("rgba(")
    assert mean.line.dash == "solid" and mean.showlegend and not raw.showlegend
    # The mean is a figure curve, not a logged metric.
    assert REWARD_MEAN not in set(dash.history["metric"])


def test_smooth_one_draws_per_step_values_only(env, tmp_path):
    dash = LiveTraining(env, factory(env), small_config(max_steps=3), run_root=tmp_path,
                        smooth=1, refresh_seconds=0.0)
    dash.start()
    assert dash.wait(TIMEOUT)
    curves = [t.name for t in dash.figure.data if t.meta != FRAME]
    assert curves == ["001-grpo", "001-grpo"]  # reward, entropy
    with pytest.raises(ValueError, match="smooth must be an integer >= 1"):
        LiveTraining(env, factory(env), small_config(), run_root=tmp_path, smooth=0)


def test_a_long_run_is_thinned_for_the_browser_after_the_mean_is_taken():
    rng = np.random.default_rng(0)
    rewards = rng.random(5003).round(3).tolist()
    rows = [{"step": s, "reward": r, "entropy": 1.0} for s, r in enumerate(rewards, start=1)]
    shown = display_rows(rows, smooth=50, max_points=1000)
    steps = [r["step"] for r in shown]
    assert len(shown) <= 1000 and steps[0] == 1 and steps[-1] == 5003
    assert steps == sorted(set(steps))
    expected = plain_running_mean(rewards, 50)
    np.testing.assert_allclose([r[REWARD_MEAN] for r in shown],
                               [expected[s - 1] for s in steps], atol=1e-6)
    assert [r["reward"] for r in shown] == [rewards[s - 1] for s in steps]
    short = display_rows(rows[:20], smooth=50, max_points=1000)
    assert [r["step"] for r in short] == list(range(1, 21))  # a short run: every step


# --- before Start ------------------------------------------------------------------------
def test_panels_before_start_are_empty_titled_frames_over_the_budget(env, tmp_path):
    dash = LiveTraining(env, factory(env), small_config(max_steps=400), run_root=tmp_path,
                        callbacks=[ExactSuccess(ks=(1, 8))], refresh_seconds=0.0)
    layout = dash.figure.layout
    titles = [a.text for a in layout.annotations]
    assert titles[0].startswith("reward") and titles[1].startswith("entropy")
    assert titles[2].startswith("exact pass@k")
    assert "press Start" in titles[-1]
    for suffix in ("", "2", "3"):
        x, y = layout[f"xaxis{suffix}"], layout[f"yaxis{suffix}"]
        assert x.title.text == "step" and y.title.text
        assert tuple(x.range) == (0, 400) and tuple(y.range) == (0, 1)
    assert [layout[f"yaxis{s}"].title.text for s in ("", "2", "3")] == [
        "reward", "nats per token", "pass@k"]
    # an empty trace on each panel, so that plotly draws its axes
    frames = [t for t in dash.figure.data if t.meta == FRAME]
    assert sorted((t.xaxis, t.yaxis) for t in frames) == [("x", "y"), ("x2", "y2"), ("x3", "y3")]
    dash.controls["max_steps"].value = 30  # the frame follows the budget box
    assert tuple(layout.xaxis.range) == (0, 30)

    dash.start()
    assert dash.wait(TIMEOUT)
    layout = dash.figure.layout
    assert not any("press Start" in a.text for a in layout.annotations)
    assert layout.xaxis.autorange is True and layout.yaxis.autorange is True
    assert layout.yaxis.title.text == "reward"


def test_a_kl_panel_added_by_a_run_keeps_the_axis_titles(env, tmp_path):
    dash = LiveTraining(env, factory(env), small_config(max_steps=3), run_root=tmp_path,
                        refresh_seconds=0.0)
    dash.controls["beta"].value = 0.1  # the first run with beta > 0 adds a KL panel
    dash.start()
    assert dash.wait(TIMEOUT)
    layout = dash.figure.layout
    assert [layout[f"yaxis{s}"].title.text for s in ("", "2", "3")] == [
        "reward", "nats per token", "KL"]
    assert not any("press Start" in a.text for a in layout.annotations)
    assert len(dash.live_figure.trace(dash.run_dir.name, REWARD_MEAN).y) == 3
