"""Write figures to disk: PNG through kaleido and a local Chromium, HTML with plotly.js inside.

PNG export needs a Chrome-family browser. rlnb uses the system one (Debian's ``chromium``,
``apt-get install chromium`` or ``make chromium``) and never lets kaleido download its own.
The first PNG of a process starts a browser (~2 s); later ones reuse it through kaleido's
sync server (~0.2 s each), so exporting a report's worth of figures stays quick.

Every writer is atomic: it writes a temporary file next to the target and renames it, so an
interrupted run never leaves a half-written PNG or HTML behind.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

__all__ = [
    "CHROMIUM_MISSING",
    "atomic_write_bytes",
    "atomic_write_text",
    "find_chromium",
    "to_png_bytes",
    "write_html",
    "write_png",
]

CHROMIUM_MISSING = (
    "PNG export needs Chromium: install it with `apt-get install chromium` (or `make chromium`)"
)

# Names looked up on PATH, in order, then the usual absolute paths.
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_BROWSER_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

# Longest wait for one image through the shared server before giving up on it. kaleido's
# own per-image timeout is 90 s; this also covers the browser's start.
_SERVER_WAIT_S = 180.0

_lock = threading.Lock()
_server_state = {"started": False, "broken": False, "path": None}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "x" (not mkstemp, whose 0600 mode would outlive the rename).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def find_chromium() -> str | None:
    """The Chrome-family browser PNG export will use, or ``None``.

    Looks at ``$BROWSER_PATH`` (the variable kaleido's browser layer also honours), then
    ``chromium``/``google-chrome`` on ``PATH``, then ``/usr/bin/chromium``.
    """
    env = os.environ.get("BROWSER_PATH")
    if env and os.path.isfile(env) and os.access(env, os.X_OK):
        return env
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    for candidate in _BROWSER_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _kaleido_options(browser: str) -> dict:
    # path: the browser to run (kaleido would otherwise search, and may suggest downloading).
    # mathjax=False: MathJax comes from a CDN, unreachable offline; rlnb titles use Unicode.
    return {"path": browser, "mathjax": False}


def _render_oneshot(kaleido, fig: go.Figure, opts: dict, browser: str) -> bytes:
    return kaleido.calc_fig_sync(fig, opts=opts, kopts=_kaleido_options(browser))


def _render_on_server(kaleido, fig: go.Figure, opts: dict) -> bytes | None:
    """Render through kaleido's shared server; ``None`` if the server died or hung.

    kaleido's sync server waits forever on a request when its browser failed to start, so
    the request runs in a helper thread that is abandoned if the server thread has died or
    the wait runs past :data:`_SERVER_WAIT_S`.
    """
    box: dict = {}

    def call() -> None:
        try:
            box["png"] = kaleido.calc_fig_sync(fig, opts=opts)
        except BaseException as err:  # handed back to the caller below
            box["error"] = err

    worker = threading.Thread(target=call, daemon=True, name="rlnb-png")
    worker.start()
    server_thread = getattr(getattr(kaleido, "_global_server", None), "_thread", None)
    deadline = time.monotonic() + _SERVER_WAIT_S
    while worker.is_alive():
        worker.join(0.05)
        if server_thread is not None and not server_thread.is_alive() and worker.is_alive():
            return None
        if time.monotonic() > deadline:
            return None
    if "error" in box:
        raise box["error"]
    return box["png"]


def to_png_bytes(fig: go.Figure, *, width: int = 900, height: int = 520, scale: float = 2) -> bytes:
    """Render ``fig`` to PNG bytes (see :func:`write_png`)."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError(CHROMIUM_MISSING)
    import kaleido  # deferred: importing it is not free and HTML export does not need it

    opts = {"format": "png", "width": width, "height": height, "scale": scale}
    with _lock:  # one request at a time: the shared server is a single queue
        use_server = hasattr(kaleido, "start_sync_server") and not _server_state["broken"]
        if use_server and not _server_state["started"]:
            kaleido.start_sync_server(**_kaleido_options(browser), silence_warnings=True)
            _server_state.update(started=True, path=browser)
        if use_server:
            png = _render_on_server(kaleido, fig, opts)
            if png is not None:
                return png
            # The server is gone: stop using it and let a one-shot render report why.
            _server_state["broken"] = True
            try:
                kaleido.stop_sync_server(silence_warnings=True)
            except Exception:  # noqa: BLE001 - best effort; the one-shot call below decides
                pass
        try:
            return _render_oneshot(kaleido, fig, opts, browser)
        except Exception as err:
            raise RuntimeError(
                f"PNG export with the browser at {browser} failed: {err}. "
                "Check that it starts (`chromium --headless --version`), or point "
                "$BROWSER_PATH at a working Chromium."
            ) from err


def write_png(
    fig: go.Figure,
    path: str | os.PathLike,
    *,
    width: int = 900,
    height: int = 520,
    scale: float = 2,
) -> Path:
    """Write ``fig`` as a PNG of ``width x height`` CSS pixels times ``scale``.

    Uses kaleido (>= 1.0) with the system Chromium found by :func:`find_chromium`; never
    downloads a browser. The first call in a process starts the browser (~2 s), later calls
    reuse it (~0.2 s). Raises ``RuntimeError`` naming the fix when no Chromium is installed.

    >>> write_png(fig, "reports/passk.png")  # doctest: +SKIP
    PosixPath('reports/passk.png')
    """
    png = to_png_bytes(fig, width=width, height=height, scale=scale)
    return atomic_write_bytes(path, png)


def write_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a self-contained interactive HTML page (plotly.js embedded, ~4.6 MB).

    Embedding makes the file work offline and survive being moved or mailed; a CDN link
    would show an empty page without network. For many figures in one folder, plotly's own
    ``fig.write_html(path, include_plotlyjs="directory")`` shares one ``plotly.min.js``.
    """
    html = pio.to_html(fig, include_plotlyjs=True, full_html=True)
    return atomic_write_text(path, html)
