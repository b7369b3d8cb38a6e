"""Per-device memory plan of a config on named accelerator slices, without any accelerator (eval_shape only).

  python -m experiments.memory_plan --config=configs/paper/squad_qwen25_7b.py
  python -m experiments.memory_plan --config=configs/paper/arc_llama32_1b.py --slices=v5e-8,8xH100 --json=plan.json

For each slice the config's mesh (`config.mesh.shape`, -1 = the devices left over) is laid on a
`jax.sharding.AbstractMesh` of the slice's size, and every number is bytes on one device:

  params       `jax.eval_shape` of the real model init (`build.abstract_params`), each leaf's shard shape under the
               config's `logical_axis_rules` (`sharding.logical_shardings`): leaf bytes / product of the mesh axes
               its spec uses.
  trainable    what the sleep trains, with its gradient: 'expert' = Knowledge Seeding's float32 `delta` (one new
               expert's A [D,R] and B [R,D] in every receiver layer, phases/consolidate.state_tree) + its gradient;
               'all' = fine-tuning every weight (the gradient, in param_dtype; the weights are `params`).
  optimizer    `tx.init` of the real optimizer (consolidate.make_optimizer for 'expert', train.make_optimizer with
               finetune.trainable for 'all') evaluated on the shard shapes: AdamW's mu and nu, sharded like the
               leaves they track.
  activations  analytic (compiled memory analysis needs devices). Rows per device b = rows / (data*fsdp) (all rows
               when that does not divide, as sharding._fit_spec replicates), sequence L, activation bytes a
               (model.dtype), tensor-parallel size t, per token and layer
                 A = a * (4D + (2H + 2K)E/t + 3F/t) + 2 * 4 * H * L / t
               (block input and normed copies, q/k/v/attention out, gate/up/product, float32 scores and
               probabilities). remat=False keeps every layer: n_layers * b * L * A; remat=True keeps the block
               inputs and recomputes one block: n_layers * b * L * D * a + b * L * A. Plus float32 logits and their
               gradient over the completion tail: 2 * 4 * b * n_tail * V / t. Knowledge Seeding's update: rows =
               prompts_per_step * group_size student rows, L = longest prompt bucket + ks.max_new_tokens,
               n_tail = ks.max_new_tokens.
  kv_cache     the sampler's cache: 2 (k, v) * n_layers * b * (K/t) * E * T * a, b from the sampling batch
               (prompts_per_step * group_size student completions), T = longest prompt bucket + ks.max_new_tokens.

fits = total <= 90% of the device's memory (the rest for XLA temporaries, the runtime and fragmentation, which this
plan does not model). Slices: `SLICES` below; TPU v4 is modelled per chip (megacore: one JAX device = 2
TensorCores, 32 GiB), so v4-32 = 16 devices.
"""
from __future__ import annotations

import dataclasses
import math

from absl import app, flags

GiB = 2 ** 30
HEADROOM = 0.9


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  n_devices: int
  bytes_per_device: int
  what: str


SLICES = {s.name: s for s in (
    Slice('v5e-8', 8, 16 * GiB, 'TPU v5e-8: 8 chips x 16 GiB HBM'),
    Slice('v4-32', 16, 32 * GiB, 'TPU v4-32: 16 chips (32 TensorCores, megacore) x 32 GiB HBM'),
    Slice('8xH100', 8, 80 * 10 ** 9, '8 x NVIDIA H100 80GB'),
    Slice('1x16GiB', 1, 16 * GiB, 'one 16 GiB device, unsharded'),
)}
COLUMNS = ('params', 'trainable', 'optimizer', 'activations', 'kv_cache')


def define_flags():
  """Flags, defined only when run as a program (tests import this module)."""
  from ml_collections import config_flags
  global _CONFIG, _SLICES, _TRAINABLE, _JSON
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/paper/squad_qwen25_7b.py', 'Config to plan.',
                                            lock_config=True)
  _SLICES = flags.DEFINE_list('slices', list(SLICES), f'Any of {list(SLICES)}.')
  _TRAINABLE = flags.DEFINE_enum('trainable', 'auto', ['auto', 'expert', 'all'],
                                 "What the optimizer trains; auto = 'expert' when the model has expert pools and "
                                 "sleep.ks.expand, else 'all'.")
  _JSON = flags.DEFINE_string('json', '', 'Also write the plan as JSON here.')


