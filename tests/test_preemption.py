"""Preemption: the main job's smoke run is SIGKILLed (a real kill of a real process) during wake, Knowledge
Seeding, Dreaming and while a checkpoint is being written, and at a random moment; the same command is rerun
after each kill, and the finished run must equal an uninterrupted one bit for bit: final parameters, optimizer
and expert masks (the whole checkpointed state), results.json and metrics.jsonl, timings aside.

The kill places are drawn from a seeded RNG (`SLEEP_JAX_PREEMPT_SEED`, default 0, printed on failure); every
process shares one persistent compilation cache so the restarts do not recompile.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get('SLEEP_JAX_PREEMPT_SEED', '0'))
# Passes through each crash point in one uninterrupted smoke run: 2 wake steps, 2 KS updates, 2 dream rounds, and
# 4 checkpoints (at the sleep's start, after KS update 1, after dream round 1, after the sleep; checkpoint.every
# is 100 wake steps, so none after document 0), written asynchronously (checkpoint.async_save).
PASSES = {'wake_step': 2, 'ks_step': 2, 'dream_round': 2, 'checkpoint_write': 4}


def _cmd(workdir):
  return [sys.executable, '-m', 'experiments.main', '--config=configs/sleep.py:smoke', f'--workdir={workdir}']


def _env(cache, crash=None):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env.pop('SLEEP_JAX_CRASH_AT', None)
  if crash:
    env['SLEEP_JAX_CRASH_AT'] = crash
  return env


def _run(workdir, cache, crash=None, kill_after=None):
  """Run the smoke job; returns (returncode, output). kill_after: SIGKILL from outside after that many s."""
  p = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(cache, crash), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  try:
    out, _ = p.communicate(timeout=kill_after if kill_after is not None else 900)
  except subprocess.TimeoutExpired:
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate()
  return p.returncode, out


_TIMING = ('seconds', 'wall_s')


def _strip(x):
  """Drop timings (keys 'seconds' or ending in '_s'): the only things allowed to differ."""
  if isinstance(x, dict):
    return {k: _strip(v) for k, v in x.items() if k not in _TIMING and not k.endswith('_s')}
  if isinstance(x, list):
    return [_strip(v) for v in x]
  return x


def _metrics(workdir):
  """metrics.jsonl rows keyed by (step, names): a resumed run logs some again; the last one counts."""
  rows = {}
  for line in open(os.path.join(workdir, 'metrics.jsonl')):
    r = _strip(json.loads(line))
    rows[(r['step'], tuple(sorted(r)))] = r
  return rows


def _final_state(workdir):
  ckpts = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  with ocp.PyTreeCheckpointer() as c:
    return step, c.restore(os.path.join(ckpts, str(step), 'state'))


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}/{k}'))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, v in enumerate(tree):
      out.update(_flat(v, f'{prefix}[{i}]'))
    return out
  return {prefix: np.asarray(tree)}


def _assert_same_run(ref, got, why):
  a, b = (json.load(open(os.path.join(w, 'results.json'))) for w in (ref, got))
  assert _strip(a) == _strip(b), f'{why}: results.json differs'
  assert _metrics(ref) == _metrics(got), f'{why}: metrics.jsonl differs'
  (sa, ta), (sb, tb) = _final_state(ref), _final_state(got)
  assert sa == sb, f'{why}: final checkpoint step {sb} != {sa}'
  fa, fb = _flat(ta), _flat(tb)
  assert sorted(fa) == sorted(fb), f'{why}: checkpointed state trees differ'
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=f'{why}: {k}')


def _assert_committed_kept(ckpts, why, keep=2):
  """Killed writing step p: p is a tmp dir without a commit marker, and the `keep` steps before it are all
  committed (Orbax deletes the oldest only after its successor's commit)."""
  names = os.listdir(ckpts)
  partial = [int(n.split('.')[0]) for n in names if 'orbax-checkpoint-tmp' in n]
  committed = sorted(int(n) for n in names
                     if n.isdigit() and os.path.exists(os.path.join(ckpts, n, 'commit_success.txt')))
  assert len(partial) == 1, f'{why}: expected one partial step, have {sorted(names)}'
  p = partial[0]
  assert committed == list(range(max(1, p - keep), p)), f'{why}: killed writing step {p}, committed {committed}'


def test_sigkill_anywhere_then_rerun_is_bit_identical(tmp_path):
  cache = tmp_path / 'jax_cache'
  ref = tmp_path / 'ref'
  t0 = time.perf_counter()
  rc, out = _run(ref, cache)
  assert rc == 0, out[-3000:]
  t_ref = time.perf_counter() - t0

  rng = random.Random(SEED)
  # One kill in each phase, at a drawn pass (counted from the start of the process being killed), then one
  # from outside at a drawn moment of a cached run's wall time; the same command after each.
  plan = [f'{p}:{rng.randint(1, PASSES[p])}' for p in ('wake_step', 'checkpoint_write', 'ks_step', 'dream_round')]
  plan[1] = 'checkpoint_write:3'   # the 3rd write of the process after the wake kill: a step past checkpoint.keep
  kill_at = rng.uniform(0.3, 0.9) * t_ref
  why = f'SLEEP_JAX_PREEMPT_SEED={SEED}, crashes {plan}, outside kill after {kill_at:.1f}s'
  cut = tmp_path / 'cut'
  killed = 0
  for crash in plan:
    rc, out = _run(cut, cache, crash=crash)
    if rc == 0:   # the point lies past what was left of the run: nothing to kill, the run finished
      break
    assert rc == -signal.SIGKILL and '[faults] SIGKILL at' in out, f'{why}: {crash}: rc {rc}\n{out[-3000:]}'
    killed += 1
    if crash.startswith('checkpoint_write'):
      _assert_committed_kept(cut / 'checkpoints', why)
  assert killed >= 2, f'{why}: only {killed} crash(es) happened'
  if rc != 0:
    rc, out = _run(cut, cache, kill_after=kill_at)
    if rc != 0:
      assert rc == -signal.SIGKILL, f'{why}: rc {rc}\n{out[-3000:]}'
      rc, out = _run(cut, cache)
  assert rc == 0, f'{why}: final rerun failed\n{out[-3000:]}'
  assert 'resuming' in out or killed == len(plan), out[-2000:]
  _assert_same_run(ref, cut, why)


def test_lm_job_killed_mid_stream_resumes_its_grain_iterator_exactly(tmp_path):
  """The `lm` job reads packed TFDS rows through grain: killed between checkpoints and inside a checkpoint
  write, rerun, it must consume exactly the batches an uninterrupted run does (iterator state in every
  checkpoint), so the final state and every logged loss are bit-identical."""
  cache = tmp_path / 'jax_cache'
  cmd = lambda w: [sys.executable, '-m', 'experiments.main', '--config=configs/lm.py:smoke', f'--workdir={w}']

  def run(w, crash=None):
    p = subprocess.run(cmd(w), cwd=ROOT, env=_env(cache, crash), capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout + p.stderr

  rc, out = run(tmp_path / 'ref')
  assert rc == 0, out[-3000:]
  for crash in ('train_step:7', 'checkpoint_write:1'):   # after step 5's save; then writing step 10
    rc, out = run(tmp_path / 'cut', crash)
    assert rc == -signal.SIGKILL and '[faults] SIGKILL at' in out, f'{crash}: rc {rc}\n{out[-3000:]}'
  rc, out = run(tmp_path / 'cut')
  assert rc == 0 and 'resuming from step 5' in out, out[-3000:]
  assert _metrics(tmp_path / 'ref') == _metrics(tmp_path / 'cut')
  a, b = (json.load(open(tmp_path / w / 'results.json')) for w in ('ref', 'cut'))
  assert _strip(a['history'][-1]) == _strip(b['history'][-1]) and b['start_step'] == 5
  (sa, ta), (sb, tb) = _final_state(tmp_path / 'ref'), _final_state(tmp_path / 'cut')
  fa, fb = _flat(ta), _flat(tb)
  assert sa == sb == 12 and sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
