"""Streamed loading of a Hugging Face folder (build.py + io/hf.HfReader): every device's slice read straight from
the safetensors file, only the leaves the checkpoint lacks (expert pools, routers) initialised, and the same
parameters, bit for bit, as the former path (load_hf's whole float32 tree, a full random init, then a merge)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import base
from sleep_jax import build, sharding
from sleep_jax import io as sio
from sleep_jax.io import hf
from sleep_jax.io.byte_tokenizer import ByteTokenizer
from sleep_jax.models.llama import ModelConfig

CFG = ModelConfig(vocab_size=260, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                  rope_base=500.0, norm_eps=1e-6, tie_embeddings=False, max_seq_len=128)
MESH = {'data': 1, 'fsdp': 4, 'tensor': 2}


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  abstract = jax.eval_shape(lambda: build.Transformer(CFG).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                        build.nn.meta.unbox(abstract['params']))
  return sio.save_hf(tmp_path_factory.mktemp('hf') / 'ckpt', CFG, params)


def config(folder, **model):
  c = base.base_config()
  c.model.update(dict(source='hf', path=str(folder), **model))
  c.mesh.shape.update(MESH)
  return c


def former_build(c):
  """The former path, written out: whole float32 tree, param_dtype cast, full sharded init, checkpoint leaves in."""
  cfg, host = sio.load_hf(c.model.path)
  cfg = dataclasses.replace(cfg, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
                            n_experts=c.model.n_experts, expert_rank=c.model.expert_rank)
  mesh = sharding.make_mesh(c.mesh.shape)
  rules = sharding.rules_from_config(c.logical_axis_rules)
  model = build.Transformer(cfg)
  fresh, sh = sharding.init_sharded(lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32))['params'], mesh, rules,
                                    jax.random.key(c.seed))
  f, h, s = (traverse_util.flatten_dict(t) for t in (fresh, host, sh))
  return traverse_util.unflatten_dict(
      {k: jax.device_put(h[k].astype(jnp.dtype(cfg.param_dtype)), s[k]) if k in h else v for k, v in f.items()})


def assert_same(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and fa[k].sharding == fb[k].sharding, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg='/'.join(k))


def test_experts_from_hf_without_a_full_init_and_bit_identical_to_the_former_path(folder, monkeypatch):
  c = config(folder, n_experts=2, expert_rank=4, param_dtype='bfloat16')   # the cast to param_dtype included
  monkeypatch.setattr(sio.Tokenizer, 'load', classmethod(lambda cls, path: ByteTokenizer()))
  expected = former_build(c)
  inits, reads = [], []
  real_init, real_read = build._init_missing, hf.HfReader.read
  monkeypatch.setattr(build, '_init_missing', lambda m, paths, *a: inits.append(list(paths)) or real_init(m, paths, *a))
  monkeypatch.setattr(hf.HfReader, 'read', lambda self, path, shape, idx=(): reads.append((path, shape)) or
                      (lambda a: reads.append(a.size) or a)(real_read(self, path, shape, idx)))

  def no_full_init(*a, **k):
    raise AssertionError('build initialised a full random model for a checkpoint source')
  monkeypatch.setattr(sharding, 'init_sharded', no_full_init)
  b = build.build(c)
  assert_same(b.params, expected)
  # Only the expert pools and routers were initialised, once.
  assert len(inits) == 1 and sorted(k[-1] for k in inits[0]) == ['expert_a'] * 2 + ['expert_b'] * 2 + ['router'] * 2
  # Every read is one device's slice: wq (embed over fsdp=4, heads over tensor=2) is read in eighths.
  wq = [n for (p, s), n in zip(reads[::2], reads[1::2]) if p == ('layers_0', 'attn', 'wq')]
  assert wq and max(wq) == 32 * 4 * 8 // 8 and len(wq) == 8
  # The compiled sub-tree init holds only the expert leaves: its outputs are exactly their bytes, and its
  # temporaries stay below the base weights it no longer materialises.
  sh = traverse_util.flatten_dict(b.shardings)
  ma = build._missing_init(b.model, inits[0], {k: sh[k] for k in inits[0]}).lower(jax.random.key(0)).compile() \
      .memory_analysis()
  flat = traverse_util.flatten_dict(b.params)
  expert_bytes = sum(flat[k].size * 2 for k in inits[0])   # bfloat16
  base_bytes = sum(v.size * 2 for k, v in flat.items() if k not in inits[0])
  if ma is not None:   # the CPU backend reports it
    assert ma.output_size_in_bytes <= expert_bytes + 1024 and ma.temp_size_in_bytes < base_bytes / 2


def test_plain_hf_build_matches_load_hf(folder, monkeypatch):
  c = config(folder)
  monkeypatch.setattr(sio.Tokenizer, 'load', classmethod(lambda cls, path: ByteTokenizer()))
  b = build.build(c)
  _, host = sio.load_hf(folder)
  fb, fh = traverse_util.flatten_dict(b.params), traverse_util.flatten_dict(host)
  assert fb.keys() == fh.keys()
  for k in fb:
    np.testing.assert_array_equal(np.asarray(fb[k]), fh[k], err_msg='/'.join(k))


def test_hf_plan_is_load_hf_layout(folder):
  """The seam (hf_plan + HfReader) and load_hf agree leaf for leaf, whole and sliced."""
  cfg, reader = hf.open_hf(folder)
  _, host = sio.load_hf(folder)
  flat = traverse_util.flatten_dict(host)
  assert set(hf.hf_plan(cfg)) == set(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(reader.read(k, v.shape), v)
    idx = tuple(slice(n // 2, n) for n in v.shape)
    np.testing.assert_array_equal(reader.read(k, v.shape, idx), v[idx])


def test_streamed_reader_names_bad_tensors(folder, tmp_path):
  import shutil
  from safetensors.numpy import load_file, save_file
  c = tmp_path / 'c'
  shutil.copytree(folder, c)
  t = load_file(c / 'model.safetensors')
  name = 'model.layers.1.self_attn.k_proj.weight'
  save_file({**t, name: t[name][:-1]}, c / 'model.safetensors')
  with pytest.raises(ValueError, match=f'{name}.*shape'):
    hf.open_hf(c)
  save_file({k: v for k, v in t.items() if k != name}, c / 'model.safetensors')
  with pytest.raises(ValueError, match=f'{name}.*missing'):
    hf.open_hf(c)
  save_file({**t, 'model.layers.0.self_attn.q_proj.bias': np.zeros(32, np.float32)}, c / 'model.safetensors')
  with pytest.raises(ValueError, match='q_proj.bias'):
    hf.open_hf(c)


def test_streamed_reader_reads_a_sharded_checkpoint(folder, tmp_path):
  """model.safetensors.index.json + several files: each tensor is read from the file the index names."""
  import json
  import shutil
  from safetensors.numpy import load_file, save_file
  c = tmp_path / 'c'
  shutil.copytree(folder, c)
  t = load_file(c / 'model.safetensors')
  names = sorted(t)
  shards = {'model-00001-of-00002.safetensors': names[::2], 'model-00002-of-00002.safetensors': names[1::2]}
  for f, ns in shards.items():
    save_file({n: t[n] for n in ns}, c / f)
  (c / 'model.safetensors').unlink()
  (c / 'model.safetensors.index.json').write_text(
      json.dumps({'metadata': {}, 'weight_map': {n: f for f, ns in shards.items() for n in ns}}))
  _, reader = hf.open_hf(c)
  flat = traverse_util.flatten_dict(sio.load_hf(folder)[1])
  for k, v in flat.items():
    np.testing.assert_array_equal(reader.read(k, v.shape), v)
