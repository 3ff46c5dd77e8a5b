"""Card 7: effective rank of the response hidden states, and its velocity and acceleration.

Huang et al. (arXiv:2509.23808, code hf618/VERL ``verl/trainer/metrics_utils.py``) measure
the effective rank ER of a response's hidden states at one layer (Z, T x d, column-centred;
p_j = sigma_j / sum(sigma); ER = exp(-sum p_j log p_j)) and follow it along the response:
for the prefixes t = s, 2s, ..., Delta_t = ER_t - mean(earlier ER), ERA_t = Delta_t -
Delta_{t-1}; per response ERV = mean(Delta_t) and ERA = mean(ERA_t). They report that ER
and ERV are *decoupled* (while token-level metrics are negatively coupled) and use them as
exploration signals. :mod:`rlnb.probes.rank` implements the definitions
(:func:`~rlnb.probes.effective_rank`, :func:`~rlnb.probes.rank_dynamics`,
:func:`~rlnb.probes.rank_by_layer`).

Protocol (card 7's toy):

1. **Task**: 2-digit addition, ``addition(2304, digits=2)`` split into 2,048 training and
   256 held-out problems. A response is 2 or 3 digits and the EOS token.
2. **Base model**: :func:`rlnb.policies.pretrain_base`, 2 Llama layers, d=64, AdamW 3e-3
   on batches of 256, stopped at pass@1 >= 0.3 (:data:`ADDITION_PRETRAIN`; cached on disk,
   one base per seed; 190-480 steps, 20-25 s each).
3. **GRPO** with the rlnb Trainer: 16 prompts x 8 completions, T=1, group mean/std
   advantages, token-mean, Adam 3e-4, 150 steps (quick: 60); a
   :class:`rlnb.recipes.Snapshots` callback keeps the weights at 0, 50, 100, 150 (quick:
   0, 30, 60).
4. **States**: at every checkpoint, 4 completions of each of 128 held-out problems
   (quick: 2 of 64), the residual stream of each layer (``embed``,
   ``layers.{0,1}.resid_post``, ``final_norm``) over the *response* tokens (EOS
   included) with :func:`rlnb.recipes.completion_states`; ER, ERV and ERA per response and
   layer with :func:`~rlnb.probes.rank_by_layer` at stride s = 1.

Checks: the unit identities of card 7 on constructed matrices (r equal singular values
give ER = r within 1e-6, r = 1..8; a rank-1 matrix, with an offset that the centring
removes, gives 1), 3 random constructions per seed; and card 7's unvalidated criterion
|corr(ER, ERV)| < 0.3 across the responses at the **last layer (final_norm, the states the
LM head reads, HF's last ``hidden_states``) of the last checkpoint**, worst seed.

**What this shows, and what it does not.** The identities hold to ~1e-15. The decoupling
does not reproduce, and it cannot on this toy: with s = 1 the first two prefixes always
have ER = 1 (one centred token is the zero matrix; two centred tokens are rank 1), so a
3-token response has ERV = (ER - 1) / 2 exactly, and a 4-token one has ERV = (2 ER_3 +
3 ER - 5) / 9 -- an algebraic coupling that makes corr(ER, ERV) close to 1 at every layer
and checkpoint. The paper's responses are hundreds to thousands of tokens long, where ER
saturates while ERV measures its recent change; 2-digit sums are 3-4 tokens. Read the
plots as the pipeline working on a real GRPO run (the per-layer ER moves little over 150
steps), not as evidence about exploration.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.envs import addition
from rlnb.policies import LMPolicy, pretrain_base
from rlnb.probes import effective_rank, rank_by_layer
from rlnb.recipes import Snapshots, completion_states, factor_grpo_config
from rlnb.threads import torch_threads
from rlnb.train import Trainer
from rlnb.viz import PALETTE, add_line_with_band, style_figure

TITLE = "Effective rank, ERV and ERA of response states over GRPO (Huang et al. 2025, card 7)"
CARD = 7
PAPER = (
    "Huang et al. (arXiv:2509.23808, hf618/VERL): the effective rank ER of a response's "
    "column-centred hidden states (exp of the entropy of the normalised singular values), "
    "its velocity ERV and acceleration ERA over prefixes t = s, 2s, ...; ER and ERV are "
    "decoupled while token-level metrics are negatively coupled; using them as exploration "
    "signals gains up to +21.4 points on Gaokao 2024."
)
SHOWS = (
    "It shows card 7's definitions implemented exactly (unit identities to ~1e-15 on "
    "constructed matrices) and measured per layer over checkpoints of a real GRPO run of a "
    "tiny transformer on 2-digit addition, through the same capture code as at full scale. "
    "It does not show the decoupling of ER and ERV: a response here is 3-4 tokens, the first "
    "two prefixes have ER = 1 by construction, and ERV is then an algebraic function of ER "
    "(ERV = (ER - 1)/2 for 3 tokens), so |corr(ER, ERV)| is near 1. The decoupling needs "
    "responses long enough for ER to saturate; nothing here speaks to exploration gains."
)

#: Base model of the addition toy (cards 7 and 16): 2 Llama layers, d=64, stopped at pass@1 0.3.
ADDITION_PRETRAIN: dict[str, Any] = {
    "arch": "llama", "n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2,
    "batch_size": 256, "lr": 3e-3, "target_pass_at_1": 0.3, "steps": 1500,
}
MAX_NEW_TOKENS = 5
"""Completion budget: a 3-digit sum and EOS fit in 4."""
LAYER = "final_norm"
"""The layer of the correlation check: the last layer's states as the LM head reads them."""

