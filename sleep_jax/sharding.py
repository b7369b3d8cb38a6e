"""Device mesh from config, logical-axis rules, and parameters built already sharded.

Parameters carry logical axis names (`nn.with_logical_partitioning`); `config.logical_axis_rules` maps
them to mesh axes. `init_sharded` traces init with `jax.eval_shape`, derives the shardings, and runs
init under `jit(out_shardings=...)` so no host ever holds the full unsharded tree.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Logical axes -> mesh axes. Batch goes over data and fsdp; weights are FSDP-sharded along the model
# dim and tensor-parallel along heads / mlp / vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('norm', None),
    ('length', None),
    ('expert', None),
    ('rank', None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with named axes; one size may be -1 (= the devices left over)."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(shape.keys())
  sizes = [int(s) for s in shape.values()]
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh.shape: at most one axis may be -1, got {dict(shape)}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh.shape: sizes must be positive or -1, got {dict(shape)}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'mesh.shape {dict(shape)}: {len(devices)} devices are not divisible by {known}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'mesh.shape {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, '
                     f'{len(devices)} are available; set one axis to -1 to use the rest')
  return jax.make_mesh(tuple(sizes), names, axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                       devices=devices)


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def _fit_spec(spec: P, shape, mesh: Mesh) -> P:
  """Drop mesh axes from dims they do not divide (e.g. 3 kv heads on a tensor axis of 2)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    axes_t = axes if isinstance(axes, tuple) else (axes,)
    kept = tuple(a for a in axes_t if a in mesh.shape and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in kept)
    out.append(None if not kept or dim % size else (kept if len(kept) > 1 else kept[0]))
  while out and out[-1] is None:   # canonical form, as jit writes its outputs' specs: P(None, None) -> P()
    out.pop()                      # (equal placements with different specs compiled a jitted function twice)
  return P(*out)


def logical_shardings(abstract_boxed, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values."""
  specs = nn.get_partition_spec(abstract_boxed)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  unboxed = nn.meta.unbox(abstract_boxed)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
                      mesh_specs, unboxed, is_leaf=lambda s: isinstance(s, P))


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules, *args):
  """Run `init_fn(*args)` (returning a boxed tree) with outputs already sharded; returns (tree, shardings)."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  tree = jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return tree, shardings


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
  """Shard the leading (batch) dim per the 'batch' rule; replicate the rest."""
  spec = nn.logical_to_mesh(P('batch', *([None] * (ndim - 1))), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(x):
  """A (possibly multi-process, batch-sharded) jax array, or a tree of them, as full numpy arrays on every host.

  `np.asarray` fails on an array whose shards live on other processes' devices; this gathers them with
  `multihost_utils.process_allgather` (a collective: every process must call it) and is `np.asarray` otherwise.
  """
  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(one, x)


def put_tree(tree, shardings):
  """Place a host (numpy) tree onto devices with the given shardings."""
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)
