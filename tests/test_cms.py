"""CMS expert pools: masking is exact (forward and gradient), activation and growth preserve the function,
dreaming switches on one random extra expert per layer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from sleep_jax import growth
from sleep_jax.models import cms as cms_lib
from sleep_jax.models.llama import ModelConfig, Transformer

S, R = 4, 4
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                  n_experts=S, expert_rank=R)
MODEL = Transformer(CFG)
# Growth preserves the function exactly in real arithmetic; in float32 a grown pool (or a batch of 1 vs 2) changes
# the matmul shapes and so XLA's reduction order: logits of size ~4 then differ by a few ulps (1.5e-6 seen in CI).
# 1e-5 keeps a 10x margin below what a wrongly active random expert changes (> 1e-4, asserted below).
PRESERVE_ATOL = 1e-5
TOKS = jax.random.randint(jax.random.key(7), (2, 8), 0, CFG.vocab_size)


def abstract_vars(model):
  return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 1), jnp.int32)), jax.random.key(0))


def random_params(model, seed=0):
  """Non-trivial random params built on the host from the abstract tree (no init compile): weights, routers
  and expert A/B ~ N(0, 0.2^2), norm scales 1 + N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)
  shapes = jax.tree.map(lambda b: b.value.shape, abstract_vars(model)['params'], is_leaf=lambda b: hasattr(b, 'value'))
  return jax.tree.map(lambda s: jnp.asarray((1 + 0.1 * rng.normal(size=s)) if len(s) == 1 else 0.2 * rng.normal(size=s),
                                            jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple))


def set_active(cms, layer, idx, value=True):
  a = cms[f'layers_{layer}']['mlp']['active'].at[idx].set(value)
  return {**cms, f'layers_{layer}': {'mlp': {'active': a}}}


@jax.jit
def fwd(params, cms, toks):
  return MODEL.apply({'params': params, 'cms': cms}, toks)[0]


@functools.partial(jax.jit, static_argnums=0)
def fwd_cfg(cfg, variables, toks):
  return Transformer(cfg).apply(variables, toks)[0]


@jax.jit
def fwd_dream(params, cms, toks, key):
  (logits, _), inter = MODEL.apply({'params': params, 'cms': cms}, toks, rngs={'dream': key},
                                   mutable=['intermediates'])
  return logits, inter['intermediates']


@pytest.fixture(scope='module')
def base():
  params, cms = random_params(MODEL), cms_lib.init_cms_state(CFG)
  cms = set_active(set_active(cms, 0, 0), 0, 2)   # layer 0: experts 0, 2 active; layer 1: expert 1
  cms = set_active(cms, 1, 1)
  return params, cms


def garbage(params, layer, idx, a, b, r):
  """Host-side copy of params with expert `idx` of `layer` overwritten."""
  mlp = {k: np.array(v) for k, v in params[f'layers_{layer}']['mlp'].items()}
  mlp['expert_a'][idx], mlp['expert_b'][idx], mlp['router'][:, idx] = a, b, r
  return {**params, f'layers_{layer}': {**params[f'layers_{layer}'], 'mlp': mlp}}


def test_layout_and_init(base):
  params, cms = base
  mlp = params['layers_0']['mlp']
  assert {k: v.shape for k, v in mlp.items()} == {
      'w_gate': (32, 64), 'w_up': (32, 64), 'w_down': (64, 32),
      'router': (32, S), 'expert_a': (S, 32, R), 'expert_b': (S, R, 32)}
  abstract = abstract_vars(MODEL)
  boxed = abstract['params']['layers_1']['mlp']
  assert boxed['router'].names == ('embed', 'expert')
  assert boxed['expert_a'].names == ('expert', 'embed', 'rank')
  assert boxed['expert_b'].names == ('expert', 'rank', 'embed')
  assert abstract['cms']['layers_1']['mlp']['active'].dtype == jnp.bool_
  fresh = cms_lib.init_cms_state(CFG)
  assert cms_lib.split_variables(abstract)[1].keys() == fresh.keys()
  assert jax.tree.map(lambda x: (x.shape, x.dtype), fresh) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                            abstract['cms'])
  assert not any(bool(x.any()) for x in jax.tree.leaves(fresh))
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n == CFG.num_params()


