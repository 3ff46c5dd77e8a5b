"""Known answers and properties of the boundary probes (cards 1 and 2)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlnb.probes import (
    BOUNDARY_CATEGORIES,
    answer_entropy,
    answer_entropy_from_counts,
    answer_support,
    boundary,
    boundary_from_probs,
    pass_at_k,
    support_from_counts,
)
from rlnb.viz.probes import boundary_table

# --- boundary from counts ------------------------------------------------------------


def test_boundary_known_answer():
    per, summary = boundary([4, 1, 0, 0], [4, 0, 2, 0], n_base=4, n_rl=4, k=4)
    assert per["category"].tolist() == ["both", "base only", "rl only", "neither"]
    assert per["pass_base"].tolist() == [1.0, 1.0, 0.0, 0.0]  # pass@n = 1 iff c >= 1
    assert list(summary.columns) == ["k", "category", "count", "fraction"]
    assert summary["count"].tolist() == [1, 1, 1, 1]
    assert summary["fraction"].tolist() == [0.25] * 4


def test_solved_means_pass_at_k_above_threshold():
    c_base, c_rl, n = np.array([1, 2, 3, 0]), np.array([3, 2, 1, 4]), 4
    per, _ = boundary(c_base, c_rl, n, n, k=1)
    # at k = 1 pass@1 = c / n: solved iff c / n > 0.5
    assert per["solved_base"].tolist() == [False, False, True, False]
    assert per["solved_rl"].tolist() == [True, False, False, True]
    assert per["category"].tolist() == ["rl only", "neither", "base only", "rl only"]
    # threshold 0: any correct sample at all, at every k
    per0, _ = boundary(c_base, c_rl, n, n, k=1, threshold=0.0)
    assert per0["solved_base"].tolist() == [True, True, True, False]
    # threshold 0.7 with k = 2: pass@2 of c = 2 of 4 is 1 - C(2,2)/C(4,2) = 5/6
    per7, _ = boundary([2], [1], 4, 4, k=2, threshold=0.7)
    assert per7["pass_base"].iloc[0] == pytest.approx(5 / 6)
    assert per7["category"].tolist() == ["base only"]


def test_several_k_give_one_block_each_and_full_summary():
    per, summary = boundary([8, 1, 0], [8, 0, 0], n_base=8, n_rl=8, k=[1, 8])
    assert per["k"].tolist() == [1, 1, 1, 8, 8, 8]
    assert per["c_base"].tolist() == [8, 1, 0] * 2
    at8 = summary[summary["k"] == 8].set_index("category")["count"]
    assert at8.to_dict() == {"both": 1, "base only": 1, "rl only": 0, "neither": 1}
    assert summary.groupby("k")["count"].sum().tolist() == [3, 3]
    assert list(summary["category"].cat.categories) == list(BOUNDARY_CATEGORIES)


def test_per_problem_n():
    per, _ = boundary([1, 1], [0, 1], n_base=[2, 16], n_rl=16, k=2)
    assert per["pass_base"].tolist() == [1.0, pytest.approx(pass_at_k(16, 1, 2))]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_categories_partition_and_swap_symmetry(data):
    P = data.draw(st.integers(1, 20))
    n = data.draw(st.integers(1, 12))
    k = data.draw(st.integers(1, n))
    cb = data.draw(st.lists(st.integers(0, n), min_size=P, max_size=P))
    cr = data.draw(st.lists(st.integers(0, n), min_size=P, max_size=P))
    thr = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    per, summary = boundary(cb, cr, n, n, k, threshold=thr)
    assert summary["count"].sum() == P
    np.testing.assert_allclose(per["pass_base"], pass_at_k(n, cb, k))
    swapped = boundary(cr, cb, n, n, k, threshold=thr).summary.set_index("category")["count"]
    orig = summary.set_index("category")["count"]
    assert swapped["base only"] == orig["rl only"] and swapped["rl only"] == orig["base only"]
    assert swapped["both"] == orig["both"] and swapped["neither"] == orig["neither"]
    # solved is monotone in k: more samples never un-solve a problem
    if k < n:
        later = boundary(cb, cr, n, n, k + 1, threshold=thr).per_problem
        assert (later["solved_base"] | ~per["solved_base"]).all()


def test_boundary_errors():
    with pytest.raises(ValueError, match="same problems"):
        boundary([1, 2], [1], 4, 4, k=1)
    with pytest.raises(ValueError, match="cannot exceed n"):
        boundary([1], [1], 4, 4, k=8)
    with pytest.raises(ValueError, match="threshold"):
        boundary([1], [1], 4, 4, k=1, threshold=1.0)
    with pytest.raises(ValueError, match="k must be"):
        boundary([1], [1], 4, 4, k=0)


# --- boundary from exact probabilities -----------------------------------------------------


def test_boundary_from_probs_known_answer():
    per, summary = boundary_from_probs([0.5, 0.01], [0.9, 0.0], k=[1, 100])
    assert per["category"].tolist() == ["rl only", "neither", "both", "base only"]
    assert per["pass_base"].iloc[2] == pytest.approx(1 - 0.5**100)
    assert per["p_rl"].tolist() == [0.9, 0.0, 0.9, 0.0]
    assert summary["count"].sum() == 4


def test_sharpened_strategy_bandit_loses_problems_at_large_k():
    from rlnb.envs.strategy_bandit import StrategyBandit, card_base_logits

    g = torch.Generator().manual_seed(0)
    env = StrategyBandit.from_card(generator=g)
    base = torch.softmax(card_base_logits(generator=g), -1)
    rl = torch.softmax(torch.log(base) * 6, -1)  # sharpened onto the top strategy
    p_base, p_rl = env.success_probability(base), env.success_probability(rl)
    _, summary = boundary_from_probs(p_base, p_rl, k=[1, 256])
    counts = summary.set_index(["k", "category"])["count"]
    assert counts[(256, "base only")] > counts[(256, "rl only")]  # card 1's shrinkage
    assert p_rl.mean() > p_base.mean()  # while pass@1 went up


# --- answer support and answer entropy (card 2) ----------------------------------------------


def test_answer_support_known_answer():
    base = [["3", "7", "x", "3"], ["1", "2"]]
    rl = [["3", "3", "3", "3"], ["2", "5"]]
    correct = [{"3", "7", "11"}, {"2", "5"}]
    per, totals = answer_support(base, rl, correct)
    assert per[["supp_base", "supp_rl", "shared", "shrink", "expand"]].values.tolist() == [
        [2, 1, 1, 1, 0],
        [1, 2, 1, 0, 1],
    ]
    assert per["distinct_base"].tolist() == [3, 2]
    assert per["h_ans_rl"].iloc[0] == 0.0
    assert totals["shrink"] == 1 and totals["expand"] == 1
    assert totals["problems_shrunk"] == 1 and totals["problems_expanded"] == 1


def test_answer_support_with_a_correct_function_dicts_and_equal_budget():
    base = {"p0": [2, 4, 6, 8, 10, 12], "p1": [1, 3]}
    rl = {"p0": [2, 2, 4], "p1": [1, 3, 5]}
    per, _ = answer_support(base, rl, lambda problem, a: a % 2 == 0)
    assert per["problem"].tolist() == ["p0", "p1"]
    assert per["n_base"].tolist() == [3, 2] and per["n_rl"].tolist() == [3, 2]  # min(n_b, n_r)
    assert per["supp_base"].tolist() == [3, 0] and per["shrink"].tolist() == [1, 0]
    per_all, _ = answer_support(base, rl, lambda problem, a: a % 2 == 0, equalize=False)
    assert per_all["supp_base"].tolist() == [6, 0]  # more samples, more support, for free


def test_answer_support_errors():
    with pytest.raises(ValueError, match="same problems"):
        answer_support([["1"]], [["1"], ["2"]], [{"1"}])
    with pytest.raises(ValueError, match="every problem"):
        answer_support([["1"], ["2"]], [["1"], ["2"]], [{"1"}])
    with pytest.raises(TypeError, match="hashable"):
        answer_support([[["1"]]], [[["1"]]], lambda p, a: True)
    with pytest.raises(TypeError, match="one list of answers per problem"):
        answer_support("abc", "abc", lambda p, a: True)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5))
def test_answer_entropy_of_m_equally_common_answers_is_log_m(m, reps):
    answers = [f"a{i}" for i in range(m)] * reps
    assert answer_entropy(answers) == pytest.approx(math.log(m), abs=1e-12)
    assert answer_entropy(list(reversed(answers))) == pytest.approx(math.log(m), abs=1e-12)


def test_answer_entropy_known_answers():
    assert answer_entropy(["7"] * 5) == 0.0
    assert answer_entropy([None, None, "3", "3"]) == pytest.approx(math.log(2))  # None is an answer
    with pytest.raises(ValueError, match="empty"):
        answer_entropy([])
    with pytest.raises(TypeError, match="single string"):
        answer_entropy("42")


# --- figure --------------------------------------------------------------------------


def test_boundary_table_from_summary_and_per_problem():
    per, summary = boundary([4, 1, 0], [4, 0, 2], n_base=4, n_rl=4, k=[1, 4])
    fig = boundary_table(summary)
    assert [t.name for t in fig.data] == list(BOUNDARY_CATEGORIES)
    assert fig.layout.barmode == "stack"
    both = next(t for t in fig.data if t.name == "both")
    assert list(both.x) == ["1", "4"] and list(both.y) == [1, 1]
    fig2 = boundary_table(per, fraction=True)
    base_only = next(t for t in fig2.data if t.name == "base only")
    assert list(base_only.y) == pytest.approx([0.0, 1 / 3])
    with pytest.raises(KeyError, match="category"):
        boundary_table(pd.DataFrame({"k": [1]}))


# --- support and answer entropy from count tables (card 2, finite answer sets) ----------------

def _answers(row):
    return [a for a, c in enumerate(row) for _ in range(int(c))]


def test_support_from_counts_matches_answer_support_on_the_written_out_samples():
    rng = np.random.default_rng(0)
    cb = rng.multinomial(20, [0.4, 0.3, 0.2, 0.1, 0.0], size=6)
    cr = rng.multinomial(20, [0.9, 0.05, 0.05, 0.0, 0.0], size=6)
    correct = rng.random((6, 5)) < 0.5
    per, tot = support_from_counts(cb, cr, correct)
    lists_b = [_answers(r) for r in cb]
    lists_r = [_answers(r) for r in cr]
    per2, tot2 = answer_support(lists_b, lists_r, [set(np.flatnonzero(c)) for c in correct])
    cols = ["supp_base", "supp_rl", "shared", "shrink", "expand", "distinct_base", "distinct_rl"]
    assert per[cols].values.tolist() == per2[cols].values.tolist()
    np.testing.assert_allclose(per["h_ans_rl"], per2["h_ans_rl"], atol=1e-12)
    assert tot.to_dict() == pytest.approx(tot2.to_dict())


def test_support_from_counts_known_answer_and_shape_errors():
    per, tot = support_from_counts([[5, 0, 1], [0, 3, 0]], [[6, 0, 0], [0, 0, 3]],
                                   [[1, 0, 1], [0, 1, 1]])
    assert per["shrink"].tolist() == [1, 1] and per["expand"].tolist() == [0, 1]
    assert tot["shrink"] == 2 and tot["expand"] == 1 and tot["problems_expanded"] == 1
    with pytest.raises(ValueError, match="same shape"):
        support_from_counts([[1, 0]], [[1, 0, 0]], [[1, 0]])
    with pytest.raises(ValueError, match="0/1"):
        support_from_counts([[1, 0]], [[1, 0]], [[2, 0]])
    with pytest.raises(ValueError, match="non-negative integer"):
        support_from_counts([[1.5, 0]], [[1, 0]], [[1, 0]])


def test_answer_entropy_from_counts_equals_answer_entropy():
    counts = np.array([[3, 1, 0, 4], [0, 0, 7, 0], [1, 1, 1, 1]])
    got = answer_entropy_from_counts(counts)
    want = [answer_entropy(_answers(r)) for r in counts]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[1] == 0.0 and got[2] == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="at least one sampled answer"):
        answer_entropy_from_counts([[0, 0]])
    with pytest.raises(ValueError, match="2-D"):
        answer_entropy_from_counts([1, 2])


def test_boundary_table_puts_small_counts_beside_the_bar_as_integers():
    """Card 1's k = 8 bar of 128 problems: a 3-problem segment cannot hold its number
    inside, so it is written beside the bar, level with the segment; counts read as
    integers, never "68.0"."""
    summary = pd.DataFrame({
        "k": [8] * 4, "category": ["both", "base only", "rl only", "neither"],
        "count": [68.0, 40.0, 3.0, 17.0], "fraction": [68 / 128, 40 / 128, 3 / 128, 17 / 128]})
    fig = boundary_table(summary)
    texts = {t.name: list(t.text) for t in fig.data}
    assert texts["both"] == ["68"] and texts["base only"] == ["40"] and texts["neither"] == ["17"]
    assert texts["rl only"] == [""]  # too small for its own number inside
    notes = [a for a in fig.layout.annotations if a.text == "3"]
    assert len(notes) == 1 and notes[0].y == pytest.approx(68 + 40 + 1.5)
    assert notes[0].xanchor == "left" and notes[0].x > 0.4  # beside the bar, not on it
