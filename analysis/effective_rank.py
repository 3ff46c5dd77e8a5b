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

1. **Task**: addition with the working written out (:func:`rlnb.envs.written_addition`,
   2-digit operands, 2,048 training and 256 held-out problems): prompt ``"47+38="``,
   completion ``"7+8=15,4+3+1=8:85"``, 14-19 characters, so a response is 15-20 tokens
   with its EOS. Reward 1 when the sum after ``:`` is right; the working is not judged.
2. **Base model**: :func:`rlnb.policies.pretrain_base`, 2 Llama layers, d=64, AdamW 3e-3
   on batches of 256 reference completions, stopped at pass@1 >= 0.3 (:data:`BASE_PRETRAIN`;
   cached on disk, one base per seed; ~140 steps).
3. **GRPO** with the rlnb Trainer: 16 prompts x 8 completions, T=1, group mean/std
   advantages, token-mean, Adam 3e-4, 80 steps (quick: 12); a
   :class:`rlnb.recipes.Snapshots` callback keeps the weights at 0, 40, 80 (quick: 0, 12).
4. **States**: at every checkpoint, 2 completions of each of 128 held-out problems
   (quick: 64), the residual stream
   of each layer (``embed``, ``layers.{0,1}.resid_post``, ``final_norm``) over the
   *response* tokens (EOS included) with :func:`rlnb.recipes.completion_states`; ER, ERV
   and ERA per response and layer with :func:`~rlnb.probes.rank_by_layer` at stride
   :data:`STRIDE` s = 3: prefixes 3, 6, ..., 5-6 of them per response (a last block shorter
   than s is left out, as in VERL). s = 3 is the smallest stride whose first prefix is not
   constant by construction (one centred token is the zero matrix and two are rank 1, so
   with s = 1 or 2 the first prefix always has ER = 1), and still leaves 4-5 Delta_t and
   3-4 ERA_t per response.

Checks: the unit identities of card 7 on constructed matrices (r equal singular values
give ER = r within 1e-6, r = 1..8; a rank-1 matrix, with an offset that the centring
removes, gives 1), 3 random constructions per seed; and card 7's unvalidated criterion
|corr(ER, ERV)| < 0.3 across the responses at the **last layer (final_norm, the states the
LM head reads, HF's last ``hidden_states``) of the last checkpoint**, worst seed. For
context the results also hold the same correlation among responses of one length (the
most common), and at stride 1.

**What this shows, and what it does not.** The identities hold to ~1e-15. On the first
version of this toy (plain 2-digit addition, 3-4 token responses, s = 1) the criterion was
degenerate: the first two prefixes have ER = 1, so a 3-token response has ERV = (ER - 1)/2
exactly and |corr| was >= 0.99 for algebraic reasons. With 15-20 token responses and
s = 3 ER and ERV are measured over 5-6 prefixes that the model's states decide, and the
correlation is a property of the states. It is still high (0.48-0.80 at final_norm over
nine seeds, full run; 0.72-0.95 among responses of one length; 0.92-0.98 at s = 1 on the
same responses): the criterion is not reproduced. A likely reason, not tested here: 15-20
tokens in d = 64 never saturate the rank (ER ~ 12 of at most 20), so ER_t grows with
every prefix and ERV, the mean recent growth, scales with the final ER; the paper's
responses are hundreds to thousands of tokens in thousands of dimensions. Nothing here
speaks to the exploration gains.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.envs import written_addition
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
    "tiny transformer on addition with the column working written out (15-20 token "
    "responses, prefixes every 3 tokens; 80 GRPO steps lift held-out accuracy 0.08-0.25), "
    "through the same capture code as at full scale. It does not show ER and ERV "
    "decoupled: |corr| is 0.48-0.80. Unlike the first version (3-4 tokens at stride 1, where "
    "ERV = (ER - 1)/2 exactly) this is not algebra; but 15-20 tokens in 64 dimensions never "
    "saturate the rank, so ERV still tracks ER. Nothing here speaks to exploration gains."
)

#: Base model of the written-addition toy: 2 Llama layers, d=64, stopped at pass@1 0.3.
BASE_PRETRAIN: dict[str, Any] = {
    "arch": "llama", "n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2,
    "batch_size": 256, "lr": 3e-3, "target_pass_at_1": 0.3, "steps": 1500,
}
MAX_NEW_TOKENS = 24
"""Completion budget: the longest reference completion (19 characters) and EOS fit in 20."""
STRIDE = 3
"""Prefix stride s (prefixes t = 3, 6, ...): the smallest whose first prefix is not ER = 1
by construction; 5-6 prefixes per 15-20 token response."""
LAYER = "final_norm"
"""The layer of the correlation check: the last layer's states as the LM head reads them."""

FULL = {"seeds": 3, "steps": 80, "snapshots": [40, 80], "problems": 128, "per_problem": 2}
QUICK = {"seeds": 3, "steps": 12, "snapshots": [12], "problems": 64, "per_problem": 2}


def task_split() -> tuple[Any, Any]:
    """``(train, held_out)``: 2,048 and 256 distinct 2-digit written-addition problems."""
    return written_addition(2048 + 256, digits=2, seed=0).split(256, seed=0)


