"""Trainable policies on one protocol: tabular and MLP toys, and any causal language model."""

from rlnb.policies.base import Policy, Rollout
from rlnb.policies.lm import LMPolicy
from rlnb.policies.tabular import MLPPolicy, TabularPolicy
from rlnb.policies.tiny import (
    char_tokenizer,
    chat_tokenizer,
    pretrain_base,
    tiny_config,
    tiny_model,
)

__all__ = [
    "LMPolicy",
    "MLPPolicy",
    "Policy",
    "Rollout",
    "TabularPolicy",
    "char_tokenizer",
    "chat_tokenizer",
    "pretrain_base",
    "tiny_config",
    "tiny_model",
]
