"""Card 19: intransitive preferences -- a reward model fails, Nash learning and self-play
do not (Munos et al., arXiv:2312.00886, Nash-MD; Swamy et al., arXiv:2401.04056, SPO).

The game (:meth:`rlnb.envs.PreferenceGame.cyclic`): K = 7 outputs, a rock-paper-scissors
cycle among outputs 0-2 (margins U(0.15, 0.35)) and four outputs that each of the three
beats. No reward represents the cycle; the target is the game's minimax winner, computed
by a linear programme (:func:`rlnb.algos.minimax_winner`), and a policy is judged by its
exploitability ``max_y P(y beats pi) - 1/2`` (0 exactly at the winner). Per seed (a new
game each):

1. **Bradley-Terry + KL-RL**: a BT model fitted on 5,000 comparisons of uniformly drawn
   pairs (:func:`rlnb.algos.fit_bradley_terry`), then the KL-regularised optimum against
   the uniform reference at beta = 0.05, exactly ``pi ∝ exp(r / beta)``.
2. **Nash-MD** (:func:`rlnb.algos.nash_md`, beta = 0.02, eta = 0.1): the last iterate after
   3,000 exact steps.
3. **SPO, exact** (:func:`rlnb.algos.spo_hedge`, Hedge with eta = 1, 3,000 steps): the
   average iterate (the no-regret guarantee) and the last one (which cycles).
4. **SPO, sampled**, through the rlnb Trainer: a tabular softmax over the 7 outputs on the
   :class:`rlnb.envs.PreferenceGame` sandbox, whose reward is a completion's win rate
   against the other completions of its group (G = 8, 8 groups a step), group-mean
   baseline, vanilla policy gradient, SGD at 0.5; the average iterate over training.
5. **Control**: Hedge against a *fixed* uniform opponent (not self-play) converges to the
   best response to uniform, a pure output, which the cycle exploits: it must not pass.

Exploitability is exact everywhere; only step 4 samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from analysis.base import Check
from rlnb.algos import (
    bradley_terry_policy,
    exploitability,
    minimax_winner,
    spo_hedge_trace,
)
from rlnb.algos import nash_md_trace as nash_md_exploitability
from rlnb.envs import PreferenceGame
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer
from rlnb.viz import PALETTE, style_figure
from rlnb.viz.training import rgba

TITLE = "Intransitive preferences: a reward model is exploited, Nash-MD and SPO are not (card 19)"
CARD = 19
PAPER = (
    "Munos et al. (Nash learning from human feedback) and Swamy et al. (SPO): a reward "
    "model cannot represent intransitive preferences; Nash-MD's last iterate converges to "
    "the regularised equilibrium and self-play with win rate as the reward reaches the "
    "minimax winner. Card 19's prototype (K = 7, 5 seeds): BT + KL-RL exploitability 0.196 "
    "[0.155, 0.242] with 0.917 of its mass on the BT argmax; SPO (Hedge) average iterate "
    "0.003, last iterate 0.181; sampled SPO (G = 8) 0.063; Nash-MD last iterate 0.004; "
    "uniform start 0.211."
)
SHOWS = (
    "It shows, exactly on small preference games with a rock-paper-scissors cycle, that "
    "fitting a Bradley-Terry reward and maximising it (with a KL anchor) puts most of the "
    "mass on one member of the cycle, which another member beats, while Nash-MD's last "
    "iterate and self-play's average iterate approach the minimax winner, and that sampled "
    "self-play through the rlnb Trainer does too. It does not show anything about language "
    "models or learned preference models: the preference matrix is known, the policy is a "
    "table over seven outputs, and the exact updates see the whole matrix."
)

NUM_OUTPUTS = 7
BT_PAIRS = 5000
KL_BETA = 0.05
NASH_BETA, NASH_ETA = 0.02, 0.1
HEDGE_ETA = 1.0
EXACT_STEPS = 3000
SAMPLED = {"num_prompts_per_step": 8, "num_generations": 8, "learning_rate": 0.5}
FULL = {"seeds": 5, "sampled_seeds": 3, "sampled_steps": 1000, "sweep": 40}
QUICK = {"seeds": 3, "sampled_seeds": 1, "sampled_steps": 300, "sweep": 8}
TRACE_EVERY = 50  # exact iterations between the points of the figure's curves


def bradley_terry_kl(P: torch.Tensor, seed: int) -> dict[str, Any]:
    """BT fitted on ``BT_PAIRS`` sampled comparisons, then ``pi ∝ exp(r / KL_BETA)``."""
    pi, scores = bradley_terry_policy(P, pairs=BT_PAIRS, beta=KL_BETA,
                                      generator=torch.Generator().manual_seed(seed))
    return {"exploitability": exploitability(pi, P), "argmax_mass": float(pi.max()),
            "argmax": int(pi.argmax()), "scores": scores.tolist()}


def nash_md_trace(P: torch.Tensor, steps: int) -> list[float]:
    """Exploitability of Nash-MD's last iterate every :data:`TRACE_EVERY` steps."""
    return nash_md_exploitability(P, beta=NASH_BETA, eta=NASH_ETA, steps=steps,
                                  every=TRACE_EVERY)[0]


