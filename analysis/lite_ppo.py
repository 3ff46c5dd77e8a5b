"""Card 13: Tricks or Traps / Lite PPO (Liu et al., arXiv:2508.08221) on a tiny transformer.

*Tricks or Traps* dissects the pieces of GRPO-style recipes one at a time and proposes
**Lite PPO**: group-mean / *batch*-std advantage normalisation plus *token*-level loss
aggregation, with a critic-free vanilla PPO loss. Card 13 asks for exact formula tests
only (the outcome is exploratory: no ordering is asserted). This module does both parts:

1. **Formula checks** (required), each computed through the library and compared with the
   card's formula written out in numpy, on a known reward matrix and mask and on random
   ones drawn from each seed:

   * group normalisation ``A = (r - mean_g) / (std_g + eps)``
     (:func:`rlnb.rl.compute_advantages`, ``scale_rewards="group"``), and its closed form
     for binary rewards, ``+sqrt((1 - p)/p)`` for a correct and ``-sqrt(p/(1 - p))`` for a
     wrong completion (``p`` = the group's success rate; the library's Bessel-corrected
     std scales both by ``sqrt((G - 1)/G)``);
   * batch normalisation ``A = (r - mean_g) / (std_batch + eps)`` (``"batch"``);
   * token-level aggregation ``sum_{i,t} l / sum_i |o_i|`` (``token-mean``) and the
     sequence-level ``(1/G) sum_i mean_t l`` (``seq-mean-token-mean``),
     :func:`rlnb.rl.agg_loss`;
   * overlong filtering: the gradient of the Lite PPO loss (:func:`rlnb.rl.losses.vanilla_pg`,
     batch std, token-mean) with truncated rows masked out -- the rule the Trainer applies
     with ``mask_truncated_completions=True`` -- equals ``-A_i / (tokens of the kept
     rows)`` on every kept token and 0 on every token of a truncated row.

2. **Outcome table** (exploratory): the six configurations of
   :data:`rlnb.recipes.LITE_PPO_CONFIGS` (group or batch std x sequence- or token-level
   aggregation, and the two token-level ones again with overlong filtering) x 3 seeds on a
   2-layer, d=64 Llama pre-trained on addition with 1- to 3-digit operands
   (:func:`rlnb.recipes.addition_base`: stopped at pass@1 >= 0.3, so there is room to
   improve). Answers have 1 to 4 characters and the generation budget is 4 tokens, so a
   4-digit answer (about 10% of problems) is produced without its EOS: it is truncated,
   the verifier still accepts it, and overlong filtering drops it from the loss. GRPO:
   16 prompts x 8 completions, T=1, vanilla policy gradient (one update per batch, so
   PPO's clip would be inactive), Adam. Held-out accuracy is the *exact* pass@1 on 256
   held-out problems (:func:`rlnb.recipes.answer_probability`); the final reward is the
   mean training reward over the last 10 steps.

The configurations and the caveats are in :data:`SHOWS`; the measured numbers are in
docs/REPRODUCTIONS.md (card 13).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.policies import LMPolicy
from rlnb.recipes import LITE_PPO_CONFIGS, addition_base, addition_split, answer_probability
from rlnb.rl import agg_loss, compute_advantages
from rlnb.rl.losses import vanilla_pg
from rlnb.train import TrainConfig, Trainer
from rlnb.viz import PALETTE, add_line_with_band, style_figure

TITLE = "Advantage normalisation, loss aggregation, overlong filtering (Lite PPO, card 13)"
CARD = 13
PAPER = (
    "Liu et al., Tricks or Traps (arXiv:2508.08221): Lite PPO -- group-mean / batch-std "
    "advantage normalisation plus token-level loss aggregation, critic-free vanilla PPO -- "
    "beats GRPO and DAPO; token-level aggregation suits base models and sequence-level "
    "aligned ones; overlong filtering masks truncated responses. The card asks for exact "
    "formula tests only: the phenomenon is exploratory and no ordering is asserted."
)
SHOWS = (
    "It shows that rlnb's advantage normalisations (group and batch std), its token- and "
    "sequence-level aggregations and the overlong filter compute exactly the card's "
    "formulas (checked against numpy on known and random inputs), and it runs the six "
    "configurations through the same Trainer on a tiny transformer learning addition with "
    "answers of 1 to 4 characters, some truncated by the generation budget. It does not "
    "show the paper's ranking: the outcome table is exploratory, with three seeds of 40 steps "
    "x 128 completions on a 125k-parameter model pre-trained on the same task, "
    "nothing like the paper's base versus aligned 4B-8B models on maths; differences "
    "smaller than the spread over seeds mean nothing, and none is asserted."
)

MAX_NEW_TOKENS = 4
"""Generation budget: 4-digit answers fill it and are truncated (no room for the EOS)."""
EPS = 1e-4
"""The library's std_eps (TRL's): added to the std before dividing."""
FULL = {"steps": 40, "learning_rate": 1e-4, "num_prompts": 16, "num_generations": 8}
QUICK = {"steps": 10, "learning_rate": 1e-4, "num_prompts": 16, "num_generations": 8}
SEEDS = 3


# --- formula checks --------------------------------------------------------------------
def _np_group(r: np.ndarray, g: int) -> np.ndarray:
    """Card 13's group normalisation, numpy: (r - mean_g) / (std_g + eps), std with ddof 1."""
    x = r.reshape(-1, g)
    return ((x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + EPS)).ravel()


