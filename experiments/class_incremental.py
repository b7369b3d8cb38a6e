"""Class-incremental intent classification (CLINC150 / Banking77 style): accuracy on all classes seen so far.

Data: sleep_jax/data/intents.py (70 intents in 10 domains), grouped by `intents.stages(seed)` into stages of 10
new classes; the first `ci.n_stages` stages are learned one after the other. Per seed the stage order, the
utterances and every draw below differ.

Classification (every row): the chat prompt `ci.instruction` holds the utterance; the predicted class is the
argmax over the label names of all classes seen so far of sum log p(label name tokens | prompt), i.e. ranking
the candidates by likelihood (robust for a 135M model; no parsing of free text). `PrefixScorer` computes the
same numbers as `Lab.score` (tested) but runs the shared prompt prefix once and each utterance once, then only
the candidate tokens, which makes the evaluation ~10x cheaper on CPU.

Rows, after each stage s (accuracy on `ci.eval_per_class` held-out utterances of every seen class):
  before     zero-shot: the pre-trained model, label names only (the floor)
  icl        in-context learning: the class list with descriptions and k train examples per seen class before
             the message, k as large as fits in ci.icl_max_tokens (k is reported per stage)
  finetune   all weights fine-tuned (AdamW) on stage s's train utterances -> label name, chained over stages
  ewc        the same plus the EWC penalty lambda/2 sum_i F_i (theta_i - theta*_i)^2 (lambda: finetune.ewc_lambda
             unless --ewc_select / --ewc_lambda_from / --ewc_sweep), theta* = the weights after
             stage s-1, F = diagonal Fisher at theta* from ci.fisher_examples train pairs of stages < s
             (stage 1 has no penalty, so it equals finetune's stage 1 and is reused)
  sleep      Knowledge Seeding (Lab.sleep) of stage s into one new expert per receiver layer (so n_experts >= n_stages).
             The stage's "document" is its class descriptions plus ci.doc_per_class "utterance -> label" lines
             per class (ci.docs_per_stage such documents with disjoint lines). The KS prompts are other train
             utterances of the stage in the classification prompt itself (the document's `title` slot carries
             the utterance and the one template is the instruction): the teacher is the current model with the
             document before the prompt (in-context learning), the student the same model + the new expert
             without it, so KS distils the in-context classifier into the expert. This replaces the default
             'Tell me about {title}' / sentence-prefix templates, whose answers are not labels.
Also accuracy on the first stage's classes after each stage: its value at the end against right after stage 1
is the forgetting.

Tuning: `--ewc_select` first chooses EWC's lambda among ci.ewc_lambdas by the accuracy on all seen classes after
stage 2 (the first stage with a penalty) on the 'validation' split (first seed of the run, ci.select_eval_per_class
utterances per class), then runs the test seeds with it (ewc_selection.json holds the validation numbers); nothing
is tuned on 'test'. Every other knob was set a priori for a 2-core CPU budget.

  python -m experiments.class_incremental --workdir=runs/class_incremental/s0 --seeds=0 --ewc_select
  python -m experiments.class_incremental --workdir=runs/class_incremental/s1 --seeds=1 \
      --ewc_lambda_from=runs/class_incremental/s0/ewc_selection.json           # in parallel; then the same for s2
  python -m experiments.class_incremental --workdir=runs/class_incremental \
      --from_results=runs/class_incremental/s0/results.json,runs/class_incremental/s1/results.json,runs/class_incremental/s2/results.json
  python -m experiments.class_incremental --workdir=/tmp/ci_val --split=validation --seeds=0 --methods=ewc --ewc_sweep
  python -m experiments.class_incremental --config=configs/class_incremental.py:smoke --workdir=/tmp/ci --seeds=0,1
Writes results.json (one row per seed), table.md (mean ± sd over seeds) and accuracy_by_stage.png to --workdir.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np

METHODS = ('before', 'icl', 'finetune', 'ewc', 'sleep')


def define_flags():
  """The command-line flags, defined only when run as a program: importing this module (tests) defines none, so
  it can share a process with other experiments' modules (absl refuses a flag name defined twice)."""
  global _CONFIG, _WORKDIR, _SEEDS, _SPLIT, _METHODS, _EWC_SWEEP, _EWC_SELECT, _LAMBDA_FROM, _FROM
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/class_incremental.py', 'Experiment config.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (stage order, utterances, draws, training order).')
  _SPLIT = flags.DEFINE_enum('split', 'test', ['test', 'validation'],
                             "Evaluation split: 'test' for the final numbers, 'validation' for tuning.")
  _METHODS = flags.DEFINE_list('methods', list(METHODS), f'Rows to run, of {METHODS}.')
  _EWC_SWEEP = flags.DEFINE_bool('ewc_sweep', False, 'Run EWC once per ci.ewc_lambdas value (rows ewc@lambda): '
                                 'for choosing lambda on the validation split.')
  _EWC_SELECT = flags.DEFINE_bool('ewc_select', False, 'First choose EWC lambda among ci.ewc_lambdas by the final '
                                   "accuracy on the 'validation' split (first seed; ties -> the earlier value), then run "
                                   'the seeds with it; the validation numbers go to ewc_selection.json.')
  _LAMBDA_FROM = flags.DEFINE_string('ewc_lambda_from', '', "Another run's ewc_selection.json (its --ewc_select): "
                                     'use its lambda if the file exists when EWC starts, else choose as --ewc_select '
                                     'does (lets two seeds run in parallel without choosing twice).')
  _FROM = flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files (e.g. one per seed, '
                            'run in parallel) into one table and plot in --workdir.')


