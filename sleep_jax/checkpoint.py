"""The one module that talks to Orbax: train state + JSON meta + host-side extra state per step.

Layout: `<workdir>/checkpoints/<step>/{state,meta,extra}`, one `orbax.checkpoint.CheckpointManager` with the
`ocp.args.Composite` API ('state': StandardSave/Restore, 'meta' and 'extra': JsonSave/Restore).

- Atomic commits. Orbax writes `<step>.orbax-checkpoint-tmp-<ts>/`, writes `commit_success.txt` into it and
  renames it (local disks) or writes in place and adds `commit_success.txt` last (GCS). Orbax itself accepts any
  bare `<step>/` directory on a local disk as finished, so here a step counts only if it holds the marker; a
  writer moves marker-less step dirs to `checkpoints/_incomplete/` when it opens the directory (one writer per
  workdir), and leftover tmp dirs are deleted (`cleanup_tmp_directories`).
- Damaged data behind a marker: `restore(step=None)` falls back to the next older step with a warning, but only
  when the target matches the checkpoint's shapes (a wrong target is the caller's error and raises at once).
  Once an older step restores, the newer unreadable ones are moved to `_incomplete/` so saves can reuse them.
- Typed RNG keys (`jax.random.key`) are stored natively by orbax 0.12.8 (as their uint32 key data) and come back
  typed when the target leaf has a key dtype; no conversion is needed.
- Meta must let a caller rebuild shapes before restoring arrays (`read_meta`), e.g. {'config': cfg.to_dict(),
  'model': dataclasses.asdict(model_cfg), 'lineage': [...]}. `restore` also takes `target_fn(meta) -> target`
  so the step whose meta built the target is the step restored, even after a fallback.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sleep_jax import faults

log = logging.getLogger(__name__)

COMMIT_MARKER = ocp.path.atomicity.COMMIT_SUCCESS_FILE  # 'commit_success.txt' in orbax 0.12.8
INCOMPLETE_DIR = '_incomplete'
_ITEMS = ('state', 'meta', 'extra')


def abstract_like(state, shardings) -> Any:
  """Tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`: the restore target for `state`.

  `state` may hold arrays or abstract values; `shardings` is a matching tree or one Sharding for every leaf.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def _jsonable(x, path='meta'):
  """A JSON tree from dicts/lists/scalars (numpy and 0-d/small jax arrays become Python values); else raises."""
  if isinstance(x, dict) or hasattr(x, 'items') and hasattr(x, 'keys'):
    out = {}
    for k, v in x.items():
      if not isinstance(k, str):
        raise TypeError(f'{path}: keys must be str to round-trip through JSON, got {k!r}')
      out[k] = _jsonable(v, f'{path}.{k}')
    return out
  if isinstance(x, (list, tuple)):
    return [_jsonable(v, f'{path}[{i}]') for i, v in enumerate(x)]
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      raise TypeError(f'{path}: typed RNG keys belong in the state tree, not in JSON meta/extra')
    return np.asarray(jax.device_get(x)).tolist()
  if isinstance(x, bytes):
    raise TypeError(f'{path}: bytes are not JSON; decode them first (e.g. json.loads(b.decode()))')
  raise TypeError(f'{path}: {type(x).__name__} is not JSON-able; pass dicts, lists, numbers, strings')


def _leaf_sig(x) -> tuple[tuple[int, ...], str]:
  """(shape, dtype) as stored on disk; typed keys are stored as their key data."""
  dtype = getattr(x, 'dtype', None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    x = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, dtype))
    dtype = x.dtype
  return tuple(getattr(x, 'shape', ())), str(np.dtype(dtype) if dtype is not None else type(x).__name__)


def _global_arrays(tree):
  """Multi-process: host-local jax arrays (e.g. a counter made by `jnp.int32(r)`, on one local device) as global
  arrays replicated over every process's devices; Orbax refuses to save a host-local array in a multi-host run.
  They hold the same value on every process (all run the same program), which is what a replicated array says.
  One process: `tree` unchanged."""
  if jax.process_count() == 1:
    return tree
  rep = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ('all',)),
                                   jax.sharding.PartitionSpec())

  def one(x):
    if not isinstance(x, jax.Array) or not x.is_fully_addressable:
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):   # device_put takes host data: go through key data
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(x)), rep), impl=impl)
    return jax.device_put(np.asarray(x), rep)
  return jax.tree.map(one, tree)


class _TargetMismatch(ValueError):
  pass


class _CrashPointTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's local-disk commit (write the marker, rename the tmp dir) preceded by
  `faults.point('checkpoint_write')`: a crash there leaves every file of the step written in its tmp dir, with
  no commit marker and no final name. Used only when a crash point is armed (sleep_jax/faults.py)."""

  async def finalize(self):
    if self._final_path.name.isdigit():   # the step directory (its items are finalized before it)
      faults.point('checkpoint_write')
    await super().finalize()


class Checkpointer:
  """Keeps the `keep` newest steps of {'state', 'meta', 'extra'} under `<workdir>/checkpoints`.

  `save_every`: `save` writes when step % save_every == 0 and step > latest_step() (or on preemption), or
  with force=True at any step not yet saved.
  `async_save`: arrays are copied off device before `save` returns and written in the background; `wait()`.
  """

  def __init__(self, workdir, keep: int | None = 3, save_every: int = 1, async_save: bool = False,
               read_only: bool = False):
    if save_every < 1:
      raise ValueError(f'checkpoint save_every must be >= 1, got {save_every}')
    # Orbax's tensorstore paths must be absolute: a relative --workdir (runs/main) is resolved here.
    self.workdir = epath.Path(workdir)
    if '://' not in str(workdir) and not self.workdir.is_absolute():
      self.workdir = epath.Path(os.path.abspath(str(workdir)))
    self.directory = self.workdir / 'checkpoints'
    self.read_only = read_only
    if not read_only:
      self._quarantine_unfinished()
    policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        save_decision_policy=policy, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save,
        **({'temporary_path_class': _CrashPointTemporaryPath} if faults.armed() else {}))
    handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler(),
                'extra': ocp.JsonCheckpointHandler()}
    self._mngr = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _committed(self, step: int) -> bool:
    return (self._step_dir(step) / COMMIT_MARKER).exists()

  def _move_aside(self, path: epath.Path, why: str):
    dest = self.directory / INCOMPLETE_DIR / f'{path.name}-{time.time_ns()}'
    log.warning('checkpoint %s %s; moving it to %s', path, why, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.rename(dest)

  def _quarantine_unfinished(self):
    """Move step dirs without the commit marker (interrupted or hand-made) out of Orbax's sight."""
    if ocp.multihost.process_index() == 0 and self.directory.exists():
      for p in self.directory.iterdir():
        if p.name.isdigit() and p.is_dir() and not (p / COMMIT_MARKER).exists():
          self._move_aside(p, f'has no {COMMIT_MARKER} (interrupted save?)')
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('sleep_jax_checkpoint_quarantine')

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first."""
    return sorted(s for s in self._mngr.all_steps() if self._committed(s))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, meta: dict, extra: dict | None = None, force: bool = False) -> bool:
    """Save if due (or forced); False when skipped or when `step` is already saved."""
    step = int(step)
    if step in self._mngr.all_steps():
      log.info('checkpoint step %d already exists in %s; not saving it again', step, self.directory)
      return False
    if not force and not self._mngr.should_save(step):
      return False
    items = {'state': ocp.args.StandardSave(_global_arrays(state)),
             'meta': ocp.args.JsonSave(_jsonable(meta, 'meta'))}
    if extra is not None:
      items['extra'] = ocp.args.JsonSave(_jsonable(extra, 'extra'))
    return bool(self._mngr.save(step, args=ocp.args.Composite(**items), force=force))

  def _items_on_disk(self, step: int):
    return self._mngr.item_metadata(step)

  def _check_target(self, step: int, state_md, target):
    """Raise _TargetMismatch if the target's (shape, dtype) multiset differs from the checkpoint's."""
    missing = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(target)
               if getattr(x, 'sharding', None) is None]
    if missing:
      raise ValueError(f'restore target leaves need a sharding (use abstract_like(state, shardings)); '
                       f'missing at {missing[:5]}')
    want = collections.Counter(_leaf_sig(x) for x in jax.tree.leaves(target))
    have = collections.Counter(_leaf_sig(x) for x in jax.tree.leaves(state_md))
    if want != have:
      raise _TargetMismatch(
          f'checkpoint step {step} in {self.directory} does not match the restore target: '
          f'(shape, dtype) only in the checkpoint {sorted((have - want).elements())[:5]}, only in the target '
          f'{sorted((want - have).elements())[:5]}; rebuild the target from read_meta()')

  def _restore_step(self, step: int, target):
    on_disk = self._items_on_disk(step)
    if 'state' not in on_disk or 'meta' not in on_disk:
      raise FileNotFoundError(f'checkpoint step {step} in {self.directory} lacks state or meta')
    meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if callable(target):
      target = target(meta)
    self._check_target(step, on_disk['state'], target)
    items = {'state': ocp.args.StandardRestore(target)}
    if 'extra' in on_disk:
      items['extra'] = ocp.args.JsonRestore()
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    return out['state'], meta, (out['extra'] if 'extra' in on_disk else None)

  def restore(self, target: Any | Callable[[dict], Any], step: int | None = None) -> tuple[Any, dict, dict | None]:
    """(state, meta, extra) with arrays placed per the target's shardings.

    `target`: a tree of `jax.ShapeDtypeStruct(..., sharding=...)` (see `abstract_like`) or `fn(meta) -> tree`.
    step=None: the newest committed step, falling back to older ones if its data is unreadable.
    """
    steps = [int(step)] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f'no committed checkpoint in {self.directory}')
    if step is not None and step not in self.all_steps():
      raise FileNotFoundError(f'checkpoint step {step} not found in {self.directory}; have {self.all_steps()}')
    broken, first_err = [], None
    for s in steps:
      try:
        out = self._restore_step(s, target)
      except _TargetMismatch:
        raise
      except Exception as e:  # noqa: BLE001 - damaged data: try the next older step, loudly
        if step is not None:
          raise
        log.warning('checkpoint step %d in %s is unreadable (%s: %s); trying an older step',
                    s, self.directory, type(e).__name__, str(e)[:500])
        broken.append(s)
        first_err = first_err or e
        continue
      if broken and not self.read_only:
        self._mngr.wait_until_finished()
        if ocp.multihost.process_index() == 0:
          for b in broken:
            self._move_aside(self._step_dir(b), f'could not be restored; restored step {s} instead')
        if jax.process_count() > 1:
          ocp.multihost.sync_global_processes('sleep_jax_checkpoint_fallback')
        self._mngr.reload()
      return out
    raise RuntimeError(f'no checkpoint in {self.directory} could be restored (tried {steps})') from first_err

  def restore_meta(self, step: int | None = None) -> dict:
    """Meta of `step` (default: newest committed step with readable meta) without touching arrays."""
    steps = [int(step)] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f'no committed checkpoint in {self.directory}')
    first_err = None
    for s in steps:
      try:
        return self._mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      except Exception as e:  # noqa: BLE001
        if step is not None:
          raise
        log.warning('checkpoint meta of step %d in %s is unreadable (%s: %s); trying an older step',
                    s, self.directory, type(e).__name__, str(e)[:500])
        first_err = first_err or e
    raise RuntimeError(f'no checkpoint meta in {self.directory} could be read (tried {steps})') from first_err

  def wait(self):
    """Block until async saves are committed."""
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_meta(workdir, step: int | None = None) -> dict:
  """The meta saved with `step` (default: newest committed) without restoring arrays; read-only."""
  ckpt = Checkpointer(workdir, keep=None, read_only=True)
  try:
    return ckpt.restore_meta(step)
  finally:
    ckpt.close()


def latest_step(workdir) -> int | None:
  """Newest committed step under `workdir`, or None; read-only."""
  if not (epath.Path(workdir) / 'checkpoints').exists():
    return None
  ckpt = Checkpointer(workdir, keep=None, read_only=True)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()
