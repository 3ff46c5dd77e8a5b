"""``LMPolicy``: any Hugging Face causal LM as an rlnb policy.

The trainer talks to a policy through two calls (see :mod:`rlnb.policies.base`)::

    rollout = policy.rollout(env, prompts, n, temperature=1.0, generator=g)   # no grad
    logp, entropy = policy.log_probs(rollout, temperature=1.0)                # with grad

``rollout`` left-pads the prompts, samples ``n`` completions per prompt with a KV cache and
an explicit ``torch.Generator`` (same generator state, same completions), and stops each
row at its EOS. ``log_probs`` re-scores the sampled tokens in one forward pass over
prompt + completion.

Layout of a rollout of ``P`` prompts, ``n`` completions each (``N = P * n`` rows, groups
contiguous: rows ``g*n .. g*n+n-1`` answer prompt ``g``)::

    extra["input_ids"]   (N, Lp + T)   <pad><pad><s>1 2 + 3 4 = | 4 6 </s><pad><pad>
    extra["attention_mask"]            0    0    1 ...        1 | 1 1 1    0    0
    mask                 (N, T)                               | T T T    F    F
    actions              (N, T)                               | 4 6 </s> <pad><pad>

Footguns this module takes care of, and that any re-implementation must too:

* the mask excludes the prompt and the padding, and *includes* the EOS token (the model
  must learn to stop);
* prompts are left-padded, so position ids are ``cumsum(attention_mask) - 1``, not
  ``arange``: with ``arange`` a padded prompt sees shifted positions and its log-probs
  silently differ from those of the same prompt unpadded;
* the logits that score completion token ``t`` sit at position ``Lp - 1 + t`` (one to the
  left): an off-by-one here trains on garbage without raising anything;
* dropout is disabled (the wrapped model stays in eval mode even under ``policy.train()``):

One reference path, one optional fast path (``engine=``): the model's own forward with
Hugging Face's KV cache is the readable truth and the test oracle (``engine="hf"``); for
Llama-family (llama, qwen2, mistral) and GPT-2 models, ``engine="auto"`` runs the fast
engine (:mod:`rlnb.policies.lm.fast`): a functional re-implementation of the forward pass
on the model's own parameters (fused projections, a pre-allocated KV cache, the prompt
computed once per group), with only the needed work done:

* sampling drops rows that have emitted EOS from the batch and stops when every row has;
* ``log_probs`` computes only what the masked tokens depend on: each group's prompt once,
  the completion tokens up to each row's last masked one, packed, and the LM head on the
  scored positions alone. ``completion_logits`` keeps the plain whole-sequence version;
* an update that follows its rollout with unchanged weights (the trainer's first update
  of every batch) runs no forward pass at all: ``rollout(..., keep_activations=True)``
  keeps what the sampler computed and ``log_probs`` differentiates through it with a
  hand-written backward pass (:mod:`rlnb.policies.lm.fast.replay`; float32 Llama-family
  models on the CPU).

The files follow the path of a batch through the policy, the reference path first, so that
each reads in one sitting and the fast engine is one sub-package behind one object:

* :mod:`~rlnb.policies.lm.load`: a model directory or hub name to a model and tokenizer
  (device, dtype, the directory checks, special tokens);
* :mod:`~rlnb.policies.lm.text`: prompts to token ids and their checks, completions to text;
* :mod:`~rlnb.policies.lm.layout`: left padding and position ids, read by every engine;
* :mod:`~rlnb.policies.lm.sampling`: the sampler, with the reference steppers;
* :mod:`~rlnb.policies.lm.scoring`: log-probs and entropies on the reference path;
* :mod:`~rlnb.policies.lm.hidden`: named hidden states;
* :mod:`~rlnb.policies.lm.policy`: :class:`LMPolicy`, which routes each call to the
  reference path or to :class:`~rlnb.policies.lm.fast.FastEngine`;
* :mod:`~rlnb.policies.lm.fast`: the fast engine (forward, decoder, packed scoring, the
  replayed backward, the C kernels).
"""

from rlnb.policies.lm.fast import fast_engine_support
from rlnb.policies.lm.layout import positions
from rlnb.policies.lm.policy import ENGINES, LMPolicy
from rlnb.serialization import register_serializable

# Run directories written before LMPolicy moved into this package name it by its old key.
register_serializable(LMPolicy, name="rlnb.policies.lm:LMPolicy")

__all__ = ["ENGINES", "LMPolicy", "fast_engine_support", "positions"]
