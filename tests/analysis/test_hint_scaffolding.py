"""Card 21's pieces: the hard trees, the hinted node's value, the criteria, and the quick
run (the adaptive hint shrinks to none while the hint-free pass@1 climbs)."""

from __future__ import annotations

import copy

import pytest
import torch

import analysis.hint_scaffolding as m
from rlnb.envs import HintedTask
from rlnb.policies import TabularPolicy


def test_trees_are_hard_and_the_hinted_value_is_exact():
    tree = m.make_tree(0)
    assert tree.num_prompts == 16 and tree.leaf_rewards.shape[1] == 4096
    assert tree.leaf_rewards.sum(1).tolist() == [4.0] * 16
    env = HintedTask(tree, "fixed", 5)
    probs = TabularPolicy.for_env(tree).probs().detach()
    assert m.hinted_node_value(env, probs, 0) == pytest.approx(4 / 4096)
    # from the depth-5 node of a rewarded path, a uniform policy succeeds with >= 1/4
    assert m.hinted_node_value(env, probs, 5) >= 0.25
    cfg = m.config(0)
    assert (cfg.num_generations, cfg.learning_rate, cfg.max_steps) == (8, 16.0, 150)


def test_checks_fail_on_results_that_miss_the_card():
    res = {"seeds": [0], "runs": [
        {"seed": 0, "schedule": "adaptive", "at_75": 0.6, "at_150": 0.95},
        {"seed": 0, "schedule": "none", "at_75": 0.2, "at_150": 0.3},
        {"seed": 0, "schedule": "fixed h=5", "at_75": 0.0, "at_150": 0.01}]}
    verdicts = {c.name: c.passed for c in m.checks(res)}
    assert verdicts == {
        "adaptive hint: hint-free pass@1 at 150 steps": True,
        "adaptive - none: hint-free pass@1 at 150 steps": True,
        "adaptive - none: hint-free pass@1 at 75 steps": False,  # 0.4 < 0.5
        "fixed h=5: hint-free pass@1 at 150 steps": True}
    worse = copy.deepcopy(res)
    worse["runs"][2]["at_150"] = 0.2
    assert not m.checks(worse)[3].passed


@pytest.mark.slow
def test_quick_run_passes_and_the_adaptive_hint_shrinks():
    res = m.run(quick=True)
    assert len(res["seeds"]) == 3
    failed = [str(c) for c in m.checks(res) if not c.passed]
    assert not failed, failed
    for r in res["runs"]:
        assert len(r["pass_at_1"]) == m.STEPS
        if r["schedule"] == "adaptive":
            assert r["h_mean"][0] >= 4.5 and r["h_max"][-1] == 0  # every prompt off hints
        if r["schedule"] == "fixed h=5":
            # the hinted subproblem is solved; the hint-free policy never reaches it
            assert r["hinted_pass_at_1"] > 0.9 and r["at_150"] < 4 ** -5 * 2
    assert m.figure(res).data
    assert torch.tensor(res["base_pass_at_1"]).max() < 0.002
