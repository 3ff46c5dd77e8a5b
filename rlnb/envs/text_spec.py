"""How a text task is stored in a run directory (``env.json``, ``env.safetensors``).

A task that one of rlnb's seeded generators made (``factor(10_000, seed=0)``, or a part of
one split with :meth:`~rlnb.envs.text.TextTask.split`) is stored as the generator's name
and settings and a digest of its data; loading calls the generator again (and splits
again) and checks the digest. Any other task keeps its other settings in ``env.json`` and
its prompts and answers as UTF-8 bytes in ``env.safetensors``. ``env.json`` never holds
the data set. Nothing a file names is imported or run: generator names are looked up
among rlnb's own (:data:`SEEDED_GENERATORS`), and the tensors are decoded, never unpickled.

Specs written before, with the prompts and answers inline in ``env.json``, still load;
a task loaded from one is saved as that same spec, so its run directory stays recognised.

The ``env.json`` of a run on ``factor(10_000, seed=0)``::

    {"class": "rlnb.envs.factor_task:FactorTask",
     "config": {"generated_by": {
         "generator": "factor",
         "settings": {"num_prompts": 10000, "digits": 6, "max_prime": 50, "seed": 0,
                      "allow_even_and_5": false},
         "sha256": "<digest of the prompts and answers>"}}}
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import torch

from rlnb.registry import unknown_name_error
from rlnb.serialization import class_key

F = TypeVar("F", bound=Callable[..., Any])

GENERATED_KEY = "generated_by"
"""The one key of the ``config`` of a task stored as its generator's name and settings."""

DATA_TENSORS = ("prompt_bytes", "prompt_lengths", "answer_bytes", "answer_lengths")
"""The tensors that hold a task's prompts and answers (UTF-8 bytes, bytes per string)."""

_GENERATORS: dict[str, Callable[..., Any]] = {}
SEEDED_GENERATORS: Mapping[str, Callable[..., Any]] = MappingProxyType(_GENERATORS)
"""rlnb's seeded task generators by name, the only ones a stored spec may name. (Your own
generators go to :func:`rlnb.envs.text_tasks.register_task`; their tasks are stored with
their data.)"""

_SPLIT_PARTS = ("train", "held_out")


def seeded_generator(name: str) -> Callable[[F], F]:
    """Decorator for rlnb's own task generators: a spec may name the function ``name``.
    The function must mark what it returns with :func:`mark_generated`."""

    def decorator(fn: F) -> F:
        if not getattr(fn, "__module__", "").startswith("rlnb."):
            raise ValueError(
                f"only rlnb's own generators are seeded generators, got {fn!r}; register yours "
                "with rlnb.envs.text_tasks.register_task (its tasks are stored with their data)"
            )
        if _GENERATORS.get(name, fn) is not fn:
            raise ValueError(f"seeded generator {name!r} is already registered")
        _GENERATORS[name] = fn
        return fn

    return decorator


def mark_generated(task: Any, generator: str, **settings: Any) -> Any:
    """Record on ``task`` (and return it) that ``SEEDED_GENERATORS[generator](**settings)``
    made it, so that it is stored as that call. Left unmarked (stored with its data) when
    calling again from the JSON settings could give other data: a seed that is not an
    int or a str (``None`` draws a fresh one), or settings JSON does not hold exactly."""
    if generator not in _GENERATORS:
        raise ValueError(f"{generator!r} is not a seeded generator")
    if not isinstance(settings.get("seed"), (int, str)):
        return task
    try:
        text = json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError):
        return task
    if json.dumps(json.loads(text)) == text:
        task.origin = {"generator": generator, "settings": json.loads(text)}
    return task


def mark_split(task: Any, parts: Sequence[Any], held_out: int | float, seed: int) -> None:
    """Record on the ``(train, held_out)`` parts of ``task.split(held_out, seed=seed)``
    that they are that split of a generated task (nothing when ``task`` is not one)."""
    origin = task.origin
    if not origin or "generator" not in origin:
        return
    for part, name in zip(parts, _SPLIT_PARTS):
        step = {"held_out": held_out, "seed": seed, "part": name}
        part.origin = {**origin, "splits": [*origin.get("splits", []), step]}


