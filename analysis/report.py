"""Run paper-figure reproductions headless and write a report: JSON, HTML and PNG.

``python -m analysis [--quick] [--out reports/latest] [--only NAME ...] [--seed 0] [--jobs N]``
runs every module named in :data:`analysis.REPRODUCTIONS` and writes::

    <out>/summary.json            per reproduction: title, card, seconds, checks, all_passed
    <out>/index.html              one section per reproduction: checks table, PNG, links
    <out>/summary.md              the same in Markdown (docs/REPRODUCTIONS.md quotes it)
    <out>/<name>/results.json     what run() returned, as JSON
    <out>/<name>/figure.html      the interactive figure (plotly.js embedded, works offline)
    <out>/<name>/figure.png       the static figure (needs Chromium)
    <out>/<name>/checks.json      the checks with value, op, threshold and verdict

``--quick`` is the reduced budget the test suite uses; without it each module runs the full
protocol of its card. The exit status is 1 if any check failed or any reproduction raised,
else 0. One reproduction raising does not stop the others: its traceback goes into the
summary and the page.

``--jobs N`` runs up to N reproductions at once, each in its own process (default: one per
CPU core). A reproduction's numbers do not depend on it: each module runs in a fresh
interpreter, and rlnb's thread counts are settings (``rlnb.threads``), never picked from the
load of the machine. The longest reproductions of the previous report in ``out`` start
first, so the slowest one does not start last.

``figure(results)`` and ``checks(results)`` receive the results *as read back from
results.json* (lists, not arrays; string keys), so a saved report can be re-plotted and
re-checked from disk alone. A module that only works on its in-memory results fails here,
which is the point. Files are written atomically (temporary file, then ``os.replace``);
NaN is written as Python's json writes it (``NaN``).

The report API also takes module objects, which is how the tests drive it::

    summary = run_report([my_module], "reports/test", quick=True)
    exit_code(summary)  # 0 or 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import html
import importlib
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from types import ModuleType
from typing import Any

from analysis.report_markdown import _fmt, render_markdown
from rlnb.viz.export import CHROMIUM_MISSING, atomic_write_text, write_html, write_png

__all__ = ["PROTOCOL", "default_jobs", "discover", "exit_code", "main", "render_index",
           "render_markdown", "run_report", "to_jsonable"]

#: What a reproduction module must define (see analysis/base.py).
PROTOCOL = ("TITLE", "CARD", "run", "figure", "checks")

#: The per-reproduction files, relative to its folder.
FILES = {
    "results": "results.json",
    "figure_html": "figure.html",
    "figure_png": "figure.png",
    "checks": "checks.json",
}

Log = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


# --- DISCOVERY ------------------------------------------------------------------------


def discover(only: Sequence[str] | None = None, package: str = "analysis") -> list[str]:
    """Module names listed in ``<package>.REPRODUCTIONS``, optionally narrowed to ``only``.

    A package without ``REPRODUCTIONS`` (or an empty one) gives ``[]``. A name in ``only``
    that is not listed raises ``ValueError`` naming the valid ones.
    """
    pkg = importlib.import_module(package)
    listed = [str(name) for name in getattr(pkg, "REPRODUCTIONS", ()) or ()]
    if not only:
        return listed
    unknown = [name for name in only if name not in listed]
    if unknown:
        raise ValueError(
            f"unknown reproduction(s) {unknown}; {package}.REPRODUCTIONS lists {listed or 'none'}"
        )
    return [name for name in listed if name in set(only)]


# --- JSON -----------------------------------------------------------------------------


def to_jsonable(obj: Any, where: str = "results") -> Any:
    """``obj`` with numpy/torch/pandas values turned into Python numbers, lists and dicts.

    numpy and torch scalars become numbers, arrays and tensors nested lists, a DataFrame a
    dict of column lists, a Series a list, a dataclass a dict, a Path a string. Anything
    else raises ``TypeError`` naming where it sits (``results['curves'][2]``).
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if hasattr(key, "item") and not isinstance(key, (str, bytes)):
                key = key.item()  # numpy scalar key
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}: use str keys")
            out[str(key) if not isinstance(key, str) else key] = to_jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), where)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        return to_jsonable(obj.detach().cpu().tolist(), where)
    module = type(obj).__module__.split(".")[0]
    if module == "numpy" and hasattr(obj, "tolist"):  # ndarray and numpy scalars
        return to_jsonable(obj.tolist(), where)
    if module == "pandas":
        if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
            return to_jsonable(obj.to_dict(orient="list"), where)
        if hasattr(obj, "tolist"):
            return to_jsonable(obj.tolist(), where)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}, which JSON cannot hold: "
        "return numbers, strings, lists and dicts (or numpy/torch/pandas values) from run()"
    )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=True) + "\n"


