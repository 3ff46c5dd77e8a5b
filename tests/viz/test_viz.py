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
    decade_ticks,
    find_chromium,
    format_tick,
    passk_curves,
    training_curves,
    write_html,
    write_png,
)
from rlnb.viz import export as export_mod

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