# ------------------------------------------------------------------------------------------------ data
def stage_data(config, seed: int, split: str) -> dict:
  """The stages' class names, train utterances and the evaluation sample, all seeded."""
  from sleep_jax.data import intents
  c = config.ci
  stages = intents.stages(seed, c.data_stages)
  if not 1 <= c.n_stages <= len(stages):
    raise ValueError(f'ci.n_stages={c.n_stages} must be in [1, {len(stages)}] (ci.data_stages={c.data_stages})')
  stages = stages[:c.n_stages]
  desc = {k['label_name']: k['description'] for k in intents.classes()}
  train = intents.generate('train', seed)
  ev = intents.generate(split, seed, allow_test=split == 'test')
  rng = np.random.default_rng([seed, 0x4349])
  by = lambda rows, name: [r['text'] for r in rows if r['label_name'] == name]
  train_by = {n: by(train, n) for s in stages for n in s}
  eval_rows = []
  for s, names in enumerate(stages):
    for n in names:
      pool = by(ev, n)
      if len(pool) < c.eval_per_class:
        raise ValueError(f'{split}: class {n} has {len(pool)} utterances < ci.eval_per_class={c.eval_per_class}')
      eval_rows += [(pool[i], n, s) for i in rng.choice(len(pool), c.eval_per_class, replace=False)]
  return {'stages': stages, 'desc': desc, 'train': train_by, 'eval': eval_rows}


def document(names, desc, lines) -> str:
  """The text a model reads in context: the classes with descriptions, then labelled examples."""
  return ('Intent labels:\n' + '\n'.join(f'{n}: {desc[n]}' for n in names) +
          '\n\nExamples:\n' + '\n'.join(f'{u} -> {n}' for u, n in lines))


def example_lines(train_by, names, k, rng, skip=0) -> list[tuple[str, str]]:
  """k train examples per class (examples skip..skip+k of a seeded order), interleaved across classes."""
  per = [[(train_by[n][i], n) for i in rng.permutation(len(train_by[n]))[skip:skip + k]] for n in names]
  return [x for i in range(k) for x in (p[i] for p in per if i < len(p))]


