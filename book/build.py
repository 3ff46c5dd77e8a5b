"""The curated notebooks, executed, as a static site (MkDocs Material + mkdocs-jupyter).

``python -m book`` (what ``make book`` runs) does four things:

1. EXECUTE: each notebook in ``notebooks/`` runs once, headless, with nbclient, under
   ``RLNB_QUICK=1`` (the reduced budgets the notebook tests use; ``--full`` for the
   budgets a reader gets in JupyterLab). The executed copy is kept in the work folder and
   re-used while the notebook's cells, the mode and rlnb's sources are unchanged, so a
   second build only re-renders.
2. STATIC: outputs that need a live kernel become static HTML. Plotly figures become a
   ``<div>`` drawn by the one local ``plotly.min.js`` the site ships (nothing is fetched
   from a CDN); a ``FigureWidget`` is drawn as it stood when the notebook finished; a
   tqdm progress bar becomes its final line; a dashboard's controls are replaced by a
   note saying it is live in JupyterLab (``make lab``).
3. PAGES: the landing page is made from README.md (what rlnb is, the two commands) and
   notebooks/README.md (the learning path), with the reproduction report linked if
   ``reports/latest/index.html`` exists, or how to build it if not.
4. SITE: ``mkdocs build --strict`` renders the pages into ``--out`` (default
   ``build/book``); the report folder is copied into ``<out>/report/``.

``--only 00_tour`` builds a book of some notebooks (the browser test does), through the
same code path. Exit status 1 if a notebook raises or the site does not build.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
FINAL_FIGURES_MIME = "application/json"
# Run in the kernel after the notebook's last cell, then removed: every live plotly
# FigureWidget's figure as it stands at the end. The widget state nbclient keeps holds a
# FigureWidget's first figure only (later changes travel as deltas), so a live plot
# (LivePlot, a dashboard's curves) would be drawn empty without this.
FINAL_FIGURES = """\
def _rlnb_book_final_figures():
    import json
    from IPython.display import display
    try:
        from ipywidgets.widgets.widget import _instances
        from plotly.basewidget import BaseFigureWidget
    except ImportError:
        return
    figures = {mid: json.loads(w.to_json()) for mid, w in list(_instances.items())
               if isinstance(w, BaseFigureWidget)}
    display({"application/json": figures}, raw=True)
_rlnb_book_final_figures()
"""


def curated_notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks, in order; ``only`` picks some by stem or number prefix
    (``00_tour`` or ``00``)."""
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if not only:
        return paths
    picked = [p for p in paths if any(p.stem == o or p.stem.startswith(o + "_") for o in only)]
    unknown = [o for o in only if not any(p.stem == o or p.stem.startswith(o + "_") for p in paths)]
    if unknown:
        names = ", ".join(p.stem for p in paths)
        raise SystemExit(f"book: --only {' '.join(unknown)} names no notebook; there are: {names}")
    return picked


# --- EXECUTE ---------------------------------------------------------------------------


