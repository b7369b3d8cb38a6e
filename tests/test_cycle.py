"""The wake/sleep cycle: the main job's smoke run, resume in the middle of a sleep, safe sleep, the level -> level
protocol inside the cycle (against a hand-written schedule, and resumed in the middle), and a user's own
documents."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import sleep as sleep_config
from sleep_jax import build as build_lib
from sleep_jax import jobs
from sleep_jax.data import documents, metrics
from sleep_jax import cycle as cycle_lib
from sleep_jax import runtime
from tests import helpers

PROBE = ['The quick brown fox jumps over the lazy dog. ' * 20]


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the module's in-process runs: a test's second and third cycle (a
  reference, a killed run, its resume: each a new Runtime, so new jits) and the next tests' smoke cycles load the
  executables compiled the first time instead of compiling them again (helpers.compilation_cache)."""
  with helpers.compilation_cache(tmp_path_factory.mktemp('jax_cache')):
    yield


def _config(dream=False, **ks):
  c = sleep_config.get_config('smoke')
  with c.unlocked():
    c.knowledge.with_context_eval = False
    c.sleep.ks.gamma = 0.0
    c.sleep.ks.update(ks)
    c.sleep.dream.enabled = dream
  return c


def _flat(t):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(t)).items()}


def _cycle(c, workdir):
  b = build_lib.build(c, mesh=helpers.mesh())
  return cycle_lib.Cycle(runtime.Runtime(c, b), str(workdir), PROBE), b


def _recall(answers):
  """Answer recall recomputed from the logged predictions: the normalised answer as a whole-word span."""
  hit = lambda a, p: f' {metrics.normalize_answer(a)} ' in f' {metrics.normalize_answer(p)} '
  return 100.0 * float(np.mean([hit(x['answer'], x['prediction']) for x in answers]))


def test_sleep_job_smoke(tmp_path):
  res = jobs.sleep(_config(dream=True), str(tmp_path))
  assert len(res['sleeps']) == 1 and res['sleeps'][0]['committed']
  # Dreaming ran after consolidation: one record per ReST-EM round, and the reward plot
  assert [e['round'] for e in res['dream_rounds']] == [1, 2] and 'dream_committed' in res['sleeps'][0]
  assert (tmp_path / 'dream_rewards.png').exists()
  rates = [e['reward_rate'] for e in res['dream_rounds']]
  assert res['sleeps'][0]['dream_reward_rate'] == rates
  for e in res['dream_rounds']:   # a share of the kept dreams (top_k + n_random = 2 per passage, 2 passages)
    assert 1 <= e['kept'] <= 4 and e['reward_rate'] * e['kept'] == round(e['reward_rate'] * e['kept'])
  for when in ('before', 'after'):
    qa = res[when]['no_context']
    assert qa['n'] == len(qa['answers']) == res['n_questions'] > 0 and qa['recall'] == _recall(qa['answers'])
  assert np.isfinite(res['after']['probe_nll'])
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert on_disk['before']['no_context']['n'] == res['n_questions']
  assert on_disk['seed'] == 0 and {'jax', 'jaxlib', 'flax', 'optax', 'orbax_checkpoint', 'numpy'} <= set(on_disk)
  # The sleep trained one new expert per receiver layer, and it is active.
  assert res['sleeps'][0]['expert_index'] == {'layers_0': 0}


class _Killed(Exception):
  pass


def _stop_after_save(c, docs, workdir, monkeypatch, when):
  """Run the cycle in `workdir` and stop it (an exception, in process) right after the first checkpoint whose
  position satisfies `when`."""
  save = cycle_lib.Cycle._save

  def save_then_die(self, pos, ks_state=None, dream_state=None):
    save(self, pos, ks_state, dream_state)
    if when(pos):
      raise _Killed()

  monkeypatch.setattr(cycle_lib.Cycle, '_save', save_then_die)
  cyc, _ = _cycle(c, workdir)
  with pytest.raises(_Killed):
    cyc.run(docs)
  monkeypatch.setattr(cycle_lib.Cycle, '_save', save)


