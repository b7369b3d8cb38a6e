"""Tiny models built through the real config path, shared by tests."""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from configs import base
from sleep_jax import build as build_lib
from sleep_jax import sharding
from sleep_jax.models.llama import Transformer


def tiny_config(**model_overrides):
  c = base.base_config()
  c.model = base.tiny_model()
  c.model.update(model_overrides)
  return c


def tiny_model(**overrides):
  cfg = build_lib.model_config_from(tiny_config(**overrides).model)
  return cfg, Transformer(cfg)


def random_params(model, seed=0, scale=1.0):
  """Non-trivial random parameters (norm scales too), so tests cannot pass by symmetry."""
  p = model.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))['params']
  p = nn.meta.unbox(p)
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  out = [x + scale * 0.05 * jax.random.normal(k, x.shape) if x.ndim == 1 else x * scale
         for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(tree, out)


def mesh(data=1, fsdp=1, tensor=1):
  n = data * fsdp * tensor
  return sharding.make_mesh({'data': data, 'fsdp': fsdp, 'tensor': tensor}, jax.devices()[:n])


def run_interrupted(job, config, workdir, stop_at: int):
  """Run `job` to step `stop_at`, then rerun the same workdir to `config.train.steps` (a resume)."""
  steps = config.train.steps
  with config.unlocked():
    config.train.steps = stop_at
  job(config, str(workdir))
  with config.unlocked():
    config.train.steps = steps
  return job(config, str(workdir))


@contextlib.contextmanager
def compilation_cache(path):
  """Inside: every XLA executable this process compiles is written to a persistent compilation cache at `path`
  (no minimum compile time or size), and a program lowered again to the same HLO, e.g. by a fresh jit of a new
  Runtime's seeder, loads that executable instead of compiling it again. The same executable computes the same
  numbers (the subprocess tests share one cache across processes the same way); only XLA's compile time is saved,
  tracing and lowering still run. The process's settings are restored after."""
  from jax._src import compilation_cache as cc
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')
  old = {k: getattr(jax.config, k) for k in keys}
  for k, v in zip(keys, (str(path), 0.0, 0)):
    jax.config.update(k, v)
  cc.reset_cache()   # the cache is set up once per process: again with this path
  try:
    yield
  finally:
    for k, v in old.items():
      jax.config.update(k, v)
    cc.reset_cache()
