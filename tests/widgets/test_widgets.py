"""The dashboards' logic, headless: no kernel, no browser (tests/widgets/test_browser.py does that).

Buttons are pressed with ``Button.click()``, which runs the same handlers a browser click
runs. Mid-run events (a slider moved at step 2, Pause at step 3) are fired from a training
callback, so they land at a known step and the assertions are exact.
"""

from __future__ import annotations

import doctest
import json
import re
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch

import rlnb.widgets.live as live_module
import rlnb.widgets.passk as passk_module
import rlnb.widgets.rollouts as rollouts_module
from rlnb.envs import StrategyBandit
from rlnb.policies import TabularPolicy
from rlnb.train import ExactSuccess, TrainConfig, load_runs, resume
from rlnb.train.rundir import checkpoint_step
from rlnb.widgets import LiveTraining, PassKExplorer, RolloutBrowser, tokens_html

TIMEOUT = 60


@pytest.fixture
def env():
    return StrategyBandit.from_card(num_problems=16, num_strategies=8,
                                    generator=torch.Generator().manual_seed(0))


def make_dashboard(env, tmp_path, *, max_steps=6, callbacks=(), **overrides):
    config = TrainConfig(**{"max_steps": max_steps, "num_prompts_per_step": 4,
                            "num_generations": 4, "optimizer": "sgd", "learning_rate": 1.0,
                            "policy_loss": "vanilla_pg", **overrides})
    return LiveTraining(env, lambda: TabularPolicy.for_env(env, shared=True), config,
                        run_root=tmp_path / "runs", callbacks=callbacks, refresh_seconds=0.0)


def at_step(step, action):
    """A training callback that runs ``action()`` once, right after step ``step``."""
    def callback(trainer, metrics):
        if trainer.step == step:
            action()
    return callback


def trace(dash, metric, run=None):
    run = run if run is not None else dash.run_dir.name
    return dash.live_figure.trace(run, metric)


def wide(dash):
    return dash.history.pivot_table(index=["run", "step"], columns="metric",
                                    values="value").reset_index()


# --- LiveTraining ------------------------------------------------------------------------
def test_builds_with_controls_buttons_and_panels(env, tmp_path):
    dash = make_dashboard(env, tmp_path, callbacks=[ExactSuccess(ks=(1, 8))])
    assert dash.state == "idle" and dash.trainer is None and dash.run_dir is None
    assert set(dash.controls) == {"learning_rate", "temperature", "beta", "epsilon_high",
                                  "entropy_coef", "max_steps", "advantage",
                                  "num_generations", "scale_rewards"}
    assert dash.controls["learning_rate"].value == 1.0
    assert "grpo" in dash.controls["advantage"].options
    assert "gae" not in dash.controls["advantage"].options
    titles = [a.text for a in dash.figure.layout.annotations]
    assert titles[0].startswith("reward") and titles[1].startswith("entropy")
    assert titles[2].startswith("exact pass@k") and not any(t.startswith("KL") for t in titles)
    assert not dash.start_button.disabled and dash.stop_button.disabled
    assert "on restart" in dash._note.value and "next step" in dash._note.value
    assert list(dash.history.columns) == ["run", "step", "metric", "value"]
    assert "application/vnd.jupyter.widget-view+json" in dash._repr_mimebundle_()


def test_start_runs_steps_and_updates_the_figure(env, tmp_path):
    dash = make_dashboard(env, tmp_path, max_steps=5, callbacks=[ExactSuccess(ks=(1, 8))])
    dash.start_button.click()
    assert dash.wait(TIMEOUT)
    assert dash.state == "finished" and dash.trainer.step == 5
    assert list(trace(dash, "reward").x) == [1, 2, 3, 4, 5]
    assert len(trace(dash, "entropy").y) == 5 and len(trace(dash, "exact/pass@8").y) == 5
    assert dash.progress.value == 5 and "finished" in dash.status.value
    assert "pass@1" in dash.status.value
    hist = dash.history
    assert set(hist["run"]) == {"001-grpo"}
    assert sorted(hist.loc[hist["metric"] == "reward", "step"]) == [1, 2, 3, 4, 5]
    # The run directory is complete: metrics, checkpoint of the last step, config.
    assert checkpoint_step(dash.run_dir) == 5
    assert sorted(load_runs(dash.run_dir, wide=True)["step"]) == [1, 2, 3, 4, 5]


def test_the_dashboard_steps_the_trainer_loop_to_the_same_numbers(env, tmp_path):
    """The dashboard drives Trainer.steps(): its run logs what Trainer.train logs."""
    dash = make_dashboard(env, tmp_path, max_steps=4)
    dash.start()
    assert dash.wait(TIMEOUT) and dash.state == "finished"
    from rlnb.train import Trainer

    config = dash.trainer.config
    plain = Trainer(TabularPolicy.for_env(env, shared=True), env, config)
    plain.train()
    logged = wide(dash)
    for metric in ("reward", "entropy", "loss", "grad_norm"):
        assert logged[metric].tolist() == [row[metric] for row in plain.history]


