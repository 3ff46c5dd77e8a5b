"""What every test shares.

Nothing reads the Hugging Face hub: the whole test process (and every process it starts)
runs with ``HF_HUB_OFFLINE=1`` and a ``HF_HOME`` of its own, set here before any test
module imports ``transformers`` or ``datasets`` (both read them at import). Models and
tokenizers are made by the tests and go through the real ``save_pretrained`` /
``from_pretrained`` paths, datasets through ``save_to_disk`` / ``load_from_disk``; a test
that reaches for the hub fails instead of downloading, and no cache under the home
directory is read or written.

Every process the tests start (notebook kernels, the command line, training
subprocesses) imports this checkout's ``rlnb``: its root leads ``PYTHONPATH``, whatever
the environment's installed copy points at.

Tiny models are made once per test run (``tests/_models.py``): the ``tiny_lm_dir``
fixture returns the function that saves (or finds) one.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="rlnb-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)])


@pytest.fixture(scope="session")
def tiny_lm_dir():
    """``tiny_lm_dir(alphabet, arch="llama", seed=0, **tiny_config_options)``: the
    directory of a saved tiny model, made once per test run (do not write into it)."""
    from tests._models import saved_tiny_lm

    return saved_tiny_lm


def pytest_unconfigure(config):
    from tests._models import remove_all

    remove_all()
    shutil.rmtree(_HF_HOME, ignore_errors=True)
