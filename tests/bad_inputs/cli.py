"""Bad ``rlnb probe passk`` command lines: one line on standard error, exit status 2, nothing
sampled and no ``--out`` made.

The rows that need a model directory share one tiny model (and a few broken directories),
made once per test run outside the rows' working directories, offline."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests.bad_inputs import BadInput, CLIExit, cli


@functools.cache
def _models() -> Path:
    """A directory of model directories: ``factor`` (a tiny Llama with the factor task's
    character tokenizer, context 64) and broken ones (``noweights``, ``garbage``,
    ``alist``, ``notype``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="rlnb-bad-cli-"))
    os.environ.setdefault("HF_HOME", str(root / "hf-home"))
    from rlnb.envs.text_tasks import factor
    from tests._models import saved_tiny_lm

    shutil.copytree(saved_tiny_lm(factor(2, seed=0).alphabet, "llama", n_layer=1, d_model=16,
                                  n_head=2, n_kv_head=1, max_len=64), root / "factor")
    for name, text in (("noweights", json.dumps({"model_type": "llama"})),
                       ("garbage", "{this is not json"), ("alist", "[1, 2, 3]"),
                       ("notype", json.dumps({"hidden_size": 16}))):
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    return root


def _passk(*extra: str, model: str | None = None, task: str = "factor",
           out: str = "out") -> None:
    """``rlnb probe passk`` on the tiny model with a small budget, ``extra`` appended
    (a later flag overrides an earlier one)."""
    model = model if model is not None else str(_models() / "factor")
    cli("probe", "passk", "--model", model, "--task", task, "--num-problems", "2", "--n", "2",
        "--max-new-tokens", "2", "--bootstrap", "0", "--no-progress", "--device", "cpu",
        "--out", out, *extra)


def _row(id: str, words: list[str], *extra: str, setup=None, marks=(), **kw) -> BadInput:
    return BadInput(f"cli/{id}", lambda tmp, extra=extra, kw=kw: _passk(*extra, **kw),
                    CLIExit, words, setup=setup, marks=marks)


def _broken(name: str) -> str:
    return str(_models() / name)


def _file(name: str):
    def setup(tmp: Path) -> None:
        (tmp / name).write_text("not a directory\n")

    return setup


def _dir(name: str):
    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()

    return setup


#: The --device cuda row checks the message for a GPU this torch cannot see.
_no_cuda = (pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible"),)


CASES = [
    # --- numbers ----------------------------------------------------------------------
    _row("n-zero", ["--n", ">= 1", "got 0"], "--n", "0"),
    _row("n-negative", ["--n", ">= 1", "got -3"], "--n", "-3"),
    _row("n-not-an-int", ["--n", "invalid int value", "'many'"], "--n", "many"),
    _row("num-problems-zero", ["--num-problems", ">= 1", "got 0"], "--num-problems", "0"),
    _row("max-new-tokens-zero", ["--max-new-tokens", ">= 1", "got 0"], "--max-new-tokens", "0"),
    _row("batch-size-zero", ["--batch-size", ">= 1", "got 0"], "--batch-size", "0"),
    _row("bootstrap-negative", ["--bootstrap", ">= 0", "got -1"], "--bootstrap", "-1"),
    _row("seed-negative", ["--seed", ">= 0", "got -1"], "--seed", "-1"),
    _row("sample-seed-too-large", ["--sample-seed", "2**64"], "--sample-seed", str(2**70)),
    _row("temperature-zero", ["--temperature", "> 0", "got 0.0"], "--temperature", "0"),
    _row("temperature-nan", ["--temperature", "finite", "nan"], "--temperature", "nan"),
    _row("temperature-inf", ["--temperature", "finite", "inf"], "--temperature", "inf"),
    # --- --out --------------------------------------------------------------------------
    _row("out-is-a-file", ["--out", "'taken'", "is a file", "directory"], out="taken",
         setup=_file("taken")),
    _row("out-under-a-file", ["--out", "taken/out", "cannot be created", "is a file"],
         out="taken/out", setup=_file("taken")),
    _row("out-unwritable", ["--out", "/sys/rlnb-out", "cannot be created"],
         out="/sys/rlnb-out"),
    # --- model directories ------------------------------------------------------------
    _row("model-missing", ["--model", "missing-model", "does not exist"],
         model="missing-model"),
    _row("model-is-a-file", ["--model", "is a file", "save_pretrained"], model="weights.bin",
         setup=_file("weights.bin")),
    _row("model-without-config", ["--model", "holds no model", "config.json"], model="empty",
         setup=_dir("empty")),
    BadInput("cli/model-without-weights", lambda tmp: _passk(model=_broken("noweights")),
             CLIExit, ["--model", "no weights", "model.safetensors"]),
    BadInput("cli/model-config-not-json", lambda tmp: _passk(model=_broken("garbage")),
             CLIExit, ["--model", "config.json", "not valid JSON"]),
    BadInput("cli/model-config-a-list", lambda tmp: _passk(model=_broken("alist")),
             CLIExit, ["--model", "config.json", "a JSON list", "model_type"]),
    BadInput("cli/model-config-without-model-type",
             lambda tmp: _passk(model=_broken("notype")), CLIExit,
             ["--model", "without model_type", "not a model configuration"]),
    _row("compare-missing", ["--compare", "missing-rl", "does not exist"],
         "--compare", "missing-rl"),
    BadInput("cli/compare-without-weights",
             lambda tmp: _passk("--compare", _broken("noweights")), CLIExit,
             ["--compare", "no weights"]),
    # --- device and dtype -------------------------------------------------------------
    _row("dtype-nonsense", ["--dtype", "'nonsense'", "float32", "bfloat16"],
         "--dtype", "nonsense"),
    _row("dtype-not-floating", ["--dtype", "'int64'", "not a floating", "float32"],
         "--dtype", "int64"),
    _row("device-nonsense", ["--device", "'nonsense'", "cpu", "cuda"], "--device", "nonsense"),
    _row("device-cuda-without-gpu", ["--device", "'cuda'", "no CUDA GPU", "cpu"],
         "--device", "cuda", marks=_no_cuda),
    # --- task -------------------------------------------------------------------------
    _row("task-unknown", ["unknown text task 'factr'", "did you mean 'factor'", "addition"],
         task="factr"),
    _row("task-arg-malformed", ["--task-arg", "'digits'", "key=value"], "--task-arg", "digits"),
    _row("task-arg-unknown", ["--task-arg", "colour", "valid", "digits", "max_prime"],
         "--task-arg", "colour=3"),
    _row("task-arg-typo", ["--task-arg", "'digit'", "did you mean 'digits'"],
         "--task-arg", "digit=3"),
    _row("task-arg-out-of-range", ["--task 'factor'", "digits", "got 0"],
         "--task-arg", "digits=0"),
    _row("task-arg-wrong-type", ["rejected", "digits", "str"], "--task-arg", "digits='x'"),
    # --- the model against the task ---------------------------------------------------
    _row("model-cannot-read-the-prompts",
         ["--model", "--task 'addition'", "cannot represent", "'+'"], task="addition"),
    _row("prompt-and-budget-over-context",
         ["--model", "--max-new-tokens=100", "context of 64"], "--max-new-tokens", "100"),
    # --- the command line itself ------------------------------------------------------
    BadInput("cli/missing-task", lambda tmp: cli("probe", "passk", "--model", "m", "--out", "o"),
             CLIExit, ["required", "--task"]),
    _row("unknown-flag", ["unrecognized arguments", "--samples"], "--samples", "8"),
]