def test_slider_change_applies_at_the_next_step(env, tmp_path):
    holder = {}

    def move_sliders():  # what a user does mid-run; the widgets fire their observers
        holder["dash"].controls["learning_rate"].value = 0.25
        holder["dash"].controls["temperature"].value = 0.5
        holder["dash"].controls["entropy_coef"].value = 0.01

    dash = make_dashboard(env, tmp_path, max_steps=5, callbacks=[at_step(2, move_sliders)])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(TIMEOUT) and dash.state == "finished"
    log = wide(dash).set_index("step")
    assert log["learning_rate"].tolist() == [1.0, 1.0, 0.25, 0.25, 0.25]
    assert log["knobs/temperature"].tolist() == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert log["knobs/entropy_coef"].tolist() == [0.0, 0.0, 0.01, 0.01, 0.01]
    assert dash.trainer.optimizer.param_groups[0]["lr"] == 0.25
    saved = json.loads((dash.run_dir / "config.json").read_text())
    assert saved["learning_rate"] == 0.25 and saved["temperature"] == 0.5


def test_epsilon_high_reaches_the_loss(env, tmp_path):
    holder = {}
    dash = make_dashboard(env, tmp_path, max_steps=3, policy_loss="ppo_clip",
                          callbacks=[at_step(1, lambda: setattr(
                              holder["dash"].controls["epsilon_high"], "value", 0.4))])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(TIMEOUT)
    assert dash.trainer._loss_options["epsilon_high"] == 0.4
    assert wide(dash)["knobs/epsilon_high"].tolist() == [0.2, 0.4, 0.4]


def test_pause_then_resume_continues_the_same_run(env, tmp_path):
    holder = {}
    dash = make_dashboard(env, tmp_path, max_steps=6,
                          callbacks=[at_step(3, lambda: holder["dash"].pause())])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(TIMEOUT)
    assert dash.state == "paused" and dash.trainer.step == 3
    assert dash.start_button.description == "Resume" and not dash.stop_button.disabled
    assert checkpoint_step(dash.run_dir) == 3
    dash.controls["learning_rate"].value = 0.5  # moved while paused: applies at step 4
    dash.controls["advantage"].value = "rloo"  # a restart knob: this run keeps grpo
    assert "Waiting for a restart" in dash._note.value and "algorithm = rloo" in dash._note.value
    dash.start_button.click()
    assert dash.wait(TIMEOUT)
    assert dash.state == "finished" and len(dash.runs) == 1
    log = wide(dash)
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert log["learning_rate"].tolist() == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert json.loads((dash.run_dir / "config.json").read_text())["advantage"] == "grpo"
    assert "lr 0.5" in dash.status.value


def test_stop_leaves_a_run_directory_that_loads_and_resumes(env, tmp_path):
    holder = {}
    dash = make_dashboard(env, tmp_path, max_steps=6,
                          callbacks=[at_step(3, lambda: holder["dash"].stop_button.click())])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(TIMEOUT)
    assert dash.state == "stopped" and dash.trainer.step == 3
    assert dash.stop_button.disabled and dash.start_button.description == "Start"
    run_dir = dash.run_dir
    assert checkpoint_step(run_dir) == 3
    df = load_runs(run_dir, wide=True)
    assert df["step"].tolist() == [1, 2, 3]
    # resume continues to the same numbers as a run that was never stopped
    resumed = resume(run_dir, max_steps=6, progress_bar=False)
    assert resumed.step == 6
    again = make_dashboard(env, tmp_path / "b", max_steps=6)
    again.start()
    assert again.wait(TIMEOUT)
    full = wide(again).set_index("step")["reward"]
    after = load_runs(run_dir, wide=True).set_index("step")["reward"]
    np.testing.assert_allclose(after.to_numpy(), full.to_numpy())


def test_stop_while_paused_closes_the_run(env, tmp_path):
    holder = {}
    dash = make_dashboard(env, tmp_path, max_steps=6,
                          callbacks=[at_step(2, lambda: holder["dash"].pause())])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(TIMEOUT) and dash.state == "paused"
    dash.stop()
    assert dash.state == "stopped"
    assert load_runs(dash.run_dir, wide=True)["step"].tolist() == [1, 2]
    assert resume(dash.run_dir, max_steps=3, progress_bar=False).step == 3


