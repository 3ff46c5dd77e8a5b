"""Card 11: best-of-n against the KL-optimal policy (Beirami et al. 2024; Yang et al. 2024).

Everything is exact over a discrete output space (``rlnb.probes.bon``): the best-of-n
distribution ``pi_bon(y) = F(y)^n - F(y-)^n`` along the reward order, its KL to the base
policy, and the exponential tilt ``pi_beta ∝ pi exp(r / beta)`` -- the maximiser of
``E[r] - beta KL`` -- with ``beta`` solved so that the tilt spends exactly best-of-n's KL.

Four measurements per seed (a seed draws the random bases and rewards):

1. the bound: ``KL(pi_bon || pi) <= log n - (n - 1) / n`` over many random bases (sizes
   2..2000, Dirichlet concentrations 0.05..5, with and without tied rewards, both tie
   rules) and ``n`` up to 2^16 -- the worst slack;
2. tightness: ``bound - KL`` for ``|Y| = 1000`` and ``n <= 64`` with a uniform base (the
   card's case), and, beyond the card, a random Dirichlet(1) base;
3. the reward ratio: best-of-n's mean reward gain over the base divided by the tilt's at
   equal KL, 50,000 equally likely outputs with Gaussian rewards, ``n = 2 .. 1024``, the
   means over 8 reward draws per seed (a single draw's ratio follows its top few rewards:
   about one draw in ten does not rise at every doubling of n, and some dip below 0.9);
4. the loose case: 10 equally likely outputs, ``n = 64``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.base import Check
from rlnb.probes.bon import best_of_n_curve, kl_bound, tilt_curve
from rlnb.viz import PALETTE, style_figure

TITLE = "Best-of-n against the KL-optimal tilt (Beirami et al. 2024; Yang et al. 2024, card 11)"
CARD = 11
PAPER = (
    "Beirami et al. (arXiv:2401.01879): the often-quoted KL of best-of-n, log n - (n - 1)/n, "
    "is only an upper bound, reached in the continuous, no-ties limit. Yang et al. "
    "(arXiv:2404.01730): best-of-n is asymptotically the KL-constrained optimum, the "
    "exponential tilt. Card 11's numpy prototype: with 50k outputs the exact KL matches the "
    "formula to 3 decimals up to n = 4096; at equal KL best-of-n's reward is 0.91 (n = 2) "
    "to 0.965 (n = 1024) of the tilt's; |Y| = 10, n = 64: KL 2.29 against the formula's 3.18."
)
SHOWS = (
    "It shows, in exact arithmetic, that the folk formula never undershoots the exact KL of "
    "best-of-n over hundreds of random base policies (skewed, tied, tiny and large), that it "
    "is tight within 0.01 nats for 1000 outputs and n <= 64, and that at equal KL best-of-n "
    "gets 91-96% of the reward gain of the optimal tilt (mean of 8 reward draws), closing in "
    "as n grows. The loose "
    "case is a finite space: 10 outputs cap the KL at log 10 = 2.303, so at n = 64 the exact "
    "KL is 2.293 while the formula says 3.175 (the card's 3.18 is a rounding slip). It does "
    "not show anything about language models: the outputs are a list with i.i.d. Gaussian "
    "rewards, and the ratio depends on the reward tail and on the size of the space (the top "
    "rewards of each seed's draw set how fast it rises)."
)

BOUND_NS = [2, 3, 4, 8, 16, 64, 256, 1024, 4096, 2**16]
TIGHT_NS = [2, 4, 8, 16, 32, 64]
RATIO_NS = [2**i for i in range(1, 11)]  # 2 .. 1024, the card's range
CURVE_NS = [2**i for i in range(15)]  # 1 .. 16384, for the KL curves
CURVE_SIZES = [10, 100, 1000, 50_000]
LARGE = 50_000
RATIO_DRAWS = 8  # reward draws per seed whose mean gains give the ratio
TIES = ("split", "index")


def random_base(g: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One random test case for the bound: a base policy and rewards, maybe tied."""
    size = int(np.exp(g.uniform(np.log(2), np.log(2000))))
    conc = float(g.choice([0.05, 0.3, 1.0, 5.0]))
    p = g.dirichlet(np.full(size, conc))
    p = np.maximum(p, 0.0)
    p /= p.sum()
    tied = bool(g.random() < 0.5)
    r = (g.integers(0, max(2, size // 4), size).astype(float) if tied
         else g.standard_normal(size))
    return p, r, {"size": size, "concentration": conc, "tied": tied}


def bound_slack(g: np.random.Generator, cases: int) -> dict[str, Any]:
    """Smallest ``bound - KL`` over ``cases`` random bases, every n in BOUND_NS and both tie
    rules; plus (bound, KL) pairs of the first cases for the figure."""
    worst: dict[str, Any] = {"slack": np.inf}
    points = []
    for c in range(cases):
        p, r, info = random_base(g)
        for ties in TIES:
            df = best_of_n_curve(p, r, BOUND_NS, ties=ties)
            slack = df.kl_bound - df.kl
            i = int(np.argmin(slack.values))
            if slack.iloc[i] < worst["slack"]:
                worst = {"slack": float(slack.iloc[i]), "n": int(df.n.iloc[i]), "ties": ties,
                         "kl": float(df.kl.iloc[i]), **info}
            if c < 40:
                points += [[float(b), float(k)] for b, k in zip(df.kl_bound, df.kl)]
    return {"worst": worst, "points": points, "cases": cases}


def tightness(g: np.random.Generator) -> dict[str, Any]:
    """``bound - KL`` for |Y| = 1000, n <= 64: uniform and Dirichlet(1) bases."""
    r = g.standard_normal(1000)
    bases = {"uniform": np.full(1000, 1e-3), "dirichlet(1)": g.dirichlet(np.ones(1000))}
    gaps = {name: (best_of_n_curve(p, r, TIGHT_NS).eval("kl_bound - kl")).tolist()
            for name, p in bases.items()}
    return {"ns": TIGHT_NS, "gaps": gaps}


def ratio_at_equal_kl(g: np.random.Generator, draws: int) -> dict[str, Any]:
    """BoN gain / tilt gain at equal KL; 50k uniform outputs, Gaussian rewards.

    The ratio of one reward draw depends on that draw's top few rewards (the tilt spends its
    KL on them), so it is measured on the mean gains over ``draws`` independent draws. With
    a uniform base and distinct rewards best-of-n's KL depends only on the ranking, so every
    draw has the same KL and the gains average at exactly equal KL.
    """
    p = np.full(LARGE, 1.0 / LARGE)
    bon_gain, tilt_gain, betas = [], [], []
    for _ in range(draws):
        r = g.standard_normal(LARGE)
        base = float(r.mean())
        bon = best_of_n_curve(p, r, RATIO_NS)
        tl = tilt_curve(p, r, kls=bon.kl.tolist())
        bon_gain.append((bon.reward - base).to_numpy())
        tilt_gain.append((tl.reward - base).to_numpy())
        betas.append(tl.beta.to_numpy())
    bg, tg = np.array(bon_gain), np.array(tilt_gain)  # (draws, len(RATIO_NS))
    single = bg / tg
    large = best_of_n_curve(p, r, [n for n in CURVE_NS if n <= 4096])
    return {
        "ns": RATIO_NS,
        "draws": draws,
        "kl": bon.kl.tolist(),
        "beta": np.mean(betas, axis=0).tolist(),
        "bon_gain": bg.mean(0).tolist(),
        "tilt_gain": tg.mean(0).tolist(),
        "ratio": (bg.mean(0) / tg.mean(0)).tolist(),
        "single_draw_ratio_min": float(single.min()),
        "single_draw_ratio_max": float(single.max()),
        "single_draws_not_rising": int((np.diff(single, axis=1) <= 0).any(axis=1).sum()),
        "max_abs_kl_minus_bound_n_le_4096": float((large.kl - large.kl_bound).abs().max()),
    }


def small_space(g: np.random.Generator) -> dict[str, Any]:
    """|Y| = 10 uniform outputs, n = 64: the exact KL against the bound."""
    df = best_of_n_curve(np.full(10, 0.1), g.standard_normal(10), [64])
    return {"kl": float(df.kl[0]), "bound": float(df.kl_bound[0]), "log_size": float(np.log(10))}


def kl_curves(g: np.random.Generator) -> dict[str, Any]:
    """Exact KL against n for uniform bases of several sizes (the figure's first panel)."""
    return {str(size): best_of_n_curve(np.full(size, 1.0 / size), g.standard_normal(size),
                                       CURVE_NS).kl.tolist() for size in CURVE_SIZES}


def run_seed(seed: int, cases: int, draws: int) -> dict[str, Any]:
    g = np.random.default_rng(seed)
    return {"seed": seed, "bound": bound_slack(g, cases), "tight": tightness(g),
            "ratio": ratio_at_equal_kl(g, draws), "small": small_space(g)}


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Full: 5 seeds, 200 random bases each. Quick: 3 seeds, 60 random bases each. Both
    average the reward ratio over 8 reward draws per seed."""
    seeds = [seed + i for i in range(3 if quick else 5)]
    cases = 60 if quick else 200
    return {"seeds": [run_seed(s, cases, RATIO_DRAWS) for s in seeds], "curve_ns": CURVE_NS,
            "curves": kl_curves(np.random.default_rng(seed)),
            "curve_bound": kl_bound(np.array(CURVE_NS, dtype=float)).tolist()}


def checks(results: dict) -> list[Check]:
    runs = results["seeds"]
    slack = min(r["bound"]["worst"]["slack"] for r in runs)
    gap = max(max(r["tight"]["gaps"]["uniform"]) for r in runs)
    gap_dir = max(max(r["tight"]["gaps"]["dirichlet(1)"]) for r in runs)
    ratios = [np.array(r["ratio"]["ratio"]) for r in runs]
    step = min(float(np.diff(x).min()) for x in ratios)
    kl10 = [r["small"]["kl"] for r in runs]
    return [
        Check("min (log n - (n-1)/n) - KL(pi_bon || pi) over random bases, n, tie rules "
              "(worst seed)", slack, ">=", 0.0,
              "the formula is an upper bound on the exact KL of best-of-n, always"),
        Check("max bound - KL for |Y| = 1000 uniform outputs, n <= 64 (worst seed)", gap, "<",
              0.01, "the bound is nearly tight for a large space and moderate n (with a "
              "uniform base and distinct rewards the gap depends only on |Y| and n)"),
        Check("beyond the card: max bound - KL for |Y| = 1000, n <= 64, a random Dirichlet(1) "
              "base (worst seed)", gap_dir, "<", 0.01,
              "a skewed base loosens the bound; about one Dirichlet(1) draw in 5000 has a gap "
              "above 0.01 at n = 64, so this is reported, not required", required=False),
        Check("lowest BoN / tilt reward-gain ratio at equal KL, n = 2..1024 (worst seed)",
              min(float(x.min()) for x in ratios), ">=", 0.9,
              "best-of-n gets at least 90% of the optimal policy's gain for its KL"),
        Check("highest BoN / tilt reward-gain ratio at equal KL (worst seed)",
              max(float(x.max()) for x in ratios), "<=", 1.0,
              "the tilt is optimal: best-of-n never beats it at equal KL"),
        Check("smallest rise of the ratio from n to 2n, n = 2..1024 (worst seed)", step, ">",
              0.0, "the ratio increases with n"),
        Check("|exact KL - 2.29| for |Y| = 10, n = 64 (worst seed)",
              max(abs(k - 2.29) for k in kl10), "<", 0.005,
              "the card's loose case: the exact KL is 2.29 nats against a bound of 3.17"),
        Check("max |KL - bound| for 50k uniform outputs, n <= 4096 (worst seed)",
              max(r["ratio"]["max_abs_kl_minus_bound_n_le_4096"] for r in runs), "<", 5e-4,
              "the card's [num] note: the formula matches to 3 decimals up to n = 4096"),
    ]


def figure(results: dict) -> go.Figure:
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.16,
                        subplot_titles=(
                            "exact KL of best-of-n, uniform bases of |Y| outputs",
                            "random bases: exact KL against the bound",
                            "reward gain against KL (first seed, 50k outputs)",
                            "BoN / tilt reward gain at equal KL, per seed"))
    ns = results["curve_ns"]
    # (1) KL curves and the bound, with the |Y| = 10 loose point
    for i, (size, kl) in enumerate(results["curves"].items()):
        fig.add_trace(go.Scatter(x=ns, y=kl, mode="lines+markers", name=f"|Y| = {int(size):,}",
                                 line=dict(color=PALETTE[i], width=2)), row=1, col=1)
    fig.add_trace(go.Scatter(x=ns, y=results["curve_bound"], mode="lines",
                             name="log n - (n-1)/n", line=dict(color="#000", dash="dash")),
                  row=1, col=1)
    small = results["seeds"][0]["small"]
    fig.add_trace(go.Scatter(x=[64, 64], y=[small["kl"], small["bound"]], mode="markers+text",
                             text=[f"KL {small['kl']:.3f}", f"bound {small['bound']:.3f}"],
                             textposition="middle left", marker=dict(color="#000", size=9),
                             showlegend=False), row=1, col=1)
    # (2) (bound, KL) over random bases: every point under the diagonal
    pts = np.array(results["seeds"][0]["bound"]["points"])
    fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode="markers", name="random bases",
                             marker=dict(color=PALETTE[4], size=4, opacity=0.5)), row=1, col=2)
    top = float(pts[:, 0].max())
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="KL = bound",
                             line=dict(color="#000", dash="dash"), showlegend=False),
                  row=1, col=2)
    # (3) the tilt's and best-of-n's gains against KL
    r0 = results["seeds"][0]["ratio"]
    fig.add_trace(go.Scatter(x=r0["kl"], y=r0["tilt_gain"], mode="lines+markers",
                             name="exponential tilt (optimal)",
                             line=dict(color=PALETTE[0], width=2)), row=2, col=1)
    fig.add_trace(go.Scatter(x=r0["kl"], y=r0["bon_gain"], mode="markers+text",
                             text=[f"n={n}" for n in r0["ns"]], textposition="bottom right",
                             name="best-of-n", marker=dict(color=PALETTE[1], size=8)),
                  row=2, col=1)
    # (4) ratio per seed
    for j, run in enumerate(results["seeds"]):
        fig.add_trace(go.Scatter(x=run["ratio"]["ns"], y=run["ratio"]["ratio"],
                                 mode="lines+markers", name=f"ratio, seed {run['seed']}",
                                 line=dict(color=PALETTE[(2 + j) % len(PALETTE)], dash="dot")),
                      row=2, col=2)
    for y in (0.9, 1.0):
        fig.add_hline(y=y, line=dict(color="grey", dash="dot"), row=2, col=2)
    fig.update_xaxes(type="log", title_text="n", row=1, col=1)
    fig.update_yaxes(title_text="KL (nats)", row=1, col=1)
    fig.update_xaxes(title_text="log n - (n-1)/n", row=1, col=2)
    fig.update_yaxes(title_text="exact KL", row=1, col=2)
    fig.update_xaxes(title_text="KL (nats)", row=2, col=1)
    fig.update_yaxes(title_text="E[r] - E_pi[r]", row=2, col=1)
    fig.update_xaxes(type="log", title_text="n", row=2, col=2)
    fig.update_yaxes(title_text="ratio", row=2, col=2)
    style_figure(fig, TITLE, height=820)
    fig.update_layout(legend=dict(orientation="h", y=-0.1, x=0, yanchor="top"),
                      margin=dict(t=90, b=120))
    return fig
