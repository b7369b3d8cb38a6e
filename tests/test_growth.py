"""Growth surgery: every op preserves the logits exactly, the new capacity trains, optimizer state and side
trees grow with the parameters, sharded growth lays out the new shapes by the rules, lineages replay, guards
refuse bad requests before touching anything.

The hypothesis tests check the function against an independent float64 numpy forward pass (no compile per
example); the fixed-size tests use the real Flax model in float32.
"""
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from flax import traverse_util
from hypothesis import given, settings, strategies as st

from sleep_jax import growth, sharding, train
from sleep_jax.build import abstract_params
from sleep_jax.models import cms as cms_lib
from sleep_jax.models.llama import ModelConfig, Transformer
from tests.helpers import mesh

V = 64
RULES = sharding.DEFAULT_RULES
OPS = ('widen_mlp', 'add_heads', 'widen_model', 'add_layers')


def cfg_of(**kw) -> ModelConfig:
  base = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=32, max_seq_len=64)
  return ModelConfig(**{**base, **kw})


@functools.lru_cache(maxsize=None)
def model_shapes(cfg: ModelConfig) -> dict:
  """Flat {path: shape} of the real model's parameters (eval_shape: no init compile, but ~0.3 s of tracing)."""
  tree = nn.meta.unbox(abstract_params(Transformer(cfg)))
  return {p: tuple(x.shape) for p, x in traverse_util.flatten_dict(tree).items()}


def shapes(cfg: ModelConfig) -> dict:
  """Flat {path: shape} from growth's parameter table (checked against the model in test_param_table...)."""
  sizes = growth.dim_sizes(cfg)
  return {p: tuple(sizes[d] for d in dims) for p, dims in growth.param_dims(cfg).items()}


def rand_params(cfg: ModelConfig, seed: int, std: float = 0.3) -> dict:
  """Random non-zero float32 params on the host; norm scales 1 + N(0, 0.3^2), so they are non-trivial."""
  rs = np.random.RandomState(seed)
  flat = {p: ((1 + 0.3 * rs.standard_normal(s)) if len(s) == 1 else std * rs.standard_normal(s)).astype(np.float32)
          for p, s in sorted(shapes(cfg).items())}
  return traverse_util.unflatten_dict(flat)


def rand_cms(cfg: ModelConfig, seed: int) -> dict:
  rs = np.random.RandomState(seed)
  return {f'layers_{i}': {'mlp': {'active': rs.rand(cfg.n_experts) < 0.6}} for i in range(cfg.n_layers)}


