"""The dashboards as a user sees them: JupyterLab in Chromium, driven by Playwright.

One JupyterLab server (from this environment, on 127.0.0.1) serves both notebooks:

- ``notebooks/00_tour.ipynb``: the test runs every cell from the Run menu, checks the
  empty, titled panels and the long default budget, moves the learning-rate slider with
  the keyboard, sets the step budget, presses Start and checks in the page that the plotly
  figure grows while the kernel stays idle (training runs in a background thread), then
  presses Stop.
- ``widgets.ipynb``, written here: a ``PassKExplorer``, a ``RolloutBrowser`` and a
  ``GridworldExplorer`` on small inputs. The test changes controls of each (a checkbox,
  a multiple selection, a dropdown, toggle buttons, a button, a slider) and checks that
  the figure or the table in the page changed.

Each dashboard's screenshot is checked (a real PNG), trimmed of its white margin and
scaled to at most 1000 px wide, and kept in the test's temporary folder; with
``RLNB_UPDATE_SCREENSHOT=1`` it also replaces the one in ``docs/images/`` (shown in the
README and ``docs/WIDGETS.md``), so a plain ``make test`` leaves the working tree clean.

Set-up that keeps the run hermetic: temporary JUPYTER_CONFIG_DIR / DATA_DIR / RUNTIME_DIR,
IPYTHONDIR and workspaces; a copy of the notebook (so the committed one never receives
outputs); lab settings overrides that turn off the news pop-up and autosave. Chromium is
Debian's ``/usr/bin/chromium``; Playwright never downloads a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tests._processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = "00_tour.ipynb"
IMAGES = ROOT / "docs" / "images"
SHOT_WIDTH = 1000  # pixels, at most, of a kept screenshot
DASHBOARD_TITLE = "GRPO on the strategy bandit, live"
WIDGETS_NOTEBOOK = "widgets.ipynb"
#: The cells of the explorers' notebook: small inputs, one dashboard per cell.
WIDGET_CELLS = [
    """\
import numpy as np

from rlnb.widgets import GridworldExplorer, PassKExplorer, RolloutBrowser

rng = np.random.default_rng(0)""",
    """\
# pass@k of a base model and an RL run on 12 problems, 16 samples each
P, N = 12, 16
answers = {p: str(7 + p) for p in range(P)}
base = rng.binomial(N, np.linspace(0.05, 0.6, P))
rl = np.where(np.arange(P) % 4 == 3, 0, rng.binomial(N, 0.8, P))
samples = {}
for model, counts in (("base", base), ("after GRPO", rl)):
    samples[model] = {}
    for p, c in enumerate(counts):
        wrong = rng.choice(["3", "", "91", str(13 + p)], N - int(c)).tolist()
        items = [(answers[p], True)] * int(c) + [(w, False) for w in wrong]
        samples[model][p] = [items[i] for i in rng.permutation(N)]
PassKExplorer({"base": base, "after GRPO": rl}, n=N, samples=samples,
              title="pass@k before and after RL")""",
    """\
# 12 completions of a factoring task; per-token entropy; "</s>" ends each one
tokens, values, rewards = [], np.zeros((12, 6)), []
for i in range(12):
    digits = [str(d) for d in rng.integers(0, 10, rng.integers(1, 5))]
    tokens.append(digits + ["</s>"])
    values[i, : len(tokens[-1])] = rng.gamma(1.0, 0.5, len(tokens[-1]))
    rewards.append(float(i % 3 == 0))
RolloutBrowser(tokens, values, rewards=rewards, page_size=4,
               prompts=[f"{91 + i} = " for i in range(12)])""",
    """GridworldExplorer(name="open5", sticky=0.0)""",
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LAB_OVERRIDES = {  # merged over .jupyter/overrides.json
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app_settings(tmp_path: Path) -> Path:
    """This environment's lab settings, plus the overrides (news pop-up and autosave off).

    JupyterLab reads ``overrides.json`` from its app settings directory
    (``<prefix>/share/jupyter/lab/settings``, which ``make install`` fills); a temporary
    copy pointed at with ``--LabApp.app_settings_dir`` leaves the environment untouched.
    """
    settings = tmp_path / "app-settings"
    installed = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings"
    if installed.is_dir():
        shutil.copytree(installed, settings)
    settings.mkdir(exist_ok=True)
    overrides = json.loads((ROOT / ".jupyter" / "overrides.json").read_text())
    path = settings / "overrides.json"
    if path.exists():
        overrides.update(json.loads(path.read_text()))
    overrides.update(LAB_OVERRIDES)
    path.write_text(json.dumps(overrides, indent=2))
    return settings


def _write_widgets_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# The explorers")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in WIDGET_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def sync_api():
    """Playwright's sync API, once chromium and playwright are known to be here."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing at /usr/bin/chromium "
                    "(`make test` installs it; or apt-get install chromium)")
    return pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is missing (pip install playwright; the browser is "
               "Debian's chromium, never `playwright install`)")


