"""Card 2: the mechanics of boundary shrinkage (Reasoning Boundary Paradox 2510.02230,
Invisible Leash 2507.14843, Two-Stage dynamics 2510.04028).

On the strategy bandit after GRPO (card 1's protocol: ``rlnb.recipes.grpo_on_strategy_bandit``,
SGD lr 1.0, 100 steps) we measure, per problem ``i``, the exact success probability ``p_i``
before and after training:

- negative interference: the fraction of problems whose ``p_i`` fell;
- winner-take-all: Spearman(``p_i`` at base, ``delta p_i``);
- empirical support: 1,024 samples per problem from each policy (seeded generator);
  ``Supp_n`` = the correct strategies seen; shrink = |Supp(base) \\ Supp(RL)|, expand =
  |Supp(RL) \\ Supp(base)|, summed over problems (:func:`rlnb.probes.support_from_counts`);
- answer-level entropy of the sampled answers next to the exact token entropy. On the
  bandit the answer *is* the strategy, a single token, so the two are the same quantity
  (up to the plug-in bias of the sampled one): the card's "answer entropy falls while
  token entropy rises" cannot happen here, and the module says so rather than checks it.

The two-stage dynamic is an unvalidated check on a 3-arm Bernoulli bandit (means 0.9
optimal, 0.6 exploited, 0.1 bad; the optimal arm starts at about 2% probability): exact
expected policy gradient (mean baseline, lr 1.0) and, for comparison, the sampled Trainer
(GRPO, G=8, 4 prompts, SGD lr 0.1). Stage 1 ends when the exploited arm first reaches 0.9;
we compare how much the optimal arm's probability rose before and after.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from scipy.stats import spearmanr

from analysis.base import Check
from rlnb.probes import support_from_counts
from rlnb.recipes import grpo_on_strategy_bandit
from rlnb.viz import PALETTE, style_figure

TITLE = "Boundary shrinkage mechanics on the strategy bandit (card 2)"
CARD = 2
PAPER = (
    "Reasoning Boundary Paradox (2510.02230), Invisible Leash (2507.14843), Two-Stage "
    "dynamics (2510.04028), abstracts: learning some problems lowers p on others (negative "
    "interference); already-likely problems get reinforced (winner-take-all); empirical-support "
    "shrinkage outweighs expansion; answer-level entropy falls even when token entropy rises; "
    "the optimal but rarely sampled token only rises once the exploited tokens saturate. "
    "Card 2's numpy prototype of this toy: 42-59% of problems lose p_i, Spearman(p_base, "
    "delta p) 0.37-0.47, support shrink 216-287 against expand 0-4 at 1,024 samples."
)
SHOWS = (
    "It shows that one softmax shared by every problem produces the first three mechanisms "
    "exactly as the papers describe them: GRPO lowers p_i on every problem the dominant "
    "strategy does not solve (half of them), the gain goes to the problems that were already "
    "likely, and with 1,024 samples hundreds of correct strategies drop out of the empirical "
    "support while almost none enter. The two-stage dynamic appears under the exact expected "
    "gradient of a 3-arm bandit, but not within the budget of the sampled trainer, where the "
    "rare optimal arm is almost never drawn. It does not show the entropy paradox: on the "
    "bandit the answer is a single token, so answer entropy and token entropy coincide and "
    "both fall; separating them needs completions with many ways of writing one answer."
)

NUM_SAMPLES = 1024
STEPS = 100
ARM_MEANS = (0.9, 0.6, 0.1)  # optimal, exploited, bad
ARM_BASE = (0.02, 0.49, 0.49)
SATURATION = 0.9


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def run_seed(seed: int, steps: int = STEPS, num_samples: int = NUM_SAMPLES) -> dict[str, Any]:
    """GRPO on the strategy bandit for one seed; per-problem p_i, support and entropies."""
    r = grpo_on_strategy_bandit(seed, steps)
    p_base = r.env.success_probability(r.base_probs).double().numpy()
    p_rl = r.env.success_probability(r.rl_probs).double().numpy()
    delta = p_rl - p_base
    pi_base = r.base_probs[0].double().numpy()
    pi_rl = r.rl_probs[0].double().numpy()
    rng = np.random.default_rng([CARD, seed])  # the support samples, seeded
    P = r.env.num_problems
    counts_base = rng.multinomial(num_samples, pi_base / pi_base.sum(), size=P)  # (P, S)
    counts_rl = rng.multinomial(num_samples, pi_rl / pi_rl.sum(), size=P)
    _, tot = support_from_counts(counts_base, counts_rl, r.env.solve_matrix.numpy())
    return {
        "seed": seed,
        "p_base": p_base.tolist(),
        "delta_p": delta.tolist(),
        "frac_fell": float((delta < 0).mean()),
        "spearman": float(spearmanr(p_base, delta).statistic),
        "shrink": int(tot["shrink"]),
        "expand": int(tot["expand"]),
        "supp_base": int(tot["supp_base"]),
        "supp_rl": int(tot["supp_rl"]),
        "h_ans_base": float(tot["h_ans_base"]),
        "h_ans_rl": float(tot["h_ans_rl"]),
        "h_token_base": _entropy(pi_base),
        "h_token_rl": _entropy(pi_rl),
        "pass1_base": float(p_base.mean()),
        "pass1_rl": float(p_rl.mean()),
    }


# --- the two-stage 3-arm bandit (unvalidated) ---------------------------------------------


def _arm_logits(seed: int) -> np.ndarray:
    rng = np.random.default_rng([CARD, 3, seed])
    return np.log(np.asarray(ARM_BASE)) + rng.normal(0.0, 0.2, 3)


def two_stage_summary(probs: np.ndarray) -> dict[str, Any]:
    """Stage 1 ends at ``t90``, the first step with the exploited arm (column 1) >= 0.9.
    ``rise_before`` = max of the optimal arm (column 0) up to t90 minus its start;
    ``rise_after`` = its max after t90 minus its value at t90; ``ratio`` = before / after
    (1e6 when it never rose after t90 or the exploited arm never reached 0.9)."""
    opt, exp = probs[:, 0], probs[:, 1]
    hit = np.flatnonzero(exp >= SATURATION)
    if hit.size == 0:
        rise_before = float(opt.max() - opt[0])
        return {"t90": None, "rise_before": rise_before, "rise_after": 0.0, "ratio": 1e6}
    t90 = int(hit[0])
    rise_before = float(opt[: t90 + 1].max() - opt[0])
    rise_after = float(opt[t90:].max() - opt[t90])
    ratio = rise_before / rise_after if rise_after > 1e-12 else 1e6
    return {"t90": t90, "rise_before": rise_before, "rise_after": rise_after,
            "ratio": float(min(ratio, 1e6))}


def three_arm_exact(seed: int, steps: int) -> dict[str, Any]:
    """Exact expected policy gradient with a mean baseline on the 3-arm bandit:
    ``theta += lr * pi * (r - pi . r)``, lr 1.0 (what the sampled gradient averages to)."""
    r = np.asarray(ARM_MEANS)
    theta = _arm_logits(seed)
    out = np.empty((steps + 1, 3))
    for t in range(steps + 1):
        p = np.exp(theta - theta.max())
        p /= p.sum()
        out[t] = p
        theta = theta + 1.0 * p * (r - p @ r)
    return {"probs": out.tolist(), **two_stage_summary(out)}


def three_arm_sampled(seed: int, steps: int) -> dict[str, Any]:
    """The same bandit trained by the rlnb Trainer: GRPO, G=8, 4 prompts, SGD lr 0.1."""
    from rlnb.envs import Bandit
    from rlnb.policies import TabularPolicy
    from rlnb.train import TrainConfig, Trainer

    env = Bandit(means=torch.tensor(ARM_MEANS))
    policy = TabularPolicy.for_env(env, shared=True,
                                   logits=torch.tensor(_arm_logits(seed), dtype=torch.float32))
    probs = [policy.probs().detach()[0].double().numpy().copy()]

    def record(trainer: Any, metrics: dict[str, Any]) -> None:
        probs.append(trainer.policy.probs().detach()[0].double().numpy().copy())

    config = TrainConfig(
        seed=seed, max_steps=steps, num_prompts_per_step=4, num_generations=8,
        advantage="grpo", scale_rewards="group", policy_loss="vanilla_pg",
        loss_agg_mode="token-mean", optimizer="sgd", learning_rate=0.1, progress_bar=False,
    )
    Trainer(policy, env, config, callbacks=[record]).train()
    out = np.array(probs)
    return {"probs": out.tolist(), **two_stage_summary(out)}


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 5 seeds of the strategy bandit, 3-arm bandit exact 2,000 steps and sampled 300
    steps. Quick: 3 seeds, the same bandit protocol, 3-arm sampled 100 steps."""
    seeds = [seed + i for i in range(3 if quick else 5)]
    exact_steps, sampled_steps = 2000, (100 if quick else 300)
    return {
        "num_samples": NUM_SAMPLES,
        "seeds": [run_seed(s) for s in seeds],
        "three_arm": {
            "means": list(ARM_MEANS),
            "exact": [{"seed": s, **three_arm_exact(s, exact_steps)} for s in seeds],
            "sampled": [{"seed": s, **three_arm_sampled(s, sampled_steps)} for s in seeds],
        },
    }


