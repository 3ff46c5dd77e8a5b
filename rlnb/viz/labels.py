"""Point labels that do not collide: each label goes to the nearest free spot around its point.

Plotly writes a scatter's ``text`` at one fixed ``textposition``, so two points closer than
a label's width print their names on top of each other. :func:`place_labels` solves that in
pixels: it tries spots around each point (above, below, right, left, the diagonals, then
rings further out) and keeps the first whose box overlaps no other label, no marker and
stays in the plot. :func:`add_point_labels` converts a subplot's data to pixels, places the
labels and adds them as annotations, with a thin leader line for a label that had to move
away from its point.

>>> fig = add_point_labels(fig, x=[4.1, 4.2], y=[1e3, 1.1e3], text=["lock4", "corridor"])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = ["add_point_labels", "label_size", "place_labels"]

#: Width of an average character, as a fraction of the font size (Inter/Helvetica/Arial,
#: lower case and digits; generous, so that estimated boxes contain the drawn text).
CHAR_WIDTH = 0.62
#: Width and height, in pixels, the figure is laid out at when its layout sets none: the
#: size :func:`rlnb.viz.write_png` renders at.
DEFAULT_SIZE = (900, 520)

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, y down


def label_size(text: str, font_size: float = 10) -> tuple[float, float]:
    """Estimated ``(width, height)`` in pixels of ``text`` drawn at ``font_size``, with a
    pixel of padding each side."""
    return CHAR_WIDTH * font_size * len(text) + 2, 1.3 * font_size + 2


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _box_distance(box: Box, point: tuple[float, float]) -> float:
    dx = max(box[0] - point[0], 0.0, point[0] - box[2])
    dy = max(box[1] - point[1], 0.0, point[1] - box[3])
    return math.hypot(dx, dy)


def _segment_distance(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> float:
    (ax, ay), (bx, by), (px, py) = a, b, p
    length2 = (bx - ax) ** 2 + (by - ay) ** 2
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * (bx - ax) + (py - ay) * (by - ay)) / length2))
    return math.hypot(px - ax - t * (bx - ax), py - ay - t * (by - ay))


def _leader_blocked(point: tuple[float, float], box: Box, others: list[tuple[float, float]],
                    labels: list[Box], clearance: float) -> bool:
    """Whether the leader line from ``point`` to ``box``'s centre passes another marker (within
    ``clearance``) or crosses another label."""
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    if any(_segment_distance(point, centre, p) < clearance for p in others):
        return True
    steps = max(2, int(math.dist(point, centre) / 2))
    for k in range(steps + 1):
        t = k / steps
        q = (point[0] + t * (centre[0] - point[0]), point[1] + t * (centre[1] - point[1]))
        if any(b[0] <= q[0] <= b[2] and b[1] <= q[1] <= b[3] for b in labels):
            return True
    return False


def _outside(box: Box, bounds: Box | None) -> float:
    """Area of ``box`` that lies outside ``bounds``."""
    if bounds is None:
        return 0.0
    area = (box[2] - box[0]) * (box[3] - box[1])
    return area - _overlap(box, bounds)


# Ring 0, in order of preference: above, below, right, left, then the four diagonals.
_FIRST = [(0, -1), (0, 1), (1, 0), (-1, 0), (1, -1), (-1, -1), (1, 1), (-1, 1)]


def _candidates(w: float, h: float, radius: float, gap: float, rings: int):
    """Offsets (dx, dy) of a label's centre, nearest first; ring 0 touches the marker."""
    for ring in range(rings):
        reach = radius + gap + ring * (h + gap)
        directions = _FIRST if ring == 0 else [
            (math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, 3 * math.pi / 2, 16,
                                                            endpoint=False)]
        for cx, cy in directions:
            yield ring, (cx * (reach + w / 2), cy * (reach + h / 2))