@pytest.fixture(scope='module')
def sleep_reference(tmp_path_factory):
  """An uninterrupted run (3 Knowledge Seeding updates a sleep, saved after the 1st and 2nd; with Dreaming or
  without) per `dream`, each run once per module: (config, docs, finished cycle)."""
  refs = {}

  def get(dream):
    if dream not in refs:
      c = _config(dream=dream, steps=3)
      docs = documents.load_docs(c.knowledge, c.seed)
      ref, _ = _cycle(c, tmp_path_factory.mktemp('sleep_ref'))
      ref.run(docs)
      refs[dream] = c, docs, ref
    return refs[dream]
  return get


@pytest.mark.parametrize('stage', ['ks', 'dream'])
def test_resume_in_the_middle_of_a_sleep_is_bit_identical(tmp_path, monkeypatch, sleep_reference, stage):
  """Killed after a saved Knowledge Seeding update, or after a saved Dreaming round: the resumed run ends with
  exactly the parameters of an uninterrupted one."""
  c, docs, ref = sleep_reference(stage == 'dream')

  _stop_after_save(c, docs, tmp_path / 'cut', monkeypatch, lambda pos: pos.get('phase') == 'sleep' and (
      pos.get('ks_step') == 2 if stage == 'ks' else pos.get('dream_round') == 1))
  second, _ = _cycle(c, tmp_path / 'cut')
  events = second.run(docs)
  assert [e['sleep'] for e in events if e.get('event') == 'sleep'] == [0]
  a, b = _flat(ref.state['params']), _flat(second.state['params'])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  rates = lambda evs: [e['reward_rate'] for e in evs if e.get('event') == 'dream_round']
  assert rates(events) == rates(ref.log_lines) and len(rates(events)) == (2 if stage == 'dream' else 0)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_position(tmp_path, monkeypatch, sleep_reference):
  """Killed after the second saved Knowledge Seeding update, with that newest checkpoint then damaged: the rerun
  restores the previous step (the first saved update) with that step's own cycle position, and finishes with
  exactly the parameters of an uninterrupted run."""
  import os
  c, docs, ref = sleep_reference(False)
  _stop_after_save(c, docs, tmp_path / 'cut', monkeypatch, lambda pos: pos.get('ks_step') == 2)
  ckpts = tmp_path / 'cut' / 'checkpoints'
  newest = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  for root, _, files in os.walk(ckpts / str(newest) / 'state'):     # garble the array store's index
    for f in files:
      if f == 'manifest.ocdbt':
        with open(os.path.join(root, f), 'r+b') as fh:
          fh.write(b'garbage!' * 4)
  second, _ = _cycle(c, tmp_path / 'cut')
  second.run(docs)
  assert os.listdir(ckpts / '_incomplete')                            # the damaged step was set aside
  a, b = _flat(ref.state['params']), _flat(second.state['params'])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _poison_doc(monkeypatch, index):
  """The wake batch of document `index` gets NaN weights: a NaN loss and NaN gradients."""
  real = cycle_lib.doc_batch
  seen = []

  def doc_batch(tok, doc, seq_len, rows):
    b = real(tok, doc, seq_len, rows)
    seen.append(doc['id'])
    return dict(b, weights=np.full_like(b['weights'], np.nan)) if len(seen) == index + 1 else b
  monkeypatch.setattr(cycle_lib, 'doc_batch', doc_batch)


def test_nan_in_wake_stops_naming_phase_step_and_quantity(tmp_path, monkeypatch):
  from sleep_jax.guard import NonFiniteError
  c = _config(steps=2)
  with c.unlocked():
    c.checkpoint.every = 1     # a checkpoint after every wake step; the metrics are fetched every log_every=10
  _poison_doc(monkeypatch, 1)
  cyc, _ = _cycle(c, tmp_path)
  with pytest.raises(NonFiniteError, match=r"^wake: non-finite loss=nan, grad_norm=nan at step 2 \(document 1, "):
    cyc.run(documents.load_docs(c.knowledge, c.seed))
  assert cyc.rt.ckpt.latest_step() == 1                                # the state after document 0, intact


