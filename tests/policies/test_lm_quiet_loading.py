"""Loading a model through rlnb prints no Hugging Face "Loading weights" bar unless asked."""

from __future__ import annotations

from transformers.utils import logging as hf_logging

from rlnb.policies.lm import LMPolicy
from rlnb.policies.lm.load import PROGRESS_ENV


def test_loading_is_quiet_unless_asked(tiny_lm_dir, capfd, monkeypatch):
    path = tiny_lm_dir("0123456789+=")
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    hf_logging.enable_progress_bar()
    LMPolicy(path)
    quiet = capfd.readouterr()
    assert "Loading weights" not in quiet.err + quiet.out
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is restored

    monkeypatch.setenv(PROGRESS_ENV, "1")
    LMPolicy(path)
    loud = capfd.readouterr()
    assert "Loading weights" in loud.err + loud.out  # what the quiet run held back