# ------------------------------------------------------------------------------------------------ scoring
class PrefixScorer:
  """sum log p(candidate | prompt) for many prompts that share a prefix and the same candidate list.

  The shared prefix (chat header + instruction, or + an in-context document) is run once into a KV cache;
  per prompt, its own tokens but the last are run once (batch 1); then each candidate row [last prompt token,
  candidate tokens] attends to that cache. Equal to Lab.score up to float rounding (tests/test_exp_...)."""

  def __init__(self, lab, chunk: int):
    import functools
    import jax
    self.lab, self.chunk = lab, chunk
    self._prefill = jax.jit(functools.partial(_prefill, lab.b.model, lab.b.cfg), static_argnames='T')
    self._cands = jax.jit(functools.partial(_cands, lab.b.model))

  def __call__(self, params, cms, prompts: list[list[int]], cands: list[list[int]]) -> np.ndarray:
    from sleep_jax.sampling import bucket
    lab, pad = self.lab, self.lab.tok.pad_id
    P = min(min(len(p) for p in prompts) - 1, _lcp(prompts))
    if P < 1:
      raise ValueError('PrefixScorer: the prompts share no prefix (each needs >= 2 tokens and a common start)')
    buckets = lab.config.sampling.prompt_buckets
    Pb = bucket(P, buckets, 'shared prompt prefix', 'prompt')
    U = bucket(max(len(p) - P - 1 for p in prompts), (8, 16, 24, 32, 48, 64, 128, 256), 'prompt tail')
    Lc = bucket(1 + max(len(c) for c in cands), (8, 10, 12, 16, 32, 64), 'candidate')
    C = min(self.chunk, bucket(len(cands), (4, 8, 12, 16, 24, 32, 64, 128, 256), 'candidates'))
    pre = np.full((1, Pb), pad, np.int32)
    pre[0, Pb - P:] = prompts[0][:P]
    pvalid = np.arange(Pb) >= Pb - P
    cache = self._prefill(params, cms or {}, pre, pvalid, T=Pb + U + Lc)
    out = np.zeros((len(prompts), len(cands)), np.float32)
    for i, p in enumerate(prompts):
      tail = p[P:]
      utt = np.full((1, U), pad, np.int32)
      utt[0, :len(tail) - 1] = tail[:-1]
      for j in range(0, len(cands), C):
        part = cands[j:j + C]
        rows = np.full((C, Lc), pad, np.int32)
        w = np.zeros((C, Lc), np.float32)
        for r, c in enumerate(part):
          rows[r, :1 + len(c)] = [tail[-1]] + list(c)
          w[r, 1:1 + len(c)] = 1.0
        lp = self._cands(params, cms or {}, cache, pvalid, np.int32(P), utt, np.int32(len(tail) - 1), rows, w)
        out[i, j:j + len(part)] = np.asarray(lp)[:len(part)]
    return out


def _lcp(seqs) -> int:
  n = min(len(s) for s in seqs)
  for k in range(n):
    t = seqs[0][k]
    if any(s[k] != t for s in seqs):
      return k
  return n


def _prefill(model, cfg, params, cms, pre, pvalid, *, T):
  import jax.numpy as jnp
  from sleep_jax.models.cms import variables
  from sleep_jax.models.llama import init_cache
  Pb = pre.shape[1]
  cache = init_cache(cfg, 1, T)
  kv = jnp.zeros((T,), bool).at[:Pb].set(pvalid)
  pos = jnp.maximum(jnp.cumsum(pvalid) - 1, 0)[None]
  mask = kv[None, None, :] & (jnp.arange(T)[None, None, :] <= jnp.arange(Pb)[None, :, None])
  _, cache = model.apply(variables(params, cms), pre, pos, mask, cache, 0, last_only=True)
  return cache


def _cands(model, params, cms, cache, pvalid, plen, utt, ulen, rows, w):
  import jax
  import jax.numpy as jnp
  from sleep_jax.models.cms import variables
  Pb, U = pvalid.shape[0], utt.shape[1]
  C, L = rows.shape
  T = Pb + U + L
  slots = jnp.arange(T)
  apply = lambda *a: model.apply(variables(params, cms), *a)
  kv = jnp.concatenate([pvalid, jnp.arange(U) < ulen, jnp.zeros((L,), bool)])
  mask_u = kv[None, None, :] & (slots[None, None, :] <= (Pb + jnp.arange(U))[None, :, None])
  _, cache = apply(utt, (plen + jnp.arange(U))[None], mask_u, cache, Pb)
  cache = jax.tree.map(lambda x: jnp.broadcast_to(x, (C,) + x.shape[1:]), cache)
  kv_c = kv | (slots >= Pb + U)
  mask_c = kv_c[None, None, :] & (slots[None, None, :] <= (Pb + U + jnp.arange(L))[None, :, None])
  pos_c = jnp.broadcast_to((plen + ulen + jnp.arange(L))[None], (C, L))
  logits, _ = apply(rows, pos_c, mask_c, cache, Pb + U)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
  lp = jnp.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0]
  return jnp.sum(lp * w[:, 1:], -1)


