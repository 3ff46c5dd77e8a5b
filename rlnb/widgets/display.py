"""Displaying a dashboard that holds plotly ``FigureWidget``s.

A ``FigureWidget`` changed after it was built (traces added, the layout edited) tells the
browser through messages that the page drops if they land before the widget's code has
loaded there: the figure then shows empty, default axes -- sometimes, depending on
timing. plotly guards against this only when the figure itself is displayed, by copying
its whole state into the widget model in ``FigureWidget._repr_mimebundle_``; a figure
inside an ipywidgets box never gets that call. :func:`bundle` makes it for each figure of
a dashboard, then displays the dashboard's box; :func:`sync_state` makes it for a figure
put into a box already on the page.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

__all__ = ["bundle", "sync_state"]


def bundle(widget: W.Widget, figures: Iterable[go.FigureWidget], **kwargs: Any) -> Any:
    """``widget``'s display bundle, once every figure's full state is in its widget model.

    >>> fig = go.FigureWidget()
    >>> _ = fig.add_scatter(y=[1, 2])   # sent as a message only
    >>> len(fig._widget_data)
    0
    >>> _ = bundle(W.VBox([fig]), [fig])
    >>> len(fig._widget_data)           # now part of the model's state
    1
    """
    for figure in figures:
        sync_state(figure)
    return widget._repr_mimebundle_(**kwargs)


def sync_state(figure: go.FigureWidget) -> go.FigureWidget:
    """Copy ``figure``'s whole layout and data into its widget model (what plotly does when
    the figure itself is displayed) and return it."""
    figure._repr_mimebundle_()
    return figure
