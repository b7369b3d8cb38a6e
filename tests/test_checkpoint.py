"""Checkpoint round trips across meshes, retention, atomicity, and the metric logger's JSONL."""
import io
import json
import logging
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sleep_jax import checkpoint, metrics, sharding, train
from sleep_jax.models.llama import ModelConfig, Transformer

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64)
OPT = ml_collections.ConfigDict(dict(name='adamw', lr=1e-3))
META = {'config': {'optim': OPT.to_dict(), 'seed': 3}, 'model': {'d_model': 32, 'n_layers': 2},
        'lineage': [{'phase': 'wake', 'step': 1}], 'note': None, 'ok': True, 'lr': 1e-3}
EXTRA = {'data_iter': {'pos': 17, 'epoch': 1}, 'cycle': 2, 'seeds': [0, 1, 2]}


def _init_fn(model):
  return lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))['params']


def _shardings(mesh, rules=sharding.DEFAULT_RULES):
  """Param/state shardings for the tiny model on `mesh` (abstract; no arrays built)."""
  model = Transformer(CFG)
  abstract = jax.eval_shape(_init_fn(model), jax.random.key(0))
  p_sh = sharding.logical_shardings(abstract, mesh, rules)
  params = nn.meta.unbox(abstract)
  tx = train.make_optimizer(OPT, params)
  state = jax.eval_shape(lambda p: train.init_state(p, tx), params)
  sh = train.state_shardings(state, p_sh, mesh)
  return _with_keys(state, mesh), _with_keys(sh, mesh, shardings=True)


def _with_keys(tree, mesh, shardings=False):
  """Add a typed RNG key (replicated) and a batch of 8 keys sharded over all devices."""
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names))
  if shardings:
    return dict(tree, rng=rep, rngs=split)
  return dict(tree, rng=jax.random.key(0), rngs=jax.random.split(jax.random.key(0), 8))


@pytest.fixture(scope='module')
def trained(devices8):
  """(mesh, adamw state after one optimizer update, its shardings) on data=2, fsdp=2, tensor=2.

  Random parameters are placed straight onto their shardings (no jitted model init or train step: the
  checkpoint only cares about the tree, its shardings, and non-trivial values).
  """
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  abstract, sh = _shardings(mesh)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x, s: jax.device_put(rng.standard_normal(x.shape).astype(x.dtype), s),
                        abstract['params'], sh['params'])
  tx = train.make_optimizer(OPT, params)
  train_sh = {k: sh[k] for k in ('step', 'params', 'opt_state')}

  def update(s):
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, s['params'])
    updates, opt_state = tx.update(grads, s['opt_state'], s['params'])
    return {'step': s['step'] + 1, 'params': optax.apply_updates(s['params'], updates), 'opt_state': opt_state}

  state = jax.jit(update, out_shardings=train_sh)(jax.device_put(train.init_state(params, tx), train_sh))
  state = dict(state, rng=jax.device_put(jax.random.key(42), sh['rng']),
               rngs=jax.device_put(jax.random.split(jax.random.key(7), 8), sh['rngs']))
  return mesh, state, sh


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x), jax.device_get(tree))


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(_host(a)), jax.tree.leaves(_host(b))):
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


def _assert_shardings(tree, shardings):
  for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim), (jax.tree_util.keystr(path), x.sharding, s)


def test_round_trip_bit_identical_with_shardings_meta_and_extra(trained, tmp_path):
  mesh, state, sh = trained
  assert int(state['step']) == 1
  with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(1, state, META, EXTRA)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    got, meta, extra = ckpt.restore(checkpoint.abstract_like(state, sh))
  _assert_identical(got, state)
  _assert_shardings(got, sh)
  assert got['params']['embed'].sharding.spec == P('tensor', 'fsdp')
  assert got['rng'].dtype == state['rng'].dtype and got['rngs'].dtype == state['rngs'].dtype
  assert json.dumps(meta, sort_keys=True) == json.dumps(META, sort_keys=True)
  assert extra == EXTRA
  assert checkpoint.read_meta(tmp_path) == meta and checkpoint.latest_step(tmp_path) == 1


@pytest.mark.parametrize('where', ['one_device', 'data8'])
def test_restore_onto_other_meshes(trained, tmp_path, where):
  _, state, _ = trained
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, META)
  devs = jax.devices()
  if where == 'one_device':
    mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devs[:1])
    rules = sharding.DEFAULT_RULES
  else:  # a different layout: vocab and mlp split 8 ways over 'data'
    mesh = sharding.make_mesh({'data': 8})
    rules = (('vocab', 'data'), ('mlp', 'data'), ('batch', 'data'))
  abstract, sh = _shardings(mesh, rules)
  ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
  got, _, extra = ckpt.restore(checkpoint.abstract_like(abstract, sh))
  ckpt.close()
  assert extra is None
  _assert_identical(got, state)
  _assert_shardings(got, sh)
  assert all(set(x.sharding.device_set) <= set(mesh.devices.flat) for x in jax.tree.leaves(got))
  if where == 'data8':
    assert got['params']['embed'].sharding.spec == P('data')   # canonical: trailing None dropped


