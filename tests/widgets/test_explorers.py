"""The explorers of notebooks 04, 06 and 08, headless: each control is set as a browser
would set it, and the figure is checked against the plain computation."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
import torch

import rlnb.widgets.best_of_n as best_of_n_module
import rlnb.widgets.hidden_states as hidden_states_module
import rlnb.widgets.interventions as interventions_module
from rlnb.envs import TreeMDP
from rlnb.policies import TabularPolicy
from rlnb.probes.bon import best_of_n_curve, best_of_n_kl, goodhart_rewards
from rlnb.recipes import ENTROPY_INTERVENTIONS, tree_ppo_config
from rlnb.train import Trainer
from rlnb.widgets import BestOfNExplorer, HiddenStatesExplorer, InterventionExplorer


# --- 08: best-of-n -----------------------------------------------------------------------
def test_best_of_n_follows_n_and_the_noise():
    ex = BestOfNExplorer(num_outputs=2000, n=4, noise_scale=0.5, seed=3, max_n=1024)
    gold, kl, bound = ex.figure.data[0], ex.figure.data[2], ex.figure.data[3]
    ns = np.array([2**i for i in range(11)])
    assert ex.n.options == tuple((str(n), int(n)) for n in ns)
    assert list(kl.x) == ns.tolist()
    np.testing.assert_allclose(bound.y, np.log(ns) - (ns - 1) / ns, rtol=0, atol=1e-12)
    # the same draws as card 12's toy: gold first, then the noise
    g, proxies = goodhart_rewards(2000, generator=np.random.default_rng(3), noise_scale=0.5)
    np.testing.assert_array_equal(ex.gold, g)
    np.testing.assert_array_equal(ex.proxy(), proxies[0])
    p = np.full(2000, 1 / 2000)
    for n in (1, 64, 1024):
        ex.n.value = n
        marker = ex.figure.data[6]
        assert list(marker.x) == [n]
        assert marker.y[0] == pytest.approx(best_of_n_kl(p, proxies[0], n), abs=1e-10)
        assert f"n = <b>{n}</b>" in ex.status.value
    before = np.array(gold.y)
    ex.noise.value = 1.5
    _, noisier = goodhart_rewards(2000, generator=np.random.default_rng(3), noise_scale=1.5)
    expected = best_of_n_curve(p, noisier[0], ns, values={"gold": g})
    np.testing.assert_allclose(ex.figure.data[0].y, expected["gold"], atol=1e-12)
    np.testing.assert_allclose(ex.figure.data[1].y, expected["reward"], atol=1e-12)
    np.testing.assert_allclose(ex.figure.data[0].x, expected["d"], atol=1e-12)
    assert not np.allclose(ex.figure.data[0].y, before)
    assert ex.figure.data[4].y[0] == pytest.approx(expected["gold"].iloc[-1])  # n = 1024
    # the KL does not depend on the noise (uniform base, distinct rewards)
    np.testing.assert_allclose(ex.figure.data[2].y, expected["kl"], atol=1e-12)
    ex.noise.value = 0.0
    np.testing.assert_allclose(ex.figure.data[0].y, ex.figure.data[1].y)
    assert set(ex._curves) == {0.5, 1.5, 0.0}  # one curve per noise scale, n moves only markers


def test_best_of_n_titles_and_bad_inputs():
    ex = BestOfNExplorer(num_outputs=100, n=1, max_n=8)
    layout = ex.figure.layout
    assert layout.xaxis.title.text.startswith("d = sqrt(KL)") and layout.xaxis3.type == "log"
    assert [layout.yaxis.title.text, layout.yaxis2.title.text, layout.yaxis3.title.text] == [
        "gold reward", "proxy reward", "KL in nats"]
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    with pytest.raises(ValueError, match="n must be a power of two in 1..4096"):
        BestOfNExplorer(num_outputs=100, n=3)
    with pytest.raises(ValueError, match="max_n must be a power of two"):
        BestOfNExplorer(num_outputs=100, max_n=1000)
    with pytest.raises(ValueError, match="num_outputs must be an integer >= 2"):
        BestOfNExplorer(num_outputs=1)
    with pytest.raises(ValueError, match=r"noise_scale must lie in \[0, max_noise"):
        BestOfNExplorer(num_outputs=100, noise_scale=-0.1)
    with pytest.raises(ValueError, match="probs has 3 outputs but num_outputs is 100"):
        BestOfNExplorer(num_outputs=100, probs=[0.2, 0.3, 0.5])


# --- 04: hidden states -------------------------------------------------------------------
@pytest.fixture
def rank_and_probes():
    layers = ["embed", "layers.0.resid_post", "final_norm"]
    rank = pd.DataFrame([{"step": s, "name": n, "er": 10 - s / 25 - i, "erv": s + i}
                         for s in (0, 25, 50) for i, n in enumerate(layers)])
    probes = pd.DataFrame([{"step": s, "layer": n, "cv AUROC": 0.9 - s / 500 - i / 100,
                            "cv std": 0.01 * (i + 1)}
                           for s in (0, 50) for i, n in
                           enumerate([*layers, "answer string only (control)"])])
    return rank, probes


def test_hidden_states_layer_and_checkpoint(rank_and_probes):
    rank, probes = rank_and_probes
    ex = HiddenStatesExplorer(rank, probes)
    assert (ex.layer.value, ex.step.value, ex.metric.value) == ("final_norm", 50, "er")
    assert ex.step.options == (0, 25, 50) and ex.metric.options == ("er", "erv")
    bars = ex.rank_figure.data[-1]
    assert bars.y.tolist() == rank[rank.step == 50]["er"].tolist()
    ex.step.value = 0
    bars = ex.rank_figure.data[-1]
    assert bars.y.tolist() == rank[rank.step == 0]["er"].tolist()
    assert bars.marker.color[-1] != bars.marker.color[0]  # final_norm highlighted
    ex.layer.value = "embed"
    line = next(t for t in ex.rank_figure.data if t.name == "embed")
    assert line.y.tolist() == rank[rank.name == "embed"]["er"].tolist()
    assert ex.rank_figure.data[-1].marker.color[0] != ex.rank_figure.data[-1].marker.color[-1]
    ex.metric.value = "erv"
    assert ex.rank_figure.data[-1].y.tolist() == rank[rank.step == 0]["erv"].tolist()
    assert ex.rank_figure.layout.yaxis.title.text == "erv"
    # the probe figure at a probed checkpoint, then at one without a probe
    probe_bars = ex.probe_figure.data[0]
    assert probe_bars.y.tolist() == probes[probes.step == 0]["cv AUROC"].tolist()
    assert probe_bars.error_y.array.tolist() == probes[probes.step == 0]["cv std"].tolist()
    chosen = next(t for t in ex.probe_figure.data[1:] if t.name == "embed")
    assert chosen.y.tolist() == probes[probes.layer == "embed"]["cv AUROC"].tolist()
    assert any(t.name == "answer string only (control)" for t in ex.probe_figure.data)
    ex.step.value = 25
    assert len(ex.probe_figure.data[0].y) == 0
    assert "no probe at step 25 (probed: 0, 50)" in ex.probe_figure.layout.annotations[0].text
    ex.step.value = 50
    assert ex.probe_figure.data[0].y.tolist() == probes[probes.step == 50]["cv AUROC"].tolist()
    for fig in (ex.rank_figure, ex.probe_figure):
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        assert fig.layout.xaxis2.title.text and fig.layout.yaxis2.title.text


def test_hidden_states_bad_inputs(rank_and_probes):
    rank, probes = rank_and_probes
    assert len(HiddenStatesExplorer(rank).widget.children) == 2  # no probes: no probe figure
    with pytest.raises(TypeError, match="rank must be a DataFrame"):
        HiddenStatesExplorer({"step": [0]})
    with pytest.raises(ValueError, match="rank holds no rows"):
        HiddenStatesExplorer(rank.iloc[:0])
    with pytest.raises(KeyError, match="rank needs a 'step' column"):
        HiddenStatesExplorer(rank.drop(columns="step"))
    with pytest.raises(KeyError, match="needs a layer column, 'name' or 'layer'"):
        HiddenStatesExplorer(rank.drop(columns="name"))
    with pytest.raises(KeyError, match=r"metrics \['ER'\] are not numeric columns"):
        HiddenStatesExplorer(rank, metrics=["ER"])
    with pytest.raises(ValueError, match="several rows for one"):
        HiddenStatesExplorer(pd.concat([rank, rank]))
    with pytest.raises(ValueError, match="layer must be one of"):
        HiddenStatesExplorer(rank, layer="layers.9.resid_post")
    with pytest.raises(ValueError, match=r"step must be one of the checkpoints \[0, 25, 50\]"):
        HiddenStatesExplorer(rank, step=30)
    with pytest.raises(KeyError, match=r"probes lacks columns \['held-out'\]"):
        HiddenStatesExplorer(rank, probes, score="held-out")
    ex = HiddenStatesExplorer(rank, probes.drop(columns="cv std"))  # no spread: no error bars
    assert ex.probe_figure.data[0].error_y.array is None


# --- 06: entropy interventions -----------------------------------------------------------
@pytest.fixture(scope="module")
def tree():
    return TreeMDP.random(generator=torch.Generator().manual_seed(0))


def test_knobs_are_the_recipes_interventions(tree):
    """The explorer's default settings are notebook 06's (rlnb.recipes), not a copy that drifts."""
    base = tree_ppo_config(steps=10)
    ex = InterventionExplorer(tree, base)
    for name in ex.knobs:
        assert name in ENTROPY_INTERVENTIONS
        ex.intervention.value = name
        assert ex.config_for(name, ex.knob.value) == tree_ppo_config(steps=10, intervention=name)
        assert ex.knob.description == ex.knobs[name].label
        assert ex.knobs[name].min <= ex.knob.value <= ex.knobs[name].max


def test_intervention_run_is_a_trainer_run_with_the_knob(tree):
    base = tree_ppo_config(steps=8)
    ex = InterventionExplorer(tree, base, intervention="Clip-Cov")
    assert ex.current is None and len(ex.figure.data[0].y) == 0
    assert "press Run" in ex.status.value
    ex.knob.value = 0.05
    ex.run_button.click()
    run = ex.current
    assert run.config.clip_cov_ratio == 0.05 and run.config.policy_loss == "clip_cov"
    assert ex.progress.value == ex.progress.max == 8 and not ex.run_button.disabled
    # the curves are those of a plain Trainer run of that config (same seed, same numbers)
    plain = Trainer(TabularPolicy.for_env(tree), tree, base.replace(
        policy_loss="clip_cov", clip_cov_ub=1e9, clip_cov_ratio=0.05)).train()
    reward, entropy = ex.figure.data[2], ex.figure.data[3]
    np.testing.assert_array_equal(reward.y, plain["reward"].to_numpy())
    np.testing.assert_array_equal(entropy.y, plain["entropy"].to_numpy())
    np.testing.assert_array_equal(entropy.x, plain["step"].to_numpy())
    baseline = Trainer(TabularPolicy.for_env(tree), tree, base).train()
    np.testing.assert_array_equal(ex.figure.data[1].y, baseline["entropy"].to_numpy())
    assert "clip_cov_ratio = 0.050" in reward.name and "clip_cov_ratio = 0.050" in ex.status.value
    # another intervention: the slider becomes its knob; the baseline is not retrained
    ex.intervention.value = "entropy bonus"
    assert ex.knob.description == "entropy coef" and ex.knob.value == 0.1
    ex.knob.value = 0.3
    first_baseline = ex.baseline
    ex.run_button.click()
    assert ex.baseline is first_baseline and ex.current.config.entropy_coef == 0.3
    assert ex.current.config.policy_loss == "ppo_clip"
    assert not np.array_equal(ex.figure.data[3].y, plain["entropy"].to_numpy())
    assert len(ex.runs) == 2
    ex.intervention.value = "Clip-Cov"
    ex.knob.value = 0.05
    ex.run_button.click()  # trained before: drawn again from the cache
    assert len(ex.runs) == 2 and ex.current.config.clip_cov_ratio == 0.05
    # PPO at the baseline's own clip is the baseline: nothing to train
    ex.intervention.value = "PPO"
    assert ex.knob.value == base.epsilon
    ex.run_button.click()
    assert ex.current.history is ex.baseline.history


def test_intervention_bad_inputs(tree):
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        InterventionExplorer(tree, {"max_steps": 5})
    with pytest.raises(ValueError, match="intervention must be one of"):
        InterventionExplorer(tree, tree_ppo_config(steps=2), intervention="STEER")
    bad = {"x": interventions_module.Knob("no_such_field", "x", 0, 1, 0.1, 0.5)}
    with pytest.raises(ValueError, match="'no_such_field' is not a TrainConfig field"):
        InterventionExplorer(tree, tree_ppo_config(steps=2), knobs=bad, intervention="x")


@pytest.mark.parametrize("module", [best_of_n_module, hidden_states_module, interventions_module])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
