"""``PreferenceGameExplorer``: move the rock-paper-scissors margins of card 19's game and
watch the exploitability of a reward model, of Nash-MD and of self-play, recomputed live.

The game is :meth:`rlnb.envs.PreferenceGame.cyclic` (K outputs: a cycle among 0, 1, 2 and
the rest dominated by all three) with the three cycle margins set by the sliders and every
other entry kept from the seed's game. Every number is exact: the minimax winner from a
linear programme (:func:`rlnb.algos.minimax_winner`), Nash-MD's last iterate
(:func:`rlnb.algos.nash_md_trace`), exact SPO's last and average iterates
(:func:`rlnb.algos.spo_hedge_trace`) and the Bradley–Terry + KL-RL policy
(:func:`rlnb.algos.bradley_terry_policy`, fitted on sampled comparisons of a fixed seed).
A slider move recomputes in well under a second.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from rlnb.algos import (
    bradley_terry_policy,
    exploitability,
    minimax_winner,
    nash_md_trace,
    spo_hedge_trace,
)
from rlnb.envs import PreferenceGame
from rlnb.viz.training import PALETTE, style_figure
from rlnb.widgets.display import bundle

__all__ = ["PreferenceGameExplorer"]

_NASH, _SPO, _BT, _WINNER = PALETTE[0], PALETTE[1], PALETTE[3], "#000000"


class PreferenceGameExplorer:
    """Three margin sliders (how much output i beats output i + 1 mod 3 above a tie) and a
    Nash-MD beta slider; two panels: exploitability ``max_y P(y beats pi) - 1/2`` along the
    iterations (Nash-MD's last iterate, SPO's last and average iterates, the BT + KL-RL
    policy as a level), and the policies over the outputs next to the minimax winner.

    Args:
        num_outputs: K (card 19: 7).
        seed: the game (:meth:`PreferenceGame.cyclic`) and the BT comparisons.
        margins: the three cycle margins first shown (default: the seed's own draws).
        nash_beta, nash_eta: Nash-MD's KL weight and step (card 19: 0.02, 0.1).
        hedge_eta: SPO's Hedge step (card 19: 1).
        kl_beta: the KL weight of the reward-model route (card 19: 0.05).
        bt_pairs: comparisons the Bradley-Terry model is fitted on (card 19: 5000).
        steps: exact iterations (card 19: 3000); ``every``: iterations between points.

    Attributes: ``margins`` (three FloatSliders), ``nash_beta`` (FloatLogSlider),
    ``figure`` (FigureWidget), ``status`` (HTML), ``widget`` (the whole explorer),
    ``game`` (the :class:`PreferenceGame` on display) and ``result`` (a dict: the
    exploitability of each method's final policy, the policies, the traces).

    >>> ex = PreferenceGameExplorer(steps=400, bt_pairs=500)
    >>> ex.result["nash_md"] < ex.result["bradley_terry"]
    True
    >>> for s in ex.margins:
    ...     s.value = 0.0                   # no cycle left: the game is transitive
    >>> ex.result["bradley_terry"] < 0.05   # a reward represents it again
    True
    """

    def __init__(self, num_outputs: int = 7, *, seed: int = 0,
                 margins: tuple[float, float, float] | None = None, nash_beta: float = 0.02,
                 nash_eta: float = 0.1, hedge_eta: float = 1.0, kl_beta: float = 0.05,
                 bt_pairs: int = 5000, steps: int = 3000, every: int = 50) -> None:
        base = PreferenceGame.cyclic(num_outputs, seed, margins=margins)  # checks its input
        if not (int(steps) == steps and steps >= every >= 1):
            raise ValueError(f"need steps >= every >= 1, got steps={steps!r}, every={every!r}")
        if not (nash_beta > 0 and nash_eta > 0 and nash_eta * nash_beta < 1):
            raise ValueError(f"need nash_beta > 0, nash_eta > 0 and nash_eta * nash_beta < 1, got "
                             f"nash_beta={nash_beta!r}, nash_eta={nash_eta!r}")
        P = base.preference
        first = [float(P[i, (i + 1) % 3] - 0.5) for i in range(3)]
        self.num_outputs, self.seed = int(num_outputs), int(seed)
        self.nash_eta, self.hedge_eta, self.kl_beta = nash_eta, hedge_eta, kl_beta
        self.bt_pairs, self.steps, self.every = int(bt_pairs), int(steps), int(every)
        self.game = base
        self.result: dict[str, Any] = {}

        names = ("0 beats 1 by", "1 beats 2 by", "2 beats 0 by")
        self.margins = [W.FloatSlider(value=round(v, 3), min=0.0, max=0.5, step=0.01,
                                      description=n, readout_format=".2f",
                                      continuous_update=False,
                                      style={"description_width": "90px"},
                                      layout=W.Layout(width="300px"))
                        for n, v in zip(names, first)]
        self.nash_beta = W.FloatLogSlider(value=nash_beta, base=10, min=-3, max=-0.5, step=0.05,
                                          description="Nash-MD β", readout_format=".3f",
                                          continuous_update=False,
                                          style={"description_width": "80px"},
                                          layout=W.Layout(width="300px"))
        self.status = W.HTML()
        self.figure = self._empty_figure()
        self.widget = W.VBox([W.HBox(self.margins), W.HBox([self.nash_beta]), self.status,
                              self.figure])
        for s in (*self.margins, self.nash_beta):
            s.observe(lambda _: self.update(), names="value")
        self.update()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return bundle(self.widget, [self.figure], **kwargs)  # figures with their full state

    # --- computation ---------------------------------------------------------------------
    def compute(self, margins: tuple[float, float, float], nash_beta: float) -> dict[str, Any]:
        """Every method on the seed's game with these cycle margins (no widget involved)."""
        game = PreferenceGame.cyclic(self.num_outputs, self.seed, margins=margins)
        P = game.preference
        k = P.shape[0]
        winner = minimax_winner(P)
        nash, nash_pi = nash_md_trace(P, beta=nash_beta, eta=self.nash_eta, steps=self.steps,
                                      every=self.every)
        spo = spo_hedge_trace(P, eta=self.hedge_eta, steps=self.steps, every=self.every)
        bt_pi, scores = bradley_terry_policy(P, pairs=self.bt_pairs, beta=self.kl_beta,
                                             generator=torch.Generator().manual_seed(self.seed))
        return {
            "game": game,
            "iterations": (np.arange(len(nash)) * self.every).tolist(),
            "winner": winner.tolist(),
            "uniform": exploitability(torch.full((k,), 1.0 / k, dtype=torch.float64), P),
            "nash_md": nash[-1], "nash_md_trace": nash, "nash_md_pi": nash_pi.tolist(),
            "spo_last": spo["last"][-1], "spo_average": spo["average"][-1],
            "spo_trace": {"last": spo["last"], "average": spo["average"]},
            "spo_average_pi": spo["average_pi"].tolist(),
            "bradley_terry": exploitability(bt_pi, P), "bradley_terry_pi": bt_pi.tolist(),
            "bradley_terry_scores": scores.tolist(),
        }

    def update(self) -> None:
        """Recompute for the sliders' values and redraw."""
        r = self.compute(tuple(s.value for s in self.margins), self.nash_beta.value)
        self.game = r.pop("game")
        self.result = r
        x = r["iterations"]
        with self.figure.batch_update():
            nash, spo_last, spo_avg, bt, uni = self.figure.data[:5]
            nash.x, nash.y = x, r["nash_md_trace"]
            spo_last.x, spo_last.y = x, r["spo_trace"]["last"]
            spo_avg.x, spo_avg.y = x, r["spo_trace"]["average"]
            bt.x, bt.y = [x[0], x[-1]], [r["bradley_terry"]] * 2
            uni.x, uni.y = [x[0], x[-1]], [r["uniform"]] * 2
            outputs = [str(i) for i in range(self.num_outputs)]
            for trace, key in zip(self.figure.data[5:], ("winner", "nash_md_pi",
                                                         "spo_average_pi", "bradley_terry_pi")):
                trace.x, trace.y = outputs, r[key]
        cycle = " · ".join(f"{i} beats {(i + 1) % 3} with P = {0.5 + s.value:.2f}"
                           for i, s in enumerate(self.margins))
        self.status.value = (
            "<div style='font-family:monospace;font-size:13px;margin:4px 0'>"
            f"{html.escape(cycle)}<br>exploitability after {self.steps} exact iterations: "
            f"<span style='color:{_NASH}'>Nash-MD (β = {self.nash_beta.value:.3f}) "
            f"<b>{r['nash_md']:.3f}</b></span> · "
            f"<span style='color:{_SPO}'>SPO average <b>{r['spo_average']:.3f}</b>, last "
            f"{r['spo_last']:.3f}</span> · <span style='color:{_BT}'>BT + KL-RL "
            f"<b>{r['bradley_terry']:.3f}</b></span> (mass {max(r['bradley_terry_pi']):.2f} on "
            f"output {int(np.argmax(r['bradley_terry_pi']))}) · uniform {r['uniform']:.3f}</div>")

    # --- figure --------------------------------------------------------------------------
    def _empty_figure(self) -> go.FigureWidget:
        fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.1,
                            subplot_titles=("exploitability: max_y P(y beats π) − 1/2",
                                            "the policies over the outputs"))
        fig.add_trace(go.Scatter(name="Nash-MD, last iterate", mode="lines",
                                 line=dict(color=_NASH, width=2)), 1, 1)
        fig.add_trace(go.Scatter(name="SPO, last iterate (cycles)", mode="lines",
                                 line=dict(color=_SPO, width=1, dash="dot")), 1, 1)
        fig.add_trace(go.Scatter(name="SPO, average iterate", mode="lines",
                                 line=dict(color=_SPO, width=2)), 1, 1)
        fig.add_trace(go.Scatter(name="Bradley-Terry + KL-RL", mode="lines",
                                 line=dict(color=_BT, width=2, dash="dash")), 1, 1)
        fig.add_trace(go.Scatter(name="uniform policy", mode="lines",
                                 line=dict(color="#888888", width=1, dash="dot")), 1, 1)
        for name, color in (("minimax winner (LP)", _WINNER), ("Nash-MD", _NASH),
                            ("SPO average", _SPO), ("BT + KL-RL", _BT)):
            fig.add_trace(go.Bar(name=name, marker_color=color, showlegend=False,
                                 hovertemplate=f"{name}<br>output %{{x}}: %{{y:.3f}}<extra></extra>"),
                          1, 2)
        fig.update_xaxes(title_text="exact iteration", row=1, col=1)
        fig.update_yaxes(rangemode="tozero", row=1, col=1)
        fig.update_xaxes(title_text="output (0, 1, 2: the cycle)", type="category", row=1, col=2)
        fig.update_yaxes(title_text="probability", range=[0, 1], row=1, col=2)
        style_figure(fig, "A preference cycle: reward model vs Nash-MD vs self-play (exact)",
                     height=430)
        fig.update_layout(width=1150, barmode="group", margin=dict(t=115),
                          legend=dict(orientation="h", y=1.17))  # above the panel titles
        return go.FigureWidget(fig)
