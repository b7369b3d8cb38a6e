"""Growth lineage in checkpoints: a restore rebuilds the grown shapes from meta, and an older, smaller
checkpoint comes back as the grown model by replaying the same surgery."""
import jax
import ml_collections as mlc
import numpy as np
import pytest

from sleep_jax import growth, sharding, train
from sleep_jax.checkpoint import Checkpointer, abstract_like
from sleep_jax.models.llama import ModelConfig, Transformer
from tests.helpers import mesh

CFG0 = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32)
OPTIM = mlc.ConfigDict(dict(name='adamw', lr=1e-3))


def host_params(cfg, seed):
  abstract = jax.eval_shape(lambda r: Transformer(cfg).init(r, jax.numpy.zeros((1, 1), 'int32'))['params'],
                            jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(0, 0.3, x.value.shape).astype(np.float32) + (x.value.ndim == 1),
                      abstract, is_leaf=lambda x: hasattr(x, 'value'))


def state_target(cfg, m):
  """Abstract train state of `cfg` with shardings: what a resume builds before restoring."""
  sh = growth.param_shardings(cfg, m, sharding.DEFAULT_RULES)
  params = jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sh,
                        host_params(cfg, 0))
  tx = train.make_optimizer(OPTIM, params)
  state = jax.eval_shape(lambda p: train.init_state(p, tx), params)
  return abstract_like(state, train.state_shardings(state, sh, m)), tx


def test_restore_rebuilds_grown_shapes_and_old_checkpoints_grow_into_them(tmp_path, devices8):
  m = mesh(2, 2, 2)
  rng = jax.random.key(7)
  p0 = host_params(CFG0, 1)
  tx0 = train.make_optimizer(OPTIM, p0)
  small = Checkpointer(tmp_path / 'small')
  small.save(1, train.init_state(p0, tx0), growth.lineage_meta(CFG0, []), force=True)
  small.wait()

  cfg, p, lineage = CFG0, p0, []
  for op, args in [('widen_mlp', {'d_ff': 48}), ('add_heads', {'n_heads': 4, 'n_kv_heads': 2}),
                   ('widen_model', {'d_model': 24}), ('add_layers', {'n': 1})]:
    cfg, p, lineage = growth.grow(cfg, p, rng, lineage, op, **args)
  tx = train.make_optimizer(OPTIM, p)
  grown_state = train.init_state(p, tx)
  big = Checkpointer(tmp_path / 'big')
  big.save(5, grown_state, growth.lineage_meta(CFG0, lineage), force=True)
  big.wait()

  # 1. shapes come from the meta alone
  target = lambda meta: state_target(growth.config_from_meta(meta), m)[0]
  restored, meta, _ = big.restore(target)
  assert growth.config_from_meta(meta) == cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored['params'], p)
  assert restored['params']['layers_1']['mlp']['w_up'].sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')

  # 2. the older, smaller checkpoint grows into the same model through the recorded surgery
  old, old_meta, _ = small.restore(lambda meta: state_target(growth.config_from_meta(meta), m)[0])
  start = len(old_meta['lineage'])
  cfg2, p2 = growth.apply_lineage(growth.config_from_meta(old_meta), jax.device_get(old['params']),
                                  lineage[start:], rng, start=start)
  assert cfg2 == cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p2, p)


def test_inconsistent_meta_fails_before_restoring():
  meta = growth.lineage_meta(CFG0, [{'op': 'widen_mlp', 'args': {'d_ff': 48}}])
  meta['model']['d_ff'] = 40
  with pytest.raises(ValueError, match='inconsistent'):
    growth.config_from_meta(meta)


def test_grow_experts_preserves_the_function_and_is_a_lineage_op():
  from sleep_jax.models import cms as cms_lib
  cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32,
                    n_experts=2, expert_rank=4)
  p = host_params(cfg, 3)
  cms = cms_lib.init_cms_state(cfg)
  cms['layers_1']['mlp']['active'] = np.array([False, True])   # an active expert with random, non-zero B
  tokens = jax.numpy.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)))
  logits = lambda cfg, p, c: Transformer(cfg).apply(cms_lib.variables(p, c), tokens)[0]
  before = logits(cfg, p, cms)
  cfg2, p2, lineage = growth.grow(cfg, p, jax.random.key(0), [], 'grow_experts', n_experts=5)
  cms2 = growth.grow_tree_like(cms, cms_lib.init_cms_state(cfg2), fill=False,
                               plan=growth.make_plan('grow_experts', cfg, n_experts=5))
  assert p2['layers_0']['mlp']['expert_a'].shape == (5, 16, 4)
  assert cms2['layers_1']['mlp']['active'].tolist() == [False, True, False, False, False]
  np.testing.assert_allclose(logits(cfg2, p2, cms2), before, rtol=1e-6, atol=1e-6)
  # new inactive experts carry random B (novelty for dreaming); the old ones are untouched
  assert np.abs(p2['layers_0']['mlp']['expert_b'][2:]).max() > 0
  np.testing.assert_array_equal(p2['layers_1']['mlp']['expert_b'][:2], p['layers_1']['mlp']['expert_b'])
  assert growth.config_from_meta(growth.lineage_meta(cfg, lineage)) == cfg2
  # from a plain model: the pool is created (rank required)
  with pytest.raises(ValueError, match='pass expert_rank'):
    growth.make_plan('grow_experts', CFG0, n_experts=3)
  cfg3, p3 = growth.grow_experts(CFG0, host_params(CFG0, 4), jax.random.key(1), n_experts=3, expert_rank=2)
  np.testing.assert_allclose(logits(cfg3, p3, cms_lib.init_cms_state(cfg3)),
                             logits(CFG0, host_params(CFG0, 4), {}), rtol=1e-6, atol=1e-6)
