"""Verifiable text tasks: prompts, reference answers and a verifier for language-model policies.

A :class:`TextTask` is a sandbox whose "actions" are text. A language-model policy samples
completions for ``task.prompt(i)`` and decodes them; the trainer calls
``task.reward_rollout(rollout)``, which scores each decoded completion with
``task.score(prompt, completion) -> float``.

Completion format, for every task in rlnb: the model emits the answer and then its
end-of-sequence token. The policy removes the EOS token and the padding, and ``score`` sees the
decoded text in between; surrounding whitespace is ignored (``completion.strip()``), anything
else counts. Scores are 1.0 (correct) or 0.0 (wrong or unparseable) unless a task says
otherwise; ``score`` never raises on any string, however long or strange.

Writing a task takes a prompt list, an answer list and a ``score``::

    class Reverse(TextTask):
        def score(self, prompt, completion):
            text = strip_completion(completion, max_chars=len(prompt))
            return float(text == self.answer_for(prompt))

    task = Reverse(prompts=["abc", "xy"], answers=["cba", "yx"])

Text tasks are sampled by language-model policies only: ``horizon``, ``num_actions`` and the
state layout of :class:`~rlnb.envs.base.Sandbox` have no meaning for text (``horizon = 0``,
``num_actions = 0``, ``states_per_prompt = 1``), and the tabular ``reward(prompts, actions)``
raises. The built-in tasks (addition, modular sums, countdown, factoring) live in
:mod:`rlnb.envs.text_tasks`, the reasoning-gym adapter in :mod:`rlnb.envs.reasoning_gym`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from rlnb.envs.base import Sandbox
from rlnb.envs.text_spec import mark_split, rebuild_task, task_spec, task_tensors
from rlnb.serialization import class_key, resolve_class

# Key under which ``to_dataset`` stores the task's class and settings in
# ``Dataset.info.description`` (JSON), so ``from_dataset`` can rebuild the same task.
DATASET_SPEC_KEY = "rlnb_text_task"


def strip_completion(completion: str, max_chars: int) -> str | None:
    """The completion as ``score`` reads it: stripped of surrounding whitespace, or ``None``
    when the stripped text is longer than ``max_chars`` (too long to be an answer; checking
    the length first keeps scoring fast on a runaway 1 MB completion).

    Raises ``TypeError`` for a non-string: the policy must hand over decoded text.

    >>> strip_completion(" 46\\n", max_chars=3)
    '46'
    >>> strip_completion("4" * 100, max_chars=3) is None
    True
    """
    if not isinstance(completion, str):
        raise TypeError(
            f"a completion must be a str (the decoded text after the prompt, without the EOS "
            f"token), got {type(completion).__name__}; decode token ids with the tokenizer first"
        )
    text = completion.strip()
    if len(text) > max_chars:
        return None
    return text


def _is_finite_real(value: Any) -> bool:
    """True for a bool, int or float (Python, NumPy or a one-element tensor) that is finite."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex() and bool(torch.isfinite(value))
    if isinstance(value, (numbers.Real, np.bool_)):
        return math.isfinite(float(value))
    return False


