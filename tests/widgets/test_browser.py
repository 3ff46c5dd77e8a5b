"""The live-training dashboard as a user sees it: JupyterLab in Chromium, driven by Playwright.

The test starts JupyterLab from this environment on 127.0.0.1, opens
``notebooks/00_tour.ipynb``, runs every cell from the Run menu, moves the learning-rate
slider with the keyboard, sets the step budget, presses Start and checks in the page that
the plotly figure grows while the kernel stays idle (training runs in a background
thread), then presses Stop. The screenshot is checked (a real PNG of the dashboard) and
kept in the test's temporary folder; with ``RLNB_UPDATE_SCREENSHOT=1`` it also replaces
the one in the README (``docs/images/live_training.png``), so a plain ``make test``
leaves the working tree clean.

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

import pytest

from tests._processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = "00_tour.ipynb"
SCREENSHOT = ROOT / "docs" / "images" / "live_training.png"
DASHBOARD_TITLE = "GRPO on the strategy bandit, live"
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


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of the tour notebook; yields ``(base_url, token)``."""
    served = tmp_path / "notebooks"
    served.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, served / NOTEBOOK)
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
    return plot.first.evaluate("gd => (gd.data || []).map(t => (t.x || []).length)")


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_live_training_dashboard_in_chromium(lab, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing at /usr/bin/chromium "
                    "(`make test` installs it; or apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is missing (pip install playwright; the browser is "
               "Debian's chromium, never `playwright install`)")
    base_url, token = lab
    started = time.time()
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1100})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base_url}/lab/tree/{NOTEBOOK}?reset&token={token}")
            _wait_for_kernel(page, timeout=90)

            page.keyboard.press("Control+b")  # hide the file browser: a wider notebook
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
            dashboard = page.locator(".widget-vbox").filter(has_text=DASHBOARD_TITLE).first
            _wait_until(lambda: _accept_kernel_dialog(page) or dashboard.is_visible(), 120,
                        "the dashboard to render")
            start = dashboard.locator("button", has_text="Start")
            stop = dashboard.locator("button", has_text="Stop")
            status = dashboard.locator(".widget-html").filter(has_text="step").last
            dashboard.locator(".js-plotly-plot").first.wait_for()
            assert start.is_enabled() and not stop.is_enabled()

            # A slider moved with the keyboard: its readout follows.
            lr = dashboard.locator(".widget-slider").filter(has_text="learning rate").first
            readout = lr.locator(".widget-readout")
            before = readout.inner_text()
            lr.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            _wait_until(lambda: readout.inner_text() != before, 10, "the slider readout")
            assert float(readout.inner_text()) > float(before)

            # A step budget typed into its box.
            steps = dashboard.locator(".widget-text").filter(has_text="steps").locator("input")
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
                lambda: (n := _trace_lengths(dashboard)) and min(n) >= 150 and n, 45,
                "150 steps")
            assert len(set(lengths)) == 1  # every panel shows the same steps
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
            context.close()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "live_training.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("RLNB_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, SCREENSHOT)
    print(f"browser test body took {time.time() - started:.1f} s; screenshot: {shot}")