def hedge_trace(P: torch.Tensor, steps: int) -> dict[str, list[float]]:
    """Exploitability of SPO's (Hedge's) last and average iterates every
    :data:`TRACE_EVERY` steps (the average over every step so far)."""
    out = spo_hedge_trace(P, eta=HEDGE_ETA, steps=steps, every=TRACE_EVERY)
    return {"last": out["last"], "average": out["average"]}


def fixed_opponent(P: torch.Tensor, steps: int) -> float:
    """Hedge against a fixed uniform opponent: the exploitability it ends at."""
    k = P.shape[0]
    uniform = torch.full((k,), 1 / k, dtype=torch.float64)
    pi = uniform.clone()
    for _ in range(steps):
        pi = torch.softmax(pi.log() + HEDGE_ETA * (P @ uniform), 0)
    return exploitability(pi, P)


def sampled_spo(game: PreferenceGame, seed: int, steps: int) -> dict[str, Any]:
    """SPO through the Trainer; exploitability of the average and last iterates."""
    policy = TabularPolicy.for_env(game)
    total = torch.zeros(game.num_actions, dtype=torch.float64)
    trace: list[float] = []

    def average(trainer: Trainer, metrics: dict[str, Any]) -> dict[str, float]:
        total.add_(policy.probs().reshape(-1).double())
        avg = game.exploitability(total / trainer.step)
        trace.append(avg)
        return {"exploitability/average": avg, "exploitability/last": game.exploitability(policy.probs())}

    config = TrainConfig(seed=seed, max_steps=steps, optimizer="sgd", advantage="grpo",
                         scale_rewards="none", policy_loss="vanilla_pg", progress_bar=False,
                         **SAMPLED)
    history = Trainer(policy, game, config, callbacks=[average]).train()
    return {"average": trace[-1], "last": float(history["exploitability/last"].iloc[-1]),
            "trace": trace[::max(1, steps // 60)]}


def run_seed(seed: int, sampled_steps: int | None) -> dict[str, Any]:
    game = PreferenceGame.cyclic(NUM_OUTPUTS, seed)
    P = game.preference
    winner = minimax_winner(P)
    hedge = hedge_trace(P, EXACT_STEPS)
    nash = nash_md_trace(P, EXACT_STEPS)
    out = {
        "seed": seed,
        "winner": winner.tolist(),
        "winner_exploitability": exploitability(winner, P),
        "uniform": exploitability(torch.full((NUM_OUTPUTS,), 1 / NUM_OUTPUTS), P),
        "bt_kl": bradley_terry_kl(P, seed),
        "nash_md": nash[-1], "nash_md_trace": nash,
        "spo_average": hedge["average"][-1], "spo_last": hedge["last"][-1],
        "spo_trace": hedge,
        "fixed_opponent": fixed_opponent(P, EXACT_STEPS),
    }
    if sampled_steps is not None:
        out["sampled_spo"] = sampled_spo(game, seed, sampled_steps)
    return out


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 5 games (seeds), 3,000 exact steps each, sampled SPO on 3 of them for 1,000
    Trainer steps. Quick: 3 games, sampled SPO on one for 300 steps."""
    b = QUICK if quick else FULL
    seeds = [seed + i for i in range(b["seeds"])]
    rows = [run_seed(s, b["sampled_steps"] if i < b["sampled_seeds"] else None)
            for i, s in enumerate(seeds)]
    # How often the card's BT criteria hold on games beyond the judged seeds: they fail
    # when the two strongest cycle members get BT scores too close for beta to separate.
    sweep = []
    for s in range(seed + 1000, seed + 1000 + b["sweep"]):
        bt = bradley_terry_kl(PreferenceGame.cyclic(NUM_OUTPUTS, s).preference, s)
        top = sorted(bt["scores"], reverse=True)
        sweep.append({"seed": s, "exploitability": bt["exploitability"],
                      "argmax_mass": bt["argmax_mass"], "top_gap": top[0] - top[1]})
    return {"quick": quick, "seeds": seeds, "runs": rows, "budget": b, "bt_sweep": sweep,
            "trace_every": TRACE_EVERY, "exact_steps": EXACT_STEPS}


def _worst(results: dict, key: str, pick=max) -> float:
    return float(pick(r[key] for r in results["runs"]))


def checks(results: dict) -> list[Check]:
    runs = results["runs"]
    sampled = [r["sampled_spo"]["average"] for r in runs if "sampled_spo" in r]
    bt = [r["bt_kl"] for r in runs]
    out = [
        Check("minimax winner (LP): exploitability", _worst(results, "winner_exploitability"),
              "<=", 1e-6, "the linear programme's solution is the game's equilibrium"),
        Check("BT + KL-RL: exploitability", min(b["exploitability"] for b in bt), ">=", 0.10,
              "card 19: a Bradley-Terry reward cannot represent the cycle, its KL-regularised "
              "optimum is exploitable (worst = smallest over seeds). Reported, not required: "
              "on further games it fails where two cycle members get nearly equal BT scores "
              "(the sweep below)", required=False),
        Check("BT + KL-RL: mass on the BT argmax", min(b["argmax_mass"] for b in bt), ">=", 0.7,
              "card 19: the reward model concentrates the policy on one output. Reported, not "
              "required, for the same reason", required=False),
        Check("BT + KL-RL exploitability / Nash-MD's (worst game)",
              min(r["bt_kl"]["exploitability"] / max(r["nash_md"], 1e-12) for r in runs), ">=", 5.0,
              "on every game the reward-model policy is far more exploitable than Nash-MD's "
              "(rlnb's robust form of the card's first two criteria)"),
        Check("Nash-MD last iterate: exploitability", _worst(results, "nash_md"), "<=", 0.02,
              f"beta = {NASH_BETA}, {EXACT_STEPS} exact steps, no averaging"),
        Check("SPO (exact Hedge) average iterate: exploitability", _worst(results, "spo_average"),
              "<=", 0.02, "self-play with win rate as reward, averaged"),
        Check("control: Hedge against a fixed uniform opponent", _worst(results, "fixed_opponent", min),
              ">", 0.02, "not self-play: it best-responds to uniform and must not pass "
              "(card: 0.08-0.24; worst = smallest over seeds)"),
    ]
    sweep = results.get("bt_sweep", [])
    if sweep:
        held = sum(r["exploitability"] >= 0.10 and r["argmax_mass"] >= 0.7 for r in sweep)
        out.append(Check(f"BT + KL-RL criteria on {len(sweep)} more games: fraction that hold",
                         held / len(sweep), ">=", 1.0,
                         "reported, not required: where the two strongest cycle members' BT "
                         "scores are within about 0.04, beta = 0.05 splits the mass between "
                         "them (the policy is still exploitable, but the card's 0.7 fails)",
                         required=False))
    if sampled:
        out.insert(5, Check("SPO (sampled, G = 8, rlnb Trainer) average iterate", max(sampled),
                            "<=", 0.12, "REINFORCE on win rates within the group"))
    return out


def figure(results: dict) -> go.Figure:
    fig = go.Figure()
    every = results["trace_every"]
    runs = results["runs"]

    def band(traces: list[list[float]], x: np.ndarray, name: str, color: str, dash: str = "solid"):
        arr = np.array(traces)
        fig.add_trace(go.Scatter(x=x, y=arr.max(0), mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=arr.min(0), mode="lines", line=dict(width=0),
                                 fill="tonexty", fillcolor=rgba(color, 0.18), showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=np.median(arr, 0), mode="lines", name=name,
                                 line=dict(color=color, dash=dash, width=2)))

    x = np.arange(len(runs[0]["nash_md_trace"])) * every
    band([r["nash_md_trace"] for r in runs], x, "Nash-MD, last iterate", PALETTE[0])
    band([r["spo_trace"]["average"] for r in runs], x, "SPO (exact), average iterate", PALETTE[1])
    fig.add_trace(go.Scatter(x=x, y=runs[0]["spo_trace"]["last"], mode="lines",
                             name=f"SPO (exact), last iterate (game {runs[0]['seed']}: it cycles)",
                             line=dict(color=PALETTE[1], dash="dot", width=1), opacity=0.7))
    sampled = [r["sampled_spo"]["trace"] for r in runs if "sampled_spo" in r]
    if sampled:
        steps = results["budget"]["sampled_steps"]
        xs = np.linspace(1, steps, len(sampled[0]))
        band(sampled, xs, "SPO (sampled, Trainer steps), average", PALETTE[2], "dash")
    bt = float(np.median([r["bt_kl"]["exploitability"] for r in runs]))
    fig.add_hline(y=bt, line=dict(color=PALETTE[3], dash="dash"),
                  annotation_text=f"BT + KL-RL (median {bt:.2f})", annotation_position="top left")
    uni = float(np.median([r["uniform"] for r in runs]))
    fig.add_hline(y=uni, line=dict(color="#888", dash="dot"),
                  annotation_text=f"uniform policy ({uni:.2f})", annotation_position="bottom left")
    fig.add_hline(y=0.02, line=dict(color="#444", width=1),
                  annotation_text="criterion 0.02", annotation_position="top right")
    fig.update_xaxes(title_text="iteration (exact) or Trainer step (sampled)")
    fig.update_yaxes(title_text="exploitability: max_y P(y beats π) − 1/2", rangemode="tozero")
    style_figure(fig, TITLE, height=480)
    fig.update_layout(legend=dict(orientation="h", y=-0.2, x=0, yanchor="top"),
                      margin=dict(b=110))
    return fig

