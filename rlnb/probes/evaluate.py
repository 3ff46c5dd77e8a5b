"""Sample a language-model policy many times per problem and count what it gets right.

Every pass@k figure starts from the same table: for each problem, ``n`` completions drawn
at temperature T and the number ``c`` that the task's verifier accepts. :func:`sample_counts`
builds that table (one row per problem), with the answer-level statistics that card 1's
and card 2's analyses read next to it: how many *distinct* correct answers the samples
found (the empirical support, ``Supp_n``), the answers' entropy, the most frequent answer
and its share, how long the completions were and how many hit the length limit.

Its ``c`` column goes straight into :func:`rlnb.probes.pass_at_k_curve` and
:func:`rlnb.probes.boundary`::

    base = sample_counts(base_policy, test, n=256, seed=0)
    rl = sample_counts(rl_policy, test, n=256, seed=0)
    curve = pass_at_k_curve({"base": base["c"], "rl": rl["c"]}, n=256)
    per_problem, summary = boundary(base["c"], rl["c"], 256, 256, k=[1, 16, 256])

:func:`compare_completions` is the small, human-sized version: a few samples of each model
side by side on a few problems, marked right or wrong.

Footguns:

* the draws depend on ``seed`` *and* on ``batch_size`` (the prompts are sampled in chunks
  of ``batch_size // n``, each chunk consuming the generator in turn); keep both fixed to
  compare two models on the same random numbers;
* pass@1 estimated from these counts is ``c / n`` averaged over problems; the per-problem
  ``c / n`` is the *unbiased* pass@1, but plugging it into ``1 - (1 - c/n)**k`` is not an
  unbiased pass@k -- use :func:`rlnb.probes.pass_at_k`;
* ``token_entropy`` is estimated from the samples, not computed from full logits: the
  mean surprisal ``-log p`` of the sampled tokens. By the chain rule its expectation is
  the per-token entropy the trainer logs (the entropy of each next-token distribution,
  summed over positions and divided by the tokens), so with 256 samples per problem it
  is accurate to a few hundredths of a nat -- and it costs no second forward pass
  (which, for a 150k-token vocabulary, would hold gigabytes of logits).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

__all__ = ["COLUMNS", "ENGINES", "compare_completions", "sample_counts"]

#: Sampling engines of :func:`sample_counts`: rlnb's own sampler, and vLLM.
ENGINES: tuple[str, ...] = ("rlnb", "vllm")

#: Columns of :func:`sample_counts`, in order (and ``samples`` when asked for).
COLUMNS: tuple[str, ...] = (
    "problem", "prompt", "n", "c", "pass_at_1", "distinct_correct", "distinct_answers",
    "answer_entropy", "top_answer", "top_share", "mean_length", "truncated", "token_entropy",
)


def _problem_indices(task: Any, problems: Sequence[int] | None) -> list[int]:
    if problems is None:
        return list(range(task.num_prompts))
    idx = [int(i) for i in problems]
    bad = [i for i in idx if not 0 <= i < task.num_prompts]
    if bad:
        raise IndexError(
            f"problem indices {bad[:5]} are out of range for a task with {task.num_prompts} "
            f"prompts (valid: 0..{task.num_prompts - 1})"
        )
    if not idx:
        raise ValueError("problems is empty: give at least one problem index, or None for all")
    return idx


def _entropy(counts: Counter) -> float:
    total = sum(counts.values())
    h = -sum(m / total * math.log(m / total) for m in counts.values())
    return h + 0.0  # -0.0 -> 0.0


def _summarise(task: Any, problem: int, texts: Sequence[str], truncated: Sequence[bool],
               lengths: Sequence[int], surprisal: float, keep_samples: bool) -> dict[str, Any]:
    """One row of :func:`sample_counts` from the ``n`` completions of one problem."""
    prompt = task.prompt(problem)
    raw = Counter(texts)
    # Score each distinct completion once (a sharpened policy repeats itself: 256 samples
    # are often 2-3 distinct strings).
    verdict = {t: float(task.score(prompt, t)) > 0.0 for t in raw}
    answers: Counter = Counter()
    for t, m in raw.items():
        answers[t.strip()] += m  # the task ignores surrounding whitespace; so do we
    correct = {t.strip() for t, ok in verdict.items() if ok}
    c = sum(m for t, m in raw.items() if verdict[t])
    n = len(texts)
    top, top_m = answers.most_common(1)[0]
    row = {
        "problem": problem,
        "prompt": prompt,
        "n": n,
        "c": c,
        "pass_at_1": c / n,
        "distinct_correct": len(correct),
        "distinct_answers": len(answers),
        "answer_entropy": _entropy(answers),
        "top_answer": top,
        "top_share": top_m / n,
        "mean_length": sum(lengths) / n,
        "truncated": sum(bool(x) for x in truncated) / n,
        "token_entropy": surprisal / max(sum(lengths), 1),
    }
    if keep_samples:
        row["samples"] = list(texts)
    return row


def sample_counts(
    policy: Any,
    task: Any,
    *,
    n: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 4096,
    problems: Sequence[int] | None = None,
    keep_samples: bool = False,
    progress: bool = True,
    engine: str = "rlnb",
    engine_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Draw ``n`` completions per problem of a text task and count the correct ones.

    Args:
        policy: a language-model policy (:class:`rlnb.policies.LMPolicy`): its
            ``rollout(task, prompts, n, temperature=, generator=)`` must put the decoded
            texts in ``extra["completions"]``. A started or not yet started
            :class:`~rlnb.policies.lm.vllm_engine.VLLMSampler` is such an object (and the
            way to keep one vLLM engine across calls); with ``engine="vllm"`` also a
            model directory.
        task: a :class:`rlnb.envs.text.TextTask` (``prompt(i)``, ``score(prompt, text)``),
            typically the held-out half of ``task.split(...)``.
        n: samples per problem (card 1 uses 256: pass@k is then estimable up to k = 256).
        temperature: sampling temperature (1.0: the distribution RL trained).
        seed: seeds the ``torch.Generator`` of all draws; same seed, policy and
            ``batch_size``, same completions.
        batch_size: completions sampled at once; ``batch_size // n`` prompts per chunk (at
            least one).
        problems: indices of the problems to evaluate, in order; default all of them.
        keep_samples: add a ``samples`` column holding the ``n`` decoded completions.
        progress: show a ``tqdm.auto`` bar over problems.
        engine: ``"rlnb"`` (default): the policy's own sampler; ``"vllm"``: vLLM samples
            (:mod:`rlnb.policies.lm.vllm_engine`): ``policy`` may then be an ``LMPolicy``
            (its current weights), a model directory, or a ``VLLMSampler``; one made here
            is started for this call and closed after it. Same columns either way; the
            engines agree in distribution, not draw by draw (their random numbers differ).
        engine_options: keyword arguments of the ``VLLMSampler`` made for
            ``engine="vllm"`` (``kv_cache_gib``, ``dtype``, ``max_new_tokens``, ...).

    Returns:
        a DataFrame with one row per problem and columns

        ========================  ============================================================
        ``problem``, ``prompt``    the problem's index in ``task`` and its text
        ``n``, ``c``               samples drawn and samples the verifier accepted
        ``pass_at_1``              ``c / n`` (unbiased pass@1 of this problem)
        ``distinct_correct``       distinct correct answers among the samples (``|Supp_n|``)
        ``distinct_answers``       distinct answers, right or wrong
        ``answer_entropy``         entropy (nats) of the empirical answer distribution
        ``top_answer``             the most frequent answer, ``top_share`` its fraction
        ``mean_length``            mean completion length in tokens, EOS included
        ``truncated``              fraction of samples that hit ``max_new_tokens``
        ``token_entropy``          per-token entropy (nats) at ``temperature``, estimated as
                                   the mean surprisal of the sampled tokens (module footgun)
        ========================  ============================================================

        "Answer" means the completion with surrounding whitespace stripped (how every rlnb
        task reads it). ``df.attrs`` records ``n``, ``temperature``, ``seed`` and
        ``seconds``.

    >>> from rlnb.envs.text_tasks import factor
    >>> from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model
    >>> from rlnb.policies.lm import LMPolicy
    >>> task = factor(3, seed=0)
    >>> tok = char_tokenizer(task.alphabet)
    >>> pi = LMPolicy.from_model(tiny_model(tiny_config("llama", len(tok))), tok, max_new_tokens=4)
    >>> df = sample_counts(pi, task, n=8, progress=False)
    >>> df[["problem", "prompt", "n"]].values.tolist()
    [[0, '371493=', 8], [1, '970163=', 8], [2, '246039=', 8]]
    >>> bool(df["c"].between(0, 8).all())
    True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per problem) must be an integer >= 1, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    from rlnb.checks import check_number

    check_number(temperature, "temperature", 0, low_open=True, meaning="sampling temperature")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES} (rlnb's sampler or vLLM), "
                         f"got {engine!r}")
    if engine_options and engine != "vllm":
        raise ValueError("engine_options are options of the vLLM sampler; pass "
                         "engine='vllm' with them, or drop them")
    owned = None  # a vLLM sampler made for this call, closed at its end
    if engine == "vllm" and getattr(policy, "engine", None) != "vllm":
        from rlnb.policies.lm.vllm_engine import VLLMSampler

        owned = policy = VLLMSampler(policy, **dict(engine_options or {}))
    try:
        return _sample_counts(policy, task, n=n, temperature=temperature, seed=seed,
                              batch_size=batch_size, problems=problems,
                              keep_samples=keep_samples, progress=progress)
    finally:
        if owned is not None:
            owned.close()


def _sample_counts(policy: Any, task: Any, *, n: int, temperature: float, seed: int,
                   batch_size: int, problems: Sequence[int] | None, keep_samples: bool,
                   progress: bool) -> pd.DataFrame:
    from tqdm.auto import tqdm

    if not callable(getattr(policy, "rollout", None)):
        raise TypeError(
            f"policy must be a language-model policy with rollout() (rlnb.policies.LMPolicy), "
            f"got {type(policy).__name__}"
        )
    missing = [a for a in ("num_prompts", "prompt", "score") if not hasattr(task, a)]
    if missing:
        raise TypeError(
            f"task must be a text task (rlnb.envs.TextTask: num_prompts, prompt(i), "
            f"score(prompt, text)), got {type(task).__name__}, which lacks {', '.join(missing)}"
        )
    idx = _problem_indices(task, problems)
    generator = torch.Generator().manual_seed(int(seed))
    per_chunk = max(1, batch_size // n)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    was_training = getattr(policy, "training", False)
    if hasattr(policy, "eval"):
        policy.eval()
    bar = tqdm(total=len(idx), desc="sampling", unit="problem", disable=not progress)
    try:
        for start in range(0, len(idx), per_chunk):
            chunk = idx[start:start + per_chunk]
            rollout = policy.rollout(task, torch.tensor(chunk), n, temperature=temperature,
                                     generator=generator)
            texts = rollout.extra.get("completions")
            if texts is None:
                raise ValueError(
                    f"{type(policy).__name__}.rollout stored no decoded 'completions' in "
                    "rollout.extra; sample_counts needs a language-model policy (LMPolicy)"
                )
            lengths = rollout.mask.sum(1).tolist()  # (N,) tokens incl. EOS
            truncated = rollout.extra.get("truncated")
            truncated = truncated.tolist() if truncated is not None else [False] * len(texts)
            # Surprisal of each group's sampled tokens (logp is 0 off the mask).
            surprisal = (-rollout.logp.double().sum(1)).view(len(chunk), n).sum(1).tolist()
            for j, problem in enumerate(chunk):
                rows_j = slice(j * n, (j + 1) * n)
                rows.append(_summarise(task, problem, texts[rows_j], truncated[rows_j],
                                       lengths[rows_j], surprisal[j], keep_samples))
            bar.update(len(chunk))
    finally:
        bar.close()
        if was_training and hasattr(policy, "train"):
            policy.train()
    df = pd.DataFrame(rows)
    df.attrs.update({"n": n, "temperature": float(temperature), "seed": int(seed),
                     "engine": getattr(policy, "engine", None) if
                     getattr(policy, "engine", None) == "vllm" else "rlnb",
                     "seconds": round(time.perf_counter() - t0, 3)})
    return df


def compare_completions(
    policies: Mapping[str, Any],
    task: Any,
    problems: Sequence[int],
    *,
    n: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A few completions of each policy, side by side, each marked right or wrong.

    One row per problem: ``problem``, ``prompt``, ``answer`` (the task's reference answer,
    one correct answer among possibly many), then for each policy name a column with its
    ``n`` samples as ``"3 ✓  7 ✗  13 ✗  3 ✓"`` and a column ``"<name> correct"`` with how
    many were right. Every policy draws from a generator seeded with ``seed``.

    >>> from rlnb.envs.text_tasks import factor
    >>> from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model
    >>> from rlnb.policies.lm import LMPolicy
    >>> task = factor(3, seed=0)
    >>> tok = char_tokenizer(task.alphabet)
    >>> pi = LMPolicy.from_model(tiny_model(tiny_config("llama", len(tok))), tok, max_new_tokens=4)
    >>> compare_completions({"base": pi}, task, [0, 2], n=2).columns.tolist()
    ['problem', 'prompt', 'answer', 'base', 'base correct']

    Read it as anecdotes, not as evidence: four samples say little about a problem's
    pass@1 (that is what :func:`sample_counts` is for), but they show what the numbers
    are made of -- which answers a model repeats, and which it stopped trying.
    """
    if not policies:
        raise ValueError("policies is empty: give a dict name -> policy")
    idx = _problem_indices(task, problems)
    out = pd.DataFrame({"problem": idx, "prompt": [task.prompt(i) for i in idx],
                        "answer": [task.answer(i) for i in idx]})
    for name, policy in policies.items():
        df = sample_counts(policy, task, n=n, temperature=temperature, seed=seed,
                           problems=idx, keep_samples=True, progress=False)
        shown = []
        for prompt, samples in zip(df["prompt"], df["samples"]):
            marks = ["✓" if task.score(prompt, s) > 0 else "✗" for s in samples]
            shown.append("  ".join(f"{s.strip() or '∅'} {m}" for s, m in zip(samples, marks)))
        out[name] = shown
        out[f"{name} correct"] = [f"{c}/{n}" for c in df["c"]]
    return out
