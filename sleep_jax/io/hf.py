"""Hugging Face Llama / Qwen2 / Qwen3 checkpoints (config.json + safetensors) to and from our parameter tree.

HF weights are [out, in] and already use rotate-half RoPE, so import is transposes and reshapes only.
Reading uses `safetensors.numpy` (no torch, no pickle). `save_hf` writes into a temporary sibling folder and
renames it into place, so a half-written folder is never taken for a whole one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sleep_jax.models.llama import ModelConfig

_IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)  # buffers some old checkpoints carry


# model_type -> (architectures entry, what the family fixes). Llama covers Llama-2/3.x, SmolLM and Mistral-free
# Llama clones; Qwen2 has q/k/v biases (no o bias, no MLP bias); Qwen3 has per-head q/k RMSNorm.
FAMILIES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM'}
# Keys of a rope_scaling / rope_parameters object per rope_type ('type' is the pre-4.45 spelling of 'rope_type').
_ROPE_KEYS = {
    'default': set(),
    'linear': {'factor'},
    'llama3': {'factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'},
    'yarn': {'factor', 'original_max_position_embeddings', 'beta_fast', 'beta_slow', 'attention_factor', 'mscale',
             'mscale_all_dim', 'truncate'},
}
_ROPE_COMMON = {'rope_type', 'type', 'rope_theta', 'partial_rotary_factor'}


def _rope_fields(c: dict, path) -> dict:
  """ModelConfig rope_* fields from HF `rope_scaling` (transformers < 5) / `rope_parameters` (>= 5)."""
  scaling, params = c.get('rope_scaling'), c.get('rope_parameters')
  for key, v in (('rope_scaling', scaling), ('rope_parameters', params)):
    if v is not None and not isinstance(v, dict):
      raise ValueError(f'{path}: {key} must be an object or null, got {v!r}')
  r = {**(scaling or {}), **(params or {})}
  kind = r.get('rope_type', r.get('type', 'default'))
  key = 'rope_parameters' if params else 'rope_scaling'
  if kind not in _ROPE_KEYS:
    raise ValueError(f'{path}: {key}.rope_type={kind!r} is not supported (supported: {sorted(_ROPE_KEYS)}); '
                     'use a checkpoint with one of these or add the scaling to models/layers.rope_frequencies')
  unknown = sorted(set(r) - _ROPE_KEYS[kind] - _ROPE_COMMON)
  if unknown:
    raise ValueError(f'{path}: {key} key {unknown[0]!r} is not supported for rope_type={kind!r} (known keys: '
                     f'{sorted(_ROPE_KEYS[kind] | _ROPE_COMMON)}); remove it if it is a no-op')
  if r.get('partial_rotary_factor', c.get('partial_rotary_factor', 1.0)) != 1.0:
    raise ValueError(f'{path}: partial_rotary_factor={r.get("partial_rotary_factor", c.get("partial_rotary_factor"))}'
                     ' is not supported (RoPE over the whole head_dim only)')
  if kind == 'default':
    return {}

  def num(k, default=None):
    v = r.get(k, default)
    if v is None:
      raise ValueError(f'{path}: {key}.{k} is required for rope_type={kind!r}')
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 2**31 or not math.isfinite(v):
      raise ValueError(f'{path}: {key}.{k}={v!r} must be a positive number')
    return v

  out = {'rope_type': kind, 'rope_factor': float(num('factor'))}
  if kind == 'llama3':
    out.update(rope_low_freq_factor=float(num('low_freq_factor')), rope_high_freq_factor=float(num('high_freq_factor')),
               rope_original_max_len=int(num('original_max_position_embeddings')))
  elif kind == 'yarn':
    if r.get('truncate', True) is not True:
      raise ValueError(f'{path}: {key}.truncate={r["truncate"]!r} is not supported (only the default true)')
    factor = out['rope_factor']
    # transformers >= 4.56 uses the explicit factor even when max_position_embeddings / original differs.
    out.update(rope_original_max_len=int(num('original_max_position_embeddings', c.get('max_position_embeddings'))),
               rope_beta_fast=float(r.get('beta_fast') or 32), rope_beta_slow=float(r.get('beta_slow') or 1))
    attention = r.get('attention_factor')
    if attention is None and r.get('mscale') and r.get('mscale_all_dim'):   # DeepSeek's spelling of the same factor
      m = lambda s: 1.0 if factor <= 1 else 0.1 * s * math.log(factor) + 1.0
      attention = m(r['mscale']) / m(r['mscale_all_dim'])
    out['rope_attention_factor'] = 0.0 if attention is None else float(num('attention_factor', attention))
  return out


def _read_config(folder: Path) -> ModelConfig:
  path = folder / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{folder}: config.json is missing (not a Hugging Face checkpoint folder?)')
  try:
    c = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: invalid JSON: {e}') from e
  if not isinstance(c, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(c).__name__}')
  for k in ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size'):
    if k not in c:
      raise ValueError(f'{path}: required key {k!r} is missing')
  family = c.get('model_type', 'llama')
  if family not in FAMILIES:
    raise ValueError(f'{path}: model_type={family!r} is not supported (supported: {sorted(FAMILIES)})')
  if c.get('hidden_act', 'silu') != 'silu':
    raise ValueError(f'{path}: hidden_act={c["hidden_act"]!r} is not supported (SwiGLU with silu only)')
  if family in ('qwen2', 'qwen3') and c.get('use_sliding_window'):
    raise ValueError(f'{path}: use_sliding_window=true is not supported (full causal attention only); set it to '
                     'false in config.json to run with full attention')
  # What each family's transformers modeling code builds: Llama and Qwen3 put `attention_bias` on q/k/v/o, Qwen2
  # always biases q/k/v and never o; only Llama reads `mlp_bias`.
  if family == 'qwen2':
    qkv_bias, o_bias, mlp_bias = True, False, False
  else:
    qkv_bias = o_bias = bool(c.get('attention_bias', False))
    mlp_bias = bool(c.get('mlp_bias', False)) if family == 'llama' else False
  rope = _rope_fields(c, path)

  def num(key, kind=int, default=None):
    v = c.get(key)
    if v is None and key == 'rope_theta':   # transformers>=5 nests it in rope_parameters
      v = (c.get('rope_parameters') or {}).get(key)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) or not 0 < v < 2**31 \
        or (kind is float and not math.isfinite(v)):
      raise ValueError(f'{path}: {key}={v!r} must be a positive {kind.__name__} below 2^31')
    return kind(v)

  H, D = num('num_attention_heads'), num('hidden_size')
  try:
    return ModelConfig(
        vocab_size=num('vocab_size'), d_model=D, n_layers=num('num_hidden_layers'), n_heads=H,
        n_kv_heads=num('num_key_value_heads', default=H), head_dim=num('head_dim', default=max(D // H, 1)),
        d_ff=num('intermediate_size'), rope_base=num('rope_theta', float, 10000.0),
        norm_eps=num('rms_norm_eps', float, 1e-6), tie_embeddings=bool(c.get('tie_word_embeddings', False)),
        max_seq_len=num('max_position_embeddings', default=2048), qkv_bias=qkv_bias, o_bias=o_bias,
        mlp_bias=mlp_bias, qk_norm=family == 'qwen3', **rope)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from e


def _weight_files(folder: Path) -> list[Path]:
  index = folder / 'model.safetensors.index.json'
  if index.is_file():
    try:
      wmap = json.loads(index.read_text())['weight_map']
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f'{index}: not a safetensors index (needs a "weight_map"): {e}') from e
    files = [folder / f for f in dict.fromkeys(wmap.values())]
    for f in files:
      if not f.is_file():
        raise FileNotFoundError(f'{index} names shard {f.name}, which is missing')
    return files
  if (folder / 'model.safetensors').is_file():
    return [folder / 'model.safetensors']
  raise FileNotFoundError(f'{folder}: neither model.safetensors nor model.safetensors.index.json found '
                          f'(have {sorted(p.name for p in folder.iterdir())})')


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """HF tensor name -> shape ([out, in] for projections) for a Llama / Qwen2 / Qwen3 checkpoint of `cfg`."""
  D, H, K, E, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  s = {'model.embed_tokens.weight': (V, D), 'model.norm.weight': (D,)}
  if not cfg.tie_embeddings:
    s['lm_head.weight'] = (V, D)
  for i in range(cfg.n_layers):
    p = f'model.layers.{i}.'
    s.update({p + 'input_layernorm.weight': (D,), p + 'post_attention_layernorm.weight': (D,),
              p + 'self_attn.q_proj.weight': (H * E, D), p + 'self_attn.k_proj.weight': (K * E, D),
              p + 'self_attn.v_proj.weight': (K * E, D), p + 'self_attn.o_proj.weight': (D, H * E),
              p + 'mlp.gate_proj.weight': (F, D), p + 'mlp.up_proj.weight': (F, D),
              p + 'mlp.down_proj.weight': (D, F)})
    if cfg.qkv_bias:
      s.update({p + 'self_attn.q_proj.bias': (H * E,), p + 'self_attn.k_proj.bias': (K * E,),
                p + 'self_attn.v_proj.bias': (K * E,)})
    if cfg.o_bias:
      s[p + 'self_attn.o_proj.bias'] = (D,)
    if cfg.mlp_bias:
      s.update({p + 'mlp.gate_proj.bias': (F,), p + 'mlp.up_proj.bias': (F,), p + 'mlp.down_proj.bias': (D,)})
    if cfg.qk_norm:
      s.update({p + 'self_attn.q_norm.weight': (E,), p + 'self_attn.k_norm.weight': (E,)})
  return s


def load_hf(folder) -> tuple[ModelConfig, dict]:
  """(ModelConfig, float32 numpy params) from a Llama / Qwen2 / Qwen3 safetensors checkpoint folder.

  config.json fixes the architecture (`FAMILIES`; biases, q/k norms and RoPE scaling follow from model_type,
  attention_bias, mlp_bias and rope_scaling / rope_parameters). float16 / bfloat16 / float32 tensors load exactly
  as float32; `build` casts them to `model.param_dtype`.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'checkpoint folder {folder} does not exist')
  cfg = _read_config(folder)
  reader = HfReader(folder, cfg)   # checks every tensor (present, float, shape) and that nothing else is there
  params = {}
  for path, t in reader.plan.items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = reader.read(path, t.shape)
  return cfg, params