def np_forward(cfg: ModelConfig, params, tokens, cms=None):
  """Reference Llama forward in float64 numpy: RMSNorm, rotate-half RoPE, GQA (head h reads kv h // G), SwiGLU,
  sigmoid-gated active experts, tied or untied head."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)

  def norm(x, s):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * s

  def rope(x):
    E = x.shape[-1]
    ang = np.arange(x.shape[1])[:, None] * (1.0 / cfg.rope_base ** (np.arange(0, E, 2) / E))
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :E // 2], x[..., E // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  L = tokens.shape[1]
  G = cfg.n_heads // cfg.n_kv_heads
  x = p['embed'][tokens]
  for i in range(cfg.n_layers):
    lp = p[f'layers_{i}']
    a, m = lp['attn'], lp['mlp']
    h = norm(x, lp['attn_norm']['scale'])
    q = rope(np.einsum('bld,dhe->blhe', h, a['wq']))
    k = np.repeat(rope(np.einsum('bld,dke->blke', h, a['wk'])), G, axis=2)
    v = np.repeat(np.einsum('bld,dke->blke', h, a['wv']), G, axis=2)
    s = np.einsum('blhe,bthe->bhlt', q, k) / math.sqrt(cfg.head_dim)
    s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    x = x + np.einsum('bhlt,bthe,hed->bld', w / w.sum(-1, keepdims=True), v, a['wo'])
    h = norm(x, lp['mlp_norm']['scale'])
    g = h @ m['w_gate']
    y = (g / (1 + np.exp(-g)) * (h @ m['w_up'])) @ m['w_down']
    for j in (np.flatnonzero(cms[f'layers_{i}']['mlp']['active']) if cfg.n_experts else []):
      gate = 1 / (1 + np.exp(-(h @ m['router'][:, j])))
      y = y + gate[..., None] * ((h @ m['expert_a'][j]) @ m['expert_b'][j])
    x = x + y
  x = norm(x, p['final_norm']['scale'])
  return x @ (p['embed'].T if cfg.tie_embeddings else p['lm_head'])


@functools.lru_cache(maxsize=None)
def apply_fn(cfg: ModelConfig):
  model = Transformer(cfg)
  return jax.jit(lambda variables, toks: model.apply(variables, toks)[0])


def grow_cms(cms, plan):
  return growth.grow_tree_like(cms, cms_lib.init_cms_state(plan.new_cfg), fill=None, plan=plan)


# ---- hypothesis: every op preserves the function for random sizes ----

@st.composite
def base_cfgs(draw):
  K, G = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
  S = draw(st.sampled_from([0, 0, 3]))
  return cfg_of(d_model=draw(st.integers(8, 24)), n_layers=draw(st.integers(1, 3)), n_heads=K * G, n_kv_heads=K,
                head_dim=draw(st.sampled_from([4, 8])), d_ff=draw(st.integers(8, 32)),
                tie_embeddings=draw(st.booleans()), norm_eps=draw(st.sampled_from([1e-5, 0.1, 1.0])),
                n_experts=S, expert_rank=2 if S else 0)


@st.composite
def op_args(draw, op, cfg):
  if op == 'widen_mlp':
    return {'d_ff': cfg.d_ff + draw(st.integers(1, 16))}
  if op == 'widen_model':
    return {'d_model': cfg.d_model + draw(st.integers(1, 16))}
  if op == 'add_heads':
    K, G = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads
    K2, G2 = K + draw(st.integers(0, 2)), G + draw(st.integers(0, 2))
    G2 += (K2, G2) == (K, G)
    return {'n_heads': K2 * G2, 'n_kv_heads': K2}
  k = draw(st.integers(1, 2))
  if draw(st.booleans()):
    return {'n': k}
  return {'at': draw(st.lists(st.integers(0, cfg.n_layers + k - 1), min_size=k, max_size=k, unique=True))}


@pytest.mark.parametrize('op', OPS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_growth_preserves_logits(op, data):
  cfg = data.draw(base_cfgs(), 'cfg')
  args = data.draw(op_args(op, cfg), 'args')
  seed = data.draw(st.integers(0, 2 ** 16), 'seed')
  params, cms = rand_params(cfg, seed), rand_cms(cfg, seed)
  tokens = np.random.RandomState(seed).randint(0, V, (2, 7))
  new_cfg, new_params = growth.OPS[op](cfg, params, jax.random.key(seed), **args)
  new_cms = grow_cms(cms, growth.make_plan(op, cfg, **args))
  got = {p: tuple(x.shape) for p, x in traverse_util.flatten_dict(new_params).items()}
  assert got == shapes(new_cfg)          # the model's tree (see test_param_table_matches_the_model)
  np.testing.assert_allclose(np_forward(new_cfg, new_params, tokens, new_cms), np_forward(cfg, params, tokens, cms),
                             rtol=1e-5, atol=1e-5)


VARIANTS = dict(qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True)   # Qwen2 biases, Qwen3 q/k norm, all on


@pytest.mark.parametrize('kw', [{}, {'tie_embeddings': False, 'n_layers': 3},
                                {'n_experts': 3, 'expert_rank': 2, 'n_heads': 6, 'n_kv_heads': 3},
                                dict(VARIANTS, n_experts=2, expert_rank=2)])
def test_param_table_matches_the_model(kw):
  cfg = cfg_of(**kw)
  assert shapes(cfg) == model_shapes(cfg)


@pytest.mark.parametrize('op,args', [('widen_mlp', {'d_ff': 40}), ('add_heads', {'n_heads': 6, 'n_kv_heads': 3}),
                                     ('widen_model', {'d_model': 24}), ('add_layers', {'at': [1]})])
def test_growth_preserves_logits_with_biases_and_qk_norm(op, args):
  """The architecture variants (Qwen2 biases, Qwen3 q/k norm) grow function-preservingly too; the model itself is
  the reference here (tests/test_hf_families.py checks it against an independent numpy forward), with nonzero
  biases and norm scales so a wrongly placed or rescaled one shows."""
  cfg = cfg_of(**VARIANTS)
  model = Transformer(cfg)
  params = jax.tree.map(lambda x: x + 0.3 * np.random.RandomState(x.size).standard_normal(x.shape).astype(x.dtype),
                        nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']))
  toks = np.random.RandomState(0).randint(0, V, (2, 7))
  new_cfg, new_params = growth.OPS[op](cfg, params, jax.random.key(1), **args)
  assert {p: tuple(x.shape) for p, x in traverse_util.flatten_dict(new_params).items()} == model_shapes(new_cfg)
  before = Transformer(cfg).apply({'params': params}, toks)[0]
  after = Transformer(new_cfg).apply({'params': new_params}, toks)[0]
  # float32 model: widen_model's RMSNorm sums over more (zero) dims in another order (~3e-5 here); a misplaced or
  # rescaled bias / norm scale moves logits by ~0.1.
  np.testing.assert_allclose(np.asarray(after), np.asarray(before), rtol=2e-4, atol=2e-4)


def test_numpy_reference_matches_the_model():
  for cfg in (cfg_of(norm_eps=0.1), cfg_of(tie_embeddings=False, n_experts=3, expert_rank=2)):
    params, cms = rand_params(cfg, 1), rand_cms(cfg, 1)
    toks = np.random.RandomState(0).randint(0, V, (2, 7))
    got = apply_fn(cfg)(cms_lib.variables(params, cms if cfg.n_experts else {}), toks)
    np.testing.assert_allclose(got, np_forward(cfg, params, toks, cms), rtol=1e-4, atol=1e-4)


# ---- training continues after growth, with the grown optimizer state ----

TRAIN_CFG = cfg_of(n_layers=1)                # tied embeddings
GROWTHS = [('widen_mlp', {'d_ff': 48}), ('add_heads', {'n_heads': 9, 'n_kv_heads': 3}),
           ('widen_model', {'d_model': 24}), ('add_layers', {'at': [0, 2]})]
FROZEN = 'layers_0/mlp_norm'                 # a masked leaf, so multi_transform has a 'freeze' branch
OPTIM = mlc.ConfigDict(dict(name='adamw', lr=1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=0.0,
                            warmup_steps=0, decay_steps=0, trainable='.*', frozen=FROZEN))
TOKS = np.random.RandomState(5).randint(0, V, (2, 9))


def fixed_batch():
  seq = np.random.RandomState(3).randint(0, V, (4, 17)).astype(np.int32)
  return {'inputs': seq[:, :-1], 'targets': seq[:, 1:], 'weights': np.ones((4, 16), np.float32)}


def trainer(cfg, params, opt_state=None):
  """(state on a 1-device mesh, jitted train step); host copies go in because the step donates its state."""
  m = mesh()
  tx = train.make_optimizer(OPTIM, params)
  state = {'step': np.zeros((), np.int32), 'params': jax.device_get(params),
           'opt_state': jax.device_get(tx.init(params) if opt_state is None else opt_state)}
  shard = train.state_shardings(state, growth.param_shardings(cfg, m, RULES), m)
  step = train.make_train_step(Transformer(cfg), tx, shard, sharding.batch_sharding(m, RULES))
  return jax.device_put(state, shard), step


def run(state, step, n):
  batch, losses = fixed_batch(), []
  for _ in range(n):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return state, losses


def np_loss(cfg, params, batch) -> float:
  logits = np_forward(cfg, params, batch['inputs'])
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return float(np.mean(logz - np.take_along_axis(logits, batch['targets'][..., None], -1)[..., 0]))


@pytest.fixture(scope='module')
def small_state():
  """TRAIN_CFG params with a non-trivial AdamW state (random positive mu and nu, count 3), built on the host
  so the small model's train step need not compile."""
  params = rand_params(TRAIN_CFG, 0, std=0.2)
  rs = np.random.RandomState(1)
  opt = jax.eval_shape(train.make_optimizer(OPTIM, params).init, params)
  opt = jax.tree.map(lambda x: np.full(x.shape, 3, x.dtype) if x.dtype == np.int32
                     else np.abs(rs.standard_normal(x.shape)).astype(x.dtype) * 1e-3, opt)
  return {'params': params, 'opt_state': opt}


