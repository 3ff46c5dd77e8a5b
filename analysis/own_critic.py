"""Card 16: the policy's own hidden states as a critic (POISE), on a tiny transformer.

POISE (arXiv:2605.07579, code not released) fits a light probe on a rollout's prompt and
trajectory hidden states plus entropy statistics to predict its reward, and uses it as the
policy-gradient baseline; each rollout's baseline comes from an *independent* rollout's
features, which keeps the gradient unbiased. Card 16's criteria (all unvalidated): held-out
AUROC >= 0.7; the mean gradient with the cross-rollout baseline equals the no-baseline
gradient within MC error; its variance drops by >= 20%.

Protocol (one seed):

1. **Policy**: a 2-digit addition base (:data:`ADDITION_PRETRAIN`,
   2-digit sums, pass@1 ~0.3, cached), then GRPO 16 x 8 at Adam 3e-4 for 60 steps, so the
   probe reads an RL policy mid-training (held-out reward 0.29-0.37).
2. **Probe**: 4 rollouts of each of 256 *training* problems; features
   (:func:`rlnb.probes.critic.rollout_features`): the mean state over the prompt and over
   the completion at every layer (embed, both residual streams, final norm: 512 columns)
   and 9 statistics of the token entropies and sampled log-probs; a standardised ridge
   regression to the 0/1 reward (alpha 10, :func:`~rlnb.probes.critic.fit_reward_probe`).
3. **Evaluation pool**: K = 128 batches (quick: 64, the only reduction), each 16 distinct
   *held-out* problems x G = 4 rollouts. Held-out AUROC (:func:`~rlnb.probes.critic.auroc`) of the probe on
   the pool, beside the same ridge on feature subsets and on **controls that read the
   text alone**: a position-wise one-hot of the completion string (and its length), of the
   prompt string, and of both.
4. **Gradients**: the per-rollout score of the LM head, ``grad_W log pi(y)`` in closed form
   (:func:`~rlnb.probes.critic.head_score_gradients`, 16 x 64 = 1,024 coordinates, from the
   final-norm states; checked against the sampler's log-probs). Per batch, the REINFORCE
   estimate with no baseline, with POISE's cross-rollout baseline (the probe applied to
   another rollout of the same prompt in the batch,
   :func:`~rlnb.probes.critic.cross_rollout_baseline`), with the probe on the rollout's
   *own* features (biased: a check of the test's power) and with the leave-one-out mean
   reward of the group (RLOO's baseline, for reference).
5. **Unbiasedness**: the difference between the no-baseline and a baseline estimate is
   ``mean_i b_i g_i``; its mean over the K batches, projected on two fixed unit directions
   (the no-baseline gradient estimated from the probe-training rollouts, independent of the
   pool, and a random Gaussian direction), divided by its standard error: |z| < 3 on both.
   Not per coordinate: the t statistics of rare-token coordinates are skewed at this K (the
   provably unbiased leave-one-out baseline had 16% of coordinates past 3 SE at K = 32 in a
   trial run, the cross-rollout one 14% at K = 64 on one quick seed, 0-2.4% at K = 128);
   their share is reported (``share_coords_over_3se``), not checked.
   **Variance**: the trace of the covariance of the K batch estimates (the sum of the
   per-coordinate variances), relative to no baseline.

**What this shows, and what it does not.** Addition is a task where the answer string
alone does not give the reward away: the answer-string control reaches AUROC 0.48-0.70
(it sees malformed or implausible answers), the prompt-string control 0.48-0.60, and both
together at most 0.02 more (a linear read-out cannot add). The probe reaches 0.70-0.88,
and the signal is the policy's **confidence**: the entropy and log-prob statistics alone do about
as well as all features (often better: the 512 state columns add noise), and the pooled
states alone (0.52-0.74) are within -0.03 .. +0.09 of the answer-string control. The
cross-rollout baseline leaves the gradient unbiased (|z| < 3, while the own-feature
baseline is off by 6-16 standard errors), but it does **not** lower the variance here: it
raises it by 17-57%, and RLOO's leave-one-out mean by 11-49%. The score ``grad log pi`` is large where
the policy was unsure, which is where it is wrong: a correct 2-digit sum is sampled with
high probability and a small score, so the variance of ``r g`` is small already and a
baseline that subtracts ~0.35 from the wrong rollouts' rewards adds ``b^2 |g|^2`` where
``|g|`` is largest (mean ``|g|^2`` 104-139 on wrong rollouts, 40-58 on correct ones:
``grad_norm_by_reward`` in the results). Variance reduction by a
predicted E[r] needs ``|g|`` not to track the reward this strongly. Only the LM head's
gradient is measured.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.envs import addition
from rlnb.policies import LMPolicy, pretrain_base
from rlnb.probes.critic import (
    auroc,
    cross_rollout_baseline,
    fit_reward_probe,
    head_score_gradients,
    policy_gradient,
    rollout_features,
    string_one_hot,
)
from rlnb.recipes import completion_states, factor_grpo_config
from rlnb.threads import torch_threads
from rlnb.train import Trainer
from rlnb.viz import PALETTE, style_figure

TITLE = "The policy's own states as a critic: reward probe and cross-rollout baseline (POISE, card 16)"
CARD = 16
PAPER = (
    "POISE (arXiv:2605.07579): a light probe on prompt and trajectory hidden states plus "
    "entropy statistics predicts a rollout's expected reward; each rollout's baseline comes "
    "from an independent rollout's features, which keeps the policy gradient unbiased; it "
    "matches DAPO with less compute. Card 16 (unvalidated): held-out AUROC >= 0.7, unbiased "
    "mean gradient, variance down >= 20%."
)
SHOWS = (
    "It shows, on a GRPO-trained tiny transformer doing 2-digit addition, a ridge probe on "
    "pooled states plus entropy statistics predicting held-out rewards (AUROC 0.70-0.88) "
    "where the answer string alone does not (0.48-0.70), and that the cross-rollout "
    "baseline leaves the LM-head gradient unbiased (the own-feature baseline does not). The signal is the "
    "policy's confidence, not knowledge in the pooled states. It does not show the variance "
    "reduction: both unbiased baselines tried (the cross-rollout probe, RLOO's leave-one-out "
    "mean) raise the variance by 11-57%, because the score is largest on the uncertain, "
    "wrong rollouts. Only the LM head's gradient is measured; nothing here speaks to DAPO."
)

ALPHA = 10.0
"""Ridge strength of the probe (features standardised first)."""
ANSWER_LEN = 4
"""Characters of the answer string the control sees (3-digit sums, plus one spare)."""
PROMPT_LEN = 6
"""Characters of the prompt string the prompt control sees (``"ab+cd="``)."""

FULL = {"seeds": 3, "grpo_steps": 60, "probe_prompts": 256, "probe_per_prompt": 4,
        "batches": 128, "batch_prompts": 16, "per_prompt": 4}
QUICK = {"seeds": 3, "grpo_steps": 60, "probe_prompts": 256, "probe_per_prompt": 4,
         "batches": 64, "batch_prompts": 16, "per_prompt": 4}

FEATURE_SETS = {
    "all features": lambda c: True,
    "entropy / log-prob stats": lambda c: "/" not in c,
    "pooled states": lambda c: "/" in c,
    "prompt states": lambda c: "/prompt/" in c,
    "completion states": lambda c: "/completion/" in c,
}
CONTROLS = ("answer string", "prompt string", "prompt + answer strings")
ESTIMATORS = ("poise", "own", "loo")
"""The baselines compared with none: POISE's cross-rollout probe, the probe on the
rollout's own features (biased), the leave-one-out group mean (RLOO)."""



