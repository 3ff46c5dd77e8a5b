"""Tiny language models saved once per test run, through the real ``save_pretrained``.

``saved_tiny_lm(alphabet, ...)`` returns the directory of a random tiny model (a character
tokenizer over ``alphabet`` and :func:`rlnb.policies.tiny.tiny_model`'s weights); the same
arguments return the same directory, made on first use. The directories are read-only for
the tests (a test that changes a model copies it first) and are removed when the run ends
(``tests/conftest.py``). The ``tiny_lm_dir`` fixture hands this function to a test.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

_ROOT: Path | None = None


def root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="rlnb-tests-models-"))
    return _ROOT


@functools.cache
def saved_tiny_lm(alphabet: str, arch: str = "llama", *, seed: int = 0, name: str = "model",
                  **options) -> Path:
    """A saved tiny model in a folder called ``name`` (options go to
    :func:`rlnb.policies.tiny.tiny_config`)."""
    from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

    tok = char_tokenizer(alphabet)
    model = tiny_model(tiny_config(arch, len(tok), **options), seed=seed)
    directory = Path(tempfile.mkdtemp(dir=root())) / name
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def remove_all() -> None:
    if _ROOT is not None:
        shutil.rmtree(_ROOT, ignore_errors=True)