@pytest.fixture(scope="module")
def lab(sync_api, tmp_path_factory):
    """JupyterLab serving a copy of the tour notebook and the explorers' notebook;
    yields ``(base_url, token)``. One server for every test of this module."""
    tmp_path = tmp_path_factory.mktemp("lab")
    served = tmp_path / "notebooks"
    served.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, served / NOTEBOOK)
    _write_widgets_notebook(served / WIDGETS_NOTEBOOK)
    runtime = tmp_path / "runtime"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),  # the venv's kernel is found via sys.prefix
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "RLNB_QUICK": "1",  # the tour's first training run on a tiny budget
    }
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}",
           "--no-browser", f"--ServerApp.root_dir={served}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           f"--LabApp.app_settings_dir={_app_settings(tmp_path)}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        info, deadline = None, time.time() + 60
        while info is None and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            for f in runtime.glob("jpserver-*.json"):
                info = json.loads(f.read_text())
            time.sleep(0.2)
        assert info is not None, "JupyterLab did not start within 60 s"
        yield f"http://127.0.0.1:{port}", info["token"]
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="module")
def browser(sync_api, tmp_path_factory):
    """One headless Chromium for every test of this module."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1100})
        try:
            yield context
        finally:
            context.close()


_KERNEL_IDLE_JS = """() => {
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const items = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'),
                           e => e.textContent);
  return !!indicator && indicator.getAttribute('data-status') === 'idle'
         && items.some(t => t.includes('| Idle') && !t.startsWith('No Kernel'));
}"""


def _kernel_idle(page) -> bool:
    return page.evaluate(_KERNEL_IDLE_JS)


def _wait_for_kernel(page, timeout: float) -> None:
    """Wait until the notebook's kernel is started and idle.

    The toolbar's execution indicator alone is not enough: it reads ``idle`` while the
    status bar still says "No Kernel | Initializing", and running cells then opens the
    Select Kernel dialog. The status bar must show a kernel name and "Idle" too.
    """
    page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout * 1000, polling=250)


def _accept_kernel_dialog(page) -> bool:
    """Accept a Select Kernel dialog (the preselected kernel is this environment's)."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count() and dialog.first.is_visible():
        dialog.first.locator(".jp-mod-accept").click()
    return False


def _trace_lengths(dashboard) -> list[int]:
    """Points per trace of the dashboard's plotly figure, read from plotly.js in the page."""
    plot = dashboard.locator(".js-plotly-plot")
    if plot.count() == 0:
        return []
    return plot.first.evaluate(  # the empty traces that draw the panels' frames left out
        "gd => (gd.data || []).filter(t => t.meta !== 'empty frame').map(t => (t.x || []).length)")


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _keep_screenshot(shot: Path) -> Path:
    """Check ``shot`` is a real PNG; trim its white margin and scale it to at most
    SHOT_WIDTH pixels wide (in place); with RLNB_UPDATE_SCREENSHOT=1 copy it to
    docs/images/."""
    from PIL import Image, ImageChops

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    image = Image.open(shot).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    assert box is not None, f"{shot.name} is blank"
    left, top, right, bottom = box
    image = image.crop((max(left - 8, 0), max(top - 8, 0), min(right + 8, image.width),
                        min(bottom + 8, image.height)))
    if image.width > SHOT_WIDTH:
        image = image.resize((SHOT_WIDTH, round(image.height * SHOT_WIDTH / image.width)),
                             Image.LANCZOS)
    image.save(shot, optimize=True)
    if os.environ.get("RLNB_UPDATE_SCREENSHOT") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, IMAGES / shot.name)
    return shot


def _open_and_run(browser, lab, notebook: str, height: int = 1100):
    """A new tab with ``notebook`` open, its kernel idle, every cell run (Run menu)."""
    base_url, token = lab
    page = browser.new_page()
    page.set_viewport_size({"width": 1400, "height": height})
    page.set_default_timeout(60_000)
    page.goto(f"{base_url}/lab/tree/{notebook}?reset&token={token}")
    _wait_for_kernel(page, timeout=90)
    page.keyboard.press("Control+b")  # hide the file browser: a wider notebook
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    return page


def _plot(widget, index: int = 0):
    """What plotly.js draws in the widget's ``index``-th figure: traces (name, points),
    the title, the x axis type and the first trace's z values."""
    plot = widget.locator(".js-plotly-plot").nth(index)
    return plot.evaluate("""gd => ({
        traces: (gd.data || []).filter(t => t.meta !== 'empty frame')
                               .map(t => [t.name || '', (t.x || t.z || []).length]),
        title: ((gd.layout.title || {}).text) || '',
        xtype: ((gd.layout.xaxis || {}).type) || '',
        ytitle: (((gd.layout.yaxis || {}).title || {}).text) || '',
        notes: (gd.layout.annotations || []).map(a => a.text),
        z: JSON.stringify((gd.data[0] || {}).z || null)})""")