def landing(op, cfg, args):
  """Where the surgery puts every old entry: grow a tree of distinct ids (>= 1000, so no fresh value collides);
  returns ({new path: old id per entry, -1 where new}, {old path: ids})."""
  ids, offset = {}, 1000
  for p, s in sorted(shapes(cfg).items()):
    ids[p] = (offset + np.arange(math.prod(s))).reshape(s).astype(np.float32)
    offset += math.prod(s)
  new_cfg, grown = growth.OPS[op](cfg, traverse_util.unflatten_dict(ids), jax.random.key(0), **args)
  factor = math.sqrt(cfg.d_model / new_cfg.d_model)
  out = {}
  for p, x in traverse_util.flatten_dict(grown).items():
    x = np.asarray(x, np.float64) / (factor if p[-1] == 'scale' else 1.0)
    out[p] = np.where(x >= 999.5, np.rint(x), -1).astype(np.int64)
  return out, ids


def adam_state(opt_state) -> optax.ScaleByAdamState:
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1, found
  return found[0]


def slots(tree) -> dict:
  return {p: np.asarray(x) for p, x in traverse_util.flatten_dict(tree).items() if not isinstance(x, optax.MaskedNode)}


@pytest.mark.parametrize('op,args', GROWTHS, ids=[g[0] for g in GROWTHS])
def test_training_continues_after_growth(small_state, op, args):
  host, cfg = small_state, TRAIN_CFG
  params = host['params']
  new_cfg, grown = growth.OPS[op](cfg, params, jax.random.key(1), **args)

  # optimizer state: every old slot lands where its parameter landed, every new slot is zero
  tx = train.make_optimizer(OPTIM, grown)
  opt = growth.grow_opt_state(host['opt_state'], params, grown, tx, growth.make_plan(op, cfg, **args))
  land, ids = landing(op, cfg, args)
  old_adam, new_adam = adam_state(host['opt_state']), adam_state(opt)
  assert int(new_adam.count) == int(old_adam.count) == 3
  assert old_adam.mu['embed'].shape == (V, cfg.d_model)
  for name in ('mu', 'nu'):
    old, new = slots(getattr(old_adam, name)), slots(getattr(new_adam, name))
    by_id = np.zeros(sum(x.size for x in ids.values()) + 1000)     # ids of frozen (slot-less) leaves read 0
    for p, x in old.items():
      by_id[ids[p].astype(np.int64)] = x
    assert any(x.any() for x in old.values())
    assert set(new) == {p for p in land if not '/'.join(p).startswith(FROZEN)}
    for p, x in new.items():
      np.testing.assert_array_equal(x, np.where(land[p] >= 0, by_id[np.maximum(land[p], 0)], 0.0), err_msg=str(p))

  # training continues from the grown state: the loss at growth (real model, float32) is the small model's
  # (float64 reference), then it decreases
  state, step = trainer(new_cfg, grown, opt)
  state, losses = run(state, step, 4)
  loss0 = np_loss(cfg, params, fixed_batch())
  assert abs(losses[0] - loss0) < 1e-5, (losses[0], loss0)
  assert losses[-1] < losses[0], losses
  # ...and the new capacity is used: new entries of every grown trainable leaf moved (non-zero gradients)
  after = traverse_util.flatten_dict(jax.device_get(state['params']))
  at_growth = traverse_util.flatten_dict(grown)
  frozen_moved = [p for p in land if '/'.join(p).startswith(FROZEN) and not np.array_equal(after[p], at_growth[p])]
  idle = [p for p, lp in land.items() if (lp < 0).any() and not '/'.join(p).startswith(FROZEN)
          and np.array_equal(after[p][lp < 0], at_growth[p][lp < 0])]
  assert not frozen_moved and not idle, (frozen_moved, idle)


