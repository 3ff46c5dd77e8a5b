"""ipywidgets dashboards built from rlnb.viz figures.

- :class:`LiveTraining` -- knobs, Start / Pause / Stop and live curves of a training run.
- :class:`PassKExplorer` -- pass@k curves of several models over a chosen k range, and
  the samples behind one problem.
- :class:`RolloutBrowser` -- completions with tokens coloured by entropy or advantage.
- :class:`GridworldExplorer` -- a map, slip and sticky sliders, V* with greedy arrows and
  the effective horizon recomputed live.
- :class:`InterventionExplorer` -- an entropy intervention, the slider of its knob, a short
  Trainer run drawn over the baseline's entropy and reward (notebook 06).
- :class:`BestOfNExplorer` -- n and the proxy's noise; gold and proxy reward of best-of-n
  against sqrt(KL), its exact KL against log n - (n-1)/n (notebook 08).
- :class:`PreferenceGameExplorer` -- the margins of card 19's preference cycle; the
  exploitability of a reward model, Nash-MD and self-play recomputed live (notebook 10).
- :class:`HiddenStatesExplorer` -- a layer and a checkpoint of computed rank and probe
  results (notebook 04).

Each dashboard displays itself when it ends a notebook cell and keeps its ipywidgets
tree in ``.widget``; nothing here calls ``.show()``.
"""

from rlnb.widgets.best_of_n import BestOfNExplorer
from rlnb.widgets.gridworld import GridworldExplorer
from rlnb.widgets.hidden_states import HiddenStatesExplorer
from rlnb.widgets.interventions import InterventionExplorer
from rlnb.widgets.live import LIVE_KNOBS, RESTART_KNOBS, LiveTraining
from rlnb.widgets.passk import PassKExplorer
from rlnb.widgets.preferences import PreferenceGameExplorer
from rlnb.widgets.rollouts import RolloutBrowser, tokens_html

__all__ = [
    "BestOfNExplorer",
    "GridworldExplorer",
    "HiddenStatesExplorer",
    "InterventionExplorer",
    "LIVE_KNOBS",
    "RESTART_KNOBS",
    "LiveTraining",
    "PassKExplorer",
    "PreferenceGameExplorer",
    "RolloutBrowser",
    "tokens_html",
]
