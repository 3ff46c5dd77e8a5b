"""Card 15: RL with noisy verifiers and its two corrections (Cai et al., arXiv:2510.00915).

A verifier that accepts a wrong answer with probability rho0 (false positive) and rejects a
right one with probability rho1 (false negative) is :class:`rlnb.envs.NoisyVerifier`
around the strategy bandit (card SB: 64 problems, 64 strategies, one shared softmax). The
backward correction ``(R~ - rho0) / (1 - rho0 - rho1)`` and the forward correction (score
weights ``rho1`` / ``rho1 - 1``) are reward transforms of that wrapper
(:data:`rlnb.envs.REWARD_CORRECTIONS`).

Four measurements, each on every seed:

1. *Unbiasedness (sampled):* 8192 episodes of the base policy through the noisy verifier;
   the mean of the backward-corrected reward against the exact clean mean (pass@1 of the
   base policy), in standard errors, at (rho0, rho1) = (0, 0.4) and (0.2, 0.3).
2. *Direction (exact):* the expected score-function update over the softmax,
   ``sum_s pi(s) rbar(s) (e_s - pi)`` with ``rbar`` the exact expected (transformed) reward
   of strategy s, under clean rewards and under forward-corrected noisy rewards, at the
   base policy and 8 random policies; their cosine.
3. *Speed (trained):* the rlnb Trainer, G=4, 16 prompts per step, plain SGD at lr 1,
   ``vanilla_pg``, at rho0 = 0, rho1 = 0.4: steps until exact clean pass@1 reaches 0.8 x
   the clean run's final pass@1 (per seed and setting), for the clean, uncorrected,
   backward- and forward-corrected runs, in three settings (:data:`MODES`): group-mean
   advantages without std scaling (Dr.GRPO), plain REINFORCE without a baseline (full run
   only), and GRPO's group mean/std (the interaction).
4. *Interaction (exact fact):* the backward correction is affine, so GRPO's group
   mean/std advantages of the corrected rewards equal the uncorrected ones (exactly with a
   vanishing std_eps); the forward correction is a shift, so any group-mean advantage
   ignores it. Checked on sampled reward groups, float64.

Every curve is exact clean pass@1 (``ExactSuccess`` on the wrapper, which reports the clean
sandbox's success probability), not the noisy training reward.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.envs import REWARD_CORRECTIONS, NoisyVerifier, StrategyBandit
from rlnb.envs.noisy import expected_observed_reward
from rlnb.envs.strategy_bandit import card_base_logits
from rlnb.policies import TabularPolicy
from rlnb.rl import compute_advantages
from rlnb.train import ExactSuccess, TrainConfig, Trainer
from rlnb.viz import PALETTE, add_line_with_band, style_figure

TITLE = "Noisy verifiers: backward and forward corrections (Cai et al. 2025, card 15)"
CARD = 15
PAPER = (
    "Cai et al. (arXiv:2510.00915) model an imperfect verifier as a reward channel with "
    "false-positive rate rho0 and false-negative rate rho1. The backward correction "
    "R^ = (R~ - rho0) / (1 - rho0 - rho1) is an unbiased surrogate reward; the forward "
    "correction reweights score-function terms (w1 = rho1, w0 = rho1 - 1) so the expected "
    "update is (1 - rho0 - rho1) x the clean gradient, using only rho1. Both improve GRPO "
    "under synthetic and real verifier noise, the forward one more stably. Card 15's "
    "criteria: mean of R^ within 3 SE of the clean mean; forward-corrected gradient cosine "
    ">= 0.999 with the clean one; at rho1 = 0.4 the corrected run reaches 0.8 of the clean "
    "reward in fewer steps than the uncorrected one."
)
SHOWS = (
    "It shows on the strategy bandit that the backward-corrected reward is unbiased for the "
    "clean reward (sampled, within 3 SE) and that the forward correction's expected update "
    "points exactly along the clean gradient; but so does the uncorrected one, because with "
    "constant rates E[R~ | R] = rho0 + (1 - rho0 - rho1) R is affine: noise only shrinks the "
    "expected gradient by 1 - rho0 - rho1 and adds variance. Hence the speed-up at rho1 = "
    "0.4 is the backward correction's rescaling by 1 / (1 - rho0 - rho1), a larger effective "
    "step size, visible only where the advantage keeps the reward's scale (group mean "
    "without std, plain SGD). The forward correction is a constant shift, which any group "
    "mean removes: with group-mean advantages it trains identically to no correction, and "
    "under GRPO's group std normalisation the backward correction is undone too (the "
    "advantages are invariant, checked exactly), so corrected and uncorrected GRPO runs "
    "coincide. It does not show the paper's LLM gains, the forward variant's stability "
    "under heavier noise, answer-dependent noise, or estimating rho1 online; the toy knows "
    "the true rates and uses plain SGD; Adam, which normalises the update's scale, would "
    "presumably wash much of the rescaling out too (not run here)."
)

RHO0, RHO1 = 0.0, 0.4  # the training setting: the card's rho1 = 0.4, false negatives only
MEAN_SETTINGS = [(0.0, 0.4), (0.2, 0.3)]  # (rho0, rho1) for the sampled unbiasedness check
CORRECTIONS = ["none", "backward", "forward"]
G = 4


# --- the sandbox ---------------------------------------------------------------------------
def bandit(seed: int) -> tuple[StrategyBandit, torch.Tensor]:
    """Card SB's solve matrix (seed ``seed``) and base logits (seed ``10_000 + seed``), as
    :func:`rlnb.recipes.grpo_on_strategy_bandit` builds them."""
    env = StrategyBandit.from_card(generator=torch.Generator().manual_seed(seed))
    logits = card_base_logits(env.num_strategies,
                              generator=torch.Generator().manual_seed(10_000 + seed))
    return env, logits


# --- exact expected updates over the shared softmax --------------------------------------
def expected_update(M: torch.Tensor, probs: torch.Tensor, rho0: float, rho1: float,
                    correction: str = "none", advantage: str | None = None,
                    scale_rewards: str = "group", group_size: int = G,
                    std_eps: float = 1e-4) -> torch.Tensor:
    """Exact expected logit update ``E[A_1 (e_{s_1} - pi)]`` ``(S,)`` on the strategy bandit
    with solve matrix ``M`` ``(P, S)``, shared softmax ``probs`` ``(S,)``, prompts uniform,
    verdicts from the noisy verifier (rates ``rho0``, ``rho1``) then ``correction``.

    ``advantage=None``: the plain score function, ``A = t(R~)`` (no baseline), whose mean
    is ``sum_s pi(s) rbar(s) (e_s - pi)``. ``advantage="grpo"``: the group-relative
    advantage of a group of ``group_size`` (``scale_rewards`` as in :func:`rlnb.rl.grpo`),
    computed exactly by enumerating the number ``K ~ Binomial(G - 1, qbar_i)`` of accepted
    verdicts among the other completions of prompt ``i``. With ``rho0 = rho1 = 0`` and
    ``correction="none"`` this is the clean update; ``advantage=None`` then gives the clean
    gradient ``grad_theta E[R]`` itself.
    """
    M, pi = M.double(), probs.double()
    q = rho0 + (1.0 - rho0 - rho1) * M  # (P, S): P(verdict 1 | problem, strategy)
    t = REWARD_CORRECTIONS[correction]
    if advantage is None:
        reward = expected_observed_reward(M, rho0, rho1, correction)  # (P, S)
    else:
        P, n = M.shape[0], group_size - 1
        qbar = q @ pi  # (P,) P(verdict 1) of one completion of problem i
        k = torch.arange(n + 1, dtype=torch.float64)  # (G,) accepted among the others
        binom = torch.tensor([float(math.comb(n, int(j))) for j in k], dtype=torch.float64)
        pk = binom * qbar[:, None] ** k * (1 - qbar[:, None]) ** (n - k)  # (P, G)
        abar = torch.zeros(P, 2, dtype=torch.float64)  # (P, verdict of completion 1)
        for v in (0, 1):
            for j in range(n + 1):
                verdicts = torch.tensor([v] + [1] * j + [0] * (n - j), dtype=torch.float64)
                rewards = t(verdicts, rho0, rho1)  # (G,) one group
                a1 = compute_advantages(rewards, group_size, method=advantage,
                                        scale_rewards=scale_rewards, std_eps=std_eps)[0]
                abar[:, v] += pk[:, j] * a1
        reward = q * abar[:, 1:2] + (1 - q) * abar[:, 0:1]  # (P, S) E[A_1 | problem, s_1]
    rbar = reward.mean(0)  # (S,) prompts uniform
    return pi * (rbar - (pi * rbar).sum())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm() * b.norm()))


def gradient_study(seed: int, num_random: int = 8) -> dict[str, Any]:
    """Cosine and norm ratio to the clean gradient of the expected updates: plain score
    function (``forward``: the card's check), group mean (Dr.GRPO) and GRPO, each with
    the three corrections, at the base policy; the plain score function's forward and
    uncorrected cosines also over ``num_random`` random policies (logits N(0, 1.5^2))."""
    env, logits = bandit(seed)
    M = env.solve_matrix
    g = torch.Generator().manual_seed(20_000 + seed)
    policies = [torch.softmax(logits.double(), -1)] + [
        torch.softmax(1.5 * torch.randn(env.num_strategies, generator=g).double(), -1)
        for _ in range(num_random)]
    cos_forward, cos_none = [], []
    for pi in policies:
        clean = expected_update(M, pi, 0.0, 0.0)
        cos_forward.append(cosine(expected_update(M, pi, RHO0, RHO1, "forward"), clean))
        cos_none.append(cosine(expected_update(M, pi, RHO0, RHO1, "none"), clean))
    pi = policies[0]
    clean = expected_update(M, pi, 0.0, 0.0)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, adv, scale in [("score function", None, "none"),
                             ("group mean (Dr.GRPO)", "grpo", "none"),
                             ("GRPO (group std)", "grpo", "group")]:
        rows = {"clean": expected_update(M, pi, 0.0, 0.0, "none", adv, scale)}
        rows.update({c: expected_update(M, pi, RHO0, RHO1, c, adv, scale) for c in CORRECTIONS})
        table[name] = {c: {"cosine": cosine(u, clean), "norm_ratio": float(u.norm() / clean.norm())}
                       for c, u in rows.items()}
    return {"cos_forward": cos_forward, "cos_none": cos_none, "table": table}


# --- sampled unbiasedness and the exact advantage invariance -----------------------------
def sampled_means(seed: int, num_episodes: int = 8192) -> list[dict[str, float]]:
    """Per setting in :data:`MEAN_SETTINGS`: base-policy episodes through the verifier, the
    exact clean mean, and each correction's sample mean, SE and z = (mean - target) / SE,
    where the target is the clean mean for ``backward`` (unbiased) and ``none`` (the bias
    shows), and ``(1 - rho0 - rho1)(clean - 1)`` for ``forward``'s weights."""
    env, logits = bandit(seed)
    pi = torch.softmax(logits, -1)
    clean_mean = float(env.success_probability(pi).double().mean())
    out = []
    for j, (rho0, rho1) in enumerate(MEAN_SETTINGS):
        row: dict[str, float] = {"rho0": rho0, "rho1": rho1, "n": num_episodes,
                                 "clean_mean": clean_mean}
        for c in CORRECTIONS:
            g = torch.Generator().manual_seed(30_000 + 100 * seed + j)  # same draws per c
            prompts = env.sample_prompts(num_episodes, g)
            actions = torch.multinomial(pi, num_episodes, replacement=True, generator=g)
            r = NoisyVerifier(env, rho0, rho1, c).reward(prompts, actions, g).double()
            target = ((1 - rho0 - rho1) * (clean_mean - 1) if c == "forward" else clean_mean)
            se = float(r.std() / num_episodes ** 0.5)
            row[f"{c}_mean"], row[f"{c}_se"] = float(r.mean()), se
            row[f"{c}_z"] = (float(r.mean()) - target) / se
        out.append(row)
    return out


def advantage_invariance(seed: int, num_groups: int = 2048) -> dict[str, float]:
    """Largest absolute differences, over ``num_groups`` sampled groups of G noisy verdicts
    (float64), between the advantages of corrected and uncorrected rewards:
    GRPO group mean/std with std_eps 1e-12 (exact invariance of an affine map) and with the
    trainer's 1e-4; forward vs none under group-mean advantages (a shift); and backward vs
    none / (1 - rho0 - rho1) under group mean without std (a pure rescaling)."""
    env, logits = bandit(seed)
    pi = torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(40_000 + seed)
    n = num_groups * G
    prompts = env.sample_prompts(num_groups, g).repeat_interleave(G)
    actions = torch.multinomial(pi, n, replacement=True, generator=g)
    observed = NoisyVerifier(env, RHO0, RHO1).reward(prompts, actions, g).double()  # (n,)
    back = REWARD_CORRECTIONS["backward"](observed, RHO0, RHO1)
    fwd = REWARD_CORRECTIONS["forward"](observed, RHO0, RHO1)

    def adv(r: torch.Tensor, scale: str, eps: float = 1e-4) -> torch.Tensor:
        return compute_advantages(r, G, method="grpo", scale_rewards=scale, std_eps=eps)

    return {
        "grpo_backward_exact": float((adv(back, "group", 1e-12) - adv(observed, "group", 1e-12)).abs().max()),
        "grpo_backward_eps": float((adv(back, "group") - adv(observed, "group")).abs().max()),
        "group_mean_forward": float(max((adv(fwd, s) - adv(observed, s)).abs().max()
                                        for s in ("group", "none"))),
        "dr_grpo_backward_rescale": float(
            (adv(back, "none") - adv(observed, "none") / (1 - RHO0 - RHO1)).abs().max()),
        "frac_groups_mixed": float((observed.view(-1, G).std(1) > 0).double().mean()),
    }


# --- training with the rlnb Trainer -------------------------------------------------------
#: Training settings: name -> (advantage, scale_rewards, corrections trained besides clean).
MODES: dict[str, tuple[str, str, list[str]]] = {
    "dr_grpo": ("grpo", "none", CORRECTIONS),  # group mean, no std: keeps the reward's scale
    "grpo": ("grpo", "group", ["none", "backward"]),  # group mean/std: undoes the rescaling
    "reinforce": ("reinforce", "none", CORRECTIONS),  # no baseline: forward's shift matters
}


def train_curve(seed: int, correction: str | None, steps: int, mode: str) -> list[float]:
    """Exact clean pass@1 after each of ``steps`` steps (index 0 = after step 1) of the
    training setting ``mode`` (:data:`MODES`); ``correction=None`` trains on the clean
    sandbox, otherwise on the noisy verifier at (:data:`RHO0`, :data:`RHO1`)."""
    clean, logits = bandit(seed)
    env = clean if correction is None else NoisyVerifier(clean, RHO0, RHO1, correction)
    policy = TabularPolicy.for_env(env, shared=True, logits=logits)
    advantage, scale_rewards, _ = MODES[mode]
    config = TrainConfig(
        seed=seed, max_steps=steps, num_prompts_per_step=16, num_generations=G,
        advantage=advantage, scale_rewards=scale_rewards, policy_loss="vanilla_pg",
        loss_agg_mode="token-mean", optimizer="sgd", learning_rate=1.0, progress_bar=False,
    )
    history = Trainer(policy, env, config, callbacks=[ExactSuccess(ks=(1,))]).train()
    return [float(v) for v in history["exact/pass@1"]]


def steps_to(curve: list[float], threshold: float) -> int:
    """First step (1-based) whose exact pass@1 is >= ``threshold``; ``len(curve) + 1``
    (the step budget + 1) if it never is."""
    hits = np.nonzero(np.asarray(curve) >= threshold)[0]
    return int(hits[0]) + 1 if len(hits) else len(curve) + 1


def run_seed(seed: int, steps: int, modes: list[str]) -> dict[str, Any]:
    train: dict[str, dict[str, list[float]]] = {}
    reach: dict[str, dict[str, float]] = {}
    for mode in modes:
        curves = {"clean": train_curve(seed, None, steps, mode)}
        curves.update({c: train_curve(seed, c, steps, mode) for c in MODES[mode][2]})
        threshold = 0.8 * curves["clean"][-1]  # 0.8 x the clean run's final pass@1
        train[mode] = curves
        reach[mode] = {c: steps_to(v, threshold) for c, v in curves.items()}
        reach[mode]["threshold"] = threshold
    return {
        "seed": seed,
        "means": sampled_means(seed),
        "gradient": gradient_study(seed),
        "invariance": advantage_invariance(seed),
        "train": train,
        "reach": reach,
    }


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 5 seeds, 100 training steps per run, all three training settings (11 runs per
    seed). Quick: 3 seeds, 80 steps, without the REINFORCE setting (the threshold is 0.8 x
    the clean run's pass@1 at the last step, so it is a little lower in quick mode)."""
    steps = 80 if quick else 100
    seeds = [seed + i for i in range(3 if quick else 5)]
    modes = ["dr_grpo", "grpo"] if quick else list(MODES)
    return {"rho0": RHO0, "rho1": RHO1, "steps": steps, "group_size": G, "modes": modes,
            "seeds": [run_seed(s, steps, modes) for s in seeds]}


# --- checks and figure ---------------------------------------------------------------------
def checks(results: dict) -> list[Check]:
    seeds = results["seeds"]
    z = max(abs(m["backward_z"]) for r in seeds for m in r["means"])
    cos = min(min(r["gradient"]["cos_forward"]) for r in seeds)
    kept = [m for m in ("dr_grpo", "reinforce") if m in results["modes"]]  # scale survives
    margin = min(r["reach"][m]["none"] - r["reach"][m]["backward"] for r in seeds for m in kept)
    inv = max(r["invariance"]["grpo_backward_exact"] for r in seeds)
    shift = max(r["invariance"]["group_mean_forward"] for r in seeds)
    rescale = max(r["invariance"]["dr_grpo_backward_rescale"] for r in seeds)
    budget = results["steps"]
    return [
        Check("|mean(backward-corrected R^) - clean mean| / SE (worst seed and setting)", z,
              "<=", 3.0, "R^ = (R~ - rho0)/(1 - rho0 - rho1) is unbiased: sampled mean within "
              "3 SE of the exact clean mean at (rho0, rho1) = (0, 0.4) and (0.2, 0.3)"),
        Check("cosine(forward-corrected expected update, clean gradient) (worst seed, policy)",
              cos, ">=", 0.999, "exact expectation over the shared softmax at rho1 = 0.4"),
        Check("steps to 0.8 x clean final pass@1: uncorrected - backward-corrected "
              "(worst seed and setting, rho1 = 0.4)", margin, ">", 0,
              f"settings {', '.join(kept)} (advantages that keep the reward's scale), SGD; a "
              f"run that never reaches it counts {budget + 1} (the step budget + 1)"),
        Check("max |GRPO group mean/std advantage of backward-corrected - of uncorrected| "
              "(std_eps 1e-12, float64)", inv, "<=", 1e-9,
              "an affine correction is undone by group mean/std normalisation (exact fact)"),
        Check("max |group-mean advantage of forward-corrected - of uncorrected|", shift, "<=",
              1e-9, "the forward correction is a constant shift; a group mean removes it"),
        Check("max |Dr.GRPO advantage of backward-corrected - uncorrected / (1 - rho0 - rho1)|",
              rescale, "<=", 1e-9, "without std scaling the backward correction is a pure "
              "rescaling of the advantage (the speed-up's mechanism)"),
    ]


def figure(results: dict) -> go.Figure:
    seeds, modes = results["seeds"], results["modes"]
    titles = {"dr_grpo": "group mean, no std (Dr.GRPO): clean pass@1",
              "grpo": "GRPO, group mean/std: clean pass@1",
              "reinforce": "REINFORCE, no baseline: clean pass@1"}
    panels = [(mode, 1 + i // 2, 1 + i % 2) for i, mode in enumerate(modes)]
    bars_at = (1 + len(modes) // 2, 1 + len(modes) % 2)
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.08, vertical_spacing=0.14,
                        subplot_titles=[titles[m] for m in modes]
                        + ["expected update at the base policy: |update| / |clean gradient|"])
    colors = {"clean": PALETTE[0], "none": PALETTE[1], "backward": PALETTE[2],
              "forward": PALETTE[3]}
    names = {"clean": "clean verifier", "none": "rho1=0.4, uncorrected",
             "backward": "rho1=0.4, backward", "forward": "rho1=0.4, forward"}
    dash = {"clean": None, "none": None, "backward": "dash", "forward": "dot"}
    for mode, row, col in panels:
        for c in seeds[0]["train"][mode]:
            curves = np.array([r["train"][mode][c] for r in seeds])
            x = np.arange(1, curves.shape[1] + 1)
            add_line_with_band(fig, x, curves.mean(0), lo=curves.min(0), hi=curves.max(0),
                               name=names[c], color=colors[c], row=row, col=col)
            fig.data[-1].line.dash = dash[c]
            fig.data[-1].legendgroup = c
            fig.data[-1].showlegend = mode == modes[0]
        thr = float(np.mean([r["reach"][mode]["threshold"] for r in seeds]))
        fig.add_hline(y=thr, line=dict(color="grey", dash="dash"), row=row, col=col)
        fig.update_xaxes(title_text="training step", row=row, col=col)
        fig.update_yaxes(title_text="exact clean pass@1", row=row, col=col)
    table = seeds[0]["gradient"]["table"]
    for c in ["clean"] + CORRECTIONS:
        vals = [np.mean([r["gradient"]["table"][a][c]["norm_ratio"] for r in seeds]) for a in table]
        cos = [min(r["gradient"]["table"][a][c]["cosine"] for r in seeds) for a in table]
        fig.add_trace(go.Bar(x=list(table), y=vals, name=f"expected update: {names[c]}",
                             marker_color=colors[c], text=[f"cos {v:.5f}" for v in cos],
                             textposition="outside", textfont=dict(size=8)),
                      row=bars_at[0], col=bars_at[1])
    fig.update_yaxes(title_text="norm ratio (mean over seeds)", row=bars_at[0], col=bars_at[1])
    style_figure(fig, TITLE, height=860)
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.11, x=0, yanchor="top"),
                      margin=dict(t=90, b=130))
    return fig