def test_restart_knobs_apply_to_the_next_run(env, tmp_path):
    holder = {}

    def change_algorithm():
        holder["dash"].controls["advantage"].value = "rloo"
        holder["dash"].controls["num_generations"].value = 2

    dash = make_dashboard(env, tmp_path, max_steps=3, callbacks=[at_step(1, change_algorithm)])
    holder["dash"] = dash
    dash.start()
    assert dash.wait(TIMEOUT)
    first = json.loads((dash.run_dir / "config.json").read_text())
    assert first["advantage"] == "grpo" and first["num_generations"] == 4  # unchanged mid-run
    dash.start()  # after a finished run: a new run with the new knobs
    assert dash.wait(TIMEOUT)
    assert [p.name for p in dash.runs] == ["001-grpo", "002-rloo"]
    second = json.loads((dash.run_dir / "config.json").read_text())
    assert second["advantage"] == "rloo" and second["num_generations"] == 2
    assert set(dash.history["run"]) == {"001-grpo", "002-rloo"}
    assert len(trace(dash, "reward", "001-grpo").y) == 3
    assert len(trace(dash, "reward", "002-rloo").y) == 3
    assert set(load_runs(dash.run_root)["run"]) == {"001-grpo", "002-rloo"}


def test_beta_adds_a_kl_panel_and_applies_live(env, tmp_path):
    holder = {}
    dash = make_dashboard(env, tmp_path, max_steps=3, beta=0.1, callbacks=[at_step(
        1, lambda: setattr(holder["dash"].controls["beta"], "value", 0.3))])
    holder["dash"] = dash
    assert any(a.text.startswith("KL") for a in dash.figure.layout.annotations)
    dash.start()
    assert dash.wait(TIMEOUT)
    assert len(trace(dash, "kl").y) == 3
    assert wide(dash)["knobs/beta"].tolist() == [0.1, 0.3, 0.3]


def test_first_run_with_beta_rebuilds_the_figure_with_a_kl_panel(env, tmp_path):
    dash = make_dashboard(env, tmp_path, max_steps=2)
    dash.start()
    assert dash.wait(TIMEOUT)
    dash.controls["beta"].value = 0.2  # no reference in a beta = 0 run: applies on restart
    assert not any(a.text.startswith("KL") for a in dash.figure.layout.annotations)
    dash.start()
    assert dash.wait(TIMEOUT)
    assert any(a.text.startswith("KL") for a in dash.figure.layout.annotations)
    assert len(trace(dash, "reward", "001-grpo").y) == 2  # earlier runs are redrawn
    assert len(trace(dash, "kl").y) == 2


def test_an_error_in_a_step_is_shown_and_raised_by_wait(env, tmp_path):
    def boom(trainer, metrics):
        if trainer.step == 2:
            raise RuntimeError("callback failed")

    dash = make_dashboard(env, tmp_path, max_steps=5, callbacks=[boom])
    dash.start()
    with pytest.raises(RuntimeError, match="training failed"):
        dash.wait(TIMEOUT)
    assert dash.state == "error" and "callback failed" in dash.status.value
    assert checkpoint_step(dash.run_dir) is not None  # the run directory was closed cleanly


def test_policy_factory_must_build_a_fresh_policy(env, tmp_path):
    with pytest.raises(TypeError, match="fresh policy"):
        LiveTraining(env, TabularPolicy.for_env(env, shared=True), run_root=tmp_path)


