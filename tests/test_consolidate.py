"""Knowledge Seeding: the loss against an independent per-row reference, gradients reach only the new expert,
the student starts equal to the teacher, distillation lowers the divergence, 1 vs 8 devices, the protocol."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sleep_jax import build as build_lib
from sleep_jax.io.byte_tokenizer import ByteTokenizer
from sleep_jax.models.cms import variables
from sleep_jax.phases import consolidate as ks
from sleep_jax.phases import wake as wake_lib
from sleep_jax.sampling import Sampler
from tests import helpers

TOK = ByteTokenizer()


def _built(mesh=None, **kw):
  c = helpers.tiny_config(n_experts=2, expert_rank=4, **kw)
  return build_lib.build(c, mesh=mesh or helpers.mesh())


def _sampler(b):
  return Sampler(b.model, b.cfg, pad_id=TOK.pad_id, eos_ids=TOK.stop_ids, prompt_buckets=(16, 32, 64),
                 gen_buckets=(8, 16))


def _items():
  return [ks.Item(TOK.encode('Q: colour?'), TOK.encode('The wall is teal. Q: colour?')),
          ks.Item(TOK.encode('Q: year?'), TOK.encode('It was built in 1544. Q: year?'))]


def _flat(t):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(t).items()}


def _np_jsd(t, s, beta):
  lt, ls = t - np.logaddexp.reduce(t, -1, keepdims=True), s - np.logaddexp.reduce(s, -1, keepdims=True)
  pt, ps = np.exp(lt), np.exp(ls)
  m = beta * pt + (1 - beta) * ps
  return beta * np.sum(pt * (lt - np.log(m)), -1) + (1 - beta) * np.sum(ps * (ls - np.log(m)), -1)


def _logits(b, params, cms, seq):
  out, _ = b.model.apply(variables(params, cms), jnp.asarray([seq], jnp.int32))
  return np.asarray(out[0], np.float64)


@pytest.mark.parametrize('alpha', [1.0, 0.0, 0.3])
def test_ks_loss_matches_unpadded_per_row_reference(alpha):
  """Rows of different prompt and completion lengths, padded into blocks, give the loss an independent
  computation gets by running every row alone, without padding, and doing the math in numpy."""
  b = _built()
  kc = ks.KSConfig(alpha=alpha, lam=0.5, beta=0.3, gamma=0.0)
  student_p, student_cms, index = ks.expand_student(b.params, b.cms, (1,))
  view = ks.View((1,), True)
  rng = np.random.default_rng(0)
  delta = {'layers_1': {'a': jnp.asarray(rng.normal(size=(64, 4)) * 0.1, jnp.float32),
                        'b': jnp.asarray(rng.normal(size=(4, 64)) * 0.1, jnp.float32)}}
  rows = [{'s': [5, 6, 7], 't': [9, 8, 7, 6, 5, 6, 7], 'y': [10, 11, 12, 13], 'div_w': 0.25, 'pg_w': 0.0, 'adv': 0.0},
          {'s': [5, 6, 7, 8, 9], 't': [9, 5, 6, 7, 8, 9], 'y': [20, 21], 'div_w': 0.5, 'pg_w': 0.5, 'adv': 1.3},
          {'s': [44], 't': [1, 2, 44], 'y': [30, 31, 32], 'div_w': 0.25, 'pg_w': 0.5, 'adv': -0.7}]
  batch = ks._pad_rows(rows, pad_id=TOK.pad_id, n_rows=4, buckets=(8, 16), n_gen=8)
  frozen = {'teacher': {'params': b.params, 'cms': b.cms}, 'student': {'params': student_p, 'cms': student_cms},
            'index': ks._index_arrays(index)}
  loss, _ = ks.ks_loss(delta, frozen, jax.device_put(batch), model=b.model, kcfg=kc, view=view)

  sp = view.merge(student_p, delta, ks._index_arrays(index))
  div, pg = 0.0, 0.0
  for r in rows:
    n = len(r['y'])
    t = _logits(b, b.params, b.cms, r['t'] + r['y'])[len(r['t']) - 1:len(r['t']) - 1 + n]
    s = _logits(b, sp, student_cms, r['s'] + r['y'])[len(r['s']) - 1:len(r['s']) - 1 + n]
    div += r['div_w'] * _np_jsd(t, s, 0.3).mean()
    ls = s - np.logaddexp.reduce(s, -1, keepdims=True)
    pg -= r['pg_w'] * r['adv'] * np.mean(ls[np.arange(n), r['y']])
  want = (alpha * div if alpha > 0 else 0.0) + ((1 - alpha) * pg if alpha < 1 else 0.0)
  np.testing.assert_allclose(float(loss), want, rtol=2e-4, atol=1e-6)


def test_student_starts_as_teacher_and_only_the_new_expert_moves():
  b = _built()
  student_p, student_cms, index = ks.expand_student(b.params, b.cms, (0, 1))
  toks = jnp.asarray([TOK.encode('hello there, sleepy model')], jnp.int32)
  t, _ = b.model.apply(variables(b.params, b.cms), toks)
  s, _ = b.model.apply(variables(student_p, student_cms), toks)
  np.testing.assert_array_equal(np.asarray(t), np.asarray(s))      # B = 0: activation is exact

  kc = ks.KSConfig(steps=3, alpha=1.0, lam=0.5, gamma=0.0, max_new_tokens=8, lr=1e-2)
  seeder = ks.Seeder(b.model, kc, TOK, _sampler(b))
  view = ks.View((0, 1), True)
  st, hist = seeder.run({'params': b.params, 'cms': b.cms}, {'params': student_p, 'cms': student_cms}, index,
                        view, _items(), jax.random.key(0))
  assert len(hist) == 3 and all(h['grad_norm'] > 0 for h in hist)
  new = _flat(ks.commit(student_p, st, index, view))
  old = _flat(student_p)
  for k in old:
    if k[-1] in ('expert_a', 'expert_b'):
      j = index[k[0]]
      others = [i for i in range(old[k].shape[0]) if i != j]
      np.testing.assert_array_equal(new[k][others], old[k][others])   # other pool slots untouched
      assert not np.array_equal(new[k][j], old[k][j]), k                # the new expert learned
    else:
      np.testing.assert_array_equal(new[k], old[k], err_msg='/'.join(k))


def test_without_expansion_trains_the_receivers_base_mlp_only():
  b = _built()
  kc = ks.KSConfig(steps=2, alpha=1.0, lam=0.0, gamma=0.0, max_new_tokens=8, expand=False, lr=1e-2)
  view = ks.View((1,), False)
  st, _ = ks.Seeder(b.model, kc, TOK, _sampler(b)).run(
      {'params': b.params, 'cms': b.cms}, {'params': b.params, 'cms': b.cms}, {}, view, _items(), jax.random.key(1))
  old, new = _flat(b.params), _flat(ks.commit(b.params, st, {}, view))
  changed = {'/'.join(k) for k in old if not np.array_equal(old[k], new[k])}
  assert changed == {'layers_1/mlp/w_gate', 'layers_1/mlp/w_up', 'layers_1/mlp/w_down'}


def test_distillation_lowers_the_divergence_to_the_context_teacher():
  """Off-policy only (lam=0): fixed teacher samples, so the divergence must fall as the expert learns."""
  b = _built()
  student_p, student_cms, index = ks.expand_student(b.params, b.cms, (0, 1))
  kc = ks.KSConfig(steps=8, prompts_per_step=2, alpha=1.0, lam=0.0, gamma=0.0, max_new_tokens=16, lr=3e-3,
                   teacher_temperature=0.0)
  seeder = ks.Seeder(b.model, kc, TOK, _sampler(b))
  args = ({'params': b.params, 'cms': b.cms}, {'params': student_p, 'cms': student_cms}, index,
          ks.View((0, 1), True), _items(), jax.random.key(2))
  st, hist = seeder.run(*args)
  d = [h['divergence'] for h in hist]
  assert d[0] > 0 and d[-1] < 0.3 * d[0], d   # measured: 8.2e-4 -> 0.8e-4 over 8 updates
  # Metrics fetched every 3 updates and at a save point (step 4): the same updates and metrics, handed over late;
  # the caller gets the state exactly at the steps that end a fetch (where it may checkpoint).
  seen = []
  st3, hist3 = seeder.run(*args, log_every=3, sync_at=lambda s: s == 4,
                          on_step=lambda s, state, m: seen.append((s, None if state is None else int(state['step']))))
  assert seen == [(1, None), (2, None), (3, 3), (4, 4), (5, None), (6, None), (7, 7), (8, 8)]
  untimed = lambda h: [{k: v for k, v in x.items() if not k.endswith('_s')} for x in h]
  assert untimed(hist3) == untimed(hist)
  for a, z in zip(jax.tree.leaves(st), jax.tree.leaves(st3)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(z))


def test_policy_gradient_raises_the_logprob_of_positive_advantage_completions():
  b = _built()
  student_p, student_cms, index = ks.expand_student(b.params, b.cms, (1,))
  view = ks.View((1,), True)
  kc = ks.KSConfig(alpha=0.0, gamma=0.0, lr=1e-2)
  rows = [{'s': [5, 6], 't': [5, 6], 'y': [40, 41, 42], 'div_w': 0, 'pg_w': 0.5, 'adv': 1.0},
          {'s': [5, 6], 't': [5, 6], 'y': [50, 51, 52], 'div_w': 0, 'pg_w': 0.5, 'adv': -1.0}]
  batch = jax.device_put(ks._pad_rows(rows, pad_id=TOK.pad_id, n_rows=2, buckets=(8,), n_gen=8))
  frozen = {'teacher': {'params': b.params, 'cms': b.cms}, 'student': {'params': student_p, 'cms': student_cms},
            'index': ks._index_arrays(index)}
  tx = ks.make_optimizer(kc)
  state = ks.init_state(student_p, index, view, tx)
  update = ks.make_update(b.model, kc, view, tx)

  def lp(state, y):
    p = view.merge(student_p, state['delta'], ks._index_arrays(index))
    return float(np.sum([np.log(np.exp(x - np.logaddexp.reduce(x)))[t] for x, t in
                         zip(_logits(b, p, student_cms, [5, 6] + y)[1:4], y)]))

  before = (lp(state, [40, 41, 42]), lp(state, [50, 51, 52]))
  for _ in range(5):
    state, _ = update(state, frozen, batch)
  assert update._cache_size() == 1       # the fresh state and the updated one share one compilation
  after = (lp(state, [40, 41, 42]), lp(state, [50, 51, 52]))
  assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_one_and_eight_devices_give_the_same_update(devices8):
  outs = []
  for mesh in (helpers.mesh(), helpers.mesh(data=2, fsdp=2, tensor=2)):
    b = _built(mesh=mesh)
    student_p, student_cms, index = ks.expand_student(b.params, b.cms, (0, 1))
    kc = ks.KSConfig(alpha=1.0, lam=0.0, gamma=0.0)
    view = ks.View((0, 1), True)
    tx = ks.make_optimizer(kc)
    rows = [{'s': [5, 6, 7], 't': [9, 8, 7], 'y': [10, 11, 12], 'div_w': 0.5, 'pg_w': 0, 'adv': 0},
            {'s': [5], 't': [1, 2, 5], 'y': [20, 21], 'div_w': 0.5, 'pg_w': 0, 'adv': 0}] * 2
    batch = ks._pad_rows(rows, pad_id=TOK.pad_id, n_rows=4, buckets=(8,), n_gen=8)
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(('data', 'fsdp')))
    batch = jax.device_put(batch, jax.tree.map(lambda _: sh, batch))
    frozen = {'teacher': {'params': b.params, 'cms': b.cms}, 'student': {'params': student_p, 'cms': student_cms},
              'index': ks._index_arrays(index)}
    state, m = ks.make_update(b.model, kc, view, tx)(ks.init_state(student_p, index, view, tx), frozen, batch)
    outs.append((float(m['loss']), _flat(jax.device_get(state['delta']))))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5)
  for k in outs[0][1]:
    np.testing.assert_allclose(outs[0][1][k], outs[1][1][k], atol=1e-6)


def test_config_guards():
  with pytest.raises(ValueError, match='alpha'):
    ks.KSConfig(alpha=1.5)
  with pytest.raises(ValueError, match="beta=1.0 must be in \\(0, 1\\) for 'jsd'"):
    ks.KSConfig(beta=1.0)
  with pytest.raises(ValueError, match='sleep.ks.lamda is not'):
    ks.KSConfig.from_config({'lamda': 0.5})
  b = _built()
  with pytest.raises(ValueError, match='needs a judge'):
    ks.Seeder(b.model, ks.KSConfig(gamma=0.5, alpha=0.5), TOK, _sampler(b))


# ---- the level -> level protocol ------------------------------------------------------------------

def _wake(b, steps, hold_last):
  wcfg = wake_lib.WakeConfig(level_of_layer=(0, 1), periods=(2, 4), lrs=(0.05, 0.02), optimizer='sgd')
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, copy=True), t)   # the wake step donates its state
  state = wake_lib.init_wake_state(copy(b.params), copy(b.cms), wcfg)
  step = wake_lib.make_wake_step(b.model, wcfg)
  rng = np.random.default_rng(0)
  for i in range(steps):
    x = rng.integers(3, 200, size=(2, 17))
    batch = {'inputs': x[:, :-1], 'targets': x[:, 1:], 'weights': np.ones((2, 16), np.float32)}
    state, _ = step(state, batch, hold=[True, True] if hold_last and i == steps - 1 else None)
  return wcfg, state


def test_held_boundary_then_sender_update_equals_the_wake_step():
  """Holding the boundary and applying `sender_update` afterwards is exactly the update the wake step applies."""
  b = _built()
  b.params, b.cms, _ = ks.expand_student(b.params, b.cms, (0,))   # the sender has an active expert
  wcfg, ref = _wake(b, 4, hold_last=False)
  wcfg, held = _wake(b, 4, hold_last=True)
  assert any(np.any(np.asarray(a) != 0) for a in jax.tree.leaves(held['acc'][0]))
  from sleep_jax.cycle import apply_held
  applied = apply_held(held, wcfg, [0, 1])
  for k, v in _flat(ref['params']).items():
    np.testing.assert_allclose(_flat(applied['params'])[k], v, atol=1e-6, err_msg='/'.join(k))
  assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(applied['acc']))

  updates, _ = ks.sender_update(held, wcfg, 0)
  params, cms, index = ks.protocol_student(held, wcfg, 0, (1,), updates)
  assert not np.asarray(cms['layers_0']['mlp']['active']).any()       # the sender's experts are pruned
  assert np.asarray(cms['layers_1']['mlp']['active'])[index['layers_1']]   # a new expert in the receiver
  np.testing.assert_allclose(np.asarray(params['layers_0']['mlp']['w_up']),
                             np.asarray(ref['params']['layers_0']['mlp']['w_up']), atol=1e-6)
