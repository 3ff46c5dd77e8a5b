"""Other libraries as rlnb's trainer, with rlnb's probes and run directories around them.

- :mod:`rlnb.integrations.trl` -- TRL's ``GRPOTrainer`` on an rlnb text task: the task as
  TRL's dataset and reward function, a ``TrainConfig`` as a ``GRPOConfig``, and
  :class:`~rlnb.integrations.trl.RlnbCallback`, which writes an rlnb run directory (TRL's
  metrics under TRL's names, rlnb's probes every N steps) while TRL trains. Also a command
  line: ``python -m rlnb.integrations.trl --model DIR --task NAME ...`` (docs/INTEGRATIONS.md).

Nothing is imported here: ``import rlnb.integrations.trl`` loads TRL's side only when asked
(and ``python -m rlnb.integrations.trl`` runs the module once, as ``__main__``).
"""