def test_no_experts_param_tree_is_unchanged():
  cfg0 = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64)
  abstract = abstract_vars(Transformer(cfg0))
  assert set(abstract) == {'params'}
  flat = {'/'.join(k): (v.value.shape, v.names)
          for k, v in traverse_util.flatten_dict(abstract['params']).items()}
  expected = {'embed': ((64, 32), ('vocab', 'embed')), 'final_norm/scale': ((32,), ('norm',))}
  for i in range(2):
    expected.update({
        f'layers_{i}/attn/wq': ((32, 4, 8), ('embed', 'heads', 'head_dim')),
        f'layers_{i}/attn/wk': ((32, 2, 8), ('embed', 'kv_heads', 'head_dim')),
        f'layers_{i}/attn/wv': ((32, 2, 8), ('embed', 'kv_heads', 'head_dim')),
        f'layers_{i}/attn/wo': ((4, 8, 32), ('heads', 'head_dim', 'embed')),
        f'layers_{i}/attn_norm/scale': ((32,), ('norm',)),
        f'layers_{i}/mlp_norm/scale': ((32,), ('norm',)),
        f'layers_{i}/mlp/w_gate': ((32, 64), ('embed', 'mlp')),
        f'layers_{i}/mlp/w_up': ((32, 64), ('embed', 'mlp')),
        f'layers_{i}/mlp/w_down': ((64, 32), ('mlp', 'embed'))})
  assert flat == expected
  assert cms_lib.init_cms_state(cfg0) == {}


def test_bad_expert_config_names_the_fields():
  with pytest.raises(ValueError, match='model.n_experts=2 and model.expert_rank=0'):
    ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=4, d_ff=8, n_experts=2)


def test_inactive_expert_contributes_nothing_and_gets_no_gradient(base):
  params, cms = base
  # expert 3 is inactive in both layers, expert 1 in layer 0: fill them with garbage, NaN and Inf included
  junk = garbage(garbage(params, 0, 3, jnp.inf, jnp.nan, 1e30), 1, 3, 1e30, -jnp.inf, jnp.nan)
  junk = garbage(junk, 0, 1, 1e4 * np.random.default_rng(3).normal(size=(32, R)), 1e4, -1e4)
  ref = fwd(params, cms, TOKS)
  np.testing.assert_array_equal(np.asarray(fwd(junk, cms, TOKS)), np.asarray(ref))

  def loss(p):
    return jnp.mean(jax.nn.log_softmax(MODEL.apply({'params': p, 'cms': cms}, TOKS)[0])[..., 5])

  g = jax.device_get(jax.jit(jax.grad(loss))(junk))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
  for layer, idx in ((0, 3), (1, 3), (0, 1)):
    m = g[f'layers_{layer}']['mlp']
    assert not np.asarray(m['expert_a'][idx]).any() and not np.asarray(m['expert_b'][idx]).any()
    assert not np.asarray(m['router'][:, idx]).any()
  # active experts do learn
  for layer, idx in ((0, 0), (0, 2), (1, 1)):
    m = g[f'layers_{layer}']['mlp']
    assert np.abs(m['expert_b'][idx]).max() > 0 and np.abs(m['router'][:, idx]).max() > 0


