"""The ``rlnb`` command line.

``rlnb probe passk`` samples a model many times per problem of a text task, verifies the
completions, and writes what the pass@k notebooks show::

    rlnb probe passk --model runs/base --task factor --num-problems 128 --n 256 --out out/
    rlnb probe passk --model base/ --compare rl/ --task addition --task-arg digits=3 --out out/

Files written to ``--out``:

* ``counts.csv``: one row per (model, problem) from :func:`rlnb.probes.sample_counts`
  (``c`` correct out of ``n``, distinct answers, answer entropy, ...);
* ``passk.csv``: the pass@k curve (``model, k, pass_at_k, lo, hi``) from
  :func:`rlnb.probes.pass_at_k_curve`, with a bootstrap band over problems;
* ``passk.html``: the interactive figure (:func:`rlnb.viz.passk_curves`), self-contained;
* ``boundary.csv`` (with ``--compare``): problems solved by both / the first model only /
  the second only / neither, at several k (:func:`rlnb.probes.boundary`).

Errors in the arguments (a missing model directory, an unknown task, a malformed
``--task-arg``) exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
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


def _make_task(name: str, num_problems: int, seed: int, extra: dict[str, Any]) -> Any:
    from rlnb.envs.text_tasks import make_task

    kwargs: dict[str, Any] = {**extra}
    if name.startswith("reasoning_gym:"):
        kwargs.setdefault("size", num_problems)
    else:
        kwargs.setdefault("num_prompts", num_problems)
    kwargs.setdefault("seed", seed)
    try:
        return make_task(name, **kwargs)
    except TypeError as e:  # an unknown keyword of the generator
        raise CLIError(f"task {name!r} rejected its arguments {kwargs}: {e}") from None
    except (ValueError, KeyError, ImportError) as e:
        msg = str(e.args[0]) if e.args else str(e)
        raise CLIError(msg.splitlines()[0] if msg else type(e).__name__) from None


def _load_policy(path: str, args: argparse.Namespace) -> Any:
    from rlnb.policies import LMPolicy

    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"model directory {str(p)!r} does not exist")
    if not (p / "config.json").exists():
        raise CLIError(f"{str(p)!r} holds no model: expected config.json and weights "
                       "written by save_pretrained")
    try:
        return LMPolicy(p, device=args.device, dtype=args.dtype,
                        max_new_tokens=args.max_new_tokens)
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot load {str(p)!r}: {str(e).splitlines()[0]}") from None


def _label(path: str, taken: set[str]) -> str:
    name = Path(path).expanduser().resolve().name or "model"
    label, i = name, 2
    while label in taken:
        label, i = f"{name}-{i}", i + 1
    taken.add(label)
    return label


def probe_passk(args: argparse.Namespace) -> int:
    """``rlnb probe passk``: sample, verify, write CSVs and an HTML figure."""
    import pandas as pd

    from rlnb.probes import boundary, default_ks, pass_at_k_curve, sample_counts
    from rlnb.viz import passk_curves, write_html

    if args.n < 1:
        raise CLIError(f"--n must be >= 1 sample per problem, got {args.n}")
    if args.num_problems < 1:
        raise CLIError(f"--num-problems must be >= 1, got {args.num_problems}")
    if not args.temperature > 0:
        raise CLIError(f"--temperature must be > 0, got {args.temperature}")
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    task_args = parse_task_args(args.task_arg)
    paths = [args.model] + ([args.compare] if args.compare else [])
    for p in paths:  # fail on a missing directory before building anything
        if not Path(p).expanduser().exists():
            raise CLIError(f"model directory {p!r} does not exist")
    task = _make_task(args.task, args.num_problems, args.seed, task_args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    taken: set[str] = set()
    frames, counts = [], {}
    for path in paths:
        label = _label(path, taken)
        policy = _load_policy(path, args)
        print(f"{label}: sampling {args.n} completions for each of {task.num_prompts} "
              f"problems of {args.task!r} on {policy.device}", file=sys.stderr)
        df = sample_counts(policy, task, n=args.n, temperature=args.temperature,
                           seed=args.sample_seed, batch_size=args.batch_size,
                           progress=not args.no_progress)
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
                   help="a model directory written by save_pretrained (model + tokenizer)")
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
    p.add_argument("--sample-seed", type=int, default=0,
                   help="seed of the sampling generator (default 0)")
    p.add_argument("--batch-size", type=int, default=4096,
                   help="completions sampled at once (default 4096)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples over problems for the band (0: none)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16, ... (default: bfloat16 on GPU, float32 on CPU)")
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