FULL = {"seeds": 3, "steps": 150, "snapshots": [50, 100, 150], "problems": 128, "per_problem": 4}
QUICK = {"seeds": 3, "steps": 60, "snapshots": [30, 60], "problems": 64, "per_problem": 2}


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


# --- UNIT IDENTITIES (card 7's required checks) -------------------------------------------
def _orthonormal(rows: int, cols: int, rng: np.random.Generator, centred: bool) -> np.ndarray:
    a = rng.normal(size=(rows, cols))
    if centred:
        a -= a.mean(axis=0)  # orthogonal to the ones vector: centring leaves it unchanged
    q, _ = np.linalg.qr(a)
    return q[:, :cols]


def identity_errors(seed: int, max_rank: int = 8, trials: int = 3) -> dict[str, float]:
    """Largest |ER - r| for matrices with r equal singular values (r = 1..max_rank), and
    largest |ER - 1| for rank-1 matrices plus a constant offset, over ``trials`` random
    constructions; computed with the centring on, as card 7 prescribes."""
    rng = np.random.default_rng(seed)
    equal, rank1 = 0.0, 0.0
    for _ in range(trials):
        for r in range(1, max_rank + 1):
            T, d = int(rng.integers(r + 2, 40)), int(rng.integers(r, 64) + 1)
            U, V = _orthonormal(T, r, rng, True), _orthonormal(d, r, rng, False)
            Z = float(rng.uniform(0.1, 10)) * U @ V.T  # (T, d), r singular values equal
            equal = max(equal, abs(effective_rank(Z) - r))
        T, d = int(rng.integers(3, 40)), int(rng.integers(2, 65))
        Z = np.outer(rng.normal(size=T), rng.normal(size=d)) + rng.normal(size=(1, d)) * 5
        rank1 = max(rank1, abs(effective_rank(Z) - 1.0))
    return {"equal_singular_values": float(equal), "rank_one": float(rank1)}


