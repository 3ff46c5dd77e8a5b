"""Card 1 at LM scale: GRPO on a tiny transformer raises pass@1 and loses pass@k at large k.

Yue et al. (arXiv:2504.13837) find that RL-trained models beat their base at pass@1 but
lose at pass@k for k in the tens or hundreds. Here the whole experiment runs on a CPU:

1. **Task** (card 1, "At LM scale"): prompt ``"N="`` with N a 6-digit composite, odd, not
   a multiple of 5, with a prime factor below 50; a completion scores 1 if it is a
   divisor d of N with 1 < d < N. ``factor(10_128, seed=0)`` split into 10,000
   pre-training/RL problems and 128 held-out problems.
2. **Base model**: :func:`rlnb.policies.pretrain_base` -- 2 Llama layers, d=64, a
   character vocabulary, AdamW 3e-3 on batches of 512 pairs ``("N=", a uniformly random
   prime factor of N)``, until fewer than 1% of samples are malformed (cached on disk,
   one base per seed).
3. **GRPO** with the rlnb :class:`~rlnb.train.Trainer` and :class:`~rlnb.policies.LMPolicy`:
   32 prompts x 8 completions per step, T=1, group mean/std advantages, token-mean loss,
   Adam **3e-4 x 300 steps**, the card's second option. Its first, 1e-4 x 100 steps,
   sharpens too little here: pass@1 0.13 -> 0.40 but pass@256 0.97 -> 0.93 and 1.00 ->
   0.95 (seeds 0 and 1), a base lead of 0.04-0.05, short of the 0.10 criterion.
4. **Evaluation** with :func:`rlnb.probes.evaluate.sample_counts`: 128 held-out problems
   x 256 samples at T=1 for the base and for the RL model; pass@k curves
   (:func:`~rlnb.probes.pass_at_k_curve`), boundary analysis at k=256
   (:func:`~rlnb.probes.boundary`: problems solved by the base only, by RL only), token
   entropy before and after.

**What this shows, and what it does not** (card 1's caveat). The model cannot compute
divisibility. Pre-training gives it one answer distribution shared by every N ("3" about
a fifth of the time, then "7", "13", "11", ...), while 3 divides about half of the N and
7 about a fifth: the strategy bandit (:mod:`analysis.passk_crossover_bandit`) arising from
a real task. GRPO sharpens that *shared prior* onto the answers that pay most often, so
pass@1 rises on every problem 3 divides, and the rare answers that were the only way to
solve the other problems are no longer sampled: the base wins at large k. The run checks
this reading directly: the probability of answering "3" is the same whether or not 3
divides N (``p3_divides`` against ``p3_not``). Read the crossover as shared-prior
sharpening, not as evidence about reasoning chains. (``factor(...,
allow_even_and_5=True)`` lets the last digit reveal 2 and 5: RL then finds a genuine
per-problem gain and the crossover shrinks, card 1.)

Checks (worst seed): pass@1 gain of RL >= 0.15 and base lead at pass@256 >= 0.10 (card 1),
token entropy after / before < 0.5 (the collapse that goes with the sharpening), and
|P("3" | 3 divides N) - P("3" | 3 does not)| < 0.05 after GRPO (the model ignores N).

Measured (full mode, seeds 0-2; held-out pass@k from 128 problems x 256 samples; "base
only" = problems some base sample solved and no RL sample did; every seed passes both
criteria of card 1):

====  ==============  ================  ==========  ====================  ==============
seed  pass@1 base/RL  pass@256 base/RL  crossing k  base only / RL only   token entropy
====  ==============  ================  ==========  ====================  ==============
0     0.125 / 0.527   0.969 / 0.664     7.2         39 / 0                1.85 -> 0.047
1     0.141 / 0.526   1.000 / 0.680     6.2         41 / 0                1.78 -> 0.052
2     0.140 / 0.526   0.984 / 0.672     6.4         40 / 0                1.79 -> 0.051
====  ==============  ================  ==========  ====================  ==============

P("3") was 0.17-0.20 before GRPO and 0.988-0.989 after, within 0.005 between the problems
3 divides and the others. Card 1's prototype: pass@1 0.10-0.11 -> 0.41-0.45, pass@256
0.98-0.99 -> 0.49-0.82, crossing at k ~ 8, 23-63 problems base only, 0-1 RL only.

Time, on a 2-core machine shared with other jobs (load average 2.5-4), one process: the
full pipeline (3 seeds) took 82 s including the pre-training of the three base models
(24 s of it: 30 steps each), and 41-60 s over two runs with the base models cached (per
seed: GRPO 8-15 s, the two 128 x 256 evaluations 3-6 s). Quick mode: 17 s including
pre-training, 5-9 s cached. Results are deterministic given the seeds (same numbers in
every run).

Quick mode (the test suite): one seed, GRPO 3e-4 x 100 steps, 128 held-out problems x 64
samples. The criteria are the same two numbers, with the large-k one read at k = 64 (the
largest k that 64 samples estimate): measured pass@1 0.128 -> 0.500 (gain 0.37) and
pass@64 0.945 -> 0.711 (base lead 0.23). After only 100 steps RL has sharpened less than
after 300, so its pass@256 is higher (0.80 against the base's 0.97 on 256 samples); 64
samples keep the quick check both fast and comfortably above its threshold.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.policies import LMPolicy, pretrain_base
from rlnb.probes import boundary, default_ks, pass_at_k_curve
from rlnb.probes.evaluate import sample_counts
from rlnb.recipes import (
    FACTOR_PRETRAIN,
    crossing_k,
    divisor_answer_share,
    factor_grpo_config,
    factor_split,
)
from rlnb.train import Trainer
from rlnb.viz import PALETTE, add_line_with_band, style_figure
from rlnb.viz.probes import CATEGORY_COLORS

TITLE = "Pass@k crossover of a tiny LM after GRPO on factoring (Yue et al. 2025, card 1)"
CARD = 1
PAPER = (
    "Yue et al. (arXiv:2504.13837): RL-trained models beat their base at pass@1 and lose at "
    "pass@k for k in the tens or hundreds, on every benchmark and model family. Card 1's "
    "tiny-transformer prototype (9 runs): pass@1 0.10-0.11 -> 0.41-0.45, pass@256 "
    "0.98-0.99 -> 0.49-0.82, curves cross near k = 8."
)
SHOWS = (
    "It shows the crossover on a real language model trained and evaluated through the "
    "same code as at full scale (a tokenizer, sampled completions, a verifier, GRPO). It "
    "does not show anything about reasoning chains: the model cannot compute divisibility "
    "and does not condition on N (checked: P(\"3\") is the same whether or not 3 divides "
    "N). GRPO sharpens one answer distribution shared by every prompt, the strategy bandit "
    "arising from a task. Read it as shared-prior sharpening; a task whose answer the model "
    "can read from the prompt gives a genuine per-problem gain and a smaller crossover."
)

MAX_NEW_TOKENS = 8
"""Completion budget: a 6-digit divisor and the EOS token fit in 7."""
PRETRAIN = FACTOR_PRETRAIN
"""Base model: 2 Llama layers, d=64 (125k parameters), AdamW 3e-3, batch 512."""

FULL = {"seeds": 3, "steps": 300, "learning_rate": 3e-4, "n": 256}
QUICK = {"seeds": 1, "steps": 100, "learning_rate": 3e-4, "n": 64}


def _answer_shares(samples: Any, top: int = 10) -> dict[str, float]:
    """Share of each of the ``top`` most frequent answers over all held-out samples."""
    counts = Counter(s.strip() for row in samples for s in row)
    total = sum(counts.values())
    return {a: m / total for a, m in counts.most_common(top)}


def _token_mean(df: Any) -> float:
    """Per-token entropy over all samples (problems weighted by their tokens)."""
    return float(np.average(df["token_entropy"], weights=df["mean_length"]))


def run_seed(seed: int, *, steps: int, learning_rate: float, n: int,
             progress: bool = False) -> dict[str, Any]:
    """Pre-train (or load) the base of ``seed``, evaluate it, train GRPO, evaluate again."""
    t_start = time.perf_counter()
    train, held_out = factor_split()  # 10,000 and 128 distinct problems

    # --- BASE MODEL (cached) ---
    t0 = time.perf_counter()
    path = pretrain_base(train, seed=seed, progress=progress, **PRETRAIN)
    record = json.loads((path / "pretrain.json").read_text())
    load_seconds = time.perf_counter() - t0
    policy = LMPolicy(path, device="cpu", max_new_tokens=MAX_NEW_TOKENS)

    # --- EVALUATE, TRAIN, EVALUATE ---
    def evaluate() -> Any:
        return sample_counts(policy, held_out, n=n, seed=10_000 + seed, keep_samples=True,
                             progress=progress)

    t0 = time.perf_counter()
    before = evaluate()
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    history = Trainer(policy, train, factor_grpo_config(seed, steps=steps,
                                            learning_rate=learning_rate)).train()
    grpo_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = evaluate()
    eval_seconds += time.perf_counter() - t0

    # --- PROBES ---
    ks = default_ks(n)
    curve = pass_at_k_curve({"base": before["c"], "rl": after["c"]}, n=n, ks=ks)
    base_curve = curve[curve["model"] == "base"]["pass_at_k"].tolist()
    rl_curve = curve[curve["model"] == "rl"]["pass_at_k"].tolist()
    _, summary = boundary(before["c"], after["c"], n, n, k=n)  # solved: >= 1 of n correct
    at_n = summary.set_index("category")["count"]
    p3_base = divisor_answer_share(held_out, before["samples"], 3)  # P("3"): 3 divides N, not
    p3_rl = divisor_answer_share(held_out, after["samples"], 3)
    return {
        "seed": seed,
        "ks": ks,
        "base": base_curve,
        "rl": rl_curve,
        "crossing_k": crossing_k(ks, base_curve, rl_curve),
        "boundary_at_n": {str(k): int(v) for k, v in at_n.items()},
        "c_base": before["c"].tolist(),
        "c_rl": after["c"].tolist(),
        "token_entropy": {"base": _token_mean(before), "rl": _token_mean(after)},
        "answer_entropy": {"base": float(before["answer_entropy"].mean()),
                           "rl": float(after["answer_entropy"].mean())},
        "distinct_correct": {"base": int(before["distinct_correct"].sum()),
                             "rl": int(after["distinct_correct"].sum())},
        "answer_shares": {"base": _answer_shares(before["samples"]),
                          "rl": _answer_shares(after["samples"])},
        "p3_divides": {"base": p3_base[0], "rl": p3_rl[0]},
        "p3_not": {"base": p3_base[1], "rl": p3_rl[1]},
        "history": {
            "step": history["step"].tolist(),
            "reward": history["reward"].tolist(),
            "entropy": history["entropy"].tolist(),
            "length": history["completions/mean_length"].tolist(),
        },
        "pretrain": {"steps": record["steps_run"], "seconds": record["seconds"],
                     "final": record["final"], "cached_load_seconds": round(load_seconds, 2)},
        "seconds": {"grpo": round(grpo_seconds, 2), "eval": round(eval_seconds, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
    }


def run(quick: bool = False, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Full: seeds ``seed .. seed+2``, GRPO 3e-4 x 300 steps, 128 x 256 samples.
    Quick: one seed, 3e-4 x 100 steps, 128 x 64 samples."""
    budget = QUICK if quick else FULL
    t0 = time.perf_counter()
    seeds = [run_seed(seed + i, steps=budget["steps"], learning_rate=budget["learning_rate"],
                      n=budget["n"], progress=progress) for i in range(budget["seeds"])]
    return {"quick": quick, "budget": budget, "n": budget["n"], "seeds": seeds,
            "seconds": round(time.perf_counter() - t0, 2),
            "pretrain_seconds": round(sum(s["pretrain"]["seconds"] for s in seeds), 2)}