def test_keep_save_every_and_async(trained, tmp_path):
  _, state, _ = trained
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, save_every=2, async_save=True)
  saved = [ckpt.save(s, state, {'step': s}) for s in range(1, 7)]
  assert saved == [False, True, False, True, False, True]
  assert ckpt.save(7, state, {'step': 7}, force=True)
  assert not ckpt.save(7, state, {'step': 7}, force=True)  # already there
  ckpt.wait()
  assert ckpt.all_steps() == [6, 7]
  assert sorted(p.name for p in ckpt.directory.iterdir() if p.name.isdigit()) == ['6', '7']
  assert checkpoint.read_meta(tmp_path, step=6) == {'step': 6}
  ckpt.close()


def test_unfinished_step_dirs_are_never_latest(trained, tmp_path):
  _, state, _ = trained
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, state, {'step': 2})
    ckpt.save(4, state, {'step': 4})
  d = tmp_path / 'checkpoints'
  (d / '9' / 'state').mkdir(parents=True)  # half-written, no commit marker
  (d / '9' / 'state' / 'manifest.ocdbt').write_bytes(b'\0' * 7)
  (d / '9' / '_CHECKPOINT_METADATA').write_text('{}')
  (d / '12.orbax-checkpoint-tmp-1234' / 'state').mkdir(parents=True)  # interrupted atomic-rename save
  assert checkpoint.latest_step(tmp_path) == 4  # read-only view ignores both, moves nothing
  assert checkpoint.read_meta(tmp_path) == {'step': 4}
  assert (d / '9').exists()
  with checkpoint.Checkpointer(tmp_path) as ckpt:  # a writer moves them out of Orbax's sight
    assert ckpt.all_steps() == [2, 4]
    assert not (d / '9').exists()
    assert [p.name.split('-')[0] for p in (d / checkpoint.INCOMPLETE_DIR).iterdir()] == ['9']
    assert ckpt.save(9, state, {'step': 9}, force=True)  # the step number is free again
    assert ckpt.latest_step() == 9
  assert not (d / '12.orbax-checkpoint-tmp-1234').exists()  # Orbax's cleanup_tmp_directories (in background)


@pytest.fixture
def quiet_unraisable(monkeypatch):
  """Record unraisable exceptions as plain strings for one test.

  Orbax quirk: after a failed read, tensorstore callbacks from a C thread hit Orbax's already closed asyncio
  loop ('Event loop is closed'). pytest's own hook would format that traceback (ast.parse) off the main
  thread, which races CPython 3.11's global AST state and later breaks assertion rewriting.
  """
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: seen.append(f'{u.exc_type.__name__}: {u.exc_value}'))
  yield seen
  time.sleep(0.2)  # late callbacks still land here
  assert all('Event loop is closed' in m for m in seen), seen


def test_damaged_latest_falls_back_with_warning(trained, tmp_path, caplog, quiet_unraisable):
  mesh, state, sh = trained
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, state, {'step': 2}, {'pos': 2})
    ckpt.save(4, state, {'step': 4}, {'pos': 4})
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '4' / 'state'):  # garble the array store's index
    for f in files:
      if f == 'manifest.ocdbt':
        with open(os.path.join(root, f), 'r+b') as fh:
          fh.write(b'garbage!' * 4)
  target = checkpoint.abstract_like(state, sh)
  ckpt = checkpoint.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 4
  with pytest.raises(Exception):
    ckpt.restore(target, step=4)  # an explicit step never falls back
  wrong = dict(target, rngs=jax.ShapeDtypeStruct((4,), target['rngs'].dtype, sharding=sh['rngs']))
  with pytest.raises(ValueError, match='does not match the restore target'):
    ckpt.restore(wrong)  # a wrong target is the caller's error: no fallback
  assert ckpt.latest_step() == 4
  with caplog.at_level(logging.WARNING, logger='sleep_jax.checkpoint'):
    got, meta, extra = ckpt.restore(lambda meta: target)
  assert meta == {'step': 2} and extra == {'pos': 2}
  assert any('step 4' in r.getMessage() and 'unreadable' in r.getMessage() for r in caplog.records)
  _assert_identical(got, state)
  assert ckpt.all_steps() == [2]  # step 4 moved to _incomplete/, so it can be saved again
  assert ckpt.save(4, got, {'step': 4}, force=True)
  ckpt.close()


