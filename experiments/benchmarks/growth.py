"""Growth benchmark: train-step time against model size across a chain of function-preserving growth steps.

  python -m experiments.benchmarks.growth                 # CPU, ~2 minutes
  python -m experiments.benchmarks.growth --reps=5 --out=runs/bench_growth.json

Starts from a small random Llama, applies each growth op of `sleep_jax.growth` in turn (wider MLP, more
heads, wider model, more layers, a bigger expert pool), and after each one reports: parameters, the
largest logit change caused by the growth (must be ~0: growth preserves the function), and the median
AdamW train-step time and tokens/s at a fixed batch, plus compile time (each new shape compiles once).
"""
from __future__ import annotations

import json
import os
import statistics
import time

from absl import app, flags

_REPS = flags.DEFINE_integer('reps', 3, 'Timed train steps per model (median reported).')
_OUT = flags.DEFINE_string('out', 'runs/bench_growth.json', 'Where the JSON results go.')
_B = flags.DEFINE_integer('batch', 8, 'Batch size.')
_L = flags.DEFINE_integer('seq_len', 128, 'Sequence length.')

CHAIN = (
    ('widen_mlp', {'d_ff': 1024}),
    ('add_heads', {'n_heads': 8, 'n_kv_heads': 4}),
    ('widen_model', {'d_model': 384}),
    ('widen_model', {'d_model': 512}),
    ('add_layers', {'n': 2}),
)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import ml_collections as mlc
  import numpy as np
  from sleep_jax import growth, sharding, train
  from sleep_jax.build import abstract_params
  from sleep_jax.models.llama import ModelConfig, Transformer

  cfg = ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=512,
                    max_seq_len=512)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  model = Transformer(cfg)
  params, _ = sharding.init_sharded(lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32))['params'], mesh,
                                    sharding.DEFAULT_RULES, jax.random.key(0))
  B, L = _B.value, _L.value
  rng = np.random.default_rng(0)
  seq = rng.integers(0, cfg.vocab_size, (B, L + 1)).astype(np.int32)
  batch = {'inputs': seq[:, :-1], 'targets': seq[:, 1:], 'weights': np.ones((B, L), np.float32)}
  probe = jnp.asarray(seq[:2, :32])
  ocfg = mlc.ConfigDict(dict(name='adamw', lr=1e-4))
  rows = []

  def measure(name, cfg, params, drift):
    model = Transformer(cfg)
    sh = sharding.logical_shardings(abstract_params(model), mesh, sharding.DEFAULT_RULES)
    params = sharding.put_tree(jax.device_get(params), sh)
    tx = train.make_optimizer(ocfg, params)
    state = train.init_state(params, tx)
    st_sh = train.state_shardings(state, sh, mesh)
    state = jax.device_put(state, st_sh)
    bsh = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
    step = train.make_train_step(model, tx, st_sh, bsh)
    b = jax.device_put(batch, bsh)
    t0 = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(m['loss'])
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(_REPS.value):
      t0 = time.perf_counter()
      state, m = step(state, b)
      jax.block_until_ready(m['loss'])
      ts.append(time.perf_counter() - t0)
    t = statistics.median(ts)
    rows.append({'step': name, 'd_model': cfg.d_model, 'd_ff': cfg.d_ff, 'n_heads': cfg.n_heads,
                 'n_kv_heads': cfg.n_kv_heads, 'n_layers': cfg.n_layers, 'params_M': cfg.num_params() / 1e6,
                 'max_logit_change': drift, 'step_ms': 1000 * t, 'tokens_per_s': B * L / t,
                 'first_step_s_incl_compile': compile_s})
    print(f"{name:28s} D={cfg.d_model:4d} F={cfg.d_ff:5d} H={cfg.n_heads:2d}/{cfg.n_kv_heads} "
          f"layers={cfg.n_layers} {cfg.num_params() / 1e6:6.2f}M  drift={drift:.1e}  {1000 * t:8.1f} ms/step")

  logits = lambda cfg, p: Transformer(cfg).apply({'params': p}, probe)[0]
  measure('start', cfg, params, 0.0)
  for op, args in CHAIN:
    before = logits(cfg, params)
    cfg, params = getattr(growth, op)(cfg, params, jax.random.key(len(rows)), **args)
    drift = float(jnp.max(jnp.abs(logits(cfg, params) - before)))
    measure(f'{op}({", ".join(f"{k}={v}" for k, v in args.items())})', cfg, params, drift)

  print('\n| after | d_model | d_ff | heads (q/kv) | layers | params (M) | max logit change | ms / step | tokens/s |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['step']} | {r['d_model']} | {r['d_ff']} | {r['n_heads']}/{r['n_kv_heads']} | {r['n_layers']} | "
          f"{r['params_M']:.2f} | {r['max_logit_change']:.1e} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} |")
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump({'batch': B, 'seq_len': L, 'backend': jax.default_backend(), 'reps': _REPS.value, 'rows': rows}, f,
              indent=2)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
