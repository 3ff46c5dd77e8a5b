"""Sandboxes: batched, generator-seeded toys with exact answers (bandits, strategy bandit,
tree MDP, gridworlds), and verifiable text tasks for language-model policies."""

from rlnb.envs.bandit import Bandit
from rlnb.envs.base import Sandbox
from rlnb.envs.gridworld import Gridworld
from rlnb.envs.layouts import LAYOUTS, parse_layout
from rlnb.envs.reasoning_gym import ReasoningGymTask
from rlnb.envs.strategy_bandit import StrategyBandit
from rlnb.envs.text import ExactMatchTask, TextTask, strip_completion
from rlnb.envs.text_tasks import (
    TASKS,
    AdditionTask,
    CountdownTask,
    FactorTask,
    ModularSumTask,
    addition,
    countdown,
    factor,
    make_task,
    modular_sum,
    parse_expression,
    register_task,
)
from rlnb.envs.tree_mdp import TreeMDP
from rlnb.envs.variable_tree import VariableLengthTree

__all__ = [
    "LAYOUTS",
    "Gridworld",
    "parse_layout",
    "TASKS",
    "AdditionTask",
    "Bandit",
    "CountdownTask",
    "ExactMatchTask",
    "FactorTask",
    "ModularSumTask",
    "ReasoningGymTask",
    "Sandbox",
    "StrategyBandit",
    "TextTask",
    "TreeMDP",
    "VariableLengthTree",
    "addition",
    "countdown",
    "factor",
    "make_task",
    "modular_sum",
    "parse_expression",
    "register_task",
    "strip_completion",
]

# Noisy verifiers (card 15, Cai et al. arXiv:2510.00915): a wrapper and its reward corrections.
from rlnb.envs.noisy import REWARD_CORRECTIONS, NoisyVerifier  # noqa: E402

__all__ += ["REWARD_CORRECTIONS", "NoisyVerifier"]

# Addition with the column working written out (long completions, card 7).
from rlnb.envs.written_addition import (  # noqa: E402
    WrittenAdditionTask,
    written_addition,
    written_sum,
)

__all__ += ["WrittenAdditionTask", "written_addition", "written_sum"]

# A preference game rewarded by win rate within the group (SPO, card 19).
from rlnb.envs.preference_game import PreferenceGame  # noqa: E402

__all__ += ["PreferenceGame"]

# Self-consistency as a reward (card 17): the majority vote and its toy.
from rlnb.envs.votes import AnswerStrategyBandit, MajorityVote  # noqa: E402

__all__ += ["AnswerStrategyBandit", "MajorityVote"]

# Hint scaffolding (SEELE, card 21): the first h steps of a reference solution, scheduled.
from rlnb.envs.hints import HINT_SCHEDULES, HintedTask  # noqa: E402

__all__ += ["HINT_SCHEDULES", "HintedTask"]
