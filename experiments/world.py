"""Sleep on the controlled world: every row of the paper's comparison, measured on new people in minutes on a CPU.

The shipped world model (configs/world.py; gates in sleep_jax/data/world_model/gates.json) reads new people's bios
in context; each row turns that into weights its own way, always from the same pre-sleep model, and is measured on
closed-book recall of those people on HELD-OUT question templates, the open-book ceiling, and retention of the
pretraining people (QA-trained and bio-only). Rows (`ROWS`):

  base               the pre-sleep model (floor)
  ft_bios            fine-tuning all weights on the bios (the paper's FT / CPT baseline), finetune.steps updates
  ft_bios_expert     the same into one new expert per receiver layer only
  sft_teacher_qa     SFT of a new expert on the teacher's (bio in context) greedy answers to the memory-buffer
                     questions (off-policy distillation)
  seal               SEAL-style self-edits: the model's own restatements / answers with the bio (no random expert, no
                     selection, no reward) applied by SFT to a new expert
  ks                 Sleep = Knowledge Seeding only (divergence + LTI, generative replay, new experts)
  ks_no_replay       the same without generative replay
  ks_names_replay    the same with replay prompts that are questions about strangers instead of <bos>
  sleep              Sleep = Knowledge Seeding + Dreaming
  no_lti / no_divergence / no_expansion / no_grad_selection / no_random_expert   ablations of `sleep`
  cms4               `sleep` with four CMS levels (one layer each): the new experts go to layer 0 only

Variants (--variant): one (a: one person per sleep), many (b: k people in one sleep), sequential (c: sleeps in a row;
does each keep the earlier sleeps' people?), budget (d: recall vs Knowledge Seeding / fine-tuning steps).

  python -m experiments.world --variant=one --workdir=runs/world_one --seeds=0,1,2,3,4
  python -m experiments.world --variant=many --workdir=runs/world_many --config.world_sleep.split=test
  python -m experiments.world --variant=one --config=configs/world_sleep.py:smoke --workdir=/tmp/w1 --seeds=0
  python -m experiments.world --workdir=runs/world_one --from_results=runs/w0/results.json,runs/w1/results.json
Knobs are chosen on split=validation (the default); reported numbers use --config.world_sleep.split=test.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

VARIANTS = ('one', 'many', 'sequential', 'budget')
ROWS = ('base', 'ft_bios', 'ft_bios_expert', 'sft_teacher_qa', 'seal', 'ks', 'ks_no_replay', 'ks_names_replay', 'sleep',
        'no_lti',
        'no_divergence', 'no_expansion', 'no_grad_selection', 'no_random_expert', 'cms4')
MEASURES = ('recall', 'gap_closed', 'retention_qa', 'retention_bio', 'seconds')


def define_flags():
  """Flags only when run as a program (tests import this module)."""
  global _CONFIG, _WORKDIR, _SEEDS, _FROM, _VARIANT, _ROWS
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/world_sleep.py', 'Experiment config.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds (people drawn, sampling, expert init).')
  _VARIANT = flags.DEFINE_enum('variant', 'one', VARIANTS, 'Which experiment.')
  _ROWS = flags.DEFINE_list('rows', [], 'Rows to run (default: the variant\'s).')
  _FROM = flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files into --workdir.')


# ---------------------------------------------------------------------------------------------------- rows


class WorldLab:
  """The Lab (fine-tuning, generation) plus the world, its bench and the sleep functions of jobs/world_sleep."""

  def __init__(self, config):
    from experiments.common import Lab
    from sleep_jax.data import world as world_lib
    from sleep_jax.jobs import world_sleep as ws
    self.config, self.ws = config, ws
    self.lab = Lab(config)
    self.rt = self.lab.rt
    self.world = world_lib.World(world_lib.spec_from(config.world))
    self.bench = ws.Bench(self.rt, self.world, retention_people=config.world_sleep.retention_people,
                          seed=config.seed)

  def people(self, seed: int, k: int):
    ps = self.world.people[self.config.world_sleep.split]
    if k > len(ps):
      raise ValueError(f'{k} people asked for; split {self.config.world_sleep.split!r} has {len(ps)}')
    return [ps[i] for i in np.random.default_rng([seed, 0x9e0]).permutation(len(ps))[:k]]

  def expert_regex(self, layers) -> str:
    return '|'.join(f'layers_{i}/mlp/expert_[ab]' for i in layers)

  def bio_pairs(self, people, seed: int, per_person: int = 8):
    rng = np.random.default_rng([seed, 0xb105])
    return [('', self.world.bio(p, rng)) for p in people for _ in range(per_person)]

  def teacher_qa_pairs(self, params, cms, people, seed: int):
    """(question, the teacher's greedy answer with the bio in its prompt) for the memory-buffer questions."""
    from sleep_jax.data import world as world_lib
    rng = np.random.default_rng([seed, 0x17e5])
    qs, prompts = [], []
    for p in people:
      for j in range(self.config.world_sleep.questions_per_person):
        a = world_lib.ATTRS[j % len(world_lib.ATTRS)]
        q = self.world.question(p, a, str(rng.choice(world_lib.questions(a, held_out=False))))
        qs.append(q)
        prompts.append(f'{self.world.bio(p, rng)} {q}')
    answers = self.lab.generate(params, cms, prompts, max_new_tokens=8, batch=64)
    return [(q, a) for q, a in zip(qs, answers) if a]

  def row(self, name: str, params, cms, people, seed: int, *, ks_steps: int | None = None,
          ft_steps: int | None = None):
    """(params, cms, info) of row `name` applied to (params, cms) for `people`."""
    from sleep_jax.phases import consolidate as ks
    rt, c = self.rt, self.config
    kcfg, dcfg = rt.ks_config(), rt.dream_config()
    if ks_steps is not None:
      kcfg = dataclasses.replace(kcfg, steps=ks_steps)
    layers = rt.layers()
    ft = dict(steps=ft_steps) if ft_steps is not None else {}
    sleep = lambda **kw: self.ws.sleep_people(rt, params, cms, self.world, people, seed,
                                              questions_per_person=c.world_sleep.questions_per_person,
                                              restate_per_person=c.world_sleep.restate_per_person,
                                              **{'kcfg': kcfg, 'dcfg': dcfg, 'replay': c.world_sleep.replay,
                                                 'replay_kind': c.world_sleep.replay_kind, 'desc': name, **kw})
    t0 = time.perf_counter()
    if name == 'base':
      return params, cms, {'seconds': 0.0}
    if name == 'ft_bios':
      p, _ = self.lab.finetune(params, cms, self.bio_pairs(people, seed), seed=seed, trainable='.*', **ft)
      return p, cms, {'seconds': time.perf_counter() - t0}
    if name in ('ft_bios_expert', 'sft_teacher_qa', 'seal'):
      sp, scms, index = ks.expand_student(params, cms, layers)
      if name == 'seal':
        d = rt.dreamer(dataclasses.replace(dcfg, enabled=True))
        steps = max(1, kcfg.steps // len(people))
        p, _ = d.self_edit_finetune(sp, scms, index, ks.View(layers, True),
                                    self.ws.dream_tasks(self.world, people, seed), __import__('jax').random.key(seed),
                                    steps=steps)
        return p, scms, {'seconds': time.perf_counter() - t0}
      pairs = self.bio_pairs(people, seed) if name == 'ft_bios_expert' else \
          self.teacher_qa_pairs(params, cms, people, seed)
      p, _ = self.lab.finetune(sp, scms, pairs, seed=seed, trainable=self.expert_regex(layers), **ft)
      return p, scms, {'seconds': time.perf_counter() - t0, 'pairs': len(pairs)}
    off = dataclasses.replace(dcfg, enabled=False)
    variants = {
        'ks': dict(dcfg=off), 'ks_no_replay': dict(dcfg=off, replay=0.0),
        'ks_names_replay': dict(dcfg=off, replay_kind='names'), 'sleep': {},
        'no_lti': dict(kcfg=dataclasses.replace(kcfg, alpha=1.0)),
        'no_divergence': dict(kcfg=dataclasses.replace(kcfg, alpha=0.0)),
        'no_expansion': dict(kcfg=dataclasses.replace(kcfg, expand=False)),
        'no_grad_selection': dict(dcfg=dataclasses.replace(dcfg, selection='random')),
        'no_random_expert': dict(dcfg=dataclasses.replace(dcfg, random_expert=False)),
        'cms4': dict(layers=(0,)),
    }
    if name not in variants:
      raise ValueError(f'unknown row {name!r}; rows: {ROWS}')
    p, cm, info = sleep(**variants[name])
    return p, cm, {'seconds': info['seconds'], 'ks_seconds': info['ks_seconds'],
                   'dream_rounds': info.get('dream_rounds', []),
                   'reward': float(np.mean([h.get('reward', np.nan) for h in info['ks']])) if info['ks'] else None,
                   'divergence': [h.get('divergence') for h in info['ks'][::10]]}

  def scores(self, params, cms, people, before: float, ceiling: float) -> dict:
    m = self.bench.measure(params, cms, people)
    return dict(m, gap_closed=self.ws.gap_closed(before, m['recall'], ceiling))


# ---------------------------------------------------------------------------------------------------- variants


def run_one(wl: WorldLab, seed: int, rows, k: int = 1) -> dict:
  """(a) / (b): every row from the same pre-sleep model on k people."""
  b = wl.rt.b
  people = wl.people(seed, k)
  base = wl.bench.measure(b.params, b.cms, people)
  ceiling = wl.bench.recall(b.params, b.cms, people, open_book=True)
  out = {'seed': seed, 'k': k, 'people': [p.name for p in people], 'before': base, 'ceiling': ceiling, 'rows': {}}
  for name in rows:
    p, cm, info = wl.row(name, b.params, b.cms, people, seed)
    out['rows'][name] = dict(wl.scores(p, cm, people, base['recall'], ceiling), **info)
    r = out['rows'][name]
    logging.info('seed %d k %d %s: recall %.3f retention %.3f/%.3f (%.0fs)', seed, k, name, r['recall'],
                 r['retention_qa'], r['retention_bio'], r['seconds'])
    print(f"seed {seed} k={k} {name}: recall {100 * r['recall']:.1f} (trained templates "
          f"{100 * r['recall_trained']:.1f}) gap {100 * r['gap_closed']:.1f} retention "
          f"{100 * r['retention_qa']:.1f}/{100 * r['retention_bio']:.1f} ({r['seconds']:.0f}s)", flush=True)
  return out


def run_sequential(wl: WorldLab, seed: int, rows, n_sleeps: int, k: int) -> dict:
  """(c): n_sleeps sleeps in a row, k new people each; after each, recall of every earlier sleep's people."""
  b = wl.rt.b
  groups = [wl.people(seed, k * n_sleeps)[i * k:(i + 1) * k] for i in range(n_sleeps)]
  out = {'seed': seed, 'k': k, 'n_sleeps': n_sleeps, 'rows': {}}
  for name in rows:
    params, cms = b.params, b.cms
    curve = []
    t = 0.0
    for s, people in enumerate(groups):
      params, cms, info = wl.row(name, params, cms, people, seed * 100 + s)
      t += info['seconds']
      m = wl.bench.measure(params, cms, [p for g in groups[:s + 1] for p in g])
      curve.append({'sleep': s + 1, 'recall_all': m['recall'],
                    'recall_first': wl.bench.recall(params, cms, groups[0]),
                    'recall_last': wl.bench.recall(params, cms, people),
                    'retention_qa': m['retention_qa'], 'retention_bio': m['retention_bio']})
      print(f"seed {seed} {name} sleep {s + 1}: recall all {100 * m['recall']:.1f} first "
            f"{100 * curve[-1]['recall_first']:.1f} last {100 * curve[-1]['recall_last']:.1f} retention "
            f"{100 * m['retention_qa']:.1f}/{100 * m['retention_bio']:.1f}", flush=True)
    out['rows'][name] = {'curve': curve, 'seconds': t}
  return out


def run_budget(wl: WorldLab, seed: int, rows, budgets, k: int) -> dict:
  """(d): recall vs steps (Knowledge Seeding steps for sleep rows, fine-tuning steps for fine-tuning rows)."""
  b = wl.rt.b
  people = wl.people(seed, k)
  base = wl.bench.measure(b.params, b.cms, people)
  ceiling = wl.bench.recall(b.params, b.cms, people, open_book=True)
  out = {'seed': seed, 'k': k, 'before': base, 'ceiling': ceiling, 'rows': {}}
  for name in rows:
    out['rows'][name] = []
    for n in budgets:
      p, cm, info = wl.row(name, b.params, b.cms, people, seed, ks_steps=n, ft_steps=n)
      r = dict(wl.scores(p, cm, people, base['recall'], ceiling), steps=n, seconds=info['seconds'])
      out['rows'][name].append(r)
      print(f"seed {seed} {name} steps {n}: recall {100 * r['recall']:.1f} retention "
            f"{100 * r['retention_qa']:.1f}/{100 * r['retention_bio']:.1f} ({r['seconds']:.0f}s)", flush=True)
  return out


# ---------------------------------------------------------------------------------------------------- report


def _ms(xs, scale=100.0) -> str:
  xs = np.asarray([x for x in xs if x is not None and np.isfinite(x)], float) * scale
  if not len(xs):
    return 'n/a'
  return f'{xs.mean():.1f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.1f}'


def table_rows(runs: list[dict]) -> str:
  """(a) / (b): one line per (k, row), mean ± sd over seeds."""
  lines = ['| k | row | recall % | gap closed % | retention QA % | retention bio-only % | seconds | seeds |',
           '|---:|---|---:|---:|---:|---:|---:|---:|']
  for k in sorted({r['k'] for r in runs}):
    rs = [r for r in runs if r['k'] == k]
    lines.append(f"| {k} | *before* | {_ms([r['before']['recall'] for r in rs])} | | "
                 f"{_ms([r['before']['retention_qa'] for r in rs])} | {_ms([r['before']['retention_bio'] for r in rs])}"
                 f" | | {len(rs)} |")
    lines.append(f"| {k} | *open-book ceiling* | {_ms([r['ceiling'] for r in rs])} | 100 | | | | {len(rs)} |")
    for name in ROWS:
      got = [r['rows'][name] for r in rs if name in r['rows']]
      if got:
        lines.append(f"| {k} | {name} | {_ms([g['recall'] for g in got])} | {_ms([g['gap_closed'] for g in got])} | "
                     f"{_ms([g['retention_qa'] for g in got])} | {_ms([g['retention_bio'] for g in got])} | "
                     f"{_ms([g['seconds'] for g in got], 1.0)} | {len(got)} |")
  return '\n'.join(lines)


def table_sequential(runs: list[dict]) -> str:
  lines = ['| row | after sleep | recall, all people so far % | recall, first sleep\'s people % | '
           'retention QA % | retention bio-only % | seeds |', '|---|---:|---:|---:|---:|---:|---:|']
  for name in ROWS:
    got = [r['rows'][name]['curve'] for r in runs if name in r['rows']]
    if not got:
      continue
    for s in range(len(got[0])):
      pick = lambda key: [g[s][key] for g in got if len(g) > s]
      lines.append(f"| {name} | {s + 1} | {_ms(pick('recall_all'))} | {_ms(pick('recall_first'))} | "
                   f"{_ms(pick('retention_qa'))} | {_ms(pick('retention_bio'))} | {len(got)} |")
  return '\n'.join(lines)


def table_budget(runs: list[dict]) -> str:
  lines = ['| row | steps | recall % | retention QA % | retention bio-only % | seconds | seeds |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for name in ROWS:
    got = [r['rows'][name] for r in runs if name in r['rows']]
    if not got:
      continue
    for j, point in enumerate(got[0]):
      pick = lambda key: [g[j][key] for g in got]
      lines.append(f"| {name} | {point['steps']} | {_ms(pick('recall'))} | {_ms(pick('retention_qa'))} | "
                   f"{_ms(pick('retention_bio'))} | {_ms(pick('seconds'), 1.0)} | {len(got)} |")
  return '\n'.join(lines)


def plot(variant: str, runs: list[dict], path: str) -> None:
  from experiments.common import pyplot
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  if variant == 'one':   # one k: the recall / retention trade-off, one labelled point per row (mean, sd bars)
    names = [n for n in ROWS if any(n in r['rows'] for r in runs)]
    for ax, key, title in ((axes[0], 'retention_qa', 'retention, QA-trained pretraining people'),
                           (axes[1], 'retention_bio', 'retention, bio-only pretraining people')):
      for n in names:
        got = [r['rows'][n] for r in runs if n in r['rows']]
        x, y = (np.array([g[m] for g in got]) * 100 for m in ('recall', key))
        ax.errorbar(x.mean(), y.mean(), xerr=x.std(), yerr=y.std(), fmt='o', capsize=2)
        ax.annotate(n, (x.mean(), y.mean()), fontsize=7, xytext=(3, 3), textcoords='offset points')
      ax.set_xlabel('closed-book recall of the new person, held-out templates (%)')
      ax.set_ylabel('%')
      ax.set_title(title + f' (before: {100 * np.mean([r["before"][key] for r in runs]):.0f}%)', fontsize=9)
  elif variant == 'many':
    ks_ = sorted({r['k'] for r in runs})
    names = [n for n in ROWS if any(n in r['rows'] for r in runs)]
    for ax, key, title in ((axes[0], 'recall', 'closed-book recall, new people (held-out templates)'),
                           (axes[1], 'retention_bio', 'retention, bio-only pretraining people')):
      for n in names:
        ys = [np.mean([r['rows'][n][key] for r in runs if r['k'] == k and n in r['rows']]) * 100 for k in ks_]
        ax.plot(range(len(ks_)), ys, marker='o', label=n)
      ax.set_xticks(range(len(ks_)), [str(k) for k in ks_])
      ax.set_xlabel('people per sleep')
      ax.set_title(title, fontsize=9)
      ax.set_ylabel('%')
    axes[1].legend(fontsize=6, ncol=2)
  elif variant == 'sequential':
    for n in [n for n in ROWS if any(n in r['rows'] for r in runs)]:
      curves = [r['rows'][n]['curve'] for r in runs if n in r['rows']]
      x = np.arange(1, len(curves[0]) + 1)
      axes[0].plot(x, np.mean([[c['recall_first'] for c in cv] for cv in curves], 0) * 100, marker='o', label=n)
      axes[1].plot(x, np.mean([[c['retention_bio'] for c in cv] for cv in curves], 0) * 100, marker='o', label=n)
    axes[0].set_title("recall of the first sleep's people", fontsize=9)
    axes[1].set_title('retention, bio-only pretraining people', fontsize=9)
    for ax in axes:
      ax.set_xlabel('sleeps')
    axes[1].legend(fontsize=7)
  else:
    for n in [n for n in ROWS if any(n in r['rows'] for r in runs)]:
      got = [r['rows'][n] for r in runs if n in r['rows']]
      x = [p['steps'] for p in got[0]]
      axes[0].plot(x, np.mean([[p['recall'] for p in g] for g in got], 0) * 100, marker='o', label=n)
      axes[1].plot(x, np.mean([[p['retention_bio'] for p in g] for g in got], 0) * 100, marker='o', label=n)
    for ax, t in zip(axes, ('closed-book recall, new people', 'retention, bio-only pretraining people')):
      ax.set_xscale('log')
      ax.set_xlabel('update steps')
      ax.set_title(t, fontsize=9)
    axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


TABLES = {'one': table_rows, 'many': table_rows, 'sequential': table_sequential, 'budget': table_budget}
DEFAULT_ROWS = {
    'one': ROWS,
    'many': ('base', 'ft_bios', 'sft_teacher_qa', 'ks', 'ks_no_replay', 'sleep'),
    'sequential': ('ft_bios', 'ks', 'sleep', 'cms4'),
    'budget': ('ft_bios', 'ks'),
}


def report(workdir: str, variant: str, runs: list[dict], config) -> None:
  from experiments.common import save_results, write_table
  save_results(workdir, {'experiment': 'world', 'variant': variant, 'runs': runs}, config)
  split = config.world_sleep.split
  write_table(workdir, TABLES[variant](runs),
              f'World sleep, variant {variant}, {split} people, held-out question templates; mean ± sd over '
              f'{len({r["seed"] for r in runs})} seed(s). Generated by experiments/world.py.')
  plot(variant, runs, os.path.join(workdir, f'world_{variant}.png'))


def merge_runs(runs: list[dict]) -> list[dict]:
  """Runs of the same (seed, k) from several processes (e.g. the main rows and the ablations run apart) as one
  record each: their rows together, so a seed is counted once."""
  out = {}
  for r in runs:
    key = (r['seed'], r.get('k'))
    if key in out:
      out[key] = dict(out[key], rows={**out[key]['rows'], **r['rows']})
    else:
      out[key] = dict(r, rows=dict(r['rows']))
  return [out[k] for k in sorted(out, key=lambda k: (k[1] or 0, k[0]))]


def main(argv):
  del argv
  from experiments.common import checked, read_results
  workdir = _WORKDIR.value
  if _FROM.value:
    rs = read_results(_FROM.value, 'world', keys=('runs', 'variant'))
    report(workdir, rs[0]['variant'], merge_runs([r for x in rs for r in x['runs']]), _CONFIG.value)
    return
  config = checked(_CONFIG.value)
  variant = _VARIANT.value
  rows = tuple(_ROWS.value) or DEFAULT_ROWS[variant]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise SystemExit(f'error: unknown rows {unknown}; rows: {ROWS}')
  e = config.world_sleep
  wl = WorldLab(config)
  runs = []
  for seed in [int(s) for s in _SEEDS.value]:
    if variant == 'one':
      runs.append(run_one(wl, seed, rows, k=1))
    elif variant == 'many':
      for k in e.sizes:
        runs.append(run_one(wl, seed, rows, k=k))
    elif variant == 'sequential':
      runs.append(run_sequential(wl, seed, rows, e.n_sleeps, e.people))
    else:
      runs.append(run_budget(wl, seed, rows, e.budgets, e.people))
    report(workdir, variant, runs, config)   # after every seed: an interrupted run keeps what it measured


if __name__ == '__main__':
  define_flags()
  app.run(main)