def resolve_mesh(shape, n_devices: int) -> dict:
  """`config.mesh.shape` with its -1 axis resolved for `n_devices` (errors as sharding.make_mesh's)."""
  names, sizes = list(shape.keys()), [int(s) for s in shape.values()]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f'mesh.shape {dict(shape)}: {n_devices} devices are not divisible by {known}')
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(f'mesh.shape {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, the slice has '
                     f'{n_devices}; set one axis to -1')
  return dict(zip(names, sizes))


def _shard_bytes(abstract, shardings) -> int:
  import jax
  import numpy as np
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize, abstract, shardings))
  return int(sum(leaves))


def _local(abstract, shardings):
  """ShapeDtypeStructs of one device's shard of each leaf."""
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(s.shard_shape(x.shape), x.dtype), abstract, shardings)


def _tree_bytes(tree) -> int:
  import jax
  import numpy as np
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def trainable_mode(config, trainable: str = 'auto') -> str:
  if trainable != 'auto':
    return trainable
  ks_expand = config.get('sleep') is None or config.sleep.ks.get('expand', True)
  return 'expert' if config.model.get('n_experts', 0) and ks_expand else 'all'


def _sizes(config):
  """(train rows, train length, logit tail, sampling rows, cache length) of the sleep's Knowledge Seeding update."""
  buckets = tuple(config.sampling.prompt_buckets) or (config.model.max_seq_len,)
  if config.get('sleep') is not None:
    k = config.sleep.ks
    rows, new = k.prompts_per_step * k.group_size, k.max_new_tokens
  else:
    rows, new = 1, config.sampling.max_new_tokens
  L = min(max(buckets) + new, config.model.max_seq_len)
  return rows, L, new, rows, L


def activation_bytes(cfg, mesh: dict, rows: int, L: int, n_tail: int) -> int:
  """The analytic estimate in the module docstring (bytes on one device)."""
  import numpy as np
  a = np.dtype(cfg.dtype).itemsize
  dp = mesh.get('data', 1) * mesh.get('fsdp', 1)
  t = mesh.get('tensor', 1)
  b = rows // dp if rows % dp == 0 else rows
  D, H, K, E, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  per_tok_layer = a * (4 * D + (2 * H + 2 * K) * E / t + 3 * F / t) + 2 * 4 * H * L / t
  if cfg.remat:
    keep = cfg.n_layers * b * L * D * a + b * L * per_tok_layer
  else:
    keep = cfg.n_layers * b * L * per_tok_layer
  return int(keep + 2 * 4 * b * n_tail * V / t)


def kv_cache_bytes(cfg, mesh: dict, rows: int, T: int) -> int:
  import numpy as np
  dp = mesh.get('data', 1) * mesh.get('fsdp', 1)
  t = mesh.get('tensor', 1)
  b = rows // dp if rows % dp == 0 else rows
  k = cfg.n_kv_heads // t if cfg.n_kv_heads % t == 0 else cfg.n_kv_heads
  return int(2 * cfg.n_layers * b * k * cfg.head_dim * T * np.dtype(cfg.dtype).itemsize)