def _at(results: dict, model: str, k: int) -> np.ndarray:
    return np.array([r[model][r["ks"].index(k)] for r in results["seeds"]])


def checks(results: dict) -> list[Check]:
    n = int(results["n"])
    gain1 = _at(results, "rl", 1) - _at(results, "base", 1)
    lead = _at(results, "base", n) - _at(results, "rl", n)
    h_base = np.array([r["token_entropy"]["base"] for r in results["seeds"]])
    h_rl = np.array([r["token_entropy"]["rl"] for r in results["seeds"]])
    gap3 = np.array([abs(r["p3_divides"]["rl"] - r["p3_not"]["rl"]) for r in results["seeds"]])
    return [
        Check("pass@1 gain of RL over base (worst seed)", float(gain1.min()), ">=", 0.15,
              "GRPO sharpens the shared answer distribution: pass@1 on held-out problems "
              "rises by at least 0.15"),
        Check(f"pass@{n} lead of base over RL (worst seed)", float(lead.min()), ">=", 0.10,
              f"the base model's wider answer support wins at k={n} by at least 0.10"),
        Check("token entropy after / before GRPO (worst seed)", float((h_rl / h_base).max()),
              "<", 0.5, "entropy collapses with the sharpening (card 3)"),
        Check('|P("3" | 3 divides N) - P("3" | it does not)| after GRPO (worst seed)',
              float(gap3.max()), "<", 0.05,
              "the model does not condition on N: the crossover is shared-prior sharpening"),
    ]