def numpy_tree(tree):
  """Contiguous float32 numpy copies of a (possibly boxed, possibly jax) parameter tree."""
  if isinstance(tree, Mapping):
    return {k: numpy_tree(v) for k, v in tree.items()}
  if hasattr(tree, 'unbox'):
    tree = tree.unbox()
  return np.ascontiguousarray(np.asarray(tree, dtype=np.float32))


def _to_hf(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  """Our parameter tree -> HF tensor dict, checking every shape against `cfg`."""
  p = numpy_tree(params)
  D = cfg.d_model

  def get(*keys):
    node = p
    for k in keys:
      if not isinstance(node, dict) or k not in node:
        raise ValueError(f'params is missing {"/".join(keys)} for {cfg}')
      node = node[k]
    return node

  want_ours = {('embed',): (cfg.vocab_size, D), ('final_norm', 'scale'): (D,)}
  if not cfg.tie_embeddings:
    want_ours[('lm_head',)] = (D, cfg.vocab_size)
  for i in range(cfg.n_layers):
    L = f'layers_{i}'
    want_ours.update({
        (L, 'attn', 'wq'): (D, cfg.n_heads, cfg.head_dim), (L, 'attn', 'wk'): (D, cfg.n_kv_heads, cfg.head_dim),
        (L, 'attn', 'wv'): (D, cfg.n_kv_heads, cfg.head_dim), (L, 'attn', 'wo'): (cfg.n_heads, cfg.head_dim, D),
        (L, 'attn_norm', 'scale'): (D,), (L, 'mlp_norm', 'scale'): (D,), (L, 'mlp', 'w_gate'): (D, cfg.d_ff),
        (L, 'mlp', 'w_up'): (D, cfg.d_ff), (L, 'mlp', 'w_down'): (cfg.d_ff, D)})
    H, K, E, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    if cfg.qkv_bias:
      want_ours.update({(L, 'attn', 'bq'): (H, E), (L, 'attn', 'bk'): (K, E), (L, 'attn', 'bv'): (K, E)})
    if cfg.o_bias:
      want_ours[(L, 'attn', 'bo')] = (D,)
    if cfg.qk_norm:
      want_ours.update({(L, 'attn', 'q_norm', 'scale'): (E,), (L, 'attn', 'k_norm', 'scale'): (E,)})
    if cfg.mlp_bias:
      want_ours.update({(L, 'mlp', 'b_gate'): (F,), (L, 'mlp', 'b_up'): (F,), (L, 'mlp', 'b_down'): (D,)})
  for keys, shape in want_ours.items():
    if get(*keys).shape != shape:
      raise ValueError(f'param {"/".join(keys)} has shape {get(*keys).shape}, expected {shape} for {cfg}')
  out = {'model.embed_tokens.weight': get('embed'), 'model.norm.weight': get('final_norm', 'scale')}
  if not cfg.tie_embeddings:
    out['lm_head.weight'] = get('lm_head').T
  for i in range(cfg.n_layers):
    L, pre = f'layers_{i}', f'model.layers.{i}.'
    out.update({
        pre + 'input_layernorm.weight': get(L, 'attn_norm', 'scale'),
        pre + 'post_attention_layernorm.weight': get(L, 'mlp_norm', 'scale'),
        pre + 'self_attn.q_proj.weight': get(L, 'attn', 'wq').reshape(D, -1).T,
        pre + 'self_attn.k_proj.weight': get(L, 'attn', 'wk').reshape(D, -1).T,
        pre + 'self_attn.v_proj.weight': get(L, 'attn', 'wv').reshape(D, -1).T,
        pre + 'self_attn.o_proj.weight': get(L, 'attn', 'wo').reshape(-1, D).T,
        pre + 'mlp.gate_proj.weight': get(L, 'mlp', 'w_gate').T,
        pre + 'mlp.up_proj.weight': get(L, 'mlp', 'w_up').T,
        pre + 'mlp.down_proj.weight': get(L, 'mlp', 'w_down').T})
    if cfg.qkv_bias:
      out.update({pre + f'self_attn.{n}_proj.bias': get(L, 'attn', f'b{n}').reshape(-1) for n in 'qkv'})
    if cfg.o_bias:
      out[pre + 'self_attn.o_proj.bias'] = get(L, 'attn', 'bo')
    if cfg.qk_norm:
      out.update({pre + f'self_attn.{n}_norm.weight': get(L, 'attn', f'{n}_norm', 'scale') for n in 'qk'})
    if cfg.mlp_bias:
      out.update({pre + f'mlp.{n}_proj.bias': get(L, 'mlp', f'b_{n}') for n in ('gate', 'up', 'down')})
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_family(cfg: ModelConfig) -> str:
  """The HF model_type whose modeling code builds exactly `cfg`'s biases and norms (raises when none does)."""
  if cfg.qk_norm:
    family = 'qwen3'
  elif cfg.qkv_bias and not cfg.o_bias and not cfg.mlp_bias:
    family = 'qwen2'
  else:
    family = 'llama'
  if (family != 'qwen2' and cfg.qkv_bias != cfg.o_bias) or (family == 'qwen3' and cfg.mlp_bias):
    raise ValueError(f'no Hugging Face family has qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias}, '
                     f'mlp_bias={cfg.mlp_bias}, qk_norm={cfg.qk_norm} (llama: q/k/v/o biases together + MLP biases; '
                     'qwen2: q/k/v biases only; qwen3: q/k norm + q/k/v/o biases together); change the model config')
  return family


def _rope_config(cfg: ModelConfig) -> dict | None:
  if cfg.rope_type == 'default':
    return None
  r = {'rope_type': cfg.rope_type, 'factor': cfg.rope_factor}
  if cfg.rope_type == 'llama3':
    r.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
             original_max_position_embeddings=cfg.rope_original_max_len)
  elif cfg.rope_type == 'yarn':
    r.update(original_max_position_embeddings=cfg.rope_original_max_len, beta_fast=cfg.rope_beta_fast,
             beta_slow=cfg.rope_beta_slow)
    if cfg.rope_attention_factor:
      r['attention_factor'] = cfg.rope_attention_factor
  return r


