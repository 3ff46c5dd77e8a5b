"""Figures have the traces and axes they promise; export writes real files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import rlnb.viz
from rlnb.probes import pass_at_k_curve
from rlnb.viz import (
    PALETTE,
    add_point_labels,
    decade_ticks,
    find_chromium,
    format_number,
    format_tick,
    passk_curves,
    place_labels,
    styled_table,
    training_curves,
    write_html,
    write_png,
)
from rlnb.viz import export as export_mod
from rlnb.viz.labels import label_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium found (apt-get install chromium): PNG export cannot be tested",
)


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    """Fail any test in which library code calls Figure.show()."""

    def boom(*args, **kwargs):
        raise AssertionError("library code must not call .show()")

    monkeypatch.setattr(go.Figure, "show", boom)


def make_log(runs=("grpo", "dr_grpo"), seeds=(0, 1, 2), steps=range(0, 50, 10)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for run in runs:
        for seed in seeds:
            for step in steps:
                rows.append((run, seed, step, "reward", step / 50 + rng.normal(0, 0.05)))
                rows.append((run, seed, step, "entropy", 1.5 - step / 50 + rng.normal(0, 0.05)))
    return pd.DataFrame(rows, columns=["run", "seed", "step", "metric", "value"])


def fills(fig: go.Figure) -> list[go.Scatter]:
    return [t for t in fig.data if t.fill == "tonexty"]


def lines(fig: go.Figure) -> list[go.Scatter]:
    return [t for t in fig.data if not t.name.endswith("(band)")]


# --- training curves -----------------------------------------------------------------


def test_training_curves_one_row_per_metric():
    log = make_log(seeds=(0,))
    fig = training_curves(log, ["reward", "entropy"], title="t")
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 2 * 2  # runs x metrics
    assert fig.layout.yaxis.title.text == "reward" and fig.layout.yaxis2.title.text == "entropy"
    assert fig.layout.xaxis.matches == "x2"  # shared x
    assert fig.layout.xaxis2.title.text == "step"
    assert not fills(fig)
    # the legend shows each run once, with one colour per run across rows
    assert [t.name for t in fig.data if t.showlegend] == ["grpo", "dr_grpo"]
    colours = {t.name: t.line.color for t in fig.data}
    assert colours == {"grpo": PALETTE[0], "dr_grpo": PALETTE[1]}
    assert fig.layout.title.text == "t"
    # a single metric may be given as a string; default: all metrics in order
    assert len(training_curves(log, "reward").data) == 2
    assert training_curves(log).layout.yaxis2.title.text == "entropy"


def test_training_curves_band_over_seeds():
    log = make_log()
    fig = training_curves(log, ["reward", "entropy"], band="seed")
    assert len(fills(fig)) == 2 * 2  # one band per run per metric
    assert len(fig.data) == 3 * 2 * 2  # upper edge, lower edge (filled), mean line
    grpo_reward = next(t for t in fig.data if t.name == "grpo" and t.yaxis == "y")
    want = log[(log.run == "grpo") & (log.metric == "reward")].groupby("step")["value"]
    np.testing.assert_allclose(grpo_reward.y, want.mean())
    mm = training_curves(log, "reward", band="seed", band_kind="minmax")
    upper, lower, mean = mm.data[:3]
    np.testing.assert_allclose(upper.y, want.max())
    np.testing.assert_allclose(lower.y, want.min())
    assert lower.fill == "tonexty" and mean.name == "grpo"


def test_training_curves_accepts_wide_frames():
    log = make_log(seeds=(0,))
    wide = log.pivot_table(index=["run", "step"], columns="metric", values="value").reset_index()
    fig_wide = training_curves(wide, ["reward", "entropy"])
    fig_tidy = training_curves(log, ["reward", "entropy"])
    def by_key(fig):
        return {(t.name, t.yaxis): np.asarray(t.y) for t in fig.data}

    wide_traces, tidy_traces = by_key(fig_wide), by_key(fig_tidy)
    assert wide_traces.keys() == tidy_traces.keys() and len(wide_traces) == 4
    for key, y in tidy_traces.items():
        np.testing.assert_allclose(wide_traces[key], y)
    assert len(training_curves(wide).data) == 4  # numeric columns are the metrics


def test_training_curves_errors_name_the_fix():
    with pytest.raises(ValueError, match="band='seed'"):
        training_curves(make_log(), "reward")  # three seeds per (run, step), no band
    with pytest.raises(KeyError, match="not in the log"):
        training_curves(make_log(), "kl")
    with pytest.raises(ValueError, match="band_kind"):
        training_curves(make_log(), "reward", band="seed", band_kind="iqr")


# --- pass@k curves -------------------------------------------------------------------


def test_passk_curves_log2_axis_and_bands():
    rng = np.random.default_rng(0)
    counts = {"base": rng.binomial(64, 0.1, 100), "rl": rng.binomial(64, 0.4, 100) * (rng.random(100) < 0.5)}
    curve = pass_at_k_curve(counts, n=64)
    fig = passk_curves(curve, title="crossover")
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.tickvals) == [1, 2, 4, 8, 16, 32, 64]
    assert list(fig.layout.xaxis.ticktext) == ["1", "2", "4", "8", "16", "32", "64"]
    assert fig.layout.yaxis.range[0] == 0 and 1 <= fig.layout.yaxis.range[1] <= 1.05
    assert [t.name for t in fig.data] == ["base", "rl"] and not fills(fig)
    assert fig.layout.title.text == "crossover"

    banded = passk_curves(pass_at_k_curve(counts, n=64, bootstrap=100))
    assert len(fills(banded)) == 2 and len(lines(banded)) == 2

    assert passk_curves(curve, log_x=False).layout.xaxis.type in (None, "-", "linear")


def test_passk_curves_mean_over_seeds():
    rng = np.random.default_rng(0)
    frames = [
        pass_at_k_curve(rng.binomial(16, 0.3, 50), n=16, model="rl").assign(seed=s) for s in range(3)
    ]
    df = pd.concat(frames, ignore_index=True)
    fig = passk_curves(df)
    assert len(fills(fig)) == 1
    mean = lines(fig)[0]
    np.testing.assert_allclose(mean.y, df.groupby("k")["pass_at_k"].mean())
    with pytest.raises(ValueError, match="seed"):
        passk_curves(df.drop(columns="seed"))
    with pytest.raises(KeyError, match="pass_at_k"):
        passk_curves(df.drop(columns="pass_at_k"))


def test_library_never_calls_show():
    root = Path(rlnb.viz.__file__).parent
    for path in root.glob("*.py"):
        assert not re.search(r"\w\.show\(", path.read_text()), path


# --- export --------------------------------------------------------------------------


def test_write_html_is_self_contained(tmp_path):
    fig = passk_curves(pass_at_k_curve([1, 2, 3], n=4))
    path = write_html(fig, tmp_path / "sub" / "fig.html")
    text = path.read_text()
    assert text.startswith("<html>") or "<!DOCTYPE html>" in text[:200] or "<html" in text[:200]
    assert not re.search(r"<script[^>]*src=\"https?://", text)  # no CDN: works offline
    assert path.stat().st_size > 1_000_000  # plotly.js embedded
    assert [p.name for p in path.parent.iterdir()] == ["fig.html"]  # no temp files left


def test_png_without_chromium_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "find_chromium", lambda: None)
    with pytest.raises(RuntimeError, match=r"apt-get install chromium"):
        write_png(go.Figure(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@needs_chromium
def test_write_png_writes_a_png(tmp_path):
    fig = training_curves(make_log(), ["reward", "entropy"], band="seed")
    path = write_png(fig, tmp_path / "curves.png", width=600, height=400, scale=1)
    assert path.read_bytes()[:8] == PNG_MAGIC
    # IHDR holds width and height as big-endian uint32 at bytes 16..24
    data = path.read_bytes()
    assert int.from_bytes(data[16:20], "big") == 600 and int.from_bytes(data[20:24], "big") == 400
    from rlnb.viz import export

    second = write_png(passk_curves(pass_at_k_curve([1, 2, 3], n=4)), tmp_path / "passk.png")
    # both went through the one browser server started once per process (not a browser
    # per figure, ~2 s each): started and never marked broken
    assert export._server_state["started"] and not export._server_state["broken"]
    assert second.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "passk.png"]


# --- log-axis ticks ------------------------------------------------------------------


def _is_decade(value: float) -> bool:
    return abs(np.log10(value) - round(np.log10(value))) < 1e-9


def test_decade_ticks_label_decades_only_and_in_full():
    ticks = decade_ticks(np.array([0.004, 0.03, 0.9]), [1.3])
    assert ticks["tickvals"] == [0.001, 0.01, 0.1, 1.0, 10.0]
    assert all(_is_decade(v) for v in ticks["tickvals"])
    assert ticks["ticktext"] == ["0.001", "0.01", "0.1", "1", "10"]
    # every label reads back as its value: no bare "5" standing for 0.05
    assert all(float(t) == v for t, v in zip(ticks["ticktext"], ticks["tickvals"]))
    minor = ticks["minor"]["tickvals"]
    assert 0.05 in minor and 0.005 in minor and not set(minor) & set(ticks["tickvals"])
    assert "ticktext" not in ticks["minor"]


def test_decade_ticks_within_one_decade_writes_1_2_5_in_full():
    ticks = decade_ticks([0.3, 0.9], minor=False)
    assert ticks["ticktext"] == ["0.1", "0.2", "0.5", "1"]
    assert "minor" not in ticks


def test_decade_ticks_ignore_what_a_log_axis_cannot_show_and_thin_wide_ranges():
    ticks = decade_ticks([0.0, -1.0, np.nan, 2e-9, 3e4])
    assert all(_is_decade(v) for v in ticks["tickvals"]) and len(ticks["tickvals"]) <= 8
    assert ticks["ticktext"][0] == "1e-9" and ticks["ticktext"][-1] == "100k"
    with pytest.raises(ValueError, match="positive"):
        decade_ticks([0.0, -2.0])


def test_format_tick_is_never_a_bare_mantissa():
    assert [format_tick(v) for v in (2e-5, 0.05, 0.2, 1, 1000, 2e4, 3e6)] == [
        "2e-5", "0.05", "0.2", "1", "1000", "20k", "3M"]


# --- tables --------------------------------------------------------------------------


def test_format_number_no_negative_zero_counts_as_integers_missing_as_dash():
    assert format_number(-0.00004) == "0.000"
    assert format_number(-0.00004, signed=True) == "+0.000"
    assert format_number(-0.0123, signed=True) == "-0.012"
    assert format_number(44.6667, 0) == "45" and format_number(44.5, 0) == "45"
    assert format_number(np.float64(68.0), 0) == "68"
    assert format_number(np.nan) == "—" and format_number(None, missing="n/a") == "n/a"


def test_styled_table_formats_per_column_and_explains_missing_values():
    df = pd.DataFrame({"steps": [44.6667, 68.0, np.nan], "gap": [-0.00001, 0.0123, -0.2],
                       "name": ["a", "b", "c"]}, index=["PPO", "KL-Cov", "NSR"])
    styled = styled_table(df, counts=["steps"], signed=["gap"], caption="— : never reached")
    html = styled.to_html()
    cells = re.findall(r'class="data row\d col\d" >([^<]*)<', html)
    assert cells == ["45", "+0.000", "a", "68", "+0.012", "b", "—", "-0.200", "c"]
    assert "NaN" not in html and "-0.000" not in html and "68.0" not in html
    assert "never reached" in html and styled.data is df
    with pytest.raises(KeyError, match="steps to reward"):
        styled_table(df, counts=["steps to reward"])


# --- point labels --------------------------------------------------------------------


def _boxes(points, sizes, spots):
    return [(x + dx - w / 2, y + dy - h / 2, x + dx + w / 2, y + dy + h / 2)
            for (x, y), (w, h), (dx, dy, _) in zip(points, sizes, spots)]


def _overlaps(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_place_labels_no_two_labels_overlap_for_colliding_points():
    # the report's worst case and worse: near-coincident points with long names, a tight cluster
    points = [(300, 200), (303, 201), (306, 199), (300, 204), (420, 200), (426, 200), (310, 260)]
    names = ["lock5", "lava_crossing", "cliff", "key_door", "corridor", "open5", "lock4"]
    sizes = [label_size(n, 10) for n in names]
    bounds = (0, 0, 800, 500)
    spots = place_labels(points, sizes, marker_radius=6.5, bounds=bounds)
    boxes = _boxes(points, sizes, spots)
    # the naive placement (every label above its point) collides
    naive = _boxes(points, sizes, [(0, -20, 0)] * len(points))
    assert any(_overlaps(a, b) for i, a in enumerate(naive) for b in naive[i + 1:])
    for i, a in enumerate(boxes):
        assert bounds[0] <= a[0] and a[2] <= bounds[2] and bounds[1] <= a[1] and a[3] <= bounds[3]
        for b in boxes[i + 1:]:
            assert not _overlaps(a, b), (names[i], a, b)
        for x, y in points:  # no label covers a marker
            assert not _overlaps(a, (x - 6.5, y - 6.5, x + 6.5, y + 6.5))
    assert place_labels(points, sizes, marker_radius=6.5, bounds=bounds) == spots  # deterministic


def test_place_labels_prefers_above_and_stays_in_bounds():
    assert place_labels([(100, 100)], [(40, 14)]) == [(0.0, -15.0, 0)]
    # at the top edge, the label goes below instead
    (dx, dy, _), = place_labels([(100, 5)], [(40, 14)], bounds=(0, 0, 200, 200))
    assert dy > 0
    with pytest.raises(ValueError, match="one size per point"):
        place_labels([(0, 0)], [])


def test_add_point_labels_annotates_each_finite_point_of_its_subplot():
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2)
    x, y = [4.1, 4.2, 4.2, np.inf], [1000, 1050, 1200, 10]
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers"), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=2)
    add_point_labels(fig, x, y, ["lock4", "corridor", "open5", "decoy"], row=1, col=2)
    notes = fig.layout.annotations
    assert [a.text for a in notes] == ["lock4", "corridor", "open5"]
    assert {(a.xref, a.yref) for a in notes} == {("x2", "y2")}
    assert notes[0].y == pytest.approx(3.0)  # log axes take log10 positions
    assert fig.layout.xaxis2.range is not None and fig.layout.yaxis2.range is not None


def test_place_labels_a_label_beside_its_marker_is_nearest_its_own_point():
    points = [(200, 200), (214, 184), (187, 191), (219, 211), (198, 244)]
    names = ["corridor", "cliff", "open5", "key_door", "lock4"]
    sizes = [label_size(n, 10) for n in names]
    spots = place_labels(points, sizes, marker_radius=6.5, bounds=(0, 0, 600, 400))
    for i, box in enumerate(_boxes(points, sizes, spots)):
        if spots[i][2] == 0:  # no leader line: position alone must say whose label it is
            def distance(p, box=box):
                return np.hypot(max(box[0] - p[0], 0, p[0] - box[2]), max(box[1] - p[1], 0, p[1] - box[3]))
            assert all(distance(points[i]) < distance(p) for j, p in enumerate(points) if j != i), names[i]