def test_nan_skipped_in_wake_and_in_knowledge_seeding_rewards(tmp_path, monkeypatch):
  from sleep_jax import rewards
  c = _config(steps=2, gamma=0.0, alpha=0.5)
  with c.unlocked():
    c.guard.nonfinite = 'skip'
  _poison_doc(monkeypatch, 0)
  monkeypatch.setattr(rewards, 'lti_reward', lambda r_sem, r_abs, gamma: np.full_like(r_abs, np.nan))
  cyc, b = _cycle(c, tmp_path)
  before = _flat(b.params)
  events = cyc.run(documents.load_docs(c.knowledge, c.seed))
  assert dict(cyc.guard.skipped) == {'wake': 1, 'sleep/knowledge-seeding': 2}
  ks = [e for e in events if e.get('event') == 'ks_step']
  assert [e['skipped'] for e in ks] == [1.0, 1.0]
  after = _flat(cyc.state['params'])
  for k in before:    # every KS batch was skipped: the new expert is as activated (B = 0), nothing trained
    if k == 'layers_0/mlp/expert_b':
      assert not after[k][0].any() and np.array_equal(after[k][1:], before[k][1:])
    else:
      np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  assert int(cyc.state['step']) == 2


def test_wake_step_skips_a_non_finite_batch_inside_the_jit(devices8):
  from sleep_jax.phases import wake as wake_lib
  cfg, model = helpers.tiny_model()
  params = helpers.random_params(model)
  wcfg = wake_lib.WakeConfig(level_of_layer=(0, 1), periods=(1, 2), lrs=(0.1, 0.1))
  step = wake_lib.make_wake_step(model, wcfg, skip_nonfinite=True)
  ids = np.arange(16, dtype=np.int32).reshape(2, 8) % 200
  good = {'inputs': ids, 'targets': ids, 'weights': np.ones((2, 8), np.float32)}
  s0 = wake_lib.init_wake_state(params, {}, wcfg)
  s1, m1 = step(jax.tree.map(np.asarray, s0), good)
  ref = jax.tree.map(np.asarray, s1)
  s2, m2 = step(s1, dict(good, weights=np.full((2, 8), np.nan, np.float32)))
  assert bool(m1['finite']) and not bool(m2['finite']) and not np.asarray(m2['boundary']).any()
  assert int(s2['step']) == 2                                         # the batch was read, and dropped
  for k, v in _flat(ref['params']).items():
    np.testing.assert_array_equal(v, _flat(s2['params'])[k], err_msg=k)
  for a, b in zip(jax.tree.leaves((ref['acc'], ref['opt_state'])), jax.tree.leaves((s2['acc'], s2['opt_state']))):
    np.testing.assert_array_equal(a, b)


def test_dreaming_that_hurts_retention_is_dropped_but_consolidation_kept(tmp_path):
  c = _config(dream=True, steps=2)
  cyc, _ = _cycle(c, tmp_path)
  calls = []
  real = cyc.rt.probe

  def probe(params, cms):   # before, after KS: real values; after dreaming: a large regression
    calls.append(1)
    v = real(params, cms)
    return v * 2 if len(calls) == 3 else v

  cyc.rt.probe = probe
  dreamed = {}
  real_dream = cyc._dream

  def _dream(*a, **k):
    out = real_dream(*a, **k)
    dreamed['ks_params'] = _flat(a[2])
    return out

  cyc._dream = _dream
  events = cyc.run(documents.load_docs(c.knowledge, c.seed))
  sleep = [e for e in events if e.get('event') == 'sleep'][0]
  assert sleep['committed'] and not sleep['dream_committed'] and 'without the dreams' in sleep['dream_why']
  got = _flat(cyc.state['params'])
  for k, v in dreamed['ks_params'].items():     # the state is the consolidated model, not the dreamed one
    np.testing.assert_array_equal(v, got[k], err_msg=k)


def test_safe_sleep_rejects_a_regression_and_keeps_the_pre_sleep_state(tmp_path):
  c = _config(steps=2, lr=0.5)
  with c.unlocked():
    c.sleep.max_probe_regression = -1.0      # any sleep "regresses": the guard must reject it
  cyc, b = _cycle(c, tmp_path)
  before = _flat(b.params)
  events = cyc.run(documents.load_docs(c.knowledge, c.seed))
  sleep = [e for e in events if e.get('event') == 'sleep'][0]
  assert not sleep['committed'] and 'kept the pre-sleep state' in sleep['why']
  after = _flat(cyc.state['params'])
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  assert not np.asarray(cyc.state['cms']['layers_0']['mlp']['active']).any()


