"""ROVER (He et al. arXiv:2509.24981, github.com/yuxiaooye/ROVER): Random Policy Valuation.

The tabular theorem (card 8): in a deterministic tree MDP with a binary terminal reward,
acting greedily on ``Q^{pi_u}``, the Q-function of the *uniform* policy, is optimal, and
ROVER samples from ``softmax(Q^{pi_u} / rho)``. Its language-model form parameterises Q by
the policy's own log-ratio to the sampling policy,

    Q_hat(s_t, a_t) = rho * [log pi_theta(a_t | s_t) - log pi_old(a_t | s_t)],

and regresses it on the uniform policy's one-step backup, a mean over the *whole vocabulary*
at the next state (not only the sampled token):

    target_t = r_tilde + rho * mean_v [log pi_theta(v | s_{t+1}) - log pi_old(v | s_{t+1})]
    loss = mean over completion tokens of (Q_hat_t - stopgrad(target_t))^2,

with the next-state term 0 at a completion's last token. Official code
(``Math/verl/workers/actor/dp_actor.py``, ``DataParallelROVERActor.update_policy``):
``next_q = rover_t * cat([(current_q[:, 1:] - old_logits[:, 1:]) * response_mask[:, 1:], 0])``,
``target = low_var_reward + next_q``, ``q_values = rover_t * (log_prob - old_log_prob)``
and ``core_algos.compute_rover_loss`` = ``masked_mean((q_values - target.detach())**2)``;
``current_q`` / ``old_logits`` are ``verl.utils.torch_functional.sum_log_softmax`` of the
temperature-scaled logits, ``mean(x) - logsumexp(x)`` = the vocabulary mean of log pi
(:func:`vocab_mean_logp`). ``rover_t`` (rho) defaults to 1.0 in their actor config.

The centred reward ``r_tilde`` is an advantage method here, ``advantage="rover"``
(:func:`rover_reward`): ``Math/verl/trainer/ppo/core_algos.py``,
``compute_rover_outcome_advantage``, a batch-dependent scaling. (Their Countdown code
centres by the group mean instead, ``compute_rover_reward``: rlnb's ``grpo`` with
``scale_rewards="none"``; the Math launch script passes ``adv_estimator=grpo``.)

On-policy (one update per batch) ``pi_theta = pi_old`` in value, so Q_hat = 0, the next-state
term is 0 and the gradient is ``-2 rho r_tilde grad log pi``: REINFORCE with ``r_tilde``. The
vocabulary term matters only for later updates of a batch (``num_iterations > 1``; verl's
mini-batches).

The Trainer passes ``logp_vocab_mean`` and ``old_logp_vocab_mean`` ``(N, T)`` to a loss that
declares them (:func:`rlnb.rl.token_inputs.token_inputs`), from the policy's full next-token logits (a
tabular/MLP policy's ``state_logits``, a language model's ``completion_logits``): one extra
forward pass without gradients per update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlnb.rl.aggregation import agg_loss, masked_mean
from rlnb.rl.losses import _base_metrics, _prepare
from rlnb.rl.registry import register_advantage, register_policy_loss

__all__ = ["rover", "rover_reward", "vocab_mean_logp"]

Metrics = dict[str, float]



def vocab_mean_logp(logits: Tensor) -> Tensor:
    """Mean over the last (vocabulary) axis of ``log_softmax(logits)``, in float32:
    ``mean(logits) - logsumexp(logits)`` (ROVER's ``sum_log_softmax``). ``(..., V) -> (...)``.

    >>> vocab_mean_logp(torch.zeros(1, 4))   # uniform over 4: log(1/4)
    tensor([-1.3863])
    """
    x = logits.float()
    return x.mean(-1) - torch.logsumexp(x, dim=-1)


@register_advantage("rover")
def rover_reward(
    rewards: Tensor, group_size: int, *, correct_scale: float = 5.0, wrong_scale: float = 2.0
) -> Tensor:
    """ROVER's centred reward ``r_tilde`` ``(N,)`` (official ``compute_rover_outcome_advantage``,
    ``Math/verl/trainer/ppo/core_algos.py``): with ``p`` the fraction of the *whole batch's*
    completions whose reward is > 0, a correct completion gets ``correct_scale * (1 - p)`` and
    any other ``-wrong_scale * p``. The groups (``group_size``) play no part. Its batch mean
    is ``(correct_scale - wrong_scale) p (1 - p)``, 0 only for ``p`` in {0, 1}.

    >>> rover_reward(torch.tensor([1., 0., 0., 0.]), group_size=2)
    tensor([ 3.7500, -0.5000, -0.5000, -0.5000])
    """
    if not (correct_scale >= 0 and wrong_scale >= 0):
        raise ValueError(f"correct_scale and wrong_scale must be >= 0 (ROVER uses 5 and 2), "
                         f"got {correct_scale!r} and {wrong_scale!r}")
    correct = rewards > 0  # (N,)
    p = correct.to(rewards.dtype).mean()
    return torch.where(correct, correct_scale * (1 - p), -wrong_scale * p)


@register_policy_loss("rover")
def rover(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    logp_vocab_mean: Tensor | None = None,
    old_logp_vocab_mean: Tensor | None = None,
    agg: str = "token-mean",
    max_len: int | None = None,
    rho: float = 1.0,
    weights: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """ROVER's squared loss (see the module docstring): per token
    ``(rho (logp - old_logp) - stopgrad(A + rho * d_{t+1} * mask_{t+1}))^2``, with
    ``d = logp_vocab_mean - old_logp_vocab_mean`` and ``d_{T} = 0``, aggregated by ``agg``
    (the official code: ``token-mean``).

    - ``advantages``: ``r_tilde`` ``(N,)`` or ``(N, T)`` (``advantage="rover"`` gives the
      official scaling, :func:`rover_reward`).
    - ``logp_vocab_mean`` / ``old_logp_vocab_mean`` ``(N, T)``: the vocabulary mean of log pi
      of the current / sampling policy at the state of each token (:func:`vocab_mean_logp`
      of its logits at the sampling temperature); both are detached (the target is).
      Pass the same tensor twice for the first update of a batch.
    - ``rho``: ROVER's temperature (``rover_t``, 1.0 in the official config).
    - ``weights`` ``(N, T)``: replace ``agg``'s normaliser (micro-batches).

    Metrics: the base ones, ``rover/q_mean`` (masked mean of Q_hat), ``rover/next_q_mean``
    and ``rover/target_mean``.

    >>> logp = torch.zeros(1, 2, requires_grad=True)
    >>> vm = torch.zeros(1, 2)
    >>> loss, _ = rover(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2),
    ...                 logp_vocab_mean=vm, old_logp_vocab_mean=vm)
    >>> loss.backward(); logp.grad                    # -2 rho A / (number of tokens)
    tensor([[-1., -1.]])
    """
    if logp_vocab_mean is None or old_logp_vocab_mean is None:
        raise ValueError(
            "rover needs logp_vocab_mean and old_logp_vocab_mean, (N, T) each: the vocabulary "
            "mean of log pi of the current and the sampling policy at each token's state "
            "(rlnb.rl.vocab_mean_logp of the logits). The Trainer passes them; called by hand, "
            "give the same tensor twice for a batch's first (on-policy) update")
    if not rho > 0:
        raise ValueError(f"rho (ROVER's rover_t) must be > 0, got {rho!r}; the official default is 1.0")
    adv, maskf, log_ratio = _prepare(logp, old_logp, advantages, mask, agg)
    if logp_vocab_mean.shape != logp.shape or old_logp_vocab_mean.shape != logp.shape:
        raise ValueError(
            f"logp_vocab_mean {tuple(logp_vocab_mean.shape)} and old_logp_vocab_mean "
            f"{tuple(old_logp_vocab_mean.shape)} must have logp's shape {tuple(logp.shape)}")
    q = rho * log_ratio  # (N, T) Q_hat, with gradient through logp
    with torch.no_grad():
        d = (logp_vocab_mean.detach() - old_logp_vocab_mean.detach()).to(logp.dtype)  # (N, T)
        d = torch.where(maskf > 0, d, torch.zeros_like(d))  # padding may hold anything
        next_q = rho * torch.cat([d[:, 1:], torch.zeros_like(d[:, :1])], dim=1)  # (N, T)
        target = adv + next_q  # (N, T)
    loss = agg_loss((q - target) ** 2, maskf, agg, max_len=max_len, weights=weights)
    metrics = _base_metrics(loss, log_ratio, maskf)
    with torch.no_grad():
        metrics["rover/q_mean"] = masked_mean(q, maskf).item()
        metrics["rover/next_q_mean"] = masked_mean(next_q, maskf).item()
        metrics["rover/target_mean"] = masked_mean(target, maskf).item()
    return loss, metrics