# ---- sharded growth ----

@pytest.mark.parametrize('op,args', GROWTHS, ids=[g[0] for g in GROWTHS])
def test_sharded_growth(devices8, op, args):
  cfg = cfg_of(tie_embeddings=False)
  m = mesh(2, 2, 2)
  host = rand_params(cfg, 3)
  params = sharding.put_tree(host, growth.param_shardings(cfg, m, RULES))
  new_cfg, new = growth.grow_sharded(op, cfg, params, m, RULES, jax.random.key(5), **args)
  want = growth.param_shardings(new_cfg, m, RULES)
  bad = [p for p, x in traverse_util.flatten_dict(new).items()
         if not x.sharding.is_equivalent_to(traverse_util.flatten_dict(want)[p], x.ndim)]
  assert not bad, bad
  assert new['layers_1']['mlp']['w_up'].sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  # the same numbers as unsharded growth with the same key, and the same function
  _, ref = growth.OPS[op](cfg, host, jax.random.key(5), **args)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new), jax.device_get(ref))
  np.testing.assert_allclose(apply_fn(new_cfg)({'params': new}, TOKS), apply_fn(cfg)({'params': host}, TOKS),
                             rtol=1e-5, atol=1e-5)
  # a sharded optimizer state grows on device into the new state's layout, with the host growth's values
  opt_cfg = mlc.ConfigDict(dict(OPTIM, frozen=''))
  rs = np.random.RandomState(0)
  old_opt = jax.tree.map(lambda x: rs.standard_normal(x.shape).astype(x.dtype),
                         jax.eval_shape(train.make_optimizer(opt_cfg, host).init, host))
  old_sh = train.state_shardings({'opt_state': old_opt}, growth.param_shardings(cfg, m, RULES), m)['opt_state']
  tx = train.make_optimizer(opt_cfg, new)
  new_sh = train.state_shardings({'opt_state': jax.eval_shape(tx.init, new)}, want, m)['opt_state']
  plan = growth.make_plan(op, cfg, **args)
  grown_opt = growth.grow_opt_state(jax.device_put(old_opt, old_sh), params, new, tx, plan, out_shardings=new_sh)
  jax.tree.map(lambda x, s: assert_sharded_as(x, s), grown_opt, new_sh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(grown_opt),
               growth.grow_opt_state(old_opt, host, jax.device_get(new), tx, plan))


