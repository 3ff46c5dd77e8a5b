"""Card 12: reward over-optimisation (Gao et al. 2022; Coste et al. 2023; Rafailov et al. 2024).

A world is 50,000 equally likely outputs, each with a gold reward ``~ N(0, 1)`` and five
proxies ``gold + 0.5 t_{1.5}`` (independent Student-t noise, infinite variance;
``rlnb.probes.goodhart_rewards``). In each world, exactly (no sampling of the n draws):

- best-of-n by the single proxy (proxy 0), ``n = 1 .. 16384``: its KL, proxy and gold reward
  from the order statistics (``rlnb.probes.best_of_n_curve``);
- best-of-n by the worst-case ensemble (WCO, the minimum of the five proxies);
- "RL with a KL penalty against the proxy": the exact KL-regularised optimum
  ``pi_beta ∝ exp(proxy / beta)`` over the 50k outputs, with ``beta`` solved so that it
  spends each best-of-n KL (``rlnb.probes.tilt_curve``), the policy KL-regularised RL
  converges to (card 10).

A seed averages its worlds' curves (8 worlds, 4 in the quick run): one world's gold reward at
large n is the gold of the dozen outputs with the most extreme proxy noise, a draw with a
standard deviation of about 0.2, and in about one world in a hundred it is high enough to
break a criterion. Gao et al.'s forms are fitted to the seed's mean gold gain against
``d = sqrt(KL)``: ``d (alpha - beta d)`` for best-of-n and ``d (alpha - beta log d)`` for RL.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.probes.bon import (
    best_of_n_curve,
    ensemble_reward,
    fit_overoptimisation,
    goodhart_rewards,
    tilt_curve,
)
from rlnb.viz import PALETTE, add_line_with_band, style_figure

TITLE = "Reward over-optimisation: best-of-n and KL-regularised RL on a proxy (Gao et al. 2022, card 12)"
CARD = 12
PAPER = (
    "Gao et al. (arXiv:2210.10760): optimising a proxy reward model, the gold reward rises "
    "then falls with d = sqrt(KL): R(d) = d(alpha - beta d) for best-of-n, "
    "d(alpha - beta log d) for RL. Coste et al. (arXiv:2310.02743): conservative ensembles "
    "(WCO = min_i r_i, UWO) \"practically eliminate overoptimization\", up to 70% gains for "
    "best-of-n. Card 12's numpy prototype (50k outputs, gold ~ N(0,1), proxy = gold + "
    "0.5 t_1.5): BoN gold peaks at 0.947 (n = 16, d ~ 1.35), falls to -0.06 at n = 16384 "
    "while the proxy climbs to 146; a WCO ensemble of 5 proxies rises monotonically to 3.44."
)
SHOWS = (
    "It shows Goodhart's law in exact arithmetic: best-of-n by a heavy-tailed proxy gains gold "
    "reward up to n = 16 and then loses nearly all of it, while the proxy keeps climbing, and "
    "a worst-case ensemble of five proxies with independent noise keeps rising to about 3.3 "
    "gold. It does not show Gao et al.'s functional forms: the gold curve falls fast and then "
    "flattens near zero instead of following a parabola in d (R^2 about 0.74 on the seed "
    "means), and the exact KL-regularised optimum against this proxy spends its whole KL on "
    "the few outputs with the most extreme proxy noise, so its gold gain is a nearly straight "
    "line of random sign in d (best gain 0.002-0.59 per seed against best-of-n's 0.93) -- "
    "no rise and fall. The toy's proxy is i.i.d. noise on a list of "
    "outputs, not a reward model trained on preferences; its ensemble is optimistic because "
    "the members' errors are independent; and RL here is the exact optimum, not a trained "
    "policy whose parametrisation limits what it can exploit."
)

NS = [2**i for i in range(15)]  # 1 .. 16384
NUM_OUTPUTS = 50_000
NUM_PROXIES = 5


def world(seed: int, index: int) -> dict[str, list[float]]:
    """One world's exact curves: best-of-n by the single proxy and by WCO, and the
    KL-regularised optimum against the single proxy at best-of-n's KLs (n >= 2)."""
    gold, proxies = goodhart_rewards(NUM_OUTPUTS, generator=np.random.default_rng([seed, index]),
                                     num_proxies=NUM_PROXIES)
    p = np.full(NUM_OUTPUTS, 1.0 / NUM_OUTPUTS)
    single = best_of_n_curve(p, proxies[0], NS, values={"gold": gold})
    wco = best_of_n_curve(p, ensemble_reward(proxies, "min"), NS, values={"gold": gold})
    rl = tilt_curve(p, proxies[0], kls=single.kl.iloc[1:].tolist(), values={"gold": gold})
    return {
        "kl": single.kl.tolist(),
        "gold": single.gold.tolist(),
        "proxy": single.reward.tolist(),
        "wco_gold": wco.gold.tolist(),
        "wco_reward": wco.reward.tolist(),
        "rl_kl": rl.kl.tolist(),
        "rl_beta": rl.beta.tolist(),
        "rl_gold": rl.gold.tolist(),
        "rl_proxy": rl.reward.tolist(),
        "base_gold": float(gold.mean()),
    }


