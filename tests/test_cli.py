"""``rlnb probe passk``: files, columns and error messages, in-process and as a process."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlnb.cli import main, parse_task_args
from rlnb.envs.text_tasks import factor
from rlnb.policies.tiny import char_tokenizer, tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[1]


def _save_tiny(tiny_lm_dir, name: str, seed: int = 0) -> Path:
    return tiny_lm_dir(factor(2, seed=0).alphabet, "llama", seed=seed, name=name, n_layer=1,
                       d_model=16, n_head=2, n_kv_head=1)


@pytest.fixture(scope="module")
def models(tiny_lm_dir):
    return _save_tiny(tiny_lm_dir, "base", 0), _save_tiny(tiny_lm_dir, "rl", 1)


def _args(model, out, *extra):
    return ["probe", "passk", "--model", str(model), "--task", "factor", "--num-problems", "4",
            "--n", "8", "--max-new-tokens", "4", "--bootstrap", "20", "--no-progress",
            "--out", str(out), *extra]


def test_passk_writes_counts_curve_and_figure(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(models[0], out)) == 0
    counts = pd.read_csv(out / "counts.csv")
    assert len(counts) == 4 and (counts["model"] == "base").all()
    assert {"problem", "prompt", "n", "c", "pass_at_1", "distinct_correct"} <= set(counts)
    assert counts["c"].between(0, 8).all() and (counts["n"] == 8).all()
    curve = pd.read_csv(out / "passk.csv")
    assert list(curve.columns) == ["model", "k", "pass_at_k", "lo", "hi"]
    assert curve["k"].tolist() == [1, 2, 4, 8]
    assert curve["pass_at_k"].is_monotonic_increasing
    html = (out / "passk.html").read_text()
    assert "<html>" in html and "plotly" in html
    assert not (out / "boundary.csv").exists()
    printed = capsys.readouterr().out
    assert "base: pass@1 = " in printed and "pass@8 = " in printed


def test_compare_adds_a_second_curve_and_the_boundary(models, tmp_path):
    out = tmp_path / "out"
    assert main(_args(models[0], out, "--compare", str(models[1]),
                      "--task-arg", "digits=4")) == 0
    counts = pd.read_csv(out / "counts.csv")
    assert counts["model"].tolist() == ["base"] * 4 + ["rl"] * 4
    assert counts["prompt"].str.len().eq(5).all()  # digits=4 reached the generator: "NNNN="
    assert sorted(pd.read_csv(out / "passk.csv")["model"].unique()) == ["base", "rl"]
    bnd = pd.read_csv(out / "boundary.csv")
    assert list(bnd.columns) == ["k", "category", "count", "fraction"]
    assert sorted(bnd["k"].unique()) == [1, 8]
    assert set(bnd["category"]) == {"both", "base only", "rl only", "neither"}
    assert (bnd.groupby("k")["count"].sum() == 4).all()


def test_same_seed_same_counts(models, tmp_path):
    main(_args(models[0], tmp_path / "a"))
    main(_args(models[0], tmp_path / "b"))
    a, b = (pd.read_csv(tmp_path / d / "counts.csv") for d in "ab")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("change, message", [
    ({"--model": "/nonexistent/model"}, "does not exist"),
    ({"--task": "factr"}, "unknown text task 'factr'; valid: addition"),
    ({"--task-arg": "digits"}, "must look like key=value"),
    ({"--task-arg": "colour=3"},
     "task 'factor' has no option 'colour'; valid: allow_even_and_5, digits, max_prime"),
    ({"--task-arg": "digits='x'"}, "rejected its arguments"),
    ({"--bootstrap": "-1"}, "--bootstrap must be >= 0"),
    ({"--batch-size": "0"}, "--batch-size must be >= 1"),
    ({"--n": "0"}, "--n must be >= 1"),
    ({"--seed": "-1"}, "--seed must be >= 0"),
    ({"--temperature": "nan"}, "--temperature must be a finite number > 0"),
    ({"--dtype": "nonsense"}, "--dtype 'nonsense'"),
    ({"--device": "nonsense"}, "--device 'nonsense'"),
    ({"--max-new-tokens": "100000"}, "context"),
])
def test_user_errors_exit_2_with_one_line(models, tmp_path, capsys, change, message):
    args = _args(models[0], tmp_path / "out")
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlnb: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # checked before --out is made


def test_out_must_be_a_directory_that_can_be_made(models, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file"),
                         (tmp_path / "file" / "out", "cannot be created")):
        assert main(_args(models[0], out)) == 2
        err = capsys.readouterr().err
        assert message in err and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_broken_model_directories(tmp_path, capsys):
    cases = {"noweights": '{"model_type": "llama"}', "garbage": "{not json",
             "alist": "[1, 2]"}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    for name, message in (("noweights", "no weights"), ("garbage", "not valid JSON"),
                          ("alist", "holds a JSON list, not a model configuration")):
        assert main(_args(tmp_path / name, tmp_path / "out")) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_read_the_task(models, tmp_path, capsys):
    args = _args(models[0], tmp_path / "out")
    args[args.index("--task") + 1] = "addition"  # '+' is not in the factor model's vocabulary
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot answer --task 'addition'" in err and "+" in err
    assert not (tmp_path / "out").exists()


def test_a_directory_without_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(_args(tmp_path / "empty", tmp_path / "out")) == 2
    assert "holds no model" in capsys.readouterr().err


def test_parse_task_args():
    assert parse_task_args(["digits=3", "allow_even_and_5=True", "name=x y"]) == {
        "digits": 3, "allow_even_and_5": True, "name": "x y"}


@pytest.mark.slow
def test_runs_as_a_command(models, tmp_path):
    exe = Path(sys.executable).parent / "rlnb"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rlnb.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(cmd + _args(models[0], tmp_path / "out"), capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "pass@1 = " in ok.stdout and (tmp_path / "out" / "passk.html").exists()
    bad = subprocess.run([sys.executable, "-m", "rlnb.cli"] +
                         _args(tmp_path / "missing", tmp_path / "out2"),
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "does not exist" in bad.stderr


def test_the_compare_model_is_checked_before_anything_is_sampled(models, tmp_path, capsys):
    blind = tmp_path / "blind"  # a vocabulary without '=': it cannot read factor's prompts
    tok = char_tokenizer("0123456789")
    model = tiny_model(tiny_config("llama", len(tok), n_layer=1, d_model=16, n_head=2,
                                   n_kv_head=1))
    model.save_pretrained(blind)
    tok.save_pretrained(blind)
    capsys.readouterr()
    assert main(_args(models[0], tmp_path / "out", "--compare", str(blind))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlnb: error: --compare") and "cannot represent: '='" in err
    assert len(err.splitlines()) == 1  # nothing sampled: no 'base: sampling ...' line
    assert not (tmp_path / "out").exists()
