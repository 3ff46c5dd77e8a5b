"""ipywidgets dashboards built from rlnb.viz figures.

- :class:`LiveTraining` -- knobs, Start / Pause / Stop and live curves of a training run.
- :class:`PassKExplorer` -- pass@k curves of several models over a chosen k range, and
  the samples behind one problem.
- :class:`RolloutBrowser` -- completions with tokens coloured by entropy or advantage.
- :class:`GridworldExplorer` -- a map, slip and sticky sliders, V* with greedy arrows and
  the effective horizon recomputed live.

Each dashboard displays itself when it ends a notebook cell and keeps its ipywidgets
tree in ``.widget``; nothing here calls ``.show()``.
"""

from rlnb.widgets.gridworld import GridworldExplorer
from rlnb.widgets.live import LIVE_KNOBS, RESTART_KNOBS, LiveTraining
from rlnb.widgets.passk import PassKExplorer
from rlnb.widgets.rollouts import RolloutBrowser, tokens_html

__all__ = [
    "GridworldExplorer",
    "LIVE_KNOBS",
    "RESTART_KNOBS",
    "LiveTraining",
    "PassKExplorer",
    "RolloutBrowser",
    "tokens_html",
]