def figure(results: dict) -> go.Figure:
    seeds = results["seeds"]
    n = int(results["n"])
    ks = seeds[0]["ks"]
    fig = make_subplots(
        rows=2, cols=2, horizontal_spacing=0.14, vertical_spacing=0.22,
        specs=[[{}, {"secondary_y": True}], [{}, {}]],  # reward left, entropy right
        subplot_titles=(f"pass@k against k, {len(results['seeds'][0]['c_base'])} held-out problems (range over seeds)",
                        "during GRPO, against the step (mean, range over seeds)",
                        "answers sampled over all held-out problems (seed 0)",
                        f"problems solved within {n} samples (mean over seeds)"))
    for j, (model, name) in enumerate([("base", "base model"), ("rl", "after GRPO")]):
        curves = np.array([r[model] for r in seeds])
        add_line_with_band(fig, ks, curves.mean(0), lo=curves.min(0), hi=curves.max(0),
                           name=name, color=PALETTE[j], row=1, col=1, mode="lines+markers")
    steps = seeds[0]["history"]["step"]
    for j, (metric, label) in enumerate([("reward", "reward (pass@1 on training prompts)"),
                                         ("entropy", "token entropy (nats)")]):
        vals = np.array([r["history"][metric] for r in seeds])
        add_line_with_band(fig, steps, vals.mean(0), lo=vals.min(0), hi=vals.max(0),
                           name=label, color=PALETTE[2 + j], row=1, col=2,
                           secondary_y=metric == "entropy")
    shares = seeds[0]["answer_shares"]
    answers = list(dict.fromkeys([*shares["base"], *shares["rl"]]))[:10]
    for j, (model, name) in enumerate([("base", "base model"), ("rl", "after GRPO")]):
        fig.add_trace(go.Bar(x=[f'"{a}"' for a in answers],
                             y=[shares[model].get(a, 0.0) for a in answers],
                             marker_color=PALETTE[j], name=name, showlegend=False),
                      row=2, col=1)
    cats = list(CATEGORY_COLORS)
    mean_counts = [float(np.mean([r["boundary_at_n"][c] for r in seeds])) for c in cats]
    fig.add_trace(go.Bar(x=cats, y=mean_counts, marker_color=list(CATEGORY_COLORS.values()),
                         marker_line=dict(color="#666666", width=1),
                         text=[f"{v:.0f}" for v in mean_counts], textposition="outside",
                         showlegend=False, name="problems"), row=2, col=2)
    fig.update_xaxes(type="log", row=1, col=1, tickvals=ks, ticktext=[str(k) for k in ks],
                     title_text="k (samples per problem, log scale)")
    fig.update_yaxes(range=[0, 1.02], title_text="pass@k", row=1, col=1)
    # reward and entropy have different units: one axis each, titled in its line's colour
    fig.update_xaxes(title_text="GRPO step", row=1, col=2)
    fig.update_yaxes(title_text="reward (pass@1, training prompts)", range=[0, 1.02], row=1, col=2,
                     secondary_y=False, title_font=dict(color=PALETTE[2]),
                     tickfont=dict(color=PALETTE[2]))
    fig.update_yaxes(title_text="token entropy (nats)", rangemode="tozero", row=1, col=2,
                     secondary_y=True, showgrid=False, tickmode="auto", title_font=dict(color=PALETTE[3]),
                     tickfont=dict(color=PALETTE[3]), showline=True, linecolor="#888",
                     ticks="outside")
    fig.update_xaxes(type="category", title_text="answer (the base model's most frequent first)", row=2, col=1)
    fig.update_yaxes(title_text="share of samples", range=[0, 1.02], row=2, col=1)
    fig.update_xaxes(title_text=f"who solves the problem within {n} samples", row=2, col=2)
    fig.update_yaxes(title_text="problems", row=2, col=2,
                     range=[0, 1.15 * max(mean_counts + [1.0])])
    fig.update_layout(barmode="group")
    style_figure(fig, TITLE, height=880)
    fig.update_layout(legend=dict(orientation="h", y=-0.1, x=0, yanchor="top"),
                      margin=dict(t=100, b=110))
    return fig
