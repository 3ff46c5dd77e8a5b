"""The small shared helpers of rlnb.recipes: the quick switch, runs over seeds and grids,
exact pass@k frames, the pass@k crossing, answer shares and criterion verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rlnb.recipes import (
    QUICK_ENV,
    answer_share,
    crossing_k,
    divisor_answer_share,
    exact_pass_at_k_curve,
    met,
    over_seeds,
    quick,
    sweep,
)

# --- quick -------------------------------------------------------------------------------


def test_quick_reads_rlnb_quick_when_called(monkeypatch):
    assert QUICK_ENV == "RLNB_QUICK"  # the variable tests/project/test_notebooks.py sets
    monkeypatch.delenv(QUICK_ENV, raising=False)
    assert quick() is False
    monkeypatch.setenv(QUICK_ENV, "1")
    assert quick() is True
    for other in ("0", "", "true", "yes"):  # only "1" asks for the reduced budgets
        monkeypatch.setenv(QUICK_ENV, other)
        assert quick() is False


# --- sweep and over_seeds ----------------------------------------------------------------


def test_over_seeds_concatenates_with_labels_then_seed():
    calls = []

    def run(seed):
        calls.append(seed)
        return pd.DataFrame({"step": [1, 2, 3], "reward": [seed * 0.1] * 3})

    df = over_seeds(run, [2, 0, 5], run="GRPO")
    assert calls == [2, 0, 5]
    assert df.columns.tolist() == ["step", "reward", "run", "seed"]
    assert df.index.tolist() == list(range(9))
    assert df["seed"].tolist() == [2] * 3 + [0] * 3 + [5] * 3
    assert (df["run"] == "GRPO").all()
    # the frame the notebooks built by hand: a list of per-seed frames and pd.concat
    by_hand = pd.concat([run(s).assign(run="GRPO", seed=s) for s in [2, 0, 5]],
                        ignore_index=True)
    pd.testing.assert_frame_equal(df, by_hand)


def test_sweep_first_axis_outermost_and_one_column_per_axis():
    order = []

    def run(config, seed):
        order.append((config, seed))
        return pd.DataFrame({"step": [0, 1], "value": [len(config) + seed] * 2})

    df = sweep(run, config=["a", "bb"], seed=[0, 1, 2])
    assert order == [("a", 0), ("a", 1), ("a", 2), ("bb", 0), ("bb", 1), ("bb", 2)]
    assert df.columns.tolist() == ["step", "value", "config", "seed"]
    assert len(df) == 12 and df.index.is_unique
    by_hand = pd.concat([run(c, s).assign(config=c, seed=s)
                         for c in ["a", "bb"] for s in [0, 1, 2]], ignore_index=True)
    pd.testing.assert_frame_equal(df, by_hand)


def test_sweep_axis_overwrites_a_column_of_the_same_name_and_accepts_run_as_an_axis():
    df = sweep(lambda run: pd.DataFrame({"run": ["x"], "v": [1.0]}), run=["a", "b"])
    assert df["run"].tolist() == ["a", "b"]


def test_sweep_refuses_no_axis_an_empty_axis_and_a_run_that_returns_no_frame():
    with pytest.raises(ValueError, match="at least one axis"):
        sweep(lambda: pd.DataFrame())
    with pytest.raises(ValueError, match="'seed'.*no values"):
        sweep(lambda config, seed: pd.DataFrame(), config=["a"], seed=[])
    with pytest.raises(TypeError, match="must return a pandas DataFrame"):
        sweep(lambda seed: {"reward": 1.0}, seed=[0])


def test_over_seeds_of_trainer_histories():
    from rlnb.envs import Bandit
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    env = Bandit(torch.tensor([[0.2, 0.8]]))
    base = TrainConfig(max_steps=3, num_prompts_per_step=1, num_generations=4,
                       optimizer="sgd", learning_rate=1.0, progress_bar=False)

    def train(seed):
        return Trainer(TabularPolicy.for_env(env), env, base.replace(seed=seed)).train()

    def untimed(frame):  # wall-clock columns differ from run to run
        return frame.drop(columns=[c for c in frame if c.startswith("time/")])

    df = over_seeds(train, [0, 1], run="pg")
    assert len(df) == 6 and df.groupby("seed")["step"].apply(list).tolist() == [[1, 2, 3]] * 2
    pd.testing.assert_frame_equal(untimed(df[df.seed == 1].drop(columns=["run", "seed"])
                                          .reset_index(drop=True)), untimed(train(1)))


# --- exact pass@k ------------------------------------------------------------------------


def test_exact_pass_at_k_curve_is_the_sandbox_curve_in_tidy_form():
    from rlnb.envs import StrategyBandit

    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(0))
    logits = StrategyBandit.card_base_logits(env.num_strategies,
                                             generator=torch.Generator().manual_seed(1))
    probs = {"base": torch.softmax(logits, -1).requires_grad_(),
             "uniform": torch.full((1, env.num_strategies), 1 / env.num_strategies)}
    ks = [1, 4, 256]
    df = exact_pass_at_k_curve(env, probs, ks)
    assert df.columns.tolist() == ["model", "k", "pass_at_k"]
    assert df["model"].tolist() == ["base"] * 3 + ["uniform"] * 3
    assert df["k"].tolist() == ks * 2
    for name, p in probs.items():
        assert df[df.model == name]["pass_at_k"].tolist() == env.pass_at_k_exact(p, ks).tolist()


# --- crossing_k --------------------------------------------------------------------------


def _first_not_ahead(ks, base, rl):
    """Notebook 03's reading: the first k where RL is not ahead of the base."""
    return next((k for k, b, r in zip(ks, base, rl) if not r > b), None)