@pytest.mark.slow
def test_live_training_dashboard_in_chromium(lab, browser, tmp_path):
    started = time.time()
    page = _open_and_run(browser, lab, NOTEBOOK)
    try:
        dashboard = page.locator(".widget-vbox").filter(has_text=DASHBOARD_TITLE).first
        _wait_until(lambda: _accept_kernel_dialog(page) or dashboard.is_visible(), 120,
                    "the dashboard to render")
        start = dashboard.locator("button", has_text="Start")
        stop = dashboard.locator("button", has_text="Stop")
        status = dashboard.locator(".widget-html").filter(has_text="step").last
        dashboard.locator(".js-plotly-plot").first.wait_for()
        assert start.is_enabled() and not stop.is_enabled()

        # Before Start: empty frames, titled, over the long default budget.
        steps = dashboard.locator(".widget-text").filter(has_text="steps").locator("input")
        assert int(steps.input_value().replace(",", "")) >= 10_000
        empty = _plot(dashboard)
        assert empty["ytitle"] == "reward" and any("press Start" in t for t in empty["notes"])
        assert any(t.startswith("reward") for t in empty["notes"])
        dashboard.screenshot(path=str(tmp_path / "live_training_before_start.png"))

        # A slider moved with the keyboard: its readout follows.
        lr = dashboard.locator(".widget-slider").filter(has_text="learning rate").first
        readout = lr.locator(".widget-readout")
        before = readout.inner_text()
        lr.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        _wait_until(lambda: readout.inner_text() != before, 10, "the slider readout")
        assert float(readout.inner_text()) > float(before)

        # A step budget typed into its box.
        steps.fill("1000")
        steps.press("Enter")

        assert max(_trace_lengths(dashboard), default=0) == 0  # nothing trained yet
        start.click()
        _wait_until(lambda: max(_trace_lengths(dashboard), default=0) >= 5, 60,
                    "the figure's first points")
        # The slider's value and the typed budget reached the training thread.
        _wait_until(lambda: "/1000" in status.inner_text(), 10, "the new step budget")
        assert f"lr {readout.inner_text()}" in status.inner_text()
        # The figure keeps growing while the kernel is idle: training runs beside it.
        first = max(_trace_lengths(dashboard))
        _wait_until(lambda: max(_trace_lengths(dashboard)) > first, 30, "more points")
        # Idle between the brief busy blips of widget messages, never stuck in a cell.
        _wait_until(lambda: _kernel_idle(page) and "running" in status.inner_text(), 20,
                    "an idle kernel while the dashboard trains", interval=0.05)
        lengths = _wait_until(
            lambda: (n := _trace_lengths(dashboard)) and min(n) >= 300 and n, 60,
            "300 steps")
        assert len(set(lengths)) == 1  # every panel shows the same steps
        running = _plot(dashboard)
        assert not any("press Start" in t for t in running["notes"])  # the note went
        names = [name for name, _ in running["traces"]]
        assert names.count(names[0]) >= 2  # reward per step, and its running mean
        assert "left" in status.inner_text()
        page.mouse.move(0, 0)  # no hover labels or plotly mode bar in the picture
        dashboard.screenshot(path=str(tmp_path / "live_training.png"))

        stop.click()
        _wait_until(lambda: any(s in status.inner_text() for s in ("stopped", "finished")),
                    30, "the run to stop")
        final = _trace_lengths(dashboard)
        time.sleep(1.0)
        assert _trace_lengths(dashboard) == final, "the figure still grows after Stop"
        assert start.is_enabled() and not stop.is_enabled()
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        raise
    finally:
        page.close()
    _keep_screenshot(tmp_path / "live_training.png")
    print(f"browser test body took {time.time() - started:.1f} s; screenshots: {tmp_path}")


def _output(page, text: str):
    """The first widget box of the output that shows ``text``."""
    return (page.locator(".jp-OutputArea-output").filter(has_text=text).first
            .locator(".widget-vbox").first)


