"""Boundary analysis between two models: who solves what, and which answers are lost.

Yue et al. (arXiv:2504.13837, card 1) compare a base model with its RL-trained version
problem by problem: RL solves more at k = 1, but at large k some problems solved by the
base are never solved after RL. Card 2 (*Reasoning Boundary Paradox* 2510.02230, *Invisible
Leash* 2507.14843) looks one level finer, at the distinct correct answers each model
finds -- its empirical support -- and at the entropy of its final answers.

- :func:`boundary` -- from correct counts: each problem is solved by ``both``, ``base
  only``, ``rl only`` or ``neither`` at budget k. :func:`boundary_from_probs` does the same
  from exact success probabilities (tabular sandboxes).
- :func:`answer_support` -- ``Supp_n`` = distinct correct answers among n samples; per
  problem the answers lost (shrink = |Supp(base) \\ Supp(RL)|) and gained (expand).
- :func:`answer_entropy` -- ``H_ans = -sum_a q(a) log q(a)`` over distinct final answers.
- :func:`support_from_counts` and :func:`answer_entropy_from_counts` -- the same two
  measures from a ``(problems, answers)`` table of sample counts, when the answers are a
  known finite set (a tabular sandbox: the strategy bandit's answer is the strategy).

"Solved at k", precisely: the pass@k of the problem -- the probability that at least one of
k fresh samples is correct, estimated without bias from ``c`` correct of ``n`` samples
(:func:`rlnb.probes.pass_at_k`) -- exceeds ``threshold`` (default 0.5: more likely than not).
At ``k = n`` the estimate is 1 when ``c >= 1`` and 0 otherwise, so "solved at n" is Yue et
al.'s "some sample was correct"; ``threshold=0`` gives that reading at every k.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from rlnb.estimators import as_int_array, pass_at_k, pass_at_k_from_probs

__all__ = [
    "BOUNDARY_CATEGORIES",
    "BoundaryResult",
    "SupportResult",
    "answer_entropy",
    "answer_entropy_from_counts",
    "answer_support",
    "boundary",
    "boundary_from_probs",
    "support_from_counts",
]

#: The four categories, in display order.
BOUNDARY_CATEGORIES: tuple[str, ...] = ("both", "base only", "rl only", "neither")


class BoundaryResult(NamedTuple):
    """What :func:`boundary` returns (unpack it: ``per_problem, summary = boundary(...)``).

    Attributes:
        per_problem: one row per (k, problem): ``k, problem, pass_base, pass_rl,
            solved_base, solved_rl, category`` (+ ``c_base, c_rl`` from counts, ``p_base,
            p_rl`` from probabilities). ``category`` is an ordered categorical.
        summary: one row per (k, category), all four categories present: ``k, category,
            count, fraction`` (fraction of the problems). Feed it to
            :func:`rlnb.viz.boundary_table`.
    """

    per_problem: pd.DataFrame
    summary: pd.DataFrame


def _ks(k: int | Sequence[int]) -> list[int]:
    ks = [k] if np.ndim(k) == 0 else list(k)
    out = []
    for kk in ks:
        if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or kk < 1:
            raise ValueError(f"k must be an int >= 1 or a list of them, got {kk!r}")
        out.append(int(kk))
    if not out:
        raise ValueError("k is empty: give at least one budget")
    return out


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold < 1.0:
        raise ValueError(
            f"threshold ({threshold}) must lie in [0, 1): a problem is solved at k when its "
            "pass@k exceeds it (0.5: more likely than not; 0: any chance at all)"
        )
    return float(threshold)


def _categorise(
    pass_base: np.ndarray, pass_rl: np.ndarray, k: int, threshold: float, extra: dict[str, Any]
) -> pd.DataFrame:
    sb, sr = pass_base > threshold, pass_rl > threshold
    cat = np.select([sb & sr, sb & ~sr, ~sb & sr], list(BOUNDARY_CATEGORIES[:3]), "neither")
    frame = pd.DataFrame(
        {"k": k, "problem": np.arange(pass_base.size), **extra, "pass_base": pass_base,
         "pass_rl": pass_rl, "solved_base": sb, "solved_rl": sr}
    )
    frame["category"] = pd.Categorical(cat, categories=list(BOUNDARY_CATEGORIES), ordered=True)
    return frame


def _summarise(per_problem: pd.DataFrame) -> pd.DataFrame:
    counts = (
        per_problem.groupby(["k", "category"], observed=False).size().rename("count").reset_index()
    )
    totals = counts.groupby("k")["count"].transform("sum")
    counts["fraction"] = counts["count"] / totals
    counts["count"] = counts["count"].astype(np.int64)
    return counts


def boundary(
    counts_base: Any,
    counts_rl: Any,
    n_base: Any,
    n_rl: Any,
    k: int | Sequence[int],
    *,
    threshold: float = 0.5,
) -> BoundaryResult:
    """Problems solved at budget ``k`` by both models, the base only, RL only, or neither.

    Args:
        counts_base: ``(P,)`` correct samples per problem for the base (reference) model.
        counts_rl: ``(P,)`` the same problems, for the RL (or any second) model.
        n_base, n_rl: samples drawn per problem (ints or ``(P,)``); k must not exceed them.
        k: one budget or a list; the frames then hold one block per k.
        threshold: solved means pass@k > threshold (see the module docstring).

    Returns:
        :class:`BoundaryResult` ``(per_problem, summary)``.

    >>> per, summary = boundary([4, 1, 0, 0], [4, 0, 2, 0], n_base=4, n_rl=4, k=4)
    >>> per["category"].tolist()
    ['both', 'base only', 'rl only', 'neither']
    >>> summary[["category", "count"]].values.tolist()
    [['both', 1], ['base only', 1], ['rl only', 1], ['neither', 1]]

    Footgun: at k = 1 the categories mostly reflect pass@1 > 0.5, at k = n they reflect
    any success in n samples; the "base only" problems that matter for card 1 appear at
    large k, so report several k (e.g. ``k=[1, 16, n]``). The estimate of a problem's
    pass@k is noisy when ``n`` is close to ``k``.
    """
    threshold = _check_threshold(threshold)
    cb = as_int_array(counts_base, "counts_base").ravel()
    cr = as_int_array(counts_rl, "counts_rl").ravel()
    if cb.shape != cr.shape:
        raise ValueError(
            f"counts_base ({cb.size},) and counts_rl ({cr.size},) must cover the same problems "
            "in the same order"
        )
    if cb.size == 0:
        raise ValueError("no problems: counts are empty")
    frames = []
    for kk in _ks(k):
        pb = np.broadcast_to(pass_at_k(n_base, cb, kk), cb.shape).astype(np.float64)
        pr = np.broadcast_to(pass_at_k(n_rl, cr, kk), cr.shape).astype(np.float64)
        frames.append(_categorise(pb, pr, kk, threshold, {"c_base": cb, "c_rl": cr}))
    per = pd.concat(frames, ignore_index=True)
    return BoundaryResult(per, _summarise(per))


def boundary_from_probs(
    p_base: Any, p_rl: Any, k: int | Sequence[int], *, threshold: float = 0.5
) -> BoundaryResult:
    """:func:`boundary` from exact per-problem success probabilities.

    For policies whose pass@1 per problem is known exactly -- e.g.
    ``StrategyBandit.success_probability(policy.probs())`` -- pass@k is ``1 - (1 - p)^k``
    and no sampling noise enters.

    Args:
        p_base, p_rl: ``(P,)`` success probabilities in [0, 1].
        k, threshold: as in :func:`boundary`.

    >>> per, _ = boundary_from_probs([0.5, 0.01], [0.9, 0.0], k=[1, 100])
    >>> per[["k", "category"]].values.tolist()
    [[1, 'rl only'], [1, 'neither'], [100, 'both'], [100, 'base only']]
    """
    threshold = _check_threshold(threshold)
    pb = np.asarray(p_base.detach().cpu() if hasattr(p_base, "detach") else p_base, np.float64)
    pr = np.asarray(p_rl.detach().cpu() if hasattr(p_rl, "detach") else p_rl, np.float64)
    pb, pr = pb.ravel(), pr.ravel()
    if pb.shape != pr.shape or pb.size == 0:
        raise ValueError(
            f"p_base ({pb.size},) and p_rl ({pr.size},) must be non-empty and cover the same "
            "problems"
        )
    frames = []
    for kk in _ks(k):
        qb = np.asarray(pass_at_k_from_probs(pb, kk, reduce="none"), np.float64).ravel()
        qr = np.asarray(pass_at_k_from_probs(pr, kk, reduce="none"), np.float64).ravel()
        frames.append(_categorise(qb, qr, kk, threshold, {"p_base": pb, "p_rl": pr}))
    per = pd.concat(frames, ignore_index=True)
    return BoundaryResult(per, _summarise(per))


# --- ANSWER SUPPORT AND ANSWER ENTROPY (card 2) ----------------------------------------------


def answer_entropy(answers: Iterable[Hashable]) -> float:
    """Answer-level entropy ``H_ans = -sum_a q(a) log q(a)`` (nats) of one problem's answers.

    ``q`` is the empirical distribution of the distinct final answers among the samples
    (extract the final answer first: two completions that reach "42" differently are one
    answer). ``None`` -- no parsable answer -- counts as one answer of its own.

    >>> round(answer_entropy(["7", "7", "3", "5"]), 4)   # -(1/2 log 1/2 + 2 * 1/4 log 1/4)
    1.0397
    >>> answer_entropy(["7"] * 8)
    0.0

    Card 2: answer entropy can fall while token entropy rises -- many ways of writing the
    same few answers.
    """
    counts = _counter(answers, "answers")
    n = sum(counts.values())
    if n == 0:
        raise ValueError("answers is empty: H_ans needs at least one sampled answer")
    q = np.fromiter(counts.values(), dtype=np.float64) / n
    return float(-(q * np.log(q)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _counter(answers: Iterable[Hashable], name: str) -> Counter:
    if isinstance(answers, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of answers, got a single string {answers[:20]!r}; wrap "
            "it in a list"
        )
    try:
        return Counter(answers)
    except TypeError as err:
        raise TypeError(
            f"{name} must hold hashable answers (str, int, tuple, None): {err}"
        ) from err


class SupportResult(NamedTuple):
    """What :func:`answer_support` returns.

    Attributes:
        per_problem: one row per problem: ``problem, n_base, n_rl`` (samples used),
            ``supp_base, supp_rl`` (|Supp_n|), ``shared``, ``shrink`` (correct answers the
            base found and RL did not), ``expand`` (the reverse), ``distinct_base,
            distinct_rl`` (distinct answers, correct or not), ``h_ans_base, h_ans_rl``.
        totals: a Series: sums of ``supp_base, supp_rl, shared, shrink, expand``, the
            number of problems with any shrink / expand (``problems_shrunk,
            problems_expanded``) and the mean answer entropies ``h_ans_base, h_ans_rl``.
    """

    per_problem: pd.DataFrame
    totals: pd.Series


def _by_problem(answers: Any, name: str) -> tuple[list[Any], list[Sequence[Hashable]]]:
    if isinstance(answers, Mapping):
        return list(answers.keys()), [answers[key] for key in answers]
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise TypeError(
            f"{name} must be a list (one list of answers per problem) or a dict problem -> "
            f"list of answers, got {type(answers).__name__}"
        )
    return list(range(len(answers))), list(answers)


def answer_support(
    answers_base: Any,
    answers_rl: Any,
    correct: Callable[[Any, Hashable], bool] | Sequence[Iterable[Hashable]] | Mapping[Any, Iterable[Hashable]],
    *,
    equalize: bool = True,
) -> SupportResult:
    """Distinct correct answers found by each model, and those lost and gained (card 2).

    ``Supp_n(pi, x)`` is the set of distinct correct answers among n samples of pi on
    problem x. Shrink = |Supp(base) \\ Supp(RL)|, expand = |Supp(RL) \\ Supp(base)|.
    Card 2's strategy-bandit toy, with 1024 samples per problem, found shrink 216-287 and
    expand 0-4 over all problems.

    Args:
        answers_base, answers_rl: per problem, the final answers of the samples: a list of
            lists (problem i is index i) or a dict problem -> list. The same problems in
            both. Answers must be hashable (strings, ints, None for "no answer").
        correct: which answers are correct: a function ``correct(problem, answer) ->
            bool`` (problem is the index or dict key), or per problem a collection of the
            correct answers (list/dict like the answers).
        equalize: compare at equal budget: use the first ``n = min(n_base, n_rl)`` answers
            of each model per problem (samples are i.i.d., so the first n are a random
            subsample). Support only grows with n; with unequal n the model with more
            samples looks broader for free.

    Returns:
        :class:`SupportResult` ``(per_problem, totals)``.

    >>> per, tot = answer_support([["3", "7", "x"]], [["3", "3", "3"]], [{"3", "7", "11"}])
    >>> per[["supp_base", "supp_rl", "shrink", "expand"]].values.tolist()
    [[2, 1, 1, 0]]
    """
    keys_b, lists_b = _by_problem(answers_base, "answers_base")
    keys_r, lists_r = _by_problem(answers_rl, "answers_rl")
    if keys_b != keys_r:
        raise ValueError(
            f"answers_base and answers_rl must cover the same problems in the same order "
            f"({len(keys_b)} vs {len(keys_r)} problems)"
        )
    if callable(correct):
        is_correct = correct
    else:
        ckeys, csets = _by_problem(correct, "correct")
        if (isinstance(correct, Mapping) and not set(keys_b) <= set(ckeys)) or (
            not isinstance(correct, Mapping) and len(csets) != len(keys_b)
        ):
            raise ValueError(
                f"correct must give the correct answers of every problem ({len(keys_b)} "
                f"problems), got {len(csets)}"
            )
        lookup = dict(zip(ckeys, [set(c) for c in csets]))

        def is_correct(problem: Any, answer: Hashable) -> bool:
            return answer in lookup[problem]

    rows = []
    for key, ab, ar in zip(keys_b, lists_b, lists_r):
        ab, ar = list(ab), list(ar)
        if not ab or not ar:
            raise ValueError(f"problem {key!r} has no answers for one model: sample at least one")
        if equalize:
            n = min(len(ab), len(ar))
            ab, ar = ab[:n], ar[:n]
        cnt_b, cnt_r = _counter(ab, "answers_base"), _counter(ar, "answers_rl")
        supp_b = {a for a in cnt_b if is_correct(key, a)}
        supp_r = {a for a in cnt_r if is_correct(key, a)}
        rows.append({
            "problem": key, "n_base": len(ab), "n_rl": len(ar),
            "supp_base": len(supp_b), "supp_rl": len(supp_r), "shared": len(supp_b & supp_r),
            "shrink": len(supp_b - supp_r), "expand": len(supp_r - supp_b),
            "distinct_base": len(cnt_b), "distinct_rl": len(cnt_r),
            "h_ans_base": answer_entropy(ab), "h_ans_rl": answer_entropy(ar),
        })
    per = pd.DataFrame(rows)
    totals = pd.Series({
        **{c: int(per[c].sum()) for c in ("supp_base", "supp_rl", "shared", "shrink", "expand")},
        "problems_shrunk": int((per["shrink"] > 0).sum()),
        "problems_expanded": int((per["expand"] > 0).sum()),
        "h_ans_base": float(per["h_ans_base"].mean()),
        "h_ans_rl": float(per["h_ans_rl"].mean()),
    }, dtype=object)
    return SupportResult(per, totals)


# --- THE SAME FROM A TABLE OF COUNTS (finite answer sets) -------------------------------------


def _count_table(counts: Any, name: str) -> np.ndarray:
    c = np.asarray(counts.detach().cpu() if hasattr(counts, "detach") else counts)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D table (problems, answers) of sample counts, got "
            f"shape {c.shape}"
        )
    if not np.issubdtype(c.dtype, np.number) or np.issubdtype(c.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold integer sample counts, got dtype {c.dtype}")
    if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c != np.round(c)):
        raise ValueError(f"{name} must hold non-negative integer sample counts")
    return c.astype(np.int64)


def answer_entropy_from_counts(counts: Any) -> np.ndarray:
    """Answer-level entropy (nats) per problem from a table of answer counts.

    Args:
        counts: ``(P, A)`` non-negative integers: how often each of ``A`` distinct answers
            was sampled on each problem (e.g. ``numpy.random.Generator.multinomial``).

    Returns:
        ``(P,)`` the plug-in ``H_ans = -sum_a q(a) log q(a)`` with ``q = counts / n``,
        exactly :func:`answer_entropy` of the samples written out.

    >>> answer_entropy_from_counts([[2, 1, 1, 0], [8, 0, 0, 0]]).round(4).tolist()
    [1.0397, 0.0]

    Footgun: the plug-in entropy is biased low (by about ``(distinct - 1) / (2 n)``); compare
    models at the same ``n``.
    """
    c = _count_table(counts, "counts")
    n = c.sum(1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("every problem needs at least one sampled answer (a row of counts is 0)")
    q = c / n
    logq = np.log(np.where(q > 0, q, 1.0))
    return -(q * logq).sum(1) + 0.0


def support_from_counts(counts_base: Any, counts_rl: Any, correct: Any) -> SupportResult:
    """:func:`answer_support` from ``(problems, answers)`` tables of sample counts.

    ``Supp_n`` of a problem is the set of answers ``a`` with ``counts[i, a] > 0`` and
    ``correct[i, a]``; shrink = |Supp(base) \\ Supp(RL)|, expand = |Supp(RL) \\ Supp(base)|
    (card 2). Use it where the answers form a known finite set, e.g. the strategy bandit,
    whose answer is the strategy and whose ``solve_matrix`` is ``correct``.

    Args:
        counts_base, counts_rl: ``(P, A)`` sample counts of the two models. Give both the
            same number of samples per problem: support only grows with n.
        correct: ``(P, A)`` bool (or 0/1): answer ``a`` solves problem ``i``.

    Returns:
        :class:`SupportResult`, the same columns and totals as :func:`answer_support`.

    >>> per, tot = support_from_counts([[2, 1, 0]], [[3, 0, 0]], [[1, 1, 1]])
    >>> per[["supp_base", "supp_rl", "shrink", "expand"]].values.tolist()
    [[2, 1, 1, 0]]
    """
    cb, cr = _count_table(counts_base, "counts_base"), _count_table(counts_rl, "counts_rl")
    ok = np.asarray(correct.detach().cpu() if hasattr(correct, "detach") else correct)
    if cb.shape != cr.shape or ok.shape != cb.shape:
        raise ValueError(
            f"counts_base {cb.shape}, counts_rl {cr.shape} and correct {ok.shape} must all be "
            "(problems, answers) tables of the same shape"
        )
    if not np.all((ok == 0) | (ok == 1)):
        raise ValueError("correct must be a 0/1 (bool) table: does answer a solve problem i?")
    ok = ok.astype(bool)
    sb, sr = (cb > 0) & ok, (cr > 0) & ok
    per = pd.DataFrame({
        "problem": np.arange(cb.shape[0]), "n_base": cb.sum(1), "n_rl": cr.sum(1),
        "supp_base": sb.sum(1), "supp_rl": sr.sum(1), "shared": (sb & sr).sum(1),
        "shrink": (sb & ~sr).sum(1), "expand": (sr & ~sb).sum(1),
        "distinct_base": (cb > 0).sum(1), "distinct_rl": (cr > 0).sum(1),
        "h_ans_base": answer_entropy_from_counts(cb), "h_ans_rl": answer_entropy_from_counts(cr),
    })
    totals = pd.Series({
        **{c: int(per[c].sum()) for c in ("supp_base", "supp_rl", "shared", "shrink", "expand")},
        "problems_shrunk": int((per["shrink"] > 0).sum()),
        "problems_expanded": int((per["expand"] > 0).sum()),
        "h_ans_base": float(per["h_ans_base"].mean()),
        "h_ans_rl": float(per["h_ans_rl"].mean()),
    }, dtype=object)
    return SupportResult(per, totals)