# ------------------------------------------------------------------------------------------------ protocol
class Run:
  """One seed: the data, the prompts and the evaluation of any (params, cms) on the classes seen so far."""

  def __init__(self, lab, scorer, config, seed: int, split: str):
    self.lab, self.scorer, self.c, self.seed = lab, scorer, config.ci, seed
    self.d = stage_data(config, seed, split)
    self.cand_ids = {n: lab.tok.encode(n) for s in self.d['stages'] for n in s}

  def user(self, utterance: str, context: str | None = None) -> str:
    u = self.c.instruction.format(utterance=utterance)
    return u if context is None else f'{context}\n\n{u}'

  def seen(self, s: int) -> list[str]:
    return [n for st in self.d['stages'][:s + 1] for n in st]

  def evaluate(self, params, cms, s: int, context: str | None = None) -> dict:
    """Accuracy (%) over the eval utterances of all classes of stages 0..s, and per stage."""
    names = self.seen(s)
    rows = [r for r in self.d['eval'] if r[2] <= s]
    prompts = [self.lab.chat(self.user(u, context)) for u, _, _ in rows]
    lp = self.scorer(params, cms, prompts, [self.cand_ids[n] for n in names])
    pred = [names[i] for i in lp.argmax(1)]
    ok = np.asarray([p == n for p, (_, n, _) in zip(pred, rows)], float)
    st = np.asarray([r[2] for r in rows])
    return {'acc': 100 * ok.mean(), 'acc_by_stage': [100 * ok[st == k].mean() for k in range(s + 1)],
            'n': len(rows)}

  def pairs(self, stages) -> list[tuple[str, str]]:
    """(prompt, label name) for every train utterance of `stages`; each must fit finetune.seq_len (else the
    label would be cut off and not trained)."""
    out = [(self.user(u), n) for k in stages for n in self.d['stages'][k] for u in self.d['train'][n]]
    longest = max(len(self.lab.chat(p)) + len(self.lab.tok.encode(n)) + 1 for p, n in out)
    from experiments.common import finetune_settings
    seq_len = finetune_settings(self.lab.config)['seq_len']
    if longest > seq_len + 1:
      raise ValueError(f'finetune.seq_len={seq_len} cuts off labels: the longest pair has {longest} tokens')
    return out

  def icl_context(self, s: int) -> tuple[str, int]:
    """The class list + k examples per seen class, k the largest <= icl_max_k whose prompt fits icl_max_tokens."""
    names, best = self.seen(s), None
    longest = max((r[0] for r in self.d['eval']), key=len)
    for k in range(1, self.c.icl_max_k + 1):
      ctx = document(names, self.d['desc'], example_lines(self.d['train'], names, k,
                                                          np.random.default_rng([self.seed, s, 0x49])))
      if len(self.lab.chat(self.user(longest, ctx))) > self.c.icl_max_tokens:
        break
      best = (ctx, k)
    if best is None:
      raise ValueError(f'ci.icl_max_tokens={self.c.icl_max_tokens} fits not even 1 example per class at stage {s + 1}')
    return best

  def sleep_docs(self, s: int) -> list[dict]:
    """docs_per_stage documents (disjoint example lines), each with its share of the sleep_prompts utterances
    (train utterances in no document) in `title`, which the one sleep template puts in the classification prompt."""
    c, names = self.c, self.d['stages'][s]
    rng = np.random.default_rng([self.seed, s, 0x534c])
    order = {n: rng.permutation(len(self.d['train'][n])) for n in names}
    pick = lambda n, a, b: [self.d['train'][n][i] for i in order[n][a:b]]
    docs_text = [document(names, self.d['desc'], [x for i in range(c.doc_per_class) for x in
                                                   ((pick(n, j * c.doc_per_class + i, j * c.doc_per_class + i + 1)[0], n)
                                                    for n in names)])
                 for j in range(c.docs_per_stage)]
    used = c.doc_per_class * c.docs_per_stage
    prompts = [(u, n) for i in range(c.sleep_prompts) for n in names for u in pick(n, used + i, used + i + 1)]
    prompts = [prompts[i] for i in rng.permutation(len(prompts))[:c.sleep_prompts]]
    return [{'id': f'stage{s + 1}-doc{i % c.docs_per_stage}-{i}', 'title': u, 'text': docs_text[i % c.docs_per_stage]}
            for i, (u, _) in enumerate(prompts)]


