"""The `lm` and `wake` jobs: the LM trained with the sharded pure step, and the CMS waking on a stream."""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from sleep_jax import sharding, train
from sleep_jax.loop import run_steps
from sleep_jax.phases import wake as wake_lib
from sleep_jax.results import write_json
from sleep_jax.runtime import Runtime


def lm(config, workdir: str) -> dict:
  """Train the LM with the sharded pure step; resumes from the newest checkpoint in `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  rt = Runtime(config)
  b = rt.b
  tx = train.make_optimizer(config.optim, b.params)
  state = train.init_state(b.params, tx, b.cms)
  shard = train.state_shardings(state, b.shardings, b.mesh)
  state = jax.device_put(state, shard)
  step_fn = train.make_train_step(b.model, tx, shard, sharding.batch_sharding(b.mesh, b.rules),
                                  labels=train.optimizer_labels(config.optim, b.params),
                                  skip_nonfinite=rt.guard.skip)
  meta = {'config': config.to_json(), 'model': dataclasses.asdict(b.cfg), 'lineage': []}
  _, res = run_steps(config, workdir, 'lm', b, state, shard, step_fn, meta, rt.guard)
  write_json(os.path.join(workdir, 'results.json'), res)
  return res




def wake(config, workdir: str) -> dict:
  """Wake on a stream (PAPER Eq. 2): each CMS level applies its accumulated update at its chunk boundary.
  Records the boundaries (the sleep triggers) and checks the stream compiled once."""
  os.makedirs(workdir, exist_ok=True)
  rt = Runtime(config)
  b, wcfg = rt.b, rt.wcfg
  state = wake_lib.init_wake_state(b.params, b.cms, wcfg)
  shard = wake_lib.wake_state_shardings(state, b.shardings, b.mesh)
  state = jax.device_put(state, shard)
  step_fn = rt.wake_step(shard)
  meta = {'config': config.to_json(), 'model': dataclasses.asdict(b.cfg), 'wake': dataclasses.asdict(wcfg),
          'lineage': []}
  triggers = []
  on_metrics = lambda step, m: triggers.extend(
      {'step': step, 'level': int(l)} for l in np.flatnonzero(np.asarray(m['boundary'])))
  _, res = run_steps(config, workdir, 'wake', b, state, shard, step_fn, meta, rt.guard, on_metrics)
  res.update(wake=dataclasses.asdict(wcfg), triggers=triggers, compilations=step_fn.n_traces)
  print(f'{len(triggers)} level updates (sleep triggers); wake step compiled {step_fn.n_traces} time(s)')
  write_json(os.path.join(workdir, 'results.json'), res)
  return res
