"""Card 3: entropy collapse and the covariance law (Cui et al. 2025, arXiv:2505.22617).

GRPO (G = 16) on the tree MDP (card TM) spends its entropy to buy reward, and the two follow
``R = -a exp(H) + b``, whose ceiling ``b - a`` (the reward at H = 0) predicts the final
reward. The mechanism: for a softmax, a logit step ``dz`` changes entropy by
``-Cov_{a~pi}(log pi(a), dz_a)`` to first order, checked here exactly against
``H(z + dz) - H(z)`` for natural (``dz = eta A``) and vanilla (``dz = eta pi A``) PG.

Every step's entropy and reward are exact expectations of the current policy (the mean
per-token entropy along its own episodes and its pass@1), not sampled batch means; the
card's per-token covariance estimator ``cov_i = (A_i - mean A)(log pi_i - mean log pi)``
is logged on a fresh batch of 256 completions of the current policy after every step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb import rl
from rlnb.envs import TreeMDP
from rlnb.policies import TabularPolicy
from rlnb.probes.entropy import (
    covariance_identity_error,
    fit_entropy_reward,
    tree_token_entropy,
)
from rlnb.recipes import tree_grpo_config
from rlnb.train import Trainer
from rlnb.viz import PALETTE, add_line_with_band, style_figure

TITLE = "Entropy collapse and the covariance law on the tree MDP (Cui et al. 2025, card 3)"
CARD = 3
PAPER = (
    "Cui et al. (arXiv:2505.22617, PRIME-RL/Entropy-Mechanism-of-RL): in RL for LLM "
    "reasoning, reward and policy entropy follow R = -a exp(H) + b, so performance is "
    "bought with entropy and the ceiling b - a is reached when entropy is spent (about 95% "
    "of the gain against 95% of the entropy in the first ~800 of 2500 steps, across Qwen2.5 "
    "0.5B-32B); entropy moves by minus the covariance between log pi and the logit change "
    "(eta Cov(log pi, A) for natural PG), and that covariance stays positive."
)
SHOWS = (
    "It shows, on the tree MDP (16 prompts, a 4-ary tree of depth 6, one softmax per "
    "prefix) trained with GRPO (G = 16) through the rlnb Trainer, that entropy falls from "
    "log 4 to under a tenth of it while the exact pass@1 climbs from 1% to about 0.99, that "
    "R = -a exp(H) + b fits each seed's trajectory of exact (entropy, reward) pairs with "
    "R^2 >= 0.9 and a ceiling within 0.05 of the final reward, and that the first-order "
    "covariance law matches the exact entropy change of one natural or vanilla PG step on "
    "random softmaxes to about 1e-4 relative error. It does not show that the law holds "
    "for a language model, whose parameters are shared between states: a tabular policy "
    "has no interference between prefixes, and the fit here spans a search phase, in which "
    "entropy barely moves, that large models do not have. The per-token covariance is "
    "plotted, not checked."
)

#: The GRPO run of card 3 is rlnb.recipes.tree_grpo_config (notebook 06 trains the same).
STEPS, QUICK_STEPS = 200, 150
SEEDS = 3
IDENTITY_STATES, IDENTITY_ACTIONS = 1000, 8
IDENTITY_ETAS = (1e-3, 1e-4)


def exact_tracker(env: TreeMDP, policy: TabularPolicy, seed: int, cov_every: int = 1):
    """A Trainer callback logging the exact entropy and pass@1 after each step, and every
    ``cov_every`` steps the card's token covariance on a fresh 16 x 16 batch of the policy."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    log: dict[str, list[float]] = {"entropy": [], "reward": [], "covariance": []}

    def track(trainer: Trainer, metrics: dict) -> dict:
        probs = policy.probs()
        log["entropy"].append(tree_token_entropy(env, probs))
        log["reward"].append(float(env.success_probability(probs).mean()))
        out = {"exact_entropy": log["entropy"][-1], "exact_reward": log["reward"][-1]}
        if trainer.step % cov_every == 0:
            with torch.no_grad():
                prompts = torch.arange(env.num_prompts)
                roll = policy.rollout(env, prompts, 16, generator=gen)
                adv = rl.compute_advantages(env.reward_rollout(roll, gen), 16, method="grpo",
                                            scale_rewards="group")
                mask = roll.mask.to(roll.logp.dtype)
                cov = rl.token_covariance(adv, roll.logp, mask)
                log["covariance"].append(float(rl.masked_mean(cov, mask)))
            out["token_covariance"] = log["covariance"][-1]
        return out

    return track, log


def initial_state(env: TreeMDP) -> dict[str, float]:
    probs = TabularPolicy.for_env(env).probs()
    return {"entropy": tree_token_entropy(env, probs),
            "reward": float(env.success_probability(probs).mean())}


def run_seed(seed: int, steps: int, cov_every: int = 1) -> dict[str, Any]:
    env = TreeMDP.random(generator=torch.Generator().manual_seed(seed))
    policy = TabularPolicy.for_env(env)  # uniform start: entropy log 4
    start = initial_state(env)
    track, log = exact_tracker(env, policy, seed, cov_every)
    Trainer(policy, env, tree_grpo_config(seed, steps), callbacks=[track]).train()
    H = [start["entropy"], *log["entropy"]]
    R = [start["reward"], *log["reward"]]
    fit = fit_entropy_reward(H, R)
    return {
        "seed": seed, "entropy": H, "reward": R, "covariance": log["covariance"],
        "covariance_steps": list(range(cov_every, steps + 1, cov_every)),
        "H0": H[0], "H_final": H[-1], "R_final": R[-1],
        "fit": {"a": fit.a, "b": fit.b, "ceiling": fit.ceiling, "r2": fit.r2},
    }