def run_seed(lab, scorer, config, seed: int, split: str, methods, lambdas) -> dict:
  import jax
  import jax.numpy as jnp
  c = config.ci
  run = Run(lab, scorer, config, seed, split)
  S = c.n_stages
  rec = {'seed': seed, 'split': split, 'stages': run.d['stages'], 'methods': {}, 'seconds': {}}
  base = (lab.params, lab.cms)

  def log(m, s, r, t0, extra=''):
    print(f'seed {seed} {m} stage {s + 1}/{S}: acc {r["acc"]:.1f} (stage-1 classes '
          f'{r["acc_by_stage"][0]:.1f}, n={r["n"]}){extra} [{time.perf_counter() - t0:.0f}s]', flush=True)

  def chain(name, step):
    """Train stage by stage with step(s, state) -> (state, info), evaluating after each stage."""
    t0, out, state = time.perf_counter(), [], None
    for s in range(S):
      state, info = step(s, state)
      r = {**run.evaluate(*state[:2], s), **info}
      out.append(r)
      log(name, s, r, t0, ''.join(f' {k}={v:.3g}' if isinstance(v, float) else f' {k}={v}'
                                  for k, v in info.items() if not isinstance(v, list)))
    rec['methods'][name], rec['seconds'][name] = out, time.perf_counter() - t0
    return out

  if 'before' in methods:
    chain('before', lambda s, st: (base, {}))
  if 'icl' in methods:
    t0, out = time.perf_counter(), []
    for s in range(S):
      ctx, k = run.icl_context(s)
      r = {**run.evaluate(*base, s, context=ctx), 'k': k}
      out.append(r)
      log('icl', s, r, t0, f' k={k}')
    rec['methods']['icl'], rec['seconds']['icl'] = out, time.perf_counter() - t0

  ft_stage1 = None
  if 'finetune' in methods or 'ewc' in methods:
    def ft(s, st):
      nonlocal ft_stage1
      if s == 0 and ft_stage1 is not None:
        return ft_stage1
      p = base[0] if st is None else st[0]
      p, losses = lab.finetune(p, base[1], run.pairs([s]), seed=seed * 100 + s)   # config.finetune
      res = ((p, base[1]), {'loss_first': round(losses[0], 4), 'loss_last': round(losses[-1], 4)})
      if s == 0:
        ft_stage1 = res
      return res
    if 'finetune' in methods:
      chain('finetune', ft)
    if 'ewc' in methods:
      lambdas = lambdas() if callable(lambdas) else lambdas   # resolved only now (--ewc_lambda_from)
      rec['ewc_lambdas'] = list(lambdas)
    for lam in (lambdas if 'ewc' in methods else ()):
      def ewc(s, st, lam=lam):
        if s == 0:
          return ft(0, None)
        prev = st[0]
        t = time.perf_counter()
        rng = np.random.default_rng([seed, s, 0x4557])
        old = run.pairs(range(s))
        fisher = lab.fisher(prev, base[1], [old[i] for i in rng.choice(len(old), c.fisher_examples, replace=False)])
        t_f = time.perf_counter() - t
        p, losses = lab.finetune(prev, base[1], run.pairs([s]), seed=seed * 100 + s,
                                 ewc={'params': prev, 'fisher': fisher}, ewc_lambda=lam)
        pen = float(sum(jnp.sum(f * (a - b) ** 2) for f, a, b in zip(
            jax.tree.leaves(fisher), jax.tree.leaves(p), jax.tree.leaves(prev))))
        return (p, base[1]), {'loss_first': round(losses[0], 4), 'loss_last': round(losses[-1], 4),
                              'fisher_sum': float(sum(jnp.sum(f) for f in jax.tree.leaves(fisher))),
                              'half_lambda_penalty': 0.5 * lam * pen, 'fisher_s': round(t_f)}
      chain('ewc' if len(lambdas) == 1 else f'ewc@{lam:g}', ewc)

  if 'sleep' in methods:
    template = c.instruction.format(utterance='{title}')
    if lab.b.cfg.n_experts < S:
      raise ValueError(f'sleep needs one free expert per stage: model.n_experts={lab.b.cfg.n_experts} < {S} stages')

    def slp(s, st):
      p, m = base if st is None else st
      p, m, hist = lab.sleep(p, m, run.sleep_docs(s), seed * 100 + s, templates=(template,), n_prefix=0,
                             desc=f'sleep stage {s + 1}')
      keys = [k for k in ('loss', 'div', 'reward') if hist and k in hist[0]]
      return (p, m), {f'ks_{k}': [round(float(h[k]), 4) for h in hist] for k in keys}
    chain('sleep', slp)
  return rec


