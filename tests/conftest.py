"""What every test shares.

Nothing reads the Hugging Face hub: the whole test process (and every process it starts)
runs with ``HF_HUB_OFFLINE=1`` and a ``HF_HOME`` of its own, set here before any test
module imports ``transformers`` or ``datasets`` (both read them at import). Models and
tokenizers are made by the tests and go through the real ``save_pretrained`` /
``from_pretrained`` paths, datasets through ``save_to_disk`` / ``load_from_disk``; a test
that reaches for the hub fails instead of downloading, and no cache under the home
directory is read or written.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="rlnb-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_unconfigure(config):
    shutil.rmtree(_HF_HOME, ignore_errors=True)