def test_history_is_tidy_and_default_run_root_is_a_temp_dir(env, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dash = LiveTraining(env, lambda: TabularPolicy.for_env(env, shared=True),
                        TrainConfig(max_steps=2, num_generations=2, num_prompts_per_step=2))
    assert dash.run_root.is_dir() and dash.run_root.parent == tmp_path
    dash.start()
    assert dash.wait(TIMEOUT)
    hist = dash.history
    assert list(hist.columns) == ["run", "step", "metric", "value"]
    assert {"reward", "entropy", "learning_rate", "knobs/temperature"} <= set(hist["metric"])


# --- PassKExplorer -----------------------------------------------------------------------
def test_passk_explorer_models_and_k_range_update_the_figure():
    ex = PassKExplorer({"base": [1, 3, 0, 8], "rl": [8, 8, 0, 0]}, n=8)
    assert [t.name for t in ex.figure.data] == ["base", "rl"]
    assert ex.curve["k"].unique().tolist() == [1, 2, 4, 8]
    ex.models.value = ("rl",)
    assert [t.name for t in ex.figure.data] == ["rl"]
    assert ex.figure.data[0].line.color == ex.colors["rl"]  # colours stay with the model
    ex.k_range.value = (2, 6)
    assert ex.curve["k"].tolist() == [2, 4, 6]
    ex.models.value = ()
    assert len(ex.figure.data) == 0


def test_passk_explorer_drills_into_samples_from_a_long_frame():
    results = pd.DataFrame({"model": ["base", "base", "rl", "rl"], "problem": ["p0", "p1"] * 2,
                            "correct": [1, 2, 2, 0], "n": 2})
    samples = pd.DataFrame({"model": ["base", "base", "rl"], "problem": ["p1", "p1", "p1"],
                            "completion": ["<b>42</b>", "41", "7"], "reward": [1.0, 1.0, 0.0]})
    ex = PassKExplorer(results, samples=samples)
    assert ex.n == {"base": 2, "rl": 2}
    # problems where the models disagree most come first
    assert ex.problem.options[0][0].startswith("p1")
    ex.problem.value = ex.problem.options[0][1]
    view = ex.samples_view.value
    assert "&lt;b&gt;42&lt;/b&gt;" in view and "<b>42</b>" not in view  # escaped text
    every = "".join(re.findall(r"<details>.*?</details>", view))
    table = re.sub(r"<details>.*?</details>", "", view)
    assert table.count("✓") == 2 and table.count("✗") == 1  # distinct answers
    assert every.count("✓") == 2 and every.count("✗") == 1  # every sample, behind a toggle
    assert "2/2 correct" in view and "0/2 correct" in view


def test_passk_explorer_groups_repeated_answers_and_names_empty_ones():
    results = pd.DataFrame({"model": ["base"], "problem": ["p0"], "correct": [3], "n": 6})
    samples = pd.DataFrame({"model": "base", "problem": "p0",
                            "completion": ["3", "3", "3", "", "5", "3 "],
                            "reward": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]})
    ex = PassKExplorer(results, samples=samples)
    ex.problem.value = 0
    table, _, every = ex.samples_view.value.partition("<details>")
    assert "4 distinct of 6 samples" in table
    assert table.index("3×") < table.index("1×")  # most frequent first
    assert table.count("<tr>") == 4 and "(empty)" in table and "(empty)" in every
    assert every.count("✓") + every.count("✗") == 6


def test_passk_explorer_checks_its_inputs():
    with pytest.raises(ValueError, match="cannot exceed|must lie in"):
        PassKExplorer({"a": [5]}, n=4)
    with pytest.raises(ValueError, match="n \\(samples drawn"):
        PassKExplorer({"a": [1]})
    with pytest.raises(ValueError, match="one count per problem"):
        PassKExplorer({"a": [1, 2], "b": [1]}, n=4)


# --- RolloutBrowser ----------------------------------------------------------------------
def test_rollout_browser_filters_and_pages():
    tokens = [["1", "2"], ["1", "3"], ["9"], ["4", "4"], ["x"]]
    values = np.array([[0.1, 1.0], [0.5, 0.2], [2.0, 0.0], [0.0, 0.0], [0.3, 0.0]])
    b = RolloutBrowser(tokens, values, rewards=[1, 0, 0, 1, 0], page_size=2)
    assert b.num_pages == 3 and b.prev_button.disabled and not b.next_button.disabled
    b.next_button.click()
    assert b.page == 1 and "#2 ·" in b.body.value and "#0 ·" not in b.body.value
    b.filter.value = "correct"
    assert b.rows == [0, 3] and b.page == 0 and b.num_pages == 1
    assert b.body.value.count("✓") == 2 and "✗" not in b.body.value
    b.filter.value = "incorrect"
    assert b.rows == [1, 2, 4]
    assert "entropy" in b.legend.value and "linear-gradient" in b.legend.value


def test_rollout_browser_colours_advantages_and_respects_the_mask():
    b = RolloutBrowser(["ab", "c<"], [[1.0, -1.0], [0.0, 0.5]], mask=[[1, 1], [1, 0]],
                       kind="advantage", prompts=["Q: ", "Q: "])
    html = b.body.value
    assert "rgb(213,94,0)" in html and "rgb(0,114,178)" in html  # +1 vermillion, -1 blue
    assert "color:#aaa'>&lt;</span>" in html  # masked token, escaped, uncoloured
    assert b.filter.disabled  # no rewards: nothing to filter on
    assert "-1" in b.legend.value and "+1" in b.legend.value


def test_tokens_html_and_input_checks():
    s = tokens_html(["a", "\n"], [0.0, 3.0], kind="entropy", vmax=3.0)
    assert "↵" in s and "rgb(255,255,255)" in s and "rgb(213,94,0)" in s
    with pytest.raises(ValueError, match="kind"):
        tokens_html(["a"], [1.0], kind="reward")
    with pytest.raises(ValueError, match="3 completions but values has 2"):
        RolloutBrowser(["a", "b", "c"], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="has 3 tokens but values has T = 2"):
        RolloutBrowser(["abc"], np.zeros((1, 2)))


@pytest.mark.parametrize("module", [live_module, passk_module, rollouts_module],
                         ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
