"""Probes: measurements of a policy that take tensors or DataFrames, never trainers.

- :mod:`rlnb.probes.passk` -- the unbiased pass@k estimator and pass@k curves.
"""

from rlnb.probes.passk import default_ks, pass_at_k, pass_at_k_curve, pass_at_k_from_probs

__all__ = ["default_ks", "pass_at_k", "pass_at_k_curve", "pass_at_k_from_probs"]