def test_activation_preserves_logits(base):
  params, cms = base
  ref = fwd(params, cms, TOKS)
  p1, c1, idx = cms_lib.activate_expert(params, cms, 0)
  assert idx == 1
  assert bool(c1['layers_0']['mlp']['active'][1]) and not np.asarray(p1['layers_0']['mlp']['expert_b'][1]).any()
  p2, c2, idx2 = cms_lib.activate_expert(p1, c1, 1, index=3)
  assert idx2 == 3
  np.testing.assert_allclose(np.asarray(fwd(p2, c2, TOKS)), np.asarray(ref), atol=PRESERVE_ATOL, rtol=0)
  # the untouched leaves are the same arrays
  assert p2['layers_0']['mlp']['expert_a'] is params['layers_0']['mlp']['expert_a']
  # activating with the random B instead (what dreaming does) changes the function
  assert np.abs(np.asarray(fwd(params, c2, TOKS)) - np.asarray(ref)).max() > 1e-4


def test_activation_errors_name_layer_and_pool(base):
  params, cms = base
  with pytest.raises(ValueError, match='layer 0: expert 2 is already active'):
    cms_lib.activate_expert(params, cms, 0, index=2)
  p, c = params, cms
  for _ in range(2):
    p, c, _ = cms_lib.activate_expert(p, c, 0)
  with pytest.raises(ValueError, match=r'layer 0: expert pool is full \(4 of 4 active\)'):
    cms_lib.activate_expert(p, c, 0)
  with pytest.raises(ValueError, match='out of range for a pool of size 4'):
    cms_lib.activate_expert(params, cms, 1, index=4)
  with pytest.raises(ValueError, match='layer=5 has no expert pool'):
    cms_lib.activate_expert(params, cms, 5)
  p, c = cms_lib.deactivate_expert(params, cms, 0, 2)
  assert not bool(c['layers_0']['mlp']['active'][2]) and not np.asarray(p['layers_0']['mlp']['router'][:, 2]).any()


def test_grow_pool_preserves_logits_old_experts_and_optimizer_slots(base):
  """growth.grow_pool, the one way to grow a pool: parameters, active masks, optimizer slots and lineage."""
  params, cms = base
  tx = optax.adam(1e-3)
  opt = tx.init(params)
  opt = jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x + 3, opt)   # non-zero slots, count 3
  cfg2, p2, c2, opt2, lineage = growth.grow_pool(
      CFG, params, cms, jax.random.key(5), n_experts=S + 2, slots=opt,
      slots_template=lambda p, c: jax.eval_shape(tx.init, p), note={'from': S, 'to': S + 2, 'sleep': 3})
  assert (cfg2.n_experts, cfg2.expert_rank) == (S + 2, R)
  assert lineage == [{'op': 'grow_experts', 'args': {'n_experts': S + 2}, 'from': S, 'to': S + 2, 'sleep': 3}]
  assert growth.config_from_meta(growth.lineage_meta(CFG, lineage)) == cfg2   # notes do not disturb replay
  _, replayed = growth.apply_lineage(CFG, params, lineage, jax.random.key(5))
  for k, v in traverse_util.flatten_dict(p2).items():
    np.testing.assert_array_equal(v, traverse_util.flatten_dict(replayed)[k], err_msg='/'.join(k))
  mu, mu2 = opt[0].mu, opt2[0].mu
  assert int(opt2[0].count) == 3
  for i in range(2):
    old, new = params[f'layers_{i}']['mlp'], p2[f'layers_{i}']['mlp']
    assert new['expert_a'].shape == (S + 2, 32, R) and new['router'].shape == (32, S + 2)
    np.testing.assert_array_equal(new['expert_a'][:S], old['expert_a'])
    np.testing.assert_array_equal(new['expert_b'][:S], old['expert_b'])
    np.testing.assert_array_equal(new['router'][:, :S], old['router'])
    np.testing.assert_array_equal(new['w_up'], old['w_up'])
    act = np.asarray(c2[f'layers_{i}']['mlp']['active'])
    np.testing.assert_array_equal(act[:S], np.asarray(cms[f'layers_{i}']['mlp']['active']))
    assert not act[S:].any()
    assert np.abs(new['expert_b'][S:]).max() > 0      # fresh random B: dreaming can inject novelty
    m, m2 = mu[f'layers_{i}']['mlp'], mu2[f'layers_{i}']['mlp']
    np.testing.assert_array_equal(m2['expert_a'][:S], m['expert_a'])
    np.testing.assert_array_equal(m2['router'][:, :S], m['router'])
    assert not np.asarray(m2['expert_a'][S:]).any() and not np.asarray(m2['router'][:, S:]).any()   # Adam init
    np.testing.assert_array_equal(m2['w_up'], m['w_up'])
  ref = fwd(params, cms, TOKS)
  out = fwd_cfg(cfg2, {'params': p2, 'cms': c2}, TOKS)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=PRESERVE_ATOL, rtol=0)
  # the new experts activate like any other, function-preserving
  p3, c3, idx = cms_lib.activate_expert(p2, c2, 1, index=S + 1)
  out3 = fwd_cfg(cfg2, {'params': p3, 'cms': c3}, TOKS)
  np.testing.assert_allclose(np.asarray(out3), np.asarray(ref), atol=PRESERVE_ATOL, rtol=0)