def assert_sharded_as(x, s):
  assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)


# ---- expert pools (real model) ----

def test_widen_model_with_active_experts():
  cfg = cfg_of(n_experts=3, expert_rank=4, tie_embeddings=False, norm_eps=0.1)
  params, cms = rand_params(cfg, 4), rand_cms(cfg, 4)
  cms['layers_0']['mlp']['active'][:] = [True, False, True]
  before = apply_fn(cfg)({'params': params, 'cms': cms}, TOKS)
  new_cfg, new = growth.widen_model(cfg, params, jax.random.key(2), d_model=24)
  mlp = new['layers_1']['mlp']
  assert mlp['router'].shape == (24, 3) and mlp['expert_a'].shape == (3, 24, 4) and mlp['expert_b'].shape == (3, 4, 24)
  assert not np.asarray(mlp['expert_b'][:, :, 16:]).any() and np.asarray(mlp['expert_a'][:, 16:]).any()
  np.testing.assert_allclose(apply_fn(new_cfg)({'params': new, 'cms': cms}, TOKS), before, rtol=1e-5, atol=1e-5)
  # add_layers then renumbers the 'cms' side tree the same way (new layers: pool inactive)
  plan = growth.make_plan('add_layers', new_cfg, at=[1])
  cfg3, new3 = growth.add_layers(new_cfg, new, jax.random.key(3), at=[1])
  cms3 = grow_cms(cms, plan)
  assert [list(np.asarray(cms3[f'layers_{i}']['mlp']['active'])) for i in range(3)] == [
      [True, False, True], [False] * 3, list(cms['layers_1']['mlp']['active'])]
  np.testing.assert_allclose(apply_fn(cfg3)({'params': new3, 'cms': cms3}, TOKS), before, rtol=1e-5, atol=1e-5)


