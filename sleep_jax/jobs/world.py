"""The `world` job: pretrain the controlled world's model from scratch, check its gates, export it.

The model is trained with the project's sharded pure LM step and step loop (checkpoints, resume, non-finite
guard) on the world's packed pretraining mix, then exported in the Hugging Face layout (`io.hf.save_hf`) with its
tokenizer and a gates.json, so every sleep, experiment and `make run` loads it as `model.source='hf'`. The export
folder is keyed by a hash of every config field that shapes the model: the same config finds its model there and
trains nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax

from sleep_jax import build as build_lib
from sleep_jax import sharding, train
from sleep_jax.data import world as world_lib
from sleep_jax.io.hf import save_hf
from sleep_jax.loop import run_steps
from sleep_jax.results import write_json
from sleep_jax.runtime import Runtime

CACHE = Path(os.environ.get('SLEEP_JAX_CACHE', Path.home() / '.cache' / 'sleep_jax')) / 'worlds'


def config_hash(config) -> str:
  """A hash of what shapes the trained model: world, model, data, optimizer, steps and seed (not the export path)."""
  w = config.world.to_dict()
  w.pop('export', None)
  w.pop('gates', None)
  key = {'world': w, 'model': config.model.to_dict(), 'data': config.data.to_dict(), 'optim': config.optim.to_dict(),
         'steps': config.train.steps, 'seed': config.seed}
  return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_dir(config) -> Path:
  return Path(config.world.export) if config.world.export else CACHE / config_hash(config)


def check_gates(config, folder: Path, metrics: dict) -> None:
  """Print the gate table; raise naming every missed gate when config.world.gates is on."""
  print(f'world model {folder}\n' + world_lib.gate_table(metrics))
  failed = world_lib.gate_failures(metrics)
  if failed and config.world.gates:
    raise RuntimeError('the world model misses its gates, so no sleep result on it would mean anything:\n  '
                       + '\n  '.join(failed) + '\ntrain longer (train.steps, optim.decay_steps) or change world.mix')


def world(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  folder = export_dir(config)
  spec = world_lib.spec_from(config.world)
  W = world_lib.World(spec)
  if (folder / 'gates.json').is_file():
    metrics = json.loads((folder / 'gates.json').read_text())['metrics']
    print(f'world model found (config hash {config_hash(config)}); not retraining')
    check_gates(config, folder, metrics)
    return {'job': 'world', 'export': str(folder), 'gates': metrics, 'cached': True}
  tok = world_lib.make_tokenizer()
  b = build_lib.build(config, tokenizer=tok)
  rt = Runtime(config, b)
  tx = train.make_optimizer(config.optim, b.params)
  state = train.init_state(b.params, tx, b.cms)
  shard = train.state_shardings(state, b.shardings, b.mesh)
  state = jax.device_put(state, shard)
  step_fn = train.make_train_step(b.model, tx, shard, sharding.batch_sharding(b.mesh, b.rules),
                                  skip_nonfinite=rt.guard.skip)
  meta = {'config': config.to_json(), 'model': dataclasses.asdict(b.cfg), 'lineage': []}
  state, res = run_steps(config, workdir, 'world', b, state, shard, step_fn, meta, rt.guard)
  em = world_lib.ExactMatch(b.model, tok)
  metrics = world_lib.gate_metrics(em, state['params'], b.cms, W, seed=config.seed)
  save_hf(folder, b.cfg, jax.device_get(state['params']), tok, overwrite=True)
  gates = {'metrics': metrics, 'gates': {k: list(v) for k, v in world_lib.GATES.items()},
           'failed': world_lib.gate_failures(metrics), 'config_hash': config_hash(config),
           'steps': config.train.steps, 'train_seconds': res['seconds'],
           'command': 'python -m experiments.main --config=configs/world.py --workdir=runs/world'}
  (folder / 'gates.json').write_text(json.dumps(gates, indent=2))
  res.update(export=str(folder), gates=metrics, cached=False)
  write_json(os.path.join(workdir, 'results.json'), res)
  check_gates(config, folder, metrics)
  return res
