import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sleep_jax import build as build_lib
from sleep_jax.models.llama import ModelConfig, Transformer, init_cache
from tests.helpers import random_params, tiny_model


def test_smollm2_full_size_shapes_without_allocating():
  cfg = build_lib.model_config_from(base.smollm2_model())
  abstract = build_lib.abstract_params(Transformer(cfg))
  shapes = jax.tree.map(lambda x: x.shape, jax.tree.map(lambda x: x.value, abstract,
                                                          is_leaf=lambda x: hasattr(x, 'value')))
  n = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
  assert n == cfg.num_params() == 134_515_008   # SmolLM2-135M with tied embeddings
  assert shapes['layers_29']['attn']['wk'] == (576, 3, 64)
  assert shapes['embed'] == (49152, 576)
  assert 'lm_head' not in shapes


def test_bad_model_config_names_the_field():
  with pytest.raises(ValueError, match='n_heads=5 must be a multiple of model.n_kv_heads=2'):
    ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=5, n_kv_heads=2, head_dim=4, d_ff=8)
  with pytest.raises(ValueError, match='head_dim=3 must be even'):
    ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=3, d_ff=8)


@pytest.mark.parametrize('tie', [True, False])
def test_kv_cache_decoding_matches_full_forward(tie):
  cfg, model = tiny_model(tie_embeddings=tie)
  params = random_params(model)
  toks = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg.vocab_size)
  full, _ = model.apply({'params': params}, toks)
  cache = init_cache(cfg, 2, 16)
  slots = jnp.arange(16)
  # prefill 5 tokens, then one at a time
  mask = (slots[None, None, :] <= jnp.arange(5)[None, :, None]) & (slots < 5)[None, None, :]
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  out, cache = model.apply({'params': params}, toks[:, :5], pos, jnp.broadcast_to(mask, (2, 5, 16)), cache, 0)
  np.testing.assert_allclose(out, full[:, :5], rtol=1e-5, atol=1e-5)
  for t in range(5, 12):
    m = jnp.broadcast_to((slots <= t)[None, None, :], (2, 1, 16))
    out, cache = model.apply({'params': params}, toks[:, t:t + 1], jnp.full((2, 1), t), m, cache, t)
    np.testing.assert_allclose(out[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def test_untied_model_has_lm_head_and_logits_are_float32():
  cfg, model = tiny_model(tie_embeddings=False, dtype='bfloat16')
  params = random_params(model)
  assert params['lm_head'].shape == (cfg.d_model, cfg.vocab_size)
  logits, _ = model.apply({'params': params}, jnp.zeros((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32 and logits.shape == (1, 4, cfg.vocab_size)


def test_packed_segments_do_not_see_each_other():
  from sleep_jax.models.llama import causal_mask
  cfg, model = tiny_model()
  params = random_params(model)
  a, b = [5, 6, 7, 8], [9, 10, 11]
  seq = jnp.asarray([a + b + [0]])
  seg = jnp.asarray([[1] * 4 + [2] * 3 + [0]])
  pos = jnp.asarray([[0, 1, 2, 3, 0, 1, 2, 0]])
  packed, _ = model.apply({'params': params}, seq, pos, causal_mask(seg))
  alone_b, _ = model.apply({'params': params}, jnp.asarray([b]))
  alone_a, _ = model.apply({'params': params}, jnp.asarray([a]))
  np.testing.assert_allclose(packed[0, :4], alone_a[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 4:7], alone_b[0], rtol=1e-5, atol=1e-5)
