"""The fast engine: a fused re-implementation of the forward pass, for speed on the CPU.

``LMPolicy(engine="auto")`` runs Llama-family (llama, qwen2, mistral) and GPT-2 models on
it; the reference it is tested against, and what every other model uses, is the model's
own forward (``engine="hf"``, :mod:`rlnb.policies.lm.sampling` and
:mod:`rlnb.policies.lm.scoring`). The policy talks to it through one object,
:class:`FastEngine`; switch it off with ``engine="hf"``, and its C kernels with
``RLNB_NATIVE=0``.

Files, each a layer on the ones before it:

* :mod:`~rlnb.policies.lm.fast.attention`: attention masks and grouped-query attention;
* :mod:`~rlnb.policies.lm.fast.rmsnorm`: RMSNorm's weightless form and its backward;
* :mod:`~rlnb.policies.lm.fast.native`: the fused C kernels (``native.c``), compiled on
  first use and checked against the PyTorch operations they replace;
* :mod:`~rlnb.policies.lm.fast.forward`: the functional forward and the KV-cached decoder;
* :mod:`~rlnb.policies.lm.fast.score`: packed scoring of a rollout's masked tokens;
* :mod:`~rlnb.policies.lm.fast.replay`: the sampler's activations and a hand-written
  backward, so that the update after a rollout runs no forward pass;
* :mod:`~rlnb.policies.lm.fast.engine`: :class:`FastEngine`, the interface.
"""

from rlnb.policies.lm.fast.engine import FastEngine
from rlnb.policies.lm.fast.forward import fast_engine_support
from rlnb.policies.lm.fast.native import kernels, status
from rlnb.threads import matmul_threads

__all__ = ["FastEngine", "fast_engine_support", "kernels", "matmul_threads", "status"]
