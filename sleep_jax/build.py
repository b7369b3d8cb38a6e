"""Config -> mesh, model, sharded parameters and tokenizer: the one place runs are assembled."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh

from sleep_jax import io as sio
from sleep_jax import sharding
from sleep_jax.io.byte_tokenizer import ByteTokenizer
from sleep_jax.models.cms import init_cms_state, variables
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
  cms: Any = dataclasses.field(default_factory=dict)   # expert active masks ({} without expert pools)

  @property
  def variables(self) -> dict:
    return variables(self.params, self.cms)


def check_source(mc, problems: list) -> None:
  """Append what is wrong with `config.model`'s source and path (before anything is loaded)."""
  if mc.source not in SOURCES:
    problems.append(f'model.source={mc.source!r} is not one of {SOURCES}')
  elif mc.source == 'gguf' and not os.path.isfile(mc.path):
    problems.append(f'model.path={mc.path!r} is not a file (model.source=gguf needs a .gguf file)')
  elif mc.source == 'hf' and not os.path.isdir(mc.path):
    problems.append(f'model.path={mc.path!r} is not a folder (model.source=hf needs a folder with config.json '
                    'and model.safetensors)')
  if mc.dtype not in ('float32', 'bfloat16', 'float16') or mc.param_dtype not in ('float32', 'bfloat16', 'float16'):
    problems.append(f'model.dtype={mc.dtype!r} / model.param_dtype={mc.param_dtype!r} must be float32, bfloat16 '
                    'or float16')
  if mc.max_seq_len < 1:
    problems.append(f'model.max_seq_len={mc.max_seq_len} must be >= 1')


def model_config_from(mc) -> ModelConfig:
  return ModelConfig.from_dict(mc)


def abstract_params(model: nn.Module):
  """Boxed abstract parameter tree (shapes + logical axes) without allocating anything."""
  return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32)), jax.random.key(0))['params']


def build(config, mesh: Mesh | None = None, seed: int | None = None, tokenizer=None) -> Built:
  """Build everything `config.model` asks for, parameters sharded by `config.logical_axis_rules`. `tokenizer`
  replaces the byte tokenizer of a 'random' model (e.g. the controlled world's word vocabulary, data/world.py)."""
  mesh = mesh or sharding.make_mesh(config.mesh.shape)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  mc = config.model
  if mc.source not in SOURCES:
    raise ValueError(f'model.source={mc.source!r} is not one of {SOURCES}')
  t0 = time.time()
  if mc.source == 'random':
    cfg = model_config_from(mc)
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    if cfg.vocab_size < tok.vocab_size:
      raise ValueError(f'model.vocab_size={cfg.vocab_size} is smaller than the tokenizer ({tok.vocab_size} tokens)')
    model = Transformer(cfg)
    seed = config.get('seed', 0) if seed is None else seed
    params, shardings = sharding.init_sharded(_init_params(model), mesh, rules, jax.random.key(seed))
  else:
    if tokenizer is not None:
      raise ValueError(f'build(tokenizer=...) is for model.source=random; {mc.source!r} brings its own tokenizer')
    reader = host = None
    if mc.source == 'smollm2':
      path = sio.default_model_path()
      cfg, host = sio.load_gguf(path)
      tok = sio.Tokenizer.from_gguf(path)
    elif mc.source == 'gguf':
      cfg, host = sio.load_gguf(mc.path)
      tok = sio.Tokenizer.from_gguf(mc.path)
    else:   # tensors stay in the files until each device's slice is read (_place)
      cfg, reader = sio.hf.open_hf(mc.path)
      tok = sio.Tokenizer.load(mc.path)
    tok.enable_thinking = bool(mc.get('enable_thinking', False))   # read by Qwen3-style chat templates
    if tok.vocab_size > cfg.vocab_size:   # ids past the embedding would be clamped silently by the gather
      raise ValueError(f'tokenizer of {mc.path or mc.source} has {tok.vocab_size} tokens but the model\'s vocabulary '
                       f'is {cfg.vocab_size}: the tokenizer does not belong to these weights')
    # The file fixes the architecture (biases, q/k norms and RoPE scaling included: `replace` keeps them); config
    # chooses compute dtypes, the context cap, rematerialisation and the CMS expert pools added on top of the
    # pretrained MLPs (their leaves start from a fresh init, all inactive).
    cfg = dataclasses.replace(cfg, dtype=mc.dtype, param_dtype=mc.param_dtype,
                              max_seq_len=min(cfg.max_seq_len, mc.max_seq_len),
                              n_experts=mc.get('n_experts', 0), expert_rank=mc.get('expert_rank', 0),
                              remat=mc.get('remat', False))
    model = Transformer(cfg)
    abstract = abstract_params(model)
    shardings = sharding.logical_shardings(abstract, mesh, rules)
    if reader is not None:
      read = {k: functools.partial(reader.read, k) for k in reader.plan}
    else:
      flat_host = traverse_util.flatten_dict(host)
      read = {k: (lambda k: lambda shape, idx: flat_host[k][idx])(k) for k in flat_host}
    seed = config.get('seed', 0) if seed is None else seed
    params = _place(model, read, nn.meta.unbox(abstract), shardings, jnp.dtype(cfg.param_dtype),
                    jax.random.key(seed))
  cms = init_cms_state(cfg)
  logging.info('built %s model (%.1fM params) on mesh %s in %.1fs', mc.source, cfg.num_params() / 1e6,
               dict(mesh.shape), time.time() - t0)
  return Built(cfg, model, params, shardings, tok, mesh, rules, cms)


