"""Knowledge incorporation with Knowledge Seeding and its ablations (PAPER sec. 5, first row), single-passage setting.

For each seed, `--passages` held-out passages are drawn (seeded); each variant starts from the same pre-sleep
model, consolidates one passage at a time (context -> MLP, a fresh expert per passage), and is scored on that
passage's questions without the passage, then reset. Variants:

  before            no update
  ks                Knowledge Seeding (GKD + LTI), one new expert per layer of CMS level 0
  ks_no_lti         alpha = 1 (divergence only)
  ks_no_div         alpha = 0 (LTI policy gradient only)
  ks_no_expand      the receivers' base MLP weights trained instead of a new expert
  finetune          plain fine-tuning of all weights on the passage text (next-token loss): experiments/common.py's
                    Lab.finetune with `config.finetune` (configs/base.finetune_fields), as in every experiment
  sleep             Knowledge Seeding, then Dreaming (ReST-EM rounds) into the same new experts
  sleep_no_select   Dreaming without gradient selection (the kept dreams drawn at random)
  sleep_no_random   Dreaming without the random extra expert while generating
  seal              SEAL-style: self-generated implications/restatements/QA applied by fine-tuning a new expert,
                    no consolidation, no selection, no reward
  ceiling           the teacher: the pre-sleep model with the passage in its prompt

The Dreaming variants start from the 'ks' model of the same seed (computed once). Their ReST-EM reward rate per
round goes to the table and to rest_em.png.

Also the retention probe (NLL on validation essays) before and after each variant. Results: a markdown table,
results.json and a bar plot in --workdir.

  python -m experiments.knowledge_incorporation --workdir=runs/ki --seeds=0,1,2 --passages=1
  python -m experiments.knowledge_incorporation --workdir=/tmp/ki --split=validation   # for tuning
  python -m experiments.knowledge_incorporation --workdir=runs/ki_all --from_results=runs/a/results.json,runs/b/results.json
SQuAD v1.1 with SEAL's single-passage protocol (`config.ki.source=squad`: SQuAD validation passages drawn by SEAL's
rule, closed-book questions, official SQuAD EM / F1 next to recall; sleep_jax/data/squad.py,
docs/paper_scale/squad.md):
  python -m experiments.knowledge_incorporation --workdir=runs/ki_squad --config.ki.source=squad \
      --config.ki.data_dir=/data/tfds --seeds=0 --passages=200
Any `configs/sleep.py` field can be overridden: --config.sleep.ks.lr=3e-3, or the fine-tuning baseline's
--config.finetune.steps=8 --config.finetune.lr=3e-5 (these replace the former --ft_steps / --ft_lr flags).
"""
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

def define_flags():
  """The command-line flags, defined only when run as a program: importing this module (tests) defines none, so
  it can share a process with other experiments' modules (absl refuses a flag name defined twice)."""
  global _CONFIG, _WORKDIR, _SEEDS, _PASSAGES, _SPLIT, _VARIANTS, _FROM
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/knowledge_incorporation.py', 'Base config.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (passage draw, sampling, expert init).')
  _PASSAGES = flags.DEFINE_integer('passages', 1, 'Passages per seed.')
  _SPLIT = flags.DEFINE_string('split', 'test', "Passage split; 'test' is the held-out final evaluation.")
  _VARIANTS = flags.DEFINE_list('variants', ['ks', 'ks_no_lti', 'ks_no_div', 'ks_no_expand', 'finetune', 'sleep',
                                             'sleep_no_select', 'sleep_no_random', 'seal'],
                                'Variants to run (before and ceiling always run).')
  _FROM = flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files (e.g. one per seed, '
                            'run in parallel) into one table and plots in --workdir.')

KS_VARIANTS = {'ks': {}, 'ks_no_lti': {'alpha': 1.0}, 'ks_no_div': {'alpha': 0.0}, 'ks_no_expand': {'expand': False}}
DREAM_VARIANTS = {'sleep': {}, 'sleep_no_select': {'selection': 'random'}, 'sleep_no_random': {'random_expert': False},
                  'seal': {'random_expert': False}}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _FROM.value:
    return merge_main(_FROM.value, _WORKDIR.value)
  from experiments.common import checked
  run(checked(_CONFIG.value), _WORKDIR.value, [int(s) for s in _SEEDS.value], _PASSAGES.value, _SPLIT.value,
      list(_VARIANTS.value))