def hf_config(cfg: ModelConfig, tokenizer=None, dtype: str = 'float32') -> dict:
  """config.json of the family that builds `cfg` (`hf_family`), as transformers writes it."""
  family = hf_family(cfg)
  c = {'architectures': [FAMILIES[family]], 'model_type': family, 'hidden_act': 'silu',
       'hidden_size': cfg.d_model, 'intermediate_size': cfg.d_ff, 'num_hidden_layers': cfg.n_layers,
       'num_attention_heads': cfg.n_heads, 'num_key_value_heads': cfg.n_kv_heads, 'head_dim': cfg.head_dim,
       'rope_theta': cfg.rope_base, 'rms_norm_eps': cfg.norm_eps, 'tie_word_embeddings': cfg.tie_embeddings,
       'vocab_size': cfg.vocab_size, 'max_position_embeddings': cfg.max_seq_len, 'rope_scaling': _rope_config(cfg),
       'torch_dtype': dtype}
  if family == 'llama':
    c.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
  elif family == 'qwen3':
    c.update(attention_bias=cfg.qkv_bias, use_sliding_window=False)
  else:
    c.update(use_sliding_window=False)
  if tokenizer is not None:
    c.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  return c


_SAVE_DTYPES = ('float32', 'bfloat16', 'float16')