def test_user_documents_through_the_config(tmp_path):
  path = tmp_path / 'mine.jsonl'
  path.write_text('{"text": "The Orvane bridge is painted teal.", "qa": [["What colour is the Orvane bridge?", '
                  '"teal"]]}\n{"id": "x2", "text": "Pelmor was founded in 1602."}\n')
  c = _config()
  with c.unlocked():
    c.knowledge.documents = str(path)
  docs = documents.load_docs(c.knowledge, c.seed)
  assert [d['id'] for d in docs] == ['doc-00001', 'x2'] and docs[0]['questions'][0]['answer'] == 'teal'
  jobs.validate(c)                        # the entry point's check reads the same file and accepts it
  path.write_text('{"text": "ok"}\nnot json\n{"qa": []}\n')
  with pytest.raises(ValueError, match=r'mine.jsonl:2:.*\n.*mine.jsonl:3:'):
    documents.load_docs(c.knowledge, c.seed)
  named = r"(?s)bad config:\n  - knowledge.documents='[^']*mine.jsonl': .*mine.jsonl:2: invalid JSON"
  with pytest.raises(ValueError, match=named):
    jobs.validate(c)                      # ... and refuses it before anything is written, naming the key


def test_lowmem_variant_changes_only_memory_knobs():
  """configs/sleep.py:lowmem runs the same sleep as the default (only memory knobs differ), validates into the
  model / Knowledge Seeding / Dreaming configs, and its full-size parameter tree is the default's (checkpoints
  interchange)."""
  from sleep_jax.models.llama import Transformer
  from sleep_jax.phases import consolidate, dream

  def flat(d, pre=''):
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (flat(v, f'{pre}{k}.') if isinstance(v, dict) else {f'{pre}{k}': v}).items()}

  full, low = (flat(sleep_config.get_config(a).to_dict()) for a in ('', 'lowmem'))
  assert {k for k in full if full[k] != low[k]} == {'model.remat'} and set(full) == set(low)
  c = sleep_config.get_config('lowmem')
  consolidate.KSConfig.from_config(c.sleep.ks)
  dream.DreamConfig.from_config(c.sleep.dream)
  cfg = build_lib.model_config_from(c.model)
  assert cfg.remat and cfg.n_experts == 2
  shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), nn.meta.unbox(build_lib.abstract_params(m)))
  default_cfg = build_lib.model_config_from(sleep_config.get_config('').model)
  assert shapes(Transformer(cfg)) == shapes(Transformer(default_cfg))
  with pytest.raises(ValueError, match="'lowmem'"):
    sleep_config.get_config('low')


# ---- growth in the loop ---------------------------------------------------------------------------------------


def _growth_config(**sleep):
  """Three one-document sleeps on a pool of one expert per layer (3x more sleeps than model.n_experts), with
  the MLP levels learning while awake (Adam slots on level 0, an accumulator on level 1) so the wake optimizer
  state grows too. One Knowledge Seeding update on teacher samples only (alpha=1, lam=0: no student rollouts to
  compile) still trains each new expert through the rebuilt seeder."""
  c = _config(steps=1, alpha=1.0, lam=0.0)
  with c.unlocked():
    c.model.n_experts = 1
    c.knowledge.n_docs = 3
    c.cycle.docs_per_sleep = 1
    c.wake.update(dict(lr=0.01, optimizer='adamw'))
    c.sleep.update(sleep)
  return c


def _growth_main(workdir):
  """The growth run in a process of its own (each run of the SIGKILL test): the test process's settings."""
  jax.config.update('jax_default_matmul_precision', 'highest')
  c = _growth_config()
  _cycle(c, workdir)[0].run(documents.load_docs(c.knowledge, c.seed))


def _growth_process(workdir, cache, crash=None):
  """(returncode, stderr) of `_growth_main` in a new process; all share one persistent compilation cache, so
  only the first compiles."""
  import os
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env.pop('SLEEP_JAX_CRASH_AT', None)
  if crash:
    env['SLEEP_JAX_CRASH_AT'] = crash
  p = subprocess.run([sys.executable, '-c', 'import sys; from tests.test_cycle import _growth_main; '
                      '_growth_main(sys.argv[1])', str(workdir)], env=env, capture_output=True, text=True,
                     timeout=600)
  return p.returncode, p.stdout + p.stderr


