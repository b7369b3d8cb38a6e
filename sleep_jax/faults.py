"""Crash points: make a run SIGKILL itself at a chosen place, to test that resuming loses nothing.

`SLEEP_JAX_CRASH_AT=<point>:<n>` (set in the environment of a run) kills the process with SIGKILL the n-th time
(1-based) it passes `point`. Points: 'wake_step' (a wake step applied, its checkpoint not yet written),
'ks_step' (a Knowledge Seeding update applied, not yet saved), 'dream_round' (a Dreaming round done, not yet
saved), 'checkpoint_write' (inside a checkpoint write: its files on disk, the commit marker not),
'growth' (the cycle grew a full expert pool before a sleep and that grown state is committed, the sleep not yet
begun) and 'train_step' (a step of the `lm` / `wake` jobs applied, not yet saved).
Unset, every `point()` is one dict lookup. A real SIGKILL, not an exception: no `finally`, no flush, no
atexit handler runs, exactly like a preempted VM.
"""
from __future__ import annotations

import os
import signal
import sys

ENV = 'SLEEP_JAX_CRASH_AT'
POINTS = ('wake_step', 'ks_step', 'dream_round', 'checkpoint_write', 'growth', 'train_step')


def _parse(spec: str | None) -> tuple[str, int] | None:
  if not spec:
    return None
  name, _, n = spec.partition(':')
  if name not in POINTS or not n.isdigit() or int(n) < 1:
    raise ValueError(f'{ENV}={spec!r}: expected <point>:<n> with point one of {POINTS} and n >= 1')
  return name, int(n)


_target = _parse(os.environ.get(ENV))
_count = {p: 0 for p in POINTS}


def armed() -> bool:
  return _target is not None


def point(name: str) -> None:
  """Count a pass through crash point `name`; SIGKILL this process on the configured pass."""
  if _target is None:
    return
  _count[name] += 1
  if (name, _count[name]) == _target:
    print(f'[faults] SIGKILL at {name} #{_count[name]}', file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