def pick(all_passages: list[dict], n: int, seed: int, source: str) -> list[dict]:
  """The seed's passages, the same for every variant: SQuAD uses SEAL's rule (squad.select); the invented
  passages keep their own seeded draw (unchanged, so earlier results stay reproducible)."""
  import numpy as np
  from sleep_jax.data import squad
  if source == 'squad':
    return squad.select(all_passages, n, seed)
  order = np.random.default_rng([seed, 0x4b49]).permutation(len(all_passages))
  return [all_passages[i] for i in order[:n]]


def run(config, workdir: str, seeds: list[int], n_passages: int, split: str, variants: list[str], lab=None
        ) -> list[dict]:
  """Every variant on `n_passages` passages per seed; writes results.json, table.md and plots; returns the rows.
  `lab`: an already built common.Lab of `config` (tests share one between experiments), else one is built."""
  import jax
  from sleep_jax import evals
  from sleep_jax.data import squad
  from sleep_jax.phases import consolidate as ks
  from sleep_jax.phases import dream
  from experiments.common import Lab
  os.makedirs(workdir, exist_ok=True)
  ki = config.get('ki')   # configs/sleep.py has no `ki` block: invented passages
  source = ki.source if ki is not None else 'generated'
  all_passages = squad.knowledge_passages(ki, split, config.knowledge.max_doc_chars)   # data first: fail fast
  lab = lab or Lab(config)   # the fine-tuning baseline shared by every experiment (Lab.finetune)
  rt = lab.rt         # the composition root: model, sampler, seeders, dreamers, probe, guard
  b, tok, sampler = rt.b, rt.tokenizer, rt.sampler
  layers = rt.layers()
  probe = rt.probe()
  qa = lambda params, cms, docs, ctx=False: evals.qa_eval(
      sampler, params, cms, tok, docs, with_context=ctx, max_new_tokens=config.knowledge.answer_tokens,
      desc='qa' + ('+ctx' if ctx else ''))
  def fact_recall(params, cms, passage, ctx=False):
    """Diagnostic: % of the passage's answers that the model states when asked a *training* prompt
    ("Tell me about {title}.", greedy, 96 tokens): did the facts get in at all, whatever the QA format?"""
    instr = config.sleep.templates[0].format(title=passage['title'])
    user = f"{passage['text']}\n\n{instr}" if ctx else instr
    o = sampler(params, [tok.chat_tokens([{'role': 'user', 'content': user}])],
                max_new_tokens=min(96, max(config.sampling.gen_buckets)),
                rng=jax.random.key(0), temperature=0.0, cms=cms)
    text = tok.decode(o.tokens[0][o.mask[0]])
    return evals.recall([[q['answer'], *q['aliases']] for q in passage['questions']], [text] * len(passage['questions'])), text

  probe0 = probe(b.params, b.cms)
  rows, t_all = [], time.perf_counter()
  from experiments.common import save_results
  for seed in seeds:
    for passage in pick(all_passages, n_passages, seed, source):
      rec = {'seed': seed, 'passage': passage['id'], 'n': len(passage['questions'])}
      rec['before'] = qa(b.params, b.cms, [passage])
      rec['before']['fact_recall'], rec['before']['told'] = fact_recall(b.params, b.cms, passage)
      rec['ceiling'] = qa(b.params, b.cms, [passage], True)
      rec['ceiling']['fact_recall'], rec['ceiling']['told'] = fact_recall(b.params, b.cms, passage, True)
      ks_model = None
      for v in sorted(variants, key=lambda v: v in DREAM_VARIANTS):   # 'ks' before the dream variants
        t0 = time.perf_counter()
        if v in DREAM_VARIANTS:
          dr = rt.dreamer(rt.dream_config(**DREAM_VARIANTS[v], enabled=True))
          task = dream.knowledge_task(passage, dr.dcfg.probe_rows, seed)
          view = ks.View(layers, True)
          if v == 'seal':
            sp, cms, index = ks.expand_student(b.params, b.cms, layers)
            params, hist = dr.self_edit_finetune(sp, cms, index, view, [task], jax.random.key(seed))
            extra = {'sft_loss': hist}
          else:
            if ks_model is None:
              raise ValueError(f"variant {v} dreams on the 'ks' model: put 'ks' in --variants")
            kp, cms, index = ks_model
            dst, hist = dr.run(kp, cms, index, view, [task], jax.random.key(seed), progress_desc=v)
            params = dr.commit(kp, dst, index, view)
            extra = {'dream_history': hist, 'reward_rate': [h['reward_rate'] for h in hist]}
        elif v == 'finetune':
          params, hist = lab.finetune(b.params, b.cms, [(None, passage['text'])], seed=seed)   # config.finetune
          cms = b.cms
          extra = {'final_loss': hist[-1]}
        else:
          seeder = rt.seeder(rt.ks_config(**KS_VARIANTS[v]))   # one compiled update per variant, reused across seeds
          kcfg = seeder.kcfg
          view = ks.View(layers, kcfg.expand)
          if kcfg.expand:
            sp, cms, index = ks.expand_student(b.params, b.cms, layers)
          else:
            sp, cms, index = b.params, b.cms, {}
          items = ks.context_items(tok, [passage], tuple(config.sleep.templates), seed,
                                          config.sleep.prefix_prompts)
          st, hist = seeder.run({'params': b.params, 'cms': b.cms}, {'params': sp, 'cms': cms}, index, view, items,
                                jax.random.key(seed), progress_desc=v)
          params = ks.commit(sp, st, index, view)
          extra = {'ks_history': hist}
          if v == 'ks':
            ks_model = (params, cms, index)
        rec[v] = {**qa(params, cms, [passage]), 'probe_nll': probe(params, cms),
                  'seconds': time.perf_counter() - t0, **extra}
        rec[v]['fact_recall'], rec[v]['told'] = fact_recall(params, cms, passage)
        print(f"seed {seed} {passage['id']} {v}: recall {rec[v]['recall']:.1f} F1 {rec[v]['token_f1']:.1f} "
              f"probe {rec[v]['probe_nll']:.4f} ({rec[v]['seconds']:.0f}s)"
              + (f" reward rate per round {rec[v]['reward_rate']}" if 'reward_rate' in rec[v] else ''), flush=True)
        del params
      del ks_model
      rows.append(rec)
      save_results(workdir, {'rows': rows, 'probe_before': probe0, 'split': split, 'source': source}, config)
  report(rows, probe0, ['before'] + list(variants) + ['ceiling'], workdir,
         f'{len(rows)} passages ({source}), seeds {",".join(map(str, seeds))}, split {split}, '
         f'{time.perf_counter() - t_all:.0f}s')
  return rows


