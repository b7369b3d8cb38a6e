"""Long-horizon memory: multi-key needle-in-a-haystack streams longer than the context window (PAPER sec. 5,
"Long context ... 1-4 memory levels"; BABILong / RULER MK-NIAH style).

Protocol. For each seed and each stream length `multiplier` (m), one held-out stream of ~m x `window` tokens
(Paul Graham essays from the split's own essays; `sleep_jax/data/long_horizon.py`) holds one key -> 7-digit value
needle per depth in `lhm.depths` (kind 'mk_niah'; kind 'niah' makes one stream per depth instead). The stream is
cut into exactly m windows at the sentence ends nearest to k/m of its tokens (so no needle is split). The model
reads the windows in order; window t is "dropped" when window t+1 arrives; at the end only the LAST window is in
context and every key is asked ("What is the special magic number for K mentioned in the text?"), greedy.
Metric: answer recall (the needle's value appears in the answer), per needle, reported as accuracy per method x
stream length and per method x needle depth (mean ± sd over seeds; each seed's score pools its needles).

Rows (every row starts from the same pre-trained model, per stream):
  full_context    reference: the whole stream in context (is the task solvable at all when the needle is seen?)
  icl             sliding-window in-context learning: no weight change, only the last window in context
  finetune        continual fine-tuning: each window, when dropped, gets `finetune.steps` AdamW updates of all weights
                  with the next-token loss on its text (Lab.finetune, pairs (None, window))
  sleep_L{1,2,3}  sleep with L CMS levels. The model's layers are split into L contiguous groups
                  (`wake.default_levels`: first layers = fastest level 0). Level l sleeps every
                  level_factor^l dropped windows (periods 1, 2, 4 windows: each period divides the next, as the
                  paper's chunk sizes C^(l) must), and that sleep consolidates the windows dropped since its last
                  sleep: Knowledge Seeding (Lab.sleep) with each of those windows as a document, the teacher = the
                  current model reading one window in context (never more than the context window), the student
                  = the same model plus ONE new expert in every layer of level l's group. When several levels fire
                  at the same drop, the fastest sleeps first. Slower levels thus consolidate longer spans with the
                  same update budget (the paper's multi-frequency chain, in its cheapest form: no sender reset).
                  Expert pools: level 0 sleeps once per dropped window, so n_experts = max(multipliers) - 1.
                  L = 1: all layers consolidate every window.
Also the retention probe (NLL on validation essays; lower = less forgetting) after each row.

Outputs in --workdir: results.json (per-seed, per-needle rows), table.md (accuracy per method x stream length,
per method x depth, needles in dropped windows only; mean ± sd over seeds; probe NLL; seconds),
accuracy_vs_length.png, accuracy_vs_depth.png. The final numbers use the held-out 'test' split; nothing was tuned
on it (the knobs in configs/long_horizon_memory.py were set a priori for cost; use --config.lhm.split=validation
to tune).

  # the full run (docs/results.md): every row and seed in one process, 17 min on the 2-core machine beside another run
  python -m experiments.long_horizon_memory --workdir=runs/long_horizon_memory/all --seeds=0,1,2
  # or the rows split over processes (--methods), then merged:
  python -m experiments.long_horizon_memory --workdir=runs/long_horizon_memory \
      --from_results=runs/long_horizon_memory/a/results.json,runs/long_horizon_memory/b/results.json
  # or per seed: --seeds=0 --workdir=.../s0, --seeds=1 ..., merged the same way
  # smoke (tiny random model, seconds):
  python -m experiments.long_horizon_memory --config=configs/long_horizon_memory.py:smoke --workdir=/tmp/lhm
--multipliers=3 runs one stream length only; --methods picks rows (e.g. sleep_L1,sleep_L3 in one process and the
rest in another; --from_results merges them).
"""
from __future__ import annotations

import os
import re
import time

from absl import app, flags, logging
from ml_collections import config_flags



def define_flags():
  """The command-line flags, defined only when run as a program: importing this module (tests) defines none, so
  it can share a process with other experiments' modules (absl refuses a flag name defined twice)."""
  config_flags.DEFINE_config_file('config', 'configs/long_horizon_memory.py', 'Experiment config.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (stream draw, KS sampling, fine-tuning order).')
  flags.DEFINE_list('multipliers', [], 'Stream lengths in windows (default: config.lhm.multipliers).')
  flags.DEFINE_list('methods', [], 'Rows to run (default: all: full_context, icl, finetune, sleep_L*).')
  flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files (e.g. one per seed or per '
                    'method group, run in parallel) into one table and plots in --workdir.')


