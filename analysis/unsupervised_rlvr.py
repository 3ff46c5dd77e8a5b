"""Card 17: unsupervised RLVR -- a majority-vote reward only sharpens the prior (*How Far
Can Unsupervised RLVR Scale LLM Training?*; TTRL, Zuo et al. arXiv:2504.16084).

The toy (:meth:`rlnb.envs.AnswerStrategyBandit.card17`): card SB's strategy bandit (64
problems, 64 strategies, one shared softmax, base logits N(-1, 1) with s0 = 2 and s1 = 1)
whose strategies give *answers*: the correct one where they solve the problem, else one of
20 wrong answers per problem, 10% of errors hitting the problem's popular wrong answer.

- **aligned**: s0 solves 50%, s1 35%, the others 8% -- the prior's favourite is the best
  strategy;
- **misaligned**: s0 solves 5% and always gives the popular wrong answer, s1 solves 50% --
  the favourite is confidently wrong.

Each setting is trained twice through the rlnb Trainer (GRPO, G = 4, 16 problems a step,
vanilla policy gradient, SGD at lr 1.0, 400 steps): on the **majority vote** of the group
(:class:`rlnb.envs.MajorityVote`, ties broken at random; the gold answer is never seen)
and on the **gold** reward (the verifier). Every step logs the exact gold pass@1 and the
exact answer entropy (mean over problems of the entropy of the answer distribution); the
*collapse step* is the first step at which the answer entropy is below 0.1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.envs import AnswerStrategyBandit, MajorityVote
from rlnb.envs.strategy_bandit import card_base_logits
from rlnb.policies import TabularPolicy
from rlnb.train import TrainConfig, Trainer
from rlnb.viz import PALETTE, style_figure

TITLE = "Unsupervised RLVR: a majority-vote reward sharpens the prior, right or wrong (card 17)"
CARD = 17
PAPER = (
    "How Far Can Unsupervised RLVR Scale LLM Training? (seed abstract): every intrinsic "
    "reward converges toward sharpening the initial distribution; it works when initial "
    "confidence aligns with correctness and fails catastrophically when misaligned; "
    "intrinsic rewards rise then fall; the 'Model Collapse Step' measures the prior. Card "
    "17's prototype (5 seeds): aligned gold pass@1 0.160 -> 0.484 (gold-reward GRPO "
    "0.483), misaligned 0.098 -> 0.047 (gold-reward GRPO 0.502); answer entropy below 0.1 "
    "at step 64 with the vote, 152 with the gold reward; rise-then-fall not reproduced."
)
SHOWS = (
    "It shows, exactly, that a majority-vote reward trained through the rlnb Trainer drives "
    "one shared softmax onto its prior's favourite strategy: the result equals that "
    "strategy's accuracy, a gain when the favourite is right and a collapse when it is "
    "confidently wrong, while the gold reward finds the good strategy in both settings; and "
    "that the vote collapses the answer distribution earlier than the gold reward does. It "
    "does not show how far unsupervised RLVR scales on language models: the policy is one "
    "softmax over 64 strategies, pass@1 is linear in it (so the card's rise-then-fall has no "
    "room to appear), and the prior's favourite is set by hand."
)

STEPS = {"full": 400, "quick": 120}
SEEDS = {"full": 3, "quick": 3}
COLLAPSE_ENTROPY = 0.1
SETTINGS = ("aligned", "misaligned")
REWARDS = ("majority", "gold")


def make_env(setting: str, seed: int) -> AnswerStrategyBandit:
    return AnswerStrategyBandit.card17(setting, generator=torch.Generator().manual_seed(seed))


def train(setting: str, reward: str, seed: int, steps: int) -> dict[str, Any]:
    """One run: GRPO on the vote or the gold reward; per-step exact gold pass@1 and answer
    entropy, and the final policy's modal strategy."""
    env = make_env(setting, seed)
    logits = card_base_logits(env.num_strategies, generator=torch.Generator().manual_seed(10_000 + seed))
    policy = TabularPolicy.for_env(env, shared=True, logits=logits)
    base = policy.probs().detach().reshape(-1)

    def exact(trainer: Trainer, metrics: dict[str, Any]) -> dict[str, float]:
        probs = policy.probs().detach()
        return {"gold_pass_at_1": float(env.success_probability(probs).mean()),
                "answer_entropy": env.answer_entropy(probs)}

    config = TrainConfig(seed=seed, max_steps=steps, num_prompts_per_step=16, num_generations=4,
                         advantage="grpo", scale_rewards="group", policy_loss="vanilla_pg",
                         optimizer="sgd", learning_rate=1.0, progress_bar=False)
    history = Trainer(policy, MajorityVote(env) if reward == "majority" else env, config,
                      callbacks=[exact]).train()
    probs = policy.probs().detach().reshape(-1)
    modal = int(probs.argmax())
    entropy = history["answer_entropy"].to_numpy()
    below = np.flatnonzero(entropy < COLLAPSE_ENTROPY)
    return {
        "setting": setting, "reward": reward, "seed": seed,
        "base_pass_at_1": float(env.success_probability(base).mean()),
        "base_answer_entropy": env.answer_entropy(base),
        "final_pass_at_1": float(history["gold_pass_at_1"].iloc[-1]),
        "max_pass_at_1": float(history["gold_pass_at_1"].max()),
        "modal_strategy": modal, "modal_mass": float(probs[modal]),
        "modal_accuracy": float(env.strategy_solve_rates[modal]),
        "collapse_step": int(history["step"].iloc[below[0]]) if below.size else None,
        "pass_at_1": history["gold_pass_at_1"].tolist(),
        "answer_entropy": entropy.tolist(),
        "train_reward": history["reward"].tolist(),
    }


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 3 seeds x 2 settings x 2 rewards, 400 steps. Quick: 3 seeds, 120 steps."""
    mode = "quick" if quick else "full"
    seeds = [seed + i for i in range(SEEDS[mode])]
    runs = [train(s, r, k, STEPS[mode]) for s in SETTINGS for r in REWARDS for k in seeds]
    return {"quick": quick, "seeds": seeds, "steps": STEPS[mode], "runs": runs,
            "collapse_entropy": COLLAPSE_ENTROPY}


def _runs(results: dict, setting: str, reward: str) -> list[dict[str, Any]]:
    return sorted((r for r in results["runs"] if r["setting"] == setting and r["reward"] == reward),
                  key=lambda r: r["seed"])


def _collapse(r: dict[str, Any], steps: int) -> int:
    """The collapse step, a run that never collapsed counting as one step past the budget."""
    return r["collapse_step"] if r["collapse_step"] is not None else steps + 1


def checks(results: dict) -> list[Check]:
    steps = results["steps"]
    aligned = _runs(results, "aligned", "majority")
    mis_vote, mis_gold = _runs(results, "misaligned", "majority"), _runs(results, "misaligned", "gold")
    vote_runs = aligned + mis_vote
    gold_runs = _runs(results, "aligned", "gold") + mis_gold
    by_key = {(r["setting"], r["seed"]): r for r in gold_runs}
    earlier = [_collapse(by_key[(r["setting"], r["seed"])], steps) - _collapse(r, steps)
               for r in vote_runs]
    # a rise *then* a fall: the smaller of the two, for the run where it is largest
    rise_fall = max(min(r["max_pass_at_1"] - r["pass_at_1"][0], r["max_pass_at_1"] - r["final_pass_at_1"])
                    for r in vote_runs)
    return [
        Check("aligned: majority-vote gain in gold pass@1",
              min(r["final_pass_at_1"] - r["base_pass_at_1"] for r in aligned), ">=", 0.15,
              "the vote sharpens a prior whose favourite is right (worst seed). Reported, "
              "not required: on some seeds a strategy with a high random base logit wins the "
              "early votes and the shared softmax sharpens onto it instead (it then scores "
              "that strategy's accuracy, which the next check asserts)", required=False),
        Check("misaligned: gold-reward final - majority-vote final",
              min(g["final_pass_at_1"] - v["final_pass_at_1"] for g, v in zip(mis_gold, mis_vote)),
              ">=", 0.25, "the vote entrenches a confidently wrong favourite; the verifier "
              "finds the good strategy (worst seed)"),
        Check("majority-vote final vs its modal strategy's accuracy",
              max(abs(r["final_pass_at_1"] - r["modal_accuracy"]) for r in vote_runs), "<=", 0.02,
              "the vote converges on one strategy: its result is that strategy's accuracy "
              "(largest gap over both settings and every seed)"),
        Check("collapse step with the vote (answer entropy < 0.1)",
              max(_collapse(r, steps) for r in vote_runs), "<=", 100,
              "latest over both settings and every seed"),
        Check("collapse: gold-reward step - majority-vote step", min(earlier), ">=", 20,
              "the vote collapses the answers earlier than the verifier does (smallest lead, "
              "same setting and seed; a gold run that never collapsed counts as the budget + 1)"),
        Check("rise-then-fall: min(peak - first, peak - final) of gold pass@1, vote runs",
              rise_fall, ">=", 0.05,
              "card 17 (unvalidated, 'report what is seen'): the intrinsic reward's rise then "
              "fall; the card's prototype does not show it either (largest over runs)",
              required=False),
    ]


def figure(results: dict) -> go.Figure:
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, vertical_spacing=0.1,
                        horizontal_spacing=0.09, subplot_titles=[
                            "aligned: gold pass@1", "misaligned: gold pass@1",
                            "aligned: answer entropy (nats)", "misaligned: answer entropy (nats)"])
    colors = {"majority": PALETTE[0], "gold": PALETTE[1]}
    names = {"majority": "majority-vote reward", "gold": "gold (verifier) reward"}
    for col, setting in enumerate(SETTINGS, start=1):
        for reward in REWARDS:
            runs = _runs(results, setting, reward)
            for row, key in ((1, "pass_at_1"), (2, "answer_entropy")):
                arr = np.array([r[key] for r in runs])
                x = np.arange(1, arr.shape[1] + 1)
                for i, y in enumerate(arr):
                    fig.add_trace(go.Scatter(
                        x=x, y=y, mode="lines", line=dict(color=colors[reward], width=1.2),
                        opacity=0.55, name=names[reward], legendgroup=reward,
                        showlegend=(col == 1 and row == 1 and i == 0),
                        hovertemplate=f"{names[reward]}, seed {runs[i]['seed']}: %{{y:.3f}} at step %{{x}}<extra></extra>"),
                        row=row, col=col)
            if reward == "majority":
                acc = float(np.mean([r["modal_accuracy"] for r in runs]))
                fig.add_hline(y=acc, line=dict(color=colors[reward], dash="dot", width=1),
                              row=1, col=col, annotation_text=f"vote's modal strategy: {acc:.2f}",
                              annotation_position="top left")
        fig.add_hline(y=COLLAPSE_ENTROPY, line=dict(color="#555", dash="dash", width=1), row=2,
                      col=col, annotation_text="collapse: 0.1", annotation_position="top right")
        fig.update_xaxes(title_text="training step", row=2, col=col)
    fig.update_yaxes(title_text="gold pass@1 (exact)", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="answer entropy (nats)", row=2, col=1)
    style_figure(fig, TITLE, height=620)
    fig.update_layout(legend=dict(orientation="h", y=-0.16, x=0, yanchor="top"),
                      margin=dict(b=120))
    return fig
