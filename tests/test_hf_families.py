"""The paper's model families from Hugging Face folders: Llama-3.x (llama3 RoPE scaling), Qwen2.5 (q/k/v biases,
yarn), Qwen3 (q/k RMSNorm, explicit head_dim), Llama with o/MLP biases and linear scaling.

Each case writes a tiny random checkpoint as transformers writes it (config.json + model.safetensors, some bf16)
and checks our logits against a float64 numpy forward written here from the HF tensors and HF conventions
([out, in] weights, rotate-half RoPE with the scaled inv_freq, GQA by repeating kv heads), independent of
sleep_jax.models. The RoPE frequencies are checked against hand-computed values first.
"""
import json
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sleep_jax.io import load_hf, save_hf
from sleep_jax.io.hf import hf_config
from sleep_jax.models.layers import ModelConfig, rope_frequencies
from sleep_jax.models.llama import Transformer, init_cache

V, D, NL, H, K, F = 48, 32, 2, 4, 2, 64
SEQ = np.array([3, 17, 5, 40, 22, 9, 31, 11, 2, 45, 7, 28], np.int32)   # positions 0..11 (past yarn/llama3 limits)


# ---- checkpoint cases (config.json as each family's transformers config writes it) -------------------------------
def _config(family, **kw):
  c = {'hidden_size': D, 'intermediate_size': F, 'num_hidden_layers': NL, 'num_attention_heads': H,
       'num_key_value_heads': K, 'vocab_size': V, 'hidden_act': 'silu', 'max_position_embeddings': 128,
       'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'initializer_range': 0.02, 'use_cache': True,
       'transformers_version': '4.51.0', 'bos_token_id': 1, 'eos_token_id': 2}
  if family == 'llama':
    c.update(architectures=['LlamaForCausalLM'], model_type='llama', attention_bias=False, attention_dropout=0.0,
             mlp_bias=False, pretraining_tp=1, head_dim=D // H)
  elif family == 'qwen2':
    c.update(architectures=['Qwen2ForCausalLM'], model_type='qwen2', use_sliding_window=False, sliding_window=4096,
             max_window_layers=NL, attention_dropout=0.0)
  else:
    c.update(architectures=['Qwen3ForCausalLM'], model_type='qwen3', attention_bias=False, use_sliding_window=False,
             sliding_window=None, max_window_layers=NL, head_dim=24)
  c.update(kw)
  return c


CASES = {
    # Llama-3.2: llama3 scaling (original context 8 so the scaled band covers these short positions), tied, bf16.
    'llama3': (_config('llama', tie_word_embeddings=True, torch_dtype='bfloat16', rope_theta=10000.0,
                       rope_scaling={'factor': 4.0, 'high_freq_factor': 4.0, 'low_freq_factor': 1.0,
                                     'original_max_position_embeddings': 8, 'rope_type': 'llama3'}), 'bfloat16'),
    # Qwen2.5: q/k/v biases, untied, float32.
    'qwen2.5': (_config('qwen2', tie_word_embeddings=False, torch_dtype='float32', rope_scaling=None), 'float32'),
    # Qwen2.5 with its long-context yarn option, in the old 'type' spelling.
    'qwen2.5-yarn': (_config('qwen2', tie_word_embeddings=True, torch_dtype='float32',
                             rope_scaling={'factor': 4.0, 'original_max_position_embeddings': 64, 'type': 'yarn'}),
                     'float32'),
    # Qwen3: q/k norm, head_dim 24 != hidden / heads, bf16, with its yarn option in transformers>=5's
    # rope_parameters (which also carries rope_theta).
    'qwen3': (_config('qwen3', tie_word_embeddings=True, torch_dtype='bfloat16', rope_theta=None,
                      rope_parameters={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64,
                                       'rope_theta': 1000000.0}), 'bfloat16'),
    # Llama with attention_bias (q/k/v/o) + mlp_bias and linear scaling.
    'llama-bias': (_config('llama', tie_word_embeddings=False, torch_dtype='float32', attention_bias=True,
                           mlp_bias=True, rope_scaling={'rope_type': 'linear', 'factor': 2.0}), 'float32'),
}


def _tensors(conf, seed):
  """Random HF tensors for `conf` ([out, in]; norms around 1; biases present where the family has them)."""
  rng = np.random.default_rng(seed)
  E = conf.get('head_dim') or D // H
  fam = conf['model_type']
  qkv_bias = fam == 'qwen2' or conf.get('attention_bias', False)
  o_bias = fam != 'qwen2' and conf.get('attention_bias', False)
  w = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
  norm = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
  t = {'model.embed_tokens.weight': w(V, D), 'model.norm.weight': norm(D)}
  if not conf['tie_word_embeddings']:
    t['lm_head.weight'] = w(V, D)
  for i in range(NL):
    p = f'model.layers.{i}.'
    t.update({p + 'input_layernorm.weight': norm(D), p + 'post_attention_layernorm.weight': norm(D),
              p + 'self_attn.q_proj.weight': w(H * E, D), p + 'self_attn.k_proj.weight': w(K * E, D),
              p + 'self_attn.v_proj.weight': w(K * E, D), p + 'self_attn.o_proj.weight': w(D, H * E),
              p + 'mlp.gate_proj.weight': w(F, D), p + 'mlp.up_proj.weight': w(F, D),
              p + 'mlp.down_proj.weight': w(D, F)})
    if qkv_bias:
      t.update({p + 'self_attn.q_proj.bias': w(H * E), p + 'self_attn.k_proj.bias': w(K * E),
                p + 'self_attn.v_proj.bias': w(K * E)})
    if o_bias:
      t[p + 'self_attn.o_proj.bias'] = w(D)
    if conf.get('mlp_bias'):
      t.update({p + 'mlp.gate_proj.bias': w(F), p + 'mlp.up_proj.bias': w(F), p + 'mlp.down_proj.bias': w(D)})
    if fam == 'qwen3':
      t.update({p + 'self_attn.q_norm.weight': norm(E), p + 'self_attn.k_norm.weight': norm(E)})
  return t


def write_checkpoint(folder, conf, dtype, seed=0):
  from safetensors.numpy import save_file
  folder.mkdir(parents=True)
  conf = {k: v for k, v in conf.items() if v is not None or k in ('rope_scaling', 'sliding_window', 'rope_theta')}
  (folder / 'config.json').write_text(json.dumps(conf, indent=2))
  t = _tensors(conf, seed)
  if dtype == 'bfloat16':
    t = {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
  save_file(t, folder / 'model.safetensors', metadata={'format': 'pt'})
  return {k: np.asarray(v, np.float64) for k, v in t.items()}   # the exact values on disk


# ---- independent reference ---------------------------------------------------------------------------------------
def ref_inv_freq(conf, E):
  """transformers' ROPE_INIT_FUNCTIONS, written out for the four types (float64)."""
  r = conf.get('rope_parameters') or conf.get('rope_scaling') or {}
  kind = r.get('rope_type', r.get('type', 'default'))
  base = conf.get('rope_theta') or r['rope_theta']
  inv = np.array([1.0 / base ** (2 * i / E) for i in range(E // 2)])
  if kind == 'default':
    return inv, 1.0
  f = r['factor']
  if kind == 'linear':
    return inv / f, 1.0
  if kind == 'llama3':
    old, lo, hi = r['original_max_position_embeddings'], r['low_freq_factor'], r['high_freq_factor']
    out = []
    for x in inv:
      wl = 2 * math.pi / x
      if wl < old / hi:
        out.append(x)
      elif wl > old / lo:
        out.append(x / f)
      else:
        s = (old / wl - lo) / (hi - lo)
        out.append((1 - s) * x / f + s * x)
    return np.array(out), 1.0
  assert kind == 'yarn'
  om = r.get('original_max_position_embeddings', conf['max_position_embeddings'])
  cdim = lambda rot: E * math.log(om / (rot * 2 * math.pi)) / (2 * math.log(base))
  lo, hi = max(math.floor(cdim(r.get('beta_fast', 32))), 0), min(math.ceil(cdim(r.get('beta_slow', 1))), E - 1)
  out = []
  for i, x in enumerate(inv):
    ramp = min(max((i - lo) / ((hi - lo) or 0.001), 0.0), 1.0)
    out.append(x / f * ramp + x * (1 - ramp))
  return np.array(out), r.get('attention_factor', 0.1 * math.log(f) + 1.0)


def ref_logits(conf, t, tokens):
  """float64 forward of an HF Llama / Qwen2 / Qwen3 checkpoint's tensors: [L, V] logits."""
  E = conf.get('head_dim') or D // H
  eps = conf['rms_norm_eps']
  rms = lambda x, wgt: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * wgt
  lin = lambda x, name: x @ t[name + '.weight'].T + t.get(name + '.bias', 0.0)
  inv, att = ref_inv_freq(conf, E)
  L = len(tokens)
  ang = np.arange(L)[:, None] * inv[None]
  cos, sin = np.concatenate([np.cos(ang)] * 2, -1)[:, None] * att, np.concatenate([np.sin(ang)] * 2, -1)[:, None] * att
  rot = lambda x: np.concatenate([-x[..., E // 2:], x[..., :E // 2]], -1)
  x = t['model.embed_tokens.weight'][tokens]
  for i in range(conf['num_hidden_layers']):
    p = f'model.layers.{i}.'
    h = rms(x, t[p + 'input_layernorm.weight'])
    q = lin(h, p + 'self_attn.q_proj').reshape(L, H, E)
    k = lin(h, p + 'self_attn.k_proj').reshape(L, K, E)
    v = lin(h, p + 'self_attn.v_proj').reshape(L, K, E)
    if p + 'self_attn.q_norm.weight' in t:
      q, k = rms(q, t[p + 'self_attn.q_norm.weight']), rms(k, t[p + 'self_attn.k_norm.weight'])
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)
    s = np.einsum('lhe,the->hlt', q, k) / math.sqrt(E)
    s = np.where(np.tril(np.ones((L, L), bool))[None], s, -np.inf)
    pr = np.exp(s - s.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    o = np.einsum('hlt,the->lhe', pr, v).reshape(L, H * E)
    x = x + lin(o, p + 'self_attn.o_proj')
    h = rms(x, t[p + 'post_attention_layernorm.weight'])
    g = lin(h, p + 'mlp.gate_proj')
    x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + 'mlp.up_proj'), p + 'mlp.down_proj')
  x = rms(x, t['model.norm.weight'])
  return x @ t.get('lm_head.weight', t['model.embed_tokens.weight']).T


def assert_close(got, want, rel=1e-4):
  err = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
  assert err < rel, f'relative error {err:.2e}'


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  """name -> (folder, config dict, float64 tensors) for every case, written once."""
  root = tmp_path_factory.mktemp('hf')
  out = {}
  for seed, (name, (conf, dtype)) in enumerate(CASES.items()):
    t = write_checkpoint(root / name, conf, dtype, seed)
    out[name] = (root / name, json.loads((root / name / 'config.json').read_text()), t)
  return out


# ---- tests -------------------------------------------------------------------------------------------------------
def test_rope_frequencies_hand_values():
  # llama3, E=16, base 1e4, factor 4, low 1, high 4, original 8: inv_freq[0]=1 has wavelength 2pi in the medium
  # band (2, 8): smooth s = (8/2pi - 1)/3 and (1-s)/4 + s = 1/pi exactly; inv_freq[1] = 1e4^(-1/8) has
  # wavelength 19.9 > 8: divided by 4; the rest too.
  c = ModelConfig(V, D, NL, H, K, 16, F, rope_type='llama3', rope_factor=4.0, rope_low_freq_factor=1.0,
                  rope_high_freq_factor=4.0, rope_original_max_len=8)
  inv, att = rope_frequencies(c)
  np.testing.assert_allclose(inv[:2], [1 / math.pi, 10000 ** -0.125 / 4], rtol=1e-6)
  assert att == 1.0
  # yarn, factor 4, original 64: correction range [floor(-0.99)->0, ceil(2.016)=3], ramp i/3; attention 1+0.1 ln 4.
  c = ModelConfig(V, D, NL, H, K, 16, F, rope_type='yarn', rope_factor=4.0, rope_original_max_len=64)
  inv, att = rope_frequencies(c)
  p = 10000 ** (-np.arange(8) / 8)
  np.testing.assert_allclose(inv[:4], [1.0, p[1] * (2 / 3 + 1 / 12), p[2] * (1 / 3 + 2 / 12), p[3] / 4], rtol=1e-6)
  np.testing.assert_allclose(inv[4:], p[4:] / 4, rtol=1e-6)
  assert att == pytest.approx(1.1386294361)
  # linear: every frequency / factor; default: none.
  c = ModelConfig(V, D, NL, H, K, 16, F, rope_type='linear', rope_factor=2.0)
  np.testing.assert_allclose(rope_frequencies(c)[0], p / 2, rtol=1e-6)
  assert rope_frequencies(ModelConfig(V, D, NL, H, K, 16, F)) == (None, 1.0)
  for name, (conf, _) in CASES.items():   # the test's own reference agrees with the model's frequencies
    cfg = ModelConfig(V, D, NL, H, K, conf.get('head_dim') or D // H, F, **_rope_kw(name))
    inv, att = rope_frequencies(cfg)
    want, watt = ref_inv_freq(conf, cfg.head_dim)
    np.testing.assert_allclose(want if inv is None else inv, want, rtol=1e-6)
    assert att == pytest.approx(watt)


def _rope_kw(name):
  return {'llama3': dict(rope_type='llama3', rope_factor=4.0, rope_original_max_len=8),
          'qwen2.5-yarn': dict(rope_type='yarn', rope_factor=4.0, rope_original_max_len=64),
          'qwen3': dict(rope_base=1e6, rope_type='yarn', rope_factor=4.0, rope_original_max_len=64),
          'llama-bias': dict(rope_type='linear', rope_factor=2.0)}.get(name, {})


@pytest.mark.parametrize('name', list(CASES))
def test_family_logits_match_numpy_reference(ckpts, name):
  folder, conf, t = ckpts[name]
  cfg, params = load_hf(folder)
  fam = conf['model_type']
  assert (cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias, cfg.qk_norm) == (
      fam == 'qwen2' or conf.get('attention_bias', False), conf.get('attention_bias', False),
      conf.get('mlp_bias', False), fam == 'qwen3')
  assert cfg.num_params() == sum(a.size for a in t.values())
  logits = Transformer(cfg).apply({'params': params}, jnp.asarray(SEQ[None]))[0][0]
  want = ref_logits(conf, t, SEQ)
  assert_close(logits, want)
  if cfg.rope_type != 'default':   # the scaling matters at these positions: plain RoPE would fail the check
    plain = {**conf, 'rope_scaling': None, 'rope_parameters': None, 'rope_theta': cfg.rope_base}
    assert np.abs(ref_logits(plain, t, SEQ) - want).max() / np.abs(want).max() > 1e-2


def test_kv_cache_decoding_matches_full_forward(ckpts):
  """Prefill + one-token decode steps through the KV cache with q/k norm and yarn (biases: the sampler test)."""
  for name in ('qwen3',):
    folder, conf, t = ckpts[name]
    cfg, params = load_hf(folder)
    apply = jax.jit(Transformer(cfg).apply)
    T, P = len(SEQ), 8
    cache = init_cache(cfg, 1, T)
    slots = jnp.arange(T)
    mask = (slots[None, None, :] <= jnp.arange(P)[None, :, None])
    out, cache = apply({'params': params}, jnp.asarray(SEQ[None, :P]), jnp.arange(P)[None], mask, cache, 0)
    rows = [out[0]]
    for i in range(P, T):
      step, cache = apply({'params': params}, jnp.asarray(SEQ[None, i:i + 1]), jnp.full((1, 1), i),
                          (slots <= i)[None, None], cache, i)
      rows.append(step[0])
    assert_close(np.concatenate(rows), ref_logits(conf, t, SEQ))


@pytest.mark.parametrize('name', list(CASES))
def test_round_trip_bit_identical(ckpts, tmp_path, name):
  folder, conf, _ = ckpts[name]
  cfg, params = load_hf(folder)
  dtype = conf['torch_dtype']
  save_hf(tmp_path / 'a', cfg, params, dtype=dtype)
  written = json.loads((tmp_path / 'a' / 'config.json').read_text())
  assert (written['model_type'], written['architectures']) == (conf['model_type'], conf['architectures'])
  cfg2, params2 = load_hf(tmp_path / 'a')          # load -> save -> load
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  save_hf(tmp_path / 'b', cfg2, params2, dtype=dtype)   # save -> load -> save: the same files, byte for byte
  for f in ('config.json', 'model.safetensors'):
    assert (tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes(), f
  from safetensors.numpy import load_file   # and the tensors are the original checkpoint's, exactly
  orig, again = load_file(folder / 'model.safetensors'), load_file(tmp_path / 'a' / 'model.safetensors')
  assert sorted(orig) == sorted(again)
  for k in orig:
    assert orig[k].dtype == again[k].dtype and np.array_equal(orig[k], again[k]), k


def _edit(ckpts, tmp_path, name, conf_fn=None, tensors_fn=None):
  from safetensors.numpy import load_file, save_file
  folder, conf, _ = ckpts[name]
  out = tmp_path / 'edited'
  out.mkdir()
  (out / 'config.json').write_text(json.dumps(conf_fn(dict(conf)) if conf_fn else conf))
  t = load_file(folder / 'model.safetensors')
  save_file(tensors_fn(t) if tensors_fn else t, out / 'model.safetensors')
  return out


@pytest.mark.parametrize('what,conf_fn,tensors_fn,match', [
    ('sliding window', lambda c: {**c, 'use_sliding_window': True}, None, 'use_sliding_window=true'),
    ('rope type', lambda c: {**c, 'rope_scaling': {'rope_type': 'dynamic', 'factor': 2.0}}, None,
     "rope_type='dynamic'"),
    ('rope key', lambda c: {**c, 'rope_scaling': {'type': 'yarn', 'factor': 2.0, 'mystery': 1}}, None, "'mystery'"),
    ('llama3 missing key', lambda c: {**c, 'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0}}, None,
     'low_freq_factor is required'),
    ('model type', lambda c: {**c, 'model_type': 'gemma'}, None, "model_type='gemma'"),
    ('tensor', None, lambda t: {**t, 'model.layers.0.self_attn.q_norm.weight': np.ones(8, np.float32)},
     r'model\.layers\.0\.self_attn\.q_norm\.weight'),
    ('missing bias', None, lambda t: {k: v for k, v in t.items() if k != 'model.layers.1.self_attn.v_proj.bias'},
     r'model\.layers\.1\.self_attn\.v_proj\.bias.*missing'),
])
def test_unsupported_checkpoints_raise_naming_the_problem(ckpts, tmp_path, what, conf_fn, tensors_fn, match):
  with pytest.raises(ValueError, match=match):
    load_hf(_edit(ckpts, tmp_path, 'qwen2.5', conf_fn, tensors_fn))


def test_export_refuses_configs_no_family_builds(tmp_path):
  cfg = ModelConfig(V, D, NL, H, K, 8, F, qkv_bias=True, mlp_bias=True)   # q/k/v biases without o, with MLP biases
  with pytest.raises(ValueError, match='no Hugging Face family'):
    hf_config(cfg)
  with pytest.raises(ValueError, match="dtype='int8'"):
    save_hf(tmp_path / 'x', ModelConfig(V, D, NL, H, K, 8, F), {}, dtype='int8')


# ---- tokenizer: base models and thinking ------------------------------------------------------------------------
QWEN3_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
              "{% endif %}")
WORDS = ['<s>', '</s>', '<|im_start|>', '<|im_end|>', '<think>', '</think>', 'user', 'assistant', 'the', 'cat',
         'sat', 'on', 'mat', '\n', 'a', 'dog']


def write_tokenizer(folder, chat_template=None, add_bos=None, bos_post_processor=False):
  from tokenizers import AddedToken, Tokenizer as HFTokenizer, models, pre_tokenizers, processors
  tk = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token='</s>'))
  tk.pre_tokenizer = pre_tokenizers.Split(pattern=' ', behavior='removed')
  if bos_post_processor:   # Llama-3's way: tokenizer.json prepends the bos, tokenizer_config.json says nothing
    tk.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', 0)])
  tk.add_special_tokens([AddedToken(w, special=True, normalized=False) for w in WORDS[:6]])
  tk.add_tokens([AddedToken('\n', normalized=False)])
  tk.save(str(folder / 'tokenizer.json'))
  conf = {'bos_token': '<s>', 'eos_token': '</s>', 'chat_template': chat_template}
  if add_bos is not None:
    conf['add_bos_token'] = add_bos
  (folder / 'tokenizer_config.json').write_text(json.dumps({k: v for k, v in conf.items() if v is not None}))


def test_enable_thinking_reaches_the_template(tmp_path):
  from sleep_jax.io import Tokenizer
  write_tokenizer(tmp_path, QWEN3_LIKE, add_bos=False)
  msgs = [{'role': 'user', 'content': 'the cat'}]
  tok = Tokenizer.load(tmp_path)
  assert tok.apply_chat_template(msgs).endswith('<|im_start|>assistant\n<think>\n\n</think>\n\n')   # default off
  tok.enable_thinking = True
  assert tok.apply_chat_template(msgs).endswith('<|im_start|>assistant\n')
  assert not tok.is_base and not tok.add_bos


def test_base_tokenizer_takes_bos_from_the_post_processor(tmp_path):
  from sleep_jax.io import Tokenizer
  write_tokenizer(tmp_path, bos_post_processor=True)
  tok = Tokenizer.load(tmp_path)
  assert tok.is_base and tok.add_bos
  assert tok.chat_tokens([{'role': 'user', 'content': 'the cat'}, {'role': 'assistant', 'content': ' sat'}]) == \
      [0, 8, 9, 10]


def test_base_model_without_chat_template_samples(ckpts, tmp_path):
  """A base checkpoint (no chat template) builds with model.source=hf and samples a plainly rendered prompt; the
  greedy tokens and their log-probabilities match the numpy reference; enable_thinking is plumbed to the tokenizer."""
  import shutil

  from sleep_jax import build as build_lib
  from sleep_jax.sampling import Sampler
  from tests import helpers
  folder, conf, t = ckpts['qwen2.5-yarn']
  shutil.copytree(folder, tmp_path / 'base')
  write_tokenizer(tmp_path / 'base')   # no add_bos_token key and no post-processor: no bos
  config = helpers.tiny_config(source='hf', path=str(tmp_path / 'base'), enable_thinking=True)
  b = build_lib.build(config, mesh=helpers.mesh())
  assert b.tokenizer.is_base and b.tokenizer.enable_thinking and not b.tokenizer.add_bos
  prompt = b.tokenizer.chat_tokens([{'role': 'user', 'content': 'the cat sat on'}])
  assert prompt == [WORDS.index(w) for w in ('the', 'cat', 'sat', 'on')]
  b.tokenizer.add_bos = True
  assert b.tokenizer.chat_tokens([{'role': 'user', 'content': 'the cat'}]) == [0, 8, 9]
  sampler = Sampler(b.model, b.cfg, pad_id=b.tokenizer.pad_id, eos_ids=(), prompt_buckets=(8,), gen_buckets=(4,))
  out = sampler(b.params, [prompt], max_new_tokens=4, rng=jax.random.key(0), temperature=0.0)
  seq = list(prompt)
  for j in range(4):
    lp = ref_logits(conf, t, np.array(seq))[-1]
    lp = lp - lp.max() - np.log(np.exp(lp - lp.max()).sum())
    assert out.tokens[0, j] == int(np.argmax(lp))
    assert abs(out.logprobs[0, j] - lp.max()) < 1e-3
    seq.append(int(out.tokens[0, j]))


def test_new_params_carry_logical_axes():
  """Biases and q/k norm scales are sharded by name like every other parameter (abstract init, nothing allocated)."""
  import flax.linen as nn
  from flax import traverse_util
  from sleep_jax.build import abstract_params
  cfg = ModelConfig(V, D, 1, H, K, 8, F, qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True)
  boxed = traverse_util.flatten_dict(abstract_params(Transformer(cfg)), sep='/')
  axes = {k: v.names for k, v in boxed.items() if isinstance(v, nn.Partitioned)}
  assert len(axes) == len(boxed)
  want = {'attn/bq': ('heads', 'head_dim'), 'attn/bk': ('kv_heads', 'head_dim'), 'attn/bv': ('kv_heads', 'head_dim'),
          'attn/bo': ('embed',), 'attn/q_norm/scale': ('head_dim',), 'attn/k_norm/scale': ('head_dim',),
          'mlp/b_gate': ('mlp',), 'mlp/b_up': ('mlp',), 'mlp/b_down': ('embed',)}
  assert {k: axes['layers_0/' + k] for k in want} == want
  assert sum(math.prod(v.value.shape) for v in boxed.values()) == cfg.num_params()
