"""The entropy colour scale and the end-of-sequence label, shared by every token view.

:func:`rlnb.viz.entropy_heatstrip` (a plotly heatmap) and
:class:`rlnb.widgets.RolloutBrowser` (HTML spans) colour a token by its entropy with
:data:`ENTROPY_COLORSCALE`, and write an end-of-sequence token as :data:`EOS_LABEL`, so a
figure and the browser beside it read the same way.

Why white -> orange -> vermillion (Okabe-Ito hues, as :data:`rlnb.viz.PALETTE`): most
tokens of a trained policy are near 0 nats, and on white they stay plain, readable text;
the few tokens where the policy hesitates stand out in colour. Lightness falls
monotonically along the scale, so it survives greyscale print and colour-blind readers.

>>> entropy_rgb(0.0, vmax=2.0), entropy_rgb(1.0, vmax=2.0), entropy_rgb(9.0, vmax=2.0)
((255, 255, 255), (230, 159, 0), (213, 94, 0))
>>> token_label("</s>"), token_label("7")
('EOS', '7')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["ENTROPY_COLORSCALE", "EOS_LABEL", "EOS_TOKENS", "entropy_rgb", "is_eos",
           "token_label"]

#: Entropy from 0 (white) to the top of the scale (vermillion), as a plotly colorscale.
ENTROPY_COLORSCALE: tuple[tuple[float, str], ...] = (
    (0.0, "#FFFFFF"),
    (0.5, "#E69F00"),  # orange
    (1.0, "#D55E00"),  # vermillion
)

#: End-of-sequence strings of common tokenizers (Llama/Mistral ``</s>``, GPT-2/Qwen
#: ``<|endoftext|>``, Gemma ``<eos>``, chat templates' end-of-turn markers).
EOS_TOKENS: tuple[str, ...] = ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "<|im_end|>",
                               "<|eot_id|>", "<|end_of_text|>", "<|end|>")
#: How an end-of-sequence cell is labelled (plotly and HTML drop ``</s>`` as a tag).
EOS_LABEL = "EOS"


def _hex_rgb(color: str) -> tuple[int, int, int]:
    h = color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def entropy_rgb(value: float, vmax: float) -> tuple[int, int, int] | None:
    """The colour of entropy ``value`` on a scale topped at ``vmax``: :data:`ENTROPY_COLORSCALE`
    interpolated linearly in RGB, as plotly interpolates a heatmap's colorscale. Values
    outside ``[0, vmax]`` take the end colours; None for NaN (left uncoloured)."""
    if not math.isfinite(value):
        return None
    t = min(max(value / vmax, 0.0), 1.0) if vmax > 0 else 0.0
    for (t0, c0), (t1, c1) in zip(ENTROPY_COLORSCALE, ENTROPY_COLORSCALE[1:], strict=False):
        if t <= t1:
            a, b, u = _hex_rgb(c0), _hex_rgb(c1), (t - t0) / (t1 - t0)
            return tuple(round(x + (y - x) * u) for x, y in zip(a, b, strict=True))
    return _hex_rgb(ENTROPY_COLORSCALE[-1][1])


def is_eos(token: str, eos: Sequence[str] = EOS_TOKENS) -> bool:
    """Whether ``token`` (a decoded token string) ends the sequence."""
    return token.strip() in eos


def token_label(token: str, eos: Sequence[str] = EOS_TOKENS) -> str:
    """A token's text in a token view: :data:`EOS_LABEL` for an end-of-sequence token,
    the token itself otherwise."""
    return EOS_LABEL if is_eos(token, eos) else token
