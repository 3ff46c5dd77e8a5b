"""``BestOfNExplorer``: move n and the proxy's noise, watch gold, proxy and KL of best-of-n.

Over a fixed sample of outputs (a gold reward ``~ N(0, 1)`` each, and one Student-t noise
draw each), the proxy is ``gold + noise_scale * noise``: card 12's toy
(:func:`rlnb.probes.bon.goodhart_rewards`, same draws for the same seed). Best-of-n picks
by the proxy. Every number is exact (:func:`rlnb.probes.bon.best_of_n_curve`: order
statistics, no sampling of the n draws), so a slider move recomputes in milliseconds. The
draws are made once; the curve of each noise scale is cached.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rlnb.probes.bon import best_of_n_curve, kl_bound
from rlnb.viz.training import PALETTE, style_figure
from rlnb.widgets.display import bundle

__all__ = ["BestOfNExplorer"]

_GOLD, _PROXY, _KL, _BOUND = PALETTE[0], PALETTE[1], PALETTE[2], "#000000"


class BestOfNExplorer:
    """Sliders for n (1 .. ``max_n``, powers of two) and the proxy's noise scale; three
    panels: the gold reward and the proxy reward of best-of-n against ``d = sqrt(KL)``,
    and the exact KL of best-of-n against its bound ``log n - (n - 1)/n``, each with a
    marker at the chosen n.

    Args:
        num_outputs: size of the output space (card 12: 50,000).
        n: the n marked first (a power of two in 1 .. ``max_n``).
        noise_scale: the proxy noise scale first shown (card 12: 0.5).
        noise_df: degrees of freedom of the Student-t noise (1.5: infinite variance).
        seed: seeds the draws (``np.random.default_rng(seed)``: gold, then the noise).
        probs: ``(num_outputs,)`` base policy; default uniform.
        max_n: the largest n, a power of two.
        max_noise: the noise slider's upper end.

    Attributes: ``n`` (SelectionSlider), ``noise`` (FloatSlider), ``figure``
    (FigureWidget), ``status`` (HTML), ``widget`` (the whole explorer), ``curve`` (the
    :func:`best_of_n_curve` frame on display, one row per n, with ``proxy`` and ``gold``),
    ``point`` (its row at the chosen n).

    >>> ex = BestOfNExplorer(num_outputs=1000, n=4)
    >>> ex.n.value = 64                 # moves the markers, recomputes nothing
    >>> ex.noise.value = 0.0            # proxy = gold: no over-optimisation
    >>> bool((ex.curve["gold"] == ex.curve["proxy"]).all())
    True

    Footgun: with a uniform base policy and distinct proxy values the KL depends on n and
    the number of outputs only, not on the noise; the noise moves which outputs win, not
    how far best-of-n moves from the base policy.
    """

    def __init__(self, num_outputs: int = 50_000, *, n: int = 16, noise_scale: float = 0.5,
                 noise_df: float = 1.5, seed: int = 0, probs: Any = None, max_n: int = 4096,
                 max_noise: float = 2.0) -> None:
        if int(num_outputs) != num_outputs or num_outputs < 2:
            raise ValueError(f"num_outputs must be an integer >= 2, got {num_outputs!r}")
        if int(max_n) != max_n or max_n < 1 or int(max_n) & (int(max_n) - 1):
            raise ValueError(f"max_n must be a power of two (e.g. 4096), got {max_n!r}")
        self.ns = [2**i for i in range(int(max_n).bit_length())]  # 1, 2, 4, ..., max_n
        if n not in self.ns:
            raise ValueError(f"n must be a power of two in 1..{max_n} (the slider's stops), "
                             f"got {n!r}")
        if not 0 <= noise_scale <= max_noise:
            raise ValueError(f"noise_scale must lie in [0, max_noise = {max_noise}], got "
                             f"{noise_scale!r}")
        if not noise_df > 0:
            raise ValueError(f"noise_df must be > 0 (Student-t degrees of freedom), got {noise_df!r}")
        # --- the draws: made once, what no slider changes -------------------------------
        g = np.random.default_rng(seed)
        self.gold = g.standard_normal(int(num_outputs))              # (Y,)
        self.noise_draw = g.standard_t(noise_df, int(num_outputs))   # (Y,) unit scale
        if probs is None:
            self.probs = np.full(int(num_outputs), 1.0 / num_outputs)
        else:
            self.probs = np.asarray(probs, dtype=np.float64).ravel()
            if self.probs.size != num_outputs:
                raise ValueError(f"probs has {self.probs.size} outputs but num_outputs is "
                                 f"{num_outputs}: one base probability per output")
        self.noise_df = float(noise_df)
        self._curves: dict[float, pd.DataFrame] = {}
        self.curve = pd.DataFrame()
        self.point: pd.Series = pd.Series(dtype=float)

        self.n = W.SelectionSlider(options=[(str(k), k) for k in self.ns], value=n,
                                   description="n", continuous_update=True,
                                   layout=W.Layout(width="420px"))
        self.noise = W.FloatSlider(value=noise_scale, min=0.0, max=max_noise, step=0.05,
                                   description="proxy noise", readout_format=".2f",
                                   continuous_update=False, style={"description_width": "80px"},
                                   layout=W.Layout(width="360px"))
        self.status = W.HTML()
        self.figure = self._empty_figure()
        self.widget = W.VBox([W.HBox([self.n, self.noise]), self.status, self.figure])
        self.n.observe(lambda _: self._update_point(), names="value")
        self.noise.observe(lambda _: self._update_curve(), names="value")
        self._update_curve()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return bundle(self.widget, [self.figure], **kwargs)  # figures with their full state

    # --- computation ---------------------------------------------------------------------
    def proxy(self, noise_scale: float | None = None) -> np.ndarray:
        """``(Y,)`` the proxy reward at ``noise_scale`` (default the slider's)."""
        s = self.noise.value if noise_scale is None else noise_scale
        return self.gold + s * self.noise_draw

    def curve_at(self, noise_scale: float) -> pd.DataFrame:
        """Best-of-n at every n of the slider, picking by the proxy at ``noise_scale``:
        columns ``n, kl, d, kl_bound, proxy, gold`` (cached per noise scale)."""
        key = round(float(noise_scale), 10)
        if key not in self._curves:
            self._curves[key] = best_of_n_curve(
                self.probs, self.proxy(noise_scale), self.ns,
                values={"gold": self.gold}).rename(columns={"reward": "proxy"})
        return self._curves[key]

    # --- figure --------------------------------------------------------------------------
    def _empty_figure(self) -> go.FigureWidget:
        fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
            "gold reward of the pick", "proxy reward of the pick (what is maximised)",
            "KL(π_bon ‖ π) and its bound"))
        line = dict(mode="lines+markers", marker=dict(size=5))
        fig.add_trace(go.Scatter(name="gold", line=dict(color=_GOLD, width=2), **line), 1, 1)
        fig.add_trace(go.Scatter(name="proxy", line=dict(color=_PROXY, width=2), **line), 1, 2)
        fig.add_trace(go.Scatter(name="exact KL", line=dict(color=_KL, width=2), **line), 1, 3)
        fig.add_trace(go.Scatter(name="log n − (n−1)/n", mode="lines",
                                 line=dict(color=_BOUND, dash="dash")), 1, 3)
        for color, col in ((_GOLD, 1), (_PROXY, 2), (_KL, 3)):
            fig.add_trace(go.Scatter(mode="markers", showlegend=False, name="chosen n",
                                     marker=dict(size=13, color=color, symbol="circle-open",
                                                 line=dict(width=3))), 1, col)
        for col in (1, 2):
            fig.update_xaxes(title_text="d = sqrt(KL) from the base policy", row=1, col=col)
        fig.update_xaxes(title_text="n (log scale)", type="log", row=1, col=3)
        fig.update_yaxes(title_text="gold reward", row=1, col=1)
        fig.update_yaxes(title_text="proxy reward", row=1, col=2)
        fig.update_yaxes(title_text="KL in nats", row=1, col=3)
        style_figure(fig, "Best-of-n by a noisy proxy, scored by the gold reward (exact)",
                     height=420)
        fig.update_layout(width=1150, hovermode="closest", margin=dict(t=115),
                          legend=dict(y=1.16))  # above the panel titles
        return go.FigureWidget(fig)

    def _update_curve(self) -> None:
        self.curve = self.curve_at(self.noise.value)
        c = self.curve
        with self.figure.batch_update():
            gold, proxy, kl, bound = self.figure.data[:4]
            gold.x, gold.y = c["d"].to_numpy(), c["gold"].to_numpy()
            proxy.x, proxy.y = c["d"].to_numpy(), c["proxy"].to_numpy()
            kl.x, kl.y = c["n"].to_numpy(), c["kl"].to_numpy()
            bound.x, bound.y = c["n"].to_numpy(), kl_bound(c["n"].to_numpy())
        self._update_point()

    def _update_point(self) -> None:
        n = self.n.value
        self.point = p = self.curve.set_index("n").loc[n]
        with self.figure.batch_update():
            g, q, k = self.figure.data[4:7]
            g.x, g.y = [p["d"]], [p["gold"]]
            q.x, q.y = [p["d"]], [p["proxy"]]
            k.x, k.y = [n], [p["kl"]]
        peak = int(self.curve.loc[self.curve["gold"].idxmax(), "n"])
        self.status.value = (
            "<div style='font-family:monospace;font-size:13px;margin:4px 0'>"
            f"n = <b>{n}</b> · KL = <b>{p['kl']:.3f}</b> nats (bound {p['kl_bound']:.3f}) · "
            f"d = sqrt(KL) = {p['d']:.3f} · "
            f"<span style='color:{_GOLD}'>gold {p['gold']:.3f}</span> · "
            f"<span style='color:{_PROXY}'>proxy {p['proxy']:.3f}</span> · "
            f"gold peaks at n = {peak} · noise {html.escape(f'{self.noise.value:.2f}')} · "
            f"t<sub>{self.noise_df:g}</sub> · {self.gold.size:,} outputs</div>")