_SENTENCE_END = re.compile(r'[.?!]["”’)]?\s+')
_NEEDLE = re.compile(r'^The special magic number for (\S+) is: (\d+)\.$')


# ---------------------------------------------------------------------------------------------- protocol
def cut_windows(stream: str, m: int, count) -> list[str]:
  """Exactly `m` windows: the stream cut at the sentence ends nearest to k/m (k = 1..m-1) of its tokens
  (`count(text)` = token count), so a sentence (a needle) is never split. Raises if there are too few sentences."""
  if m < 1:
    raise ValueError(f'multiplier must be >= 1, got {m}')
  ends = [mt.end() for mt in _SENTENCE_END.finditer(stream)]
  bounds = [0] + [e for e in ends if e < len(stream)] + [len(stream)]
  pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
  if len(pieces) < m:
    raise ValueError(f'a stream of {len(pieces)} sentences cannot be cut into {m} windows')
  cum, tot = [], 0
  for p in pieces:
    tot += count(p)
    cum.append(tot)
  cuts, prev = [], 0      # cuts[k] = number of pieces in windows 0..k
  for k in range(1, m):
    lo, hi = prev + 1, len(pieces) - (m - k)   # at least one piece per window
    j = min(range(lo, hi + 1), key=lambda j: (abs(cum[j - 1] - k * tot / m), j))
    cuts.append(j)
    prev = j
  edges = [0] + cuts + [len(pieces)]
  return [''.join(pieces[a:b]).strip() for a, b in zip(edges, edges[1:])]


def needle_questions(item: dict, windows: list[str]) -> list[dict]:
  """One question per needle (key -> value), with the window that holds it; the data module's question template
  and answer (checked against the item's own asked needle)."""
  out = []
  for n in item['needles']:
    mt = _NEEDLE.match(n['text'])
    if not mt:
      raise ValueError(f"not a key -> value needle: {n['text']!r} (kind {item['kind']!r}; use niah/mk_niah)")
    key, val = mt.groups()
    holders = [i for i, w in enumerate(windows) if n['text'] in w]
    if len(holders) != 1:
      raise ValueError(f"needle {n['text']!r} is in windows {holders}, expected exactly one")
    out.append({'key': key, 'answer': val, 'depth': n['depth'], 'window': holders[0],
                'question': f'What is the special magic number for {key} mentioned in the text?'})
  asked = [q for q in out if q['question'] == item['question']]
  if len(asked) != 1 or asked[0]['answer'] != item['answer']:
    raise ValueError(f"{item['id']}: the parsed needles do not contain the item's own question/answer")
  return out


def level_groups(n_layers: int, n_levels: int, factor: int) -> list[tuple[int, ...]]:
  """The layers of each CMS level (contiguous groups, first = fastest), as wake.default_levels makes them."""
  from sleep_jax.phases.wake import default_levels
  level_of_layer, _ = default_levels(n_layers, n_levels, 1, factor)
  return [tuple(i for i, l in enumerate(level_of_layer) if l == lv) for lv in range(n_levels)]


def sleep_schedule(n_dropped: int, n_levels: int, factor: int) -> list[tuple[int, int, list[int]]]:
  """(drop t = 1.., level l, windows consolidated) in order: level l sleeps when t is a multiple of factor^l, on
  the factor^l windows dropped since its last sleep; at one drop the fastest level sleeps first."""
  if n_levels < 1 or factor < 2:
    raise ValueError(f'n_levels={n_levels} must be >= 1 and factor={factor} >= 2')
  out = []
  for t in range(1, n_dropped + 1):
    for lv in range(n_levels):
      p = factor ** lv
      if t % p == 0:
        out.append((t, lv, list(range(t - p, t))))
  return out


def sleeps_per_level(n_dropped: int, n_levels: int, factor: int) -> list[int]:
  return [sum(1 for _, l, _ in sleep_schedule(n_dropped, n_levels, factor) if l == lv) for lv in range(n_levels)]


def recall(answer: str, text: str) -> bool:
  """Answer recall: the needle's value appears in the answer as a whole number (not inside a longer one)."""
  return re.search(rf'(?<!\d){re.escape(answer)}(?!\d)', text) is not None


def methods_of(levels) -> list[str]:
  return ['full_context', 'icl', 'finetune'] + [f'sleep_L{L}' for L in levels]


