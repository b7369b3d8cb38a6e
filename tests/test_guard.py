"""Non-finite values (sleep_jax/guard.py): a NaN stops the phase naming phase, step and quantity and leaves the
newest checkpoint good; `guard.nonfinite=skip` skips the bad batch (state unchanged) and counts it."""
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import lm as lm_config
from sleep_jax import checkpoint, guard, jobs
from sleep_jax.data.lm import LMBatches


def test_guard_messages_and_counts():
  g = guard.NonFiniteGuard()
  assert g.check('wake', 3, {'loss': 1.0, 'grad_norm': np.float32(2)})
  with pytest.raises(guard.NonFiniteError, match=r'wake: non-finite grad_norm=inf at step 3.*nonfinite=skip'):
    g.check('wake', 3, {'loss': 1.0, 'grad_norm': np.inf})
  s = guard.NonFiniteGuard('skip', max_skips=2)
  assert not s.check('lm', 1, {'loss': np.nan}) and not s.check('lm', 2, {'reward': np.array([1, np.nan])})
  assert s.skipped == {'lm': 2}
  with pytest.raises(guard.NonFiniteError, match='3 skipped batches.*max_skips=2'):
    s.check('lm', 5, {'loss': np.nan})
  with pytest.raises(ValueError, match="guard.nonfinite='ignore' is not one of"):
    guard.NonFiniteGuard('ignore')


def test_in_jit_helpers():
  ok = jax.jit(guard.finite)({'a': np.ones(3), 'b': np.int32(1)}, np.float32(2))
  assert bool(ok) and not bool(jax.jit(guard.finite)(np.array([1.0, np.nan])))
  new, old = {'w': np.full(2, np.nan)}, {'w': np.ones(2)}
  np.testing.assert_array_equal(guard.keep_if(False, new, old)['w'], old['w'])


def _poisoned(bad_step):
  """LMBatches whose batch for `bad_step` (1-based) has NaN weights: a NaN loss and NaN gradients."""
  real = LMBatches.__call__

  def call(self, step):
    b = real(self, step)
    if step + 1 == bad_step:
      b = dict(b, weights=np.full_like(b['weights'], np.nan))
    return b
  return call


def _lm_config(nonfinite):
  c = lm_config.get_config('smoke')
  with c.unlocked():
    c.data.source = 'synthetic'
    c.train.steps, c.checkpoint.every, c.checkpoint.keep, c.log_every = 5, 1, None, 5
    c.guard.nonfinite = nonfinite
  return c


def _params(workdir, step):
  with checkpoint.Checkpointer(workdir, read_only=True) as ck:
    import orbax.checkpoint as ocp
    tree = ocp.PyTreeCheckpointer().restore(str(ck.directory / str(step) / 'state'))
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree['params']).items()}


def test_lm_nan_stops_naming_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, devices8):
  monkeypatch.setattr(LMBatches, '__call__', _poisoned(3))
  with pytest.raises(guard.NonFiniteError, match=r'^lm: non-finite loss=nan, grad_norm=nan at step 3'):
    jobs.lm(_lm_config("stop"), str(tmp_path))     # checked before every checkpoint (every=1)
  assert checkpoint.latest_step(tmp_path) == 2     # nothing from step 3 on was saved
  assert all(np.isfinite(v).all() for v in _params(tmp_path, 2).values())


def test_lm_nan_skipped_leaves_the_state_unchanged_and_is_counted(tmp_path, monkeypatch, devices8):
  monkeypatch.setattr(LMBatches, '__call__', _poisoned(3))
  res = jobs.lm(_lm_config('skip'), str(tmp_path))
  assert res['nonfinite_skips'] == {'lm': 1}
  assert json.loads((tmp_path / 'results.json').read_text())['nonfinite_skips'] == {'lm': 1}
  p2, p3, p4 = (_params(tmp_path, s) for s in (2, 3, 4))
  for k in p2:
    np.testing.assert_array_equal(p2[k], p3[k], err_msg=k)        # the skipped step changed nothing
  assert any(not np.array_equal(p3[k], p4[k]) for k in p3)          # the next one trained again
  assert all(np.isfinite(v).all() for v in p4.values())
