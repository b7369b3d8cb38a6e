import jax
import ml_collections as mlc
import numpy as np
import pytest

from sleep_jax import jobs, sharding, train
from sleep_jax.build import build
from sleep_jax.data.lm import LMBatches
from tests.helpers import mesh, run_interrupted, tiny_config


def run_steps(m, n_steps=5, optim=None):
  config = tiny_config()
  config.optim.update(dict(dict(lr=1e-2), **(optim or {})))
  config.data = mlc.ConfigDict(dict(source='synthetic', batch_size=8, seq_len=16))
  b = build(config, mesh=m, seed=0)
  tx = train.make_optimizer(config.optim, b.params)
  state = train.init_state(b.params, tx)
  shard = train.state_shardings(state, b.shardings, m)
  state = jax.device_put(state, shard)
  bsh = sharding.batch_sharding(m, b.rules)
  step = train.make_train_step(b.model, tx, shard, bsh)
  batches = LMBatches(config, b.tokenizer, b.cfg.vocab_size)
  init_params = jax.device_get(b.params)
  losses = []
  for i in range(n_steps):
    state, metrics = step(state, jax.device_put(batches(i % 2), bsh))  # two batches, revisited
    losses.append(float(metrics['loss']))
  return init_params, jax.device_get(state), losses, shard


def test_one_and_eight_devices_agree(devices8):
  _, s1, l1, _ = run_steps(mesh(1, 1, 1))
  _, s8, l8, shard = run_steps(mesh(2, 2, 2))
  # the 8-device state really is sharded three ways
  assert shard['params']['layers_0']['mlp']['w_up'].spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  # Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise can move a weight by a small
  # fraction of one lr=1e-2 step, so the absolute tolerance is 0.5% of a step.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5), s1['params'], s8['params'])
  assert l1[-1] < l1[0]


def test_frozen_subtree_is_unchanged_and_has_no_slots(devices8):
  optim = dict(trainable='mlp/', frozen='layers_1')
  p0, s, _, _ = run_steps(mesh(1, 2, 4), n_steps=2, optim=optim)
  for path in train.param_paths(p0):
    a = np.asarray(_get(p0, path))
    b = np.asarray(_get(s['params'], path))
    changed = not np.array_equal(a, b)
    assert changed == ('mlp/' in path and not path.startswith('layers_1')), path
  n_slots = sum(x.size for x in jax.tree.leaves(s['opt_state']))
  n_train = sum(np.asarray(_get(p0, p)).size for p in train.param_paths(p0)
                if 'mlp/' in p and not p.startswith('layers_1'))
  assert n_slots <= 2 * n_train + 8      # adam mu + nu for trainable leaves only (+ counters)


def _get(tree, path):
  for k in path.split('/'):
    tree = tree[k]
  return tree


def test_trainable_mask_errors_are_clear():
  params = {'a': {'w': np.zeros(2)}}
  with pytest.raises(ValueError, match='leave no parameter trainable'):
    train.trainable_labels(params, trainable='nothing_matches')
  with pytest.raises(ValueError, match='not a valid regex'):
    train.trainable_labels(params, trainable='(')


def test_trainable_value_and_grad_skips_frozen_leaves_exactly():
  """Only trained leaves are differentiated: their gradients equal the full gradient's, frozen ones are 0,
  and the jitted program has fewer FLOPs (the frozen weights' gradient matmuls are gone)."""
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  params = {'base': {'w': jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)},
            'expert': {'a': jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)}}
  x = jnp.asarray(rng.normal(size=(32, 64)), jnp.float32)
  loss = lambda p: (jnp.sum(jnp.tanh(x @ p['base']['w']) @ p['expert']['a']) ** 2, {})
  labels = train.trainable_labels(params, trainable='expert')
  (v_all, _), g_all = jax.value_and_grad(loss, has_aux=True)(params)
  (v, _), g = train.trainable_value_and_grad(loss, params, labels)
  assert float(v) == float(v_all)
  np.testing.assert_array_equal(g['expert']['a'], g_all['expert']['a'])
  assert not np.any(np.asarray(g['base']['w'])) and np.any(np.asarray(g_all['base']['w']))
  flops = lambda f: f.lower(params).compile().cost_analysis()['flops']
  assert flops(jax.jit(lambda p: train.trainable_value_and_grad(loss, p, labels)[1])) < \
      flops(jax.jit(lambda p: jax.value_and_grad(loss, has_aux=True)(p)[1]))
  with pytest.raises(ValueError, match='do not match the parameter tree'):
    train.trainable_value_and_grad(loss, params, {'base': {'w': 'train'}})


def test_lm_job_resumes_from_its_workdir(tmp_path, devices8):
  from configs import lm
  config = lm.get_config('smoke')
  with config.unlocked():
    config.train.steps = 6
    config.checkpoint.every = 3
  full = jobs.lm(config, str(tmp_path / 'a'))
  resumed = run_interrupted(jobs.lm, config, tmp_path / 'b', stop_at=3)
  assert resumed['start_step'] == 3
  assert resumed['history'][-1]['loss'] == full['history'][-1]['loss']
