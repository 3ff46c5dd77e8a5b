"""Micro-batches of a rollout: its rows cut into contiguous parts, and the loss metrics of
the parts put back together (the trainer's gradient accumulation, see
:mod:`rlnb.train.trainer`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlnb.policies.base import Rollout


def rollout_rows(rollout: Rollout, rows: slice) -> Rollout:
    """Rows ``rows`` of a rollout as a rollout of their own (a micro-batch).

    Sliced: ``prompts``, ``actions``, ``mask``, ``logp``, ``states`` and every per-row
    entry of ``extra`` (a tensor whose first dimension is N, a list or tuple of length N,
    a dict of such: ``input_ids``, ``attention_mask``, ``truncated``, ``completions``,
    ``features``, ``hidden_states``); other entries (``prompt_length``) are kept as they
    are. ``extra["activations"]`` (a sampler's activations of the whole batch) is left
    out. ``group_size`` is kept when the rows are whole groups, else 1.

    >>> import torch
    >>> r = Rollout(prompts=torch.tensor([0, 0, 1, 1]), actions=torch.zeros(4, 3),
    ...             mask=torch.ones(4, 3, dtype=torch.bool), logp=torch.zeros(4, 3),
    ...             group_size=2, extra={"completions": ["a", "b", "c", "d"], "prompt_length": 5})
    >>> part = rollout_rows(r, slice(2, 4))
    >>> part.prompts.tolist(), part.extra, part.group_size
    ([1, 1], {'completions': ['c', 'd'], 'prompt_length': 5}, 2)
    """
    n = len(rollout)
    start, stop, step = rows.indices(n)
    if step != 1:
        raise ValueError(f"a micro-batch is a contiguous range of rows, got the slice {rows}")

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[start:stop] if value.dim() > 0 and value.shape[0] == n else value
        if isinstance(value, (list, tuple)) and len(value) == n:
            return value[start:stop]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    G = rollout.group_size
    whole_groups = G >= 1 and start % G == 0 and (stop - start) % G == 0
    return Rollout(
        prompts=cut(rollout.prompts),
        actions=cut(rollout.actions),
        mask=cut(rollout.mask),
        logp=cut(rollout.logp),
        group_size=G if whole_groups else 1,
        states=None if rollout.states is None else cut(rollout.states),
        extra={k: cut(v) for k, v in rollout.extra.items() if k != "activations"},
    )


def combine_loss_metrics(parts: Sequence[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """One batch's loss metrics from its micro-batches' ``(token count, metrics)``:
    ``pg_loss`` (each part's weighted share of the loss) summed, every other metric (a
    mean over its part's tokens: ``clip_ratio/...``, ``ratio_mean``, ``approx_kl``)
    averaged weighted by token count, which gives the whole batch's token mean.

    >>> combine_loss_metrics([(3, {"pg_loss": 0.5, "ratio_mean": 1.0}),
    ...                       (1, {"pg_loss": 0.25, "ratio_mean": 2.0})])
    {'pg_loss': 0.75, 'ratio_mean': 1.25}
    """
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for _, m in parts for k in m):
        have = [(n, float(m[key])) for n, m in parts if key in m]
        tokens = sum(n for n, _ in have)
        if key == "pg_loss":
            out[key] = sum(v for _, v in have)
        elif tokens > 0:
            out[key] = sum(n * v for n, v in have) / tokens
        else:  # no valid token anywhere: every part's mean is its empty-mask value
            out[key] = sum(v for _, v in have) / len(have)
    return out
