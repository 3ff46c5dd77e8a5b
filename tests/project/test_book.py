"""The notebooks as a book: ``make book``'s builder makes a site whose pages render.

The book is built from one notebook (``python -m book --only 00_tour``, the same code path
as ``make book``, which builds them all) into a temporary folder, served on 127.0.0.1 and
opened in Debian's Chromium through Playwright (``executable_path``; Playwright never
downloads a browser). The landing page must say what rlnb is, give the two commands and
the learning path, and say that no reproduction report exists yet; a second build, with a
report, must re-use the executed notebook and link the report. On the notebook's page a
plotly figure must be drawn (an SVG inside ``.js-plotly-plot``) with every request to
anything but the local server refused: the site works offline.

The builder's pieces (outputs made static, the landing page's text) are tested without
building. The built-book tests are ``slow`` and skipped when the ``book`` extra is not
installed (``make book`` installs it; ``make test`` does not).
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
NOTEBOOK = "00_tour"



def _need_book_extra() -> None:
    for module, package in (("mkdocs_jupyter", "mkdocs-jupyter"), ("material", "mkdocs-material")):
        pytest.importorskip(module, reason=f"the book extra is not installed ({package}): "
                            "`make book` installs it (or pip install -e '.[book]')")


# --- the builder's pieces, without building (no book extra needed) ---------------------


def _widget_state(*models):
    return {mid: {"model_name": name, "state": state} for mid, name, state in models}


def test_outputs_become_static_html():
    from book.build import PLOTLY_MIME, WIDGET_MIME, WIDGET_STATE, static_notebook

    fig = {"data": [{"type": "scatter", "x": [0, 1], "y": [1, 0]}], "layout": {"title": {"text": "t"}}}
    state = _widget_state(
        ("bar", "HBoxModel", {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}),
        ("l", "HTMLModel", {"value": "training: 100%"}),
        ("p", "FloatProgressModel", {"value": 30, "max": 30}),
        ("r", "HTMLModel", {"value": "30/30 [00:01&lt;00:00]"}),
        ("dash", "VBoxModel", {"children": ["IPY_MODEL_h", "IPY_MODEL_fw"]}),
        ("h", "HTMLModel", {"value": "<h3>GRPO, live</h3>"}),
        ("fw", "AnyModel", {"_widget_data": fig["data"], "_widget_layout": fig["layout"]}),
    )

    def view(mid):
        return {"output_type": "display_data", "metadata": {},
                "data": {WIDGET_MIME: {"model_id": mid}, "text/plain": "VBox(...)"}}

    final = {"data": [{"type": "scatter", "x": [0, 1, 2], "y": [5, 6, 7]}], "layout": {}}
    nb = {"metadata": {"widgets": {WIDGET_STATE: {"state": state}},
                       "rlnb_book": {"final_figures": {"fw": final}}}, "cells": [
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {PLOTLY_MIME: fig}},
            view("bar"), view("dash"), view("closed"),
            {"output_type": "stream", "name": "stdout", "text": "hi\n"}]}]}
    out = static_notebook(nb, "00_tour")
    assert "widgets" not in out["metadata"] and "widgets" in nb["metadata"]  # a copy
    assert "rlnb_book" not in out["metadata"]
    outputs = out["cells"][0]["outputs"]
    assert len(outputs) == 4, "the closed widget's output is dropped, the rest kept"
    figure, bar, dash, stream = outputs
    assert set(figure["data"]) == {"text/html"} and "Plotly.newPlot" in figure["data"]["text/html"]
    assert "cdn.plot.ly" not in figure["data"]["text/html"]
    assert '<progress max="30" value="30">' in bar["data"]["text/html"]
    assert "training: 100%" in bar["data"]["text/html"]
    note = dash["data"]["text/html"]
    assert "GRPO, live" in note and "make lab" in note and "notebooks/00_tour.ipynb" in note
    assert "Plotly.newPlot" in note, "the dashboard's FigureWidget is drawn after its note"
    assert "[5,6,7]" in note.replace(" ", ""), "the FigureWidget is drawn as it ended, not began"
    assert stream["text"] == "hi\n"


def test_landing_page_comes_from_the_readmes(tmp_path):
    from book.build import learning_path, readme_parts, report_section

    parts = readme_parts()
    assert "make lab" in parts["commands"] and "make test" in parts["commands"]
    assert parts["commands"].startswith("```") and parts["commands"].endswith("```")
    assert "Jupyter-first" in parts["intro"]
    path = learning_path(["00_tour"])
    assert "[00_tour](notebooks/00_tour.ipynb)" in path
    assert "01_policy_gradients_on_bandits *(not in this build)*" in path
    assert "](../" not in path and "](docs/" not in path
    assert "make reproduce" in report_section(tmp_path / "none")


def test_only_names_a_notebook():
    from book.build import curated_notebooks

    assert [p.stem for p in curated_notebooks(["00"])] == ["00_tour"]
    assert len(curated_notebooks(None)) == len(list((ROOT / "notebooks").glob("[0-9]*.ipynb")))
    with pytest.raises(SystemExit, match="names no notebook"):
        curated_notebooks(["99_nothing"])


# --- the built book, in the browser --------------------------------------------------------


def _build(out: Path, work: Path, report: Path) -> str:
    env = {**os.environ, "RLNB_CACHE": os.environ.get("RLNB_CACHE", str(work / "cache"))}
    proc = subprocess.run(
        [sys.executable, "-m", "book", "--only", NOTEBOOK, "--out", str(out),
         "--work", str(work), "--report", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The book of one notebook, built twice: without a report, then with one."""
    _need_book_extra()
    tmp = tmp_path_factory.mktemp("book")
    work = tmp / "work"
    first = _build(tmp / "no-report", work, tmp / "no-such-report")
    report = tmp / "reports" / "latest"
    report.mkdir(parents=True)
    (report / "index.html").write_text("<title>rlnb reproductions</title><h1>the report</h1>")
    second = _build(tmp / "site", work, report)
    return {"tmp": tmp, "first": first, "second": second,
            "no_report": tmp / "no-report", "site": tmp / "site"}


