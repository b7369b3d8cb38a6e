"""Multi-host on one machine: 2 CPU processes x 4 fake devices joined by jax.distributed (gloo collectives) into
one 8-device mesh, started by experiments/launch.py, against 1 process x 8 devices with the same config.

- `lm` smoke job (grain/TFDS batches): process 1 is SIGKILLed after step 7 (crash point `train_step:7`,
  sleep_jax/faults.py; process 0 is then killed by the launcher, as a lost host takes down a job), both are
  rerun and resume from step 5; the finished run has the uninterrupted 1-process run's losses and gradient norms
  at every logged step, token counts and final state, to float tolerance (rtol 1e-5; cross-process all-reduces
  run through gloo and may sum partial results in another order than the in-process reduction; measured
  differences are ~1e-7 relative). One 2-process run, not two, keeps the test within its CPU budget.
- `sleep` job (smoke, reduced to 1 document, 1 Knowledge Seeding update and 1 Dreaming round: wake + KS +
  Dreaming, QA before/after, the retention probe): same results.json numbers (QA, probe NLLs, KS losses and
  rewards, dream rewards/scores) to tolerance and the same final parameters.

Processes run with a shared persistent compilation cache. On failure each process's output tail is shown.
"""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL, ATOL = 1e-5, 1e-6
LM = ['--config=configs/lm.py:smoke']
SLEEP = ['--config=configs/sleep.py:smoke', '--config.knowledge.n_docs=1', '--config.cycle.docs_per_sleep=1',
         '--config.knowledge.with_context_eval=False', '--config.sleep.ks.steps=1', '--config.sleep.dream.rounds=1',
         '--config.sleep.dream.n_dreams=2', '--config.sleep.dream.inner_steps=1',
         '--config.sleep.dream.mstep_steps=1', '--config.cycle.seq_len=64']
TIMEOUT = 600
_TIMING = ('seconds', 'wall_s')
_PER_RUN = ('processes',)   # run_info fields that differ between the layouts by design


def _gloo_available():
  try:
    from jax._src.lib import _jax
    return hasattr(_jax, 'make_gloo_tcp_collectives')
  except ImportError:
    return False


pytestmark = pytest.mark.skipif(not _gloo_available(),
                                reason='this jaxlib has no gloo CPU collectives: CPU processes cannot form one mesh')