# ---- lineage ----

CHAIN = [('widen_mlp', {'d_ff': 40}), ('add_heads', {'n_heads': 6, 'n_kv_heads': 2}),
         ('add_heads', {'n_heads': 9, 'n_kv_heads': 3}), ('widen_model', {'d_model': 20}),
         ('add_layers', {'at': [1]}), ('add_layers', {'n': 1}), ('add_layers', {'at': [0]})]


def test_lineage_replay_equals_direct_growth():
  cfg = cfg_of(tie_embeddings=False, norm_eps=0.1)
  p0 = rand_params(cfg, 7)
  rng = jax.random.key(11)
  c, p, lineage, stages = cfg, p0, [], [(cfg, p0)]
  for op, args in CHAIN:
    c, p, lineage = growth.grow(c, p, rng, lineage, op, **args)
    stages.append((c, p))
  assert [e['op'] for e in lineage] == [op for op, _ in CHAIN]
  assert lineage[-2:] == [{'op': 'add_layers', 'args': {'at': [3]}}, {'op': 'add_layers', 'args': {'at': [0]}}]
  restored = json.loads(json.dumps(lineage))            # what checkpoint meta holds
  assert restored == lineage
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
  c2, p2 = growth.apply_lineage(cfg, jax.device_put(p0), restored, rng)   # device tree: the jitted path
  assert c2 == c
  assert isinstance(p2['embed'], jax.Array)
  same(p2, p)
  c3, p3 = growth.apply_lineage(*stages[3], restored[3:], rng, start=3)   # a mid-way checkpoint
  assert c3 == c
  same(p3, p)
  toks = TOKS[:, :6]
  np.testing.assert_allclose(np_forward(c, p, toks), np_forward(cfg, p0, toks), rtol=1e-5, atol=1e-5)
  # one composed plan grows a params-shaped tree (e.g. an old Adam slot) exactly like the steps one by one
  slot = rand_params(cfg, 8)
  step_by_step = slot
  for i, (op, args) in enumerate(CHAIN):
    plan = growth.make_plan(op, stages[i][0], **args)
    step_by_step = growth.grow_tree_like(step_by_step, stages[i + 1][1], fill=0, plan=plan)
  same(growth.grow_tree_like(slot, p, fill=0, plan=growth.lineage_plan(cfg, lineage)), step_by_step)


def test_index_maps_follow_the_spec():
  """Old query head h of group h // G lands in slot (h // G) * G' + h % G; add_layers(at) puts identity blocks
  exactly at `at` and renumbers the rest in order."""
  cfg = cfg_of()
  params = rand_params(cfg, 2)
  new_cfg, new = growth.add_heads(cfg, params, jax.random.key(0), n_heads=9, n_kv_heads=3)
  wq, wo = np.asarray(new['layers_0']['attn']['wq']), np.asarray(new['layers_0']['attn']['wo'])
  for h, h2 in enumerate([0, 1, 3, 4]):
    np.testing.assert_array_equal(wq[:, h2], params['layers_0']['attn']['wq'][:, h])
    np.testing.assert_array_equal(wo[h2], params['layers_0']['attn']['wo'][h])
  assert not wo[[2, 5, 6, 7, 8]].any() and wq[:, [2, 5, 6, 7, 8]].all()
  np.testing.assert_array_equal(new['layers_0']['attn']['wk'][:, :2], params['layers_0']['attn']['wk'])
  assert np.asarray(new['layers_0']['attn']['wk'][:, 2]).all()
  new_cfg, new = growth.add_layers(cfg, params, jax.random.key(0), at=[3, 0])
  assert new_cfg.n_layers == 4
  for j, src in ((1, 0), (2, 1)):
    jax.tree.map(np.testing.assert_array_equal, new[f'layers_{j}'], params[f'layers_{src}'])
  for j in (0, 3):
    blk = new[f'layers_{j}']
    assert not np.asarray(blk['attn']['wo']).any() and not np.asarray(blk['mlp']['w_down']).any()
    assert np.asarray(blk['attn']['wq']).all() and (np.asarray(blk['mlp_norm']['scale']) == 1).all()