def test_growth_sigkilled_right_after_it_is_checkpointed_then_rerun_is_bit_identical(tmp_path):
  """3 sleeps on a pool of 1 expert: the cycle grows the full pool before the sleep (1 -> 2 -> 4 experts,
  optimizer slots, accumulators and lineage included). A run SIGKILLed right after the first growth is
  committed, rerun, restores the grown shapes from the checkpoint's meta, grows again itself and ends
  bit-identical to an uninterrupted run; a restart of the finished run restores the grown shapes."""
  import signal
  c = _growth_config()
  cache = tmp_path / 'jax_cache'
  rc, out = _growth_process(tmp_path / 'ref', cache)
  assert rc == 0, out[-3000:]
  rc, out = _growth_process(tmp_path / 'cut', cache, crash='growth:1')
  assert rc == -signal.SIGKILL and '[faults] SIGKILL at growth #1' in out, out[-3000:]
  rc, out = _growth_process(tmp_path / 'cut', cache)
  assert rc == 0 and 'restored a grown model: 1 growth(s), model.n_experts=2' in out, out[-3000:]

  ref, b = _cycle(c, tmp_path / 'ref')      # built at the config's shapes (1 expert) ...
  assert b.cfg.n_experts == 1
  ref._restore()                            # ... restored at the grown ones from the checkpoint's meta
  assert ref.rt.b.cfg.n_experts == 4 and ref.rt.b.model.cfg.n_experts == 4 and ref.runtime.b is ref.rt.b
  events = ref.log_lines
  grown = [e for e in events if e['event'] == 'growth']
  assert [(e['from'], e['to'], e['sleep'], e['at_doc'], e['layers']) for e in grown] == [(1, 2, 1, 2, [0]),
                                                                                          (2, 4, 2, 3, [0])]
  assert [e['args'] for e in ref.lineage] == [{'n_experts': 2}, {'n_experts': 4}]
  sleeps = [e for e in events if e['event'] == 'sleep']
  assert [e['expert_index'] for e in sleeps] == [{'layers_0': 0}, {'layers_0': 1}, {'layers_0': 2}]
  assert all(e['committed'] for e in sleeps)
  assert np.asarray(ref.state['cms']['layers_0']['mlp']['active']).tolist() == [True] * 3 + [False]
  mu = np.asarray(ref.state['opt_state'][0][0].mu['layers_0']['mlp']['expert_a'])   # level 0's Adam slots
  assert mu.shape[0] == 4 and mu[:3].any()
  assert ref.state['acc'][1]['layers_1']['mlp']['router'].shape[-1] == 4            # level 1's accumulator
  meta = ref.rt.ckpt.restore_meta()
  assert meta['model']['n_experts'] == 4 and meta['base_model']['n_experts'] == 1

  cut, _ = _cycle(c, tmp_path / 'cut')
  cut._restore()
  no_time = lambda evs: [{k: v for k, v in e.items() if k != 'seconds' and not k.endswith('_s')} for e in evs]
  assert no_time(cut.log_lines) == no_time(events) and cut.lineage == ref.lineage
  a, z = (jax.tree_util.tree_leaves_with_path(jax.device_get(x.state)) for x in (ref, cut))
  assert [k for k, _ in a] == [k for k, _ in z]
  for (k, x), (_, y) in zip(a, z):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(k))


def test_a_full_pool_with_when_full_error_stops_naming_the_key(tmp_path):
  c = _growth_config(when_full='error')
  cyc, _ = _cycle(c, tmp_path)
  cms = jax.tree.map(lambda a: np.ones_like(a), jax.device_get(cyc.state['cms']))
  cyc.state = dict(cyc.state, cms=cms)
  with pytest.raises(ValueError, match=r"sleep 0 \(context\): the expert pool of layer\(s\) \[0\] is full \(1 of 1 "
                                       r"experts active, model.n_experts=1\) and sleep.when_full='error'.*"
                                       r"set sleep.when_full='grow'"):
    cyc.sleep([], {'kind': 'context', 'sleep': 0, 'doc': 0, 'save_id': 0})
  with c.unlocked():
    c.sleep.when_full = 'prune'
  with pytest.raises(ValueError, match=r"sleep.when_full='prune' must be 'grow'"):
    runtime.validate(c)


# ---- the level -> level protocol's schedule (sleep_jax/cycle.py docstring) ----------------------------------

