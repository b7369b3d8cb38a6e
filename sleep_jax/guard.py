"""Non-finite values: stop a phase with a message naming the phase, step and quantity, or skip the bad batch.

`config.guard.nonfinite`:
- 'stop' (default): the first NaN/Inf in a loss, gradient norm or reward raises `NonFiniteError` before the
  step's state is checkpointed, so the newest checkpoint is the last good state; rerunning resumes from it.
- 'skip': a train step whose loss or gradient is not finite leaves the state as it was (selected inside the
  jitted step, so no bad value reaches the parameters or optimizer moments); the host counts the skip, logs it,
  and stops anyway after `config.guard.max_skips` skips in one run (a diverged run is not hidden forever).

In-jit: `finite(...)` and `keep_if(ok, new, old)`; host: `NonFiniteGuard.check(phase, step, values)`.
"""
from __future__ import annotations

import collections
import logging

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)
ACTIONS = ('stop', 'skip')


class NonFiniteError(FloatingPointError):
  """A loss, gradient or reward was NaN or Inf; the message names the phase, step and quantity."""


def finite(*xs) -> jax.Array:
  """True iff every float leaf of every tree in `xs` is finite (a scalar bool, traceable)."""
  leaves = [x for t in xs for x in jax.tree.leaves(t) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.ones((), bool)
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def keep_if(ok, new, old):
  """`new` where `ok` else `old`, leaf by leaf (both trees alike): a skipped step changes nothing."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


class NonFiniteGuard:
  """Host side: `check(phase, step, {'loss': .., 'grad_norm': ..})` -> True when all finite; else raises
  ('stop') or counts the skip and returns False ('skip')."""

  def __init__(self, action: str = 'stop', max_skips: int = 10, skipped: dict | None = None):
    if action not in ACTIONS:
      raise ValueError(f'guard.nonfinite={action!r} is not one of {ACTIONS}')
    if max_skips < 0:
      raise ValueError(f'guard.max_skips={max_skips} must be >= 0')
    self.action, self.max_skips = action, max_skips
    self.skipped = collections.Counter(skipped or {})   # phase -> skips (restored from a checkpoint)

  @classmethod
  def from_config(cls, config, skipped: dict | None = None) -> 'NonFiniteGuard':
    g = config.get('guard') if hasattr(config, 'get') else None
    return cls(g.nonfinite, g.max_skips, skipped) if g is not None else cls(skipped=skipped)

  @property
  def skip(self) -> bool:
    return self.action == 'skip'

  def check(self, phase: str, step, values: dict) -> bool:
    host = {k: np.asarray(jax.device_get(v)) for k, v in values.items()}
    bad = {k: v for k, v in host.items() if v.size and not np.all(np.isfinite(v))}
    if not bad:
      return True
    what = ', '.join(f'{k}={_show(v)}' for k, v in bad.items())
    if self.action == 'stop':
      raise NonFiniteError(
          f'{phase}: non-finite {what} at step {step}; stopped before checkpointing it, so the newest checkpoint '
          f'holds the last good state (rerun to resume from it), or set --config.guard.nonfinite=skip to skip '
          f'such batches')
    self.skipped[phase] += 1
    total = sum(self.skipped.values())
    if total > self.max_skips:
      raise NonFiniteError(f'{phase}: non-finite {what} at step {step}: {total} skipped batches in this run '
                           f'({dict(self.skipped)}), more than guard.max_skips={self.max_skips}; the run diverged')
    log.warning('%s: non-finite %s at step %s; batch skipped (%d skipped so far: %s)', phase, what, step,
                total, dict(self.skipped))
    print(f'{phase}: non-finite {what} at step {step}; batch skipped ({total} so far)')
    return False


def _show(v: np.ndarray) -> str:
  if v.size == 1:
    return str(v.reshape(()).item())
  n = int(np.sum(~np.isfinite(v)))
  return f'{n} of {v.size} values not finite'