def test_meta_must_be_json(trained, tmp_path):
  _, state, _ = trained
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(TypeError, match=r'meta\.rng'):
      ckpt.save(1, state, {'rng': jax.random.key(0)})
    with pytest.raises(TypeError, match='keys must be str'):
      ckpt.save(1, state, {'a': {1: 2}})
    assert ckpt.save(1, state, {'seed': np.int64(3), 'w': jnp.arange(3), 'cfg': (1, 2)})
  assert checkpoint.read_meta(tmp_path) == {'seed': 3, 'w': [0, 1, 2], 'cfg': [1, 2]}


def test_metric_logger_jsonl_appends(tmp_path):
  log = metrics.MetricLogger(tmp_path, every=2)
  written = [log.write_scalars(s, {'loss': jnp.float32(1.5) + s, 'tokens': jnp.int32(8)}) for s in range(5)]
  assert written == [True, False, True, False, True]
  log.write_hparams({'optim': {'lr': 1e-3, 'name': 'adamw'}, 'mesh': (2, 2, 2)})
  log.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(x) for x in lines] == [{'step': s, 'loss': 1.5 + s, 'tokens': 8} for s in (0, 2, 4)]
  assert any(p.name.startswith('events.out.tfevents') for p in tmp_path.iterdir())
  with metrics.MetricLogger(tmp_path, every=2) as log2:  # a resumed run appends
    log2.write_scalars(4, {'loss': 0.25})
    log2.write_scalars(5, {'loss': 0.5}, force=True)
    with pytest.raises(ValueError, match='not a scalar'):
      log2.write_scalars(6, {'loss': jnp.ones(3)})
  rows = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [0, 2, 4, 4, 5]
  assert [(r['step'], r['loss']) for r in metrics.read_jsonl(tmp_path)] == [(0, 1.5), (2, 3.5), (4, 0.25), (5, 0.5)]
  assert json.loads((tmp_path / 'hparams.json').read_text())['optim.lr'] == 1e-3


def test_progress_lines_when_not_a_tty():
  """Output that is not a terminal (CI, nohup, a notebook) gets a plain line at most every 20 s: when a step ends
  after 20 s of silence, and from the heartbeat while one step runs longer; a quick phase stays silent (fake
  clock). Issue 17: the main job's log was silent for 6 minutes."""
  t = [0.0]
  log = metrics.LineLog(clock=lambda: t[0], every=20.0)
  buf = io.StringIO()   # not a TTY
  for _ in metrics.progress(range(3), 'quick', file=buf, log=log):
    t[0] += 1
  assert buf.getvalue() == ''
  bar = metrics.progress(range(10), 'ks', file=buf, log=log)
  for i in bar:          # 7 s steps: a line every third step (21 s), then 'done'
    t[0] += 7
    bar.set_metrics({'loss': jnp.float32(0.5 + i)})
  assert buf.getvalue().splitlines() == ['ks: 3/10, 21 s, loss=2.5', 'ks: 6/10, 42 s, loss=5.5',
                                         'ks: 9/10, 63 s, loss=8.5', 'ks: 10/10 done, 70 s, loss=9.5']
  buf.truncate(0), buf.seek(0)
  bar = metrics.progress(range(2), 'dream', file=buf, log=log)
  for _ in bar:          # 50 s steps: the heartbeat (called every 5 s here) speaks during them
    for _ in range(10):
      t[0] += 5
      log.beat()
    bar.set_metrics({'reward_rate': 0.25})
  assert buf.getvalue().splitlines() == [
      'dream: 0/2, 20 s, step 1 running for 20 s', 'dream: 0/2, 40 s, step 1 running for 40 s',
      'dream: 1/2, 60 s, step 2 running for 10 s, reward_rate=0.25',
      'dream: 1/2, 80 s, step 2 running for 30 s, reward_rate=0.25',
      'dream: 1/2, 100 s, step 2 running for 50 s, reward_rate=0.25', 'dream: 2/2 done, 100 s, reward_rate=0.25']
  t[0] += 100
  log.beat()             # no phase running: nothing to say
  assert log.bars == [] and buf.getvalue().count('\n') == 6 and log._thread is None


def test_progress_bar_on_a_tty_or_forced():
  buf = io.StringIO()
  bar = metrics.progress(3, 'loud', force=True, file=buf)
  bar.set_metrics({'loss': jnp.float32(0.123456), 'n': jnp.int32(4)})
  bar.update(3)
  bar.close()
  assert 'loud' in buf.getvalue() and 'loss=0.1235' in buf.getvalue() and 'n=4' in buf.getvalue()


def test_relative_workdir_is_resolved(tmp_path, monkeypatch):
  """`--workdir=runs/main` is relative; Orbax needs absolute paths (found by `make run` in a fresh clone)."""
  monkeypatch.chdir(tmp_path)
  from sleep_jax.checkpoint import Checkpointer
  ck = Checkpointer('runs/rel', keep=2)
  ck.save(1, {'x': jnp.arange(3.0)}, {'k': 1}, force=True)
  ck.wait()
  assert ck.directory.is_absolute() and (tmp_path / 'runs/rel/checkpoints/1').exists()