def data_digest(prompts: Sequence[str], answers: Sequence[str]) -> str:
    """SHA-256 of the prompts and answers (hex)."""
    blob = json.dumps([list(prompts), list(answers)], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


# --- the data as tensors ------------------------------------------------------------------
def encode_strings(strings: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bytes (B,) uint8, lengths (n,) int64)``: the UTF-8 encodings one after another,
    and how many bytes each has (lone surrogates survive, as JSON keeps them)."""
    blobs = [s.encode("utf-8", "surrogatepass") for s in strings]
    joined = b"".join(blobs)
    data = (torch.frombuffer(bytearray(joined), dtype=torch.uint8).clone() if joined
            else torch.zeros(0, dtype=torch.uint8))
    return data, torch.tensor([len(b) for b in blobs], dtype=torch.int64)


def decode_strings(data: Any, lengths: Any, what: str) -> list[str]:
    """The strings :func:`encode_strings` encoded; ``ValueError`` for tensors it did not
    write (the file is damaged)."""

    def damaged(why: str) -> ValueError:
        return ValueError(f"the {what} tensors of this text task are damaged ({why}); restore "
                          "env.safetensors from a copy, or start a new run directory")

    if not (isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and data.ndim == 1):
        raise damaged("the bytes are not a 1-D uint8 tensor")
    if not (isinstance(lengths, torch.Tensor) and lengths.dtype == torch.int64
            and lengths.ndim == 1):
        raise damaged("the lengths are not a 1-D int64 tensor")
    sizes = lengths.tolist()
    if any(n < 0 for n in sizes) or sum(sizes) != data.numel():
        raise damaged("the lengths do not add up to the bytes")
    raw = data.numpy().tobytes()
    out, pos = [], 0
    try:
        for n in sizes:
            out.append(raw[pos:pos + n].decode("utf-8", "surrogatepass"))
            pos += n
    except UnicodeDecodeError:
        raise damaged("not UTF-8") from None
    return out


def _inline_data(config: dict[str, Any]) -> bool:
    """Whether ``config`` (a ``get_config()``) holds the prompts and answers as strings."""
    return all(isinstance(config.get(k), list) and all(isinstance(s, str) for s in config[k])
               for k in ("prompts", "answers"))


# --- TextTask.spec, get_tensors and from_spec ------------------------------------------------
def task_spec(task: Any) -> dict[str, Any]:
    """The spec ``env.json`` holds for ``task`` (:meth:`TextTask.spec
    <rlnb.envs.text.TextTask.spec>`)."""
    origin = task.origin
    if origin and "spec" in origin:  # rebuilt from an older spec: saved as that spec
        return copy.deepcopy(origin["spec"])
    key = class_key(type(task))
    if origin and "generator" in origin:
        generated = {**copy.deepcopy(origin), "sha256": data_digest(task.prompts, task.answers)}
        return {"class": key, "config": {GENERATED_KEY: generated}}
    config = task.get_config()
    if _inline_data(config) and set(DATA_TENSORS) <= set(task.get_tensors()):
        config = {k: v for k, v in config.items() if k not in ("prompts", "answers")}
    return {"class": key, "config": config}


def task_tensors(task: Any) -> dict[str, torch.Tensor]:
    """The tensors ``env.safetensors`` holds for ``task``: its constructor's prompts and
    answers, unless its spec holds everything (a generated task, an older spec)."""
    if task.origin:
        return {}
    config = task.get_config()
    if not _inline_data(config):
        return {}
    prompt_bytes, prompt_lengths = encode_strings(config["prompts"])
    answer_bytes, answer_lengths = encode_strings(config["answers"])
    return dict(zip(DATA_TENSORS, (prompt_bytes, prompt_lengths, answer_bytes, answer_lengths)))


def rebuild_task(cls: type, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """The task of class ``cls`` that ``spec`` and ``tensors`` describe
    (:meth:`TextTask.from_spec <rlnb.envs.text.TextTask.from_spec>`)."""
    config = dict(spec.get("config", {}))
    rest = dict(tensors)
    if GENERATED_KEY in config and len(config) == 1 and not rest:
        return _regenerate(cls, config[GENERATED_KEY])
    data = {k: rest.pop(k) for k in DATA_TENSORS if k in rest}
    if data:
        if len(data) != len(DATA_TENSORS):
            raise ValueError(f"the text task's tensors lack {sorted(set(DATA_TENSORS) - set(data))}:"
                             " env.safetensors is damaged; restore it or start a new run directory")
        if "prompts" in config or "answers" in config:
            raise ValueError("this text task spec holds prompts or answers both in its config and "
                             "in tensors: it is not a spec rlnb wrote")
        prompts = decode_strings(data["prompt_bytes"], data["prompt_lengths"], "prompt")
        answers = decode_strings(data["answer_bytes"], data["answer_lengths"], "answer")
        return cls(**config, prompts=prompts, answers=answers, **rest)
    task = cls(**config, **rest)
    if "prompts" in config or "answers" in config:  # an older spec, the data inline
        task.origin = {"spec": {"class": spec["class"], "config": copy.deepcopy(config)}}
    return task


def _regenerate(cls: type, generated: Any) -> Any:
    """Call the generator a spec names with its settings (and split), check the data."""

    def refuse(why: str) -> ValueError:
        return ValueError(f"the spec of this {cls.__name__} is refused: {why}; it is not a spec "
                          "rlnb wrote (the file is damaged or was made elsewhere)")

    if not isinstance(generated, dict) or not {"generator", "settings", "sha256"} <= set(generated) \
            or set(generated) - {"generator", "settings", "splits", "sha256"}:
        raise refuse(f"{GENERATED_KEY!r} must hold 'generator', 'settings', 'sha256' and "
                     "optionally 'splits'")
    name, settings = generated["generator"], generated["settings"]
    if not isinstance(name, str) or name not in _GENERATORS:
        error = unknown_name_error("seeded generator", name, _GENERATORS)
        raise ValueError(f"{error}. rlnb never imports or runs anything a file names: it calls "
                         "only its own generators") from None
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise refuse("'settings' must be a JSON object of keyword arguments")
    try:
        task = _GENERATORS[name](**settings)
    except (TypeError, ValueError) as err:
        raise refuse(f"generator {name!r} does not take these settings ({err})") from None
    if type(task) is not cls:
        raise refuse(f"generator {name!r} makes {type(task).__name__}s, not {cls.__name__}s")
    splits = generated.get("splits", [])
    if not isinstance(splits, list):
        raise refuse("'splits' must be a list")
    for step in splits:
        if not (isinstance(step, dict) and set(step) == {"held_out", "seed", "part"}
                and isinstance(step["held_out"], (int, float))
                and isinstance(step["seed"], int) and step["part"] in _SPLIT_PARTS):
            raise refuse(f"a split must be {{'held_out': n, 'seed': s, 'part': 'train' or "
                         f"'held_out'}}, got {step!r}"[:300])
        try:
            parts = task.split(step["held_out"], seed=step["seed"])
        except (TypeError, ValueError) as err:
            raise refuse(f"the split {step} cannot be made ({err})") from None
        task = parts[_SPLIT_PARTS.index(step["part"])]
    if data_digest(task.prompts, task.answers) != generated["sha256"]:
        raise ValueError(
            f"generator {name!r} with settings {settings} made other prompts or answers than "
            "the ones this spec recorded (their SHA-256 differs): made with another version "
            "of rlnb, Python or torch? The task cannot be rebuilt here"
        )
    return task
