"""The wake/sleep cycle: wake on a stream of documents, sleep (consolidate, then dream when enabled), wake ...

Wake reads `cycle.docs_per_step` documents per step (default 1, one a row) through the CMS wake step (PAPER Eq. 2)
and keeps them in the memory buffer.
Two things put the model to sleep:

- a full memory buffer (`cycle.docs_per_sleep` documents): the *context -> MLP* consolidation. The teacher is
  the pre-sleep model reading each buffered document in its prompt; the student sees only the prompt; one new
  expert per layer of `sleep.receiver_level` learns by Knowledge Seeding (PAPER sec. 1, "the fastest level is
  the context itself");
- with `cycle.protocol`, the *level -> level* protocol (PAPER sec. 2): the sender l-1's boundary update is
  computed, consolidated into a new expert of level l (teacher: the pre-update model; student: updated sender,
  sender's experts pruned), then applied.

The protocol's schedule (`protocol_schedule`, a pure function of the wake step count). Wake step n (n documents
read, 1-based) is at level l's boundary when n % C^(l) == 0. With p = `cycle.consolidations_per_period`, the pair
(l-1 -> l) consolidates after every step n with n % (C^(l) / p) == 0: p times per receiver period (p = 1: at the
receiver's boundary; p = C^(l) / C^(l-1): at every sender boundary, the paper's 1k/10k -> 10 consolidations).
`jobs.validate` makes p divide C^(l) / C^(l-1), so every consolidation falls on a sender boundary, and the pairs
due at a step are always 0->1, 1->2, ..., k-1->k for some k. At such a step:

  1. the wake step holds back the boundary update of every sender and of every receiver at its own boundary
     (`protocol_hold`; a period-1 level keeps an accumulator for this, `WakeConfig.holdable`);
  2. the pairs consolidate in order, fastest first: 0->1, then 1->2, ... Each sleep's teacher is the model
     the previous one left, so what 0->1 put into level 1 is part of what 1->2 moves on to level 2. Each
     sender's held update is applied by its own consolidation (or, when safe sleep rejects it, without);
  3. the held updates of levels that were not senders (the slowest receiver, at its boundary) are applied,
     exactly as the wake step would have (`apply_held`);
  4. then the context sleep, when the memory buffer is due.

Every held update is thus applied exactly once, at the step it was due, and the checkpoint before each
consolidation records which one is next (`receiver`), so a run resumes between two consolidations of a step or
inside one. With `cycle.protocol` the log holds one 'wake' event per step (levels updated, levels held), one
'held_applied' event per step 3, and each protocol 'sleep' event names its step, sender and receiver.

Safe sleep: before a consolidation is committed the retention probe (NLL on held-out text the model knew
before) is measured; a relative rise above `sleep.max_probe_regression` rejects it, the pre-sleep state is kept
and the reason is logged. Checkpoints hold the pre-sleep wake state throughout a sleep (plus the sleep's own
small state), so the pre-sleep model is never lost before the new one is committed, and a run can stop and
resume anywhere: between wake steps, between Knowledge Seeding updates, or between Dreaming rounds.

Scale (docs/paper_scale/loop.md): checkpoints every `checkpoint.every` wake steps and always around a sleep and at
the end (async with `checkpoint.async_save`); wake and Knowledge Seeding metrics stay on device for `log_every`
steps and are fetched and checked by the NaN guard before every checkpoint; the event log goes to write-once
segments (`EventSegments`), one per checkpoint.

Dreaming (`sleep.dream.enabled`, phases/dream.py) runs after a committed consolidation, on the consolidated
model, training the same new experts; if it alone pushes the retention probe over the limit, the consolidated
model is kept without it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from sleep_jax import build as build_lib
from sleep_jax import faults, growth, sharding
from sleep_jax.checkpoint import Checkpointer, _jsonable, abstract_like
from sleep_jax.metrics import MetricLogger, progress
from sleep_jax.models import cms as cms_lib
from sleep_jax.phases import consolidate as ks
from sleep_jax.phases import dream as dream_lib
from sleep_jax.phases import wake as wake_lib
from sleep_jax.runtime import Runtime, check_docs_per_step

log = logging.getLogger(__name__)

SLEEP_KEYS = ('ks_step', 'kind', 'receiver', 'stage', 'dream_round')   # position fields that live only in a sleep
TEMPLATES = ('Tell me about {title}.', 'Complete the sentence: {prefix}')
GROWTH_SALT = 999983            # growth draws its new experts from fold_in(key(seed), GROWTH_SALT), then per lineage


# ---------------------------------------------------------------------------------------------------
# Wake batches


def doc_batch(tokenizer, doc: dict, seq_len: int, rows: int) -> dict:
  """One document as an LM batch of `rows` rows (row 0 holds it; the rest, padding for the mesh, weigh 0)."""
  ids = (tokenizer.encode(doc['text']) + [tokenizer.eos_id])[:seq_len + 1]
  inputs = np.full((rows, seq_len), tokenizer.pad_id, np.int32)
  targets = np.full((rows, seq_len), tokenizer.pad_id, np.int32)
  weights = np.zeros((rows, seq_len), np.float32)
  n = len(ids) - 1
  inputs[0, :n], targets[0, :n], weights[0, :n] = ids[:-1], ids[1:], 1.0
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


def docs_batch(tokenizer, docs: list[dict], seq_len: int, rows: int) -> dict:
  """One wake step's batch: document j in row j (`doc_batch`'s row), rows past len(docs) weight-0 padding up to
  `rows` (the mesh's batch multiple), as the lm job's pipeline batches rows. One document gives exactly
  `doc_batch`'s batch, so `cycle.docs_per_step=1` runs the wake steps it always did."""
  if not 1 <= len(docs) <= rows:
    raise ValueError(f'a wake step reads 1..{rows} documents (cycle.docs_per_step rows), got {len(docs)}')
  if len(docs) == 1:
    return doc_batch(tokenizer, docs[0], seq_len, rows)
  out = doc_batch(tokenizer, docs[0], seq_len, rows)
  for j, d in enumerate(docs[1:], 1):   # through doc_batch, so a document's row is built one way only
    for k, v in doc_batch(tokenizer, d, seq_len, 1).items():
      out[k][j] = v[0]
  return out


def apply_held(state: dict, wcfg, levels) -> dict:
  """Apply the held-back boundary updates of `levels` exactly as the wake step would have, resetting their
  accumulators (for the held updates no consolidation applied, after a step's protocol sleeps, and for a
  rejected protocol sleep, whose sender update is still owed)."""
  for l in levels:
    if not state['acc'][l]:
      continue
    updates, opt = ks.sender_update(state, wcfg, l)
    flat = traverse_util.flatten_dict(state['params'])
    for k, u in traverse_util.flatten_dict(updates).items():
      flat[k] = flat[k] + u.astype(flat[k].dtype)
    acc, opt_state = list(state['acc']), list(state['opt_state'])
    acc[l] = jax.tree.map(jnp.zeros_like, acc[l])
    opt_state[l] = opt
    state = dict(state, params=traverse_util.unflatten_dict(flat), acc=acc, opt_state=opt_state)
  return state


# ---------------------------------------------------------------------------------------------------
# The level -> level protocol's schedule (module docstring)


def protocol_schedule(step: int, periods, lrs, per_period: int = 1) -> list[tuple[int, int]]:
  """(sender, receiver) pairs that consolidate right after wake step `step` (1-based count of steps done), in
  the order they run: fastest first. Pair (l-1, l) fires p = `per_period` times per C^(l); a frozen level
  (period 0) or a sender that does not learn (lr 0) takes no part (`jobs.validate` refuses such a layout)."""
  out = []
  for r in range(1, len(periods)):
    s = r - 1
    if periods[r] <= 0 or periods[s] <= 0 or not lrs[s] > 0:
      continue
    every, rest = divmod(periods[r], per_period)
    if rest or every % periods[s]:
      raise ValueError(f'cycle.consolidations_per_period={per_period} must divide C^({r})/C^({s}) = '
                       f'{periods[r]}/{periods[s]} (each consolidation falls on a boundary of the sender)')
    if step % every == 0:
      out.append((s, r))
  return out


def protocol_hold(step: int, periods, pairs) -> list[int]:
  """Levels whose boundary update wake step `step` holds back for `pairs` (= protocol_schedule(step, ...)):
  every sender, and every receiver at its own boundary (its teacher is the model before that update)."""
  held = {s for s, _ in pairs} | {r for _, r in pairs if step % periods[r] == 0}
  return sorted(held)


class EventSegments:
  """The cycle's event log on disk, written once and never rewritten: each checkpoint adds one segment
  `<workdir>/events/<first event index>.jsonl` with the events since the previous one and records only the
  count in its own meta, so a checkpoint costs O(new events), not O(log). Reading back `n` (a restored
  checkpoint's count) drops segments past it: those of a save that never committed. Process 0 writes."""

  def __init__(self, workdir):
    self.dir = epath.Path(workdir) / 'events'

  def _segments(self) -> list[tuple[int, epath.Path]]:
    if not self.dir.exists():
      return []
    return sorted((int(p.name.split('.')[0]), p) for p in self.dir.iterdir()
                  if p.name.endswith('.jsonl') and p.name.split('.')[0].isdigit())

  def write(self, start: int, events: list[dict]):
    if not events or jax.process_index() != 0:
      return
    self.dir.mkdir(parents=True, exist_ok=True)
    text = ''.join(json.dumps(_jsonable(e, 'event')) + '\n' for e in events)
    tmp = self.dir / f'{start:012d}.jsonl.tmp'
    tmp.write_text(text)
    tmp.rename(self.dir / f'{start:012d}.jsonl')   # whole or absent, like a checkpoint

  def read(self, n: int) -> list[dict]:
    out = []
    for start, path in self._segments():
      if start >= n:
        if jax.process_index() == 0:
          path.unlink()                             # written for a save that did not commit
        continue
      if start != len(out):
        raise RuntimeError(f'{self.dir}: event segment {path.name} starts at event {start}, but the segments '
                           f'before it hold {len(out)}; the event log is damaged (a file was removed?)')
      seg = [json.loads(line) for line in path.read_text().splitlines() if line]
      if start + len(seg) > n:                      # reaches past the checkpoint: keep only its part
        seg = seg[:n - start]
        if jax.process_index() == 0:
          path.unlink()
          self.write(start, seg)
      out += seg
    if len(out) < n:
      raise RuntimeError(f'{self.dir}: the checkpoint records {n} events, the segments hold {len(out)}; the event '
                         'log is damaged (a file was removed?)')
    return out[:n]


# ---------------------------------------------------------------------------------------------------
# The cycle


@dataclasses.dataclass
class Parts:
  """What one cycle uses, all from the composition root (runtime.Runtime) but the cycle's own wake state
  shardings, wake step and checkpointer."""
  b: Any
  wcfg: wake_lib.WakeConfig
  kcfg: ks.KSConfig
  step_fn: Any
  shard: Any
  batch_sh: Any
  sampler: Any
  seeder: Any
  dreamer: Any   # None when sleep.dream.enabled is False
  probe: Any
  ckpt: Any
  rows: int


def _config_tuple(x):
  return tuple(x) if not isinstance(x, str) else (x,)


class Cycle:
  """`Cycle(runtime.Runtime(config), workdir, probe_texts).run(docs)`: wake over `docs`, sleeping as configured;
  resumable. `probe_texts` default to the runtime's (validation essays)."""

  def __init__(self, runtime: Runtime, workdir: str, probe_texts: list[str] | None = None):
    config = runtime.config
    self.config, self.workdir = config, workdir
    self.guard = runtime.guard
    self._probe_texts = probe_texts
    self.base_cfg = runtime.b.cfg   # the model before any growth: checkpoint lineages start from it
    self.lineage: list[dict] = []   # growth records (growth.grow_pool), saved in checkpoint meta
    self.docs_per_step = check_docs_per_step(config)
    self._assemble(runtime, Checkpointer(workdir, keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.get('async_save', False)))
    self.log_lines: list[dict] = []
    self._events = EventSegments(workdir)
    self._events_saved = 0        # log_lines[:_events_saved] are in the events segments on disk
    self._pending: list = []      # wake steps whose metrics are still on device (`_flush`)
    self._steps = None            # wake steps done (host copy of state['step'], read once per run)
    self.mlog = None

  def _assemble(self, runtime: Runtime, ckpt, state=None):
    """The cycle's shape-dependent parts from `runtime`: wake state shardings and step, seeder, dreamer, probe,
    and the wake state (default: fresh from the runtime's parameters; abstract: a zero placeholder, a restore
    target) placed by them. __init__ and `_rebuild` (a grown model) both construct through here."""
    b, wcfg = runtime.b, runtime.wcfg
    self.runtime = runtime
    if state is None:
      state = wake_lib.init_wake_state(b.params, b.cms, wcfg)
    shard = wake_lib.wake_state_shardings(state, b.shardings, b.mesh)
    self.dcfg = runtime.dream_config()
    seeder = runtime.seeder()
    parts = Parts(b, wcfg, seeder.kcfg, runtime.wake_step(shard), shard, runtime.batch_sharding,
                  runtime.sampler, seeder, runtime.dreamer(self.dcfg) if self.dcfg.enabled else None,
                  runtime.probe(self._probe_texts), ckpt,
                  -(-self.docs_per_step // runtime.n_shards) * runtime.n_shards)
    if hasattr(self, 'rt'):   # rebuilt in place: a loop holding `rt = self.rt` (Cycle.run) steps the grown model
      self.rt.__dict__.update(parts.__dict__)
    else:
      self.rt = parts
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):
      self.state = jax.jit(lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state), out_shardings=shard)()
    else:
      self.state = jax.device_put(state, shard)

  # ---- checkpoints ---------------------------------------------------------------------------
  def _meta(self, pos: dict) -> dict:
    """Checkpoint meta: the config, the model ('base_model' grown by 'lineage' gives 'model', the shapes of the
    saved arrays; `growth.config_from_meta` reads it back), the wake config and the cycle position."""
    meta = growth.lineage_meta(self.base_cfg, self.lineage)
    if meta['model'] != dataclasses.asdict(self.rt.b.cfg):
      raise RuntimeError(f'cycle: the lineage {self.lineage} grows {self.base_cfg} into {meta["model"]}, but the '
                         f'model is {self.rt.b.cfg}; a growth was not recorded')
    return {'config': self.config.to_json(), **meta, 'wake': dataclasses.asdict(self.rt.wcfg), 'cycle': pos}

  def _save(self, pos: dict, ks_state=None, dream_state=None):
    """Checkpoint `pos` (async with checkpoint.async_save: arrays copied off device, written in the background;
    only a step with Orbax's commit marker counts, checkpoint.py). First every pending wake metric is fetched and
    checked by the guard (`_flush`), so no non-finite step is ever committed; the events since the last save go
    to a segment file of their own (`EventSegments`), the checkpoint records only how many there are."""
    self._flush()
    n = int(pos['save_id'])
    tree = {'wake': self.state}
    if ks_state is not None:
      tree['ks'] = ks_state
    if dream_state is not None:
      tree['dream'] = dream_state
    self._events.write(self._events_saved, self.log_lines[self._events_saved:])
    self._events_saved = len(self.log_lines)
    self.rt.ckpt.save(n, tree, self._meta(pos), force=True,
                      extra={'n_events': len(self.log_lines), 'nonfinite_skips': dict(self.guard.skipped)})

  def _checkpoint(self, pos: dict):
    """A wake-phase checkpoint of `pos` under the next save id."""
    pos['save_id'] += 1
    self._save(pos)
    self._since_save = 0

  def _restore(self):
    """(position, restored tree: 'ks' / 'dream' sleep states when saved mid-sleep) from the newest readable
    checkpoint, or None for a fresh run. The target is built from the meta of the step being restored, so a
    fallback to an older step (the newest damaged) resumes at that step's own position."""
    if self.rt.ckpt.latest_step() is None:
      return None

    def target(meta):
      cfg = growth.config_from_meta(meta)   # a grown run: rebuild its shapes before any array is read
      if cfg != self.rt.b.cfg:
        self._rebuild_for(cfg)
      self.lineage = list(meta.get('lineage', []))
      pos = meta['cycle']
      t = {'wake': abstract_like(self.state, self.rt.shard)}
      if pos['phase'] == 'sleep' and pos.get('ks_step', 0) > 0:
        t['ks'] = self._sleep_target(pos, lambda p, i, v: ks.state_tree(p, i, v, self.rt.seeder.tx))
      if pos['phase'] == 'sleep' and pos.get('stage') == 'dream':
        t['dream'] = self._sleep_target(
            pos, lambda p, i, v: dict(self.rt.dreamer.state_tree(p, i, v), round=jnp.zeros((), jnp.int32)))
      return t

    tree, meta, extra = self.rt.ckpt.restore(target)
    pos = meta['cycle']
    self.state = tree['wake']
    if self.lineage:
      print(f'restored a grown model: {len(self.lineage)} growth(s), model.n_experts={self.rt.b.cfg.n_experts}')
    extra = extra or {}
    if 'n_events' in extra:
      self.log_lines = self._events.read(int(extra['n_events']))
      self._events_saved = len(self.log_lines)
    else:   # a checkpoint from before the segments: its extra holds the whole log; the next save writes it all
      self.log_lines, self._events_saved = list(extra.get('events', [])), 0
    self.guard.skipped.clear()
    self.guard.skipped.update((extra or {}).get('nonfinite_skips', {}))
    where = ''
    if pos['phase'] == 'sleep':
      where = (f", dreaming round {pos['dream_round']}" if pos.get('stage') == 'dream'
               else f", sleep update {pos['ks_step']}")
    print(f"resuming {self.workdir} at document {pos['doc']} ({pos['phase']}{where})")
    return pos, tree

  def _sleep_target(self, pos, tree_fn):
    """Abstract restore target of a sleep-stage state (a pure function of the pre-sleep model)."""
    view, student, index = self._student(pos)
    abstract = jax.eval_shape(lambda p: tree_fn(p, index, view), student['params'])
    return abstract_like(abstract, sharding.replicated(self.rt.b.mesh))

  # ---- growth --------------------------------------------------------------------------------
  def _rebuild(self, built: build_lib.Built, state):
    """Rebuild every shape-dependent object for `built`'s (grown) model: the runtime's (model module, sampler,
    judge, seeder, dreamer, probe: `Runtime.regrown`, the same constructor) and the cycle's own (wake step and
    state shardings: `_assemble`, as in __init__). `state`: the wake state for the new shapes (abstract: a zero
    placeholder, for a restore to fill). The checkpointer, guard, log and lineage carry over."""
    self._assemble(self.runtime.regrown(built), self.rt.ckpt, state)

  def _rebuild_for(self, cfg):
    """The cycle rebuilt for model config `cfg` (a grown checkpoint's), its wake state a zero placeholder."""
    grown = build_lib.with_model(self.rt.b, cfg, None, None)
    params = nn.meta.unbox(build_lib.abstract_params(grown.model))
    cms = jax.eval_shape(lambda: cms_lib.init_cms_state(cfg))
    state = jax.eval_shape(lambda p, c: wake_lib.init_wake_state(p, c, self.rt.wcfg), params, cms)
    self._rebuild(dataclasses.replace(grown, params=params, cms=cms), state)

  def _receiver(self, pos) -> tuple[int, tuple[int, ...]]:
    level = self.config.sleep.receiver_level if pos['kind'] == 'context' else pos['receiver']
    return level, ks.layers_of_level(self.rt.wcfg, level)

  def _full_layers(self, pos) -> list[int]:
    """Receiver layers of the sleep at `pos` without a free expert slot (Knowledge Seeding with expansion
    activates one new expert in each)."""
    if not self.rt.kcfg.expand:
      return []
    cms = jax.device_get(self.state['cms'])
    return [i for i in self._receiver(pos)[1]
            if f'layers_{i}' not in cms or np.asarray(cms[f'layers_{i}']['mlp']['active']).all()]

  def _ensure_room(self, pos):
    """Before a sleep starts: when a receiver layer's expert pool is full, grow every pool (`sleep.when_full`
    ='grow', by `sleep.grow_by` slots, 0 = double) with `growth.grow_pool` (parameters, active masks, wake
    optimizer slots and accumulators: zeros in the new slots), rebuild the shape-dependent objects, record the
    growth in the lineage and the event log and checkpoint it, so a resumed sleep sees the grown shapes; or
    raise (`sleep.when_full='error'`)."""
    full = self._full_layers(pos)
    if not full:
      return
    sc, b = self.config.sleep, self.rt.b
    S = b.cfg.n_experts
    when_full, grow_by = sc.get('when_full', 'grow'), sc.get('grow_by', 0)
    if when_full != 'grow':
      raise ValueError(f"sleep {pos['sleep']} ({pos['kind']}): the expert pool of layer(s) {full} is full ({S} of "
                       f'{S} experts active, model.n_experts={S}) and sleep.when_full={when_full!r}; the sleep '
                       "needs one new expert per receiver layer: set sleep.when_full='grow' (it grows the pool by "
                       'sleep.grow_by slots, 0 = double) or start with a larger model.n_experts')
    n = S + (grow_by or max(S, 1))
    level, layers = self._receiver(pos)
    rank = None if S else self.config.model.get('expert_rank', 0)
    if not S and not rank:
      raise ValueError(f"sleep {pos['sleep']}: the model has no expert pool (model.n_experts=0) and "
                       'model.expert_rank=0, so none can be grown; set model.expert_rank > 0 (or model.n_experts)')
    new_cfg = growth.make_plan('grow_experts', b.cfg, n_experts=n, expert_rank=rank).new_cfg
    grown_b = build_lib.with_model(b, new_cfg, None, None)
    wcfg = self.rt.wcfg

    def slots_template(params, cms):
      st = jax.eval_shape(lambda p, c: wake_lib.init_wake_state(p, c, wcfg), params, cms)
      return {'acc': st['acc'], 'opt_state': st['opt_state']}

    note = {'level': level, 'layers': list(layers), 'full': full, 'from': S, 'to': n, 'at_doc': pos['doc'],
            'sleep': pos['sleep']}
    s = self.state
    _, params, cms, slots, lineage = growth.grow_pool(
        b.cfg, s['params'], s['cms'], jax.random.fold_in(jax.random.key(self.config.seed), GROWTH_SALT),
        n_experts=n, expert_rank=rank, lineage=self.lineage, note=note,
        slots={'acc': s['acc'], 'opt_state': s['opt_state']}, slots_template=slots_template,
        param_shardings=grown_b.shardings)
    self.lineage = lineage
    self._rebuild(dataclasses.replace(grown_b, params=params, cms=cms), dict(s, params=params, cms=cms, **slots))
    self.log_lines.append({'event': 'growth', **lineage[-1]})
    print(f"sleep {pos['sleep']}: the expert pool of layer(s) {full} was full; grew every pool {S} -> {n} experts "
          f"(sleep.when_full='grow', sleep.grow_by={grow_by})")
    log.info('sleep %d: grew the expert pools %d -> %d', pos['sleep'], S, n)
    pos['save_id'] += 1
    self._save(dict(pos, phase='sleep', ks_step=0))
    self.rt.ckpt.wait()   # the grown state is committed before the sleep spends time on it
    faults.point('growth')

  # ---- sleep ---------------------------------------------------------------------------------
  def _student(self, pos):
    """(view, student {'params','cms'}, expert index) of the sleep at `pos`: a pure function of the pre-sleep
    wake state, so a resumed sleep rebuilds exactly the student it left."""
    k, s = self.rt.kcfg, self.state
    if pos['kind'] == 'context':
      layers = ks.layers_of_level(self.rt.wcfg, self.config.sleep.receiver_level)
      params, cms = s['params'], s['cms']
    else:
      layers = ks.layers_of_level(self.rt.wcfg, pos['receiver'])
      updates, _ = ks.sender_update(s, self.rt.wcfg, pos['receiver'] - 1)
      params, cms, _ = ks.protocol_student(s, self.rt.wcfg, pos['receiver'] - 1, (), updates)
    view = ks.View(layers, k.expand)
    if k.expand:
      params, cms, index = ks.expand_student(params, cms, layers)
    else:
      index = {}
    return view, {'params': params, 'cms': cms}, index

  def sleep(self, docs: list[dict], pos: dict, ks_state=None, dream_state=None) -> dict:
    """One sleep over the buffered `docs`: Knowledge Seeding, then Dreaming when enabled; returns its event
    record (committed or rejected, and why)."""
    if ks_state is None and dream_state is None:   # a sleep starting (resumed ones saw the grown state already)
      self._ensure_room(pos)
    rt, c = self.rt, self.config
    t0 = time.perf_counter()
    probe_before = rt.probe(self.state['params'], self.state['cms'])
    view, student, index = self._student(pos)
    teacher = {'params': self.state['params'], 'cms': self.state['cms']}
    make = ks.context_items if pos['kind'] == 'context' else ks.plain_items
    items = make(rt.b.tokenizer, docs, _config_tuple(c.sleep.templates), c.seed * 1000 + pos['sleep'],
                 c.sleep.prefix_prompts)
    rng = jax.random.fold_in(jax.random.key(c.seed), 7919 + pos['sleep'])

    def save_due(step):   # Knowledge Seeding updates between saves; the last one is saved with the sleep's end
      return bool(c.checkpoint.sleep_every) and step % c.checkpoint.sleep_every == 0 and step < rt.kcfg.steps

    def on_step(step, st, m):   # every log_every updates, and at each save (then with that step's state)
      self.log_lines.append({'event': 'ks_step', 'sleep': pos['sleep'], **m})
      if self.mlog is not None:
        self.mlog.write_scalars(self._ks_count + step, {f'sleep/{k}': v for k, v in m.items() if k != 'step'})
      faults.point('ks_step')
      if save_due(step):
        pos['save_id'] += 1
        self._save(dict(pos, phase='sleep', ks_step=step), st)

    self._ks_count = sum(e.get('event') == 'ks_step' for e in self.log_lines) - int(pos.get('ks_step', 0))
    st, hist = rt.seeder.run(teacher, student, index, view, items, rng, state=ks_state, on_step=on_step,
                             progress_desc=f"sleep {pos['sleep']} ({pos['kind']})", log_every=c.log_every,
                             sync_at=save_due)
    cms = student['cms']
    if pos['kind'] == 'protocol':
      sender = pos['receiver'] - 1
      _, new_opt = ks.sender_update(self.state, rt.wcfg, sender)

    def settle(params):   # the wake state this sleep leaves with `params`
      if pos['kind'] == 'protocol':
        return ks.protocol_apply(self.state, rt.wcfg, sender, params, cms, new_opt)
      return dict(self.state, params=params, cms=cms)

    params = ks.commit(student['params'], st, index, view)
    new_state = settle(params)
    probe_after = rt.probe(new_state['params'], new_state['cms'])
    rise = (probe_after - probe_before) / probe_before
    ok = rise <= c.sleep.max_probe_regression
    event = {'event': 'sleep', 'sleep': pos['sleep'], 'kind': pos['kind'], 'docs': [d['id'] for d in docs],
             'probe_nll_before': probe_before, 'probe_nll_after': probe_after, 'probe_rise': rise,
             'committed': bool(ok), 'ks_history': hist, 'expert_index': {k: int(v) for k, v in index.items()}}
    if pos['kind'] == 'protocol':
      event.update(step=int(self.state['step']), sender=pos['receiver'] - 1, receiver=pos['receiver'])
    if ok and rt.dreamer is not None:
      d_params, d_hist = self._dream(docs, pos, params, cms, index, view, st, dream_state)
      d_state = settle(d_params)
      d_probe = rt.probe(d_state['params'], d_state['cms'])
      d_rise = (d_probe - probe_before) / probe_before
      rates = [e['reward_rate'] for e in self.log_lines   # every round, also those before a resume
               if e.get('event') == 'dream_round' and e['sleep'] == pos['sleep']]
      event.update(dream_history=d_hist, dream_reward_rate=rates,
                   probe_nll_after_ks=probe_after, dream_committed=bool(d_rise <= c.sleep.max_probe_regression))
      if event['dream_committed']:
        new_state, event['probe_nll_after'], event['probe_rise'] = d_state, d_probe, d_rise
      else:
        event['dream_why'] = (f'retention probe NLL rose {100 * d_rise:.1f}% after dreaming, above '
                              f'sleep.max_probe_regression={c.sleep.max_probe_regression}; kept the consolidated '
                              'model without the dreams')
        print(f"sleep {pos['sleep']}: {event['dream_why']}")
    event['seconds'] = time.perf_counter() - t0
    if ok:
      self.state = jax.device_put(new_state, rt.shard)
    else:
      event['why'] = (f'retention probe NLL rose {100 * rise:.1f}% ({probe_before:.4f} -> {probe_after:.4f}), '
                      f'above sleep.max_probe_regression={c.sleep.max_probe_regression}; kept the pre-sleep state')
      if pos['kind'] == 'protocol':   # the sender's update is still owed: apply it without consolidation
        self.state = jax.device_put(apply_held(self.state, rt.wcfg, [pos['receiver'] - 1]), rt.shard)
      print(f"sleep {pos['sleep']} rejected: {event['why']}")
      log.warning('sleep %d rejected: %s', pos['sleep'], event['why'])
    self.log_lines.append({k: v for k, v in event.items() if k not in ('ks_history', 'dream_history')})
    return event

  def _dream(self, docs, pos, params, cms, index, view, ks_state, dream_state=None):
    """Dreaming on the consolidated model (PAPER sec. 4): ReST-EM rounds over the buffered documents, saved
    after every round (with the pre-sleep wake state and the finished Knowledge Seeding state)."""
    rt, c = self.rt, self.config
    tasks = [dream_lib.knowledge_task(d, self.dcfg.probe_rows, c.seed * 1000 + pos['sleep']) for d in docs]
    rng = jax.random.fold_in(jax.random.key(c.seed), 104729 + pos['sleep'])

    def on_round(r, dst, h):
      ctx = h['contexts']
      self.log_lines.append({'event': 'dream_round', 'sleep': pos['sleep'], 'round': r,
                             'reward_rate': h['reward_rate'], 'kept': sum(len(x['kept']) for x in ctx),
                             'tau_orig': float(np.mean([x.get('tau_orig', np.nan) for x in ctx])),
                             'seconds': sum(x.get(k, 0.0) for x in ctx
                                            for k in ('gen_s', 'select_s', 'inner_s', 'mstep_s'))})
      if self.mlog is not None:
        n = sum(e.get('event') == 'dream_round' for e in self.log_lines)
        self.mlog.write_scalars(n, {'dream/reward_rate': h['reward_rate']})
      faults.point('dream_round')
      if r < self.dcfg.rounds:
        pos['save_id'] += 1
        self._save(dict(pos, phase='sleep', stage='dream', ks_step=rt.kcfg.steps, dream_round=r), ks_state, dst)

    dst, hist = rt.dreamer.run(params, cms, index, view, tasks, rng, state=dream_state, on_round=on_round,
                               progress_desc=f"sleep {pos['sleep']} (dream)")
    return rt.dreamer.commit(params, dst, index, view), hist

  # ---- run ---------------------------------------------------------------------------------
  def _protocol(self, step: int) -> list[tuple[int, int]]:
    c, w = self.config.cycle, self.rt.wcfg
    if not c.protocol:
      return []
    return protocol_schedule(step, w.periods, w.lrs, c.get('consolidations_per_period', 1))

  def _sleeps(self, docs: list[dict], pos: dict, tree: dict | None = None) -> bool:
    """The sleeps due right after the wake step that read up to document pos['doc'] - 1: the step's protocol
    consolidations (fastest first), the held updates no consolidation applied, then the context sleep when the
    buffer is due; each starts with a checkpoint and the state after them is checkpointed too (so no sleep is
    redone from scratch or lost). `tree`: the restored checkpoint when resuming inside one of them
    (pos['phase'] == 'sleep'). True when anything ran (and was checkpointed)."""
    rt, c = self.rt, self.config
    by_id = {d['id']: d for d in docs}
    buffered = lambda: [by_id[j] for j in pos['buffer']]
    resume = pos['kind'] if tree is not None else None
    step = self._steps
    ran = tree is not None
    if resume in (None, 'protocol'):
      pairs = self._protocol(step)
      for s, r in pairs:
        ran = True
        if resume == 'protocol' and r < pos['receiver']:
          continue                                       # done before the checkpoint
        if resume == 'protocol' and r == pos['receiver']:
          self.sleep(buffered(), pos, tree.get('ks'), tree.get('dream'))
          resume = None
        else:
          pos.update(phase='sleep', kind='protocol', receiver=r, ks_step=0, save_id=pos['save_id'] + 1)
          self._save(pos)
          self.sleep(buffered(), pos)
        pos.update(phase='wake', sleep=pos['sleep'] + 1)
      rest = [l for l in protocol_hold(step, rt.wcfg.periods, pairs) if l not in {s for s, _ in pairs}]
      if rest:
        ran = True
        self._flush()   # the step's 'wake' event goes before its 'held_applied'
        self.state = jax.device_put(apply_held(self.state, rt.wcfg, rest), rt.shard)
        self.log_lines.append({'event': 'held_applied', 'step': step, 'levels': rest})
      resume = None
    due = len(pos['buffer']) >= c.cycle.docs_per_sleep or (
        pos['doc'] == len(docs) and pos['buffer'] and c.cycle.sleep_at_end)
    if resume == 'context':
      self.sleep(buffered(), pos, tree.get('ks'), tree.get('dream'))
    elif due:
      pos.update(phase='sleep', kind='context', ks_step=0, save_id=pos['save_id'] + 1)
      self._save(pos)
      self.sleep(buffered(), pos)
    if resume == 'context' or due:
      ran = True
      pos.update(phase='wake', sleep=pos['sleep'] + 1, buffer=[])
    for k in SLEEP_KEYS:
      pos.pop(k, None)
    if ran:
      self._checkpoint(pos)
    return ran

  # ---- wake metrics: on device until fetched ---------------------------------------------------
  def _flush(self):
    """Fetch the pending wake steps' metrics in one transfer and handle them in step order: the guard's check
    (a non-finite loss stops here, naming its step, before any checkpoint holds it: `_save` flushes first),
    metrics.jsonl, the protocol's 'wake' events, the progress bar. Called every `log_every` wake steps, before
    every checkpoint and sleep, and at the end of the stream."""
    if not self._pending:
      return
    pending, self._pending = self._pending, []
    host = jax.device_get([m for *_, m in pending])
    for (step_no, where, held, bar, _), m in zip(pending, host):
      self.guard.check('wake', f'{step_no} ({where})', {'loss': m['loss'], 'grad_norm': m['grad_norm']})
      loss = float(m['loss'])
      if self.mlog is not None:
        self.mlog.write_scalars(step_no, {'wake/loss': loss})
      if self.config.cycle.protocol:
        self.log_lines.append({'event': 'wake', 'step': step_no, 'updated': np.flatnonzero(m['boundary']).tolist(),
                               'held': held})
    if bar is not None:
      bar.set_metrics({'loss': loss})

  def run(self, docs: list[dict]) -> list[dict]:
    """Wake over `docs`, `cycle.docs_per_step` per step; sleep when the buffer fills (and at level boundaries with
    protocol). Checkpoints every `checkpoint.every` wake steps, before and after every sleep and at the end; a run
    stopped anywhere resumes from the newest one, re-reading the documents since (the wake step is
    deterministic, so the resumed run is the uninterrupted one)."""
    rt = self.rt
    self.mlog = MetricLogger(self.workdir)
    try:
      self._run(docs)
    finally:
      self._pending = []
      rt.ckpt.wait()   # a stopped run (e.g. the guard) still leaves its last good checkpoint committed
      self.mlog.close()
    return self.log_lines

  def _run(self, docs: list[dict]):
    rt, c = self.rt, self.config
    restored = self._restore()
    pos = {'doc': 0, 'sleep': 0, 'buffer': [], 'phase': 'wake', 'save_id': 0}
    self._steps = int(self.state['step'])   # the one read of the step count; the loop counts on the host
    self._since_save = 0
    if restored:
      pos, tree = restored
      if pos['phase'] == 'sleep':   # finish the interrupted step's sleeps
        self._sleeps(docs, pos, tree)
    k, every, log_every = self.docs_per_step, c.checkpoint.every, c.log_every
    bar = progress(range(pos['doc'], len(docs), k), desc='wake')
    for i in bar:
      batch_docs = docs[i:i + k]
      step_no = self._steps + 1
      hold = np.zeros((rt.wcfg.n_levels,), bool)
      held = protocol_hold(step_no, rt.wcfg.periods, self._protocol(step_no))
      hold[held] = True
      batch = jax.device_put(docs_batch(rt.b.tokenizer, batch_docs, c.cycle.seq_len, rt.rows), rt.batch_sh)
      self.state, m = rt.step_fn(self.state, batch, hold)
      self._steps = step_no
      where = (f'document {i}, {batch_docs[0]["id"]}' if len(batch_docs) == 1 else
               f'documents {i}-{i + len(batch_docs) - 1}, {", ".join(d["id"] for d in batch_docs)}')
      keep = ('loss', 'grad_norm', 'boundary') if c.cycle.protocol else ('loss', 'grad_norm')
      self._pending.append((step_no, where, held, bar, {n: m[n] for n in keep}))
      faults.point('wake_step')
      pos['buffer'] += [d['id'] for d in batch_docs]
      pos['doc'] = i + len(batch_docs)
      self._since_save += 1
      if len(self._pending) >= log_every:
        self._flush()
      if not self._sleeps(docs, pos) and (self._since_save >= every or pos['doc'] == len(docs)):
        self._checkpoint(pos)
    self._flush()
