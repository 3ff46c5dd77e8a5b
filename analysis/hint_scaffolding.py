"""Card 21: hint scaffolding keeps hard problems in the sweet spot (*Staying in the Sweet
Spot*, SEELE).

The tree MDP of card TM made hard: 16 prompts, a 4-ary tree of depth 6 (4,096 leaves) with
0.1% of the leaves rewarded (4 per prompt; base pass@1 4 / 4096 = 0.001). A tabular policy
(one softmax per prefix, uniform start) is trained through the rlnb Trainer with GRPO (group
mean and std), G = 8, every prompt every step, plain SGD at lr 1 per prompt (each prompt's
loss is the mean over its G rollouts of the summed log-probabilities; the 16 prompts' losses
add up, as in card 18), 150 steps, under five hint schedules
(:class:`rlnb.envs.HintedTask`, rolled out by :func:`rlnb.train.hinting.hinted_rollout`):

* ``none``: plain RLVR on the tree;
* ``fixed h=3`` and ``fixed h=5``: every rollout's first h actions forced along the
  prompt's reference path (the path to its first rewarded leaf);
* ``linear 5->0``: h = round(5 (150 - s) / 150) at step s;
* ``adaptive``: per prompt, h starts at 5 and after each step moves by 1 toward 50%
  rollout accuracy (down when more than half of the prompt's 8 rollouts succeeded, up when
  fewer).

Forced actions are masked out of the loss: only the policy's own actions are trained. The
measure is the policy's **hint-free** pass@1, exact (``TreeMDP.success_probability``), after
every step; the card reads it at 75 and 150 steps. Each seed draws its own trees; every
criterion is judged on the worst seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.envs import HintedTask, TreeMDP
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer
from rlnb.viz import PALETTE, style_figure
from rlnb.viz.training import rgba

TITLE = "Hint scaffolding: an adaptive hint keeps hard problems learnable (SEELE, card 21)"
CARD = 21
PAPER = (
    "SEELE (Staying in the Sweet Spot, seed abstract): RLVR learns little from problems that "
    "are too hard or too easy; appending a partial solution whose length adapts per problem "
    "to keep rollout accuracy in the efficient region outperforms plain RLVR and fixed "
    "hints. Card 21's prototype (tree MDP, 0.1% rewarded leaves, base pass@1 0.0009, G = 8, "
    "lr 1, 150 steps), hint-free pass@1 at 150 (75) steps: none 0.254 [0.119, 0.312] "
    "(0.065); fixed h=3 0.015; fixed h=5 0.002; linear decay 5->0 0.948 (0.015); adaptive "
    "0.982 [0.981, 0.983] (0.918)."
)
SHOWS = (
    "It shows, on hard tree-MDP prompts (4 rewarded leaves of 4,096) trained with GRPO "
    "through the rlnb Trainer, that plain RLVR finds the rewarded leaves slowly (most groups "
    "have no success, so no advantage), that a hint whose length adapts per prompt toward "
    "50% rollout accuracy walks every prompt back to no hint while it learns, reaching a "
    "hint-free pass@1 near 0.98 by 75 steps, and that a linear decay gets there too but only "
    "once the hint has shrunk (late). It also shows the toy's built-in part, as the card "
    "says: a fixed hint of h actions trains only the nodes below the hinted prefix, which "
    "the hint-free policy reaches with probability 4^-h, so fixed hints leave the hint-free "
    "pass@1 at about 4^-h (0.016 and 0.001) however well the hinted subproblem is solved "
    "(its hinted pass@1 is reported). It does not show SEELE's result on language models: "
    "the policy is a table with no sharing between prefixes, the hint is an exact prefix of "
    "a rewarded path, and \"accuracy\" is measured on the step's own 8 rollouts."
)

BRANCHING, DEPTH, PROMPTS, REWARD_FRACTION = 4, 6, 16, 0.001
GROUP, STEPS, LR_PER_PROMPT = 8, 150, 1.0
READ_AT = (75, 150)
#: name -> (schedule, h0); None: the plain tree, no hints.
SCHEDULES: dict[str, tuple[str | None, int]] = {
    "none": (None, 0),
    "fixed h=3": ("fixed", 3),
    "fixed h=5": ("fixed", 5),
    "linear 5->0": ("linear", 5),
    "adaptive": ("adaptive", 5),
}
FULL = {"seeds": 5, "schedules": tuple(SCHEDULES)}
QUICK = {"seeds": 3, "schedules": ("none", "fixed h=5", "adaptive")}


def make_tree(seed: int) -> TreeMDP:
    """Card 21's trees: 16 prompts, branching 4, depth 6, 4 rewarded leaves each."""
    return TreeMDP.random(PROMPTS, BRANCHING, DEPTH, REWARD_FRACTION,
                          generator=torch.Generator().manual_seed(seed))