def _np_batch(r: np.ndarray, g: int) -> np.ndarray:
    """Lite PPO's normalisation, numpy: (r - mean_g) / (std of the whole batch + eps)."""
    x = r.reshape(-1, g)
    return ((x - x.mean(1, keepdims=True)) / (r.std(ddof=1) + EPS)).ravel()


def _lib_adv(r: np.ndarray, g: int, scale: str) -> np.ndarray:
    return compute_advantages(torch.from_numpy(r), g, method="grpo",
                              scale_rewards=scale).numpy()


def formula_errors(seed: int) -> dict[str, float]:
    """Largest deviation between the library and the card's formulas written out in numpy.

    Inputs: the known binary reward matrix (groups of G=8 with c = 1..7 correct), a random
    binary and a random continuous reward matrix (8 groups of 8), a known mask (lengths 1,
    2, 3, 6) and a random one (16 rows of lengths 1..6, a random third truncated), with
    per-token losses and advantages drawn from ``seed``. Every number is float64."""
    rng = np.random.default_rng(seed)
    g = 8
    out: dict[str, float] = {}
    # advantages: known binary matrix, random binary, random continuous rewards
    c = np.arange(1, g)
    known = (np.arange(g)[None, :] < c[:, None]).astype(float).ravel()  # (7*8,)
    mats = [known, rng.integers(0, 2, 8 * g).astype(float), rng.normal(size=8 * g)]
    out["group_std"] = max(np.abs(_lib_adv(r, g, "group") - _np_group(r, g)).max()
                           for r in mats)
    out["batch_std"] = max(np.abs(_lib_adv(r, g, "batch") - _np_batch(r, g)).max()
                           for r in mats)
    # closed form for binary rewards, population std; the library's std is Bessel's
    p = c / g
    lib = _lib_adv(known, g, "group").reshape(len(c), g)
    bessel = math.sqrt((g - 1) / g)
    pos, neg = bessel * np.sqrt((1 - p) / p), -bessel * np.sqrt(p / (1 - p))
    out["binary_closed_form_rel"] = float(max(np.abs(lib[:, 0] / pos - 1).max(),
                                              np.abs(lib[:, -1] / neg - 1).max()))
    # aggregation: known mask and a random one
    agg_tok, agg_seq, grad_err = 0.0, 0.0, 0.0
    for lengths in (np.array([1, 2, 3, 6]), rng.integers(1, 7, size=16)):
        n, t = len(lengths), int(lengths.max())
        m = (np.arange(t)[None, :] < lengths[:, None]).astype(float)  # (N, T)
        loss = rng.normal(size=(n, t))
        loss_t = torch.from_numpy(np.where(m > 0, loss, np.nan))  # padding never counts
        tok = agg_loss(loss_t, torch.from_numpy(m), "token-mean").item()
        seq = agg_loss(loss_t, torch.from_numpy(m), "seq-mean-token-mean").item()
        tok_np = (loss * m).sum() / m.sum()  # sum_{i,t} l / sum_i |o_i|
        seq_np = np.mean((loss * m).sum(1) / m.sum(1))  # (1/G) sum_i mean_t l
        agg_tok, agg_seq = max(agg_tok, abs(tok - tok_np)), max(agg_seq, abs(seq - seq_np))
        # overlong filtering in the Lite PPO loss: truncated rows leave the loss
        trunc = rng.random(n) < 1 / 3
        trunc[0] = False  # at least one kept row
        kept = m * ~trunc[:, None]
        rewards = rng.integers(0, 2, n if n % 4 == 0 else 4).astype(float)[:n]
        adv = _lib_adv(rewards, 4 if n % 4 == 0 else n, "batch")
        logp = torch.from_numpy(-rng.random((n, t))).requires_grad_(True)
        pg, _ = vanilla_pg(logp, logp.detach(), torch.from_numpy(adv),
                           torch.from_numpy(m) * torch.from_numpy(~trunc)[:, None],
                           agg="token-mean")
        pg.backward()
        want = -adv[:, None] * kept / kept.sum()
        grad_err = max(grad_err, float(np.abs(logp.grad.numpy() - want).max()))
    out["token_mean"], out["seq_mean_token_mean"] = float(agg_tok), float(agg_seq)
    out["overlong_filter_grad"] = grad_err
    return {k: float(v) for k, v in out.items()}


