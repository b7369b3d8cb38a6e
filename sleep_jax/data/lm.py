"""Language-model training batches by step: seeded synthetic copy-task rows, or a resumable grain pipeline."""
from __future__ import annotations

import numpy as np


class LMBatches:
  """Training batches by step. 'synthetic': a pure function of (seed, step), seeded copy-task rows; 'world': the
  controlled world's packed pretraining documents (data/world.py), also a pure function of (seed, step).
  'tfds': a grain pipeline (packed rows with segment ids) over a project dataset, whose iterator state
  goes into every checkpoint so a resumed run sees exactly the batches an uninterrupted one would."""

  def __init__(self, config, tokenizer, vocab_size: int):
    d = config.data
    self.source, self.seed, self.B, self.L = d.source, config.seed, d.batch_size, d.seq_len
    self.lo, self.vocab_size = getattr(tokenizer, 'sep_id', 3) + 1, vocab_size
    self._it = None
    if d.source == 'tfds':   # imported here: TensorFlow/TFDS take seconds to import and only this source needs them
      from sleep_jax.data import pipeline, tfds_builders
      self._pipeline = pipeline
      src = tfds_builders.load(d.dataset, d.split)        # 'test' refuses: training never reads it
      # Every process reads the whole dataset and builds the same global batch (shard 0 of 1), of which it
      # places only its own devices' rows (jax.device_put in loop.py): the batches, and so the losses, are those of one
      # process with all the devices, and the iterator state process 0 checkpoints is every process's.
      # (Reading a 1/num_processes shard per process scales the input better but changes the data order with
      # the process count and needs a per-process iterator state; not done here.)
      self._it = iter(pipeline.lm_dataset(src, tokenizer, text_key=d.text_key, seq_len=self.L,
                                          batch_size=self.B, seed=self.seed, shard_index=0, shard_count=1))
    elif d.source == 'world':   # the controlled world's pretraining mix, a pure function of (seed, step)
      from sleep_jax.data import world
      self._world, self._mix = world.World(world.spec_from(config.world)), world.mix_from(config.world)
    elif d.source != 'synthetic':
      raise ValueError(f"data.source={d.source!r} is not one of 'synthetic', 'tfds', 'world'")

  def __call__(self, step: int) -> dict:
    if self._it is not None:
      return next(self._it)
    if self.source == 'world':
      return self._world_batch(step)
    r = np.random.default_rng([self.seed, step])
    half = r.integers(self.lo, self.vocab_size, size=(self.B, self.L // 2 + 1))
    return lm_dict(np.concatenate([half, half], axis=1)[:, : self.L + 1])   # second half copies the first

  def _world_batch(self, step: int) -> dict:
    from sleep_jax.data import world
    return world.pretrain_batch(self._world, self._mix, self.seed, step, self.B, self.L)

  def state(self) -> dict:
    return {'grain': self._pipeline.get_state(self._it)} if self._it is not None else {}

  def restore(self, state: dict | None) -> None:
    if self._it is not None:
      if not state or 'grain' not in state:
        raise ValueError('checkpoint has no data-iterator state but data.source is tfds; '
                         'it was written by a run with another data.source')
      self._pipeline.set_state(self._it, state['grain'])


def lm_dict(seq):
  seq = np.asarray(seq, np.int32)
  return {'inputs': seq[:, :-1], 'targets': seq[:, 1:], 'weights': np.ones(seq[:, 1:].shape, np.float32)}
