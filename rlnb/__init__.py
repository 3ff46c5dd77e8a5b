"""rlnb: see what reinforcement learning does to a language-model policy."""

__version__ = "0.1.0"