# --- ONE SEED -------------------------------------------------------------------------------
def _corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def run_seed(seed: int, *, steps: int, snapshots: list[int], problems: int, per_problem: int,
             progress: bool = False) -> dict[str, Any]:
    """Pre-train (or load) the base, GRPO with snapshots, ER/ERV/ERA per layer per checkpoint."""
    t_start = time.perf_counter()
    train, held_out = addition_split()
    path, pretrain = addition_base(train, seed, progress)
    policy = LMPolicy(path, device="cpu", max_new_tokens=MAX_NEW_TOKENS)

    # --- GRPO, KEEPING SNAPSHOTS ---
    t0 = time.perf_counter()
    snaps = Snapshots(policy, snapshots)
    history = Trainer(policy, train, addition_grpo_config(seed, steps), callbacks=[snaps]).train()
    grpo_seconds = time.perf_counter() - t0

    # --- RESPONSE STATES AND THEIR RANK, PER CHECKPOINT ---
    t0 = time.perf_counter()
    layers: list[str] = []
    per_step: dict[str, dict[str, list[float]]] = {}
    scatter: dict[str, list[float]] = {}
    for step in sorted(snaps.states):
        with torch_threads(1):  # a tiny model: one thread is fastest, and robust to a busy CPU
            states = completion_states(snaps.policy_at(policy, step), held_out,
                                       list(range(problems)), per_problem, seed=10_000 + seed)
            frame = rank_by_layer(states.cache, stride=1)  # cache.mask: the response tokens
        layers = list(dict.fromkeys(frame["name"]))
        row: dict[str, list[float]] = {k: [] for k in
                                       ("er", "erv", "era", "corr", "corr_4_tokens")}
        for name in layers:
            f = frame[frame["name"] == name]
            er, erv = f["er"].to_numpy(float), f["erv"].to_numpy(float)
            four = f["tokens"].to_numpy() == 4
            row["er"].append(float(np.nanmean(er)))
            row["erv"].append(float(np.nanmean(erv)))
            row["era"].append(float(np.nanmean(f["era"].to_numpy(float))))
            row["corr"].append(_corr(er, erv))
            row["corr_4_tokens"].append(_corr(er[four], erv[four]))
            if step == max(snaps.states) and name == LAYER:
                scatter = {"er": er.tolist(), "erv": erv.tolist(),
                           "tokens": f["tokens"].astype(int).tolist()}
        row["accuracy"] = [float(states.correct.float().mean())]
        row["mean_tokens"] = [float(states.cache.mask.sum(1).float().mean())]
        per_step[str(step)] = row
    probe_seconds = time.perf_counter() - t0
    return {
        "seed": seed,
        "steps": sorted(snaps.states),
        "layers": layers,
        "by_step": per_step,
        "scatter": scatter,
        "identity": identity_errors(seed),
        "history": {"step": history["step"].tolist(), "reward": history["reward"].tolist()},
        "pretrain": pretrain,
        "seconds": {"grpo": round(grpo_seconds, 2), "probe": round(probe_seconds, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
    }


def run(quick: bool = False, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Full: seeds ``seed .. seed+2``, GRPO 150 steps, checkpoints 0/50/100/150, 128 x 4
    responses. Quick: 60 steps, checkpoints 0/30/60, 64 x 2 responses, still 3 seeds."""
    budget = QUICK if quick else FULL
    t0 = time.perf_counter()
    seeds = [run_seed(seed + i, steps=budget["steps"], snapshots=budget["snapshots"],
                      problems=budget["problems"], per_problem=budget["per_problem"],
                      progress=progress) for i in range(budget["seeds"])]
    return {"quick": quick, "budget": budget, "layer": LAYER, "seeds": seeds,
            "seconds": round(time.perf_counter() - t0, 2),
            "pretrain_seconds": round(sum(s["pretrain"]["seconds"] for s in seeds), 2)}


def _last_corr(r: dict, key: str = "corr") -> float:
    row = r["by_step"][str(max(r["steps"]))]
    return float(row[key][r["layers"].index(LAYER)])


def checks(results: dict) -> list[Check]:
    seeds = results["seeds"]
    equal = max(r["identity"]["equal_singular_values"] for r in seeds)
    rank1 = max(r["identity"]["rank_one"] for r in seeds)
    corr = max(abs(_last_corr(r)) for r in seeds)
    return [
        Check("max |ER - r| for r equal singular values, r = 1..8 (worst seed)", equal, "<",
              1e-6, "card 7's unit test: r equal singular values give ER = r", True),
        Check("max |ER - 1| for rank-1 matrices with an offset (worst seed)", rank1, "<", 1e-6,
              "card 7's unit test: rank 1 gives ER = 1 (after column centring)", True),
        Check(f"|corr(ER, ERV)| across responses, {LAYER}, last checkpoint (worst seed)",
              corr, "<", 0.3, "card 7's phenomenon (unvalidated): ER and ERV are decoupled; "
              "here 3-4 token responses couple them algebraically", required=False),
    ]


def figure(results: dict) -> go.Figure:
    seeds = results["seeds"]
    steps = seeds[0]["steps"]
    layers = seeds[0]["layers"]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.24,
                        subplot_titles=("mean ER per layer over GRPO (range over seeds)",
                                        "mean ERV (stride 1)",
                                        "mean ERA (stride 1)",
                                        f"ER against ERV, {LAYER}, last checkpoint (seed "
                                        f"{seeds[0]['seed']})"))
    for (row, col), key in zip([(1, 1), (1, 2), (2, 1)], ["er", "erv", "era"]):
        for j, name in enumerate(layers):
            vals = np.array([[r["by_step"][str(s)][key][j] for s in steps] for r in seeds])
            add_line_with_band(fig, steps, vals.mean(0), lo=vals.min(0), hi=vals.max(0),
                               name=name, color=PALETTE[j % len(PALETTE)], row=row, col=col,
                               mode="lines+markers", showlegend=key == "er")
        if row == 2:
            fig.update_xaxes(title_text="GRPO step", row=row, col=col)
        fig.update_yaxes(title_text=key.upper(), row=row, col=col)
    sc = seeds[0]["scatter"]
    tokens = np.array(sc["tokens"])
    for j, t in enumerate(sorted(set(tokens.tolist()))):
        keep = tokens == t
        fig.add_trace(go.Scatter(x=np.array(sc["er"])[keep], y=np.array(sc["erv"])[keep],
                                 mode="markers", name=f"{t}-token responses", opacity=0.5,
                                 marker=dict(color=PALETTE[(4 + j) % len(PALETTE)], size=5)),
                      row=2, col=2)
    fig.update_xaxes(title_text="ER", row=2, col=2)
    fig.update_yaxes(title_text="ERV", row=2, col=2)
    style_figure(fig, TITLE, height=860)
    fig.update_layout(legend=dict(orientation="h", y=-0.21, x=0, yanchor="top"),
                      margin=dict(t=100, b=130))
    return fig