def save_hf(folder, cfg: ModelConfig, params: dict, tokenizer=None, overwrite: bool = False,
            dtype: str = 'float32') -> Path:
  """Write config.json (of `cfg`'s family) + model.safetensors (+ tokenizer files) atomically; returns the folder.

  `dtype` is the tensors' dtype on disk ('float32', or 'bfloat16' / 'float16' to halve the files, rounding to
  nearest even); `load_hf` reads any of them back.
  """
  from safetensors.numpy import save_file
  folder = Path(folder)
  if dtype not in _SAVE_DTYPES:
    raise ValueError(f'save_hf(dtype={dtype!r}): must be one of {_SAVE_DTYPES}')
  if folder.exists() and not overwrite:
    raise FileExistsError(f'{folder} exists; pass overwrite=True to replace it')
  tensors = _to_hf(cfg, params)
  if dtype != 'float32':
    import ml_dtypes
    np_dtype = ml_dtypes.bfloat16 if dtype == 'bfloat16' else np.float16
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=folder.parent))
  try:
    (tmp / 'config.json').write_text(json.dumps(hf_config(cfg, tokenizer, dtype), indent=2))
    save_file(tensors, tmp / 'model.safetensors', metadata={'format': 'pt'})
    if tokenizer is not None:
      tokenizer.save(tmp)
    if folder.exists():  # swap: old aside, new in, old deleted
      old = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.old-', dir=folder.parent))
      os.replace(folder, old / folder.name)
      os.replace(tmp, folder)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder


# ---- streamed loading: the seam build.py consumes ---------------------------------------------------------
# `hf_plan(cfg)` is the one table from our parameter paths to HF tensors; `HfReader` reads any box of a leaf
# straight from the safetensors files (one tensor, or one device's slice of it, at a time). A new tensor family
# (biases, q/k norms) is one more `hf_plan` entry: HfTensor(name, hf_shape, transpose) says "our leaf is this HF
# tensor, transposed if `transpose`, reshaped to the leaf's shape", which is all the reader needs to slice it.


@dataclasses.dataclass(frozen=True)
class HfTensor:
  name: str                 # HF tensor name, e.g. 'model.layers.0.self_attn.q_proj.weight'
  hf_shape: tuple           # its shape in the file ([out, in] for projections)
  transpose: bool = False   # our leaf = reshape(transpose(tensor) if transpose else tensor, leaf shape)
  shape: tuple = ()         # our leaf's shape (what load_hf reads whole)


def hf_plan(cfg: ModelConfig) -> dict[tuple[str, ...], HfTensor]:
  """Our flattened parameter path ('layers_0', 'attn', 'wq') -> the HF tensor it is read from, for `cfg`."""
  s = hf_shapes(cfg)
  D, H, K, E, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  t = lambda n, shape, tr=False: HfTensor(n, s[n], tr, shape)
  plan = {('embed',): t('model.embed_tokens.weight', (V, D)), ('final_norm', 'scale'): t('model.norm.weight', (D,))}
  if not cfg.tie_embeddings:
    plan[('lm_head',)] = t('lm_head.weight', (D, V), True)
  for i in range(cfg.n_layers):
    L, p = f'layers_{i}', f'model.layers.{i}.'
    plan.update({
        (L, 'attn_norm', 'scale'): t(p + 'input_layernorm.weight', (D,)),
        (L, 'mlp_norm', 'scale'): t(p + 'post_attention_layernorm.weight', (D,)),
        (L, 'attn', 'wq'): t(p + 'self_attn.q_proj.weight', (D, H, E), True),
        (L, 'attn', 'wk'): t(p + 'self_attn.k_proj.weight', (D, K, E), True),
        (L, 'attn', 'wv'): t(p + 'self_attn.v_proj.weight', (D, K, E), True),
        (L, 'attn', 'wo'): t(p + 'self_attn.o_proj.weight', (H, E, D), True),
        (L, 'mlp', 'w_gate'): t(p + 'mlp.gate_proj.weight', (D, F), True),
        (L, 'mlp', 'w_up'): t(p + 'mlp.up_proj.weight', (D, F), True),
        (L, 'mlp', 'w_down'): t(p + 'mlp.down_proj.weight', (F, D), True)})
    if cfg.qkv_bias:
      plan.update({(L, 'attn', 'bq'): t(p + 'self_attn.q_proj.bias', (H, E)),
                   (L, 'attn', 'bk'): t(p + 'self_attn.k_proj.bias', (K, E)),
                   (L, 'attn', 'bv'): t(p + 'self_attn.v_proj.bias', (K, E))})
    if cfg.o_bias:
      plan[(L, 'attn', 'bo')] = t(p + 'self_attn.o_proj.bias', (D,))
    if cfg.qk_norm:
      plan.update({(L, 'attn', 'q_norm', 'scale'): t(p + 'self_attn.q_norm.weight', (E,)),
                   (L, 'attn', 'k_norm', 'scale'): t(p + 'self_attn.k_norm.weight', (E,))})
    if cfg.mlp_bias:
      plan.update({(L, 'mlp', 'b_gate'): t(p + 'mlp.gate_proj.bias', (F,)),
                   (L, 'mlp', 'b_up'): t(p + 'mlp.up_proj.bias', (F,)),
                   (L, 'mlp', 'b_down'): t(p + 'mlp.down_proj.bias', (D,))})
  return plan