def report(rows, probe0, names, workdir, footer):
  """table.md (scores + ReST-EM reward rates), recall.png and rest_em.png in `workdir`."""
  from sleep_jax.phases import dream
  table = summarize(rows, probe0, names)
  em = squad_table(rows, names)
  table += '\n\n' + em if em else ''
  rewards = reward_table(rows, names)
  table += '\n\n' + rewards if rewards else ''
  print(table)
  curves = {v: [r[v]['reward_rate'] for r in rows if 'reward_rate' in r.get(v, {})] for v in names}
  seeds = ','.join(str(s) for s in sorted({r['seed'] for r in rows}))
  if any(curves.values()):
    dream.plot_reward_rates({v: c for v, c in curves.items() if c}, os.path.join(workdir, 'rest_em.png'),
                            title=f'ReST-EM reward rate per round, SmolLM2-135M, seeds {seeds}')
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write(table + f'\n\n{footer}\n')
  plot(rows, names, os.path.join(workdir, 'recall.png'))


def merge_main(paths, workdir):
  """--from_results: one report over the rows of several results.json files (e.g. seeds run in parallel)."""
  from experiments.common import read_results, write_json
  rows, probe0, names = [], None, None
  for p, r in zip(paths, read_results(paths, 'knowledge_incorporation', ('rows', 'probe_before'))):
    rows += r['rows']
    probe0 = r['probe_before'] if probe0 is None else probe0
    if probe0 != r['probe_before']:
      raise ValueError(f'{p}: probe_before {r["probe_before"]} differs from {probe0}: not the same model/probe')
    vs = [v for v in r['rows'][0] if isinstance(r['rows'][0][v], dict)]
    names = vs if names is None else [v for v in names if v in vs]
  names = ['before'] + [v for v in names if v not in ('before', 'ceiling')] + ['ceiling']
  from sleep_jax import results
  write_json(os.path.join(workdir, 'results.json'),
             {'rows': rows, 'probe_before': probe0, 'merged_from': list(paths), **results.versions()})
  report(rows, probe0, names, workdir, f'{len(rows)} passages merged from {", ".join(paths)}')


def summarize(rows, probe0, names) -> str:
  """Mean and spread over seeds (each seed's score = its passages' pooled questions)."""
  import numpy as np
  seeds = sorted({r['seed'] for r in rows})
  lines = [f'| variant | answer recall % | token F1 % | facts stated for a training prompt % | '
           f'retention probe NLL (before: {probe0:.4f}) |', '|---|---:|---:|---:|---:|']
  for v in names:
    per = {'recall': [], 'token_f1': [], 'probe': [], 'facts': []}
    for s in seeds:
      rs = [r for r in rows if r['seed'] == s and v in r]
      n = sum(r['n'] for r in rs)
      per['recall'].append(sum(r[v]['recall'] * r['n'] for r in rs) / n)
      per['token_f1'].append(sum(r[v]['token_f1'] * r['n'] for r in rs) / n)
      if 'fact_recall' in rs[0][v]:
        per['facts'].append(sum(r[v]['fact_recall'] * r['n'] for r in rs) / n)
      if 'probe_nll' in rs[0][v]:
        per['probe'].append(np.mean([r[v]['probe_nll'] for r in rs]))
    fmt = lambda x: f'{np.mean(x):.1f} ± {np.std(x, ddof=1) if len(x) > 1 else 0:.1f}'
    pr = f"{np.mean(per['probe']):.4f} ± {np.std(per['probe'], ddof=1) if len(per['probe']) > 1 else 0:.4f}" \
        if per['probe'] else '-'
    facts = fmt(per['facts']) if per['facts'] else '-'
    lines.append(f"| {v} | {fmt(per['recall'])} | {fmt(per['token_f1'])} | {facts} | {pr} |")
  return '\n'.join(lines)


def squad_table(rows, names) -> str:
  """The official SQuAD v1.1 scores (normalised exact match, token F1; best gold answer), mean ± sd over seeds of
  each seed's question-weighted score: the metric docs/paper_scale/squad.md reports in place of SEAL's LLM grader."""
  import numpy as np
  from experiments.common import mean_sd
  seeds = sorted({r['seed'] for r in rows})
  vs = [v for v in names if all('exact_match' in r[v] for r in rows if v in r) and any(v in r for r in rows)]
  if not vs:
    return ''
  lines = ['| variant | SQuAD exact match % | SQuAD token F1 % |', '|---|---:|---:|']
  for v in vs:
    per = {k: [] for k in ('exact_match', 'token_f1')}
    for s in seeds:
      rs = [r for r in rows if r['seed'] == s and v in r]
      for k in per:
        per[k].append(float(np.sum([r[v][k] * r['n'] for r in rs]) / sum(r['n'] for r in rs)))
    lines.append(f"| {v} | {mean_sd(per['exact_match'])} | {mean_sd(per['token_f1'])} |")
  return '\n'.join(lines)


def reward_table(rows, names) -> str:
  """ReST-EM reward rate (share of kept dreams whose isolated fine-tune beat the original on tau) per round."""
  import numpy as np
  dv = [v for v in names if any('reward_rate' in r.get(v, {}) for r in rows)]
  if not dv:
    return ''
  n = min(len(r[v]['reward_rate']) for v in dv for r in rows if v in r)
  lines = ['| variant | ' + ' | '.join(f'reward rate, round {i + 1}' for i in range(n)) + ' |',
           '|---|' + '---:|' * n]
  for v in dv:
    per = np.asarray([r[v]['reward_rate'][:n] for r in rows if v in r])
    sd = per.std(0, ddof=1) if len(per) > 1 else np.zeros(n)
    lines.append(f'| {v} | ' + ' | '.join(f'{m:.2f} ± {s:.2f}' for m, s in zip(per.mean(0), sd)) + ' |')
  return '\n'.join(lines)


def plot(rows, names, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  seeds = sorted({r['seed'] for r in rows})
  vals = [[np.mean([r[v]['recall'] for r in rows if r['seed'] == s]) for s in seeds] for v in names]
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar(names, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], color='tab:blue', alpha=0.8)
  ax.set_ylabel('no-context answer recall (%)')
  ax.set_title(f'Knowledge incorporation, SmolLM2-135M, {len(seeds)} seeds')
  plt.xticks(rotation=20)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == '__main__':
  define_flags()
  app.run(main)