#: Base model of the addition toy: 2 Llama layers, d=64, stopped at pass@1 0.3.
ADDITION_PRETRAIN: dict[str, Any] = {
    "arch": "llama", "n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2,
    "batch_size": 256, "lr": 3e-3, "target_pass_at_1": 0.3, "steps": 1500,
}
MAX_NEW_TOKENS = 5
"""Completion budget: a 3-digit sum and EOS fit in 4."""


def addition_split() -> tuple[Any, Any]:
    """``(train, held_out)``: 2,048 and 256 distinct 2-digit addition problems."""
    return addition(2048 + 256, digits=2, seed=0).split(256, seed=0)


def addition_base(train: Any, seed: int, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Pre-train (or load from the cache) the addition base of ``seed``: ``(path, record)``."""
    t0 = time.perf_counter()
    path = pretrain_base(train, seed=seed, progress=progress, **ADDITION_PRETRAIN)
    record = json.loads((path / "pretrain.json").read_text())
    return path, {"steps": record["steps_run"], "seconds": record["seconds"],
                  "final": record["final"], "load_seconds": round(time.perf_counter() - t0, 2)}


def addition_grpo_config(seed: int, steps: int) -> Any:
    """GRPO on addition: 16 prompts x 8, T=1, group mean/std, token-mean, Adam 3e-4."""
    return factor_grpo_config(seed, steps=steps, learning_rate=3e-4, num_prompts_per_step=16,
                              num_generations=8)


def _collect(policy: Any, task: Any, problems: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    """Sample ``n`` rollouts per entry of ``problems``; their features, rewards, texts and
    per-rollout LM-head scores."""
    weight = policy.model.get_output_embeddings().weight.detach()  # (V, d)
    with torch.no_grad():
        rollout = policy.rollout(task, torch.as_tensor(problems), n,
                                 generator=torch.Generator().manual_seed(seed))
        states = completion_states(policy, task, rollout=rollout)
        _, entropy = policy.log_probs(rollout)
    prompt_mask = states.sequence_mask & ~states.cache.mask
    features = rollout_features(states.cache, prompt_mask, states.cache.mask, entropy,
                                rollout.logp, rollout.mask)
    # the states that predict completion token t sit at position Lp - 1 + t
    Lp, T = int(rollout.extra["prompt_length"]), rollout.actions.shape[1]
    h = states.cache["final_norm"][:, Lp - 1:Lp - 1 + T]  # (N, T, d)
    logp = torch.log_softmax(h.double() @ weight.double().T, -1)
    logp = logp.gather(-1, rollout.actions.cpu().long()[..., None]).squeeze(-1)  # (N, T)
    mask = rollout.mask.cpu().bool()
    head_error = float(((logp - rollout.logp.cpu().double()).abs() * mask).max())
    return {
        "X": features.X, "columns": features.columns,
        "reward": states.correct.numpy().astype(np.float64),
        "grads": head_score_gradients(h, weight, rollout.actions, mask).numpy(),
        "answers": list(states.completions),
        "prompts": [task.prompt(int(i)) for i in states.groups],
        "head_error": head_error,
    }


def _z(diff: np.ndarray, u: np.ndarray) -> float:
    """Mean over batches of ``diff @ u`` in standard errors."""
    x = diff @ u
    return float(x.mean() / (x.std(ddof=1) / np.sqrt(x.size)))


def run_seed(seed: int, *, grpo_steps: int, probe_prompts: int, probe_per_prompt: int,
             batches: int, batch_prompts: int, per_prompt: int, progress: bool = False,
             base_seed: int | None = None) -> dict[str, Any]:
    """One seed: the base of ``base_seed`` (default ``seed``), GRPO, probe and gradients."""
    t_start = time.perf_counter()
    train, held_out = addition_split()
    path, pretrain = addition_base(train, seed if base_seed is None else base_seed, progress)
    policy = LMPolicy(path, device="cpu", max_new_tokens=MAX_NEW_TOKENS)

    # --- GRPO: the policy whose rollouts the probe reads ---
    t0 = time.perf_counter()
    history = Trainer(policy, train, addition_grpo_config(seed, grpo_steps)).train()
    grpo_seconds = time.perf_counter() - t0

    # --- ROLLOUTS: probe training set (train problems), evaluation pool (held out) ---
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    fit_problems = rng.permutation(train.num_prompts)[:probe_prompts]
    pool_problems = np.concatenate([rng.choice(held_out.num_prompts, batch_prompts,
                                               replace=False) for _ in range(batches)])
    with torch_threads(1):  # a tiny model: one thread is fastest, and robust to a busy CPU
        fit = _collect(policy, train, fit_problems, probe_per_prompt, seed=1_000 + seed)
        pool = _collect(policy, held_out, pool_problems, per_prompt, seed=2_000 + seed)
    sample_seconds = time.perf_counter() - t0
    r = pool["reward"]
    if len(np.unique(fit["reward"])) < 2 or len(np.unique(r)) < 2:
        raise RuntimeError(f"seed {seed}: every rollout got the same reward; a reward probe "
                           "needs both outcomes (change the GRPO steps or the seed)")

    # --- PROBES: held-out AUROC of feature subsets and text-only controls ---
    t0 = time.perf_counter()
    cols = np.array(fit["columns"])
    aurocs: dict[str, float] = {}
    for name, keep in FEATURE_SETS.items():
        m = np.array([keep(c) for c in cols])
        probe = fit_reward_probe(fit["X"][:, m], fit["reward"], alpha=ALPHA)
        aurocs[name] = auroc(probe.predict(pool["X"][:, m]), r)
    alphabet = train.alphabet
    text = {
        "answer string": (string_one_hot(fit["answers"], alphabet, ANSWER_LEN),
                          string_one_hot(pool["answers"], alphabet, ANSWER_LEN)),
        "prompt string": (string_one_hot(fit["prompts"], alphabet, PROMPT_LEN),
                          string_one_hot(pool["prompts"], alphabet, PROMPT_LEN)),
    }
    text["prompt + answer strings"] = tuple(
        np.hstack([text["prompt string"][k], text["answer string"][k]]) for k in range(2))
    for name, (a, b) in text.items():
        aurocs[name] = auroc(fit_reward_probe(a, fit["reward"], alpha=ALPHA).predict(b), r)

    # --- BASELINES AND GRADIENT ESTIMATES, PER BATCH ---
    probe = fit_reward_probe(fit["X"], fit["reward"], alpha=ALPHA)
    predicted = probe.predict(pool["X"])  # (N,) the probe on each rollout's own features
    G = per_prompt
    slot = np.arange(r.size) // G  # one group per (batch, problem) slot
    group_sum = np.bincount(slot, weights=r)[slot]
    baselines = {
        "poise": cross_rollout_baseline(predicted, slot, np.random.default_rng(seed)),
        "own": predicted,
        "loo": (group_sum - r) / (G - 1),
    }
    batch = np.arange(r.size) // (batch_prompts * G)
    g = pool["grads"]  # (N, P)

    def estimates(b: np.ndarray | None) -> np.ndarray:  # (K, P)
        return np.stack([policy_gradient(r[batch == k], g[batch == k],
                                         None if b is None else b[batch == k])
                         for k in range(batches)])

    none = estimates(None)
    u_grad = policy_gradient(fit["reward"], fit["grads"])  # independent of the pool
    u_grad = u_grad / np.linalg.norm(u_grad)
    u_rand = np.random.default_rng(10_000 + seed).normal(size=g.shape[1])
    u_rand = u_rand / np.linalg.norm(u_rand)
    var_none = float(none.var(0, ddof=1).sum())
    bias: dict[str, dict[str, float]] = {}
    variance: dict[str, float] = {}
    for name, b in baselines.items():
        est = estimates(b)
        diff = none - est  # (K, P): mean_i b_i g_i per batch
        z_coord = diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(batches))
        bias[name] = {"z_gradient_direction": _z(diff, u_grad), "z_random_direction":
                      _z(diff, u_rand), "share_coords_over_3se":
                      float(np.mean(np.abs(z_coord[np.isfinite(z_coord)]) > 3))}
        variance[name] = float(est.var(0, ddof=1).sum()) / var_none
    norms = (g ** 2).sum(1)
    analysis_seconds = time.perf_counter() - t0
    return {
        "seed": seed,
        "reward": {"fit": float(fit["reward"].mean()), "pool": float(r.mean())},
        "auroc": aurocs,
        "bias": bias,
        "variance_ratio": variance,
        "grad_norm_by_reward": {"correct": float(norms[r > 0].mean()),
                                "wrong": float(norms[r == 0].mean())},
        "head_logp_error": max(fit["head_error"], pool["head_error"]),
        "rows": {"fit": int(fit["reward"].size), "pool": int(r.size),
                 "features": int(fit["X"].shape[1]), "gradient_coords": int(g.shape[1])},
        "history": {"step": history["step"].tolist(), "reward": history["reward"].tolist()},
        "pretrain": pretrain,
        "seconds": {"grpo": round(grpo_seconds, 2), "sample": round(sample_seconds, 2),
                    "probes_and_gradients": round(analysis_seconds, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
    }


def run(quick: bool = False, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Full: seeds ``seed .. seed+2``, GRPO 60 steps, probe on 256 x 4 training rollouts,
    128 batches of 16 x 4 held-out rollouts. Quick: the same with 64 batches, and
    quick mode pre-trains one base (``seed``'s) and runs the three RL seeds from it: the
    bases are the slow part on a fresh machine (no cache), and the RL seeds are what vary."""
    budget = QUICK if quick else FULL
    t0 = time.perf_counter()
    seeds = [run_seed(seed + i, progress=progress, base_seed=seed if quick else None,
                      **{k: v for k, v in budget.items() if k != "seeds"})
             for i in range(budget["seeds"])]
    return {"quick": quick, "budget": budget, "seeds": seeds,
            "seconds": round(time.perf_counter() - t0, 2),
            "pretrain_seconds": round(sum(s["pretrain"]["seconds"] for s in seeds), 2)}


def checks(results: dict) -> list[Check]:
    seeds = results["seeds"]
    probe = min(r["auroc"]["all features"] for r in seeds)
    margin = min(r["auroc"]["all features"] - r["auroc"]["answer string"] for r in seeds)
    head = max(r["head_logp_error"] for r in seeds)
    z_poise = max(max(abs(r["bias"]["poise"]["z_gradient_direction"]),
                      abs(r["bias"]["poise"]["z_random_direction"])) for r in seeds)
    z_own = min(max(abs(r["bias"]["own"]["z_gradient_direction"]),
                    abs(r["bias"]["own"]["z_random_direction"])) for r in seeds)
    reduction = min(1.0 - r["variance_ratio"]["poise"] for r in seeds)
    return [
        Check("LM-head scores from the final-norm states reproduce the sampler's log-probs: "
              "max |error| (worst seed)", head, "<", 1e-4,
              "the closed-form gradients read the states the head reads"),
        Check("held-out AUROC of the probe minus the answer-string control (worst seed)",
              margin, ">", 0.0, "the answer string alone does worse: the task does not give "
              "the reward away through the answer"),
        Check("held-out AUROC of the ridge probe on states + entropy stats (worst seed)",
              probe, ">=", 0.7, "card 16 (unvalidated)", required=False),
        Check("|z| of the cross-rollout baseline term, max over 2 projections (worst seed)",
              z_poise, "<", 3.0, "card 16 (unvalidated): the mean gradient equals the "
              "no-baseline one within MC error", required=False),
        Check("|z| of the own-feature (biased) baseline term, max over 2 projections "
              "(weakest seed)", z_own, ">=", 3.0, "the unbiasedness test has the power to "
              "see a biased baseline", required=False),
        Check("variance reduction of the cross-rollout baseline, 1 - tr Cov ratio "
              "(worst seed)", reduction, ">=", 0.2, "card 16 (unvalidated)", required=False),
    ]


def figure(results: dict) -> go.Figure:
    seeds = results["seeds"]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.24,
                        specs=[[{"colspan": 2}, None], [{}, {}]], subplot_titles=(
        "held-out AUROC of a ridge probe on rollout features, and of text-only controls "
        "(mean, range over seeds)",
        "baseline term of the gradient, in standard errors",
        "tr Cov of the batch gradient / no baseline"))
    names = list(FEATURE_SETS) + list(CONTROLS)
    vals = np.array([[r["auroc"][n] for n in names] for r in seeds])
    colors = [PALETTE[0]] * len(FEATURE_SETS) + [PALETTE[3]] * len(CONTROLS)
    fig.add_trace(go.Bar(x=names, y=vals.mean(0), marker_color=colors, showlegend=False,
                         error_y=dict(type="data", symmetric=False,
                                      array=vals.max(0) - vals.mean(0),
                                      arrayminus=vals.mean(0) - vals.min(0)),
                         name="AUROC"), row=1, col=1)
    short = {"all features": "all<br>features", "entropy / log-prob stats":
             "entropy and<br>log-prob stats", "pooled states": "pooled<br>states",
             "prompt states": "prompt<br>states", "completion states": "completion<br>states",
             "answer string": "answer string<br>(control)", "prompt string":
             "prompt string<br>(control)", "prompt + answer strings":
             "prompt + answer<br>(control)"}
    fig.update_xaxes(ticktext=[short.get(n, n) for n in names], tickvals=names, tickangle=0,
                     row=1, col=1)
    fig.add_hline(y=0.7, line=dict(color="grey", dash="dash"), row=1, col=1)
    fig.add_hline(y=0.5, line=dict(color="grey", dash="dot"), row=1, col=1)
    labels = {"poise": "cross-rollout<br>probe (POISE)", "own": "probe on own<br>features",
              "loo": "leave-one-out<br>mean (RLOO)"}
    for j, key in enumerate(("z_gradient_direction", "z_random_direction")):
        fig.add_trace(go.Scatter(
            x=[labels[e] for e in ESTIMATORS for _ in seeds],
            y=[r["bias"][e][key] for e in ESTIMATORS for r in seeds], mode="markers",
            marker=dict(color=PALETTE[1 + j], size=9, symbol=["circle", "diamond"][j]),
            name=key.replace("z_", "projection on the ").replace("_", " ")), row=2, col=1)
    for y in (-3, 3):
        fig.add_hline(y=y, line=dict(color="grey", dash="dash"), row=2, col=1)
    ratios = np.array([[r["variance_ratio"][e] for e in ESTIMATORS] for r in seeds])
    fig.add_trace(go.Bar(x=[labels[e] for e in ESTIMATORS], y=ratios.mean(0),
                         marker_color=PALETTE[4], showlegend=False, name="variance ratio",
                         error_y=dict(type="data", symmetric=False,
                                      array=ratios.max(0) - ratios.mean(0),
                                      arrayminus=ratios.mean(0) - ratios.min(0))),
                  row=2, col=2)
    fig.add_hline(y=0.8, line=dict(color="grey", dash="dash"), row=2, col=2)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"), row=2, col=2)
    fig.update_yaxes(range=[0.4, 1.0], title_text="AUROC", row=1, col=1)
    fig.update_yaxes(title_text="z", row=2, col=1)
    fig.update_xaxes(tickangle=0, row=2, col=1)
    fig.update_xaxes(tickangle=0, row=2, col=2)
    fig.update_yaxes(title_text="ratio", row=2, col=2)
    style_figure(fig, TITLE, height=860)
    fig.update_layout(legend=dict(orientation="h", y=-0.17, x=0, yanchor="top"),
                      margin=dict(t=100, b=130))
    return fig
