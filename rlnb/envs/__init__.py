"""Sandboxes: batched, generator-seeded toys with exact answers (bandits, strategy bandit,
tree MDP)."""

from rlnb.envs.bandit import Bandit
from rlnb.envs.base import Sandbox
from rlnb.envs.strategy_bandit import StrategyBandit
from rlnb.envs.tree_mdp import TreeMDP

__all__ = ["Bandit", "Sandbox", "StrategyBandit", "TreeMDP"]
