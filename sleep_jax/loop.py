"""The step loop `lm` and `wake` share: batches by step, metrics, non-finite checks, checkpoints with the
data-iterator state, and resume from the newest checkpoint in the workdir."""
from __future__ import annotations

import logging
import math
import time

import jax
import numpy as np

from sleep_jax import faults, sharding
from sleep_jax.checkpoint import Checkpointer, abstract_like
from sleep_jax.data.lm import LMBatches
from sleep_jax.guard import NonFiniteGuard
from sleep_jax.metrics import MetricLogger, progress
from sleep_jax.results import run_info


def run_steps(config, workdir: str, name: str, b, state, shard, step_fn, meta: dict, guard: NonFiniteGuard,
              on_metrics=None) -> tuple[dict, dict]:
  """The loop `lm` and `wake` share: grain/synthetic batches, metrics, checkpoints with the data-iterator
  state, resume from the newest checkpoint in `workdir`. Returns (final state, results dict)."""
  batch_sh = sharding.batch_sharding(b.mesh, b.rules)
  n_shards = batch_sh.mesh.size // math.prod(  # devices the batch dim is split over
      batch_sh.mesh.shape[a] for a in batch_sh.mesh.axis_names if a not in jax.tree.leaves(tuple(batch_sh.spec)))
  if config.data.batch_size % n_shards:
    raise ValueError(f'data.batch_size={config.data.batch_size} must be a multiple of the {n_shards} devices the '
                     f'batch is split over (mesh {dict(b.mesh.shape)}); change data.batch_size or mesh.shape')
  ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, save_every=config.checkpoint.every)
  batches = LMBatches(config, b.tokenizer, b.cfg.vocab_size)
  start = 0
  if ckpt.latest_step() is not None:
    state, _, extra = ckpt.restore(abstract_like(state, shard))
    batches.restore((extra or {}).get('data'))
    guard.skipped.update((extra or {}).get('nonfinite_skips', {}))
    start = int(state['step'])
    logging.info('resumed from step %d in %s', start, workdir)
    print(f'resuming from step {start} in {workdir}')
  log = MetricLogger(workdir)
  history = []
  t0 = time.perf_counter()
  steps = config.train.steps
  bar = progress(range(start, steps), desc=name)
  pending = []   # (step, loss, grad_norm) on device since the last check: no host sync per step

  def check():   # every step's loss and gradient norm, before anything is logged or checkpointed
    for s, loss, gn in jax.device_get(pending):
      guard.check(name, s, {'loss': loss, 'grad_norm': gn})
    pending.clear()

  for step in bar:
    host = batches(step)
    # Every process holds the same global batch (batches are a pure function of seed and step, or one grain
    # iterator read in the same order by every process); device_put places each process's own devices' rows, as
    # it does for the cycle's and the phases' batches.
    batch = jax.device_put(host, batch_sh)
    state, m = step_fn(state, batch)
    faults.point('train_step')
    pending.append((step + 1, m['loss'], m['grad_norm']))
    if on_metrics is not None:
      on_metrics(step + 1, m)
    if (step + 1) % config.log_every == 0 or step + 1 == steps:
      check()
      m = {k: float(v) for k, v in jax.device_get(m).items() if np.ndim(v) == 0}
      log.write_scalars(step + 1, m)
      history.append({'step': step + 1, **m})
      bar.set_metrics({'loss': m['loss']})
    if (step + 1) % config.checkpoint.every == 0 or step + 1 == steps:
      check()
      ckpt.save(step + 1, state, meta, force=True,
                extra={'data': batches.state(), 'nonfinite_skips': dict(guard.skipped)})
  ckpt.wait()
  ckpt.close()
  log.close()
  res = {'job': name, 'steps': steps, 'start_step': start, 'history': history,
         'nonfinite_skips': dict(guard.skipped),
         'seconds': time.perf_counter() - t0, **run_info(config)}
  if history:
    print(f"step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")
  return state, res