# --- RUNNING --------------------------------------------------------------------------


def _error(stage: str, err: BaseException) -> dict:
    return {
        "stage": stage,
        "type": type(err).__name__,
        "message": str(err),
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }


def _short_name(module: ModuleType | str) -> str:
    name = module if isinstance(module, str) else module.__name__
    return name.rsplit(".", 1)[-1]


def _new_record(name: str, module: str) -> dict[str, Any]:
    """A reproduction's record before anything has run."""
    return {"name": name, "module": module, "title": name, "card": None, "status": "ok",
            "seconds": None, "figure_seconds": None, "checks": [], "n_checks": 0,
            "n_failed": 0, "all_passed": False, "files": {}, "png_error": None, "errors": []}


def _run_one(
    module: ModuleType | str,
    out: Path,
    *,
    quick: bool,
    seed: int,
    png: bool,
    log: Log,
    package: str,
) -> dict:
    name = _short_name(module)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for rel in FILES.values():  # never leave last run's files next to this run's
        (folder / rel).unlink(missing_ok=True)
    record = _new_record(name, module if isinstance(module, str) else module.__name__)

    # --- IMPORT ---
    if isinstance(module, str):
        dotted = module if "." in module else f"{package}.{module}"
        record["module"] = dotted
        try:
            module = importlib.import_module(dotted)
        except Exception as err:  # noqa: BLE001 - recorded, the other modules still run
            record["errors"].append(_error("import", err))
            return _finish(record)
    missing = [attr for attr in PROTOCOL if not hasattr(module, attr)]
    if missing:
        record["errors"].append(
            _error("protocol", AttributeError(f"{module.__name__} lacks {missing}; see analysis/base.py"))
        )
        return _finish(record)
    record["title"] = str(module.TITLE)
    record["card"] = module.CARD
    record["paper"] = str(getattr(module, "PAPER", "") or "")
    record["shows"] = str(getattr(module, "SHOWS", "") or "")

    # --- RUN ---
    log(f"  run(quick={quick}, seed={seed}) ...")
    start = time.perf_counter()
    try:
        raw = module.run(quick=quick, seed=seed)
        record["seconds"] = round(time.perf_counter() - start, 3)
        text = _dumps(to_jsonable(raw))
        atomic_write_text(folder / FILES["results"], text)
        record["files"]["results"] = f"{name}/{FILES['results']}"
        results = json.loads(text)
    except Exception as err:  # noqa: BLE001
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["errors"].append(_error("run", err))
        return _finish(record)
    log(f"  ran in {record['seconds']:.2f} s")

    # --- FIGURE ---
    start = time.perf_counter()
    try:
        fig = module.figure(results)
        write_html(fig, folder / FILES["figure_html"])
        record["files"]["figure_html"] = f"{name}/{FILES['figure_html']}"
        if png:
            try:
                write_png(fig, folder / FILES["figure_png"])
                record["files"]["figure_png"] = f"{name}/{FILES['figure_png']}"
            except RuntimeError as err:
                if str(err) != CHROMIUM_MISSING:
                    raise
                record["png_error"] = str(err)
                log(f"  warning: no PNG: {err}")
    except Exception as err:  # noqa: BLE001
        record["errors"].append(_error("figure", err))
    record["figure_seconds"] = round(time.perf_counter() - start, 3)

    # --- CHECKS ---
    try:
        checks = list(module.checks(results))
        bad = [c for c in checks if not (hasattr(c, "to_dict") and hasattr(c, "passed"))]
        if bad:
            raise TypeError(f"checks() must return analysis.base.Check objects, got {bad[0]!r}")
        record["checks"] = [to_jsonable(c.to_dict(), "check") for c in checks]
        atomic_write_text(folder / FILES["checks"], _dumps(record["checks"]))
        record["files"]["checks"] = f"{name}/{FILES['checks']}"
        for check in checks:
            log(f"  {check}")
    except Exception as err:  # noqa: BLE001
        record["errors"].append(_error("checks", err))
    return _finish(record)


