"""Every reproduction in analysis/ runs in quick mode and passes its own checks."""

import importlib
import json

import plotly.graph_objects as go
import pytest

from analysis import REPRODUCTIONS
from analysis.base import Check
from analysis.report import to_jsonable


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRODUCTIONS)
def test_quick_reproduction_passes_its_checks(name):
    module = importlib.import_module(f"analysis.{name}")
    results = module.run(quick=True)
    # what the report does: results go through JSON before figure() and checks()
    results = json.loads(json.dumps(to_jsonable(results)))
    checks = module.checks(results)
    assert checks and all(isinstance(c, Check) for c in checks)
    failed = [str(c) for c in checks if not c.ok]  # unvalidated criteria may honestly fail
    assert not failed, failed
    fig = module.figure(results)
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    assert module.TITLE and isinstance(module.CARD, int)


@pytest.mark.parametrize("name", REPRODUCTIONS)
def test_reproduction_states_the_paper_and_its_limits(name):
    # the report prints the paper's claim and the limits of the comparison beside our numbers
    module = importlib.import_module(f"analysis.{name}")
    assert isinstance(module.PAPER, str) and len(module.PAPER) > 40, "PAPER: the card's claim"
    assert isinstance(module.SHOWS, str) and len(module.SHOWS) > 200, (
        "SHOWS: one paragraph on what the reproduction shows and what it does not")


def test_check_verdicts():
    assert Check("a", 0.2, ">=", 0.15).passed
    assert not Check("a", 0.1, ">=", 0.15).passed
    assert Check("a", 0.001, "<", 0.01).verdict == "pass"
    assert Check("a", 0.1, ">=", 0.15).verdict == "FAIL"
    unvalidated = Check("a", 0.1, ">=", 0.15, required=False)
    assert unvalidated.verdict == "not reproduced" and unvalidated.ok and not unvalidated.passed
    with pytest.raises(ValueError, match="op must be one of"):
        Check("a", 1.0, "=>", 0.0)


def test_readme_lists_every_reproduction():
    from pathlib import Path

    from analysis import REPRODUCTIONS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [n for n in REPRODUCTIONS if f"`analysis/{n}.py`" not in readme]
    assert not missing, f"README's reproductions table lacks {missing}"