def checks(results: dict) -> list[Check]:
    rs = results["seeds"]
    frac = min(r["frac_fell"] for r in rs)
    rho = min(r["spearman"] for r in rs)
    ratio = min(r["shrink"] / max(r["expand"], 1) for r in rs)
    exact = max(r["ratio"] for r in results["three_arm"]["exact"])
    sampled = max(r["ratio"] for r in results["three_arm"]["sampled"])
    return [
        Check("fraction of problems whose p_i fell (worst seed)", frac, ">=", 0.3,
              "negative interference: GRPO lowers the exact success probability of at least "
              "30% of the problems"),
        Check("Spearman(p_i at base, delta p_i) (worst seed)", rho, ">=", 0.2,
              "winner-take-all: the problems that were already likely gain the most"),
        Check(f"support shrink / max(expand, 1) at n={results['num_samples']} (worst seed)",
              ratio, ">=", 10.0,
              "correct strategies lost from the empirical support outnumber those gained at "
              "least 10 to 1 (expand = 0 counts as 1, which is stricter than the card)"),
        Check("3-arm exact gradient: optimal-arm rise before / after the exploited arm "
              "reaches 0.9 (worst seed)", exact, "<=", 0.1,
              "two-stage dynamic: the optimal arm stays flat until the exploited arm "
              "saturates (unvalidated)", required=False),
        Check("3-arm sampled GRPO (Trainer): the same ratio (worst seed)", sampled, "<=", 0.1,
              "the same under sampled training within the step budget (unvalidated)",
              required=False),
    ]


