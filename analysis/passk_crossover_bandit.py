"""Card 1: RL raises pass@1 but shrinks pass@k at large k (Yue et al., arXiv:2504.13837).

The strategy bandit (card SB): 64 problems, 64 hidden strategies, one softmax over
strategies shared by every problem. GRPO (G=4, 16 prompts per step, plain SGD with lr 1.0,
100 steps) sharpens the shared softmax onto the strategy that solves the most problems.
pass@1 rises; the problems that only rarely-chosen strategies solve are forgotten, so the
base policy wins at large k. Every pass@k here is exact (1 - (1 - p_i)^k averaged over
problems, p_i from the solve matrix), not sampled.

Shared parameters are the mechanism: with one softmax per problem there is no crossover
(the ``per_problem`` ablation shows it when ``run(ablation=True)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.recipes import grpo_on_strategy_bandit
from rlnb.viz import PALETTE, add_line_with_band, style_figure

TITLE = "Pass@k crossover on the strategy bandit (Yue et al. 2025, card 1)"
CARD = 1
PAPER = (
    "Yue et al. (arXiv:2504.13837): RLVR raises pass@1, but the base model catches up "
    "\"as k increases to the tens or hundreds ... across all benchmarks and LLM families "
    "without exception\" and then wins at large k. Card 1's numpy prototype of this toy: "
    "pass@1 0.16 -> 0.48, pass@256 0.995 -> 0.74."
)
SHOWS = (
    "It shows the smallest mechanism that produces the crossover: one softmax shared by "
    "every problem. GRPO moves that shared distribution onto the strategy that solves the "
    "most problems, so the problems that only a rare strategy solves become unreachable "
    "and pass@k at large k falls, while a separate softmax per problem shows no crossover "
    "(the ablation). It does not show that language models work this way: the toy has no "
    "reasoning, no tokens and no generalisation, and the exact pass@k leaves out sampling "
    "noise. It says that shared parameters are enough to produce the paper's curve."
)

KS = [int(k) for k in np.unique(np.round(np.logspace(0, 8, 33, base=2)).astype(int))]


def run_seed(seed: int, *, steps: int = 100, shared: bool = True) -> dict[str, Any]:
    """Train one seed (``rlnb.recipes.grpo_on_strategy_bandit``, the card's protocol);
    return base and RL exact pass@k curves and the training history."""
    r = grpo_on_strategy_bandit(seed, steps, shared=shared)
    return {
        "seed": seed,
        "base": [float(v) for v in r.env.pass_at_k_exact(r.base_probs, KS)],
        "rl": [float(v) for v in r.env.pass_at_k_exact(r.rl_probs, KS)],
        "history": {
            "step": r.history["step"].tolist(),
            "pass@1": r.history["exact/pass@1"].tolist(),
            "pass@256": r.history["exact/pass@256"].tolist(),
            "entropy": r.history["exact/policy_entropy"].tolist(),
        },
    }


def run(quick: bool = False, seed: int = 0, ablation: bool = True) -> dict[str, Any]:
    """Full: 5 seeds, 100 steps each (a few seconds). Quick: 2 seeds, same protocol."""
    seeds = [seed + i for i in range(2 if quick else 5)]
    out: dict[str, Any] = {"ks": KS, "num_strategies": 64,
                           "seeds": [run_seed(s) for s in seeds]}
    if ablation:
        out["per_problem"] = [run_seed(s, shared=False) for s in seeds[:2]]
    return out


def _at(results: dict, model: str, k: int, runs: str = "seeds") -> np.ndarray:
    i = results["ks"].index(k)
    return np.array([r[model][i] for r in results[runs]])


def checks(results: dict) -> list[Check]:
    gain1 = _at(results, "rl", 1) - _at(results, "base", 1)
    loss256 = _at(results, "base", 256) - _at(results, "rl", 256)
    out = [
        Check("pass@1 gain of RL over base (worst seed)", float(gain1.min()), ">=", 0.15,
              "GRPO sharpens the shared softmax: exact pass@1 rises by at least 0.15"),
        Check("pass@256 lead of base over RL (worst seed)", float(loss256.min()), ">=", 0.10,
              "the base policy's wider support wins at large k by at least 0.10"),
    ]
    if results.get("per_problem"):
        lead = (_at(results, "base", 256, "per_problem")
                - _at(results, "rl", 256, "per_problem"))
        out.append(Check("per-problem softmax ablation: base lead at k=256 (best seed)",
                         float(lead.max()), "<", 0.10,
                         "without shared parameters the crossover disappears"))
    return out


def figure(results: dict) -> go.Figure:
    ks = results["ks"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("exact pass@k, mean and range over seeds",
                                        "during training (mean over seeds)"))
    for j, (model, name) in enumerate([("base", "base policy"), ("rl", "after GRPO")]):
        curves = np.array([r[model] for r in results["seeds"]])
        add_line_with_band(fig, ks, curves.mean(0), lo=curves.min(0), hi=curves.max(0),
                           name=name, color=PALETTE[j], row=1, col=1)
    if results.get("per_problem"):
        curves = np.array([r["rl"] for r in results["per_problem"]])
        add_line_with_band(fig, ks, curves.mean(0), name="after GRPO, per-problem softmax",
                           color=PALETTE[2], row=1, col=1)
        fig.data[-1].line.dash = "dot"
    steps = results["seeds"][0]["history"]["step"]
    for j, metric in enumerate(["pass@1", "pass@256", "entropy"]):
        vals = np.array([r["history"][metric] for r in results["seeds"]])
        if metric == "entropy":
            vals = vals / np.log(results["num_strategies"])
            metric = "policy entropy / log(strategies)"
        add_line_with_band(fig, steps, vals.mean(0), lo=vals.min(0), hi=vals.max(0),
                           name=metric, color=PALETTE[3 + j], row=1, col=2)
    fig.update_xaxes(type="log", title_text="k (samples per problem)", row=1, col=1,
                     tickvals=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    fig.update_yaxes(range=[0, 1.02], title_text="pass@k", row=1, col=1)
    fig.update_xaxes(title_text="training step", row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    style_figure(fig, TITLE, height=520)
    fig.update_layout(legend=dict(orientation="h", y=-0.18, x=0, yanchor="top"),
                      margin=dict(t=90, b=120))
    return fig
