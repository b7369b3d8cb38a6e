"""Continual learning of new languages (PAPER sec. 5, MTOB-style sequential translation): learn language A from its
grammar book, then B, then C; chrF on every language after every stage.

Data: invented languages with exact grammars (sleep_jax/data/languages.py; config.languages.names: the full
setting learns tamu (VSO) then grevok (SOV), the paper's two-language setting; three languages did not fit the CPU
budget; --config.languages.names=tamu,grevok,ishqa runs A, B, C, as the smoke config does). A seed draws each
language's lexicon (Language(spec, seed)), the book vocabulary, the book's example sentences, the train sentences
and the held-out sentences, so seeds differ in the languages themselves and in every sampling/batch order. Each language's "book" is `Language.grammar_book()` restricted to a seeded
vocabulary (`languages.vocab`: 34 lemmas, all grammar rules kept, ~410-460 SmolLM2 tokens; the whole 169-lemma book
is ~1.3k tokens, out of the CPU budget as an ICL prompt and KS teacher context), and every sentence (book examples,
train, held-out) uses only that vocabulary. `book_max_tokens` > 0 also cuts it at an entry boundary (the smoke
config, to fit the tiny model's 512 positions).

Metric: corpus chrF (sleep_jax.data.metrics.chrf) of greedy translations, direction `languages.direction`
(default xx-en: "Translate into English: <sentence>", scored against the English sentence), on `n_test`
held-out sentences per language from `--split` ('test' for the final numbers; anything tuned is tuned on
'validation'), for every language after every stage. Rows:

  base       the model before any language (stage 0; the starting point of every sequential row)
  icl        in-context learning: at stage k the prompt holds the k-th language's book (and only it: one book
             fills the context) before the instruction, for every language scored
  finetune   sequential fine-tuning: AdamW on all weights, stage k trains the stage k-1 model on the k-th book as
             plain text (runs of whole lines of <= finetune.seq_len tokens) + its `n_train` train sentences with their
             gold translations (translation chat turns)
  sleep      sequential sleeps: stage k consolidates the k-th book into one NEW expert per receiver layer
             (Lab.sleep, Knowledge Seeding): the teacher is the current model reading the book before a
             translation prompt of one of the `n_train` train sentences, the student the same prompt without the
             book. No Dreaming (dream.language_task is not run here).
  alone_*    single-language reference: the base model + that language only (by sleep / by fine-tuning), scored
             on that language. For the first language this is the stage-1 model of the sequential row (the same
             computation, reused and marked so in results.json).

Outputs in --workdir: results.json (per-seed rows with every translation), table.md (chrF per language after each
stage, mean ± sd over seeds), chrf_a_vs_b.png (chrF on A vs chrF on B after learning B, and A vs the last language
after the last stage, one marker per method with sd error bars; the 'alone' references as stars) and
stages.png (chrF per language after each stage, one panel per language, one line per method).

Full run (SmolLM2-135M-Instruct; docs/results.md): all seeds in one process (compilation is paid once), measured
38.5 min on the 2-core machine next to one other SmolLM2 run; or one process per seed, merged afterwards.

  python -m experiments.continual_languages --workdir=runs/continual_languages/all --seeds=0,1,2
  python -m experiments.continual_languages --workdir=runs/continual_languages --from_results=\\
      runs/continual_languages/s0/results.json,runs/continual_languages/s1/results.json
Smoke: python -m experiments.continual_languages --config=configs/continual_languages.py:smoke --workdir=/tmp/cl
Overrides: --config.languages.direction=en-xx, --config.sleep.ks.steps=16, --split=validation, ...
"""
import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

def define_flags():
  """The command-line flags, defined only when run as a program: importing this module (tests) defines none, so
  it can share a process with other experiments' modules (absl refuses a flag name defined twice)."""
  global _CONFIG, _WORKDIR, _SEEDS, _SPLIT, _FROM
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/continual_languages.py', 'Experiment config.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (lexicons, sentences, sampling, batch orders).')
  _SPLIT = flags.DEFINE_string('split', 'test', "Held-out sentences: 'test' for the final numbers, 'validation' "
                               'for tuning.')
  _FROM = flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files (one per seed, run '
                            'in parallel) into one table and plots in --workdir.')