def _fit(d: np.ndarray, gain: np.ndarray, form: str) -> dict[str, float]:
    f = fit_overoptimisation(d, gain, form=form)
    return {"alpha": f.alpha, "beta": f.beta, "r2": f.r2, "peak_d": f.peak_d,
            "peak_reward": f.peak_reward}


def run_seed(seed: int, worlds: int) -> dict[str, Any]:
    ws = [world(seed, i) for i in range(worlds)]
    mean = {k: np.mean([w[k] for w in ws], axis=0) for k in ws[0]}
    d = np.sqrt(mean["kl"])
    d_rl = np.sqrt(mean["rl_kl"])
    gold, base = mean["gold"], float(mean["base_gold"])
    peak = int(np.argmax(gold))
    per_world_peak_n = [NS[int(np.argmax(w["gold"]))] for w in ws]
    i4096 = NS.index(4096)
    return {
        "seed": seed,
        "worlds": worlds,
        **{k: np.asarray(v).tolist() for k, v in mean.items()},
        "d": d.tolist(),
        "rl_d": d_rl.tolist(),
        "peak_n": NS[peak],
        "peak_gold": float(gold[peak]),
        "peak_d": float(d[peak]),
        "gold_4096": float(gold[i4096]),
        "wco_gold_4096": float(mean["wco_gold"][i4096]),
        "bon_fit": _fit(d, gold - gold[0], "bon"),
        "rl_fit": _fit(d_rl, mean["rl_gold"] - base, "rl"),
        "rl_best_gain": float(np.max(mean["rl_gold"] - base)),
        "world_gold": [w["gold"] for w in ws],
        "world_peak_n": per_world_peak_n,
        "world_gold_4096_over_peak": [w["gold"][i4096] / max(w["gold"]) for w in ws],
    }


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 5 seeds x 8 worlds. Quick: 3 seeds x 4 worlds. Same n grid, same protocol."""
    seeds = [seed + i for i in range(3 if quick else 5)]
    worlds = 4 if quick else 8
    return {"ns": NS, "num_outputs": NUM_OUTPUTS, "num_proxies": NUM_PROXIES,
            "seeds": [run_seed(s, worlds) for s in seeds]}


def checks(results: dict) -> list[Check]:
    runs = results["seeds"]
    peaks = [r["peak_n"] for r in runs]
    fall = max(r["gold_4096"] / r["peak_gold"] for r in runs)
    wco_margin = min(r["wco_gold_4096"] - 2 * r["gold_4096"] for r in runs)
    rl_share = min(r["rl_best_gain"] / (r["peak_gold"] - r["gold"][0]) for r in runs)
    wco_step = min(float(np.diff(r["wco_gold"]).min()) for r in runs)
    return [
        Check("n at the gold peak, smallest over seeds", min(peaks), ">=", 4,
              "best-of-n by the proxy peaks in gold reward at moderate n ..."),
        Check("n at the gold peak, largest over seeds", max(peaks), "<=", 256,
              "... between n = 4 and n = 256"),
        Check("gold(n=4096) / peak gold (worst seed)", fall, "<", 0.5,
              "past the peak the gold reward falls below half of it by n = 4096"),
        Check("R^2 of the fit d(alpha - beta d) to best-of-n's gold gain, n = 1..16384 "
              "(worst seed)", min(r["bon_fit"]["r2"] for r in runs), ">=", 0.9,
              "Gao et al.'s best-of-n form; the card marks it 'not yet fitted', so it is "
              "reported, not required", required=False),
        Check("WCO gold(4096) - 2 x single-proxy gold(4096) (worst seed)", wco_margin, ">=", 0.0,
              "a worst-case ensemble of 5 proxies keeps at least twice the single proxy's gold"),
        Check("R^2 of the fit d(alpha - beta log d) to the KL-regularised optimum's gold gain "
              "(worst seed)", min(r["rl_fit"]["r2"] for r in runs), ">=", 0.9,
              "Gao et al.'s RL form; not a card criterion (threshold borrowed from best-of-n). "
              "A high R^2 here can come from a nearly flat line", required=False),
        Check("best gold gain of the KL-regularised optimum / best-of-n's peak gain "
              "(worst seed)", rl_share, ">=", 0.5,
              "not a card criterion: does RL against the proxy first gain gold, as in Gao "
              "et al., before over-optimising?", required=False),
        Check("smallest rise of WCO gold from n to 2n (worst seed)", wco_step, ">", 0.0,
              "the card's [num] note (not a pass criterion): WCO rises monotonically",
              required=False),
    ]


def figure(results: dict) -> go.Figure:
    runs = results["seeds"]
    ns = results["ns"]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07, subplot_titles=(
        "gold reward against d = sqrt(KL), mean and range over seeds",
        "the optimised reward's gain (log scale)",
        "single proxy: gold against n, single worlds (thin) and seeds"))

    def band(key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = np.array([r[key] for r in runs])
        return v.mean(0), v.min(0), v.max(0)

    d = np.array(runs[0]["d"])
    d_rl = np.array(runs[0]["rl_d"])
    series = [("gold", d, "best-of-n, single proxy", PALETTE[0]),
              ("wco_gold", d, "best-of-n, WCO of 5 proxies", PALETTE[1]),
              ("rl_gold", d_rl, "KL-regularised optimum, single proxy", PALETTE[2])]
    for key, x, name, color in series:
        m, lo, hi = band(key)
        add_line_with_band(fig, x, m, lo=lo, hi=hi, name=name, color=color, row=1, col=1,
                           mode="lines+markers")
    xs = np.linspace(1e-3, d.max(), 100)
    base = float(np.mean([r["gold"][0] for r in runs]))
    for key, form, name, dash in [("bon_fit", "bon", "fit d(α − βd)", "dash"),
                                  ("rl_fit", "rl", "fit d(α − β log d)", "dot")]:
        f = runs[0][key]
        pred = xs * (f["alpha"] - f["beta"] * (xs if form == "bon" else np.log(xs)))
        fig.add_trace(go.Scatter(x=xs, y=pred + base, mode="lines",
                                 name=f"{name}, seed {runs[0]['seed']}, R² = {f['r2']:.2f}",
                                 line=dict(color="#000", dash=dash)), row=1, col=1)
    # (2) what was maximised
    for key, x, name, color in [("proxy", d, "single proxy (BoN)", PALETTE[0]),
                                ("wco_reward", d, "min of 5 proxies (BoN, WCO)", PALETTE[1]),
                                ("rl_proxy", d_rl, "single proxy (KL-regularised)", PALETTE[2])]:
        m = band(key)[0]
        start = band("proxy")[0][0] if key == "rl_proxy" else m[0]
        sel = slice(1, None) if key != "rl_proxy" else slice(None)
        fig.add_trace(go.Scatter(x=x[sel], y=(m - start)[sel], mode="lines+markers",
                                 name=name, line=dict(color=color, dash="dot"),
                                 showlegend=False), row=1, col=2)
    # (3) the single proxy's gold per world and per seed, against n
    for j, r in enumerate(runs):
        color = PALETTE[(3 + j) % len(PALETTE)]
        for w in r["world_gold"]:
            fig.add_trace(go.Scatter(x=ns, y=w, mode="lines", line=dict(color=color, width=0.6),
                                     opacity=0.35, showlegend=False, hoverinfo="skip"),
                          row=1, col=3)
        fig.add_trace(go.Scatter(x=ns, y=r["gold"], mode="lines+markers",
                                 name=f"seed {r['seed']} (mean of {r['worlds']} worlds)",
                                 line=dict(color=color, width=2)), row=1, col=3)
    fig.add_vrect(x0=4, x1=256, fillcolor="grey", opacity=0.08, line_width=0, row=1, col=3)
    fig.update_xaxes(title_text="d = sqrt(KL) from the base policy", row=1, col=1)
    fig.update_yaxes(title_text="gold reward", row=1, col=1)
    fig.update_xaxes(title_text="d = sqrt(KL)", row=1, col=2)
    fig.update_yaxes(type="log", title_text="optimised reward − base", row=1, col=2)
    fig.update_xaxes(type="log", title_text="n (peak window 4..256 shaded)", row=1, col=3)
    fig.update_yaxes(title_text="gold reward", row=1, col=3)
    style_figure(fig, TITLE, height=540)
    fig.update_layout(legend=dict(orientation="h", y=-0.2, x=0, yanchor="top"),
                      margin=dict(t=90, b=150))
    return fig
