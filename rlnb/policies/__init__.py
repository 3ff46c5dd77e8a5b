"""Trainable policies on one protocol: tabular and MLP toys (and language models)."""

from rlnb.policies.base import Policy, Rollout
from rlnb.policies.tabular import MLPPolicy, TabularPolicy

__all__ = ["MLPPolicy", "Policy", "Rollout", "TabularPolicy"]
