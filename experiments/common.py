"""What every experiment of the paper shares: one model build (`Lab`), a sleep on any documents (Knowledge Seeding
into new experts), fine-tuning baselines (plain or EWC), greedy generation, scoring of candidate answers, the
retention probe, seeds -> mean +- sd tables, and results files written whole (write, then rename).

An experiment entry point (experiments/<name>.py) holds only its protocol: which data, which rows, which metric.

  lab = Lab(config)                                   # build once per process; compiled functions are reused
  params, cms, hist = lab.sleep(params, cms, docs, seed)          # docs: [{'id', 'title', 'text'}]
  params, losses = lab.finetune(params, cms, pairs, seed=0)   # pairs: [(prompt | None, target)]; config.finetune
  texts = lab.generate(params, cms, ['Translate ...'], max_new_tokens=32)
  lp = lab.score(params, cms, 'Which intent? ...', ['book a flight', 'check balance'])   # sum log p per candidate
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from sleep_jax import results, runtime, sharding, train
from sleep_jax.models.cms import variables
from sleep_jax.phases import consolidate as ks

Pair = tuple  # (prompt text or None, target text): a chat turn (loss on the answer only) or plain text


def smoke() -> bool:
  """Notebooks and CI set SLEEP_JAX_SMOKE=1: experiments then run their ':smoke' config."""
  return os.environ.get('SLEEP_JAX_SMOKE') == '1'


def copy_tree(t):
  """Jitted steps donate their state: give them a copy of anything that is used again."""
  return jax.tree.map(lambda x: x.copy(), t)


class Lab:
  """One built model and the compiled functions around it, shared by all rows and seeds of an experiment."""

  def __init__(self, config):
    self.config = config
    self.rt = runtime.Runtime(config)   # the composition root: model, sampler, seeders, dreamers, probe, guard
    self.b, self.tok, self.sampler, self.wcfg = self.rt.b, self.rt.tokenizer, self.rt.sampler, self.rt.wcfg
    self.rows_multiple, self.batch_sh = self.rt.n_shards, self.rt.batch_sharding
    self._sft = {}
    self._score_fn = jax.jit(_row_logprob, static_argnums=0)

  # ------------------------------------------------------------------------------------------ basics
  @property
  def params(self):
    return self.b.params

  @property
  def cms(self):
    return self.b.cms

  def layers(self, level: int | None = None) -> tuple[int, ...]:
    """The layers of CMS level `level` (default: config.sleep.receiver_level), which receive new experts."""
    return self.rt.layers(level)

  def probe(self, params, cms) -> float:
    """Retention probe: NLL on validation essays (what the model knew before; lower is better)."""
    return self.rt.probe()(params, cms)

  def chat(self, user: str) -> list[int]:
    return self.tok.chat_tokens([{'role': 'user', 'content': user}])

  # ------------------------------------------------------------------------------------------ sleep
  def sleep(self, params, cms, docs: Sequence[dict], seed: int, *, layers: Sequence[int] | None = None,
            templates: Sequence[str] | None = None, n_prefix: int | None = None, steps: int | None = None,
            desc: str = 'sleep') -> tuple[dict, dict, list[dict]]:
    """Knowledge Seeding of `docs` (context -> new experts): the teacher is (params, cms) reading each document,
    the student the same model plus one new expert per layer of `layers` (default: the receiver level) without
    it. Returns the committed (params, cms) and the per-update history. Needs a free expert slot per layer."""
    c = self.config.sleep
    layers = tuple(self.layers() if layers is None else layers)
    seeder = self.rt.seeder(self.rt.ks_config() if steps is None else self.rt.ks_config(steps=steps))
    view = ks.View(layers, True)
    sp, scms, index = ks.expand_student(params, cms, layers)
    items = ks.context_items(self.tok, list(docs), tuple(templates or c.templates), seed,
                                    c.prefix_prompts if n_prefix is None else n_prefix)
    st, hist = seeder.run({'params': params, 'cms': cms}, {'params': sp, 'cms': scms}, index, view, items,
                          jax.random.key(seed), progress_desc=desc)
    return ks.commit(sp, st, index, view), scms, hist

  # ------------------------------------------------------------------------------------------ fine-tuning
  def sft_batch(self, pairs: Sequence[Pair], seq_len: int) -> dict:
    """Rows of (prompt, target): chat prompt + target + EOS, loss on the target only; (None, text): plain text,
    loss on all of it. Rows are cut to seq_len and padded to a multiple of the mesh's batch size."""
    n = -(-len(pairs) // self.rows_multiple) * self.rows_multiple
    out = {'inputs': np.full((n, seq_len), self.tok.pad_id, np.int32),
           'targets': np.full((n, seq_len), self.tok.pad_id, np.int32),
           'weights': np.zeros((n, seq_len), np.float32)}
    for r, (prompt, target) in enumerate(pairs):
      p = self.chat(prompt) if prompt is not None else []
      t = self.tok.encode(target) + [self.tok.eos_id]
      ids = (p + t)[:seq_len + 1]
      w = ([0.0] * len(p) + [1.0] * len(t))[1:seq_len + 1]
      k = len(ids) - 1
      out['inputs'][r, :k], out['targets'][r, :k], out['weights'][r, :k] = ids[:-1], ids[1:], w
    return out

  def _sft_step(self, lr: float, trainable: str, loss_state: dict | None):
    """(optimizer, state shardings, jitted step) for these lr/trainable, with or without EWC: the one train-step
    builder (train.make_train_step), its loss a plug-in (lm_loss, or train.ewc_loss reading `loss_state`, the
    anchor and Fisher, from the state: params-sized, so sharded like the params rather than compiled in)."""
    key = (lr, trainable, loss_state is not None)
    if key not in self._sft:
      cfg = mlc.ConfigDict(dict(self.config.optim))
      cfg.lr, cfg.trainable = lr, trainable
      tx = train.make_optimizer(cfg, self.b.params)
      labels = train.optimizer_labels(cfg, self.b.params)   # expert-only rows skip the base's gradients
      layout = jax.eval_shape(lambda p, c: train.init_state(p, tx, c), self.b.params, self.b.cms)
      if loss_state is not None:
        layout['loss_state'] = loss_state
      shard = train.state_shardings(layout, self.b.shardings, self.b.mesh)
      step = train.make_train_step(self.b.model, tx, shard, self.batch_sh,
                                   train.lm_loss if loss_state is None else train.ewc_loss(), labels,
                                   skip_nonfinite=self.rt.guard.skip)   # config.guard.nonfinite=skip (guard.py)
      self._sft[key] = (tx, shard, step)
    return self._sft[key]

  def finetune(self, params, cms, pairs: Sequence[Pair], *, seed: int, steps: int | None = None,
               lr: float | None = None, batch_size: int | None = None, seq_len: int | None = None,
               trainable: str | None = None, ewc: dict | None = None,
               ewc_lambda: float | None = None) -> tuple[dict, list[float]]:
    """The fine-tuning baseline: AdamW on `pairs` (batches drawn in a seeded order) for `steps` updates; every
    setting left None is `config.finetune`'s (one block for all experiments; see configs/base.finetune_fields).
    `ewc` = {'params', 'fisher'} adds the EWC penalty with weight `ewc_lambda`. `trainable` is a regex over
    parameter paths. Returns (params, per-step loss, without the penalty); the inputs are not modified."""
    if not pairs:
      raise ValueError('finetune got no training pairs')
    f = finetune_settings(self.config, steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len,
                          trainable=trainable, ewc_lambda=ewc_lambda)
    loss_state = None   # copies below: the step donates its state, and the caller uses these trees again
    if ewc is not None:
      loss_state = train.ewc_state(copy_tree(ewc['params']), copy_tree(ewc['fisher']), f['ewc_lambda'])
    tx, shard, step = self._sft_step(f['lr'], f['trainable'], loss_state)
    state = train.init_state(copy_tree(params), tx, copy_tree(cms))
    if loss_state is not None:
      state['loss_state'] = loss_state
    state = jax.device_put(state, shard)
    rng = np.random.default_rng(seed)
    n, bs = f['steps'], f['batch_size']
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(-(-n * bs // len(pairs)))])
    hist = []
    for s in range(n):
      batch = self.sft_batch([pairs[i] for i in order[s * bs:(s + 1) * bs]], f['seq_len'])
      state, m = step(state, jax.device_put(batch, self.batch_sh))
      hist.append(float(m['loss']))
      if not (np.isfinite(hist[-1]) and np.isfinite(float(m['grad_norm']))):
        self.rt.guard.check('fine-tune', s + 1, {'loss': m['loss'], 'grad_norm': m['grad_norm']})
    return state['params'], hist

  def fisher(self, params, cms, pairs: Sequence[Pair], *, seq_len: int | None = None) -> dict:
    """Diagonal empirical Fisher: the mean over `pairs` of the squared gradient of each example's loss (rows of
    `seq_len` tokens, default the fine-tuning block's)."""
    seq_len = seq_len or finetune_settings(self.config)['seq_len']
    if 'fisher' not in self._sft:
      model = self.b.model
      self._sft['fisher'] = jax.jit(lambda p, c, b: jax.tree.map(
          jnp.square, jax.grad(lambda q: train.lm_loss(model, q, b, c)[0])(p)))
    acc = None
    for pr in pairs:
      sq = self._sft['fisher'](params, cms, jax.device_put(self.sft_batch([pr], seq_len), self.batch_sh))
      acc = sq if acc is None else jax.tree.map(jnp.add, acc, sq)
    return jax.tree.map(lambda x: x / len(pairs), acc)

  # ------------------------------------------------------------------------------------------ evaluation
  def generate(self, params, cms, users: Sequence[str], *, max_new_tokens: int, batch: int = 8) -> list[str]:
    """Greedy answers to chat prompts, in batches of `batch` (one compiled shape per bucket)."""
    out = []
    for i in range(0, len(users), batch):
      o = self.sampler(params, [self.chat(u) for u in users[i:i + batch]], max_new_tokens=max_new_tokens,
                       rng=jax.random.key(0), temperature=0.0, cms=cms)
      out += [self.tok.decode(t[m]).strip() for t, m in zip(o.tokens, o.mask)]
    return out

  def score(self, params, cms, user: str, candidates: Sequence[str]) -> np.ndarray:
    """Sum of log p(candidate tokens | chat prompt) for each candidate: classification by likelihood."""
    p = self.chat(user)
    return self.score_rows(params, cms, [(p, self.tok.encode(c)) for c in candidates])

  def score_rows(self, params, cms, rows: Sequence[tuple[list[int], list[int]]], L: int | None = None,
                 chunk: int = 16) -> np.ndarray:
    """Sum log p(target | prompt) for (prompt ids, target ids) rows, in fixed [chunk, L] shapes."""
    from sleep_jax.sampling import bucket
    L = L or bucket(max(len(a) + len(b) for a, b in rows), self.config.sampling.prompt_buckets, 'scored row', 'prompt')
    chunk = -(-chunk // self.rows_multiple) * self.rows_multiple
    out = []
    for i in range(0, len(rows), chunk):
      part = rows[i:i + chunk]
      toks = np.full((chunk, L), self.tok.pad_id, np.int32)
      w = np.zeros((chunk, L), np.float32)
      for r, (a, b) in enumerate(part):
        ids = (a + b)[-L:]
        toks[r, :len(ids)] = ids
        w[r, len(ids) - len(b):len(ids)] = 1.0
      toks, w = jax.device_put((toks, w), self.batch_sh)   # rows split over the mesh's batch axes
      out.append(sharding.to_host(self._score_fn(self.b.model, params, cms or {}, toks, w))[:len(part)])
    return np.concatenate(out)


def _row_logprob(model, params, cms, toks, w):
  """Sum over positions with w = 1 of log p(token_t | tokens_<t)."""
  logits, _ = model.apply(variables(params, cms), toks[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  lp = jnp.take_along_axis(logp, toks[:, 1:, None], -1)[..., 0]
  return jnp.sum(lp * w[:, 1:], -1)


def finetune_problems(config) -> list[str]:
  """Range checks of `config.finetune` (the experiments' block; runtime.validate checks the rest)."""
  f, out = config.get('finetune'), []
  if f is None:
    return out
  for ok, msg in ((f.steps >= 1, f'finetune.steps={f.steps} must be >= 1'),
                  (f.lr > 0, f'finetune.lr={f.lr} must be > 0'),
                  (f.batch_size >= 1, f'finetune.batch_size={f.batch_size} must be >= 1'),
                  (f.seq_len >= 0, f'finetune.seq_len={f.seq_len} must be >= 0 (0: cycle.seq_len)'),
                  (f.ewc_lambda >= 0, f'finetune.ewc_lambda={f.ewc_lambda} must be >= 0')):
    if not ok:
      out.append(msg)
  try:
    re.compile(f.trainable)
  except re.error as e:
    out.append(f'finetune.trainable={f.trainable!r} is not a valid regex ({e})')
  return out


def finetune_settings(config, **overrides) -> dict:
  """`config.finetune` (the one fine-tuning baseline block, configs/base.finetune_fields) with the non-None
  `overrides` applied and seq_len 0 resolved to cycle.seq_len."""
  if 'finetune' not in config:
    raise ValueError('the config has no `finetune` block: build it from configs/sleep.py (or add '
                     'c.finetune = configs.base.finetune_fields())')
  f = {**config.finetune.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
  unknown = set(overrides) - set(config.finetune)
  if unknown:
    raise TypeError(f'finetune_settings: {sorted(unknown)} are not config.finetune keys ({sorted(config.finetune)})')
  f['seq_len'] = f['seq_len'] or config.cycle.seq_len
  return f


# ---------------------------------------------------------------------------------------------- reporting
def mean_sd(xs, fmt: str = '.1f') -> str:
  """'mean ± sd' over seeds (sample sd, ddof=1; 0 for one seed)."""
  xs = np.asarray(list(xs), float)
  sd = xs.std(ddof=1) if len(xs) > 1 else 0.0
  return f'{xs.mean():{fmt}} ± {sd:{fmt}}'


write_json = results.write_json   # obj as JSON, written whole (tmp + rename); experiments import it from here


def checked(config):
  """`config` after `runtime.validate` (every range, before anything is built or written); a bad value exits
  with one message naming each bad key."""
  try:
    runtime.validate(config, finetune_problems(config))
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  return config


def save_results(workdir: str, obj: dict, config, name: str = 'results.json') -> str:
  """results.json with the config, seed list and library versions; written whole (tmp + rename)."""
  return write_json(os.path.join(workdir, name), {**obj, 'config': json.loads(config.to_json()),
                                                  **results.run_info(config)})


def read_results(paths, experiment: str, keys=('rows',)) -> list:
  """The results.json files named by an experiment's --from_results, each checked to exist, to parse and to hold
  `keys` (so a wrong or unfinished file is named in the error instead of failing somewhere in the report)."""
  out = []
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f'--from_results: {p} does not exist (name the results.json of finished runs)')
    with open(p) as f:
      try:
        r = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'--from_results: {p} is not valid JSON ({e})') from None
    missing = [k for k in keys if k not in r]
    if missing:
      raise ValueError(f'--from_results: {p} is not a {experiment} results.json (no {", ".join(missing)})')
    out.append(r)
  return out


def write_table(workdir: str, table: str, footer: str = '') -> None:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'table.md')
  with open(path + '.tmp', 'w') as f:
    f.write(table + (f'\n\n{footer}\n' if footer else '\n'))
  os.replace(path + '.tmp', path)
  print(table + (f'\n\n{footer}' if footer else ''), flush=True)


def pyplot():
  """matplotlib with the file-only backend (experiments write PNGs; notebooks show them)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt
