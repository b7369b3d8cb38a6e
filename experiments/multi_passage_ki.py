"""Multi-passage knowledge incorporation (PAPER sec. 5, the continued-pretraining setting).

For each seed and each n in `config.multi.sizes`, n held-out passages are drawn (seeded, nested: the n=1 passage is
the first of the n=8 ones) and consolidated in ONE run; then every question of all n passages is asked without its
passage (greedy, answer recall %: a gold answer or alias appears in the answer). Rows:

  before     the model before any update (floor)
  sleep      Knowledge Seeding of all n passages into one new expert per layer of CMS level 0,
             ks_steps_per_passage x n updates (the teacher reads each passage, the student does not)
  finetune   plain fine-tuning of all weights on the n passage texts, finetune.steps (per passage) x n updates
  seal       SEAL-style: the model's own implications / restatements / QA pairs of each passage (dream.knowledge_task,
             no random expert, no selection, no reward) applied by SFT to a new expert, no consolidation
  ceiling    the pre-update model with the passage in its prompt

plus the retention probe (NLL on validation essays; lower = less forgetting). Results: results.json (per seed and
n), table.md (mean ± sd over seeds) and recall_vs_n.png in --workdir.

  python -m experiments.multi_passage_ki --config=configs/multi_passage_ki.py --workdir=runs/multi_passage_ki
  python -m experiments.multi_passage_ki --config=configs/multi_passage_ki.py --workdir=runs/mp0 --seeds=0   # per seed
  python -m experiments.multi_passage_ki --workdir=runs/mp --from_results=runs/mp0/results.json,runs/mp1/results.json

SQuAD v1.1 with SEAL's continued-pretraining protocol (`config.ki.source='squad'`; n=200 in the ':squad' variant;
passages, selection rule and metric: sleep_jax/data/squad.py, docs/paper_scale/squad.md):
  python -m experiments.multi_passage_ki --config=configs/multi_passage_ki.py:squad --config.ki.data_dir=/data/tfds \
      --workdir=runs/mp_squad --seeds=0
"""
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

def define_flags():
  """The command-line flags, defined only when run as a program: importing this module (tests) defines none, so
  it can share a process with other experiments' modules (absl refuses a flag name defined twice)."""
  global _CONFIG, _WORKDIR, _SEEDS, _FROM
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/multi_passage_ki.py', 'Experiment config.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (passage draw, sampling, expert init).')
  _FROM = flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files into --workdir.')

ROWS = ('before', 'sleep', 'finetune', 'seal', 'ceiling')


def draw(passages: list[dict], seed: int, n: int) -> list[dict]:
  """The first n of a seeded permutation: nested in n for a fixed seed."""
  import numpy as np
  if n > len(passages):
    raise ValueError(f'multi.sizes asks for {n} passages; the split has {len(passages)}')
  order = np.random.default_rng([seed, 0x4d50]).permutation(len(passages))
  return [passages[i] for i in order[:n]]