def _expert_delta(config, cfg, abstract_unboxed, shardings):
  """Abstract KS `delta` (float32 A, B of one expert per receiver layer) and its shardings (the pool's, minus the
  expert axis)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from sleep_jax import runtime
  from sleep_jax.phases import consolidate
  layers = consolidate.layers_of_level(runtime.wake_config(config, cfg), config.sleep.receiver_level)
  delta, shard = {}, {}
  for i in layers:
    mlp, smlp = abstract_unboxed[f'layers_{i}']['mlp'], shardings[f'layers_{i}']['mlp']
    for n in ('expert_a', 'expert_b'):
      x, s = mlp[n], smlp[n]
      delta[f'layers_{i}/{n}'] = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
      spec = tuple(s.spec) + (None,) * (len(x.shape) - len(s.spec))
      shard[f'layers_{i}/{n}'] = NamedSharding(s.mesh, P(*spec[1:]))
  return delta, shard


def plan(config, slices=tuple(SLICES), trainable: str = 'auto') -> dict:
  """{'model': ..., 'mode': ..., 'rows': [per-slice dict of per-device bytes, total, capacity, fits]}."""
  import flax.linen as nn
  import jax
  from jax.sharding import AbstractMesh
  from sleep_jax import build, sharding, train
  from sleep_jax.phases import consolidate
  from sleep_jax import runtime

  cfg = build.model_config_from(config.model)
  model = build.Transformer(cfg)
  boxed = build.abstract_params(model)
  unboxed = nn.meta.unbox(boxed)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  mode = trainable_mode(config, trainable)
  if mode == 'expert' and not cfg.n_experts:
    raise ValueError('--trainable=expert needs model.n_experts > 0 (the config has no expert pools)')
  rows, L, n_tail, s_rows, T = _sizes(config)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(unboxed))
  out_rows = []
  for name in slices:
    if name not in SLICES:
      raise ValueError(f'slice {name!r} is not one of {list(SLICES)}')
    sl = SLICES[name]
    mesh_shape = resolve_mesh(config.mesh.shape, sl.n_devices)
    mesh = AbstractMesh(tuple(mesh_shape.values()), tuple(mesh_shape.keys()))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    p_bytes = _shard_bytes(unboxed, shardings)
    if mode == 'expert':
      delta, dsh = _expert_delta(config, cfg, unboxed, shardings)
      local = _local(delta, dsh)
      tx = consolidate.make_optimizer(runtime.ks_config(config))
      t_bytes = 2 * _tree_bytes(local)                  # delta + its gradient
    else:
      local = _local(unboxed, shardings)
      import ml_collections as mlc
      ocfg = mlc.ConfigDict(dict(config.optim))
      if config.get('finetune') is not None:
        ocfg.trainable = config.finetune.trainable
      tx = train.make_optimizer(ocfg, local)
      labels = train.optimizer_labels(ocfg, local)
      t_bytes = sum(_tree_bytes(x) for x, l in zip(jax.tree.leaves(local), jax.tree.leaves(labels)) if l == 'train')
    o_bytes = _tree_bytes(jax.eval_shape(tx.init, local))
    r = dict(slice=name, what=sl.what, mesh=mesh_shape, params=p_bytes, trainable=t_bytes, optimizer=o_bytes,
             activations=activation_bytes(cfg, mesh_shape, rows, L, n_tail), kv_cache=kv_cache_bytes(cfg, mesh_shape,
                                                                                                    s_rows, T))
    r['total'] = sum(r[c] for c in COLUMNS)
    r['capacity'] = sl.bytes_per_device
    r['fits'] = r['total'] <= HEADROOM * sl.bytes_per_device
    out_rows.append(r)
  return dict(model=dataclasses.asdict(cfg), n_params=int(n_params), mode=mode, remat=cfg.remat,
              train_rows=rows, train_len=L, sample_rows=s_rows, cache_len=T, rows=out_rows)


def table(p: dict) -> str:
  g = lambda b: f'{b / GiB:.2f}'
  m = p['model']
  lines = [f"model: {m['n_layers']} layers, d_model {m['d_model']}, {p['n_params'] / 1e9:.3f}B params, "
           f"param_dtype {m['param_dtype']}, dtype {m['dtype']}, remat={p['remat']}; trains: {p['mode']}; "
           f"KS update {p['train_rows']} rows x {p['train_len']} tokens, sampler {p['sample_rows']} rows x "
           f"{p['cache_len']} slots",
           '',
           '| slice | mesh | params GiB | trainable+grad GiB | optimizer GiB | activations GiB | KV cache GiB | '
           'total GiB | device GiB | fits (<=90%) |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---|']
  for r in p['rows']:
    mesh = ' '.join(f'{k}={v}' for k, v in r['mesh'].items())
    lines.append(f"| {r['slice']} | {mesh} | " + ' | '.join(g(r[c]) for c in COLUMNS) +
                 f" | {g(r['total'])} | {g(r['capacity'])} | {'yes' if r['fits'] else 'NO'} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  p = plan(_CONFIG.value, tuple(_SLICES.value), _TRAINABLE.value)
  print(table(p))
  if _JSON.value:
    from sleep_jax.results import write_json
    write_json(_JSON.value, p)
    print(f'wrote {_JSON.value}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