@pytest.mark.slow
def test_explorers_in_chromium(lab, browser, tmp_path):
    """PassKExplorer, RolloutBrowser, GridworldExplorer: change a control, see the
    figure or the table change."""
    started = time.time()
    page = _open_and_run(browser, lab, WIDGETS_NOTEBOOK, height=1600)  # room for a whole explorer
    print(f"{time.time() - started:.1f} s: cells running")
    try:
        passk, rollouts, grid = (_output(page, "k range"), _output(page, "next ▶"),
                                 _output(page, "sticky"))
        _wait_until(lambda: _accept_kernel_dialog(page) or grid.is_visible(), 120,
                    "the explorers to render")
        for widget in (passk, rollouts, grid):
            widget.wait_for()
        print(f"{time.time() - started:.1f} s: explorers shown")

        # --- PassKExplorer: the log-k checkbox, the models, the problem ---------------
        passk.locator(".js-plotly-plot").first.wait_for()
        shown = _plot(passk)
        assert [name for name, _ in shown["traces"]] == ["base", "after GRPO"]
        assert shown["xtype"] == "log"
        passk.locator(".widget-checkbox input").click()
        _wait_until(lambda: _plot(passk)["xtype"] == "linear", 10, "a linear k axis")
        passk.locator(".widget-checkbox input").click()
        _wait_until(lambda: _plot(passk)["xtype"] == "log", 10, "the log k axis again")
        view = passk.locator(".widget-html").last
        assert "distinct of 16" in view.inner_text()
        first_problem = view.inner_text()
        passk.locator(".widget-dropdown select").select_option(index=3)
        _wait_until(lambda: view.inner_text() != first_problem, 10, "another problem's samples")
        passk.locator(".widget-select-multiple select").select_option(["after GRPO"])
        _wait_until(lambda: [n for n, _ in _plot(passk)["traces"]] == ["after GRPO"], 10,
                    "one model's curve")
        assert "base:" not in view.inner_text()  # the samples follow the models
        passk.locator(".widget-select-multiple select").select_option(["base", "after GRPO"])
        _wait_until(lambda: len(_plot(passk)["traces"]) == 2, 10, "both curves again")
        toggle = passk.locator("details summary").first  # every sample, behind a toggle
        toggle.click()
        _wait_until(lambda: view.inner_text().count("✗") > 16, 10, "every sample listed")
        toggle.click()
        page.mouse.move(0, 0)
        passk.screenshot(path=str(tmp_path / "passk_explorer.png"))
        print(f"{time.time() - started:.1f} s: PassKExplorer checked")

        # --- RolloutBrowser: the filter, the pages; EOS labelled ------------------------
        label = rollouts.locator(".widget-html").filter(has_text="page").first
        body = rollouts.locator(".widget-html").last
        assert "page 1/3 · 12 completions" in label.inner_text()
        assert body.inner_text().count("EOS") == 4 and "</s>" not in body.inner_text()
        page_one = body.inner_text()
        rollouts.locator("button", has_text="next ▶").click()
        _wait_until(lambda: "page 2/3" in label.inner_text(), 10, "page 2")
        assert body.inner_text() != page_one
        rollouts.locator(".widget-toggle-button", has_text="incorrect").click()
        _wait_until(lambda: "8 completions" in label.inner_text(), 10, "the incorrect ones")
        assert "✓" not in body.inner_text() and "✗" in body.inner_text()
        rollouts.locator(".widget-toggle-button", has_text="all").click()
        _wait_until(lambda: "12 completions" in label.inner_text(), 10, "all of them")
        colours = body.evaluate("""el => Array.from(el.querySelectorAll('span[title]'),
                                                     s => s.style.background)""")
        assert len(set(colours)) > 3  # tokens coloured by their entropy
        rollouts.screenshot(path=str(tmp_path / "rollout_browser.png"))
        print(f"{time.time() - started:.1f} s: RolloutBrowser checked")

        # --- GridworldExplorer: the map, the slip slider -------------------------------
        status = grid.locator(".widget-html").first
        grid.locator(".js-plotly-plot").nth(1).wait_for()
        assert "open5" in status.inner_text() and "open5" in _plot(grid, 0)["title"]
        open5 = _plot(grid, 0)["z"]
        grid.locator(".widget-dropdown select").select_option("lock3")
        _wait_until(lambda: "lock3" in status.inner_text(), 20, "the lock3 map")
        _wait_until(lambda: "lock3" in _plot(grid, 0)["title"], 20, "lock3's value heatmap")
        assert _plot(grid, 0)["z"] != open5
        no_slip = (_plot(grid, 0)["z"], _plot(grid, 1)["title"])
        slip = grid.locator(".widget-slider").filter(has_text="slip").first
        slip.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        _wait_until(lambda: "slip 0.05" in status.inner_text(), 20, "slip 0.05")
        _wait_until(lambda: (_plot(grid, 0)["z"], _plot(grid, 1)["title"]) != no_slip, 20,
                    "V* and the effective horizon recomputed with slip")
        page.mouse.move(0, 0)
        grid.screenshot(path=str(tmp_path / "gridworld_explorer.png"))
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        raise
    finally:
        page.close()
    for name in ("passk_explorer.png", "rollout_browser.png", "gridworld_explorer.png"):
        _keep_screenshot(tmp_path / name)
    print(f"explorers' browser test took {time.time() - started:.1f} s; screenshots: {tmp_path}")