def _finish(record: dict) -> dict:
    record["status"] = "error" if record["errors"] else "ok"
    record["n_checks"] = len(record["checks"])
    # an unvalidated criterion (required=False) that fails is reported, not counted
    record["n_failed"] = sum(not c["passed"] and c.get("required", True)
                             for c in record["checks"])
    record["n_not_reproduced"] = sum(not c["passed"] and not c.get("required", True)
                                     for c in record["checks"])
    record["all_passed"] = record["status"] == "ok" and record["n_failed"] == 0
    return record


def _worker(name: str, out: str, quick: bool, seed: int, png: bool, package: str) -> dict:
    """One reproduction in a worker process; its log lines travel back in the record."""
    lines: list[str] = []
    record = _run_one(name, Path(out), quick=quick, seed=seed, png=png, log=lines.append,
                      package=package)
    record["log"] = lines
    return record


def _previous_seconds(out: Path) -> dict[str, float]:
    """Each reproduction's run time in the report already in ``out`` (empty if none)."""
    try:
        old = json.loads((out / "summary.json").read_text())
        return {k: float(r.get("seconds") or 0.0) for k, r in old["reproductions"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _run_parallel(
    modules: Sequence[ModuleType | str], out: Path, *, quick: bool, seed: int, png: bool,
    log: Log, package: str, jobs: int,
) -> dict[str, dict]:
    """Run the reproductions on ``jobs`` spawned processes, longest (last time) first."""
    names = {_short_name(m): (m if isinstance(m, str) else m.__name__) for m in modules}
    before = _previous_seconds(out)
    order = sorted(names, key=lambda n: -before.get(n, 0.0))
    done: dict[str, dict] = {}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    log(f"running {len(order)} reproduction(s) on {min(jobs, len(order))} processes")
    with ProcessPoolExecutor(max_workers=min(jobs, len(order)), mp_context=context) as pool:
        futures = {pool.submit(_worker, names[n], str(out), quick, seed, png, package): n
                   for n in order}
        for future in as_completed(futures):
            name = futures[future]
            try:
                record = future.result()
            except Exception as err:  # noqa: BLE001 - a dead worker is one failed reproduction
                record = _new_record(name, names[name])
                record["errors"].append(_error("worker", err))
                record = _finish(record)
            lines = record.pop("log", [])
            log(f"[{len(done) + 1}/{len(order)}] {name}")
            for line in lines:
                log(line)
            for err in record["errors"]:
                log(f"  ERROR in {err['stage']}: {err['type']}: {err['message']}")
            done[name] = record
    return {n: done[n] for n in names}


def run_report(
    modules: Sequence[ModuleType | str],
    out: str | Path = "reports/latest",
    *,
    quick: bool = False,
    seed: int = 0,
    png: bool = True,
    log: Log = _print,
    package: str = "analysis",
    jobs: int = 1,
) -> dict:
    """Run each reproduction and write the report into ``out``; returns the summary dict.

    Args:
        modules: module objects following analysis/base.py, or names (``"kl_bayes"`` means
            ``analysis.kl_bayes``; a dotted name is imported as is). An import error is
            recorded like any other failure.
        out: the report folder (created; this run's files replace the previous ones).
        quick: the reduced budget used by the tests (passed to ``run``).
        seed: passed to ``run``.
        png: write ``figure.png`` too. Without Chromium the PNG is skipped with a warning
            recorded as ``png_error``; any other PNG failure counts as an error.
        log: where progress lines go (``print`` by default).
        jobs: run up to this many reproductions at once, each in its own (spawned)
            process; modules are then passed to the workers by name, so they must be
            importable (the ``analysis`` modules are). 1 (the default) runs them one after
            another in this process. The summary keeps the order of ``modules``.

    Returns:
        the content of ``summary.json``: ``all_passed``, counts, and per reproduction
        (keyed by short module name) ``title, card, seconds, status, checks`` (each with
        ``value, op, threshold, verdict, passed``), ``all_passed``, ``files``, ``errors``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [_short_name(m) for m in modules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two reproductions share the name(s) {dupes}: their folders would collide")
    started = time.perf_counter()
    records: dict[str, dict] = {}
    if jobs > 1 and len(modules) > 1:
        records = _run_parallel(modules, out, quick=quick, seed=seed, png=png, log=log,
                                package=package, jobs=jobs)
    else:
        for i, module in enumerate(modules, start=1):
            name = _short_name(module)
            log(f"[{i}/{len(modules)}] {name}")
            records[name] = _run_one(module, out, quick=quick, seed=seed, png=png, log=log,
                                     package=package)
            for err in records[name]["errors"]:
                log(f"  ERROR in {err['stage']}: {err['type']}: {err['message']}")

    summary = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
        "n_reproductions": len(records),
        "n_checks": sum(r["n_checks"] for r in records.values()),
        "n_failed": sum(r["n_failed"] for r in records.values()),
        "n_not_reproduced": sum(r.get("n_not_reproduced", 0) for r in records.values()),
        "n_errors": sum(r["status"] == "error" for r in records.values()),
        "all_passed": all(r["all_passed"] for r in records.values()),
        "versions": _versions(),
        "reproductions": records,
    }
    atomic_write_text(out / "summary.json", _dumps(summary))
    atomic_write_text(out / "index.html", render_index(summary))
    atomic_write_text(out / "summary.md", render_markdown(summary))
    return summary


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("rlnb", "numpy", "torch", "plotly", "kaleido"):
        mod = sys.modules.get(name)
        version = getattr(mod, "__version__", None) if mod else None
        if version is None:
            try:
                from importlib.metadata import version as _v

                version = _v(name)
            except Exception:  # noqa: BLE001 - not installed: leave it out
                continue
        versions[name] = str(version)
    return versions


def exit_code(summary: dict) -> int:
    """1 if any check failed or any reproduction raised, else 0."""
    return 0 if summary["all_passed"] else 1


def summary_lines(summary: dict) -> list[str]:
    """One line per check (``[pass] name/check: value op threshold``) and per error."""
    lines = []
    for name, rec in summary["reproductions"].items():
        for c in rec["checks"]:
            lines.append(
                f"[{c['verdict']}] {name}/{c['name']}: {_fmt(c['value'])} {c['op']} {_fmt(c['threshold'])}"
            )
        for err in rec["errors"]:
            lines.append(f"[ERROR] {name} ({err['stage']}): {err['type']}: {err['message']}")
    return lines


# --- HTML -----------------------------------------------------------------------------


_CSS = """
body { font-family: Inter, Helvetica, Arial, sans-serif; color: #222; max-width: 1000px;
       margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.8em 0; width: 100%; font-size: 0.93em; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.35em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #0a7d38; font-weight: 600; } .FAIL, .error { color: #b3261e; font-weight: 700; }
.not-reproduced { color: #8a5a00; font-weight: 600; }
.badge { padding: 0.1em 0.5em; border-radius: 0.6em; font-size: 0.85em; }
.badge.pass { background: #e3f4e8; } .badge.FAIL, .badge.error { background: #fbe4e2; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _badge(rec: dict) -> str:
    if rec["status"] == "error":
        return '<span class="badge error">error</span>'
    if rec["all_passed"]:
        return '<span class="badge pass">pass</span>'
    return f'<span class="badge FAIL">{rec["n_failed"]} failed</span>'


def render_index(summary: dict) -> str:
    """The report page: a header with the overall verdict, then one section per reproduction."""
    e = html.escape
    recs = summary["reproductions"]
    unvalidated = summary.get("n_not_reproduced", 0)
    if summary["all_passed"] and unvalidated:
        verdict = (
            f'<p class="pass">Every required check passed; {unvalidated} unvalidated '
            'criterion(s) of the paper cards did not reproduce (marked "not reproduced").</p>'
        )
    elif summary["all_passed"]:
        verdict = f'<p class="pass">All {summary["n_checks"]} checks passed.</p>'
    else:
        verdict = (
            f'<p class="FAIL">{summary["n_failed"]} of {summary["n_checks"]} checks failed; '
            f'{summary["n_errors"]} reproduction(s) raised.</p>'
        )
    budget = "quick budget (--quick)" if summary["quick"] else "full protocol"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>rlnb reproductions</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>rlnb — paper-figure reproductions</h1>",
        f'<p class="meta">{e(summary["created"])} · {budget} · seed {summary["seed"]} · '
        f'{summary["seconds"]:.1f} s in all · '
        + " · ".join(f"{e(k)} {e(v)}" for k, v in summary.get("versions", {}).items())
        + "</p>",
        verdict,
    ]
    if not recs:
        parts.append("<p>No reproductions ran: <code>analysis.REPRODUCTIONS</code> is empty.</p>")
    else:
        parts.append("<ul>")
        for name, rec in recs.items():
            parts.append(f'<li><a href="#{e(name)}">{e(rec["title"])}</a> {_badge(rec)}</li>')
        parts.append("</ul>")
    for name, rec in recs.items():
        parts.append(f'<section id="{e(name)}"><h2>{e(rec["title"])} {_badge(rec)}</h2>')
        meta = [f"card {e(str(rec['card']))}" if rec["card"] is not None else "no card",
                f"<code>{e(rec['module'])}</code>"]
        if rec["seconds"] is not None:
            meta.append(f"run {rec['seconds']:.2f} s")
        files = rec["files"]
        if "figure_html" in files:
            meta.append(f'<a href="{e(files["figure_html"])}">interactive figure</a>')
        for key, label in (("results", "results.json"), ("checks", "checks.json")):
            if key in files:
                meta.append(f'<a href="{e(files[key])}">{label}</a>')
        parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
        if rec.get("paper"):
            parts.append(f'<p><b>The paper:</b> {e(rec["paper"])}</p>')
        if rec.get("shows"):
            parts.append(f'<p><b>What this shows and what it does not:</b> {e(rec["shows"])}</p>')
        if rec["checks"]:
            parts.append(
                "<table><thead><tr><th>check</th><th>value</th><th></th><th>threshold</th>"
                "<th>verdict</th><th>what it tests</th></tr></thead><tbody>"
            )
            for c in rec["checks"]:
                parts.append(
                    f"<tr><td>{e(c['name'])}</td><td class=num>{e(_fmt(c['value']))}</td>"
                    f"<td>{e(c['op'])}</td><td class=num>{e(_fmt(c['threshold']))}</td>"
                    f'<td class="{e(c["verdict"].replace(" ", "-"))}">{e(c["verdict"])}</td>'
                    f"<td>{e(c.get('description', ''))}</td></tr>"
                )
            parts.append("</tbody></table>")
        if "figure_png" in files:
            target = files.get("figure_html", files["figure_png"])
            parts.append(
                f'<a href="{e(target)}"><img src="{e(files["figure_png"])}" '
                f'alt="{e(rec["title"])}" loading="lazy"></a>'
            )
        elif rec["png_error"]:
            parts.append(f'<p class="meta">No PNG: {e(rec["png_error"])}</p>')
        for err in rec["errors"]:
            parts.append(
                f'<details open><summary class="error">{e(err["type"])} in {e(err["stage"])}: '
                f'{e(err["message"])}</summary><pre>{e(err["traceback"])}</pre></details>'
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- CLI ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Run the paper-figure reproductions headless and write an HTML/PNG/JSON "
        "report. Exit status 1 if any check failed or any reproduction raised.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="the reduced budget the test suite uses (minutes -> seconds)")
    parser.add_argument("--out", default="reports/latest", help="report folder (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these reproductions (names from analysis.REPRODUCTIONS)")
    parser.add_argument("--seed", type=int, default=0, help="seed passed to every run() (default: 0)")
    parser.add_argument("--no-png", action="store_true", help="skip PNG export (no Chromium needed)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), metavar="N",
                        help="run up to N reproductions at once, one process each; the "
                        "numbers do not depend on it (default: the CPU cores, %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the reproductions and exit")
    return parser


def default_jobs() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def main(argv: Sequence[str] | None = None, *, package: str = "analysis") -> int:
    """The ``python -m analysis`` entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        names = discover(args.only, package=package)
    except ValueError as err:
        parser.error(str(err))
    if args.list:
        for name in names:
            _print(name)
        return 0
    if not names:
        _print(f"no reproductions listed in {package}.REPRODUCTIONS: nothing to run")
    mode = "quick" if args.quick else "full"
    _print(f"running {len(names)} reproduction(s), {mode} budget, seed {args.seed} -> {args.out}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    summary = run_report(names, args.out, quick=args.quick, seed=args.seed,
                         png=not args.no_png, package=package, jobs=args.jobs)
    _print("")
    for line in summary_lines(summary):
        _print(line)
    status = "all passed" if summary["all_passed"] else (
        f"{summary['n_failed']} check(s) failed, {summary['n_errors']} reproduction(s) raised"
    )
    _print(f"{status} — report: {Path(args.out) / 'index.html'} ({summary['seconds']:.1f} s)")
    return exit_code(summary)