def run_one(lab, config, docs: list[dict], seed: int) -> dict:
  """Every row for one (seed, n): scores, probe NLL and seconds."""
  import jax
  from sleep_jax import evals
  from sleep_jax.phases import consolidate as ks
  from sleep_jax.phases import dream
  m, n = config.multi, len(docs)
  qa = lambda params, cms, ctx=False: evals.qa_eval(lab.sampler, params, cms, lab.tok, docs, with_context=ctx,
                                                   max_new_tokens=config.knowledge.answer_tokens)
  strip = lambda r: {k: v for k, v in r.items() if k != 'answers'} | {'answers': r['answers'][:5]}
  out = {'seed': seed, 'n': n, 'passages': [d['id'] for d in docs], 'questions': sum(len(d['questions']) for d in docs)}
  out['before'] = strip(qa(lab.params, lab.cms))
  out['ceiling'] = strip(qa(lab.params, lab.cms, True))
  for v in m.variants:
    t0 = time.perf_counter()
    if v == 'sleep':
      params, cms, hist = lab.sleep(lab.params, lab.cms, docs, seed, steps=m.ks_steps_per_passage * n,
                                    desc=f'sleep n={n}')
      extra = {'ks_loss': [h['loss'] for h in hist]}
    elif v == 'finetune':
      params, hist = lab.finetune(lab.params, lab.cms, [(None, d['text']) for d in docs],
                                  steps=config.finetune.steps * n, seed=seed)   # finetune.steps: per passage
      cms, extra = lab.cms, {'loss': hist}
    elif v == 'seal':
      dr = lab_dreamer(lab)
      layers = lab.layers()
      sp, cms, index = ks.expand_student(lab.params, lab.cms, layers)
      tasks = [dream.knowledge_task(d, dr.dcfg.probe_rows, seed) for d in docs]
      params, hist = dr.self_edit_finetune(sp, cms, index, ks.View(layers, True), tasks, jax.random.key(seed),
                                           steps=m.seal_steps_per_passage)
      extra = {'sft_loss': hist}
    else:
      raise ValueError(f"multi.variants: unknown {v!r}; choose from {ROWS[1:-1]}")
    out[v] = {**strip(qa(params, cms)), 'probe_nll': lab.probe(params, cms), 'seconds': time.perf_counter() - t0,
              **extra}
    print(f"seed {seed} n={n} {v}: recall {out[v]['recall']:.1f} F1 {out[v]['token_f1']:.1f} "
          f"probe {out[v]['probe_nll']:.4f} ({out[v]['seconds']:.0f}s)", flush=True)
    del params
  return out


def lab_dreamer(lab):
  """SEAL-style self-edits: the configured Dreamer without random experts (built once, by the runtime)."""
  return lab.rt.dreamer(lab.rt.dream_config(enabled=True, random_expert=False))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _FROM.value:
    return merge(_FROM.value, _WORKDIR.value)
  from experiments.common import checked
  run(checked(_CONFIG.value), _WORKDIR.value, [int(s) for s in _SEEDS.value])


def run(config, workdir: str, seeds: list[int], lab=None) -> list[dict]:
  """Every row for each seed and n in multi.sizes; writes results.json, table.md and recall_vs_n.png. `lab`: an
  already built common.Lab of `config` (tests share one between experiments), else one is built."""
  from experiments import common
  from sleep_jax import results
  from sleep_jax.data import squad
  m = config.multi
  ki = config.get('ki')
  source = ki.source if ki is not None else 'generated'
  passages = squad.knowledge_passages(ki, m.split, config.knowledge.max_doc_chars)   # data first: fail fast
  # SQuAD: SEAL's selection rule (squad.select, also nested in n); invented passages: their own seeded draw
  pick = squad.select if source == 'squad' else lambda ps, n, seed: draw(ps, seed, n)
  lab = lab or common.Lab(config)
  probe0 = lab.probe(lab.params, lab.cms)
  rows, t_all = [], time.perf_counter()
  for seed in seeds:
    for n in m.sizes:
      rows.append(run_one(lab, config, pick(passages, n, seed), seed))
      common.save_results(workdir, {'rows': rows, 'probe_before': probe0, 'seeds': [str(s) for s in seeds],
                                    'split': m.split, 'source': source}, config)
  report(rows, probe0, workdir, f'{source} passages, split {m.split}, seeds {",".join(map(str, seeds))}, '
         f'{time.perf_counter() - t_all:.0f}s wall, {results.run_info(config)["processor"]} x{os.cpu_count()} CPU')
  return rows


def merge(paths, workdir):
  from experiments.common import read_results, write_json
  rows, probe0 = [], None
  for p, r in zip(paths, read_results(paths, 'multi_passage_ki', ('rows', 'probe_before'))):
    if probe0 is not None and abs(r['probe_before'] - probe0) > 1e-6:
      raise ValueError(f'{p}: probe_before {r["probe_before"]} differs from {probe0}: not the same model')
    rows, probe0 = rows + r['rows'], r['probe_before']
  from sleep_jax import results
  write_json(os.path.join(workdir, 'results.json'),
             {'rows': rows, 'probe_before': probe0, 'merged_from': list(paths), **results.versions()})
  report(rows, probe0, workdir, f'merged from {", ".join(paths)}')