def identity(seed: int) -> list[dict[str, Any]]:
    """The first-order law against the exact change on random softmaxes: logits N(0, s^2)
    with s in {1, 3}, rewards U(0, 1), advantages r - E_pi r, both PG kinds, both etas."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for scale in (1.0, 3.0):
        z = scale * torch.randn(IDENTITY_STATES, IDENTITY_ACTIONS, generator=g, dtype=torch.float64)
        r = torch.rand(IDENTITY_STATES, IDENTITY_ACTIONS, generator=g, dtype=torch.float64)
        adv = r - (torch.softmax(z, -1) * r).sum(-1, keepdim=True)
        for kind in ("natural", "vanilla"):
            for eta in IDENTITY_ETAS:
                res = covariance_identity_error(z, adv, eta, kind)
                out.append({"seed": seed, "logit_scale": scale, "kind": kind, "eta": eta,
                            "relative_error": res.relative_error,
                            "worst_state_relative_error": res.worst_state_relative_error,
                            "correlation": res.correlation,
                            "exact": res.exact[:200].tolist(),
                            "predicted": res.predicted[:200].tolist()})
    return out


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 3 seeds x 200 GRPO steps, the token covariance after every step; quick: 3
    seeds x 150 steps, the covariance every 5th. Each seed draws its own tree
    (``TreeMDP.random`` with that seed) and its own samples."""
    steps = QUICK_STEPS if quick else STEPS
    seeds = [seed + i for i in range(SEEDS)]
    return {
        "steps": steps,
        "runs": [run_seed(s, steps, 5 if quick else 1) for s in seeds],
        "identity": [row for s in seeds for row in identity(s)],
    }


def checks(results: dict) -> list[Check]:
    runs = results["runs"]
    ratio = max(r["H_final"] / r["H0"] for r in runs)
    r2 = min(r["fit"]["r2"] for r in runs)
    gap = max(abs(r["fit"]["ceiling"] - r["R_final"]) for r in runs)
    ident = [row for row in results["identity"] if row["eta"] <= 1e-3]
    err = max(row["relative_error"] for row in ident)
    return [
        Check("H_final / H_0 (worst seed)", ratio, "<", 0.1,
              "entropy collapses: exact per-token entropy after training below a tenth of log 4"),
        Check("R^2 of R = -a exp(H) + b (worst seed)", r2, ">=", 0.9,
              "the exponential law fits each run's (entropy, reward) trajectory"),
        Check("|ceiling b - a - final reward| (worst seed)", gap, "<=", 0.05,
              "the law's ceiling at H = 0 predicts where the reward ends"),
        Check("covariance law: relative error at eta <= 1e-3 (worst case)", err, "<", 0.01,
              "||exact dH - (-Cov(log pi, dz))|| / ||exact dH|| over 1000 random states, natural "
              "and vanilla PG, every seed and logit scale"),
    ]


def figure(results: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        "reward against entropy, with each seed's fit", "per-token covariance over training",
        "covariance law: exact vs predicted dH"))
    for i, r in enumerate(results["runs"]):
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=r["entropy"], y=r["reward"], mode="markers", name=f"seed {r['seed']}",
                                 marker=dict(size=4, color=color, opacity=0.6)), row=1, col=1)
        H = np.linspace(0, max(r["entropy"]), 100)
        f = r["fit"]
        fig.add_trace(go.Scatter(x=H, y=-f["a"] * np.exp(H) + f["b"], mode="lines",
                                 line=dict(color=color, width=1.5), showlegend=False,
                                 name=f"fit, R² = {f['r2']:.3f}"), row=1, col=1)
    covs = np.array([r["covariance"] for r in results["runs"]])
    steps = np.array(results["runs"][0]["covariance_steps"])
    add_line_with_band(fig, steps, covs.mean(0), lo=covs.min(0), hi=covs.max(0),
                       name="mean token covariance (seed min-max)", color=PALETTE[3], row=1, col=2)
    fig.add_hline(y=0, line=dict(color="grey", dash="dash"), row=1, col=2)
    for j, row in enumerate(r for r in results["identity"]
                            if r["seed"] == results["runs"][0]["seed"] and r["eta"] == 1e-3
                            and r["logit_scale"] == 1.0):
        fig.add_trace(go.Scatter(x=row["exact"], y=row["predicted"], mode="markers",
                                 name=f"{row['kind']} PG, eta = 1e-3 (rel. err. {row['relative_error']:.1e})",
                                 marker=dict(size=4, color=PALETTE[(4 + j) % len(PALETTE)])),
                      row=1, col=3)
    fig.update_xaxes(title_text="exact per-token entropy H", row=1, col=1)
    fig.update_yaxes(title_text="exact pass@1 R", row=1, col=1)
    fig.update_xaxes(title_text="training step", row=1, col=2)
    fig.update_yaxes(title_text="mean (A - mean A)(log pi - mean log pi)", row=1, col=2)
    fig.update_xaxes(title_text="exact H(z + dz) - H(z)", row=1, col=3)
    fig.update_yaxes(title_text="-Cov(log pi, dz)", row=1, col=3)
    style_figure(fig, TITLE, height=480)
    fig.update_layout(legend=dict(orientation="h", y=-0.2, x=0, yanchor="top"),
                      margin=dict(t=90, b=120))
    return fig