def figure(results: dict) -> go.Figure:
    rs = results["seeds"]
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.22, horizontal_spacing=0.1,
                        subplot_titles=(
                            "winner-take-all: delta p_i (y) against p_i at base (x)",
                            f"empirical support at n={results['num_samples']}: shrink vs expand",
                            "entropy (nats): sampled answer-level vs exact token-level",
                            "two-stage 3-arm bandit: arm probabilities"))
    for j, r in enumerate(rs):
        fig.add_trace(go.Scatter(x=r["p_base"], y=r["delta_p"], mode="markers",
                                 marker=dict(size=5, color=PALETTE[j % len(PALETTE)]),
                                 name=f"seed {r['seed']}", legendgroup="seeds"), row=1, col=1)
    fig.add_hline(y=0, line=dict(color="grey", dash="dot"), row=1, col=1)
    names = [f"seed {r['seed']}" for r in rs]
    fig.add_trace(go.Bar(x=names, y=[r["shrink"] for r in rs], name="shrink (lost)",
                         marker_color=PALETTE[1]), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=[r["expand"] for r in rs], name="expand (gained)",
                         marker_color=PALETTE[2]), row=1, col=2)
    for j, (key, label) in enumerate([("h_ans_base", "H_ans base (sampled)"),
                                      ("h_token_base", "H_token base (exact)"),
                                      ("h_ans_rl", "H_ans after GRPO (sampled)"),
                                      ("h_token_rl", "H_token after GRPO (exact)")]):
        fig.add_trace(go.Bar(x=names, y=[r[key] for r in rs], name=label,
                             marker_color=PALETTE[(3 + j) % len(PALETTE)]), row=2, col=1)
    for kind, dash in (("exact", "solid"), ("sampled", "dot")):
        run0 = results["three_arm"][kind][0]
        p = np.asarray(run0["probs"])
        for a, label in enumerate(["optimal (0.9)", "exploited (0.6)"]):
            fig.add_trace(go.Scatter(x=np.arange(1, len(p) + 1).tolist(), y=p[:, a].tolist(),
                                     mode="lines", line=dict(color=PALETTE[a], dash=dash),
                                     name=f"{label}, {kind}, seed {run0['seed']}"),
                          row=2, col=2)
    fig.update_yaxes(title_text="delta p_i", row=1, col=1)
    fig.update_xaxes(title_text="step + 1", type="log", row=2, col=2)
    fig.update_yaxes(range=[0, 1.02], row=2, col=2)
    style_figure(fig, TITLE, height=900)
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.1, x=0,
                                                   yanchor="top"), margin=dict(t=90, b=160))
    return fig
