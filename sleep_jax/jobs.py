"""Jobs the entry point dispatches to by `config.job`. Each takes (config, workdir) and returns a results dict."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time

import jax
import numpy as np

from sleep_jax import build as build_lib
from sleep_jax import faults, sharding, train
from sleep_jax.guard import NonFiniteGuard
from sleep_jax.sampling import Sampler


def write_json(path: str, obj) -> str:
  """obj as JSON, written then renamed into place: a reader never takes half a file for a whole one."""
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)
  return path


def versions() -> dict:
  """Library versions, backend and machine: what a result depends on besides config and seed."""
  import flax
  import jaxlib
  import optax
  import orbax.checkpoint as ocp
  return {'python': platform.python_version(), 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'optax': optax.__version__, 'orbax_checkpoint': ocp.__version__,
          'numpy': np.__version__, 'backend': jax.default_backend(), 'devices': jax.device_count(),
          'machine': platform.machine(), 'processor': platform.processor() or platform.machine(),
          'cpus': os.cpu_count()}


def run_info(config) -> dict:
  """The seed and `versions()`: recorded in every results file."""
  return {'seed': config.get('seed', 0), **versions()}


def make_sampler(b: build_lib.Built, config) -> Sampler:
  s = config.sampling
  return Sampler(b.model, b.cfg, pad_id=b.tokenizer.pad_id, eos_ids=b.tokenizer.stop_ids,
                 prompt_buckets=s.prompt_buckets, gen_buckets=s.gen_buckets, mesh=b.mesh,
                 param_shardings=b.shardings)


def chat(config, workdir: str) -> dict:
  """Chat-generate answers to `config.chat.prompts` with the configured model; report tokens/s."""
  os.makedirs(workdir, exist_ok=True)
  b = build_lib.build(config)
  sampler = make_sampler(b, config)
  msgs = lambda p: ([{'role': 'system', 'content': config.chat.system}] if config.chat.system else []) + \
      [{'role': 'user', 'content': p}]
  prompts = [b.tokenizer.chat_tokens(msgs(p)) for p in config.chat.prompts]
  s = config.sampling
  kw = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
  t0 = time.perf_counter()
  sampler(b.params, prompts, rng=jax.random.key(config.seed), cms=b.cms, **kw)   # compile + warm up
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = sampler(b.params, prompts, rng=jax.random.key(config.seed), cms=b.cms, **kw)
  dt = time.perf_counter() - t0
  n_new = int(out.mask.sum())
  answers = [b.tokenizer.decode(t[m]) for t, m in zip(out.tokens, out.mask)]
  for p, a in zip(config.chat.prompts, answers):
    print(f'\n>>> {p}\n{a.strip()}')
  res = {'job': 'chat', 'model': dataclasses.asdict(b.cfg), 'prompts': list(config.chat.prompts),
         'answers': answers, 'new_tokens': n_new, 'seconds': dt, 'tokens_per_s': n_new / dt,
         'first_call_seconds_incl_compile': compile_s, 'batch': len(prompts), **run_info(config)}
  print(f'\n{n_new} new tokens for {len(prompts)} prompts in {dt:.2f}s = {n_new / dt:.1f} tokens/s '
        f'(batch {len(prompts)}, {jax.default_backend()}, first call incl. compile {compile_s:.1f}s)')
  write_json(os.path.join(workdir, 'results.json'), res)
  return res


# ---- language-model training ----------------------------------------------------------------------

class LMBatches:
  """Training batches by step. 'synthetic': a pure function of (seed, step), seeded copy-task rows.
  'tfds': a grain pipeline (packed rows with segment ids) over a project dataset, whose iterator state
  goes into every checkpoint so a resumed run sees exactly the batches an uninterrupted one would."""

  def __init__(self, config, tokenizer, vocab_size: int):
    d = config.data
    self.source, self.seed, self.B, self.L = d.source, config.seed, d.batch_size, d.seq_len
    self.lo, self.vocab_size = getattr(tokenizer, 'sep_id', 3) + 1, vocab_size
    self._it = None
    if d.source == 'tfds':
      from sleep_jax.data import pipeline, tfds_builders
      src = tfds_builders.load(d.dataset, d.split)        # 'test' refuses: training never reads it
      self._pipeline = pipeline
      self._it = iter(pipeline.lm_dataset(src, tokenizer, text_key=d.text_key, seq_len=self.L,
                                          batch_size=self.B, seed=self.seed))
    elif d.source != 'synthetic':
      raise ValueError(f"data.source={d.source!r} is not one of 'synthetic', 'tfds'")

  def __call__(self, step: int) -> dict:
    if self._it is not None:
      return next(self._it)
    r = np.random.default_rng([self.seed, step])
    half = r.integers(self.lo, self.vocab_size, size=(self.B, self.L // 2 + 1))
    return _lm_dict(np.concatenate([half, half], axis=1)[:, : self.L + 1])   # second half copies the first

  def state(self) -> dict:
    return {'grain': self._pipeline.get_state(self._it)} if self._it is not None else {}

  def restore(self, state: dict | None) -> None:
    if self._it is not None:
      if not state or 'grain' not in state:
        raise ValueError('checkpoint has no data-iterator state but data.source is tfds; '
                         'it was written by a run with another data.source')
      self._pipeline.set_state(self._it, state['grain'])


def _lm_dict(seq):
  seq = np.asarray(seq, np.int32)
  return {'inputs': seq[:, :-1], 'targets': seq[:, 1:], 'weights': np.ones(seq[:, 1:].shape, np.float32)}


def _run_steps(config, workdir: str, name: str, b, state, shard, step_fn, meta: dict,
               on_metrics=None) -> tuple[dict, dict]:
  """The loop `lm` and `wake` share: grain/synthetic batches, metrics, checkpoints with the data-iterator
  state, resume from the newest checkpoint in `workdir`. Returns (final state, results dict)."""
  from sleep_jax.checkpoint import Checkpointer, abstract_like
  from sleep_jax.metrics import MetricLogger, progress
  batch_sh = sharding.batch_sharding(b.mesh, b.rules)
  n_shards = batch_sh.mesh.size // math.prod(  # devices the batch dim is split over
      batch_sh.mesh.shape[a] for a in batch_sh.mesh.axis_names if a not in jax.tree.leaves(tuple(batch_sh.spec)))
  if config.data.batch_size % n_shards:
    raise ValueError(f'data.batch_size={config.data.batch_size} must be a multiple of the {n_shards} devices the '
                     f'batch is split over (mesh {dict(b.mesh.shape)}); change data.batch_size or mesh.shape')
  ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, save_every=config.checkpoint.every)
  batches = LMBatches(config, b.tokenizer, b.cfg.vocab_size)
  guard = NonFiniteGuard.from_config(config)
  start = 0
  if ckpt.latest_step() is not None:
    state, _, extra = ckpt.restore(abstract_like(state, shard))
    batches.restore((extra or {}).get('data'))
    guard.skipped.update((extra or {}).get('nonfinite_skips', {}))
    start = int(state['step'])
    logging.info('resumed from step %d in %s', start, workdir)
    print(f'resuming from step {start} in {workdir}')
  log = MetricLogger(workdir)
  history = []
  t0 = time.perf_counter()
  steps = config.train.steps
  bar = progress(range(start, steps), desc=name)
  pending = []   # (step, loss, grad_norm) on device since the last check: no host sync per step

  def check():   # every step's loss and gradient norm, before anything is logged or checkpointed
    for s, loss, gn in jax.device_get(pending):
      guard.check(name, s, {'loss': loss, 'grad_norm': gn})
    pending.clear()

  for step in bar:
    host = batches(step)
    batch = jax.make_array_from_process_local_data(batch_sh, host) if jax.process_count() > 1 \
        else jax.device_put(host, batch_sh)
    state, m = step_fn(state, batch)
    faults.point('train_step')
    pending.append((step + 1, m['loss'], m['grad_norm']))
    if on_metrics is not None:
      on_metrics(step + 1, m)
    if (step + 1) % config.log_every == 0 or step + 1 == steps:
      check()
      m = {k: float(v) for k, v in jax.device_get(m).items() if np.ndim(v) == 0}
      log.write_scalars(step + 1, m)
      history.append({'step': step + 1, **m})
      bar.set_metrics({'loss': m['loss']})
    if (step + 1) % config.checkpoint.every == 0 or step + 1 == steps:
      check()
      ckpt.save(step + 1, state, meta, force=True,
                extra={'data': batches.state(), 'nonfinite_skips': dict(guard.skipped)})
  ckpt.wait()
  ckpt.close()
  log.close()
  res = {'job': name, 'steps': steps, 'start_step': start, 'history': history,
         'nonfinite_skips': dict(guard.skipped),
         'seconds': time.perf_counter() - t0, **run_info(config)}
  if history:
    print(f"step {history[-1]['step']}: loss {history[-1]['loss']:.4f}")
  return state, res


def lm(config, workdir: str) -> dict:
  """Train the LM with the sharded pure step; resumes from the newest checkpoint in `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  b = build_lib.build(config)
  tx = train.make_optimizer(config.optim, b.params)
  state = train.init_state(b.params, tx, b.cms)
  shard = train.state_shardings(state, b.shardings, b.mesh)
  state = jax.device_put(state, shard)
  step_fn = train.make_train_step(b.model, tx, shard, sharding.batch_sharding(b.mesh, b.rules),
                                  labels=train.optimizer_labels(config.optim, b.params),
                                  skip_nonfinite=NonFiniteGuard.from_config(config).skip)
  meta = {'config': config.to_json(), 'model': dataclasses.asdict(b.cfg), 'lineage': []}
  _, res = _run_steps(config, workdir, 'lm', b, state, shard, step_fn, meta)
  write_json(os.path.join(workdir, 'results.json'), res)
  return res


def wake_config(config, cfg):
  """WakeConfig from `config.wake`; empty level_of_layer/periods/lrs mean `default_levels` over all layers."""
  from sleep_jax.phases import wake as wake_lib
  w = config.wake
  level_of_layer, periods, lrs = tuple(w.level_of_layer), tuple(w.periods), tuple(w.lrs)
  if not level_of_layer:
    level_of_layer, periods = wake_lib.default_levels(cfg.n_layers, w.n_levels, w.base_period, w.factor)
    lrs = lrs or (w.lr,) * len(periods)
  return wake_lib.WakeConfig(level_of_layer=level_of_layer, periods=periods, lrs=lrs, optimizer=w.optimizer,
                             train_other=w.train_other, other_lr=w.other_lr)


def wake(config, workdir: str) -> dict:
  """Wake on a stream (PAPER Eq. 2): each CMS level applies its accumulated update at its chunk boundary.
  Records the boundaries (the sleep triggers) and checks the stream compiled once."""
  from sleep_jax.phases import wake as wake_lib
  os.makedirs(workdir, exist_ok=True)
  b = build_lib.build(config)
  wcfg = wake_config(config, b.cfg)
  state = wake_lib.init_wake_state(b.params, b.cms, wcfg)
  shard = wake_lib.wake_state_shardings(state, b.shardings, b.mesh)
  state = jax.device_put(state, shard)
  step_fn = wake_lib.make_wake_step(b.model, wcfg, shard, sharding.batch_sharding(b.mesh, b.rules),
                                    skip_nonfinite=NonFiniteGuard.from_config(config).skip)
  meta = {'config': config.to_json(), 'model': dataclasses.asdict(b.cfg), 'wake': dataclasses.asdict(wcfg),
          'lineage': []}
  triggers = []
  on_metrics = lambda step, m: triggers.extend(
      {'step': step, 'level': int(l)} for l in np.flatnonzero(np.asarray(m['boundary'])))
  _, res = _run_steps(config, workdir, 'wake', b, state, shard, step_fn, meta, on_metrics)
  res.update(wake=dataclasses.asdict(wcfg), triggers=triggers, compilations=step_fn.n_traces)
  print(f'{len(triggers)} level updates (sleep triggers); wake step compiled {step_fn.n_traces} time(s)')
  write_json(os.path.join(workdir, 'results.json'), res)
  return res


# ---- the wake/sleep cycle on documents (knowledge incorporation) ----------------------------------

def load_docs(config) -> list[dict]:
  """The documents to read while awake: a user's JSONL file (`knowledge.documents`), or `knowledge.n_docs`
  generated passages of `knowledge.split` chosen by `config.seed`. 'test' is held out: final evaluation only,
  with `knowledge.allow_test=True`."""
  k = config.knowledge
  if k.documents:
    from sleep_jax.data import documents
    docs = documents.load_jsonl(k.documents)
  else:
    from sleep_jax.data import knowledge
    docs = knowledge.generate(k.split, seed=k.data_seed, allow_test=k.allow_test)
    order = np.random.default_rng([config.seed, 0x5ee9]).permutation(len(docs))
    docs = [docs[i] for i in order]
  docs = docs[:k.n_docs] if k.n_docs else docs
  return cut_docs(docs, k.max_doc_chars)


def cut_docs(docs: list[dict], max_chars: int) -> list[dict]:
  """Fit small context windows: cut each text at the last sentence end before `max_chars` (0: unchanged)."""
  if not max_chars:
    return docs
  cut = lambda t: t if len(t) <= max_chars else t[:max(t.rfind('.', 0, max_chars) + 1, 1) or max_chars]
  return [dict(d, text=cut(d['text'])) for d in docs]


def _qa(tag, sampler, params, cms, tok, docs, config, with_context=False):
  if not any(d.get('questions') for d in docs):
    return None
  from sleep_jax import evals
  return evals.qa_eval(sampler, params, cms, tok, docs, with_context=with_context,
                       max_new_tokens=config.knowledge.answer_tokens, batch_size=config.knowledge.eval_batch, desc=tag)


def _score_line(name, r):
  return f"| {name} | {r['recall']:.1f} | {r['exact_match']:.1f} | {r['token_f1']:.1f} | {r['n']} |"


def sleep(config, workdir: str) -> dict:
  """Read documents while awake, sleep on them, and measure no-context QA before and after the sleep(s),
  with the teacher's with-context accuracy as the ceiling and the retention probe before and after."""
  from sleep_jax.data import long_horizon
  from sleep_jax.cycle import Cycle
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  b = build_lib.build(config)
  docs = load_docs(config)
  probe_texts = [t for _, t in long_horizon.split_essays('validation')]
  cyc = Cycle(config, workdir, b, probe_texts)
  sampler, tok = cyc.rt.sampler, b.tokenizer
  before_path = os.path.join(workdir, 'before.json')
  if os.path.exists(before_path):        # a resumed run: "before" was measured on the pre-sleep model
    with open(before_path) as f:
      before = json.load(f)
  else:
    before = {'no_context': _qa('qa before', sampler, b.params, b.cms, tok, docs, config),
              'with_context': _qa('qa+context (ceiling)', sampler, b.params, b.cms, tok, docs, config, True)
              if config.knowledge.with_context_eval else None,
              'probe_nll': cyc.rt.probe(b.params, b.cms)}
    write_json(before_path, before)
  events = cyc.run(docs)
  st = cyc.state
  after = {'no_context': _qa('qa after', sampler, st['params'], st['cms'], tok, docs, config),
           'probe_nll': cyc.rt.probe(st['params'], st['cms'])}
  sleeps = [e for e in events if e.get('event') == 'sleep']
  res = {'job': 'sleep', 'docs': [d['id'] for d in docs], 'n_questions': sum(len(d.get('questions', [])) for d in docs),
         'before': before, 'after': after, 'sleeps': sleeps,
         'ks_steps': [e for e in events if e.get('event') == 'ks_step'],
         'dream_rounds': [e for e in events if e.get('event') == 'dream_round'],
         'ks': dict(config.sleep.ks), 'nonfinite_skips': dict(cyc.guard.skipped),
         'seconds': time.perf_counter() - t_start, **run_info(config)}
  write_json(os.path.join(workdir, 'results.json'), res)
  lines = ['| model | answer recall % | exact match % | token F1 % | questions |', '|---|---:|---:|---:|---:|']
  if before['no_context']:
    lines.append(_score_line('before sleep (no context)', before['no_context']))
    lines.append(_score_line('after sleep (no context)', after['no_context']))
  if before.get('with_context'):
    lines.append(_score_line('teacher with context (ceiling)', before['with_context']))
  print('\n' + '\n'.join(lines))
  if res['dream_rounds']:
    from sleep_jax.phases import dream
    png = os.path.join(workdir, 'dream_rewards.png')
    dream.plot_reward_rates({'this run': [[e['reward_rate'] for e in res['dream_rounds'] if e['sleep'] == s]
                                          for s in sorted({e['sleep'] for e in res['dream_rounds']})]}, png,
                            title='Dreaming: ReST-EM reward rate per round (one line per sleep)')
    print('dreaming reward rate per round: ' + ', '.join(
        f"sleep {e['sleep']} round {e['round']}: {e['reward_rate']:.2f}" for e in res['dream_rounds']) + f' ({png})')
  print(f"retention probe NLL {before['probe_nll']:.4f} -> {after['probe_nll']:.4f}; "
        f"{sum(e['committed'] for e in sleeps)}/{len(sleeps)} sleeps committed; {res['seconds']:.0f}s in all; "
        f"results in {os.path.join(workdir, 'results.json')}")
  return res


JOBS = {'chat': chat, 'lm': lm, 'wake': wake, 'sleep': sleep}


def validate(config, check_job: bool = True) -> None:
  """Check every value a job reads for range and consistency before anything is built or written; raises one
  ValueError listing each problem with its config key (unknown keys and wrong types are refused earlier, by
  the locked ml_collections config). `check_job=False` for the experiments' own entry points."""
  problems = []

  def need(ok, msg):
    if not ok:
      problems.append(msg)

  def run(fn):   # the validators the jobs themselves construct
    try:
      fn()
    except (ValueError, TypeError) as e:
      problems.append(str(e))

  c = config
  need(not check_job or c.job in JOBS, f'job={c.job!r} is not one of {sorted(JOBS)}')
  need(c.seed >= 0, f'seed={c.seed} must be >= 0')
  need(c.log_every >= 1, f'log_every={c.log_every} must be >= 1')
  build_lib.check_source(c.model, problems)
  if c.model.source == 'random':
    run(lambda: build_lib.model_config_from(c.model))
  ck = c.checkpoint
  need(ck.every >= 1, f'checkpoint.every={ck.every} must be >= 1')
  need(ck.keep is None or ck.keep >= 1, f'checkpoint.keep={ck.keep} must be >= 1 (or None: keep all)')
  need(ck.sleep_every >= 0, f'checkpoint.sleep_every={ck.sleep_every} must be >= 0 (0: no saves inside a sleep)')
  s = c.sampling
  need(s.temperature >= 0, f'sampling.temperature={s.temperature} must be >= 0 (0: greedy)')
  need(s.top_k >= 0, f'sampling.top_k={s.top_k} must be >= 0 (0: off)')
  need(0 < s.top_p <= 1, f'sampling.top_p={s.top_p} must be in (0, 1]')
  need(s.max_new_tokens >= 1, f'sampling.max_new_tokens={s.max_new_tokens} must be >= 1')
  for k in ('prompt_buckets', 'gen_buckets'):
    b = tuple(s[k])
    need(b and all(x >= 1 for x in b) and list(b) == sorted(set(b)),
         f'sampling.{k}={b} must be increasing positive lengths')
  run(lambda: NonFiniteGuard.from_config(c))
  if 'train' in c:
    need(c.train.steps >= 0, f'train.steps={c.train.steps} must be >= 0')
  if 'data' in c:
    need(c.data.batch_size >= 1 and c.data.seq_len >= 1,
         f'data.batch_size={c.data.batch_size} and data.seq_len={c.data.seq_len} must be >= 1')
  if 'wake' in c:
    w = c.wake
    if tuple(w.level_of_layer):
      run(lambda: wake_config(c, None))
    else:
      need(w.n_levels >= 1, f'wake.n_levels={w.n_levels} must be >= 1')
      need(w.base_period >= 1 and w.factor >= 2,
           f'wake.base_period={w.base_period} must be >= 1 and wake.factor={w.factor} >= 2 (periods C^(l) = '
           'base_period * factor^l, each dividing the next)')
      need(w.lr >= 0 and all(x >= 0 for x in w.lrs), f'wake.lr={w.lr} and wake.lrs={tuple(w.lrs)} must be >= 0')
  if 'cycle' in c:
    need(c.cycle.docs_per_sleep >= 1, f'cycle.docs_per_sleep={c.cycle.docs_per_sleep} must be >= 1')
    need(c.cycle.seq_len >= 1, f'cycle.seq_len={c.cycle.seq_len} must be >= 1')
  if 'sleep' in c:
    from sleep_jax.phases import consolidate as ks
    from sleep_jax.phases import dream as dream_lib
    run(lambda: ks.KSConfig.from_config(c.sleep.ks))
    if 'dream' in c.sleep:
      run(lambda: dream_lib.DreamConfig.from_config(c.sleep.dream))
    need(c.sleep.max_probe_regression >= 0,
         f'sleep.max_probe_regression={c.sleep.max_probe_regression} must be >= 0')
    if 'wake' in c and not tuple(c.wake.level_of_layer):
      need(0 <= c.sleep.receiver_level < c.wake.n_levels,
           f'sleep.receiver_level={c.sleep.receiver_level} must name a CMS level (0..{c.wake.n_levels - 1})')
  if problems:
    raise ValueError('bad config:\n  - ' + '\n  - '.join(dict.fromkeys(problems)))


def run(config, workdir: str) -> dict:
  if config.job not in JOBS:
    raise ValueError(f'config.job={config.job!r} is not one of {sorted(JOBS)}')
  return JOBS[config.job](config, workdir)