SEQUENTIAL = ('icl', 'finetune', 'sleep')
LABELS = {'base': 'base model', 'icl': 'in-context (current book only)', 'finetune': 'sequential fine-tuning',
          'sleep': 'sequential sleep (KS, new experts)', 'alone_sleep': 'sleep, each language alone',
          'alone_finetune': 'fine-tuning, each language alone'}


# ---------------------------------------------------------------------------------------------- protocol pieces
def cut_book(book: str, encode, max_tokens: int) -> str:
  """The longest prefix of `book` ending at an entry boundary (a line or a ', '-separated dictionary entry) with
  at most `max_tokens` tokens; the whole book when max_tokens is 0. `encode`: text -> token ids."""
  if max_tokens <= 0 or len(encode(book)) <= max_tokens:
    return book
  ends = [i for i, ch in enumerate(book) if ch == '\n' or book.startswith(', ', i)]
  lo, hi = 0, len(ends) - 1          # binary search: the token count grows with the prefix
  best = -1
  while lo <= hi:
    mid = (lo + hi) // 2
    if len(encode(book[:ends[mid]])) <= max_tokens:
      best, lo = mid, mid + 1
    else:
      hi = mid - 1
  if best < 0:
    raise ValueError(f'languages.book_max_tokens={max_tokens} is shorter than the first line of the book')
  return book[:ends[best]].rstrip(',') + '\n'


def book_chunks(book: str, encode, max_tokens: int) -> list[str]:
  """The book as consecutive runs of whole lines of at most `max_tokens` tokens each (a longer line alone is
  cut by the fine-tuning row length): plain-text fine-tuning rows that see all of the book."""
  chunks, cur = [], ''
  for line in book.rstrip('\n').split('\n'):
    cand = f'{cur}\n{line}' if cur else line
    if cur and len(encode(cand)) > max_tokens:
      chunks.append(cur)
      cand = line
    cur = cand
  return chunks + [cur]


def instruction(lang: str, source: str, direction: str) -> str:
  """The translation instruction (the user turn without any book)."""
  if direction == 'xx-en':
    return f'Translate into English: {source}'
  if direction == 'en-xx':
    return f'Translate into {lang.capitalize()}: {source}'
  raise ValueError(f"languages.direction must be 'xx-en' or 'en-xx', got {direction!r}")


def with_book(book: str | None, user: str) -> str:
  """In-context learning: the book, a blank line, then the instruction (as Knowledge Seeding's teacher reads it)."""
  return user if book is None else f'{book}\n\n{user}'


def vocabulary(config, seed: int) -> frozenset:
  """The English lemmas the books cover this seed: `languages.vocab` lemmas drawn per category (all prepositions)."""
  import random
  from sleep_jax.data import languages as L
  v = config.languages.vocab
  rng = random.Random(f'continual_languages:vocab:{seed}')
  pools = {'animate': L.ANIMATE, 'things': L.THINGS, 'places': L.PLACES, 'transitive': L.TRANSITIVE,
           'intransitive': L.INTRANSITIVE, 'adjectives': L.ADJECTIVES}
  out = set(L.PREPOSITIONS)
  for cat, pool in pools.items():
    words = [w[0] if isinstance(w, tuple) else w for w in pool]
    if not 0 < v[cat] <= len(words):
      raise ValueError(f'languages.vocab.{cat}={v[cat]} must be in [1, {len(words)}]')
    out |= set(rng.sample(words, v[cat]))
  return frozenset(out)


def covered(split: str, seed: int, vocab: frozenset, n: int, pool: int) -> list:
  """The first n sentence trees of `split` (the languages module's seeded stream) that use only `vocab` lemmas."""
  from sleep_jax.data import languages as L
  trees = [t for t in L.sentences(split, seed, pool, allow_test=split == 'test') if set(L.lemmas(t)) <= vocab]
  if len(trees) < n:
    raise ValueError(f'only {len(trees)} of {pool} {split} sentences use the book vocabulary, {n} needed: '
                     'raise languages.sentence_pool or the languages.vocab sizes')
  return trees[:n]