# ---- guards ----

def test_guards_fail_before_touching_anything():
  cfg = cfg_of()
  params = rand_params(cfg, 9)
  copy = jax.tree.map(np.copy, params)
  key = jax.random.key(0)
  cases = [
      (lambda: growth.widen_mlp(cfg, params, key, d_ff=16), 'd_ff=16 is smaller than the current 32; shrinking'),
      (lambda: growth.widen_mlp(cfg, params, key, d_ff=32), 'd_ff=32 equals the current size; no-op'),
      (lambda: growth.widen_model(cfg, params, key, d_model=8), 'd_model=8 is smaller'),
      (lambda: growth.widen_model(cfg, params, key, d_model=32, head_dim=16), 'changing head_dim'),
      (lambda: growth.add_heads(cfg, params, key, n_heads=8, head_dim=4), 'changing head_dim'),
      (lambda: growth.add_heads(cfg, params, key, n_heads=7, n_kv_heads=2), 'n_heads=7 is not a multiple of n_kv'),
      (lambda: growth.add_heads(cfg, params, key, n_heads=6, n_kv_heads=6), 'each group needs at least 2'),
      (lambda: growth.add_heads(cfg, params, key, n_heads=4, n_kv_heads=1), 'n_kv_heads=1 is smaller'),
      (lambda: growth.add_heads(cfg, params, key, n_heads=4), 'equal the current sizes; no-op'),
      (lambda: growth.add_layers(cfg, params, key, n=0), 'no layers to add'),
      (lambda: growth.add_layers(cfg, params, key, at=[0, 0]), r'distinct indices in \[0, 4\)'),
      (lambda: growth.add_layers(cfg, params, key, at=[4]), r'distinct indices in \[0, 3\)'),
      (lambda: growth.add_layers(cfg, params, key, at=[1], n=1), 'exactly one of'),
      (lambda: growth.widen_mlp(cfg, params, key, d_ff=40.0), 'd_ff must be an int'),
      (lambda: growth.make_plan('widen_mlp', cfg, dff=40), r"unknown argument\(s\) \['dff'\]"),
      (lambda: growth.grow_sharded('grow_wings', cfg, params, mesh(), RULES, key), "unknown op 'grow_wings'"),
      (lambda: growth.apply_lineage(cfg, params, [{'op': 'widen_mlp', 'args': {'d_ff': 40}},
                                                  {'op': 'grow_wings', 'args': {}}], key),
       r"lineage\[1\]: growth: unknown op 'grow_wings'"),
      (lambda: growth.apply_lineage(cfg, params, [{'op': 'widen_mlp', 'd_ff': 40}], key), r'lineage\[0\] must be'),
      (lambda: growth.apply_lineage(cfg, params, [{'op': 'widen_mlp', 'args': {'d_ff': 40}},
                                                  {'op': 'widen_mlp', 'args': {'d_ff': 36}}], key),
       r'lineage\[1\]: growth widen_mlp: d_ff=36 is smaller than the current 40'),
      (lambda: growth.widen_mlp(cfg_of(d_model=24), params, key, d_ff=40),
       r'do not match the config .*embed has shape \(64, 16\), the config implies \(64, 24\)'),
      (lambda: growth.widen_mlp(cfg_of(n_layers=3), params, key, d_ff=40), 'missing layers_2/attn/wk'),
      (lambda: growth.widen_mlp(cfg, {**params, 'extra': np.zeros(3)}, key, d_ff=40), 'unknown extra'),
      (lambda: growth.widen_mlp(cfg, {k: v for k, v in params.items() if k != 'final_norm'}, key, d_ff=40),
       'missing final_norm/scale'),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match):
      fn()
  jax.tree.map(np.testing.assert_array_equal, params, copy)