def _protocol_config(n_levels, per_period, n_docs, steps=0):
  """n_levels CMS levels of one layer each, periods 1, 2, 4, ... (level 0 is a period-1 sender), adamw (its step
  count tells how many updates each level received), every sleep committed."""
  c = _config(steps=steps)
  with c.unlocked():
    c.model.update(dict(n_layers=n_levels, n_experts=3))
    c.wake.update(dict(n_levels=n_levels, base_period=1, factor=2, lr=0.01, optimizer='adamw'))
    c.cycle.update(dict(protocol=True, consolidations_per_period=per_period, docs_per_sleep=100,
                        sleep_at_end=False, seq_len=64))
    c.knowledge.n_docs = n_docs
    c.sleep.max_probe_regression = 1e9
  jobs.validate(c)
  return c


# Hand-written, one line per step of the pattern (repeats): (levels updated by the wake step, levels held back,
# consolidations in order, held updates applied after them).
REFERENCE = {
    # periods (1, 2, 4), once per receiver period: 0->1 at every 2nd step, 1->2 at every 4th, fastest first
    (3, 1): [([0], [], [], []),
             ([], [0, 1], [(0, 1)], [1]),
             ([0], [], [], []),
             ([], [0, 1, 2], [(0, 1), (1, 2)], [2])],
    # periods (1, 2, 4, 8), twice per receiver period: 0->1 every step, 1->2 every 2nd, 2->3 every 4th
    (4, 2): [([], [0], [(0, 1)], []),
             ([], [0, 1], [(0, 1), (1, 2)], []),
             ([], [0], [(0, 1)], []),
             ([], [0, 1, 2], [(0, 1), (1, 2), (2, 3)], []),
             ([], [0], [(0, 1)], []),
             ([], [0, 1], [(0, 1), (1, 2)], []),
             ([], [0], [(0, 1)], []),
             ([], [0, 1, 2, 3], [(0, 1), (1, 2), (2, 3)], [3])],
}


def _protocol_trace(events):
  """The log as (step, what) records in order: what the run actually did."""
  out = []
  for e in events:
    if e.get('event') == 'wake':
      out.append((e['step'], 'wake', tuple(e['updated']), tuple(e['held'])))
    elif e.get('event') == 'sleep' and e['kind'] == 'protocol':
      out.append((e['step'], 'consolidate', e['sender'], e['receiver'], e['committed']))
    elif e.get('event') == 'held_applied':
      out.append((e['step'], 'apply', tuple(e['levels'])))
  return out


def _check_schedule(events, n_levels, per_period, n_docs):
  pattern = REFERENCE[(n_levels, per_period)]
  want = []
  for t in range(1, n_docs + 1):
    updated, held, pairs, after = pattern[(t - 1) % len(pattern)]
    want.append((t, 'wake', tuple(updated), tuple(held)))
    want += [(t, 'consolidate', s, r, True) for s, r in pairs]
    want += [(t, 'apply', tuple(after))] if after else []
  assert _protocol_trace(events) == want
  assert [cycle_lib.protocol_schedule(t, (1, 2, 4, 8)[:n_levels], (0.01,) * n_levels, per_period)
          for t in range(1, len(pattern) + 1)] == [p[2] for p in pattern]


