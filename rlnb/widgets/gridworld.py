"""A gridworld explorer: pick a map, move the slip and sticky-action sliders, and see
``V*`` with the greedy policy and the effective horizon recomputed live (card 9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from rlnb.envs.gridworld import Gridworld
from rlnb.envs.layouts import LAYOUTS
from rlnb.mdp.horizon import value_iteration
from rlnb.viz.gridworld import effective_horizon_bars, value_heatmap
from rlnb.widgets.display import bundle


class GridworldExplorer:
    """Map dropdown, slip and sticky sliders; a value heatmap with greedy arrows at t = 0,
    the bars of ``H_k = k + log_A m_k`` per k, and a status line (H, the k that attains it,
    the smallest k-QVI-solvable k, V*). Everything is exact: each change rebuilds the
    transition tensors and recomputes value iteration and the effective horizon (well
    under a second on the named maps). The bars are card 9's closed form; tick
    "definition" to add ``H`` by its definition, the rollouts GORP needs
    (:func:`rlnb.mdp.gorp_horizon.gorp_effective_horizon`: a fraction of a second on
    most maps, up to a minute and a half on the maze with slip).

    Args:
        names: the maps offered (default: every named layout).
        name: the map shown first.
        slip: initial slip probability (the agent moves to a random neighbour).
        sticky: initial sticky-action probability (the paper uses 0.25).
        definition: also compute ``H`` by its definition at every change.

    >>> explorer = GridworldExplorer(name="lock3", sticky=0.0)
    >>> explorer.slip.value = 0.1   # recomputes H and both figures
    >>> explorer.horizon.value <= explorer.env.horizon
    True

    Footgun: with slip or sticky actions the card's variance bound is applied as it is;
    it is a heuristic there, not a proven bound (see ``rlnb.mdp.horizon``).
    """

    def __init__(self, names: Sequence[str] | None = None, *, name: str = "open5",
                 slip: float = 0.0, sticky: float = 0.25, definition: bool = False) -> None:
        options = sorted(names if names is not None else LAYOUTS)
        if name not in options:
            raise ValueError(f"name must be one of {options}, got {name!r}")
        self.map = W.Dropdown(options=options, value=name, description="map")
        self.slip = W.FloatSlider(value=slip, min=0.0, max=0.5, step=0.05, description="slip",
                                  continuous_update=False)
        self.sticky = W.FloatSlider(value=sticky, min=0.0, max=0.5, step=0.05,
                                    description="sticky", continuous_update=False)
        self.definition = W.Checkbox(value=definition, description="definition (GORP)",
                                     indent=False)
        self.status = W.HTML()
        self._figures = W.HBox()
        self.widget = W.VBox([W.HBox([self.map, self.slip, self.sticky, self.definition]),
                              self.status, self._figures])
        self.env: Gridworld
        self.horizon: object = None
        self.horizon_gorp: object = None
        for control in (self.map, self.slip, self.sticky, self.definition):
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def update(self) -> None:
        """Rebuild the map with the current settings and redraw."""
        self.env = Gridworld.from_name(self.map.value, slip=self.slip.value,
                                       sticky=self.sticky.value)
        eh = self.env.effective_horizon()
        self.horizon = eh
        Q, V = value_iteration(self.env.mdp())  # Q (T, C, A), V (T + 1, C)
        heat = value_heatmap(self.env.layout(), self.env.grid_view(V[:-1], t=0),
                             self.env.grid_view(Q.argmax(-1), t=0),
                             title=f"{self.map.value}: V* and greedy actions at t = 0")
        bars = effective_horizon_bars(eh.frame(), self.env.horizon,
                                      title=f"H_k per k (H = {eh.value:.2f} of T = {eh.horizon})")
        for fig in (heat, bars):
            fig.update_layout(width=460, height=400)
        self._figures.children = [go.FigureWidget(heat), go.FigureWidget(bars)]
        attained = (f"attained at k = {eh.k}" if eh.k is not None else
                    "capped at T: no k gives a smaller H")
        solvable = (f"smallest solvable k = {eh.min_k}" if eh.min_k is not None else
                    "no k up to T is solvable")
        status = (
            f"<b>{self.map.value}</b> · slip {self.slip.value:.2f} · sticky "
            f"{self.sticky.value:.2f} · effective horizon <b>H = {eh.value:.3f}</b> of "
            f"T = {eh.horizon} ({attained}; {solvable}) · "
            f"V* = {float(self.env.optimal_value()[0]):.3f}"
        )
        self.horizon_gorp = None
        if self.definition.value:
            self.status.value = status + " · <i>computing H by its definition…</i>"
            self.horizon_gorp = eg = self.env.effective_horizon(method="gorp", progress=False)
            status += (f" · by its definition (rollouts GORP needs) <b>H = {eg.value:.3f}</b>"
                       + (f" (k = {eg.k})" if eg.k is not None else ""))
        self.status.value = status

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return bundle(self.widget, self._figures.children, **kwargs)
