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
# Passes through each crash point in one uninterrupted smoke run (2 wake steps, 2 KS updates, 2 dream rounds,
# a checkpoint per wake step, per saved sleep update and per dream round but the last).
PASSES = {'wake_step': 2, 'ks_step': 2, 'dream_round': 2, 'checkpoint_write': 6}


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
  assert killed >= 2, f'{why}: only {killed} crash(es) happened'
  if rc != 0:
    rc, out = _run(cut, cache, kill_after=kill_at)
    if rc != 0:
      assert rc == -signal.SIGKILL, f'{why}: rc {rc}\n{out[-3000:]}'
      rc, out = _run(cut, cache)
  assert rc == 0, f'{why}: final rerun failed\n{out[-3000:]}'
  assert 'resuming' in out or killed == len(plan), out[-2000:]
  _assert_same_run(ref, cut, why)


def test_killed_mid_write_keeps_every_committed_checkpoint(tmp_path, crash='checkpoint_write:2'):
  """A kill leaves the newest step without its commit marker (or no newer step): the committed ones are all
  there and readable, none was deleted before its successor was committed, and the rerun resumes from them."""
  cache = tmp_path / 'jax_cache'
  rc, out = _run(tmp_path, cache, crash=crash)
  assert rc == -signal.SIGKILL, out[-3000:]
  ckpts = tmp_path / 'checkpoints'
  steps = sorted(int(d.name) for d in ckpts.iterdir() if d.name.isdigit())
  committed = [s for s in steps if (ckpts / str(s) / 'commit_success.txt').exists()]
  assert committed and committed == list(range(committed[0], committed[-1] + 1)), (steps, committed)
  partial = [p for p in ckpts.iterdir() if 'orbax-checkpoint-tmp' in p.name or
             (p.name.isdigit() and not (p / 'commit_success.txt').exists())]
  assert committed == [1] and partial, f'killed writing step 2: {sorted(os.listdir(ckpts))}'
  rc, out = _run(tmp_path, cache)
  assert rc == 0 and f'resuming {tmp_path}' in out, out[-3000:]