def test_grow_from_a_plain_model_adds_the_pool(base):
  """A pretrained n_experts=0 tree grows into the CMS layout; all inactive -> the base model's function."""
  params, _ = base
  plain = {k: ({**v, 'mlp': {n: w for n, w in v['mlp'].items() if n.startswith('w_')}} if 'mlp' in v else v)
           if isinstance(v, dict) else v for k, v in params.items()}
  cfg0 = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64)
  with pytest.raises(ValueError, match='pass expert_rank to create one'):
    growth.grow_pool(cfg0, plain, {}, jax.random.key(0), n_experts=2)
  cfg1, p1, c1, _, _ = growth.grow_pool(cfg0, plain, {}, jax.random.key(0), n_experts=S, expert_rank=R)
  assert cfg1 == CFG
  assert jax.tree.map(jnp.shape, p1) == jax.tree.map(jnp.shape, params)
  ref = fwd_cfg(cfg0, {'params': plain}, TOKS)
  np.testing.assert_allclose(np.asarray(fwd(p1, c1, TOKS)), np.asarray(ref), atol=PRESERVE_ATOL, rtol=0)


def test_dream_rng_activates_one_random_inactive_expert_per_layer(base):
  params, cms = base
  ref = fwd(params, cms, TOKS)
  seen = {0: set(), 1: set()}
  differ = 0
  for seed in range(12):
    logits, inter = fwd_dream(params, cms, TOKS, jax.random.key(seed))
    for b in range(TOKS.shape[0]):            # each row has its own extra expert per layer
      manual = cms
      for i in range(2):
        before = np.asarray(cms[f'layers_{i}']['mlp']['active'])
        after = np.asarray(inter[f'layers_{i}']['mlp']['active'][0])[b]
        extra = np.flatnonzero(after & ~before)
        assert len(extra) == 1 and (after | ~before).all() and after.sum() == before.sum() + 1
        seen[i].add(int(extra[0]))
        manual = set_active(manual, i, int(extra[0]))
      # same as activating those experts by hand, random B kept (not the function-preserving activation)
      np.testing.assert_allclose(np.asarray(logits[b]), np.asarray(fwd(params, manual, TOKS[b:b + 1])[0]),
                                 atol=PRESERVE_ATOL, rtol=0)
      assert np.abs(np.asarray(logits[b]) - np.asarray(ref[b])).max() > 1e-4
    masks = np.asarray(inter['layers_1']['mlp']['active'][0])
    differ += int((masks != masks[:1]).any())
  assert seen[0] == {1, 3} and seen[1] == {0, 2, 3}      # uniform over the inactive ones
  assert differ > 0                                       # rows draw independently
  # a full pool: dreaming is a no-op
  full = {k: {'mlp': {'active': jnp.ones(S, bool)}} for k in cms}
  logits, inter = fwd_dream(params, full, TOKS, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(fwd(params, full, TOKS)))