def with_model(b: Built, cfg: ModelConfig, params, cms) -> Built:
  """`b` for another ModelConfig (a grown model): its module and parameter shardings by the same rules on the same
  mesh, with `params` / `cms` (arrays or abstract) for it; tokenizer, mesh and rules kept."""
  model = Transformer(cfg)
  return dataclasses.replace(b, cfg=cfg, model=model, params=params, cms=cms,
                             shardings=sharding.logical_shardings(abstract_params(model), b.mesh, b.rules))


def _init_params(model: nn.Module):
  return lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32))['params']


def _place(model: nn.Module, read: dict, abstract, shardings, dtype, key):
  """The parameter tree, sharded, from `read` ({path: (leaf shape, index) -> float32 numpy leaf[index]}: the
  checkpoint's leaves) and a fresh init of only the leaves the checkpoint lacks (expert pools, routers).

  Each checkpoint leaf is made by `jax.make_array_from_callback`, which asks for exactly the slices this process's
  devices hold: a host reads one tensor's slices at a time, never the whole model. The missing leaves come from
  the model's init under jit with only them as outputs, so XLA drops the rest of the init: their values are those
  of a full init with the same key (flax derives each parameter's key from its path), without a full random model
  in memory."""
  sh = traverse_util.flatten_dict(shardings)
  extra = sorted('/'.join(k) for k in read if k not in sh)
  if extra:
    raise ValueError(f'checkpoint tensors {extra[:3]} have no place in the model')
  missing = [k for k in sh if k not in read]
  if missing:
    logging.info('initialising %d leaves the checkpoint lacks (e.g. %s)', len(missing), '/'.join(missing[0]))
  fresh = _init_missing(model, missing, {k: sh[k] for k in missing}, key) if missing else {}
  shapes = {k: tuple(x.shape) for k, x in traverse_util.flatten_dict(abstract).items()}
  out = {}
  for k, s in sh.items():
    if k in read:
      out[k] = jax.make_array_from_callback(
          shapes[k], s, lambda idx, k=k: read[k](shapes[k], idx).astype(dtype))
    else:
      out[k] = fresh[k]
  return traverse_util.unflatten_dict(out)


def _init_missing(model: nn.Module, paths: list, shardings: dict, key) -> dict:
  """{path: sharded fresh leaf} for `paths` only."""
  out = _missing_init(model, paths, shardings)(key)
  return {k: out['/'.join(k)] for k in paths}


def _missing_init(model: nn.Module, paths: list, shardings: dict):
  """The model's init jitted with only `paths` as outputs (placed by `shardings`): XLA drops every other leaf's
  initialiser, so the program holds just these leaves (tests/test_build_streamed.py checks its memory analysis)."""
  def init(r):
    flat = traverse_util.flatten_dict(nn.meta.unbox(_init_params(model)(r)))
    return {'/'.join(k): flat[k] for k in paths}
  return jax.jit(init, out_shardings={'/'.join(k): s for k, s in shardings.items()})