def _check_updates_applied_once(state, n_docs):
  """adamw's count = the updates applied to each level: exactly steps / C^(l) = n_docs / 2^l, none left held."""
  for l, opt in enumerate(state['opt_state']):
    counts = {int(x) for x in jax.tree.leaves(jax.tree.map(np.asarray, opt)) if np.ndim(x) == 0}
    assert counts == {n_docs // 2 ** l}, (l, counts)
  assert all(not np.asarray(a).any() for a in jax.tree.leaves(state['acc']))


@pytest.fixture(scope='module')
def protocol_reference(tmp_path_factory):
  """An uninterrupted protocol run over 8 documents (periods 1, 2, 4: 0->1 every 2nd step, 0->1 then 1->2 every
  4th), 2 Knowledge Seeding updates a sleep, saved after each."""
  c = _protocol_config(3, 1, 8, steps=2)
  docs = documents.load_docs(c.knowledge, c.seed)
  ref, _ = _cycle(c, tmp_path_factory.mktemp('protocol_ref'))
  ref.run(docs)
  return c, docs, ref


def test_protocol_follows_the_reference_schedule_3_levels(protocol_reference):
  """Every wake update, every held update and every consolidation happens at the step the hand-written reference
  says, in order (a period-1 sender, coincident boundaries of 3 levels), and each held update is applied once."""
  c, docs, ref = protocol_reference
  _check_schedule(ref.log_lines, 3, 1, len(docs))
  _check_updates_applied_once(ref.state, len(docs))
  active = lambda l: int(np.asarray(ref.state['cms'][f'layers_{l}']['mlp']['active']).sum())
  # step 8 consolidated 0->1 (level 0 pruned), then 1->2 (level 1 pruned); level 2 kept the experts of steps 4, 8
  assert [active(l) for l in range(3)] == [0, 0, 2]


def test_protocol_follows_the_reference_schedule_4_levels_twice_per_period(tmp_path):
  """The same over 4 levels with 2 consolidations per receiver period (14 consolidations in 8 steps)."""
  c = _protocol_config(4, 2, 8)
  cyc, _ = _cycle(c, tmp_path)
  _check_schedule(cyc.run(documents.load_docs(c.knowledge, c.seed)), 4, 2, 8)
  _check_updates_applied_once(cyc.state, 8)


def test_resume_in_the_middle_of_a_protocol_sleep_is_bit_identical(tmp_path, monkeypatch, protocol_reference):
  """Killed at step 4 between its two consolidations (0->1 done, 1->2 not started), then, resumed, killed again
  inside 1->2 (after its first KS update): the twice-resumed run applies every held update once and ends
  bit-identical to the uninterrupted one: parameters, accumulators, optimizer states, the log."""
  c, docs, ref = protocol_reference
  at = lambda ks_step: lambda pos: (pos.get('phase') == 'sleep' and pos.get('kind') == 'protocol' and
                                    pos.get('receiver') == 2 and pos.get('ks_step') == ks_step)
  _stop_after_save(c, docs, tmp_path, monkeypatch, at(0))
  _stop_after_save(c, docs, tmp_path, monkeypatch, at(1))
  second, _ = _cycle(c, tmp_path)
  events = second.run(docs)
  leaves = lambda t: {jax.tree_util.keystr(k): np.asarray(v) for k, v in
                      jax.tree_util.tree_leaves_with_path(jax.device_get(t))}
  a, b = leaves(ref.state), leaves(second.state)
  assert set(a) == set(b) and any('acc' in k for k in a)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  drop = lambda evs: [(k, v) for e in evs for k, v in sorted(e.items()) if k not in ('seconds', 'update_s', 'sample_s',
                                                                                   'teacher_sample_s')]
  assert _protocol_trace(events) == _protocol_trace(ref.log_lines)
  assert drop(events) == drop(ref.log_lines)


# ---- wake steps of several documents, checkpoint cadence, events on disk ----------------------------------------


def test_docs_batch_puts_one_document_a_row_and_pads_with_weight_zero():
  from sleep_jax.io.byte_tokenizer import ByteTokenizer
  tok = ByteTokenizer()
  docs = [{'id': 'a', 'text': 'first document'}, {'id': 'b', 'text': 'the second one, longer'}]
  one = cycle_lib.docs_batch(tok, docs[:1], 32, 4)
  ref = cycle_lib.doc_batch(tok, docs[0], 32, 4)
  for k in ref:
    np.testing.assert_array_equal(one[k], ref[k])      # docs_per_step=1: exactly the batch it always was
  two = cycle_lib.docs_batch(tok, docs, 32, 4)
  for j, d in enumerate(docs):                          # row j is document j, built independently
    ids = tok.encode(d['text']) + [tok.eos_id]
    assert two['inputs'][j, :len(ids) - 1].tolist() == ids[:-1] and two['targets'][j, :len(ids) - 1].tolist() == ids[1:]
    assert two['weights'][j].sum() == len(ids) - 1
  assert not two['weights'][2:].any() and (two['inputs'][2:] == tok.pad_id).all()
  with pytest.raises(ValueError, match=r'1\.\.1 documents'):
    cycle_lib.docs_batch(tok, docs, 32, 1)
  c = _config()
  with c.unlocked():
    c.cycle.update(dict(docs_per_step=2, docs_per_sleep=3))
  with pytest.raises(ValueError, match=r'cycle.docs_per_sleep=3 must be a multiple of cycle.docs_per_step=2'):
    runtime.validate(c)


def test_event_segments_keep_exactly_what_a_checkpoint_recorded(tmp_path):
  seg = cycle_lib.EventSegments(tmp_path)
  ev = [{'event': 'e', 'i': i, 'x': 0.1 * i} for i in range(8)]
  seg.write(0, ev[:3])
  seg.write(3, ev[3:5])
  seg.write(5, ev[5:])          # a save that did not commit: its checkpoint would record 5
  assert seg.read(8) == ev
  assert seg.read(5) == ev[:5] and sorted(p.name for p in seg.dir.iterdir()) == ['000000000000.jsonl',
                                                                                   '000000000003.jsonl']
  assert seg.read(4) == ev[:4] and seg.read(5 - 1) == ev[:4]    # cut inside a segment: rewritten to its part
  seg.write(4, ev[4:6])
  assert seg.read(6) == ev[:6]
  (seg.dir / '000000000000.jsonl').unlink()
  with pytest.raises(RuntimeError, match='event log is damaged'):
    seg.read(6)


def _batch_config():
  """4 documents, 2 a wake step, the MLP levels learning while awake (so the wake steps show in the parameters),
  and one sleep over all 4 with no Knowledge Seeding update (cheap: the test is about the wake side)."""
  c = _config(steps=0)
  with c.unlocked():
    c.knowledge.n_docs = 4
    c.cycle.update(dict(docs_per_step=2, docs_per_sleep=4, seq_len=64))
    c.wake.update(dict(lr=0.01, optimizer='adamw'))
    c.checkpoint.every = 1
  return c


def test_two_documents_a_wake_step_resume_between_saves_is_bit_identical(tmp_path, monkeypatch):
  """docs_per_step=2: 4 documents are 2 wake steps and one sleep over all 4; checkpoints after wake step 1, before
  the sleep and after it (checkpoint.every=1). Stopped right after the first save, the rerun re-reads documents 2
  and 3 and ends with the uninterrupted run's parameters, log and checkpoint positions."""
  c = _batch_config()
  docs = documents.load_docs(c.knowledge, c.seed)
  ref, b = _cycle(c, tmp_path / 'ref')
  before = _flat(b.params)
  events = ref.run(docs)
  assert not np.array_equal(before['layers_0/mlp/w_up'], _flat(ref.state['params'])['layers_0/mlp/w_up'])
  assert int(ref.state['step']) == 2
  sleeps = [e for e in events if e['event'] == 'sleep']
  assert [e['docs'] for e in sleeps] == [[d['id'] for d in docs]]
  assert ref.rt.ckpt.all_steps() == [2, 3]                        # keep=2 of saves 1 (wake), 2 (sleep start), 3
  assert ref.rt.ckpt.restore_meta(3)['cycle'] == {'doc': 4, 'sleep': 1, 'buffer': [], 'phase': 'wake', 'save_id': 3}
  assert ref.rt.ckpt.restore_meta(2)['cycle']['doc'] == 4
  _stop_after_save(c, docs, tmp_path / 'cut', monkeypatch, lambda pos: pos['phase'] == 'wake' and pos['doc'] == 2)
  cut, _ = _cycle(c, tmp_path / 'cut')
  assert _no_time(cut.run(docs)) == _no_time(events)
  a, b = _flat(ref.state['params']), _flat(cut.state['params'])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _no_time(evs):
  return [{k: v for k, v in e.items() if k != 'seconds' and not k.endswith('_s')}
          for e in evs]


def test_a_nan_is_caught_before_the_checkpoint_that_would_hold_it(tmp_path, monkeypatch):
  """Metrics are fetched every log_every=10 wake steps, but a checkpoint fetches and checks them first: a NaN in
  wake step 1 stops the run before its save (checkpoint.every=1), so no checkpoint holds it."""
  from sleep_jax.guard import NonFiniteError
  c = _batch_config()
  _poison_doc(monkeypatch, 0)
  cyc, _ = _cycle(c, tmp_path)
  with pytest.raises(NonFiniteError, match=r'^wake: non-finite loss=nan, grad_norm=nan at step 1 \(documents 0-1, '):
    cyc.run(documents.load_docs(c.knowledge, c.seed))
  assert cyc.rt.ckpt.latest_step() is None