def _sources_digest() -> str:
    """rlnb's sources: an executed notebook is stale when the library it ran has changed."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "rlnb").rglob("*")):
        if path.suffix in (".py", ".c") and "__pycache__" not in path.parts:
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _cache_key(path: Path, mode: str, lib: str) -> str:
    """The notebook's cells (not its outputs: a copy JupyterLab saved with outputs has the
    same key), the mode and rlnb's sources."""
    nb = json.loads(path.read_text())
    cells = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    blob = json.dumps({"cells": cells, "mode": mode, "rlnb": lib, "probe": FINAL_FIGURES},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def execution_env(work: Path, full: bool) -> dict[str, str]:
    """The environment the notebook kernels run in: this checkout's rlnb first on the path,
    the Hugging Face hub offline with its cache in the work folder, quick budgets unless
    ``full``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HOME"] = str(work / "hf")
    if full:
        env.pop("RLNB_QUICK", None)
    else:
        env["RLNB_QUICK"] = "1"
    return env


def _execute(path: str, dest: str, env: dict[str, str]) -> float:
    """Run one notebook top to bottom into ``dest``; seconds taken. Raises nbclient's
    CellExecutionError (with the cell's traceback) if a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    os.environ.clear()
    os.environ.update(env)  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # a copy saved from JupyterLab may hold stale outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(FINAL_FIGURES))
    start = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    probe = nb.cells.pop()
    figures = next((o["data"][FINAL_FIGURES_MIME] for o in probe.outputs
                    if FINAL_FIGURES_MIME in o.get("data", {})), {})
    nb.metadata["rlnb_book"] = {"final_figures": figures}
    tmp = Path(dest + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(dest)
    return time.perf_counter() - start


def execute_all(paths: list[Path], work: Path, *, full: bool, jobs: int) -> dict[str, Path]:
    """Executed copies of ``paths`` in ``work/executed``, re-used where still current."""
    out = work / "executed"
    out.mkdir(parents=True, exist_ok=True)
    mode = "full" if full else "quick"
    lib = _sources_digest()
    env = execution_env(work, full)
    done: dict[str, Path] = {}
    todo: list[tuple[Path, Path, Path, str]] = []
    for path in paths:
        dest, stamp = out / path.name, out / (path.stem + ".key")
        key = _cache_key(path, mode, lib)
        if dest.exists() and stamp.exists() and stamp.read_text() == key:
            print(f"book: {path.stem}: re-used (unchanged since it was executed)", flush=True)
            done[path.stem] = dest
        else:
            stamp.unlink(missing_ok=True)
            todo.append((path, dest, stamp, key))
    failed: list[str] = []

    def finished(path: Path, dest: Path, stamp: Path, key: str, result) -> None:
        try:
            seconds = result()
        except Exception as exc:  # the cell's traceback, then carry on with the others
            failed.append(path.stem)
            print(f"book: {path.stem}: FAILED\n{exc}", file=sys.stderr, flush=True)
            return
        stamp.write_text(key)
        done[path.stem] = dest
        print(f"book: {path.stem}: executed ({mode}) in {seconds:.0f} s", flush=True)

    if jobs <= 1 or len(todo) <= 1:
        saved = dict(os.environ)
        try:
            for path, dest, stamp, key in todo:
                finished(path, dest, stamp, key,
                         lambda p=path, d=dest: _execute(str(p), str(d), env))
        finally:
            os.environ.clear()
            os.environ.update(saved)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [(t, pool.submit(_execute, str(t[0]), str(t[1]), env)) for t in todo]
            for t, future in futures:
                finished(*t, future.result)
    if failed:
        raise SystemExit(f"book: {len(failed)} notebook(s) failed: {', '.join(failed)}")
    return done


# --- STATIC ----------------------------------------------------------------------------


def plotly_html(figure: dict) -> str:
    """A plotly figure (its JSON: data, layout, config) as a ``<div>`` and the script that
    draws it with the page's ``Plotly`` (loaded once, in the page head)."""
    import plotly.io as pio

    config = {"responsive": True, "displaylogo": False, **(figure.get("config") or {})}
    fig = {k: figure[k] for k in ("data", "layout", "frames") if k in figure}
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config=config,
                       validate=False, default_width="100%")


def _strip_tags(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", text)).strip()


def _descendants(model_id: str, state: dict) -> list[tuple[str, dict]]:
    """The widget model and every model under it (``children``), depth first, with ids."""
    found, stack, seen = [], [model_id], set()
    while stack:
        mid = stack.pop()
        model = state.get(mid)
        if model is None or mid in seen:
            continue
        seen.add(mid)
        found.append((mid, model))
        children = model["state"].get("children") or []
        stack.extend(reversed([c.removeprefix("IPY_MODEL_") for c in children]))
    return found


def _progress_html(model: dict, state: dict) -> str | None:
    """tqdm's notebook bar (HBox of HTML, progress, HTML) as its final line, or None."""
    kids = [state.get(c.removeprefix("IPY_MODEL_")) for c in model["state"].get("children", [])]
    names = [k["model_name"] if k else None for k in kids]
    if model["model_name"] != "HBoxModel" or len(kids) != 3 or names[0] != "HTMLModel" \
            or names[2] != "HTMLModel" or names[1] not in ("FloatProgressModel", "IntProgressModel"):
        return None
    left, bar, right = (k["state"] for k in kids)
    return (f'<div class="rlnb-progress"><span>{left.get("value", "")}</span>'
            f'<progress max="{bar.get("max", 1)}" value="{bar.get("value", 0)}"></progress>'
            f'<span>{right.get("value", "")}</span></div>')


def _figure_widget(model_id: str, model: dict, finals: dict) -> dict | None:
    """A plotly FigureWidget's figure as the notebook left it (``finals``: FINAL_FIGURES'
    output; else the widget state's first figure), or None for another widget."""
    s = model["state"]
    if model["model_name"] != "AnyModel" or "_widget_data" not in s:
        return None
    if model_id in finals:
        return {**finals[model_id], "config": s.get("_config") or {}}
    return {"data": s["_widget_data"], "layout": s.get("_widget_layout") or {},
            "config": s.get("_config") or {}}


def widget_html(model_id: str, state: dict, notebook: str,
                finals: dict | None = None) -> str | None:
    """A widget output as static HTML: a progress bar's last line, a figure as it stood,
    or a dashboard's note plus its figures. None drops the output (a widget closed before
    the end, whose state was not kept)."""
    model = state.get(model_id)
    if model is None:
        return None
    progress = _progress_html(model, state)
    if progress is not None:
        return progress
    models = _descendants(model_id, state)
    figures = [f for mid, m in models if (f := _figure_widget(mid, m, finals or {})) is not None]
    if len(models) == 1 and figures:  # a bare FigureWidget (a live plot)
        return plotly_html(figures[0])
    heading = next((_strip_tags(m["state"]["value"]) for _, m in models
                    if m["model_name"] == "HTMLModel"
                    and re.search(r"<h[1-4]", m["state"].get("value", ""))), "")
    title = f"<b>{html.escape(heading)}</b>: an" if heading else "An"
    note = (f'<div class="rlnb-widget-note">{title} interactive dashboard. Its controls '
            f"need a running kernel: open <code>notebooks/{notebook}.ipynb</code> in "
            f"JupyterLab (<code>make lab</code>) to use them."
            + (" Below, its figure as the notebook left it." if figures else "") + "</div>")
    return note + "".join(plotly_html(f) for f in figures)


def static_notebook(nb: dict, notebook: str) -> dict:
    """A copy of an executed notebook (JSON) whose outputs render without a kernel."""
    nb = copy.deepcopy(nb)
    meta = nb.setdefault("metadata", {})
    state = meta.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    finals = meta.pop("rlnb_book", {}).get("final_figures", {})
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME in data:
                out["data"] = {"text/html": plotly_html(data[PLOTLY_MIME])}
            elif WIDGET_MIME in data:
                static = widget_html(data[WIDGET_MIME]["model_id"], state, notebook, finals)
                if static is None:
                    continue
                out["data"] = {"text/html": static}
            outputs.append(out)
        cell["outputs"] = outputs
    return nb


# --- PAGES -----------------------------------------------------------------------------


def _section(text: str, heading: str, source: str) -> str:
    """The body of a ``## heading`` section of a markdown file."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not match:
        raise SystemExit(f"book: {source} has no '## {heading}' section for the landing page")
    return match.group(1).strip()


def readme_parts() -> dict[str, str]:
    """From README.md: what rlnb is (the paragraph under the title) and the two commands
    (the first code block under '## Two commands')."""
    text = (ROOT / "README.md").read_text()
    intro = re.search(r"^# rlnb\n(.*?)(?=^## )", text, re.M | re.S)
    if not intro:
        raise SystemExit("book: README.md does not start with '# rlnb' and a paragraph")
    block = re.search(r"```\w*\n.*?```", _section(text, "Two commands", "README.md"), re.S)
    if not block:
        raise SystemExit("book: README.md's 'Two commands' section has no code block")
    return {"intro": intro.group(1).strip(), "commands": block.group(0)}


def learning_path(built: list[str]) -> str:
    """notebooks/README.md's path (its text and table), linked to the pages of this book;
    a notebook not in this build is named, not linked."""
    text = (NOTEBOOKS / "README.md").read_text()
    body = re.sub(r"\A# .*\n", "", text).strip()

    def link(match: re.Match) -> str:
        label, stem = match.group(1), match.group(2)
        if stem in built:
            return f"[{label}](notebooks/{stem}.ipynb)"
        return f"{label} *(not in this build)*"

    body = re.sub(r"\[([^\]]+)\]\((\d\d_[\w-]+)\.ipynb\)", link, body)
    # links the notebooks' README makes to the repository (docs/...), as plain text here
    return re.sub(r"\[([^\]]+)\]\((?!https?:|notebooks/)[^)]+\)", r"\1", body)


def report_section(report: Path) -> str:
    """The landing page's paragraph on the reproduction report."""
    index = report / "index.html"
    if not index.exists():
        return ('!!! note "No reproduction report has been built yet"\n'
                "    `make reproduce` runs every paper-figure reproduction headless, at full "
                "budget, into `reports/latest/`; run `make book` after it and the report is "
                "linked here. (`make reproduce-quick` writes the reduced-budget report the "
                "tests use to `reports/quick/`.)\n")
    when = _dt.datetime.fromtimestamp(index.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    summary = ""
    try:  # analysis/report.py's summary.json
        data = json.loads((report / "summary.json").read_text())
        budget = "quick budget" if data.get("quick") else "full budget"
        summary = (f" {data['n_reproductions']} reproductions at {budget}; "
                   f"{data['n_checks'] - data['n_failed']} of {data['n_checks']} checks passed.")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return (f"The latest reproduction report (`make reproduce`, written {when}) is copied "
            f'into this site: <a href="report/index.html"><b>open the report</b></a>.'
            f"{summary} Each reproduction has its figure, its numbers and the checks "
            "against its paper card.\n")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def landing_page(built: list[str], *, full: bool, report: Path) -> str:
    parts = readme_parts()
    commit = _git_commit()
    when = _dt.date.today().isoformat()
    budgets = ("the budgets a reader gets in JupyterLab" if full else
               "`RLNB_QUICK=1`, the reduced budgets the notebook tests use: curves are "
               "shorter and noisier than in JupyterLab, and numbers in the text may differ "
               "from the outputs below them (`make book BOOK_ARGS=--full` for the full runs)")
    template = (HERE / "index.md").read_text()
    fill = {
        "intro": parts["intro"],
        "commands": parts["commands"],
        "path": learning_path(built),
        "budgets": budgets,
        "built": f"{when}" + (f", commit `{commit}`" if commit else ""),
        "report": report_section(report),
    }
    for key, value in fill.items():
        template = template.replace("{{ " + key + " }}", value)
    return template


# --- SITE ------------------------------------------------------------------------------


def write_sources(executed: dict[str, Path], work: Path, *, full: bool, report: Path,
                  out: Path) -> Path:
    """The MkDocs project in ``work``: docs/ (landing page, static notebooks, assets) and
    mkdocs.yml; returns mkdocs.yml's path."""
    docs = work / "docs"
    shutil.rmtree(docs, ignore_errors=True)
    (docs / "notebooks").mkdir(parents=True)
    (docs / "assets").mkdir()
    for stem, path in executed.items():
        nb = static_notebook(json.loads(path.read_text()), stem)
        (docs / "notebooks" / f"{stem}.ipynb").write_text(json.dumps(nb, ensure_ascii=False))
    plotly_js = resources.files("plotly") / "package_data" / "plotly.min.js"
    (docs / "assets" / "plotly.min.js").write_bytes(plotly_js.read_bytes())
    shutil.copy(HERE / "book.css", docs / "assets" / "book.css")
    (docs / "index.md").write_text(landing_page(list(executed), full=full, report=report))

    config = yaml.safe_load((HERE / "mkdocs.yml").read_text())
    config.update(docs_dir=str(docs), site_dir=str(out))
    config["theme"]["custom_dir"] = str(HERE / "overrides")
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocs-jupyter" in plugin:
            plugin["mkdocs-jupyter"]["cache_dir"] = str(work / "mkdocs-jupyter")
    config["nav"] = [{"Home": "index.md"},
                     {"Notebooks": [f"notebooks/{stem}.ipynb" for stem in executed]}]
    path = work / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def build_site(config: Path, out: Path, report: Path) -> None:
    """``mkdocs build --strict`` (a broken link or a missing page fails the build), then
    the reproduction report into ``out/report``."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
                           "-f", str(config)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"book: mkdocs build failed:\n{proc.stdout}{proc.stderr}")
    if (report / "index.html").exists():
        dest = out / "report"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(report, dest, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard links where the file system allows (the report's figures are a few MB each)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build(*, out: Path, only: list[str] | None = None, full: bool = False, jobs: int = 1,
          report: Path | None = None, work: Path | None = None) -> Path:
    """Build the book into ``out``; returns the landing page's path."""
    out, report = out.resolve(), (report or ROOT / "reports" / "latest").resolve()
    work = (work or out.parent / (out.name + "-work")).resolve()
    paths = curated_notebooks(only)
    executed = execute_all(paths, work, full=full, jobs=jobs)
    executed = {p.stem: executed[p.stem] for p in paths}
    config = write_sources(executed, work, full=full, report=report, out=out)
    build_site(config, out, report)
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book",
                        help="the site's folder (default build/book; emptied first)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="build a book of these notebooks only (stem or number: 00_tour, 03)")
    parser.add_argument("--full", action="store_true",
                        help="execute at full budget (default: RLNB_QUICK=1, the tests' budgets)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks executed at once, one kernel each (default 1)")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "latest",
                        help="the reproduction report to link (default reports/latest)")
    parser.add_argument("--work", type=Path, default=None,
                        help="executed notebooks and the MkDocs sources (default <out>-work)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    index = build(out=args.out, only=args.only, full=args.full, jobs=args.jobs,
                  report=args.report, work=args.work)
    print(f"book: built {index} in {time.perf_counter() - start:.0f} s")
    return 0