def base_model(train: Any, seed: int, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Pre-train (or load from the cache) the base of ``seed``: ``(path, record)``."""
    t0 = time.perf_counter()
    path = pretrain_base(train, seed=seed, progress=progress, **BASE_PRETRAIN)
    record = json.loads((path / "pretrain.json").read_text())
    return path, {"steps": record["steps_run"], "seconds": record["seconds"],
                  "final": record["final"], "load_seconds": round(time.perf_counter() - t0, 2)}


def grpo_config(seed: int, steps: int) -> Any:
    """GRPO: 16 prompts x 8, T=1, group mean/std, token-mean, Adam 3e-4."""
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
             progress: bool = False, base_seed: int | None = None) -> dict[str, Any]:
    """Pre-train (or load) the base of ``base_seed`` (default ``seed``), GRPO with snapshots,
    ER/ERV/ERA per layer per checkpoint."""
    t_start = time.perf_counter()
    train, held_out = task_split()
    path, pretrain = base_model(train, seed if base_seed is None else base_seed, progress)
    policy = LMPolicy(path, device="cpu", max_new_tokens=MAX_NEW_TOKENS)

    # --- GRPO, KEEPING SNAPSHOTS ---
    t0 = time.perf_counter()
    snaps = Snapshots(policy, snapshots)
    history = Trainer(policy, train, grpo_config(seed, steps), callbacks=[snaps]).train()
    grpo_seconds = time.perf_counter() - t0

    # --- RESPONSE STATES AND THEIR RANK, PER CHECKPOINT ---
    t0 = time.perf_counter()
    layers: list[str] = []
    per_step: dict[str, dict[str, list[float]]] = {}
    scatter: dict[str, list[float]] = {}
    last = max(snaps.states)
    for step in sorted(snaps.states):
        with torch_threads(1):  # a tiny model: one thread is fastest, and robust to a busy CPU
            states = completion_states(snaps.policy_at(policy, step), held_out,
                                       list(range(problems)), per_problem, seed=10_000 + seed)
            frame = rank_by_layer(states.cache, stride=STRIDE)  # cache.mask: response tokens
        layers = list(dict.fromkeys(frame["name"]))
        tokens = frame[frame["name"] == layers[0]]["tokens"].to_numpy()
        modal = int(np.bincount(tokens).argmax())
        row: dict[str, list[float]] = {k: [] for k in
                                       ("er", "erv", "era", "corr", "corr_one_length")}
        for name in layers:
            f = frame[frame["name"] == name]
            er, erv = f["er"].to_numpy(float), f["erv"].to_numpy(float)
            one = f["tokens"].to_numpy() == modal
            row["er"].append(float(np.nanmean(er)))
            row["erv"].append(float(np.nanmean(erv)))
            row["era"].append(float(np.nanmean(f["era"].to_numpy(float))))
            row["corr"].append(_corr(er, erv))
            row["corr_one_length"].append(_corr(er[one], erv[one]))
            if step == last and name == LAYER:
                scatter = {"er": er.tolist(), "erv": erv.tolist(),
                           "tokens": f["tokens"].astype(int).tolist()}
        row["accuracy"] = [float(states.correct.float().mean())]
        row["working_is_reference"] = [float(np.mean([
            held_out.working_is_reference(held_out.prompt(int(g)), c)
            for g, c in zip(states.groups.tolist(), states.completions)]))]
        row["mean_tokens"] = [float(tokens.mean())]
        row["modal_tokens"] = [float(modal)]
        row["mean_prefixes"] = [float((tokens // STRIDE).mean())]
        if step == last:  # the same responses at stride 1, for comparison with the old protocol
            with torch_threads(1):
                f1 = rank_by_layer(states.cache, names=[LAYER], stride=1)
            row["corr_stride_1"] = [_corr(f1["er"].to_numpy(float), f1["erv"].to_numpy(float))]
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
    """Full: seeds ``seed .. seed+2``, GRPO 80 steps, checkpoints 0/40/80, 2 responses to
    each of 128 held-out problems. Quick: 12 steps, checkpoints 0/12, 64 x 2 responses,
    still 3 seeds; quick mode pre-trains one base (``seed``'s) and runs the three RL seeds from it: the
    bases are the slow part on a fresh machine (no cache), and the RL seeds are what vary."""
    budget = QUICK if quick else FULL
    t0 = time.perf_counter()
    seeds = [run_seed(seed + i, steps=budget["steps"], snapshots=budget["snapshots"],
                      problems=budget["problems"], per_problem=budget["per_problem"],
                      progress=progress, base_seed=seed if quick else None)
             for i in range(budget["seeds"])]
    return {"quick": quick, "budget": budget, "layer": LAYER, "stride": STRIDE, "seeds": seeds,
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
              corr, "<", 0.3, "card 7's phenomenon (unvalidated): ER and ERV are decoupled "
              f"(15-20 token responses, prefix stride {STRIDE}, unsaturated rank)",
              required=False),
    ]


def figure(results: dict) -> go.Figure:
    seeds = results["seeds"]
    steps = seeds[0]["steps"]
    layers = seeds[0]["layers"]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.24,
                        subplot_titles=("mean ER per layer over GRPO (range over seeds)",
                                        f"mean ERV (stride {STRIDE})",
                                        f"mean ERA (stride {STRIDE})",
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