# --- training --------------------------------------------------------------------------
def _config(seed: int, budget: dict[str, Any], changes: dict[str, Any]) -> TrainConfig:
    return TrainConfig(
        seed=seed, max_steps=budget["steps"], num_prompts_per_step=budget["num_prompts"],
        num_generations=budget["num_generations"], temperature=1.0, advantage="grpo",
        policy_loss="vanilla_pg", optimizer="adam", learning_rate=budget["learning_rate"],
        progress_bar=False, **changes)


def run_seed(seed: int, budget: dict[str, Any], progress: bool = False,
             base_seed: int | None = None) -> dict[str, Any]:
    """The base of ``seed`` (cached), then each configuration of LITE_PPO_CONFIGS."""
    t0 = time.perf_counter()
    train, held_out = addition_split()
    path = addition_base(seed if base_seed is None else base_seed, progress=progress)
    pretrain_seconds = time.perf_counter() - t0
    base = LMPolicy(path, device="cpu", max_new_tokens=MAX_NEW_TOKENS)
    four = np.array([len(a) == MAX_NEW_TOKENS for a in held_out.answers])
    acc0 = answer_probability(base, held_out)
    out: dict[str, Any] = {"seed": seed, "base_heldout": float(acc0.mean()),
                           "base_heldout_4digit": float(acc0[four].mean()), "configs": {},
                           "pretrain_seconds": round(pretrain_seconds, 2)}
    for name, changes in LITE_PPO_CONFIGS.items():
        t1 = time.perf_counter()
        policy = LMPolicy(path, device="cpu", max_new_tokens=MAX_NEW_TOKENS)
        h = Trainer(policy, train, _config(seed, budget, changes)).train()
        acc = answer_probability(policy, held_out)
        out["configs"][name] = {
            "reward": h["reward"].tolist(),
            "truncated": h["completions/clipped_ratio"].tolist(),
            "length": h["completions/mean_length"].tolist(),
            "final_reward": float(h["reward"].tail(10).mean()),
            "heldout": float(acc.mean()),
            "heldout_4digit": float(acc[four].mean()),
            "seconds": round(time.perf_counter() - t1, 2),
        }
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def run(quick: bool = False, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Formula errors and the six configurations, seeds ``seed .. seed+2``. Full: 40 GRPO
    steps per run; quick: 10, and quick mode pre-trains one base (``seed``'s) and runs the three RL seeds from it: the
    bases are the slow part on a fresh machine (no cache), and the RL seeds are what vary."""
    budget = QUICK if quick else FULL
    t0 = time.perf_counter()
    seeds = [seed + i for i in range(SEEDS)]
    formulas = {str(s): formula_errors(s) for s in seeds}
    runs = [run_seed(s, budget, progress, base_seed=seed if quick else None) for s in seeds]
    return {"quick": quick, "budget": budget, "configs": list(LITE_PPO_CONFIGS),
            "formulas": formulas, "seeds": runs, "seconds": round(time.perf_counter() - t0, 2)}


def summary(results: dict) -> dict[str, dict[str, list[float]]]:
    """Per configuration: final reward and held-out accuracy as (mean, min, max) over seeds."""
    out = {}
    for name in results["configs"]:
        rows = [r["configs"][name] for r in results["seeds"]]
        out[name] = {key: [float(np.mean([x[key] for x in rows])),
                           float(np.min([x[key] for x in rows])),
                           float(np.max([x[key] for x in rows]))]
                     for key in ("final_reward", "heldout", "heldout_4digit")}
    return out


_FORMULA_CHECKS = [
    ("group_std", 1e-9, "compute_advantages(scale_rewards='group') = (r - mean_g) / (std_g + eps)"),
    ("binary_closed_form_rel", 1e-3,
     "binary rewards: correct +sqrt((1-p)/p), wrong -sqrt(p/(1-p)), times sqrt((G-1)/G) for "
     "Bessel's std (relative; eps = 1e-4 accounts for up to 3e-4)"),
    ("batch_std", 1e-9, "compute_advantages(scale_rewards='batch') = (r - mean_g) / (std_batch + eps)"),
    ("token_mean", 1e-9, "agg_loss token-mean = sum_{i,t} l / sum_i |o_i|"),
    ("seq_mean_token_mean", 1e-9, "agg_loss seq-mean-token-mean = (1/G) sum_i mean_t l"),
    ("overlong_filter_grad", 1e-9,
     "Lite PPO loss with truncated rows masked: gradient -A_i / (kept tokens) on kept tokens, "
     "0 on truncated rows"),
]


def checks(results: dict) -> list[Check]:
    f = results["formulas"]
    out = [Check(f"formula: {key} (largest deviation, worst seed)",
                 max(v[key] for v in f.values()), "<=", tol, text)
           for key, tol, text in _FORMULA_CHECKS]
    return out


def figure(results: dict) -> go.Figure:
    names = results["configs"]
    seeds = results["seeds"]
    s = summary(results)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, column_widths=[0.45, 0.55],
                        subplot_titles=("held-out exact pass@1 (range over seeds)",
                                        "training reward (mean, range over seeds)"))
    mean = [s[n]["heldout"][0] for n in names]
    lo = [s[n]["heldout"][0] - s[n]["heldout"][1] for n in names]
    hi = [s[n]["heldout"][2] - s[n]["heldout"][0] for n in names]
    labels = [n.replace(", ", "<br>") for n in names]
    fig.add_trace(go.Bar(x=labels, y=mean, marker_color=[PALETTE[i % len(PALETTE)]
                                                        for i in range(len(names))],
                         error_y=dict(type="data", array=hi, arrayminus=lo),
                         showlegend=False, name="held-out"), row=1, col=1)
    base = float(np.mean([r["base_heldout"] for r in seeds]))
    fig.add_hline(y=base, line_dash="dot", line_color="#666666", row=1, col=1,
                  annotation_text=f"base {base:.3f}", annotation_position="bottom right")
    for i, n in enumerate(names):
        curves = np.array([r["configs"][n]["reward"] for r in seeds])
        add_line_with_band(fig, list(range(1, curves.shape[1] + 1)), curves.mean(0),
                           lo=curves.min(0), hi=curves.max(0), name=n,
                           color=PALETTE[i % len(PALETTE)], row=1, col=2)
    fig.update_yaxes(title_text="exact pass@1", row=1, col=1)
    fig.update_yaxes(title_text="mean reward", row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=2)
    fig.update_xaxes(tickangle=0, tickfont=dict(size=10), row=1, col=1)
    style_figure(fig, TITLE, height=600)
    fig.update_layout(legend=dict(orientation="h", y=-0.28, x=0, yanchor="top"),
                      margin=dict(t=100, b=170))
    return fig
