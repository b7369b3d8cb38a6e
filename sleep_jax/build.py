"""Config -> mesh, model, sharded parameters and tokenizer: the one place runs are assembled."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sleep_jax import sharding
from sleep_jax.models.llama import ModelConfig, Transformer

SOURCES = ('random', 'smollm2', 'gguf', 'hf')


@dataclasses.dataclass
class Built:
  cfg: ModelConfig
  model: nn.Module
  params: Any
  shardings: Any
  tokenizer: Any
  mesh: Mesh
  rules: tuple


def model_config_from(mc) -> ModelConfig:
  return ModelConfig.from_dict(mc)


def abstract_params(model: nn.Module):
  """Boxed abstract parameter tree (shapes + logical axes) without allocating anything."""
  return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32)), jax.random.key(0))['params']


def build(config, mesh: Mesh | None = None, seed: int | None = None) -> Built:
  """Build everything `config.model` asks for, parameters sharded by `config.logical_axis_rules`."""
  mesh = mesh or sharding.make_mesh(config.mesh.shape)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  mc = config.model
  if mc.source not in SOURCES:
    raise ValueError(f'model.source={mc.source!r} is not one of {SOURCES}')
  t0 = time.time()
  if mc.source == 'random':
    from sleep_jax.io.byte_tokenizer import ByteTokenizer
    cfg = model_config_from(mc)
    tok = ByteTokenizer()
    if cfg.vocab_size < tok.vocab_size:
      raise ValueError(f'model.vocab_size={cfg.vocab_size} is smaller than the byte tokenizer ({tok.vocab_size})')
    model = Transformer(cfg)
    init = lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32))['params']
    seed = config.get('seed', 0) if seed is None else seed
    params, shardings = sharding.init_sharded(init, mesh, rules, jax.random.key(seed))
  else:
    from sleep_jax import io as sio
    if mc.source == 'smollm2':
      path = sio.default_model_path()
      cfg, host = sio.load_gguf(path)
      tok = sio.Tokenizer.from_gguf(path)
    elif mc.source == 'gguf':
      cfg, host = sio.load_gguf(mc.path)
      tok = sio.Tokenizer.from_gguf(mc.path)
    else:
      cfg, host = sio.load_hf(mc.path)
      tok = sio.Tokenizer.load(mc.path)
    # The file fixes the architecture; config may still choose compute dtypes and the context cap.
    cfg = dataclasses.replace(cfg, dtype=mc.dtype, param_dtype=mc.param_dtype,
                              max_seq_len=min(cfg.max_seq_len, mc.max_seq_len))
    model = Transformer(cfg)
    shardings = sharding.logical_shardings(abstract_params(model), mesh, rules)
    params = sharding.put_tree(jax.tree.map(lambda x: x.astype(jnp.dtype(cfg.param_dtype)), host), shardings)
  logging.info('built %s model (%.1fM params) on mesh %s in %.1fs', mc.source, cfg.num_params() / 1e6,
               dict(mesh.shape), time.time() - t0)
  return Built(cfg, model, params, shardings, tok, mesh, rules)
