"""``RolloutBrowser``: read completions with each token coloured by entropy or advantage.

Where the policy hesitates (high entropy) or where a token was pushed up or down
(positive or negative advantage) is visible at a glance, in the text itself. Filter to
correct or incorrect completions and page through them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np

from rlnb.viz.colors import ENTROPY_COLORSCALE, EOS_LABEL, EOS_TOKENS, entropy_rgb, is_eos
from rlnb.viz.training import PALETTE

__all__ = ["RolloutBrowser", "tokens_html"]

_WHITE = (255, 255, 255)
# Entropy: rlnb.viz.colors.ENTROPY_COLORSCALE, as entropy_heatstrip;
# advantage: blue <- white -> vermillion.
_NEGATIVE, _POSITIVE = (0, 114, 178), (213, 94, 0)
KINDS = ("entropy", "advantage")


def _array(x: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def _color(value: float, kind: str, vmax: float) -> tuple[int, ...] | None:
    """Background colour of a token: None for NaN (left uncoloured)."""
    if not math.isfinite(value):
        return None
    t = min(abs(value) / vmax, 1.0) if vmax > 0 else 0.0
    if kind == "advantage":
        return _mix(_WHITE, _POSITIVE if value >= 0 else _NEGATIVE, t)
    return entropy_rgb(value, vmax)


def _css(rgb: tuple[int, ...]) -> str:
    r, g, b = rgb
    text = "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#222"
    return f"background:rgb({r},{g},{b});color:{text}"


#: An end-of-sequence token: a small boxed label, coloured like any token.
_EOS_BOX = (";font-size:0.75em;letter-spacing:0.5px;border:1px solid #888;"
            "padding:0 2px;margin-left:1px")


def _token_text(tok: str) -> str:
    """Whitespace made visible: a newline shows as ↵, a tab as →."""
    return html.escape(tok.replace("\n", "↵").replace("\t", "→"))


def tokens_html(tokens: Sequence[str], values: Any, mask: Any = None, *, kind: str = "entropy",
                vmax: float = 1.0, eos: Sequence[str] = EOS_TOKENS) -> str:
    """One completion as HTML spans, each token's background coloured by its value.

    Args:
        tokens: the completion's token strings; ``tokens[t]`` sits at ``values[t]``.
        values: ``(T,)`` per-token values (T >= len(tokens); extra positions are ignored).
        mask: ``(T,)`` valid tokens; masked ones are drawn grey and uncoloured.
        kind: ``"entropy"`` (:data:`rlnb.viz.colors.ENTROPY_COLORSCALE`, white -> orange ->
            vermillion from 0 to ``vmax``, the scale of :func:`rlnb.viz.entropy_heatstrip`)
            or ``"advantage"`` (blue below 0, vermillion above, white at 0, saturating at
            ``±vmax``).
        vmax: the value of full colour.
        eos: the end-of-sequence token strings, drawn as a boxed ``EOS`` label.

    >>> s = tokens_html(["4", "2", "</s>"], [0.0, 2.0, 0.5], kind="entropy", vmax=2.0)
    >>> s.count("<span"), "rgb(213,94,0)" in s, ">EOS</span>" in s
    (3, True, True)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    v = _array(values, "values", 1).astype(float)
    m = np.ones(v.shape, bool) if mask is None else _array(mask, "mask", 1).astype(bool)
    if len(tokens) > v.shape[0]:
        raise ValueError(f"{len(tokens)} tokens but only {v.shape[0]} values")
    eos = (eos,) if isinstance(eos, str) else tuple(eos)
    spans = []
    for t, tok in enumerate(tokens):
        text = _token_text(str(tok))
        box = ""
        if is_eos(str(tok), eos):  # "</s>" would read as markup: a small boxed label
            text, box = EOS_LABEL, _EOS_BOX
        if not m[t]:
            spans.append(f"<span style='color:#aaa'>{text}</span>")
            continue
        rgb = _color(float(v[t]), kind, vmax)
        style = _css(rgb) if rgb is not None else ""
        what = f"end of sequence {html.escape(str(tok))} · " if box else ""
        spans.append(f"<span title='{what}{kind} {v[t]:.3f}' style='{style};padding:1px 0;"
                     f"border-radius:2px{box}'>{text}</span>")
    return "".join(spans)