def place_labels(
    points: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    *,
    marker_radius: float = 6.0,
    bounds: Box | None = None,
    gap: float = 2.0,
    rings: int = 10,
) -> list[tuple[float, float, int]]:
    """Where to put each point's label so that no two labels overlap.

    ``points`` are pixel positions (x right, y *down*, as on screen), ``sizes`` each label's
    ``(width, height)`` in pixels (:func:`label_size`), ``bounds`` the plot area
    ``(left, top, right, bottom)`` the labels must stay in. Returns, per point, the offset
    ``(dx, dy)`` of its label's centre from the point and the ring it came from (0: touching
    the marker; higher: further out, worth a leader line).

    Deterministic: the most crowded points choose first, each takes the first free spot in
    the order above, below, right, left, diagonals, then rings further out. A spot is free
    when its box overlaps no placed label and no marker (a square of side
    ``2 * marker_radius``) and lies inside ``bounds``; among free spots, the first that is
    also unambiguous wins: a label touching its marker must be nearer its own point than
    any other, a label further out gets a leader line that must pass no other marker or
    label. If ``rings`` rings hold no free spot, the spot with the least overlap is taken;
    pass more rings (or a larger figure) then.

    Two points 4 px apart: a label above or below either would sit as near the other
    point, so they go to the outer sides, each beside its own point:

    >>> place_labels([(100, 100), (104, 100)], [(40, 14), (40, 14)])
    [(-28.0, 0.0, 0), (28.0, 0.0, 0)]
    """
    if len(points) != len(sizes):
        raise ValueError(f"{len(points)} points but {len(sizes)} label sizes: give one size per point")
    pts = [(float(x), float(y)) for x, y in points]
    markers = [(x - marker_radius, y - marker_radius, x + marker_radius, y + marker_radius)
               for x, y in pts]
    # crowding: other points within two label widths, nearer ones counting more; the most
    # crowded choose first, while the spots around them are still free
    def crowding(i: int) -> float:
        reach = 2 * max(sizes[i])
        return sum(max(0.0, 1 - math.dist(pts[i], p) / reach) for j, p in enumerate(pts) if j != i)

    order = sorted(range(len(pts)), key=lambda i: (-crowding(i), i))
    placed: dict[int, Box] = {}
    result: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(pts)
    for i in order:
        (x, y), (w, h) = pts[i], sizes[i]
        best = None
        for ring, (dx, dy) in _candidates(w, h, marker_radius, gap, rings):
            box = (x + dx - w / 2, y + dy - h / 2, x + dx + w / 2, y + dy + h / 2)
            overlap = (sum(_overlap(box, other) for other in placed.values())
                       + sum(_overlap(box, m) for j, m in enumerate(markers) if j != i)
                       + _overlap(box, markers[i]) + _outside(box, bounds))
            if ring == 0:  # no leader line: the label must sit nearer its point than any other
                own = _box_distance(box, (x, y))
                ambiguous = any(_box_distance(box, p) <= own for j, p in enumerate(pts) if j != i)
            else:  # a leader line says whose label it is, if it passes no other marker or label
                ambiguous = _leader_blocked((x, y), box, [p for j, p in enumerate(pts) if j != i],
                                            list(placed.values()), marker_radius + gap + 2)
            cost = (overlap, ambiguous)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ring, box)
            if cost == (0, False):
                break
        _, dx, dy, ring, box = best
        placed[i] = box
        result[i] = (float(round(dx, 6)) + 0.0, float(round(dy, 6)) + 0.0, ring)
    return result


# --- on a plotly figure --------------------------------------------------------------


def _axis_range(axis, values: np.ndarray, log: bool) -> tuple[float, float]:
    """The axis range in plotly's units (log10 for a log axis); pads the data's if unset."""
    if axis.range is not None:
        return float(axis.range[0]), float(axis.range[1])
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.08 * (hi - lo) if hi > lo else (0.5 if log else max(abs(lo) * 0.1, 1.0))
    return lo - pad, hi + pad