# ---------------------------------------------------------------------------------------------- run
def run_stream(lab, config, item: dict, windows: list[str], qs: list[dict], methods: list[str], seed: int,
               groups_of: dict, on_row=None) -> list[dict]:
  """Every row on one stream; returns one record per (method, needle); on_row(records so far) after each row
  (the caller saves partial results, so a run stopped early keeps every finished row)."""
  c = config.lhm
  docs = [{'id': f"{item['id']}-w{i}", 'title': 'the text', 'text': w} for i, w in enumerate(windows)]
  dropped = len(windows) - 1
  out = []
  for meth in methods:
    t0 = time.perf_counter()
    params, cms, extra = lab.params, lab.cms, {}
    context = windows[-1]
    if meth == 'full_context':
      context = '\n\n'.join(windows)
    elif meth == 'finetune':
      losses = []
      for i in range(dropped):
        params, h = lab.finetune(params, cms, [(None, windows[i])], seed=seed)   # config.finetune
        losses.append(h)
      extra['ft_losses'] = losses
    elif meth.startswith('sleep_L'):
      L = int(meth[len('sleep_L'):])
      groups = groups_of[L]
      ks_loss = []
      for t, lv, ws in sleep_schedule(dropped, L, c.level_factor):
        params, cms, hist = lab.sleep(params, cms, [docs[i] for i in ws], seed * 1000 + t * 10 + lv,
                                      layers=groups[lv], templates=tuple(c.templates), n_prefix=c.prefix_prompts,
                                      desc=f'{meth} level {lv} windows {ws}')
        ks_loss.append({'drop': t, 'level': lv, 'windows': ws, 'loss': [h['loss'] for h in hist]})
      extra['sleeps'] = ks_loss
    elif meth != 'icl':
      raise ValueError(f'unknown method {meth!r}; known: {methods_of(c.levels)}')
    answers = lab.generate(params, cms, [f"{context}\n\n{q['question']}" for q in qs],
                           max_new_tokens=c.answer_tokens)
    probe = lab.probe(params, cms)
    secs = time.perf_counter() - t0
    for q, a in zip(qs, answers):
      out.append({**q, 'method': meth, 'seed': seed, 'multiplier': len(windows), 'stream': item['id'],
                  'in_context': meth == 'full_context' or q['window'] == len(windows) - 1,
                  'output': a, 'correct': recall(q['answer'], a)})
    acc = 100 * sum(r['correct'] for r in out[-len(qs):]) / len(qs)
    print(f"seed {seed} m={len(windows)} {meth}: recall {acc:.0f}% probe {probe:.4f} ({secs:.0f}s) "
          f"answers {[a[:40] for a in answers]}", flush=True)
    out[-1].update(probe_nll=probe, seconds=secs, **extra)   # per-(method, stream) facts on its last needle row
    del params
    if on_row is not None:
      on_row(out)
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  F = flags.FLAGS
  if F.from_results:
    return merge_main(F.from_results, F.workdir)
  from experiments.common import Lab, save_results
  from sleep_jax.data import long_horizon as H
  from experiments.common import checked
  config = checked(F.config)
  c = config.lhm
  if c.kind not in ('niah', 'mk_niah'):
    raise ValueError(f"lhm.kind must be 'niah' or 'mk_niah' (key -> value needles), got {c.kind!r}")
  seeds = [int(s) for s in F.seeds]
  mults = [int(m) for m in (F.multipliers or c.multipliers)]
  methods = F.methods or methods_of(c.levels)
  for m in methods:
    if m not in methods_of(c.levels):
      raise ValueError(f'unknown method {m!r}; known: {methods_of(c.levels)}')
  for m in mults:
    if m < 2 or m - 1 > config.model.n_experts:
      raise ValueError(f'multiplier {m}: needs 2 <= m and m - 1 <= model.n_experts={config.model.n_experts} '
                       '(level 0 adds one expert per dropped window)')
  t_all = time.perf_counter()
  lab = Lab(config)
  count = lambda s: len(lab.tok.encode(s))   # noqa: E731
  n_layers = lab.b.cfg.n_layers
  groups_of = {int(m[len('sleep_L'):]): level_groups(n_layers, int(m[len('sleep_L'):]), c.level_factor)
               for m in methods if m.startswith('sleep_L')}
  print(f'built in {time.perf_counter() - t_all:.0f}s; CMS level layer groups: '
        + '; '.join(f'L={L}: {[(g[0], g[-1]) for g in gs]}' for L, gs in groups_of.items()), flush=True)
  rows, streams = [], []
  for seed in seeds:
    for m in mults:
      for j in range(c.streams):
        index = seed * c.streams + j
        if c.kind == 'mk_niah':
          items = [H.make_item('mk_niah', c.split, index, window=c.window, multiplier=m, depths=list(c.depths),
                               n_keys=len(c.depths), count_tokens=count, allow_test=c.split == 'test')]
        else:
          items = [H.make_item('niah', c.split, index * len(c.depths) + d, window=c.window, multiplier=m,
                               depths=dep, count_tokens=count, allow_test=c.split == 'test')
                   for d, dep in enumerate(c.depths)]
        for item in items:
          windows = cut_windows(item['stream'], m, count)
          qs = needle_questions(item, windows)
          streams.append({'seed': seed, 'multiplier': m, 'id': item['id'], 'tokens': count(item['stream']),
                          'window_tokens': [count(w) for w in windows], 'needle_windows': [q['window'] for q in qs]})
          print(f"seed {seed} stream {item['id']}: {streams[-1]['tokens']} tokens, windows "
                f"{streams[-1]['window_tokens']}, needles in windows {streams[-1]['needle_windows']}", flush=True)
          save = lambda done: save_results(F.workdir, {   # noqa: E731
              'rows': rows + done, 'streams': streams, 'methods': methods, 'seconds': time.perf_counter() - t_all},
              config)
          rows += run_stream(lab, config, item, windows, qs, methods, seed, groups_of, on_row=save)
  secs = time.perf_counter() - t_all
  save_results(F.workdir, {'rows': rows, 'streams': streams, 'methods': methods, 'seconds': secs}, config)
  report(rows, methods, F.workdir, f'split {c.split}, seeds {",".join(map(str, seeds))}, '
         f'multipliers {mults}, window {c.window} tokens, depths {list(c.depths)}, KS steps {config.sleep.ks.steps}; '
         f'{secs:.0f}s wall', grid=list(c.depths))


