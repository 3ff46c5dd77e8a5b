"""Name -> function registries for advantage estimators and policy losses.

Objectives are plain functions looked up by a string name, so a config can say
``policy_loss="clip_cov"`` and a new objective is one decorated function, not a subclass::

    @register_advantage("my_baseline")
    def my_baseline(rewards, group_size):  # (N,) -> (N,)
        return rewards - rewards.median()

An unknown name raises ``ValueError`` listing the valid names (and the closest one). The
generic machinery (:class:`~rlnb.registry.Registry`, :func:`~rlnb.registry.options_of`,
:func:`~rlnb.registry.check_options`) is the core module :mod:`rlnb.registry`, re-exported
here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlnb.registry import F, Registry, check_options, options_of, unknown_name_error

__all__ = [
    "ADVANTAGES",
    "POLICY_LOSSES",
    "Registry",
    "check_options",
    "get_advantage_fn",
    "get_policy_loss_fn",
    "list_advantages",
    "list_policy_losses",
    "options_of",
    "register_advantage",
    "register_policy_loss",
    "unknown_name_error",
]

ADVANTAGES = Registry("advantage method")
POLICY_LOSSES = Registry("policy loss")


def register_advantage(name: str) -> Callable[[F], F]:
    """Decorator: register ``fn(rewards (N,), group_size, **options) -> (N,)`` under ``name``."""
    return ADVANTAGES.register(name)


def register_policy_loss(name: str) -> Callable[[F], F]:
    """Decorator: register ``fn(logp, old_logp, advantages, mask, *, agg, **options)
    -> (loss, metrics)`` under ``name``."""
    return POLICY_LOSSES.register(name)


def get_advantage_fn(name: str) -> Callable[..., Any]:
    """The advantage function registered as ``name`` (``ValueError`` listing valid names).

    >>> get_advantage_fn("grpo").__name__
    'grpo'
    """
    return ADVANTAGES[name]


def get_policy_loss_fn(name: str) -> Callable[..., Any]:
    """The policy loss registered as ``name`` (``ValueError`` listing valid names)."""
    return POLICY_LOSSES[name]


def list_advantages() -> list[str]:
    """Sorted names of the registered advantage methods."""
    return list(ADVANTAGES)


def list_policy_losses() -> list[str]:
    """Sorted names of the registered policy losses.

    >>> "ppo_clip" in list_policy_losses()
    True
    """
    return list(POLICY_LOSSES)