@pytest.mark.slow
def test_build_executes_once_and_reuses(book):
    assert f"{NOTEBOOK}: executed (quick)" in book["first"], book["first"]
    assert f"{NOTEBOOK}: re-used" in book["second"], book["second"]
    page = book["site"] / "notebooks" / NOTEBOOK / "index.html"
    assert page.exists()
    html = page.read_text()
    assert "Plotly.newPlot" in html, "no plotly figure on the notebook's page"
    assert "cdn.plot.ly" not in html, "the page loads plotly.js from a CDN"
    assert (book["site"] / "assets" / "plotly.min.js").stat().st_size > 1_000_000


@pytest.mark.slow
def test_landing_page_says_when_no_report_was_built(book):
    html = (book["no_report"] / "index.html").read_text()
    assert "No reproduction report has been built yet" in html
    assert "make reproduce" in html
    assert not (book["no_report"] / "report").exists()


@pytest.mark.slow
def test_landing_page_links_the_report(book):
    html = (book["site"] / "index.html").read_text()
    assert 'href="report/index.html"' in html
    assert "No reproduction report" not in html
    assert (book["site"] / "report" / "index.html").read_text().startswith("<title>rlnb")


@pytest.fixture
def served(book):
    handler = functools.partial(_QuietHandler, directory=str(book["site"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make chromium)")
def test_site_renders_in_chromium(served, book):
    sync_api = pytest.importorskip("playwright.sync_api")
    outside: list[str] = []
    errors: list[str] = []

    def only_local(route):
        if route.request.url.startswith(served):
            route.continue_()
        else:  # the site must not need the internet
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", only_local)

            # --- the landing page: what rlnb is, the two commands, the learning path
            page.goto(served)
            body = page.locator("article").inner_text()
            assert "Jupyter-first research notebook package" in body
            assert "make lab" in body and "make test" in body
            assert "The learning path" in body
            link = page.locator(f'article a[href*="notebooks/{NOTEBOOK}"]')
            assert link.count() >= 1, "the learning path does not link the built notebook"
            assert page.locator('article a[href="report/index.html"]').count() == 1
            page.screenshot(path=str(book["tmp"] / "landing.png"), full_page=True)

            # --- a notebook page: its plotly figures are drawn
            link.first.click()
            page.wait_for_url(f"**/notebooks/{NOTEBOOK}/")
            page.wait_for_selector(".js-plotly-plot svg.main-svg", timeout=30_000)
            plots = page.locator(".js-plotly-plot")
            assert plots.count() >= 2
            drawn = plots.first.evaluate("gd => (gd.data || []).length")
            assert drawn >= 1, "the plotly figure has no traces"
            assert page.locator(".rlnb-widget-note").count() >= 1, \
                "the dashboard is not replaced by its note"
            page.screenshot(path=str(book["tmp"] / "notebook.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the pages: {errors}"
    assert not outside, f"the site requested resources off the local server: {outside}"
    for name in ("landing.png", "notebook.png"):
        assert (book["tmp"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