@pytest.fixture(scope='module')
def env(data_dir, tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  e = dict(os.environ, PYTHONPATH=ROOT, SLEEP_JAX_DATA_DIR=str(data_dir), JAX_COMPILATION_CACHE_DIR=str(cache),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  e.pop('SLEEP_JAX_CRASH_AT', None)
  return e


def _tails(outs):
  return '\n'.join(f'--- process {i} (last 3000 chars) ---\n{o[-3000:]}' for i, o in enumerate(outs))


def run_one(args, workdir, env):
  """1 process x 8 devices."""
  p = subprocess.run([sys.executable, '-m', 'experiments.main', *args, f'--workdir={workdir}'], cwd=ROOT,
                     env=launch.process_env(8, env), capture_output=True, text=True, timeout=TIMEOUT)
  assert p.returncode == 0, f'1-process run failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}'


def run_two(args, workdir, env, crash_p1=None):
  """2 processes x 4 devices; `crash_p1`: a crash point armed in process 1 only. Returns (rcs, outputs)."""
  extra = {1: {'SLEEP_JAX_CRASH_AT': crash_p1}} if crash_p1 else None
  rcs, outs = launch.launch([*args, f'--workdir={workdir}'], n=2, devices=4, timeout=TIMEOUT, env=env,
                            process_env_extra=extra, out=False, cwd=ROOT)
  if crash_p1 is None:
    assert rcs == [0, 0], f'2-process run failed (rcs {rcs}):\n{_tails(outs)}'
  return rcs, outs


def _strip(x):
  if isinstance(x, dict):
    return {k: _strip(v) for k, v in x.items() if k not in _TIMING + _PER_RUN and not k.endswith('_s')}
  if isinstance(x, list):
    return [_strip(v) for v in x]
  return x


def assert_close_tree(a, b, where='results'):
  """Equal structure and non-float values; floats equal to RTOL/ATOL."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and sorted(a) == sorted(b), f'{where}: keys {sorted(a)} != {sorted(b)}'
    for k in a:
      assert_close_tree(a[k], b[k], f'{where}.{k}')
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), f'{where}: lengths {len(a)} != {len(b)}'
    for i, (x, y) in enumerate(zip(a, b)):
      assert_close_tree(x, y, f'{where}[{i}]')
  elif isinstance(a, float) or isinstance(b, float):
    assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f'{where}: {a} != {b}'
  else:
    assert a == b, f'{where}: {a!r} != {b!r}'


def results(workdir):
  return _strip(json.load(open(os.path.join(workdir, 'results.json'))))


def metrics(workdir):
  rows = {}
  for line in open(os.path.join(workdir, 'metrics.jsonl')):
    r = json.loads(line)
    rows[r['step']] = r   # a resumed run logs some steps again: the last one counts
  return [rows[s] for s in sorted(rows)]


def final_state(workdir):
  ckpts = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  path = os.path.join(ckpts, str(step), 'state')
  with ocp.PyTreeCheckpointer() as c:   # as numpy: the 2-process run's shardings name devices this one lacks
    md = c.metadata(path)
    md = getattr(getattr(md, 'item_metadata', md), 'tree', md)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), md)
    tree = c.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  flat = {}

  def walk(t, prefix):
    if isinstance(t, dict):
      for k, v in t.items():
        walk(v, f'{prefix}/{k}')
    elif isinstance(t, (list, tuple)):
      for i, v in enumerate(t):
        walk(v, f'{prefix}/{i}')
    elif t is not None:
      flat[prefix] = np.asarray(t)
  walk(tree, '')
  return step, flat


def assert_same_state(a, b, exact=False):
  (sa, fa), (sb, fb) = a, b
  assert sa == sb and sorted(fa) == sorted(fb)
  assert any('params' in k for k in fa), sorted(fa)[:5]
  for k in fa:
    if exact or not np.issubdtype(fa[k].dtype, np.floating):
      np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    else:
      np.testing.assert_allclose(fa[k], fb[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_lm_job_on_two_processes_matches_one_even_after_a_process_is_killed(tmp_path, env):
  """1 x 8 uninterrupted vs 2 x 4 with process 1 SIGKILLed after step 7 and both rerun: resumed from step 5, the
  same losses and final state as the uninterrupted run (to float tolerance: the layouts differ; a wrong batch or
  a lost update after the resume moves them by far more)."""
  run_one(LM, tmp_path / 'one', env)
  # Process 1 dies after step 7 (step 5 is checkpointed); the launcher takes process 0 down with it.
  rcs, outs = run_two(LM, tmp_path / 'two', env, crash_p1='train_step:7')
  assert rcs[1] == -9 and '[faults] SIGKILL at train_step #7' in outs[1], f'rcs {rcs}\n{_tails(outs)}'
  assert rcs[0] != 0, f'process 0 outlived its peer: rcs {rcs}\n{_tails(outs)}'
  assert metrics(tmp_path / 'two')[-1]['step'] == 6, 'the killed run logged past its crash'
  rcs, outs = run_two(LM, tmp_path / 'two', env)
  assert all('resuming from step 5' in o for o in outs), _tails(outs)
  one, two = metrics(tmp_path / 'one'), metrics(tmp_path / 'two')
  assert [r['step'] for r in one] == [r['step'] for r in two] == [2, 4, 6, 8, 10, 12]
  for r1, r2 in zip(one, two):
    assert r1['tokens'] == r2['tokens'], (r1, r2)   # the global batch, not num_processes copies of it
    for k in ('loss', 'grad_norm'):
      assert math.isclose(r1[k], r2[k], rel_tol=RTOL), (k, r1, r2)
  assert_same_state(final_state(tmp_path / 'one'), final_state(tmp_path / 'two'))
  r1, r2 = results(tmp_path / 'one'), results(tmp_path / 'two')
  assert (r1.pop('start_step'), r2.pop('start_step')) == (0, 5)
  h1, h2 = r1.pop('history'), r2.pop('history')   # a resumed run's results hold the steps it ran itself
  assert [h['step'] for h in h2] == [6, 8, 10, 12]
  assert_close_tree(h1[-4:], h2, 'history')
  assert r1.pop('devices') == r2.pop('devices') == 8
  assert_close_tree(r1, r2)


def test_sleep_job_on_two_processes_matches_one(tmp_path, env):
  run_one(SLEEP, tmp_path / 'one', env)
  run_two(SLEEP, tmp_path / 'two', env)
  r1, r2 = results(tmp_path / 'one'), results(tmp_path / 'two')
  assert len(r1['sleeps']) == 1 and r1['ks_steps'] and r1['dream_rounds'], r1   # wake, KS and Dreaming all ran
  assert r1.pop('devices') == r2.pop('devices') == 8
  assert_close_tree(r1, r2)
  assert_same_state(final_state(tmp_path / 'one'), final_state(tmp_path / 'two'))
  assert not os.path.exists(tmp_path / 'two' / 'results.json.tmp')


def test_incomplete_process_flags_are_refused_before_anything_runs(tmp_path):
  """--coordinator without --num_processes / --process_id: one error naming the three flags, no workdir."""
  p = subprocess.run([sys.executable, '-m', 'experiments.main', '--config=configs/lm.py:smoke',
                      f'--workdir={tmp_path / "w"}', '--coordinator=127.0.0.1:1'], cwd=ROOT, capture_output=True,
                     text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert p.returncode == 1 and '--coordinator, --num_processes and --process_id go together' in p.stderr, p.stderr
  assert not (tmp_path / 'w').exists()