def config(seed: int) -> TrainConfig:
    """GRPO, G = 8, all 16 prompts a step, SGD at lr 1 per prompt (x 16 prompts, since
    ``seq-mean-token-sum`` averages over all 16 G rows)."""
    return TrainConfig(seed=seed, max_steps=STEPS, num_prompts_per_step=PROMPTS,
                       num_generations=GROUP, advantage="grpo", scale_rewards="group",
                       policy_loss="vanilla_pg", loss_agg_mode="seq-mean-token-sum",
                       optimizer="sgd", learning_rate=LR_PER_PROMPT * PROMPTS,
                       progress_bar=False)


def hinted_node_value(env: HintedTask, probs: torch.Tensor, h: int) -> float:
    """Mean over prompts of the exact pass@1 from the node the hint of length ``h`` forces
    (the hinted problem's pass@1); ``h = 0`` is the hint-free pass@1."""
    tree = env.env
    prompts = torch.arange(tree.num_prompts)
    s = tree.initial_states(prompts)
    for t in range(h):
        s = tree.next_states(s, env.solutions[:, t])
    V = tree.values(probs)  # (P, I)
    return float(V[prompts, s % tree.states_per_prompt].mean())


def run_schedule(seed: int, name: str) -> dict[str, Any]:
    """One seed, one schedule: hint-free pass@1 after every step (and the adaptive mean,
    min and max h over prompts)."""
    schedule, h0 = SCHEDULES[name]
    tree = make_tree(seed)
    env = tree if schedule is None else HintedTask(tree, schedule, h0)
    policy = TabularPolicy.for_env(tree)
    log: dict[str, list[float]] = {"pass_at_1": [], "h_mean": [], "h_min": [], "h_max": []}

    def track(trainer: Trainer, metrics: dict) -> None:
        log["pass_at_1"].append(float(tree.success_probability(policy.probs().detach()).mean()))
        if schedule == "adaptive":
            h = env.adaptive_lengths.float()  # after this step's move
            log["h_mean"].append(float(h.mean()))
            log["h_min"].append(float(h.min()))
            log["h_max"].append(float(h.max()))

    start = float(tree.success_probability(policy.probs().detach()).mean())
    Trainer(policy, env, config(seed), callbacks=[track]).train()
    out = {"seed": seed, "schedule": name, "start": start, "pass_at_1": log["pass_at_1"],
           **{f"at_{k}": log["pass_at_1"][k - 1] for k in READ_AT}}
    if schedule == "adaptive":
        out.update(h_mean=log["h_mean"], h_min=log["h_min"], h_max=log["h_max"])
    if schedule == "fixed":
        out["hinted_pass_at_1"] = hinted_node_value(env, policy.probs().detach(), h0)
    return out


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 5 seeds x the five schedules, 150 steps each. Quick: 3 seeds x none, fixed
    h=5 and adaptive (the schedules the criteria need), the same 150 steps."""
    b = QUICK if quick else FULL
    seeds = [seed + i for i in range(b["seeds"])]
    runs = [run_schedule(s, name) for s in seeds for name in b["schedules"]]
    return {"quick": quick, "seeds": seeds, "schedules": list(b["schedules"]), "runs": runs,
            "base_pass_at_1": [r["start"] for r in runs if r["schedule"] == "none"]}


def _run(results: dict, seed: int, name: str) -> dict:
    return next(r for r in results["runs"] if r["seed"] == seed and r["schedule"] == name)


def checks(results: dict) -> list[Check]:
    seeds = results["seeds"]

    def worst(name: str, key: str, pick=min) -> float:
        return pick(_run(results, s, name)[key] for s in seeds)

    def gap(step: int) -> float:
        return min(_run(results, s, "adaptive")[f"at_{step}"] - _run(results, s, "none")[f"at_{step}"]
                   for s in seeds)

    return [
        Check("adaptive hint: hint-free pass@1 at 150 steps", worst("adaptive", "at_150"), ">=",
              0.9, "worst seed"),
        Check("adaptive - none: hint-free pass@1 at 150 steps", gap(150), ">=", 0.4,
              "per seed (smallest difference)"),
        Check("adaptive - none: hint-free pass@1 at 75 steps", gap(75), ">=", 0.5,
              "per seed (smallest difference)"),
        Check("fixed h=5: hint-free pass@1 at 150 steps", worst("fixed h=5", "at_150", max), "<=",
              0.05, "a fixed hint trains only nodes the hint-free policy never reaches "
              "(worst = largest over seeds)"),
    ]


def figure(results: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=["hint-free pass@1 (exact) by schedule",
                                        "adaptive schedule: hint length h over prompts"])
    colors = dict(zip(SCHEDULES, PALETTE))
    for name in results["schedules"]:
        runs = [_run(results, s, name) for s in results["seeds"]]
        arr = np.array([[r["start"], *r["pass_at_1"]] for r in runs])  # (seeds, steps + 1)
        x = np.arange(arr.shape[1])
        c = colors[name]
        fig.add_trace(go.Scatter(x=x, y=arr.max(0), mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=arr.min(0), mode="lines", line=dict(width=0),
                                 fill="tonexty", fillcolor=rgba(c, 0.18), showlegend=False,
                                 hoverinfo="skip"), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=x, y=np.median(arr, 0), mode="lines", name=name, line=dict(color=c, width=2),
            hovertemplate=f"{name}: median %{{y:.3f}} at step %{{x}}<extra></extra>"),
            row=1, col=1)
    for step in READ_AT:
        fig.add_vline(x=step, line=dict(color="#999", dash="dot", width=1), row=1, col=1)
    if "adaptive" in results["schedules"]:
        runs = [_run(results, s, "adaptive") for s in results["seeds"]]
        x = np.arange(1, len(runs[0]["h_mean"]) + 1)
        c = colors["adaptive"]
        fig.add_trace(go.Scatter(x=x, y=np.max([r["h_max"] for r in runs], 0), mode="lines",
                                 line=dict(width=0), showlegend=False, hoverinfo="skip"),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=np.min([r["h_min"] for r in runs], 0), mode="lines",
                                 line=dict(width=0), fill="tonexty", fillcolor=rgba(c, 0.18),
                                 name="min-max over prompts and seeds", hoverinfo="skip"),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=np.mean([r["h_mean"] for r in runs], 0), mode="lines",
                                 name="adaptive: mean h", line=dict(color=c, width=2, dash="dash")),
                      row=1, col=2)
    fig.update_xaxes(title_text="training step", row=1, col=1)
    fig.update_xaxes(title_text="training step", row=1, col=2)
    fig.update_yaxes(title_text="pass@1 without hints", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="hint length h (actions)", range=[0, 5.2], row=1, col=2)
    style_figure(fig, TITLE, height=480)
    fig.update_layout(legend=dict(orientation="h", y=-0.18, x=0, yanchor="top"),
                      margin=dict(b=120))
    return fig
