"""What every experiment of the paper shares: one model build (`Lab`), a sleep on any documents (Knowledge Seeding
into new experts), fine-tuning baselines (plain or EWC), greedy generation, scoring of candidate answers, the
retention probe, seeds -> mean +- sd tables, and results files written whole (write, then rename).

An experiment entry point (experiments/<name>.py) holds only its protocol: which data, which rows, which metric.

  lab = Lab(config)                                   # build once per process; compiled functions are reused
  params, cms, hist = lab.sleep(params, cms, docs, seed)          # docs: [{'id', 'title', 'text'}]
  params, losses = lab.finetune(params, cms, pairs, steps=8, lr=3e-5, seed=0)   # pairs: [(prompt | None, target)]
  texts = lab.generate(params, cms, ['Translate ...'], max_new_tokens=32)
  lp = lab.score(params, cms, 'Which intent? ...', ['book a flight', 'check balance'])   # sum log p per candidate
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from sleep_jax import guard, results, runtime, train
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

  def _sft_step(self, opt: tuple, ewc: bool):
    key = (opt, ewc)
    if key not in self._sft:
      lr, trainable = opt
      cfg = mlc.ConfigDict(dict(self.config.optim))
      cfg.lr, cfg.trainable = lr, trainable
      tx = train.make_optimizer(cfg, self.b.params)
      labels = train.optimizer_labels(cfg, self.b.params)   # expert-only rows skip the base's gradients
      model, skip = self.b.model, self.rt.guard.skip

      def step(state, batch, anchor, lam):
        def loss_fn(p):
          loss, m = train.lm_loss(model, p, batch, state.get('cms'))
          if ewc:   # EWC (Kirkpatrick et al. 2017): lam/2 * sum_i F_i (theta_i - theta*_i)^2
            pen = sum(jnp.sum(f * (x - x0) ** 2) for f, x, x0 in zip(
                jax.tree.leaves(anchor['fisher']), jax.tree.leaves(p), jax.tree.leaves(anchor['params'])))
            loss = loss + 0.5 * lam * pen
            m = dict(m, ewc=pen)
          return loss, m
        (_, m), g = train.trainable_value_and_grad(loss_fn, state['params'], labels)
        upd, os_ = tx.update(g, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], upd)
        if skip:   # config.guard.nonfinite=skip: a non-finite step changes nothing (guard.py)
          params, os_ = guard.keep_if(guard.finite(m['loss'], g), (params, os_), (state['params'], state['opt_state']))
        return dict(state, step=state['step'] + 1, params=params, opt_state=os_), m

      self._sft[key] = (tx, jax.jit(step, donate_argnums=0))
    return self._sft[key]

  def finetune(self, params, cms, pairs: Sequence[Pair], *, steps: int, lr: float, seed: int, batch_size: int = 4,
               seq_len: int | None = None, trainable: str = '.*', ewc: dict | None = None,
               ewc_lambda: float = 0.0) -> tuple[dict, list[float]]:
    """AdamW on `pairs` (batches drawn in a seeded order) for `steps` updates; `ewc` = {'params', 'fisher'}
    adds the EWC penalty with weight `ewc_lambda`. `trainable` is a regex over parameter paths. Returns
    (params, per-step loss); the inputs are not modified."""
    if not pairs:
      raise ValueError('finetune got no training pairs')
    seq_len = seq_len or self.config.cycle.seq_len
    tx, step = self._sft_step((lr, trainable), ewc is not None)
    state = train.init_state(copy_tree(params), tx, copy_tree(cms))   # both donated
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(-(-steps * batch_size // len(pairs)))])
    hist = []
    for s in range(steps):
      batch = self.sft_batch([pairs[i] for i in order[s * batch_size:(s + 1) * batch_size]], seq_len)
      state, m = step(state, jax.device_put(batch, self.batch_sh), ewc, jnp.float32(ewc_lambda))
      hist.append(float(m['loss']))
      if not np.isfinite(hist[-1]):
        self.rt.guard.check('fine-tune', s + 1, {'loss': hist[-1]})
    return state['params'], hist

  def fisher(self, params, cms, pairs: Sequence[Pair], *, seq_len: int | None = None) -> dict:
    """Diagonal empirical Fisher: the mean over `pairs` of the squared gradient of each example's loss."""
    seq_len = seq_len or self.config.cycle.seq_len
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
      out.append(np.asarray(self._score_fn(self.b.model, params, cms or {}, toks, w))[:len(part)])
    return np.concatenate(out)


def _row_logprob(model, params, cms, toks, w):
  """Sum over positions with w = 1 of log p(token_t | tokens_<t)."""
  logits, _ = model.apply(variables(params, cms), toks[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  lp = jnp.take_along_axis(logp, toks[:, 1:, None], -1)[..., 0]
  return jnp.sum(lp * w[:, 1:], -1)


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
    runtime.validate(config)
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