def _groups(eff_shape, shape) -> list[int]:
  """How many consecutive leaf dims make up each dim of the (transposed) HF tensor: leaf (D, H, E) from (D, H*E)
  -> [1, 2]; the last HF dim takes all the leaf dims left."""
  out, i = [], 0
  for g, n in enumerate(eff_shape):
    k = len(shape) - i if g == len(eff_shape) - 1 else 0
    while g < len(eff_shape) - 1 and (k == 0 or math.prod(shape[i:i + k]) < n) and i + k < len(shape):
      k += 1
    if k < 1 or math.prod(shape[i:i + k]) != n:
      raise ValueError(f'leaf shape {tuple(shape)} is not a reshape of {tuple(eff_shape)}')
    out.append(k)
    i += k
  return out


def hf_box(t: HfTensor, shape: tuple, index: tuple) -> tuple[tuple, tuple, tuple]:
  """(box of the HF tensor to read, shape to reshape the (transposed) box to, index into that) so that
  reshape(transpose?(tensor[box]), mid)[post] == leaf[index]. Each HF dim is read over the range its leaf dims'
  first index covers (contiguous there), so a device's shard reads little more than itself."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  ranges = [ix.indices(n)[:2] for ix, n in zip(index, shape)]
  eff = tuple(reversed(t.hf_shape)) if t.transpose else tuple(t.hf_shape)
  box, mid, post, i = [], [], [], 0
  for k in _groups(eff, shape):
    inner = math.prod(shape[i + 1:i + k])
    (a, b), rest = ranges[i], shape[i + 1:i + k]
    box.append(slice(a * inner, b * inner))
    mid.extend((b - a, *rest))
    post.extend((slice(None), *(slice(*r) for r in ranges[i + 1:i + k])))
    i += k
  box = tuple(reversed(box)) if t.transpose else tuple(box)
  return box, tuple(mid), tuple(post)


class HfReader:
  """The safetensors files of a checkpoint folder, opened once, read a box at a time (`safe_open.get_slice`: only
  the requested bytes leave the file). Checks every tensor `hf_plan(cfg)` names (present, float, right shape) and
  that the files hold nothing else, with load_hf's messages."""

  def __init__(self, folder, cfg: ModelConfig, plan: dict | None = None):
    from safetensors import safe_open
    self.folder, self.cfg = Path(folder), cfg
    self._files, self.where = [], {}
    for f in _weight_files(self.folder):
      try:
        h = safe_open(f, framework='np')
        names = list(h.keys())
      except Exception as e:
        raise ValueError(f'{f}: cannot read safetensors file (truncated or corrupt?): {e}') from e
      self._files.append(h)
      self.where.update({n: h for n in names})
    if cfg.n_layers * 9 > len(self.where):   # bounds hf_plan by the file, whatever config.json claims
      raise ValueError(f'{self.folder}: config.json says {cfg.n_layers} layers but the safetensors hold only '
                       f'{len(self.where)} tensors (9 per layer)')
    self.plan = hf_plan(cfg) if plan is None else plan
    want = {t.name: t.hf_shape for t in self.plan.values()}
    extra = sorted(n for n in set(self.where) - set(want) if not n.endswith(_IGNORED_SUFFIXES)
                   and not (cfg.tie_embeddings and n == 'lm_head.weight'))
    if extra:
      raise ValueError(f'{self.folder}: tensor {extra[0]!r} is not supported by the model config.json describes '
                       f'({len(extra)} unsupported tensors, e.g. {extra[:4]}); check model_type / attention_bias / '
                       'mlp_bias in config.json match the weights')
    for name, shape in want.items():
      if name not in self.where:
        raise ValueError(f'{self.folder}: tensor {name!r} is missing')
      sl = self.where[name].get_slice(name)
      if sl.get_dtype() not in ('F16', 'BF16', 'F32', 'F64'):
        raise ValueError(f'{self.folder}: tensor {name!r} has dtype {sl.get_dtype()}, expected a float type')
      if tuple(sl.get_shape()) != tuple(shape):
        raise ValueError(f'{self.folder}: tensor {name!r} has shape {tuple(sl.get_shape())}, expected {shape}')
    if cfg.tie_embeddings and 'lm_head.weight' in self.where:
      self._check_tied()

  def _check_tied(self, rows: int = 4096):
    """A saved tied head must equal the embedding (compared a block of rows at a time)."""
    emb, head = (self.where[n].get_slice(n) for n in ('model.embed_tokens.weight', 'lm_head.weight'))
    V = self.cfg.vocab_size
    if tuple(head.get_shape()) != tuple(emb.get_shape()) or any(
        not np.array_equal(head[a:a + rows], emb[a:a + rows]) for a in range(0, V, rows)):
      raise ValueError(f'{self.folder}: tie_word_embeddings=true but tensor lm_head.weight differs from '
                       f'model.embed_tokens.weight')

  def read(self, path: tuple, shape: tuple, index: tuple = ()) -> np.ndarray:
    """leaf[index] of our parameter `path` (leaf shape `shape`) as float32, read from the file."""
    t = self.plan[path]
    box, mid, post = hf_box(t, shape, index)
    a = np.asarray(self.where[t.name].get_slice(t.name)[box], np.float32)
    a = a.T if t.transpose else a
    return np.ascontiguousarray(a.reshape(mid)[post])


def open_hf(folder) -> tuple[ModelConfig, HfReader]:
  """(ModelConfig from config.json, a reader of the checkpoint's tensors): load_hf without reading any tensor."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'checkpoint folder {folder} does not exist')
  cfg = _read_config(folder)
  return cfg, HfReader(folder, cfg)