# ------------------------------------------------------------------------------------------------ report
def summarize(rows: list[dict]) -> str:
  """Markdown: accuracy on all seen classes after each stage, mean ± sd over seeds, and forgetting."""
  from experiments.common import mean_sd
  S = min(len(r['stages']) for r in rows)
  names = [m for m in (*METHODS, *sorted({k for r in rows for k in r['methods']} - set(METHODS)))
           if all(m in r['methods'] for r in rows)]
  ncls = [sum(len(st) for st in rows[0]['stages'][:s + 1]) for s in range(S)]
  head = (['method'] + [f'after stage {s + 1} ({ncls[s]} classes)' for s in range(S)] +
          ['stage-1 classes after stage 1', f'stage-1 classes after stage {S}'])
  out = ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
  for m in names:
    cells = [mean_sd([r['methods'][m][s]['acc'] for r in rows]) for s in range(S)]
    cells += [mean_sd([r['methods'][m][0]['acc_by_stage'][0] for r in rows]),
              mean_sd([r['methods'][m][S - 1]['acc_by_stage'][0] for r in rows])]
    if m == 'icl':
      ks = [[r['methods'][m][s]['k'] for r in rows] for s in range(S)]
      m = f'icl (k per class: {"/".join(str(min(k)) if min(k) == max(k) else f"{min(k)}-{max(k)}" for k in ks)})'
    out.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(out)


def plot(rows: list[dict], path: str) -> None:
  from experiments.common import pyplot
  plt = pyplot()
  S = min(len(r['stages']) for r in rows)
  names = [m for m in rows[0]['methods'] if all(m in r['methods'] for r in rows)]
  fig, ax = plt.subplots(figsize=(6.5, 4))
  x = np.arange(1, S + 1)
  for m in names:
    a = np.asarray([[r['methods'][m][s]['acc'] for s in range(S)] for r in rows])
    sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(S)
    ax.errorbar(x, a.mean(0), yerr=sd, marker='o', capsize=3, label=m, ls='--' if m == 'before' else '-')
  ncls = [sum(len(st) for st in rows[0]['stages'][:s + 1]) for s in range(S)]
  ax.set_xticks(x, [f'{s}\n({n} classes)' for s, n in zip(x, ncls)])
  ax.set_xlabel('after stage')
  ax.set_ylabel('accuracy on all seen classes (%)')
  ax.set_ylim(0, 100)
  ax.set_title(f'Class-incremental intents, {len(rows)} seed(s), split {rows[0]["split"]}')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(rows, workdir, config, footer) -> None:
  from experiments.common import save_results, write_table
  os.makedirs(workdir, exist_ok=True)
  save_results(workdir, {'rows': rows}, config)
  write_table(workdir, summarize(rows), footer)
  plot(rows, os.path.join(workdir, 'accuracy_by_stage.png'))


