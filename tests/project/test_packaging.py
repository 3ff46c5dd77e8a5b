"""The install metadata agrees with itself: environment.yml mirrors pyproject.toml."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _normalise(reqs):
    return {Requirement(r).name.lower().replace("_", "-"): str(Requirement(r).specifier)
            for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = _normalise(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    got = _normalise(pip_section)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing, f"environment.yml lacks {missing} from pyproject.toml"
    assert not extra, f"environment.yml has {extra} that pyproject.toml does not"
    differ = {k: (expected[k], got[k]) for k in expected if expected[k] != got[k]}
    assert not differ, f"version specifiers differ (pyproject, environment.yml): {differ}"
    assert any(str(d).startswith("python=") for d in env["dependencies"] if isinstance(d, str))


def test_constraints_pin_cpu_torch():
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert "torch==2.13.0" in lines


def test_scale_extra_keeps_trl_out_of_core():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _normalise(project["dependencies"])
    assert "trl" not in core and "ray" not in core
    assert "trl" in _normalise(project["optional-dependencies"]["scale"])