def small_book(lang, vocab: frozenset, examples: list) -> str:
  """`Language.grammar_book()` restricted to `vocab`: all the rules, `examples` (train trees) as its examples,
  and the dictionary entries of the vocabulary only."""
  from sleep_jax.data import languages as L
  full = lang.grammar_book(n_examples=0)
  i = full.index('## Dictionary')
  out = [full[:i].rstrip('\n')]
  if examples:
    out.append('Examples:')
    out += [f'{L.english(t)} = {lang.render(t)}' for t in examples]
  out.append('## Dictionary')
  for line in full[i:].split('\n')[1:]:
    if line:
      head, entries = line.split(': ', 1)
      keep = [e for e in entries.split(', ') if e.split('=')[0] in vocab]
      out.append(f"{head}: {', '.join(keep)}")
  return '\n'.join(out) + '\n'


def make_data(config, seed: int, split: str, encode) -> list[dict]:
  """Per language (in stage order): its book, train (instruction, gold) pairs and held-out (instruction, ref).
  The same English sentences (and the same book vocabulary) for every language of a seed."""
  from sleep_jax.data import languages as L
  c = config.languages
  if len(set(c.names)) != len(c.names) or not c.names:
    raise ValueError(f'languages.names must be distinct and non-empty, got {c.names}')
  if config.model.n_experts < len(c.names):
    raise ValueError(f'model.n_experts={config.model.n_experts} < {len(c.names)} languages: each sequential sleep '
                     'needs a free expert slot per receiver layer')
  vocab = vocabulary(config, seed)
  train = covered('train', seed, vocab, c.book_examples + c.n_train, c.sentence_pool)
  test = covered(split, seed, vocab, c.n_test, c.sentence_pool)
  out = []
  for name in c.names:
    lang = L.language(name, seed)
    book = cut_book(small_book(lang, vocab, train[:c.book_examples]), encode, c.book_max_tokens)
    pair = lambda trees: [(instruction(name, s, c.direction), t) for s, t in L.directed(
        [{'en': L.english(t), 'xx': lang.render(t)} for t in trees], c.direction)]
    out.append({'name': name, 'book': book, 'train': pair(train[c.book_examples:]), 'test': pair(test),
                'book_tokens': len(encode(book))})
  return out


def evaluate(lab, params, cms, data, config, book: str | None = None) -> dict:
  """chrF and the greedy translations of every language's held-out sentences (`book` in the prompt for ICL)."""
  from sleep_jax.data.metrics import chrf
  c = config.languages
  out = {}
  for d in data:
    users = [with_book(book, u) for u, _ in d['test']]
    hyp = lab.generate(params, cms, users, max_new_tokens=c.max_new_tokens, batch=c.eval_batch)
    refs = [r for _, r in d['test']]
    out[d['name']] = {'chrf': chrf(refs, hyp)['chrf'], 'outputs': hyp}
  return out


def learn(lab, method: str, params, cms, d: dict, seed: int, config) -> tuple[dict, dict, dict]:
  """One stage: the model (params, cms) learns language `d` by `method`; returns (params, cms, diagnostics)."""
  if method == 'sleep':
    doc = {'id': d['name'], 'title': d['name'].capitalize(), 'text': d['book']}
    params, cms, hist = lab.sleep(params, cms, [doc], seed, templates=[u for u, _ in d['train']], n_prefix=0,
                                  desc=f"sleep {d['name']}")
    return params, cms, {'ks_loss': [float(h.get('loss', float('nan'))) for h in hist]}
  if method == 'finetune':
    from experiments.common import finetune_settings
    seq_len = finetune_settings(config)['seq_len']
    pairs = [(None, t) for t in book_chunks(d['book'], lab.tok.encode, seq_len - 1)] + list(d['train'])
    params, losses = lab.finetune(params, cms, pairs, seed=seed)   # config.finetune
    return params, cms, {'ft_loss': losses}
  raise ValueError(f'unknown learning method {method!r}')


def run_seed(lab, config, seed: int, split: str) -> list[dict]:
  """Every row of one seed: dicts {seed, method, stage, learned, lang, chrf, outputs, ...}."""
  c = config.languages
  data = make_data(config, seed, split, lab.tok.encode)
  names = [d['name'] for d in data]
  rows = []

  def record(method, stage, learned, scores, **extra):
    for lang, s in scores.items():
      rows.append({'seed': seed, 'method': method, 'stage': stage, 'learned': learned, 'lang': lang,
                   'chrf': s['chrf'], 'outputs': s['outputs'], **extra})
    print(f'seed {seed} {method:>14} stage {stage} ({learned or "-"}): '
          + ' '.join(f"{l} {s['chrf']:.1f}" for l, s in scores.items()), flush=True)

  t0 = time.perf_counter()
  print(f'seed {seed}: books of ' + ', '.join(f"{d['name']} {d['book_tokens']} tokens" for d in data), flush=True)
  record('base', 0, '', evaluate(lab, lab.params, lab.cms, data, config), seconds=time.perf_counter() - t0)
  for k, d in enumerate(data, 1):            # in-context: only the current stage's book fits the prompt
    t = time.perf_counter()
    record('icl', k, d['name'], evaluate(lab, lab.params, lab.cms, data, config, book=d['book']),
           seconds=time.perf_counter() - t)
  for method in ('finetune', 'sleep'):
    params, cms = lab.params, lab.cms
    for k, d in enumerate(data, 1):
      t = time.perf_counter()
      params, cms, diag = learn(lab, method, params, cms, d, seed * 100 + k, config)
      scores = evaluate(lab, params, cms, data, config)
      record(method, k, d['name'], scores, seconds=time.perf_counter() - t, **diag)
      if k == 1 and method in c.alone_methods:   # base + the first language only: the same computation
        record(f'alone_{method}', 1, d['name'], {d['name']: scores[d['name']]}, reused=f'{method} stage 1')
    del params, cms
  for method in c.alone_methods:
    for k, d in enumerate(data[1:], 2):
      t = time.perf_counter()
      params, cms, diag = learn(lab, method, lab.params, lab.cms, d, seed * 100 + k, config)
      record(f'alone_{method}', k, d['name'], evaluate(lab, params, cms, [d], config),
             seconds=time.perf_counter() - t, **diag)
      del params, cms
  print(f'seed {seed}: {time.perf_counter() - t0:.0f}s', flush=True)
  for r in rows:
    r['names'] = names
  return rows


# ---------------------------------------------------------------------------------------------- reporting
def cell(rows, method: str, stage: int, lang: str) -> list[float]:
  """chrF of (method, stage, lang), one value per seed (sorted by seed); the base row stands for stage 0."""
  m = 'base' if stage == 0 and not method.startswith('alone') else method
  got = {r['seed']: r['chrf'] for r in rows if r['method'] == m and r['stage'] == stage and r['lang'] == lang}
  return [got[s] for s in sorted(got)]


def summarize(rows, names: list[str], methods: list[str]) -> str:
  """Markdown: one row per (method, stage), chrF per language (mean ± sd over seeds) and the mean over languages;
  the 'alone' rows hold each language's single-language reference."""
  import numpy as np
  from experiments.common import mean_sd
  letters = 'ABCDEFGHIJ'
  head = ' | '.join(f'{n} ({letters[i]})' for i, n in enumerate(names))
  lines = [f'| method | after learning | {head} | mean over languages |', '|---|---|' + '---:|' * (len(names) + 1)]
  seeds = sorted({r['seed'] for r in rows})

  def per_seed_mean(method, stage):
    vals = [[r['chrf'] for r in rows if r['seed'] == s and r['method'] == method and r['stage'] == stage]
            for s in seeds]
    return [np.mean(v) for v in vals if len(v) == len(names)]

  lines.append(f"| {LABELS['base']} | - | " + ' | '.join(mean_sd(cell(rows, 'base', 0, n)) for n in names)
               + f" | {mean_sd(per_seed_mean('base', 0))} |")
  for m in methods:
    if m.startswith('alone'):
      vals = [cell(rows, m, k, n) for k, n in enumerate(names, 1)]
      per = [np.mean(v) for v in zip(*vals)] if all(len(v) == len(seeds) for v in vals) else []
      lines.append(f'| {LABELS[m]} | its own language only | ' + ' | '.join(mean_sd(v) if v else '-' for v in vals)
                   + f" | {mean_sd(per) if per else '-'} |")
      continue
    for k, n in enumerate(names, 1):
      lines.append(f'| {LABELS[m]} | {n} ({letters[k - 1]}) | '
                   + ' | '.join(mean_sd(cell(rows, m, k, x)) for x in names)
                   + f' | {mean_sd(per_seed_mean(m, k))} |')
  return '\n'.join(lines)