def add_point_labels(
    fig: go.Figure,
    x: Sequence[float],
    y: Sequence[float],
    text: Sequence[str],
    *,
    row: int | None = None,
    col: int | None = None,
    font_size: float = 10,
    color: str = "#222",
    marker_size: float = 11,
    leader_color: str = "#777777",
) -> go.Figure:
    """Label the points ``(x, y)`` of one subplot with ``text``, no two labels overlapping.

    Call it last, once the figure's height, margins and axis ranges are final: the labels
    are placed in pixels, for the figure's ``layout.width``/``height`` (900 x 520, the size
    :func:`rlnb.viz.write_png` renders at, when the layout sets none). An axis without a
    ``range`` gets one, the data's padded by 8%, so the placement and the drawing agree.
    Labels that had to move away from their point get a thin leader line. Returns ``fig``.

    The footgun: a figure shown much narrower than it was laid out for can bring labels
    together again; keep each point's name in its hover text too.
    """
    if not (len(x) == len(y) == len(text)):
        raise ValueError(f"x, y and text must have one entry per point; got {len(x)}, {len(y)}, "
                         f"{len(text)}")
    keep = [i for i in range(len(x)) if np.isfinite(float(x[i])) and np.isfinite(float(y[i]))]
    x, y, text = [x[i] for i in keep], [y[i] for i in keep], [text[i] for i in keep]
    if not keep:  # a point at inf or NaN is not drawn, so it gets no label
        return fig
    if row is None:
        xaxis, yaxis, xref, yref = fig.layout.xaxis, fig.layout.yaxis, "x", "y"
    else:
        sub = fig.get_subplot(row, col)
        xaxis, yaxis = sub.xaxis, sub.yaxis
        xref, yref = xaxis.plotly_name.replace("axis", ""), yaxis.plotly_name.replace("axis", "")
    coords = []
    for axis, values in ((xaxis, x), (yaxis, y)):
        if axis.type == "category":
            raise ValueError("add_point_labels places labels on numeric axes; this axis is categorical")
        log = axis.type == "log"
        vals = np.asarray(values, dtype=float)
        if log:
            if np.any(vals <= 0):
                raise ValueError("a log axis cannot place a label at a value <= 0")
            vals = np.log10(vals)
        lo, hi = _axis_range(axis, vals, log)
        if axis.range is None:
            axis.range = [lo, hi]
        coords.append((vals, lo, hi))
    width = fig.layout.width or DEFAULT_SIZE[0]
    height = fig.layout.height or DEFAULT_SIZE[1]
    template_margin = fig.layout.template.layout.margin if fig.layout.template else None
    margin = {k: (getattr(fig.layout.margin, k) if getattr(fig.layout.margin, k) is not None
                  else getattr(template_margin, k, None) if template_margin else None)
              for k in ("l", "r", "t", "b")}
    margin = {k: 80 if v is None else v for k, v in margin.items()}  # plotly's own default
    plot_w, plot_h = width - margin["l"] - margin["r"], height - margin["t"] - margin["b"]
    xd = xaxis.domain or (0, 1)
    yd = yaxis.domain or (0, 1)
    left, right = margin["l"] + xd[0] * plot_w, margin["l"] + xd[1] * plot_w
    top, bottom = margin["t"] + (1 - yd[1]) * plot_h, margin["t"] + (1 - yd[0]) * plot_h
    (xv, x0, x1), (yv, y0, y1) = coords
    px = left + (xv - x0) / (x1 - x0) * (right - left)
    py = bottom - (yv - y0) / (y1 - y0) * (bottom - top)
    sizes = [label_size(str(t), font_size) for t in text]
    spots = place_labels(list(zip(px, py)), sizes, marker_radius=marker_size / 2 + 1,
                         bounds=(left, top, right, bottom))
    for xi, yi, label, (dx, dy, ring) in zip(xv, yv, text, spots):
        common = dict(x=xi, y=yi, xref=xref, yref=yref, text=str(label),
                      font=dict(size=font_size, color=color))
        if ring == 0:
            fig.add_annotation(**common, showarrow=False, xshift=dx, yshift=-dy)
        else:
            fig.add_annotation(**common, showarrow=True, ax=dx, ay=dy, arrowhead=0,
                               arrowwidth=1, arrowcolor=leader_color, standoff=marker_size / 2 + 1)
    return fig