class TextTask(Sandbox):
    """A list of text prompts, one reference answer for each, and a verifier ``score``.

    Args:
        prompts: the prompts, ``num_prompts`` strings. Duplicates are allowed but
            :meth:`index` and :meth:`answer_for` return the first occurrence.
        answers: one reference answer per prompt (what :meth:`sft_examples` teaches and
            what ``score`` accepts, usually among other correct answers).
        alphabet: every character a prompt or answer may contain, as one string. Default:
            the characters found in ``prompts`` and ``answers``.

    Subclasses implement ``score(prompt, completion) -> float``; everything else (prompt
    sampling, batch rewards, SFT pairs, splits, ``datasets`` round trips, serialization)
    comes from here. A subclass whose ``__init__`` takes other arguments overrides
    ``get_config`` so that ``type(task)(**task.get_config())`` rebuilds it.

    Footgun: the default alphabet is read from the data, so a held-out split can miss a
    character that the training split has. :meth:`split` keeps the parent's alphabet; when
    you build tasks separately, pass the same ``alphabet`` to both (the built-in tasks use a
    fixed alphabet).

    >>> class Upper(TextTask):
    ...     def score(self, prompt, completion):
    ...         return float(strip_completion(completion, 16) == self.answer_for(prompt))
    >>> task = Upper(prompts=["ab:", "cd:"], answers=["AB", "CD"])
    >>> task.score("ab:", "AB\\n"), task.score("ab:", "ab")
    (1.0, 0.0)
    >>> task.alphabet
    ':ABCDabcd'
    >>> task.sft_examples(2, torch.Generator().manual_seed(0))
    [('ab:', 'AB'), ('cd:', 'CD')]
    """

    horizon = 0
    num_actions = 0
    states_per_prompt = 1
    reward_name: ClassVar[str] = "score"
    #: How the task was made, for run directories (:mod:`rlnb.envs.text_spec`): ``{"generator":
    #: name, "settings": {...}}`` (and ``"splits"``) when a seeded rlnb generator made it,
    #: ``{"spec": spec}`` when rebuilt from an older spec that holds its data, else None.
    origin: dict[str, Any] | None = None

    def __init__(
        self, prompts: Sequence[str], answers: Sequence[str], alphabet: str | None = None
    ) -> None:
        for what, items in (("prompts", prompts), ("answers", answers)):
            if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
                raise TypeError(
                    f"{what} must be a list of strings (one per prompt), got "
                    f"{type(items).__name__} {items!r}"[:200]
                )
        prompts, answers = list(prompts), list(answers)
        if not prompts:
            raise ValueError("a text task needs at least one prompt, got an empty list")
        if len(prompts) != len(answers):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(answers)} answers; give one reference "
                "answer per prompt"
            )
        for what, items in (("prompt", prompts), ("answer", answers)):
            for i, s in enumerate(items):
                if not isinstance(s, str):
                    raise TypeError(f"{what} {i} must be a str, got {type(s).__name__}: {s!r}")
        self._prompts = prompts
        self._answers = answers
        self.num_prompts = len(prompts)
        self._index: dict[str, int] = {}
        for i, p in enumerate(prompts):
            self._index.setdefault(p, i)
        found = set().union(*prompts, *answers)
        if alphabet is None:
            self._alphabet = "".join(sorted(found))
        else:
            if not isinstance(alphabet, str):
                raise TypeError(
                    f"alphabet must be a str of characters, got {type(alphabet).__name__}"
                )
            missing = found - set(alphabet)
            if missing:
                raise ValueError(
                    f"the prompts and answers use characters {''.join(sorted(missing))!r} that "
                    f"are not in alphabet {alphabet!r}; add them or leave alphabet=None"
                )
            self._alphabet = alphabet

    # --- prompts and answers ---------------------------------------------------------
    @property
    def prompts(self) -> list[str]:
        """All prompts, ``num_prompts`` strings (a copy)."""
        return list(self._prompts)

    @property
    def answers(self) -> list[str]:
        """All reference answers, aligned with :attr:`prompts` (a copy)."""
        return list(self._answers)

    @property
    def alphabet(self) -> str:
        """Every character that prompts and answers can contain (build the character
        tokenizer from it, plus the model's special tokens)."""
        return self._alphabet

    @property
    def task_name(self) -> str:
        """Short name used in messages and ``repr``."""
        return type(self).__name__

    def _check_i(self, i: Any) -> int:
        try:
            j = int(i)
        except (TypeError, ValueError):
            raise TypeError(f"a prompt index must be an integer, got {i!r}") from None
        if not 0 <= j < self.num_prompts:
            raise IndexError(
                f"prompt index {j} is out of range for {self.task_name} with "
                f"{self.num_prompts} prompts (valid: 0..{self.num_prompts - 1})"
            )
        return j

    def prompt(self, i: int) -> str:
        """Prompt number ``i`` (an int or a 0-d tensor, as in ``rollout.prompts[k]``)."""
        return self._prompts[self._check_i(i)]

    def answer(self, i: int) -> str:
        """Reference answer of prompt ``i``."""
        return self._answers[self._check_i(i)]

    def index(self, prompt: str) -> int:
        """Index of ``prompt`` (its first occurrence); ``ValueError`` if it is not a prompt
        of this task."""
        try:
            return self._index[prompt]
        except (KeyError, TypeError):
            shown = (
                prompt if not isinstance(prompt, str) or len(prompt) <= 80 else prompt[:80] + "..."
            )
            raise ValueError(
                f"{shown!r} is not one of the {self.num_prompts} prompts of {self.task_name}; "
                "score a completion against the prompt it was sampled for (task.prompt(i))"
            ) from None

    def answer_for(self, prompt: str) -> str:
        """Reference answer of ``prompt`` (``ValueError`` if it is not a prompt of this task)."""
        return self._answers[self.index(prompt)]

    # --- scoring -----------------------------------------------------------------------
    def score(self, prompt: str, completion: str) -> float:
        """Score of one decoded ``completion`` of ``prompt``: 1.0 correct, 0.0 otherwise
        (unless the task documents partial credit). Must not raise on any string."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement score(prompt, completion) -> float"
        )

    def reward_rollout(
        self, rollout: Any, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Score every completion of a rollout: ``(N,) float32``.

        Reads ``rollout.extra["completions"]`` (``N`` decoded strings, written by the
        language-model policy) and ``rollout.prompts`` ``(N,)``; completion ``k`` is scored
        against ``self.prompt(rollout.prompts[k])``. ``generator`` is unused (scores are
        deterministic).

        Raises ``ValueError`` naming the task, the row and the prompt when ``score`` returns
        anything but a finite real number (None, a string, nan): a silent nan reward would
        poison every advantage in its group.
        """
        completions = rollout.extra.get("completions") if isinstance(rollout.extra, dict) else None
        if completions is None:
            raise ValueError(
                f"{self.task_name} scores decoded text, but rollout.extra has no 'completions'; "
                "sample with a language-model policy, which stores the decoded completions there"
            )
        prompts = rollout.prompts.reshape(-1).tolist()
        if len(completions) != len(prompts):
            raise ValueError(
                f"rollout.extra['completions'] has {len(completions)} entries but the rollout has "
                f"{len(prompts)} rows; the policy must decode one completion per row"
            )
        scores = []
        for k, (i, completion) in enumerate(zip(prompts, completions)):
            prompt = self.prompt(i)
            value = self.score(prompt, completion)
            if not _is_finite_real(value):
                raise ValueError(
                    f"{self.task_name}.score returned {value!r} for rollout row {k} (prompt {i}: "
                    f"{prompt!r}); a task's score must return a finite float such as 1.0 or 0.0"
                )
            scores.append(float(value))
        return torch.tensor(scores, dtype=torch.float32, device=rollout.prompts.device)

    def reward(
        self,
        prompts: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError(
            f"{self.task_name} is a text task: it scores decoded completions, not action ids. "
            "Use reward_rollout(rollout) with a rollout from a language-model policy, or "
            "score(prompt, completion) directly"
        )

    def expected_reward(self, prompts: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.reward(prompts, actions)

    # --- supervised pre-training ---------------------------------------------------------
    def sft_completion(self, i: int, generator: torch.Generator | None = None) -> str:
        """The completion that supervised pre-training teaches for prompt ``i`` (default: the
        reference answer; the factor task draws a random prime factor instead)."""
        return self._answers[i]

    def sft_examples(
        self, n: int, generator: torch.Generator | None = None
    ) -> list[tuple[str, str]]:
        """``n`` ``(prompt, completion)`` pairs for supervised pre-training of a base model,
        prompts drawn uniformly with replacement from ``generator``.

        The completion is the text the model should emit before its EOS token (train on the
        completion tokens and the EOS only, not on the prompt).
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n (number of examples) must be an integer >= 0, got {n!r}")
        idx = torch.randint(self.num_prompts, (n,), generator=generator).tolist()
        return [(self._prompts[i], self.sft_completion(i, generator)) for i in idx]

    # --- splits ------------------------------------------------------------------------------
    def subset(self, indices: Sequence[int]) -> TextTask:
        """A task of the same kind holding only prompts ``indices`` (in that order) and the
        same alphabet. Subclasses whose config does not hold ``prompts`` and ``answers``
        override this."""
        idx = [self._check_i(i) for i in indices]
        if not idx:
            raise ValueError("a subset needs at least one prompt index")
        config = self.get_config()
        if "prompts" not in config or "answers" not in config:
            raise NotImplementedError(
                f"{type(self).__name__}.get_config() has no 'prompts'/'answers'; override subset()"
            )
        config["prompts"] = [self._prompts[i] for i in idx]
        config["answers"] = [self._answers[i] for i in idx]
        if "alphabet" in config:
            config["alphabet"] = self.alphabet
        return type(self)(**config)

    def split(self, held_out: int | float, *, seed: int = 0) -> tuple[TextTask, TextTask]:
        """Split into disjoint ``(train, held_out)`` tasks: no prompt string is in both.

        Args:
            held_out: number of distinct prompts to hold out (int >= 1), or a fraction in
                (0, 1) of them.
            seed: seed of the random assignment.

        >>> train, test = ExactMatchTask(["a", "b", "c", "d"], ["1", "2", "3", "4"]).split(1)
        >>> train.num_prompts, test.num_prompts, set(train.prompts) & set(test.prompts)
        (3, 1, set())
        """
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self._prompts):
            groups.setdefault(p, []).append(i)
        keys = list(groups)
        if isinstance(held_out, float) and not isinstance(held_out, bool):
            if not 0.0 < held_out < 1.0:
                raise ValueError(f"a held-out fraction must be in (0, 1), got {held_out}")
            k = max(1, round(held_out * len(keys)))
        elif isinstance(held_out, int) and not isinstance(held_out, bool):
            k = held_out
        else:
            raise TypeError(f"held_out must be an int count or a float fraction, got {held_out!r}")
        if not 1 <= k < len(keys):
            raise ValueError(
                f"cannot hold out {k} of {len(keys)} distinct prompts: both parts need at least "
                "one prompt"
            )
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(len(keys), generator=g).tolist()
        test_keys = sorted(perm[:k])
        test_set = set(test_keys)
        train_idx = [i for j, key in enumerate(keys) if j not in test_set for i in groups[key]]
        test_idx = [i for j in test_keys for i in groups[keys[j]]]
        parts = self.subset(sorted(train_idx)), self.subset(sorted(test_idx))
        mark_split(self, parts, held_out, int(seed))
        return parts

    # --- datasets round trip ------------------------------------------------------------------
    def metadata_columns(self) -> dict[str, list[Any]]:
        """Extra per-prompt columns for :meth:`to_dataset` (e.g. the operands). Informative
        only: :meth:`from_dataset` rebuilds the task from ``prompt``/``answer`` and the spec."""
        return {}

    def to_dataset(self) -> Any:
        """A ``datasets.Dataset`` with columns ``prompt``, ``answer`` and the task's metadata
        columns, one row per prompt. The task's class and settings travel in
        ``ds.info.description`` (JSON), so ``TextTask.from_dataset(ds)`` rebuilds this task
        after ``ds.save_to_disk(path)`` / ``datasets.load_from_disk(path)``.

        >>> ds = ExactMatchTask(["1+1="], ["2"]).to_dataset()
        >>> ds.column_names, ds[0]
        (['prompt', 'answer'], {'prompt': '1+1=', 'answer': '2'})
        """
        from datasets import Dataset, DatasetInfo

        columns: dict[str, list[Any]] = {"prompt": self.prompts, "answer": self.answers}
        for name, values in self.metadata_columns().items():
            if name in columns:
                raise ValueError(f"metadata column {name!r} clashes with a standard column")
            columns[name] = values
        config = {k: v for k, v in self.get_config().items() if k not in ("prompts", "answers")}
        spec = {DATASET_SPEC_KEY: {"class": class_key(type(self)), "config": config}}
        return Dataset.from_dict(columns, info=DatasetInfo(description=json.dumps(spec)))

    def save_to_disk(self, path: str | os.PathLike) -> None:
        """``self.to_dataset().save_to_disk(path)``."""
        self.to_dataset().save_to_disk(str(path))

    @classmethod
    def _from_columns(
        cls, config: dict[str, Any], prompts: list[str], answers: list[str], ds: Any
    ) -> TextTask:
        return cls(**{**config, "prompts": prompts, "answers": answers})

    @classmethod
    def from_dataset(cls, ds: Any) -> TextTask:
        """Rebuild a task from a ``datasets.Dataset`` made by :meth:`to_dataset` (rows may
        have been selected or filtered). Called on :class:`TextTask` itself it rebuilds the
        class recorded in the dataset; a dataset made elsewhere, with only ``prompt`` and
        ``answer`` columns, needs a concrete class: ``ExactMatchTask.from_dataset(ds)``.
        """
        missing = {"prompt", "answer"} - set(ds.column_names)
        if missing:
            raise ValueError(
                f"the dataset lacks column(s) {sorted(missing)}; a text task dataset has "
                f"'prompt' and 'answer' columns, got {ds.column_names}"
            )
        spec = None
        description = getattr(ds.info, "description", None) or ""
        try:
            spec = json.loads(description).get(DATASET_SPEC_KEY)
        except (ValueError, AttributeError):
            spec = None
        target, config = cls, {}
        if spec is not None:
            target = resolve_class(spec.get("class") if isinstance(spec, dict) else spec,
                              "the dataset's rlnb task spec")
            config = dict(spec.get("config", {}))
            if not issubclass(target, cls):
                raise ValueError(
                    f"this dataset holds a {target.__name__}, not a {cls.__name__}; load it "
                    f"with {target.__name__}.from_dataset(ds) or TextTask.from_dataset(ds)"
                )
        elif target.score is TextTask.score:
            raise ValueError(
                f"this dataset carries no rlnb task spec, so {cls.__name__} cannot tell how to "
                "score it; call from_dataset on a concrete task class, e.g. "
                "ExactMatchTask.from_dataset(ds)"
            )
        return target._from_columns(config, list(ds["prompt"]), list(ds["answer"]), ds)

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike) -> TextTask:
        """``from_dataset(datasets.load_from_disk(path))``."""
        import datasets

        return cls.from_dataset(datasets.load_from_disk(str(path)))

    # --- serialization --------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "answers": self.answers, "alphabet": self.alphabet}

    def spec(self) -> dict[str, Any]:
        """What ``env.json`` holds: a generator's name and settings, or the settings without
        the data, which :meth:`get_tensors` holds (:mod:`rlnb.envs.text_spec`)."""
        return task_spec(self)

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return task_tensors(self)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TextTask:
        return rebuild_task(cls, spec, tensors)

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self.get_config() == other.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.num_prompts, self._prompts[0]))

    def _settings(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.get_config().items()
            if k not in ("prompts", "answers", "alphabet")
        }

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}(num_prompts={self.num_prompts}{extra})"


class ExactMatchTask(TextTask):
    """Correct iff the stripped completion equals the prompt's reference answer exactly.

    The simplest verifier: use it for data with one right string per prompt. Completions
    longer than ``max_answer_chars`` (default: the longest answer) score 0.0 without a
    comparison.

    >>> task = ExactMatchTask(prompts=["2+2="], answers=["4"])
    >>> task.score("2+2=", " 4\\n"), task.score("2+2=", "04"), task.score("2+2=", "")
    (1.0, 0.0, 0.0)
    """

    def score(self, prompt: str, completion: str) -> float:
        expected = self.answer_for(prompt)
        return float(strip_completion(completion, len(expected)) == expected)