def merge_main(paths, workdir):
  """--from_results: one report over the rows of several results.json files (e.g. seeds run in parallel)."""
  from experiments.common import read_results, write_json
  rows, streams, methods, secs, config = [], [], None, [], None
  for p, r in zip(paths, read_results(paths, 'long_horizon_memory', ('rows', 'streams', 'methods', 'config'))):
    rows += r['rows']
    streams += [x for x in r['streams'] if (x['seed'], x['id']) not in {(y['seed'], y['id']) for y in streams}]
    methods = (methods or []) + [m for m in r['methods'] if m not in (methods or [])]   # runs may split the rows
    secs.append(round(r['seconds']))
    if config is not None and r['config'].get('lhm') != config.get('lhm'):
      raise ValueError(f'{p}: its lhm config differs from {paths[0]}')
    config = r['config']
  order = methods_of(config['lhm']['levels'])
  methods = sorted(methods, key=lambda m: order.index(m) if m in order else len(order))
  keys = [(r['seed'], r['stream'], r['method'], r['key']) for r in rows]
  if len(set(keys)) != len(keys):
    raise ValueError('--from_results: the same (seed, stream, method, needle) appears twice')
  from sleep_jax import results
  write_json(os.path.join(workdir, 'results.json'), {'rows': rows, 'streams': streams, 'methods': methods,
                                                     'merged_from': list(paths), 'seconds_per_file': secs,
                                                     'config': config, **results.versions()})
  lhm = config['lhm']
  report(rows, methods, workdir, f"split {lhm['split']}, seeds {','.join(str(s) for s in sorted({r['seed'] for r in rows}))}, "
         f"window {lhm['window']} tokens, depths {lhm['depths']}, KS steps {config['sleep']['ks']['steps']}; merged "
         f"from {len(paths)} runs of {secs} s wall", grid=list(lhm['depths']))


# ---------------------------------------------------------------------------------------------- report
def per_seed(rows, method, by: str) -> dict:
  """{value of `by`: [accuracy % of each seed]} for one method (each seed pools its needles at that value)."""
  seeds = sorted({r['seed'] for r in rows})
  vals = sorted({r[by] for r in rows})
  out = {}
  for v in vals:
    accs = []
    for s in seeds:
      rs = [r for r in rows if r['method'] == method and r['seed'] == s and r[by] == v]
      if rs:
        accs.append(100.0 * sum(r['correct'] for r in rs) / len(rs))
    if accs:
      out[v] = accs
  return out


