"""Built-in verifiable text tasks, short enough for a tiny character-level model.

Each generator takes ``num_prompts``, a difficulty knob and a ``seed``, and returns a task
with distinct prompts (at default difficulty, prompts and answers are at most ~15
characters). Formats, with the completion the model should emit before its EOS token:

============  ===========================  ==============  ================================
task          prompt                       reference       score 1.0 iff the stripped
                                           answer          completion ...
============  ===========================  ==============  ================================
addition      ``"12+34="``                 ``"46"``        equals the sum, canonical digits
modular_sum   ``"(3+8+5)%10="``            ``"6"``         equals the sum mod the modulus
countdown     ``"3,5,7>22:"``              ``"3*5+7"``     is an expression over the given
                                                           numbers (each at most once) with
                                                           ``+ - *`` and parentheses that
                                                           equals the target
factor        ``"123459="``                smallest prime  is a divisor ``d`` of N with
                                           factor          ``1 < d < N``
============  ===========================  ==============  ================================

``written_addition`` (:mod:`rlnb.envs.written_addition`): prompt ``"47+38="``, reference
``"7+8=15,4+3+1=8:85"`` (the column working, then the sum); scores 1.0 iff the completion
has one ``:`` and the sum after it is right (the working is not judged).

Every task scores a pure function of ``(prompt, completion)``: the reference answer is
only what supervised pre-training teaches. Scores are 0.0 for anything unparseable,
never an exception. Names are registered in :data:`TASKS`; :func:`make_task` also builds
``"reasoning_gym:<dataset>"`` tasks (:mod:`rlnb.envs.reasoning_gym`).

Where they live (every name is importable from here): :mod:`rlnb.envs.arithmetic_tasks`
(addition, modular sums), :mod:`rlnb.envs.countdown_task` (with the expression parser of
:mod:`rlnb.envs.expressions`), :mod:`rlnb.envs.factor_task`, and what they share in
:mod:`rlnb.envs.task_tools`. This module holds the registry.

>>> task = make_task("addition", num_prompts=3, digits=2, seed=0)
>>> task.prompts, task.answers
(['59+63=', '15+43=', '75+72='], ['122', '58', '147'])
>>> task.score("15+43=", "58"), task.score("15+43=", "57"), task.score("15+43=", "58 apples")
(1.0, 0.0, 0.0)
"""


from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlnb.envs.arithmetic_tasks import AdditionTask, ModularSumTask, addition, modular_sum
from rlnb.envs.countdown_task import CountdownTask, countdown
from rlnb.envs.expressions import parse_expression
from rlnb.envs.factor_task import FactorTask, factor, prime_factors, primes_below
from rlnb.envs.task_tools import DIGITS
from rlnb.envs.text import TextTask, strip_completion
from rlnb.registry import Registry, unknown_name_error
from rlnb.serialization import register_serializable

__all__ = [
    "DIGITS",
    "REASONING_GYM_PREFIX",
    "TASKS",
    "AdditionTask",
    "CountdownTask",
    "FactorTask",
    "ModularSumTask",
    "TextTask",
    "addition",
    "countdown",
    "factor",
    "make_task",
    "modular_sum",
    "parse_expression",
    "prime_factors",
    "primes_below",
    "register_task",
    "strip_completion",
]

REASONING_GYM_PREFIX = "reasoning_gym:"

# The task classes were defined in this module until they moved into their own: run
# directories and task data sets written before name them here.
for _cls in (AdditionTask, ModularSumTask, CountdownTask, FactorTask):
    register_serializable(_cls, name=f"rlnb.envs.text_tasks:{_cls.__qualname__}")


TASKS = Registry("text task")
"""Name -> task generator (``fn(num_prompts, <difficulty>, seed) -> TextTask``). Add your
own with :func:`register_task`; :func:`make_task` also accepts ``"reasoning_gym:<dataset>"``."""


def register_task(name: str) -> Callable[[Any], Any]:
    """Decorator: make a task generator available to :func:`make_task` under ``name``."""
    if name.startswith(REASONING_GYM_PREFIX):
        raise ValueError(f"task names starting with {REASONING_GYM_PREFIX!r} are reserved")
    return TASKS.register(name)


for _name, _fn in (
    ("addition", addition),
    ("modular_sum", modular_sum),
    ("countdown", countdown),
    ("factor", factor),
):
    register_task(_name)(_fn)


def make_task(name: str, **kwargs: Any) -> TextTask:
    """Build a task by name: a :data:`TASKS` generator called with ``kwargs``, or
    ``"reasoning_gym:<dataset>"`` for :class:`rlnb.envs.reasoning_gym.ReasoningGymTask`
    (kwargs: ``size``, ``seed`` and the dataset's own options).

    >>> make_task("factor", num_prompts=2, digits=4, seed=1).prompts
    ['3051=', '9753=']
    >>> make_task("adition", num_prompts=2)
    Traceback (most recent call last):
    ...
    ValueError: unknown text task 'adition'; valid: addition, countdown, factor, modular_sum, reasoning_gym:<dataset name>, written_addition (did you mean 'addition'?)
    """
    if isinstance(name, str) and name.startswith(REASONING_GYM_PREFIX):
        from rlnb.envs.reasoning_gym import ReasoningGymTask

        return ReasoningGymTask(name[len(REASONING_GYM_PREFIX) :], **kwargs)
    if name not in TASKS:
        raise unknown_name_error(
            "text task", name, [*TASKS, f"{REASONING_GYM_PREFIX}<dataset name>"]
        )
    fn = TASKS[name]
    _check_knobs(name, fn, kwargs)
    return fn(**kwargs)


def _check_knobs(name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """``ValueError`` for a keyword the generator does not take (listing the ones it does,
    with the closest) or a required one that is missing."""
    import difflib
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"text task {name!r} has no knob(s) {', '.join(map(repr, unknown))}; valid knobs: "
            f"{', '.join(valid)}{hint}"
        )
    missing = [k for k, p in params.items() if p.default is p.empty and k in valid
               and k not in kwargs]
    if missing:
        raise ValueError(
            f"text task {name!r} needs {', '.join(f'{k}=...' for k in missing)}; valid knobs: "
            f"{', '.join(valid)}"
        )