def merge_main(paths, workdir, config) -> None:
  from experiments.common import read_results
  rows, seen = [], set()
  for p, r in zip(paths, read_results(paths, 'class_incremental')):
    for row in r['rows']:
      if row['seed'] in seen:
        raise ValueError(f'--from_results: seed {row["seed"]} appears twice ({p})')
      seen.add(row['seed'])
      rows.append(row)
  splits = {r['split'] for r in rows}
  if len(splits) != 1:
    raise ValueError(f'--from_results: the files mix splits {sorted(splits)}')
  secs = ', '.join(f"seed {r['seed']}: {sum(r['seconds'].values()):.0f}s" for r in rows)
  lams = sorted({l for r in rows for l in r.get('ewc_lambdas', [])})
  report(sorted(rows, key=lambda r: r['seed']), workdir, config,
         f'Seeds {",".join(str(r["seed"]) for r in rows)}; split {splits.pop()}; accuracy %, mean ± sd over '
         f'seeds; EWC lambda {", ".join(f"{l:g}" for l in lams)}; merged from {len(paths)} files; method time {secs}.')


def select_lambda(lab, scorer, config, seed: int, workdir: str) -> float:
  """EWC lambda with the best accuracy on all seen classes after stage 2 (or 1), on 'validation'."""
  lams = tuple(config.ci.ewc_lambdas)
  sel = config.copy_and_resolve_references()   # stages 1-2 (stage 2 is the first with a penalty), more utterances
  sel.unlock()
  sel.ci.n_stages, sel.ci.eval_per_class = min(2, config.ci.n_stages), config.ci.select_eval_per_class
  sel.lock()
  print(f'choosing EWC lambda among {lams} on validation, seed {seed}, stages 1-{sel.ci.n_stages}', flush=True)
  rec = run_seed(lab, scorer, sel, seed, 'validation', ('ewc',), lams)
  name = lambda l: 'ewc' if len(lams) == 1 else f'ewc@{l:g}'
  accs = {l: rec['methods'][name(l)][-1]['acc'] for l in lams}
  best = max(lams, key=lambda l: (accs[l], -lams.index(l)))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'ewc_selection.json'), 'w') as f:
    json.dump({'chosen': best, 'final_val_acc': {f'{l:g}': a for l, a in accs.items()}, 'row': rec}, f, indent=1)
  print(f'EWC lambda {best:g} (validation accuracy after the last stage: '
        f'{", ".join(f"{l:g}: {a:.1f}" for l, a in accs.items())})', flush=True)
  return best


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from experiments.common import checked
  config = checked(_CONFIG.value)
  if _FROM.value:
    return merge_main(_FROM.value, _WORKDIR.value, config)
  bad = [m for m in _METHODS.value if m not in METHODS]
  if bad:
    raise app.UsageError(f'--methods: unknown {bad}; choose from {METHODS}')
  seeds = [int(s) for s in _SEEDS.value]
  from experiments.common import Lab
  t_all = time.perf_counter()
  lab = Lab(config)
  print(f'built {config.model.source} in {time.perf_counter() - t_all:.0f}s', flush=True)
  scorer = PrefixScorer(lab, config.ci.score_chunk)
  lam = config.finetune.ewc_lambda
  if _EWC_SELECT.value and 'ewc' in _METHODS.value:
    lam = select_lambda(lab, scorer, config, seeds[0], _WORKDIR.value)
  lambdas = tuple(config.ci.ewc_lambdas) if _EWC_SWEEP.value else (lam,)
  if _LAMBDA_FROM.value and not _EWC_SELECT.value:
    def lambdas():   # when EWC is reached: another run's choice if it is there by then, else choose here
      path = _LAMBDA_FROM.value
      if os.path.exists(path):
        with open(path) as f:
          chosen = json.load(f)['chosen']
        print(f'EWC lambda {chosen:g} from {path}', flush=True)
      else:
        print(f'{path} not there yet: choosing EWC lambda here', flush=True)
        chosen = select_lambda(lab, scorer, config, seeds[0], _WORKDIR.value)
      return (chosen,)
  rows = []
  for seed in seeds:
    rows.append(run_seed(lab, scorer, config, seed, _SPLIT.value, _METHODS.value, lambdas))
    from experiments.common import save_results
    save_results(_WORKDIR.value, {'rows': rows}, config)   # partial results after each seed
  report(rows, _WORKDIR.value, config,
         f'Seeds {",".join(map(str, seeds))}; split {_SPLIT.value}; accuracy %, mean ± sd over seeds; EWC lambda '
         f'{", ".join(sorted({f"{l:g}" for r in rows for l in r.get("ewc_lambdas", [])}))}; {config.model.source}, '
         f'{time.perf_counter() - t_all:.0f}s wall.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