def plot_a_vs_b(rows, names, methods, path):
  """chrF on A vs chrF on B after learning B (the paper's plot), and A vs the last language after the last stage."""
  import numpy as np
  from experiments.common import pyplot
  plt = pyplot()
  panels = [(2, names[0], names[1])] + ([(len(names), names[0], names[-1])] if len(names) > 2 else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
  colors = {'base': 'gray', 'icl': 'tab:orange', 'finetune': 'tab:blue', 'sleep': 'tab:green',
            'alone_sleep': 'tab:green', 'alone_finetune': 'tab:blue'}
  for ax, (stage, a, b) in zip(axes[0], panels):
    pts = [('base', cell(rows, 'base', 0, a), cell(rows, 'base', 0, b), 'o')]
    pts += [(m, cell(rows, m, stage, a), cell(rows, m, stage, b), 'o') for m in methods if m in SEQUENTIAL]
    pts += [(m, cell(rows, m, 1, a), cell(rows, m, names.index(b) + 1, b), '*') for m in methods
            if m.startswith('alone')]
    for m, xa, xb, marker in pts:
      if not xa or not xb:
        continue
      sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0
      ax.errorbar(np.mean(xa), np.mean(xb), xerr=sd(xa), yerr=sd(xb), fmt=marker, ms=12 if marker == '*' else 8,
                  color=colors.get(m, 'k'), mfc='none' if m.startswith('alone') else colors.get(m, 'k'),
                  capsize=3, label=LABELS[m])
    ax.set_xlabel(f'chrF on {a} (A)')
    ax.set_ylabel(f'chrF on {b} ({"ABCDEFGHIJ"[names.index(b)]})')
    ax.set_title(f'after learning {b} (stage {stage})', fontsize=10)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7, loc='best')
  seeds = sorted({r['seed'] for r in rows})
  fig.suptitle(f'Continual languages, mean ± sd over {len(seeds)} seeds', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_stages(rows, names, methods, path):
  """chrF of each language after each stage: one panel per language, one line per sequential method, the
  single-language references as horizontal lines."""
  import numpy as np
  from experiments.common import pyplot
  plt = pyplot()
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False, sharey=True)
  colors = {'icl': 'tab:orange', 'finetune': 'tab:blue', 'sleep': 'tab:green'}
  xs = list(range(len(names) + 1))
  for i, (ax, lang) in enumerate(zip(axes[0], names)):
    for m in methods:
      if m in SEQUENTIAL:
        v = [cell(rows, m, k, lang) for k in xs]
        ax.errorbar(xs, [np.mean(x) for x in v], yerr=[np.std(x, ddof=1) if len(x) > 1 else 0 for x in v],
                    marker='o', capsize=3, color=colors[m], label=LABELS[m])
      elif m.startswith('alone'):
        v = cell(rows, m, i + 1, lang)
        if v:
          ax.axhline(np.mean(v), ls='--' if m == 'alone_sleep' else ':', color=colors[m[len('alone_'):]],
                     label=LABELS[m])
    ax.set_xticks(xs, ['base'] + [f'+{n}' for n in names], fontsize=8)
    ax.set_title(f'chrF on {lang} ({"ABCDEFGHIJ"[i]})', fontsize=10)
    ax.set_xlabel('after learning')
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('chrF')
  axes[0][-1].legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def methods_of(rows) -> list[str]:
  present = {r['method'] for r in rows}
  return [m for m in ('icl', 'finetune', 'sleep', 'alone_sleep', 'alone_finetune') if m in present]