def _overtakes(ks, base, rl):
    """The interpolated crossing analysis/passk_crossover_lm.py computed before."""
    d = np.asarray(rl) - np.asarray(base)
    for j in range(1, len(ks)):
        if d[j - 1] > 0 >= d[j]:
            lo, hi = np.log2(ks[j - 1]), np.log2(ks[j])
            return float(2 ** (lo + (hi - lo) * d[j - 1] / (d[j - 1] - d[j])))
    return None


def test_crossing_k_agrees_with_both_former_readings_when_rl_leads_at_the_first_k():
    rng = np.random.default_rng(0)
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    crossed = 0
    for _ in range(500):
        base = np.sort(rng.uniform(0, 1, len(ks)))
        rl = np.minimum(base + rng.uniform(-0.3, 0.3, len(ks)), 1.0)
        rl[0] = base[0] + rng.uniform(0.01, 0.3)  # RL ahead at k = 1, as after GRPO
        exact = crossing_k(ks, base.tolist(), rl.tolist(), interpolate=False)
        assert exact == _first_not_ahead(ks, base, rl)
        assert crossing_k(ks, base.tolist(), rl.tolist()) == _overtakes(ks, base, rl)
        crossed += exact is not None
    assert 100 < crossed < 500  # both outcomes were exercised


def test_crossing_k_edges():
    ks = [1, 2, 4]
    assert crossing_k(ks, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]) is None  # RL leads throughout
    assert crossing_k(ks, [0.5, 0.6, 0.7], [0.1, 0.2, 0.3]) == 1.0  # the base from the start
    assert crossing_k(ks, [0.5, 0.6, 0.7], [0.1, 0.2, 0.3], interpolate=False) == 1
    assert crossing_k(ks, [0.1, 0.5, 0.9], [0.3, 0.5, 0.6]) == 2.0  # a tie counts as caught up
    assert crossing_k(ks, pd.Series([0.1, 0.5, 0.9]), pd.Series([0.3, 0.5, 0.6])) == 2.0
    with pytest.raises(ValueError, match="one value per k"):
        crossing_k(ks, [0.1, 0.2], [0.3, 0.4])


# --- answer shares -----------------------------------------------------------------------


class _Task:
    """Problem i is N = ns[i] (the one method of a factor task the share needs)."""

    def __init__(self, ns):
        self.ns = ns

    def n(self, i):
        return self.ns[i]


def test_answer_share():
    assert answer_share(["3", "3\n", " 7", "33"], "3") == 0.5
    assert answer_share(["11"], "3") == 0.0


def test_divisor_answer_share_matches_the_notebook_and_analysis_formulas():
    rng = np.random.default_rng(1)
    ns = [int(n) for n in rng.integers(100_001, 999_999, 60)]
    samples = pd.Series([[str(rng.choice(["3", " 3", "7", "13", "x"])) for _ in range(16)]
                         for _ in ns])
    hit, miss = divisor_answer_share(_Task(ns), samples, 3)
    divides = [i for i, n in enumerate(ns) if n % 3 == 0]
    others = [i for i, n in enumerate(ns) if n % 3 != 0]
    assert divides and others

    def share_of(answer, row):  # notebook 02's helper
        return sum(s.strip() == answer for s in row) / len(row)

    assert hit == samples.iloc[divides].map(lambda s: share_of("3", s)).mean()
    assert miss == samples.iloc[others].map(lambda s: share_of("3", s)).mean()
    assert hit == float(np.mean([share_of("3", samples[i]) for i in divides]))  # the analysis'
    assert divisor_answer_share(_Task(ns), samples, 7) != (hit, miss)


def test_divisor_answer_share_on_a_factor_task():
    from rlnb.envs.text_tasks import factor

    task = factor(40, seed=0)
    samples = [["3" if task.n(i) % 3 == 0 else "7"] * 4 for i in range(task.num_prompts)]
    assert divisor_answer_share(task, samples, 3) == (1.0, 0.0)


# --- met ---------------------------------------------------------------------------------


def test_met():
    assert met(True) == "met" and met(False) == "not met"
    assert met(np.bool_(True)) == "met"
    assert met(pd.Series([5, 6]).between(4, 256).all()) == "met"
    assert met(pd.Series([2, 6]).between(4, 256).all()) == "not met"
