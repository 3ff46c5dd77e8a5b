"""`make lab` starts JupyterLab on notebooks/, bound to 127.0.0.1, behind a token."""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests._processes import stop_group

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_token_auth(tmp_path):
    if not (ROOT / ".venv" / ".rlnb-installed").exists():
        pytest.skip("run through `make test`, which installs the environment `make lab` uses")
    port = _free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_PORT={port}"],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        info = None
        deadline = time.time() + 90
        while time.time() < deadline and info is None:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            for f in (tmp_path / "runtime").glob("jpserver-*.json"):
                info = json.loads(f.read_text())
            time.sleep(0.5)
        assert info is not None, "JupyterLab did not start within 90 s"
        assert info["port"] == port and info["hostname"] == "127.0.0.1"
        assert Path(info["root_dir"]).resolve() == (ROOT / "notebooks").resolve()
        assert info["token"], "the server must require a token"
        base = f"http://127.0.0.1:{port}"
        status, _ = _get(f"{base}/api/contents")
        assert status == 403, "the API answered without the token"
        status, body = _get(f"{base}/api/contents?token={info['token']}")
        assert status == 200
        names = {item["name"] for item in json.loads(body)["content"]}
        assert "01_policy_gradients_on_bandits.ipynb" in names
        status, body = _get(f"{base}/lab?token={info['token']}")
        assert status == 200 and b"JupyterLab" in body
    finally:
        stop_group(proc)
