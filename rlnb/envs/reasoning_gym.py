"""reasoning-gym datasets as rlnb text tasks (``pip install reasoning-gym``).

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ generates procedural
problems (arithmetic, algebra, logic, games, ...) and ships a verifier for each dataset.
:class:`ReasoningGymTask` turns one of them into a :class:`~rlnb.envs.text.TextTask`:
``entry["question"]`` is the prompt, ``entry["answer"]`` the reference answer, and
``dataset.score_answer(answer, entry)`` the score. The package generates everything
locally (no network) and deterministically from ``seed``.

Completion format: if the completion contains ``<answer>...</answer>``, the text inside the
last such pair (stripped) is the answer; otherwise the whole stripped completion is. So a
chat model can think first and tag its answer, and a tiny model can emit the bare answer.
With ``answer_tag="answer"`` the task asks for the tag instead (an instruction after every
question, as reasoning-gym's own prompts and the TRL / verl recipes do) and requires it: the
text inside the last ``<answer>...</answer>`` is scored, and a completion without one scores
0, the format reward of DeepSeek-R1-style training folded into the answer reward.

Footgun: scores are whatever the dataset's verifier returns, in [0, 1] but not always
binary; the default verifier (``chain_sum`` for one) gives partial credit
``len(answer) / len(completion)`` when the reference answer appears inside a longer
completion, so "-4 or 4" earns 0.33 on a problem whose answer is "-4".
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from rlnb.envs.text import TextTask
from rlnb.registry import unknown_name_error

_INSTALL_HINT = "pip install reasoning-gym  (or: pip install rlnb[tasks])"


def _import_reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as err:
        raise ImportError(
            f"ReasoningGymTask needs the reasoning-gym package, which is not installed: "
            f"{_INSTALL_HINT}"
        ) from err
    return reasoning_gym


def list_reasoning_gym_datasets() -> list[str]:
    """Names of the datasets reasoning-gym registers (e.g. ``chain_sum``,
    ``basic_arithmetic``, ``countdown``), sorted."""
    _import_reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def extract_answer(completion: str) -> str:
    """The answer part of a completion: the stripped text inside the last
    ``<answer>...</answer>`` pair, else the whole stripped completion. Linear time (no
    backtracking regex), so a runaway completion costs one scan.

    >>> extract_answer("<think>2+2</think> <answer> 4 </answer>"), extract_answer(" 4\\n")
    ('4', '4')
    """
    end = completion.rfind("</answer>")
    if end >= 0:
        start = completion.rfind("<answer>", 0, end)
        if start >= 0:
            return completion[start + len("<answer>") : end].strip()
    return completion.strip()


def check_tag(tag: str) -> str:
    """``tag`` if it is a tag name (letters, digits, ``_`` and ``-``, starting with a letter),
    else ``ValueError``: it is written into prompts as ``<tag>`` and searched for as is."""
    if not isinstance(tag, str) or not tag or not tag[0].isascii() or not tag[0].isalpha() or \
            not all(c.isascii() and (c.isalnum() or c in "_-") for c in tag):
        raise ValueError(
            f"answer_tag must be a tag name such as 'answer' (ASCII letters, digits, '_' and "
            f"'-', starting with a letter; no angle brackets), got {tag!r}"
        )
    return tag


def extract_tagged(completion: str, tag: str = "answer") -> str | None:
    """The stripped text inside the last ``<tag>...</tag>`` pair of a completion, or None
    when it has none. The pairs are those ``reasoning_gym.utils.extract_answer`` finds
    (left to right, each ``<tag>`` closed by the first ``</tag>`` after it), and so is the
    answer; this scan takes linear time where that regex can take quadratic time on a
    runaway completion full of unclosed tags.

    >>> extract_tagged("<think>1+1</think><answer> 2 </answer>"), extract_tagged("2")
    ('2', None)
    >>> extract_tagged("<answer>1</answer> no, <answer>2</answer>")
    '2'
    """
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    found = None
    pos = 0
    while (start := completion.find(open_tag, pos)) >= 0:
        end = completion.find(close_tag, start + len(open_tag))
        if end < 0:
            break
        found = (start + len(open_tag), end)
        pos = end + len(close_tag)
    return None if found is None else completion[found[0] : found[1]].strip()


def answer_instruction_for(tag: str) -> str:
    """The default instruction appended to every question by ``answer_tag=tag`` (the
    wording of reasoning-gym's ``simple`` system prompt)."""
    return f"\nProvide your final answer between <{tag}> and </{tag}> tags."


class ReasoningGymTask(TextTask):
    """A reasoning-gym dataset as a text task.

    Args:
        dataset_name: a reasoning-gym dataset (:func:`list_reasoning_gym_datasets`).
        size: number of entries to generate (``num_prompts`` unless ``indices`` is given).
        seed: the dataset's seed. An int, always: rebuilding from ``get_config()``
            regenerates the same entries from it (reasoning-gym picks a random seed for
            None, which could not be rebuilt).
        indices: keep only these entries of the ``size`` generated (used by :meth:`split`);
            None keeps all.
        max_answer_chars: an extracted answer longer than this scores 0.0 without calling
            the verifier. Default: ``max(256, 4 * longest reference answer)``.
        answer_tag: a tag name such as ``"answer"``: every prompt asks for the final answer
            inside ``<answer>...</answer>`` (the question, then ``answer_instruction``), and
            only the text inside the last such pair is scored; a completion without the tag
            scores 0.0, however right its bare answer. :meth:`sft_completion` wraps the
            reference answer in the tag. None (default): prompts are the bare questions
            and the tag is optional (:func:`extract_answer`).
        answer_instruction: what ``answer_tag`` appends to every question. None (default):
            ``"\\nProvide your final answer between <answer> and </answer> tags."``
            (:func:`answer_instruction_for`); ``""`` appends nothing, for a policy whose
            system prompt asks for the tag (``LMPolicy(..., system_prompt=...)``, e.g. one
            of ``reasoning_gym.utils.SYSTEM_PROMPTS``). Only with ``answer_tag``.
        **dataset_kwargs: the dataset's own options (JSON-able), e.g. ``min_terms=2``.

    ``score`` maps the completion to an answer (:func:`extract_answer`, or
    :func:`extract_tagged` with ``answer_tag``) and returns
    ``dataset.score_answer(answer=..., entry=...)``, turning a verifier exception or a
    non-finite value into 0.0. The alphabet is every character found in the prompts and
    answers of all ``size`` entries, and in the tags (the same for every split of one task).

    Footgun: ``entry(i)["question"]`` is the dataset's question; ``prompt(i)`` is what the
    model reads, with the instruction when ``answer_tag`` is set.

    >>> task = ReasoningGymTask("chain_sum", size=2, seed=1)  # doctest: +SKIP
    >>> task.prompt(1), task.answer(1)  # doctest: +SKIP
    ('State the final answer to the following arithmetic problem: 1 + 5 =', '6')
    >>> task.score(task.prompt(1), "<answer>6</answer>"), task.score(task.prompt(1), "7")  # doctest: +SKIP
    (1.0, 0.0)
    >>> tagged = ReasoningGymTask("chain_sum", size=2, seed=1, answer_tag="answer")  # doctest: +SKIP
    >>> tagged.prompt(1)  # doctest: +SKIP
    'State the final answer to the following arithmetic problem: 1 + 5 =\\nProvide your final answer between <answer> and </answer> tags.'
    >>> tagged.score(tagged.prompt(1), "6"), tagged.score(tagged.prompt(1), "<answer>6</answer>")  # doctest: +SKIP
    (0.0, 1.0)
    """

    def __init__(
        self,
        dataset_name: str,
        size: int = 500,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        max_answer_chars: int | None = None,
        answer_tag: str | None = None,
        answer_instruction: str | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        _import_reasoning_gym()
        from reasoning_gym import create_dataset
        from reasoning_gym.factory import DATASETS

        if dataset_name not in DATASETS:
            raise unknown_name_error("reasoning-gym dataset", dataset_name, DATASETS)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1 (entries to generate), got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(
                f"seed must be an int so the task can be rebuilt from its config, got {seed!r}"
            )
        if answer_tag is not None:
            check_tag(answer_tag)
        if answer_instruction is not None:
            if answer_tag is None:
                raise ValueError(
                    "answer_instruction is only used with answer_tag (it tells the model to "
                    "put its answer in that tag); pass answer_tag='answer' as well, or drop it"
                )
            if not isinstance(answer_instruction, str):
                raise TypeError(f"answer_instruction must be a str, got "
                                f"{type(answer_instruction).__name__}")
        try:
            json.dumps(dataset_kwargs)
        except TypeError as err:
            raise TypeError(
                f"reasoning-gym options must be JSON-able to rebuild the task, got {dataset_kwargs!r}"
            ) from err
        dataset = create_dataset(dataset_name, size=size, seed=seed, **dataset_kwargs)
        entries = [dataset[i] for i in range(size)]
        if answer_tag is None:
            suffix, tag_chars = "", ""
        else:
            suffix = (answer_instruction if answer_instruction is not None
                      else answer_instruction_for(answer_tag))
            tag_chars = f"<{answer_tag}></{answer_tag}>" + suffix
        alphabet = "".join(sorted(set(tag_chars).union(
            *(e["question"] + e["answer"] for e in entries))))
        if indices is not None:
            indices = [int(i) for i in indices]
            bad = [i for i in indices if not 0 <= i < size]
            if bad:
                raise ValueError(f"indices {bad[:5]} are outside 0..{size - 1} (size={size})")
            kept = [entries[i] for i in indices]
        else:
            kept = entries
        self.dataset_name, self.size, self.seed = dataset_name, size, seed
        self.dataset_kwargs = dict(dataset_kwargs)
        self.indices = indices
        self.dataset = dataset
        self._entries = kept
        self.answer_tag = answer_tag
        self._answer_instruction_given = answer_instruction
        self.answer_instruction = suffix if answer_tag is not None else None
        super().__init__([e["question"] + suffix for e in kept], [e["answer"] for e in kept],
                         alphabet)
        longest = max(len(a) for a in self._answers)
        self._max_answer_chars_given = max_answer_chars
        self.max_answer_chars = (
            max_answer_chars if max_answer_chars is not None else max(256, 4 * longest)
        )

    @property
    def task_name(self) -> str:  # type: ignore[override]
        return f"reasoning_gym:{self.dataset_name}"

    def entry(self, i: int) -> dict[str, Any]:
        """The reasoning-gym entry of prompt ``i`` (``question``, ``answer``, ``metadata``)."""
        return self._entries[self._check_i(i)]

    def score(self, prompt: str, completion: str) -> float:
        entry = self._entries[self.index(prompt)]
        if not isinstance(completion, str):
            raise TypeError(
                f"a completion must be a str (decoded text), got {type(completion).__name__}"
            )
        if self.answer_tag is None:
            answer = extract_answer(completion)
        else:
            answer = extract_tagged(completion, self.answer_tag)
            if answer is None:  # the prompt asked for the tag: no tag, no answer
                return 0.0
        if len(answer) > self.max_answer_chars:
            return 0.0
        try:
            value = float(self.dataset.score_answer(answer=answer, entry=entry))
        except Exception:
            return 0.0
        return value if math.isfinite(value) else 0.0

    def sft_completion(self, i: int, generator: Any = None) -> str:
        """The reference answer, inside the answer tag when the task asks for one."""
        answer = super().sft_completion(i, generator)
        return answer if self.answer_tag is None else f"<{self.answer_tag}>{answer}</{self.answer_tag}>"

    # --- splits and datasets ------------------------------------------------------------
    def _positions(self) -> list[int]:
        return list(self.indices) if self.indices is not None else list(range(self.size))

    def subset(self, indices: Sequence[int]) -> ReasoningGymTask:
        positions = self._positions()
        chosen = [positions[self._check_i(i)] for i in indices]
        if not chosen:
            raise ValueError("a subset needs at least one prompt index")
        return type(self)(**{**self.get_config(), "indices": chosen})

    def metadata_columns(self) -> dict[str, list[Any]]:
        return {
            "index": self._positions(),
            "metadata": [json.dumps(e.get("metadata", {}), default=str) for e in self._entries],
        }

    @classmethod
    def _from_columns(
        cls, config: dict[str, Any], prompts: list[str], answers: list[str], ds: Any
    ) -> TextTask:
        if "index" in ds.column_names:
            config = {**config, "indices": list(ds["index"])}
        task = cls(**config)
        if task.prompts != prompts or task.answers != answers:
            raise ValueError(
                f"regenerating {task.task_name} (size={task.size}, seed={task.seed}) gave other "
                "prompts than the dataset holds; was it saved with another reasoning-gym version?"
            )
        return task

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "dataset_name": self.dataset_name,
            "size": self.size,
            "seed": self.seed,
        }
        if self.indices is not None:
            config["indices"] = list(self.indices)
        if self._max_answer_chars_given is not None:
            config["max_answer_chars"] = self._max_answer_chars_given
        if self.answer_tag is not None:
            config["answer_tag"] = self.answer_tag
        if self._answer_instruction_given is not None:
            config["answer_instruction"] = self._answer_instruction_given
        config.update(self.dataset_kwargs)
        return config

    def __repr__(self) -> str:
        return (
            f"ReasoningGymTask({self.dataset_name!r}, num_prompts={self.num_prompts}, "
            f"size={self.size}, seed={self.seed}"
            + (f", answer_tag={self.answer_tag!r}" if self.answer_tag is not None else "")
            + ")"
        )