def table(rows, probe0) -> str:
  from experiments.common import mean_sd
  sizes = sorted({r['n'] for r in rows})
  names = [v for v in ROWS if any(v in r for r in rows)]
  head = ' | '.join(f'recall %, n={n}' for n in sizes) + ' | ' + ' | '.join(f'probe NLL, n={n}' for n in sizes)
  lines = [f'| row | {head} |', '|---|' + '---:|' * (2 * len(sizes))]
  for v in names:
    rec = [mean_sd(r[v]['recall'] for r in rows if r['n'] == n and v in r) for n in sizes]
    pr = [mean_sd((r[v]['probe_nll'] for r in rows if r['n'] == n and v in r), '.4f')
          if any('probe_nll' in r.get(v, {}) for r in rows if r['n'] == n) else '-' for n in sizes]
    lines.append(f'| {v} | ' + ' | '.join(rec + pr) + ' |')
  if all('exact_match' in r[v] for r in rows for v in names if v in r):   # official SQuAD v1.1 EM / F1
    lines += ['', '| row | ' + ' | '.join(f'SQuAD EM %, n={n}' for n in sizes) + ' | '
              + ' | '.join(f'SQuAD F1 %, n={n}' for n in sizes) + ' |', '|---|' + '---:|' * (2 * len(sizes))]
    for v in names:
      lines.append(f'| {v} | ' + ' | '.join(mean_sd(r[v][k] for r in rows if r['n'] == n and v in r)
                                             for k in ('exact_match', 'token_f1') for n in sizes) + ' |')
  seeds = sorted({r['seed'] for r in rows})
  qs = {n: [r['questions'] for r in rows if r['n'] == n] for n in sizes}
  return '\n'.join(lines) + (f'\n\nNo-context answer recall over all questions of the n passages; mean ± sd over seeds '
                             f'{seeds}; questions per run: ' + ', '.join(f'n={n}: {min(q)}-{max(q)}'
                                                                       for n, q in qs.items())
                             + f'. Retention probe before: {probe0:.4f}.')


def report(rows, probe0, workdir, footer):
  from experiments import common
  import numpy as np
  common.write_table(workdir, table(rows, probe0), footer)
  plt = common.pyplot()
  sizes = sorted({r['n'] for r in rows})
  names = [v for v in ROWS if any(v in r for r in rows)]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
  for v in names:
    per = [[r[v]['recall'] for r in rows if r['n'] == n and v in r] for n in sizes]
    ax.errorbar(sizes, [np.mean(p) for p in per], yerr=[np.std(p, ddof=1) if len(p) > 1 else 0 for p in per],
                marker='o', capsize=3, label=v)
    per = [[r[v]['probe_nll'] for r in rows if r['n'] == n and 'probe_nll' in r.get(v, {})] for n in sizes]
    if all(per):   # rows that change the weights (before/ceiling keep the pre-update model)
      bx.errorbar(sizes, [np.mean(p) for p in per], yerr=[np.std(p, ddof=1) if len(p) > 1 else 0 for p in per],
                  marker='o', capsize=3, label=v, color=ax.lines[-1].get_color())
  bx.axhline(probe0, color='gray', ls='--', lw=1, label='before')
  for a in (ax, bx):
    a.set_xscale('log')
    a.minorticks_off()
    a.set_xticks(sizes)
    a.set_xticklabels([str(s) for s in sizes])
    a.set_xlabel('passages consolidated in one run (n)')
    a.legend(fontsize=8)
  ax.set_ylabel('no-context answer recall (%)')
  bx.set_ylabel('retention probe NLL (lower = kept more)')
  seeds = sorted({r['seed'] for r in rows})
  ax.set_title(f'Answers without the passage, seeds {seeds}', fontsize=10)
  bx.set_title('What the model knew before (validation essays)', fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'recall_vs_n.png'), dpi=120)
  plt.close(fig)


if __name__ == '__main__':
  define_flags()
  app.run(main)
