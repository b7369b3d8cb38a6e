"""Fuzz the model-file parsers: GGUF (weights + tokenizer) and Hugging Face safetensors folders.

  python -m experiments.benchmarks.fuzz                       # 10,000 inputs per parser, table + JSON
  python -m experiments.benchmarks.fuzz --examples=300        # CI size (tests/test_fuzz.py runs this code)

Inputs are made by hypothesis from a small valid file of each kind (a 1-layer llama GGUF with a byte-level BPE
tokenizer; config.json + model.safetensors written by `sleep_jax.io.save_hf`): truncations, byte flips (mostly in
the header, where the parsing is), 8-byte windows overwritten with extreme integers (lengths, counts,
offsets), inserted and deleted bytes, random bytes after the magic, and for safetensors a regenerated JSON
header and config.json. Each input is loaded the way a run loads it (`load_gguf` + `Tokenizer.from_gguf`;
`load_hf`). An input either loads, or fails with the project's clear error: ValueError / FileNotFoundError whose
message names the file. Anything else (IndexError, struct.error, MemoryError, a hang past the deadline, a
crash of the process) is a failure, which hypothesis shrinks and this script reports.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

EXTREMES = (0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1)


# ---- the valid seeds ----------------------------------------------------------------------------------

def _tiny_params(cfg, seed=0):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from sleep_jax.models.llama import Transformer
  shapes = nn.meta.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes['params'])


def tiny_cfg():
  from sleep_jax.models.llama import ModelConfig
  return ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16,
                     rope_base=500.0, norm_eps=1e-6, tie_embeddings=True, max_seq_len=32)


TOKENS = ['<|endoftext|>', '<s>', 'a', 'b', 'c', 'Ġ', 'ab', 'Ġa']


def write_gguf_seed(path) -> bytes:
  """A valid 1-layer llama GGUF (llama.cpp's layout: [out, in] tensors, permuted q/k) with a BPE tokenizer."""
  import gguf

  from sleep_jax.io.gguf import permute_qk
  cfg, p = tiny_cfg(), _tiny_params(tiny_cfg())
  w = gguf.GGUFWriter(str(path), 'llama')
  for fn, v in ((w.add_block_count, cfg.n_layers), (w.add_context_length, cfg.max_seq_len),
                (w.add_embedding_length, cfg.d_model), (w.add_feed_forward_length, cfg.d_ff),
                (w.add_head_count, cfg.n_heads), (w.add_head_count_kv, cfg.n_kv_heads),
                (w.add_rope_freq_base, cfg.rope_base), (w.add_layer_norm_rms_eps, cfg.norm_eps),
                (w.add_rope_dimension_count, cfg.head_dim), (w.add_tokenizer_model, 'gpt2'),
                (w.add_tokenizer_pre, 'smollm'), (w.add_token_list, TOKENS), (w.add_token_merges, ['a b', 'Ġ a']),
                (w.add_token_types, [3, 3, 1, 1, 1, 1, 1, 1]), (w.add_bos_token_id, 1), (w.add_eos_token_id, 0)):
    fn(v)
  D, L = cfg.d_model, p['layers_0']
  t = {'token_embd.weight': p['embed'], 'output_norm.weight': p['final_norm']['scale'],
       'blk.0.attn_norm.weight': L['attn_norm']['scale'], 'blk.0.ffn_norm.weight': L['mlp_norm']['scale'],
       'blk.0.attn_q.weight': permute_qk(L['attn']['wq'].reshape(D, -1).T, cfg.n_heads),
       'blk.0.attn_k.weight': permute_qk(L['attn']['wk'].reshape(D, -1).T, cfg.n_kv_heads),
       'blk.0.attn_v.weight': L['attn']['wv'].reshape(D, -1).T, 'blk.0.attn_output.weight': L['attn']['wo'].reshape(-1, D).T,
       'blk.0.ffn_gate.weight': L['mlp']['w_gate'].T, 'blk.0.ffn_up.weight': L['mlp']['w_up'].T,
       'blk.0.ffn_down.weight': L['mlp']['w_down'].T}
  for name, a in t.items():
    w.add_tensor(name, np.ascontiguousarray(a, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return Path(path).read_bytes()


def write_hf_seed(folder) -> tuple[bytes, bytes]:
  """(model.safetensors bytes, config.json bytes) of a valid tiny Llama folder written by `save_hf`."""
  from sleep_jax.io import save_hf
  folder = save_hf(folder, tiny_cfg(), _tiny_params(tiny_cfg()), overwrite=True)
  return (folder / 'model.safetensors').read_bytes(), (folder / 'config.json').read_bytes()


def gguf_header_len(path) -> int:
  """Bytes before the tensor data of a valid file (the header and tensor infos, where the parsing is)."""
  import gguf
  return int(gguf.GGUFReader(path).data_offset)


# ---- mutations ----------------------------------------------------------------------------------------

def mutations(st, head: int):
  """A hypothesis strategy of functions bytes -> bytes; `head`: the header length to bias edits towards."""
  pos = lambda n: st.integers(0, max(n - 1, 0))

  def truncate(d, data):
    return d[:data.draw(pos(len(d)))]

  def flip(d, data):
    b = bytearray(d)
    for _ in range(data.draw(st.integers(1, 16))):
      i = data.draw(st.one_of(pos(min(head, len(b))), pos(len(b))))
      b[i] = data.draw(st.integers(0, 255))
    return bytes(b)

  def extreme(d, data):
    b = bytearray(d)
    i = data.draw(pos(max(min(head, len(b)) - 8, 1)))
    v = data.draw(st.one_of(st.sampled_from(EXTREMES), st.integers(0, 2**64 - 1)))
    n = data.draw(st.sampled_from([4, 8]))
    b[i:i + n] = (v % 2**(8 * n)).to_bytes(n, 'little')
    return bytes(b)

  def insert_delete(d, data):
    i = data.draw(pos(min(head, len(d))))
    if data.draw(st.booleans()):
      return d[:i] + data.draw(st.binary(min_size=1, max_size=32)) + d[i:]
    return d[:i] + d[i + data.draw(st.integers(1, 32)):]

  def random_tail(d, data):
    return d[:4] + data.draw(st.binary(max_size=512))

  return st.sampled_from([truncate, flip, extreme, insert_delete, random_tail])


def safetensors_header(st):
  """A regenerated safetensors JSON header: random dtypes, shapes and offsets for plausible tensor names."""
  names = st.sampled_from(['model.embed_tokens.weight', 'model.norm.weight', 'model.layers.0.mlp.up_proj.weight',
                           '__metadata__', 'x'])
  entry = st.fixed_dictionaries({
      'dtype': st.sampled_from(['F32', 'F16', 'BF16', 'I64', 'U8', 'F64', 'BOOL', 'XX']),
      'shape': st.lists(st.integers(0, 2**40), max_size=5),
      'data_offsets': st.lists(st.integers(0, 2**40), min_size=0, max_size=3)})
  return st.dictionaries(names, st.one_of(entry, st.integers(), st.text(max_size=8)), max_size=4)


# ---- outcomes -----------------------------------------------------------------------------------------

class Crash(AssertionError):
  """An input the parsers neither loaded nor refused with the project's clear error."""


def outcome(fn, path) -> str:
  """'loaded' or 'clear error: <kind>'; raises Crash for anything else."""
  try:
    fn()
    return 'loaded'
  except (ValueError, FileNotFoundError) as e:
    if str(path) not in str(e):
      raise Crash(f'{type(e).__name__} without the file name: {e}') from e
    return f'clear error: {type(e).__name__}'
  except Exception as e:  # noqa: BLE001 - the point: every other exception is a failure
    raise Crash(f'{type(e).__name__}: {e}') from e


def load_gguf_all(path):
  from sleep_jax.io import Tokenizer, load_gguf
  load_gguf(path)
  Tokenizer.from_gguf(path)


def run(examples: int, workdir: str | None = None, seed: int | None = 0) -> dict:
  """Fuzz both parsers with `examples` inputs each; returns {parser: {outcome: count, 'seconds': s}}.
  Raises Crash (after hypothesis shrinks it) on the first input that is neither loaded nor a clear error."""
  import hypothesis
  from hypothesis import HealthCheck, given, settings, strategies as st

  from sleep_jax.io import load_hf
  own = workdir is None
  workdir = Path(tempfile.mkdtemp(prefix='fuzz-') if own else workdir)
  try:
    g_seed = write_gguf_seed(workdir / 'seed.gguf')
    s_seed, c_seed = write_hf_seed(workdir / 'seed_hf')
    cfg_json = json.loads(c_seed)
    out = {'gguf': collections.Counter(), 'safetensors': collections.Counter()}
    opts = dict(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    same = (lambda f: hypothesis.seed(seed)(f)) if seed is not None else (lambda f: f)
    g_path, head = workdir / 'in.gguf', gguf_header_len(workdir / 'seed.gguf')

    @same
    @settings(**opts)
    @given(st.data())
    def fuzz_gguf(data):
      m = data.draw(mutations(st, head))
      g_path.write_bytes(m(g_seed, data))
      out['gguf'][outcome(lambda: load_gguf_all(g_path), g_path)] += 1

    folder = workdir / 'in_hf'
    folder.mkdir(exist_ok=True)

    @same
    @settings(**opts)
    @given(st.data())
    def fuzz_safetensors(data):
      what = data.draw(st.sampled_from(['bytes', 'header', 'config']))
      weights, config = s_seed, c_seed
      if what == 'bytes':
        weights = data.draw(mutations(st, 8 + int.from_bytes(s_seed[:8], 'little')))(s_seed, data)
      elif what == 'header':
        h = json.dumps(data.draw(safetensors_header(st))).encode()
        weights = len(h).to_bytes(8, 'little') + h + s_seed[8 + int.from_bytes(s_seed[:8], 'little'):]
      else:
        c = dict(cfg_json)
        for k in data.draw(st.lists(st.sampled_from(sorted(cfg_json)), min_size=1, max_size=3)):
          c[k] = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                                     st.text(max_size=8), st.just({'rope_type': 'yarn'})))
        config = json.dumps(c).encode() if data.draw(st.booleans()) else json.dumps(c).encode()[:-data.draw(st.integers(1, 9))]
      (folder / 'model.safetensors').write_bytes(weights)
      (folder / 'config.json').write_bytes(config)
      out['safetensors'][f'{what}: ' + outcome(lambda: load_hf(folder), folder)] += 1

    res = {}
    for name, fn in (('gguf', fuzz_gguf), ('safetensors', fuzz_safetensors)):
      t0 = time.perf_counter()
      fn()
      res[name] = dict(out[name], seconds=time.perf_counter() - t0)
    return res
  finally:
    if own:
      shutil.rmtree(workdir, ignore_errors=True)


def main(argv):
  del argv
  import platform

  import jax

  from sleep_jax.results import write_json
  t0 = time.perf_counter()
  res = run(_EXAMPLES.value, seed=_SEED.value)
  lines = [f'Fuzzing the model-file parsers: {_EXAMPLES.value} hypothesis inputs per parser (seed {_SEED.value}), '
           f'{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__}',
           '', '| parser | outcome | inputs |', '|---|---|---:|']
  for parser, counts in res.items():
    for k, v in sorted(counts.items()):
      if k != 'seconds':
        lines.append(f'| {parser} | {k} | {v} |')
    lines.append(f'| {parser} | crashes (anything but a clear error) | 0 |')
  lines.append(f'\n{sum(v for c in res.values() for k, v in c.items() if k != "seconds")} inputs, 0 crashes, '
               f'{time.perf_counter() - t0:.0f} s')
  print('\n'.join(lines))
  write_json(_OUT.value, {'examples_per_parser': _EXAMPLES.value, 'seed': _SEED.value, 'results': res})


if __name__ == '__main__':
  from absl import app, flags
  _EXAMPLES = flags.DEFINE_integer('examples', 10_000, 'hypothesis inputs per parser')
  _SEED = flags.DEFINE_integer('seed', 0, 'hypothesis seed (the same seed draws the same inputs)')
  _OUT = flags.DEFINE_string('out', 'runs/fuzz.json', 'JSON results')
  app.run(main)
