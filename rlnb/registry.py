"""Name -> function registries: the plumbing every layer looks names up with.

A :class:`Registry` maps a string name to a function filled by its ``register``
decorator, so a config can say ``policy_loss="clip_cov"`` or ``task="countdown"`` and a new
entry is one decorated function, not a subclass. An unknown name raises ``ValueError``
listing the valid names (and the closest one): :func:`unknown_name_error`, also used for
names that are not in a registry (layouts, reasoning-gym data sets, aggregation modes).
:func:`options_of` and :func:`check_options` read and check a registered function's
keyword options.

This is a core module: it imports no other rlnb module. The registries of objectives
(advantages, policy losses) are built on it in :mod:`rlnb.rl.registry`, the task registry
in :mod:`rlnb.envs.text_tasks`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["Registry", "check_options", "options_of", "unknown_name_error"]

F = TypeVar("F", bound=Callable[..., Any])


def unknown_name_error(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """The error for a name that is not one of ``valid``: lists them sorted, suggests one.

    >>> str(unknown_name_error("advantage method", "grop", ["rloo", "grpo"]))
    "unknown advantage method 'grop'; valid: grpo, rloo (did you mean 'grpo'?)"
    """
    valid = sorted(valid)
    msg = f"unknown {kind} {name!r}; valid: {', '.join(valid)}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return ValueError(msg)


class Registry(Mapping[str, Callable[..., Any]]):
    """A read-only mapping ``name -> function`` filled by the ``register`` decorator.

    >>> losses = Registry("loss")
    >>> @losses.register("zero")
    ... def zero(x):
    ...     return 0 * x
    >>> sorted(losses), losses["zero"](3)
    (['zero'], 0)
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(fn: F) -> F:
            old = self._fns.get(name)
            if old is not None and old is not fn:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered ({old.__module__}."
                    f"{old.__qualname__}); pick another name"
                )
            self._fns[name] = fn
            return fn

        return decorator

    def __getitem__(self, name: str) -> Callable[..., Any]:
        try:
            return self._fns[name]
        except (KeyError, TypeError):
            raise unknown_name_error(self.kind, name, self._fns) from None

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def get(self, name: str, default: Any = None) -> Any:
        return self._fns.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._fns))

    def __len__(self) -> int:
        return len(self._fns)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


def options_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """Options of a registered function with their defaults: every keyword-only parameter
    and every other parameter that has a default (the data arguments have none).

    >>> def f(x, y=1, *, epsilon=0.2, generator=None): ...
    >>> options_of(f)
    {'y': 1, 'epsilon': 0.2, 'generator': None}
    """
    P = inspect.Parameter
    return {
        p.name: p.default
        for p in _parameters(fn)
        if p.kind is P.KEYWORD_ONLY
        or (p.kind is P.POSITIONAL_OR_KEYWORD and p.default is not P.empty)
    }


def _parameters(fn: Callable[..., Any]) -> tuple[inspect.Parameter, ...]:
    """``fn``'s parameters, read once per function (``inspect.signature`` costs tens of
    microseconds, and the trainer asks every step)."""
    try:
        return _cached_parameters(fn)
    except TypeError:  # an unhashable callable
        return tuple(inspect.signature(fn).parameters.values())


@functools.lru_cache(maxsize=1024)
def _cached_parameters(fn: Callable[..., Any]) -> tuple[inspect.Parameter, ...]:
    return tuple(inspect.signature(fn).parameters.values())


def check_options(kind: str, name: str, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``options`` holds a keyword that ``fn`` does not take."""
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(fn)):
        return  # fn takes **kwargs: it decides for itself
    valid = options_of(fn)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"{kind} {name!r} takes no option(s) {unknown}; its options: "
            f"{', '.join(sorted(valid)) or '(none)'}"
        )
