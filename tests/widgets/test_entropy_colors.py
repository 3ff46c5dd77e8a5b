"""One entropy colour scale and one EOS label for the heat-strip and the RolloutBrowser."""

from __future__ import annotations

import re

import numpy as np
import pytest
from plotly.colors import sample_colorscale

from rlnb.viz import ENTROPY_COLORSCALE, EOS_LABEL, entropy_heatstrip
from rlnb.viz.colors import entropy_rgb, token_label
from rlnb.widgets import RolloutBrowser, tokens_html

FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0)


def span_colours(html: str) -> list[tuple[int, int, int]]:
    return [tuple(int(c) for c in m) for m in
            re.findall(r"background:rgb\((\d+),(\d+),(\d+)\)", html)]


def test_heatstrip_and_browser_share_one_colour_scale():
    vmax = 2.0
    values = np.array([[f * vmax for f in FRACTIONS]])
    tokens = [[str(i) for i in range(len(FRACTIONS))]]
    heat = entropy_heatstrip(tokens, values, max_entropy=vmax).data[0]
    scale = tuple((float(t), str(c)) for t, c in heat.colorscale)
    assert scale == ENTROPY_COLORSCALE
    assert (heat.zmin, heat.zmax) == (0.0, vmax)
    # The colour plotly gives each cell of the heat-strip is the colour of the browser's span.
    plotly_rgb = [tuple(int(float(c)) for c in re.findall(r"[\d.]+", rgb)) for rgb in
                  sample_colorscale([list(p) for p in heat.colorscale], list(FRACTIONS))]
    browser = RolloutBrowser(tokens, values, vmax=vmax)
    for found in (span_colours(browser.body.value),
                  span_colours(tokens_html(tokens[0], values[0], vmax=vmax)),
                  [entropy_rgb(v, vmax) for v in values[0]]):
        assert len(found) == len(plotly_rgb)
        np.testing.assert_allclose(found, plotly_rgb, atol=1)  # rounding to whole units
    # The legend's gradient is the same scale, stop for stop.
    for t, color in ENTROPY_COLORSCALE:
        assert f"{color} {100 * t:g}%" in browser.legend.value


def test_entropy_scale_is_monotonic_in_lightness():
    """White at 0, darker all the way up: greyscale print keeps the order."""
    luma = [0.299 * r + 0.587 * g + 0.114 * b
            for r, g, b in (entropy_rgb(f, 1.0) for f in np.linspace(0, 1, 21))]
    assert luma[0] == pytest.approx(255) and all(np.diff(luma) < 0)
    assert entropy_rgb(float("nan"), 1.0) is None
    assert entropy_rgb(-1.0, 1.0) == (255, 255, 255) and entropy_rgb(5.0, 1.0) == (213, 94, 0)


@pytest.mark.parametrize("eos", ["</s>", "<|endoftext|>", "<eos>", "<|im_end|>"])
def test_end_of_sequence_is_labelled_in_both_views(eos):
    tokens = [["1", "2", eos], ["7", eos]]
    values = np.array([[0.1, 1.0, 0.4], [0.2, 0.3, 0.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    heat = entropy_heatstrip(tokens, values, mask).data[0]
    assert [list(r) for r in heat.text] == [["1", "2", EOS_LABEL], ["7", EOS_LABEL, ""]]
    body = RolloutBrowser(tokens, values, mask=mask).body.value
    assert body.count(f">{EOS_LABEL}</span>") == 2
    assert eos not in body  # not as raw markup ...
    assert "end of sequence" in body  # ... but named in the hover title


def test_other_markup_like_tokens_stay_visible_in_the_heatstrip():
    """Plotly reads "<pad>" as a tag and drops it; escaped, it shows as written."""
    heat = entropy_heatstrip([["<pad>", "a&b"]], np.array([[0.1, 0.2]])).data[0]
    assert list(heat.text[0]) == ["&lt;pad&gt;", "a&amp;b"]
    assert token_label("<pad>") == "<pad>" and token_label(" </s>") == EOS_LABEL


def test_a_custom_end_of_sequence_string():
    body = RolloutBrowser([["4", "<|return|>"]], [[0.1, 0.2]], eos="<|return|>").body.value
    assert f">{EOS_LABEL}</span>" in body