def report(rows, workdir: str, footer: str) -> str:
  from experiments.common import write_table
  names = rows[0]['names']
  methods = methods_of(rows)
  table = summarize(rows, names, methods)
  write_table(workdir, table, footer)
  plot_a_vs_b(rows, names, methods, os.path.join(workdir, 'chrf_a_vs_b.png'))
  plot_stages(rows, names, methods, os.path.join(workdir, 'stages.png'))
  return table


def footer_of(config, split, seeds, seconds=None, merged=None) -> str:
  c = config if isinstance(config, dict) else json.loads(config.to_json())
  lc = c['languages']
  # config.finetune; results.json files written before that block existed hold languages.ft_steps / ft_lr
  ft = c.get('finetune') or {'steps': lc.get('ft_steps'), 'lr': lc.get('ft_lr')}
  s = (f"chrF (sacrebleu, corpus) of greedy {lc['direction']} translations of {lc['n_test']} '{split}' sentences per "
       f"language; mean ± sd over seeds {','.join(map(str, seeds))}. Sleep: {c['sleep']['ks']['steps']} Knowledge "
       f"Seeding updates per language, no Dreaming; fine-tuning: {ft['steps']} AdamW steps at lr {ft['lr']}. "
       f"Books: all rules + a {6 + sum(lc['vocab'].values())}-lemma dictionary (every sentence uses only its words)"
       f"{'' if not lc['book_max_tokens'] else ', cut to ' + str(lc['book_max_tokens']) + ' tokens'}.")
  if len(seeds) == 1:
    s += ' ONE seed: the ± 0.0 is no spread estimate.'
  if seconds is not None:
    s += f' Wall time {seconds:.0f}s.'
  if merged:
    s += f" Merged from {', '.join(merged)}."
  return s


def merge_main(paths, workdir):
  """--from_results: one report over the rows of several results.json files (e.g. seeds run in parallel)."""
  from experiments.common import read_results, write_json
  rows, first = [], None
  for p, r in zip(paths, read_results(paths, 'continual_languages', ('rows', 'split', 'config'))):
    key = (r['config']['languages'], r['config']['sleep'], r['split'], r['config']['model'])
    if first is None:
      first, cfg = key, r['config']
    elif key != first:
      raise ValueError(f'{p}: a different languages/sleep/model config or split than {paths[0]}: not mergeable')
    dup = {x['seed'] for x in rows} & {x['seed'] for x in r['rows']}
    if dup:
      raise ValueError(f'{p}: seeds {sorted(dup)} already merged from another file')
    rows += r['rows']
  seeds = sorted({x['seed'] for x in rows})
  from sleep_jax import results
  write_json(os.path.join(workdir, 'results.json'),
             {'rows': rows, 'split': first[2], 'seeds': seeds, 'config': cfg, 'merged_from': list(paths),
              **results.versions()})
  report(rows, workdir, footer_of(cfg, first[2], seeds, merged=paths))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _FROM.value:
    return merge_main(_FROM.value, _WORKDIR.value)
  from experiments.common import Lab, save_results
  if _SPLIT.value not in ('validation', 'test'):
    raise ValueError(f"--split must be 'validation' or 'test', got {_SPLIT.value!r}")
  seeds = [int(s) for s in _SEEDS.value]
  from experiments.common import checked
  config = checked(_CONFIG.value)
  t0 = time.perf_counter()
  lab = Lab(config)
  print(f'built in {time.perf_counter() - t0:.0f}s', flush=True)
  rows = []
  for seed in seeds:
    rows += run_seed(lab, config, seed, _SPLIT.value)
    save_results(_WORKDIR.value, {'rows': rows, 'split': _SPLIT.value, 'seeds': seeds,
                                  'seconds': time.perf_counter() - t0}, config)
  report(rows, _WORKDIR.value, footer_of(config, _SPLIT.value, seeds, time.perf_counter() - t0))


if __name__ == '__main__':
  define_flags()
  app.run(main)
