"""The reproduction report in Markdown (``<out>/summary.md``, quoted by docs/REPRODUCTIONS.md),
and the number format the report's every view shares."""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _md(text: Any) -> str:
    """One table cell: no line breaks, no unescaped pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(summary: dict) -> str:
    """The report as Markdown: an overview table (card, module, seconds, checks passed /
    not reproduced / failed), then per reproduction the paper's claim, every check with
    its value, threshold and verdict, and what the reproduction shows and does not."""
    mode = "quick" if summary["quick"] else "full"
    recs = summary["reproductions"]
    lines = [
        f"{summary['n_reproductions']} reproductions, {mode} budget, seed {summary['seed']}, "
        f"{summary['seconds']:.0f} s in all ({summary.get('created', '')}).",
        "",
        "| card | reproduction | run (s) | checks passed | not reproduced (unvalidated) | failed |",
        "|---|---|---|---|---|---|",
    ]
    for name, rec in recs.items():
        n_pass = sum(c["passed"] for c in rec["checks"])
        seconds = "–" if rec["seconds"] is None else f"{rec['seconds']:.0f}"
        failed = "raised" if rec["status"] == "error" else str(rec["n_failed"])
        lines.append(f"| {rec['card']} | `analysis/{name}.py` | {seconds} | {n_pass} / "
                     f"{rec['n_checks']} | {rec.get('n_not_reproduced', 0)} | {failed} |")
    for name, rec in recs.items():
        lines += ["", f"### {_md(rec['title'])} (`analysis/{name}.py`)", ""]
        if rec.get("paper"):
            lines += [f"**Paper.** {_md(rec['paper'])}", ""]
        if rec["checks"]:
            lines += ["| check | value | threshold | verdict |", "|---|---|---|---|"]
            for c in rec["checks"]:
                kind = "" if c.get("required", True) else " (unvalidated)"
                lines.append(f"| {_md(c['name'])}{kind} | {_fmt(c['value'])} | {c['op']} "
                             f"{_fmt(c['threshold'])} | {c['verdict']} |")
            lines.append("")
        for err in rec["errors"]:
            lines += [f"**Error** in {err['stage']}: {_md(err['type'])}: {_md(err['message'])}", ""]
        if rec.get("shows"):
            lines += [f"**What this shows and what it does not.** {_md(rec['shows'])}", ""]
    return "\n".join(lines).rstrip() + "\n"
