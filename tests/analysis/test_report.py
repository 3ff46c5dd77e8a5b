"""The reproduction report on fake reproductions: files, verdicts, errors, exit status."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

from analysis import report
from analysis.base import Check
from rlnb.viz import find_chromium

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FAKE_PACKAGE = "fake_reproductions"

GOOD = '''
"""A reproduction whose checks pass."""
import numpy as np
import plotly.graph_objects as go
from analysis.base import Check

TITLE = "Fake pass@k crossover (passing)"
CARD = 1
PAPER = "The paper says RL wins at k=1 & loses at k=256."
SHOWS = "A fake: it shows that the report prints <this> paragraph."

def run(quick=False, seed=0):
    rng = np.random.default_rng(seed)
    return {"k": np.array([1, 2, 4]), "base": rng.uniform(0.1, 0.2, 3), "rl": np.float32(0.5),
            "quick": quick, "seed": seed}

def figure(results):
    assert isinstance(results["k"], list)  # figure sees results as stored in JSON
    return go.Figure(go.Scatter(x=results["k"], y=results["base"], name="base"))

def checks(results):
    return [Check("rl_above_base", results["rl"] - max(results["base"]), ">=", 0.15,
                  "RL gains at least 0.15 at k=1"),
            Check("quick_was_passed", float(results["quick"]), ">=", 1.0)]
'''

BAD = '''
"""A reproduction with one failing check."""
import plotly.graph_objects as go
from analysis.base import Check

TITLE = "Fake entropy collapse (failing)"
CARD = 3

def run(quick=False, seed=0):
    return {"entropy_ratio": 0.5}

def figure(results):
    return go.Figure(go.Bar(x=["ratio"], y=[results["entropy_ratio"]]))

def checks(results):
    return [Check("entropy_collapses", results["entropy_ratio"], "<", 0.1, "H_final < 0.1 H_0"),
            Check("ratio_positive", results["entropy_ratio"], ">", 0.0)]
'''

BOOM = '''
"""A reproduction that raises."""
TITLE = "Fake reproduction that raises"
CARD = 9

def run(quick=False, seed=0):
    raise RuntimeError("simulated failure inside run")

def figure(results):
    raise AssertionError("not reached")

def checks(results):
    raise AssertionError("not reached")
'''


@pytest.fixture(scope="module")
def fake_package(tmp_path_factory):
    """A package on sys.path like analysis/: REPRODUCTIONS names good, bad and boom."""
    root = tmp_path_factory.mktemp("pkgroot")
    pkg = root / FAKE_PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text('REPRODUCTIONS = ("good", "bad", "boom")\n')
    for name, source in (("good", GOOD), ("bad", BAD), ("boom", BOOM)):
        (pkg / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield FAKE_PACKAGE
    sys.path.remove(str(root))
    for mod in [m for m in sys.modules if m == FAKE_PACKAGE or m.startswith(FAKE_PACKAGE + ".")]:
        del sys.modules[mod]


def quiet(_line: str) -> None:
    pass


def test_report_files_verdicts_and_errors(fake_package, tmp_path):
    names = report.discover(package=fake_package)
    assert names == ["good", "bad", "boom"]
    summary = report.run_report(names, tmp_path, quick=True, seed=3, png=False,
                                log=quiet, package=fake_package)
    recs = summary["reproductions"]
    assert list(recs) == ["good", "bad", "boom"]

    good, bad, boom = recs["good"], recs["bad"], recs["boom"]
    assert good["all_passed"] and good["status"] == "ok" and good["card"] == 1
    assert good["title"] == "Fake pass@k crossover (passing)"
    assert [c["verdict"] for c in good["checks"]] == ["pass", "pass"]
    assert {"value", "op", "threshold", "verdict", "description"} <= good["checks"][0].keys()
    assert isinstance(good["seconds"], float) and good["seconds"] >= 0

    assert bad["status"] == "ok" and not bad["all_passed"] and bad["n_failed"] == 1
    assert [c["verdict"] for c in bad["checks"]] == ["FAIL", "pass"]

    assert boom["status"] == "error" and not boom["all_passed"]
    assert boom["errors"][0]["stage"] == "run"
    assert "simulated failure inside run" in boom["errors"][0]["traceback"]
    assert "Traceback" in boom["errors"][0]["traceback"]

    assert not summary["all_passed"] and report.exit_code(summary) == 1
    assert summary["n_failed"] == 1 and summary["n_errors"] == 1 and summary["quick"] is True

    # files
    for name in ("good", "bad"):
        for rel in ("results.json", "figure.html", "checks.json"):
            assert (tmp_path / name / rel).is_file(), (name, rel)
    assert not (tmp_path / "boom" / "results.json").exists()
    results = json.loads((tmp_path / "good" / "results.json").read_text())
    assert results["k"] == [1, 2, 4] and results["seed"] == 3 and results["rl"] == 0.5
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["reproductions"]["bad"]["checks"][0]["verdict"] == "FAIL"
    assert json.loads((tmp_path / "bad" / "checks.json").read_text())[0]["passed"] is False
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers  # atomic writes clean up after themselves

    page = (tmp_path / "index.html").read_text()
    for rec in recs.values():
        assert rec["title"] in page
    assert 'href="good/figure.html"' in page
    assert "simulated failure inside run" in page and 'class="FAIL"' in page
    assert "card 3" in page
    # the paper's claim and the limits of the comparison, escaped, beside the numbers
    assert good["paper"].startswith("The paper says") and bad["paper"] == ""
    assert "RL wins at k=1 &amp; loses at k=256." in page
    assert "prints &lt;this&gt; paragraph" in page


def test_passing_only_exits_zero_and_prints_one_line_per_check(fake_package, tmp_path, capsys):
    code = report.main(["--quick", "--out", str(tmp_path), "--only", "good", "--no-png"],
                       package=fake_package)
    assert code == 0
    out = capsys.readouterr().out
    assert "[pass] good/rl_above_base:" in out and "[pass] good/quick_was_passed:" in out
    assert json.loads((tmp_path / "summary.json").read_text())["all_passed"] is True
    assert list(json.loads((tmp_path / "summary.json").read_text())["reproductions"]) == ["good"]


def test_main_exit_code_with_failures(fake_package, tmp_path, capsys):
    code = report.main(["--quick", "--out", str(tmp_path), "--no-png"], package=fake_package)
    assert code == 1
    out = capsys.readouterr().out
    assert "[FAIL] bad/entropy_collapses: 0.5 < 0.1" in out
    assert "[ERROR] boom (run): RuntimeError: simulated failure inside run" in out
    with pytest.raises(SystemExit):
        report.main(["--only", "nope"], package=fake_package)
    assert "unknown reproduction" in capsys.readouterr().err


def test_module_objects_and_stage_errors(tmp_path):
    """Module objects work directly; a figure error still lets the checks run."""
    mod = types.ModuleType("tiny_repro")
    mod.TITLE, mod.CARD = "Tiny <b>escaped</b>", 2
    mod.run = lambda quick=False, seed=0: {"x": torch.tensor([1.0, 2.0]), "n": np.int64(3)}

    def figure(results):
        raise ValueError("figure broke")

    mod.figure = figure
    mod.checks = lambda results: [Check("n_is_3", results["n"], ">=", 3)]
    missing = types.ModuleType("incomplete")  # no protocol at all
    summary = report.run_report([mod, missing], tmp_path, png=False, log=quiet)
    tiny = summary["reproductions"]["tiny_repro"]
    assert tiny["status"] == "error" and tiny["errors"][0]["stage"] == "figure"
    assert tiny["checks"][0]["verdict"] == "pass"  # checks ran despite the figure error
    assert summary["reproductions"]["incomplete"]["errors"][0]["stage"] == "protocol"
    assert report.exit_code(summary) == 1
    page = (tmp_path / "index.html").read_text()
    assert "Tiny &lt;b&gt;escaped&lt;/b&gt;" in page


def test_to_jsonable_names_the_bad_value():
    assert report.to_jsonable({"a": np.arange(2), "b": (np.float64(1.5),), 3: torch.tensor(2)}) == {
        "a": [0, 1], "b": [1.5], "3": 2,
    }
    with pytest.raises(TypeError, match=r"results\['curves'\]\[1\] is a builtins.object"):
        report.to_jsonable({"curves": [1, object()]})


def test_discover_tolerates_missing_list(tmp_path, monkeypatch):
    pkg = tmp_path / "empty_analysis_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert report.discover(package="empty_analysis_pkg") == []
    assert isinstance(report.discover(), list)  # the real analysis package


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium found (apt-get install chromium)")
def test_report_embeds_png(fake_package, tmp_path):
    summary = report.run_report(["good"], tmp_path, quick=True, log=quiet, package=fake_package)
    assert summary["reproductions"]["good"]["files"]["figure_png"] == "good/figure.png"
    assert (tmp_path / "good" / "figure.png").read_bytes()[:8] == PNG_MAGIC
    assert '<img src="good/figure.png"' in (tmp_path / "index.html").read_text()


def test_report_without_chromium_still_reports(fake_package, tmp_path, monkeypatch):
    from rlnb.viz import export

    monkeypatch.setattr(export, "find_chromium", lambda: None)
    summary = report.run_report(["good"], tmp_path, quick=True, log=quiet, package=fake_package)
    good = summary["reproductions"]["good"]
    assert good["all_passed"] and "apt-get install chromium" in good["png_error"]
    assert "figure_png" not in good["files"]
    assert "No PNG" in (tmp_path / "index.html").read_text()



def test_unvalidated_failure_is_reported_but_not_counted(tmp_path):
    import types

    from analysis.base import Check
    from analysis.report import exit_code, run_report

    module = types.ModuleType("unvalidated_repro")
    module.TITLE, module.CARD = "unvalidated", 0
    module.run = lambda quick=False, seed=0: {"x": 1.0}
    module.figure = lambda results: __import__("plotly.graph_objects").graph_objects.Figure()
    module.checks = lambda results: [Check("required", 1.0, ">=", 0.5),
                                     Check("proposal", 0.1, ">=", 0.5, required=False)]
    summary = run_report([module], tmp_path, quick=True, png=False, log=lambda *_: None)
    assert exit_code(summary) == 0
    assert summary["n_failed"] == 0 and summary["n_not_reproduced"] == 1
    page = (tmp_path / "index.html").read_text()
    assert "not reproduced" in page
    module.checks = lambda results: [Check("required", 0.1, ">=", 0.5)]
    assert exit_code(run_report([module], tmp_path / "b", quick=True, png=False,
                                log=lambda *_: None)) == 1


def test_parallel_run_matches_serial_and_keeps_order(fake_package, tmp_path):
    """--jobs runs each reproduction in its own spawned process: same records, same order,
    a raising reproduction still recorded, the worker's log lines passed on."""
    serial = report.run_report(["good", "bad", "boom"], tmp_path / "serial", quick=True, seed=3,
                               png=False, log=quiet, package=fake_package)
    lines: list[str] = []
    parallel = report.run_report(["good", "bad", "boom"], tmp_path / "parallel", quick=True,
                                 seed=3, png=False, log=lines.append, package=fake_package,
                                 jobs=2)
    assert list(parallel["reproductions"]) == ["good", "bad", "boom"]
    for name in ("good", "bad", "boom"):
        a, b = serial["reproductions"][name], parallel["reproductions"][name]
        assert [c["value"] for c in a["checks"]] == [c["value"] for c in b["checks"]]
        assert a["status"] == b["status"] and a["n_failed"] == b["n_failed"]
    assert parallel["reproductions"]["boom"]["errors"][0]["stage"] == "run"
    assert (json.loads((tmp_path / "parallel" / "good" / "results.json").read_text())
            == json.loads((tmp_path / "serial" / "good" / "results.json").read_text()))
    assert any("ran in" in line for line in lines)
    assert any("simulated failure inside run" in line for line in lines)
    # a second run starts the slowest of the first run first; the summary order stays
    again = report.run_report(["good", "bad"], tmp_path / "parallel", quick=True, seed=3,
                              png=False, log=quiet, package=fake_package, jobs=2)
    assert list(again["reproductions"]) == ["good", "bad"]


def test_markdown_summary(fake_package, tmp_path):
    summary = report.run_report(["good", "bad", "boom"], tmp_path, quick=True, png=False,
                                log=quiet, package=fake_package)
    text = (tmp_path / "summary.md").read_text()
    assert text == report.render_markdown(summary)
    assert "| 1 | `analysis/good.py` |" in text and "| 2 / 2 | 0 | 0 |" in text
    assert "| 3 | `analysis/bad.py` |" in text and "| 1 / 2 | 0 | 1 |" in text
    assert "| 0 / 0 | 0 | raised |" in text  # boom raised
    assert "| entropy_collapses | 0.5 | < 0.1 | FAIL |" in text
    assert "**Paper.** The paper says RL wins at k=1 & loses at k=256." in text
    assert "simulated failure inside run" in text


def test_jobs_must_be_positive(fake_package, tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main(["--quick", "--out", str(tmp_path), "--jobs", "0"], package=fake_package)
    assert "--jobs must be at least 1" in capsys.readouterr().err