def _legend_html(kind: str, vmax: float) -> str:
    if kind == "advantage":
        gradient = ", ".join(f"rgb{tuple(c)}" for c in (_NEGATIVE, _WHITE, _POSITIVE))
        labels = (f"{-vmax:.3g}", "0", f"+{vmax:.3g}")
    else:
        gradient = ", ".join(f"{c} {100 * t:g}%" for t, c in ENTROPY_COLORSCALE)
        labels = ("0", f"{vmax / 2:.3g}", f"{vmax:.3g} nats")
    ticks = "".join(f"<span>{html.escape(s)}</span>" for s in labels)
    return (
        "<div style='font-size:12px;margin:4px 0'>"
        f"<span style='margin-right:8px'>{kind}</span>"
        f"<div style='display:inline-block;vertical-align:middle;width:220px'>"
        f"<div style='height:12px;border:1px solid #bbb;background:linear-gradient(to right, "
        f"{gradient})'></div>"
        f"<div style='display:flex;justify-content:space-between'>{ticks}</div></div></div>"
    )


class RolloutBrowser:
    """Completions with tokens coloured by entropy or advantage; filter and page.

    Args:
        tokens: per completion, its token strings (``tokens[i][t]`` sits at
            ``values[i, t]``). A plain string is split into characters (the tiny
            character-level models of ``rlnb.policies.tiny``).
        values: ``(N, T)`` per-token values: entropy (``rlnb.probes.token_entropy``, or
            the second output of ``policy.log_probs``) or advantages.
        rewards: ``(N,)`` rewards, shown per completion; a reward > 0 counts as correct.
        mask: ``(N, T)`` valid completion tokens (others are drawn grey).
        kind: ``"entropy"`` or ``"advantage"`` (sets the colour scale: sequential from 0,
            or diverging around 0).
        correct: ``(N,)`` bool, overrides ``rewards > 0`` for the filter.
        prompts: optional prompt text per completion, shown before it in grey.
        page_size: completions per page.
        vmax: full-colour value; default the largest (absolute) valid value.
        eos: the end-of-sequence token strings (default: those of common tokenizers,
            :data:`rlnb.viz.colors.EOS_TOKENS`), each drawn as a boxed ``EOS`` label.

    Attributes: ``filter`` (ToggleButtons: all / correct / incorrect), ``prev_button``,
    ``next_button``, ``body`` (HTML of the page), ``legend`` (HTML colour scale),
    ``widget`` (the whole browser), ``rows`` (indices passing the filter), ``page``.

    >>> b = RolloutBrowser(["12", "13", "7"], [[0.1, 0.9], [0.2, 0.3], [1.2, 0.0]],
    ...                    rewards=[1.0, 0.0, 0.0], page_size=2)
    >>> b.rows, b.num_pages
    ([0, 1, 2], 2)
    >>> b.filter.value = "incorrect"; b.rows
    [1, 2]

    Footgun: an entropy of 0 on a token the policy was forced to emit (a fixed format
    token) is not a decision; read colour together with the mask and the task's format.
    """

    def __init__(
        self,
        tokens: Sequence[Sequence[str] | str],
        values: Any,
        rewards: Any = None,
        mask: Any = None,
        *,
        kind: str = "entropy",
        correct: Any = None,
        prompts: Sequence[str] | None = None,
        page_size: int = 10,
        vmax: float | None = None,
        eos: Sequence[str] = EOS_TOKENS,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        self.tokens = [list(t) if isinstance(t, str) else [str(s) for s in t] for t in tokens]
        self.values = _array(values, "values", 2).astype(float)  # (N, T)
        N, T = self.values.shape
        if len(self.tokens) != N:
            raise ValueError(f"tokens has {len(self.tokens)} completions but values has {N} rows")
        for i, row in enumerate(self.tokens):
            if len(row) > T:
                raise ValueError(f"completion {i} has {len(row)} tokens but values has T = {T}")
        self.mask = (np.ones((N, T), bool) if mask is None
                     else _array(mask, "mask", 2).astype(bool))
        if self.mask.shape != (N, T):
            raise ValueError(f"mask {self.mask.shape} must match values {(N, T)}")
        self.rewards = None if rewards is None else _array(rewards, "rewards", 1).astype(float)
        if self.rewards is not None and self.rewards.shape != (N,):
            raise ValueError(f"rewards must have shape ({N},), got {self.rewards.shape}")
        if correct is not None:
            self.correct = _array(correct, "correct", 1).astype(bool)
        elif self.rewards is not None:
            self.correct = self.rewards > 0
        else:
            self.correct = None
        if self.correct is not None and self.correct.shape != (N,):
            raise ValueError(f"correct must have shape ({N},), got {self.correct.shape}")
        if prompts is not None and len(prompts) != N:
            raise ValueError(f"prompts has {len(prompts)} entries; expected {N}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.prompts = prompts
        self.kind = kind
        self.eos = (eos,) if isinstance(eos, str) else tuple(eos)
        self.page_size = int(page_size)
        if vmax is None:
            valid = np.abs(self.values[self.mask & np.isfinite(self.values)])
            vmax = float(valid.max()) if valid.size and valid.max() > 0 else 1.0
        self.vmax = float(vmax)
        self.page = 0

        self.filter = W.ToggleButtons(options=["all", "correct", "incorrect"], value="all",
                                      disabled=self.correct is None,
                                      tooltips=["every completion", "reward > 0",
                                                "reward <= 0"])
        self.prev_button = W.Button(description="◀ prev", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="next ▶", layout=W.Layout(width="80px"))
        self.page_label = W.HTML()
        self.legend = W.HTML(_legend_html(kind, self.vmax))
        self.body = W.HTML()
        self.filter.observe(lambda _: self.show_page(0), names="value")
        self.prev_button.on_click(lambda _: self.show_page(self.page - 1))
        self.next_button.on_click(lambda _: self.show_page(self.page + 1))
        self.widget = W.VBox([
            W.HBox([self.filter, self.prev_button, self.next_button, self.page_label]),
            self.legend,
            self.body,
        ])
        self.show_page(0)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def rows(self) -> list[int]:
        """Indices of the completions that pass the filter."""
        keep = np.ones(len(self.tokens), bool)
        if self.correct is not None and self.filter.value != "all":
            keep = self.correct if self.filter.value == "correct" else ~self.correct
        return [int(i) for i in np.flatnonzero(keep)]

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(len(self.rows) / self.page_size))

    def show_page(self, page: int) -> None:
        """Render page ``page`` (clamped to the pages that exist)."""
        rows = self.rows
        self.page = min(max(int(page), 0), self.num_pages - 1)
        shown = rows[self.page * self.page_size: (self.page + 1) * self.page_size]
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.num_pages - 1
        self.page_label.value = (f"<span style='margin-left:10px'>page {self.page + 1}/"
                                 f"{self.num_pages} · {len(rows)} completions</span>")
        self.body.value = "".join(self._row_html(i) for i in shown) or (
            "<div style='color:#888'>no completions match the filter</div>")

    def _row_html(self, i: int) -> str:
        label = f"#{i}"
        if self.rewards is not None:
            label += f" · reward {self.rewards[i]:.3g}"
        mark = ""
        if self.correct is not None:
            ok = bool(self.correct[i])
            mark = (f"<span style='color:{PALETTE[2] if ok else PALETTE[1]};font-weight:bold'>"
                    f"{'✓' if ok else '✗'}</span> ")
        prompt = ("" if self.prompts is None else
                  f"<span style='color:#999'>{_token_text(str(self.prompts[i]))}</span>")
        text = tokens_html(self.tokens[i], self.values[i], self.mask[i], kind=self.kind,
                           vmax=self.vmax, eos=self.eos)
        return ("<div style='margin:3px 0;font-family:monospace;white-space:pre-wrap;"
                "line-height:1.6'>"
                f"<span style='display:inline-block;min-width:150px;color:#555'>{mark}{label}"
                f"</span>{prompt}{text}</div>")
