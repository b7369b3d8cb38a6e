"""Wake step (PAPER Eq. 2): each CMS level updates only at its chunk boundary, by lr x the sum of the chunk's
gradients (computed here independently); frozen layers and attention never move; one compilation per stream;
1 and 8 devices agree."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from sleep_jax import sharding
from sleep_jax.models.llama import ModelConfig, Transformer
from sleep_jax.phases import wake
from tests.helpers import mesh

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                  n_experts=2, expert_rank=4)
MODEL = Transformer(CFG)
WCFG = wake.WakeConfig(level_of_layer=(0, 1, 2, -1), periods=(1, 2, 4), lrs=(0.1, 0.05, 0.2), optimizer='sgd')
N_STEPS = 8


def abstract_vars():
  return jax.eval_shape(lambda r: MODEL.init(r, jnp.zeros((1, 1), jnp.int32)), jax.random.key(0))


def host_params(seed=0):
  """Random host params from the abstract tree (no init compile); expert 0 active in every layer."""
  rng = np.random.default_rng(seed)
  shapes = jax.tree.map(lambda b: b.value.shape, abstract_vars()['params'], is_leaf=lambda b: hasattr(b, 'value'))
  params = jax.tree.map(lambda s: ((1 + 0.1 * rng.normal(size=s)) if len(s) == 1 else 0.2 * rng.normal(size=s))
                        .astype(np.float32), shapes, is_leaf=lambda s: isinstance(s, tuple))
  cms = {f'layers_{i}': {'mlp': {'active': np.array([True, False])}} for i in range(CFG.n_layers)}
  return params, cms


def batches(n=N_STEPS, B=4, L=8, seed=1):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    toks = rng.integers(0, CFG.vocab_size, (B, L + 1)).astype(np.int32)
    w = (rng.random((B, L)) > 0.2).astype(np.float32)
    out.append({'inputs': toks[:, :-1], 'targets': toks[:, 1:], 'weights': w})
  return out


def to_device(tree):
  return jax.tree.map(jnp.asarray, tree)


def flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def level_of(path: str, wcfg=WCFG) -> int:
  parts = path.split('/')
  return wcfg.level_of_layer[int(parts[0][7:])] if parts[0].startswith('layers_') and parts[1] == 'mlp' else -1


@jax.jit
def ref_grad(params, cms, batch):
  """Independent reference: jax.grad of a hand-written weighted CE at the given params."""
  def loss(p):
    logits = MODEL.apply({'params': p, 'cms': cms}, batch['inputs'])[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch['targets'][..., None], axis=-1)[..., 0]
    return jnp.sum(nll * batch['weights']) / jnp.sum(batch['weights'])
  return jax.grad(loss)(params)


def run_stream(wcfg, n=N_STEPS):
  params, cms = host_params()
  state = wake.init_wake_state(to_device(params), to_device(cms), wcfg)
  step = wake.make_wake_step(MODEL, wcfg)
  seq, bounds, losses = [flat(params)], [], []
  for b in batches(n):
    state, metrics = step(state, to_device(b))
    seq.append(flat(jax.device_get(state['params'])))
    bounds.append(np.asarray(metrics['boundary']))
    losses.append(float(metrics['loss']))
  return dict(seq=seq, boundary=bounds, losses=losses, n_traces=step.n_traces, state=jax.device_get(state), cms=cms)


@pytest.fixture(scope='module')
def stream():
  return run_stream(WCFG)


def test_levels_change_only_at_their_chunk_boundaries(stream):
  seq = stream['seq']
  for s in range(N_STEPS):
    expected_b = [(s + 1) % c == 0 for c in WCFG.periods]
    np.testing.assert_array_equal(stream['boundary'][s], expected_b, err_msg=f'step {s}')
    for path in seq[0]:
      l = level_of(path)
      changed = not np.array_equal(seq[s][path], seq[s + 1][path])
      assert changed == (l >= 0 and expected_b[l]), (s, path)
      # the inactive expert (index 1) never moves, even at its level's boundary
      if path.endswith(('expert_a', 'expert_b')):
        np.testing.assert_array_equal(seq[s + 1][path][1], seq[0][path][1])
      if path.endswith('router'):
        np.testing.assert_array_equal(seq[s + 1][path][:, 1], seq[0][path][:, 1])
  assert int(stream['state']['step']) == N_STEPS
  # accumulators are reset at the last boundary (step 8 is a boundary of every level)
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(stream['state']['acc']))


def test_update_is_minus_lr_times_sum_of_chunk_gradients(stream):
  seq, cms, bs = stream['seq'], to_device(stream['cms']), batches()
  unflat = lambda f: traverse_util.unflatten_dict({tuple(k.split('/')): jnp.asarray(v) for k, v in f.items()})
  grads = [flat(jax.device_get(ref_grad(unflat(seq[t]), cms, to_device(bs[t])))) for t in range(N_STEPS)]
  n_checked = 0
  for l, (c, lr) in enumerate(zip(WCFG.periods, WCFG.lrs)):
    for end in range(c, N_STEPS + 1, c):          # chunk = steps end-c .. end-1, applied after step end-1
      for path in seq[0]:
        if level_of(path) != l:
          continue
        g_sum = sum(grads[t][path].astype(np.float64) for t in range(end - c, end))
        expected = seq[end - c][path] - lr * g_sum
        np.testing.assert_allclose(seq[end][path], expected, rtol=1e-5, atol=1e-6, err_msg=f'{path} @ {end}')
        n_checked += 1
  assert n_checked == 6 * (8 + 4 + 2)


def test_one_compilation_for_the_whole_stream(stream):
  assert stream['n_traces'] == 1


def test_adamw_and_train_other():
  """First Adam step on the chunk sum G: update = -lr * G / (|G| + eps) (bias-corrected moments). With
  train_other, attention / norms / embeddings learn every step; -1 layers and period-0 levels stay frozen."""
  wcfg = wake.WakeConfig(level_of_layer=(-1, 0, 1, 1), periods=(2, 0), lrs=(1e-2, 1e-2), optimizer='adamw',
                         eps=1e-3, train_other=True, other_lr=1e-3)
  run = run_stream(wcfg, n=2)
  seq, cms, bs = run['seq'], to_device(run['cms']), batches(2)
  assert [b.tolist() for b in run['boundary']] == [[False, False], [True, False]]
  unflat = lambda f: traverse_util.unflatten_dict({tuple(k.split('/')): jnp.asarray(v) for k, v in f.items()})
  g = [flat(jax.device_get(ref_grad(unflat(seq[t]), cms, to_device(bs[t])))) for t in range(2)]
  for path in seq[0]:
    parts = path.split('/')
    if parts[0].startswith('layers_') and parts[1] == 'mlp':
      if level_of(path, wcfg) == 0:   # layer 1; its params are constant within the chunk
        assert np.array_equal(seq[1][path], seq[0][path])
        G = g[0][path] + g[1][path]
        np.testing.assert_allclose(seq[2][path] - seq[0][path], -1e-2 * G / (np.abs(G) + 1e-3), rtol=1e-4,
                                   atol=1e-7, err_msg=path)
      else:                           # layer 0 (-1) and the period-0 level (layers 2, 3)
        np.testing.assert_array_equal(seq[2][path], seq[0][path])
    else:                             # attention, norms, embeddings: first Adam step each step
      np.testing.assert_allclose(seq[1][path] - seq[0][path], -1e-3 * g[0][path] / (np.abs(g[0][path]) + 1e-3),
                                 rtol=1e-3, atol=1e-7, err_msg=path)
      assert not np.array_equal(seq[2][path], seq[1][path]), path


BAD = [
    (dict(level_of_layer=(0, 1), periods=(1, 2), lrs=(0.1,)), 'wake.lrs has 1 entries'),
    (dict(level_of_layer=(0, 1), periods=(1, -2), lrs=(0.1, 0.1)), r'wake.periods\[1\]=-2 must be'),
    (dict(level_of_layer=(0, 1), periods=(2, 3), lrs=(0.1, 0.1)), r'wake.periods: C\^\(0\)=2 must divide C\^\(1\)=3'),
    (dict(level_of_layer=(0, 2), periods=(1, 2), lrs=(0.1, 0.1)), r'wake.level_of_layer\[1\]=2 references'),
    (dict(level_of_layer=(0, -2), periods=(1, 2), lrs=(0.1, 0.1)), r'wake.level_of_layer\[1\]=-2 references'),
    (dict(level_of_layer=(0,), periods=(1,), lrs=(0.1,), optimizer='adam'), "wake.optimizer='adam'"),
    (dict(level_of_layer=(0,), periods=(1,), lrs=(-1.0,)), r'wake.lrs\[0\]=-1.0'),
    (dict(level_of_layer=(0,), periods=(), lrs=()), 'wake.periods must define'),
    (dict(level_of_layer=(0,), periods=(1,), lrs=(0.1,), train_other=True), 'wake.other_lr=0.0'),
]


@pytest.mark.parametrize('kw,match', BAD)
def test_bad_configs_name_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    wake.WakeConfig(**kw)


def test_config_plumbing_and_default_levels():
  # period-0 levels are ignored by the divisibility rule
  wake.WakeConfig(level_of_layer=(0, 1, 2), periods=(2, 0, 4), lrs=(0.1, 0.1, 0.1))
  c = wake.WakeConfig.from_config(mlc.ConfigDict(dict(level_of_layer=[0, 1, 1, -1], periods=[1, 10], lrs=[1.0, 0.5])))
  assert c.level_of_layer == (0, 1, 1, -1) and c.periods == (1, 10) and c.n_levels == 2
  with pytest.raises(ValueError, match='wake.period is not a wake config field'):
    wake.WakeConfig.from_config(dict(level_of_layer=[0], period=[1], lrs=[1.0]))
  params, cms = host_params()
  with pytest.raises(ValueError, match='wake.level_of_layer has 3 entries but the model has 4 layers'):
    wake.init_wake_state(params, cms, wake.WakeConfig(level_of_layer=(0, 0, 0), periods=(1,), lrs=(0.1,)))
  masks = [flat(m) for m in wake.level_masks(params, WCFG)]
  assert [sorted({p.split('/')[0] for p, v in m.items() if v}) for m in masks] == [['layers_0'], ['layers_1'],
                                                                                   ['layers_2']]
  assert all(p.split('/')[1] == 'mlp' for m in masks for p, v in m.items() if v)
  assert sum(v for v in masks[0].values()) == 6     # w_gate, w_up, w_down, router, expert_a, expert_b
  assert wake.default_levels(30, 3, 1000) == ((0,) * 10 + (1,) * 10 + (2,) * 10, (1000, 10000, 100000))
  assert wake.default_levels(7, 3, 1, factor=2) == ((0, 0, 0, 1, 1, 2, 2), (1, 2, 4))
  with pytest.raises(ValueError, match='n_levels=5 must be in 1..n_layers=4'):
    wake.default_levels(4, 5, 1)
  # accumulators only where a level needs one (period > 1); optimizer state for trained levels only
  state = wake.init_wake_state(params, cms, WCFG)
  assert [sorted(a) for a in state['acc']] == [[], ['layers_1'], ['layers_2']]


def run_sharded(m, n=4):
  params, cms = host_params()
  shard = sharding.logical_shardings(abstract_vars(), m, sharding.DEFAULT_RULES)
  state = wake.init_wake_state(to_device(params), to_device(cms), WCFG)
  ssh = wake.wake_state_shardings(state, shard['params'], m)
  state = jax.device_put(state, ssh)
  bsh = sharding.batch_sharding(m, sharding.DEFAULT_RULES)
  step = wake.make_wake_step(MODEL, WCFG, ssh, bsh)
  losses = []
  for b in batches(n):
    state, metrics = step(state, jax.device_put(b, bsh))
    losses.append(float(metrics['loss']))
  return flat(jax.device_get(state['params'])), losses, ssh, step.n_traces


def test_one_and_eight_devices_agree(stream, devices8):
  """The unsharded single-device stream vs the same stream on a data=2, fsdp=2, tensor=2 mesh."""
  f8, l8, ssh, n_traces = run_sharded(mesh(2, 2, 2))
  assert n_traces == 1
  assert ssh['params']['layers_0']['mlp']['expert_a'].spec == P(None, 'fsdp')   # canonical: trailing None dropped
  assert ssh['acc'][1]['layers_1']['mlp']['w_up'].spec == P('fsdp', 'tensor')
  np.testing.assert_allclose(l8, stream['losses'][:4], rtol=1e-5)
  for path, x in stream['seq'][4].items():
    np.testing.assert_allclose(f8[path], x, rtol=1e-5, atol=1e-7, err_msg=path)


def test_a_holdable_period_1_level_keeps_an_accumulator_and_can_be_held():
  """The protocol's period-1 sender (WakeConfig.holdable): without holdable a period-1 level has no accumulator
  and `hold` cannot stop its update (what made sender_update raise); holdable, a held step leaves its weights as
  they were with the step's gradient in the accumulator, and an unheld step updates them as the plain path does."""
  import dataclasses
  params, cms = host_params()
  plain, holdable = WCFG, dataclasses.replace(WCFG, holdable=(0, 1, 2))
  assert wake.init_wake_state(params, cms, plain)['acc'][0] == {}
  fresh = lambda w: jax.tree.map(np.asarray, wake.init_wake_state(params, cms, w))   # (the step donates it)
  assert jax.tree.leaves(fresh(holdable)['acc'][0])
  b = batches(1)[0]
  step_plain, step_h = wake.make_wake_step(MODEL, plain), wake.make_wake_step(MODEL, holdable)
  ref, _ = step_plain(to_device(fresh(plain)), b, hold=[True, False, False])
  free, m_free = step_h(to_device(fresh(holdable)), b)
  held, m_held = step_h(to_device(fresh(holdable)), b, hold=[True, False, False])
  assert np.asarray(m_free['boundary'])[0] and not np.asarray(m_held['boundary'])[0]
  p0, pr, pf, ph = flat(params), flat(ref['params']), flat(free['params']), flat(held['params'])
  lvl0 = [k for k in p0 if level_of(k) == 0]
  for k in lvl0:
    assert not np.array_equal(pr[k], p0[k]), k                        # plain path: hold is ignored
    np.testing.assert_allclose(pf[k], pr[k], rtol=1e-6, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(ph[k], p0[k], err_msg=k)
  assert np.abs(np.concatenate([np.ravel(x) for x in jax.tree.leaves(held['acc'][0])])).max() > 0
  assert not any(np.asarray(x).any() for x in jax.tree.leaves(free['acc'][0]))