def depth_bin(rows, grid=None):
  """Each needle's placed depth (the data module puts it at the nearest sentence start) binned to the nearest
  configured depth in `grid` (else rounded to 0.1)."""
  if not grid:
    return [dict(r, depth_bin=round(r['depth'], 1)) for r in rows]
  return [dict(r, depth_bin=min(grid, key=lambda g: abs(g - r['depth']))) for r in rows]


def summarize(rows, methods, grid=None) -> str:
  import numpy as np
  from experiments.common import mean_sd
  rows = depth_bin(rows, grid)
  mults = sorted({r['multiplier'] for r in rows})
  depths = sorted({r['depth_bin'] for r in rows})
  n_seeds = len({r['seed'] for r in rows})
  lines = [f'Answer recall % (needle value in the greedy answer), mean ± sd over {n_seeds} seeds; last window '
           'only in context (except full_context).', '',
           '| method | ' + ' | '.join(f'{m} windows' for m in mults) + ' | all | needles in dropped windows | '
           'probe NLL | s per stream | seeds |', '|---|' + '---:|' * (len(mults) + 4) + '---|']
  for meth in methods:
    by_m = per_seed(rows, meth, 'multiplier')
    allv = per_seed([dict(r, one=0) for r in rows], meth, 'one').get(0, [])
    drop = per_seed([dict(r, one=0) for r in rows if r['window'] < r['multiplier'] - 1], meth, 'one').get(0, [])
    facts = [r for r in rows if r['method'] == meth and 'probe_nll' in r]
    lines.append(f'| {meth} | ' + ' | '.join(mean_sd(by_m[m]) if m in by_m else '-' for m in mults)
                 + f" | {mean_sd(allv) if allv else '-'} | {mean_sd(drop) if drop else '-'} | "
                 + (f"{np.mean([r['probe_nll'] for r in facts]):.4f}" if facts else '-') + ' | '
                 + (f"{np.mean([r['seconds'] for r in facts]):.0f}" if facts else '-') + ' | '
                 + ','.join(str(x) for x in sorted({r['seed'] for r in rows if r['method'] == meth})) + ' |')
  lines += ['', 'By needle depth (nominal; all stream lengths pooled):', '',
            '| method | ' + ' | '.join(f'depth {d}' for d in depths) + ' |', '|---|' + '---:|' * len(depths)]
  for meth in methods:
    by_d = per_seed(rows, meth, 'depth_bin')
    lines.append(f'| {meth} | ' + ' | '.join(mean_sd(by_d[d]) if d in by_d else '-' for d in depths) + ' |')
  return '\n'.join(lines)


def report(rows, methods, workdir, footer, grid=None):
  from experiments.common import write_table
  write_table(workdir, summarize(rows, methods, grid), footer)
  plot(rows, methods, 'multiplier', 'stream length (windows)', os.path.join(workdir, 'accuracy_vs_length.png'))
  plot(depth_bin(rows, grid), methods, 'depth_bin', 'needle depth (fraction of the stream before it)',
       os.path.join(workdir, 'accuracy_vs_depth.png'))


def plot(rows, methods, by, xlabel, path):
  import numpy as np
  from experiments.common import pyplot
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4))
  n = len(methods)
  for i, meth in enumerate(methods):
    d = per_seed(rows, meth, by)
    xs = sorted(d)
    if not xs:
      continue
    span = (max(xs) - min(xs)) or 1.0
    off = (i - (n - 1) / 2) * 0.012 * span   # small horizontal offsets so overlapping lines stay visible
    ax.errorbar([x + off for x in xs], [np.mean(d[x]) for x in xs],
                yerr=[np.std(d[x], ddof=1) if len(d[x]) > 1 else 0 for x in xs], marker='o', capsize=3,
                label=meth, linestyle='--' if meth == 'full_context' else '-')
  seeds = len({r['seed'] for r in rows})
  ticks = sorted({x for meth in methods for x in per_seed(rows, meth, by)})
  ax.set_xticks(ticks, [f'{x:g}' for x in ticks])   # the measured lengths / depths, not a continuous axis
  ax.set_xlabel(xlabel)
  ax.set_ylabel('answer recall % (mean ± sd over seeds)')
  ax.set_ylim(-5, 105)
  ax.set_title(f'Long-horizon MK-NIAH, only the last window in context ({seeds} seeds)', fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == '__main__':
  define_flags()
  app.run(main)
