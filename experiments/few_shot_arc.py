"""Few-shot ARC (PAPER sec. 5 after SEAL): does a sleep that learns *which dreams help* make better self-edits?

Data: the curated small-grid ARC-AGI-1 subset (sleep_jax/data/arc.py). The dream generator trains on the
`arc.n_train` smallest 'train' tasks; each seed draws `arc.n_heldout` held-out tasks (seeded) from the
`arc.heldout_pool` smallest tasks of `arc.split` ('test' for the final numbers; anything tuned is tuned on
'validation'). Each held-out task is answered from the chat prompt `answer_prompt` (a fixed instruction, then
arc.task_prompt: demonstrations + test input), greedily; success = exact match of the first predicted grid
(arc.grid_exact_match). Rows:

  icl        in-context learning: the pre-sleep model answers from the demonstrations; success 0/1 per task
  ttt        test-time training: a new expert per receiver layer fine-tuned (`arc.ttt_steps` full-batch steps) on
             the leave-one-out demonstrations (each demo's output given the others + its input, in the answer
             format), then the answer; 0/1 per task
  seal       SEAL-style self-edits, no consolidation: `arc.dreams_per_task` dreams (arc_task: new / rotated /
             recoloured demonstrations) from the pre-sleep model, each applied alone to a fresh new expert by
             `dream.inner_steps` SFT steps (the Dreaming inner loop), each copy answers; success = share correct
  sleep      ReST-EM Dreaming on the training tasks first (`dream.rounds` rounds: generate, gradient selection,
             isolated inner fine-tunes rewarded by the leave-one-out tau, M-step), then exactly the `seal`
             protocol from the trained generator and its trained expert
  sleep_gen  diagnostic: the trained generator answers directly (no held-out dreams)

All rows fine-tune the same parameters (one low-rank expert per receiver layer; nothing else moves). A 135M model
scores ~0 exact matches on ARC, so two softer diagnostics tell methods apart: cell accuracy of the predicted grid
(% of cells right when its shape is right, else 0) and the per-token NLL of the correct test output given the
prompt (lower is better). results.json keeps every answer, dream and reward.

  # the full run (docs/results.md): all seeds in one process, 40 min on the 2-core machine beside another run
  python -m experiments.few_shot_arc --workdir=runs/few_shot_arc/all --seeds=0,1,2
  # or one process per seed, then merged:
  python -m experiments.few_shot_arc --workdir=runs/few_shot_arc \\
      --from_results=runs/few_shot_arc/s0/results.json,runs/few_shot_arc/s1/results.json
  python -m experiments.few_shot_arc --config=configs/few_shot_arc.py:smoke --workdir=/tmp/arc_smoke --seeds=0,1
Overrides: --config.arc.split=validation, --config.arc.n_heldout=4, --config.sleep.dream.rounds=2, ...
SEAL's own split (--config.arc.split=seal: its 11 ARC-AGI-1 training tasks train the generator, its 8 evaluation
tasks (9 test inputs) are the held-out pool; sleep_jax/data/arc_seal_split.json, docs/paper_scale/squad.md).
"""
import functools
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

def define_flags():
  """The command-line flags, defined only when run as a program: importing this module (tests) defines none, so
  it can share a process with other experiments' modules (absl refuses a flag name defined twice)."""
  global _CONFIG, _WORKDIR, _SEEDS, _FROM
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/few_shot_arc.py', 'Experiment config.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where results go.', required=True)
  _SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (held-out draw, dream sampling, batch orders).')
  _FROM = flags.DEFINE_list('from_results', [], 'Only report: merge these results.json files (one per seed, run '
                            'in parallel) into one table and plot in --workdir.')

ROWS = ('icl', 'ttt', 'seal', 'sleep', 'sleep_gen')
LABELS = {'icl': 'in-context learning', 'ttt': 'test-time training (LOO demos)',
          'seal': 'SEAL-style self-edits (no consolidation)', 'sleep': 'sleep (ReST-EM Dreaming, then self-edits)',
          'sleep_gen': 'sleep, trained generator answers directly (diagnostic)'}


# ---------------------------------------------------------------------------------------------- protocol pieces
def cell_accuracy(pred_text: str, target) -> float:
  """Share of cells equal to the target when the prediction's first grid has the target's shape, else 0."""
  from sleep_jax.data import arc
  try:
    pred = arc.text_to_grid(pred_text.strip().split('\n\n')[0])
  except ValueError:
    return 0.0
  if len(pred) != len(target) or len(pred[0]) != len(target[0]):
    return 0.0
  return sum(p == t for pr, tr in zip(pred, target) for p, t in zip(pr, tr)) / (len(target) * len(target[0]))


INSTRUCTION = ('Each example maps an input grid to an output grid (one line of digits per row). '
               'Answer with the test output grid only.')


def answer_prompt(task: dict) -> str:
  """The held-out question: a fixed instruction (chosen a priori: without it SmolLM2 answers in prose), then
  arc.task_prompt (demonstrations, test input, 'Output:')."""
  from sleep_jax.data import arc
  return f'{INSTRUCTION}\n\n{arc.task_prompt(task)}'


def loo_pairs(task: dict) -> list[tuple[str, str]]:
  """Test-time training pairs: each demonstration as the test of a task made of the others (answer format)."""
  from sleep_jax.data import arc
  demos = task['train']
  if len(demos) < 2:
    raise ValueError(f'leave-one-out needs >= 2 demonstrations, task has {len(demos)}')
  out = []
  for i, d in enumerate(demos):
    sub = {'train': [x for j, x in enumerate(demos) if j != i], 'test': [d]}
    out.append((answer_prompt(sub), arc.task_target(sub)))
  return out


def draw_heldout(pool_ids, n: int, seed: int) -> list[str]:
  """The seed's held-out tasks: `n` distinct ids of the pool, independent of the pool's order. Seeds 0, 1, 2, ...
  take consecutive blocks of ONE fixed shuffle of the pool, so different seeds evaluate different tasks until the
  pool is used up (then it wraps). Independent per-seed draws had seeds 0 and 1 test the same task (1 of 10)."""
  import numpy as np
  ids = sorted(pool_ids)
  if not 1 <= n <= len(ids):
    raise ValueError(f'cannot draw {n} held-out tasks from a pool of {len(ids)}')
  perm = np.random.default_rng(0xa7c).permutation(len(ids))
  start = seed * n
  return [ids[i] for i in sorted(perm[(start + k) % len(ids)] for k in range(n))]


def success(rows_of_seed: list[dict], row: str) -> float:
  """% success over a seed's held-out tasks: each task's share of correct answers (1 answer, or one per dream)."""
  import numpy as np
  return 100.0 * float(np.mean([np.mean([a['correct'] for a in t[row]['answers']]) for t in rows_of_seed]))


def inner_deltas(delta0, frozen, rows_K, *, model, view, tx, steps: int):
  """K isolated copies of `delta0`, copy k fine-tuned `steps` SFT steps on rows_K[k] (memory format); returns
  (deltas [K, ...], losses [K, steps]): Dreaming's `inner_copy`, vmapped, keeping the copies instead of tau."""
  import jax
  from sleep_jax.phases import dream
  one = functools.partial(dream.inner_copy, frozen=frozen, model=model, view=view, tx=tx, steps=steps, unroll=1)
  return jax.vmap(lambda row: one(delta0, row=row))(rows_K)


class Arc:
  """The protocol on one built model (a common.Lab): every row of every seed reuses its compiled functions."""

  def __init__(self, config):
    import jax
    import numpy as np
    from experiments.common import Lab
    from sleep_jax.phases import consolidate as ks
    from sleep_jax.phases import dream
    self.config, self.c = config, config.arc
    self.lab = lab = Lab(config)
    self.layers = lab.layers()
    self.view = ks.View(self.layers, True)
    self.sp, self.scms, self.index = ks.expand_student(lab.params, lab.cms, self.layers)
    self.trainer = lab.rt.dreamer(lab.rt.dream_config(enabled=True))   # ReST-EM on the training tasks
    n = self.c.dreams_per_task
    self.dreamer = lab.rt.dreamer(lab.rt.dream_config(enabled=True, n_dreams=n, top_k=min(self.trainer.dcfg.top_k, n),
                                                      n_random=0))   # held-out self-edits
    self.frozen = {'params': self.sp, 'cms': self.scms, 'index': ks._index_arrays(self.index)}
    self.delta0 = self.dreamer.init_state(self.sp, self.index, self.view)['delta']
    kw = dict(model=lab.b.model, view=self.view, tx=dream.inner_optimizer(self.dreamer.dcfg))
    self._inner = jax.jit(functools.partial(inner_deltas, steps=self.dreamer.dcfg.inner_steps, **kw))
    self._ttt = jax.jit(functools.partial(inner_deltas, steps=self.c.ttt_steps, **kw))
    self._merge = self.dreamer.fns(self.view)['merge']
    if self.c.split == 'seal':   # SEAL's own split (arc.seal_tasks): its 11 training, 8 evaluation tasks
      self.train_tasks = self._seal_tasks('train', self.c.n_train)
      self.pool = self._seal_tasks('eval', 0)
    else:
      self.train_tasks = self._tasks('train', self.c.n_train, allow_test=False)
      self.pool = self._tasks(self.c.split, self.c.heldout_pool, allow_test=self.c.split == 'test', fit=True)
    if len(self.pool) < self.c.n_heldout:
      raise ValueError(f'arc.heldout_pool gives {len(self.pool)} tasks that fit arc.max_answer_tokens='
                       f'{self.c.max_answer_tokens}; arc.n_heldout={self.c.n_heldout}')
    self.np = np

  def _answer_tokens(self, task) -> int:
    from sleep_jax.data import arc
    return len(self.lab.tok.encode(arc.task_target(task))) + self.c.answer_slack

  def _tasks(self, split, n, allow_test, fit=False) -> dict:
    from sleep_jax.data import arc
    tasks = arc.subset(split, n=None if fit else n, allow_test=allow_test)
    if fit:
      tasks = {k: t for k, t in tasks.items() if self._answer_tokens(t) <= self.c.max_answer_tokens}
      tasks = dict(list(tasks.items())[:n])
    if n and len(tasks) < n:
      raise ValueError(f'ARC split {split!r} has only {len(tasks)} usable tasks, asked for {n}')
    return tasks

  def _seal_tasks(self, which: str, n: int) -> dict:
    """SEAL's tasks in SEAL's order, the first `n` (0 = all). The held-out pool is SEAL's, whole: a task whose
    answer needs more than arc.max_answer_tokens is an error naming the value that fits, not silently dropped."""
    from sleep_jax.data import arc
    tasks = arc.seal_tasks(which)
    tasks = dict(list(tasks.items())[:n or None])
    need = {k: self._answer_tokens(t) for k, t in tasks.items()}
    long = {k: v for k, v in need.items() if v > self.c.max_answer_tokens}
    if which == 'eval' and long:
      raise ValueError(f"arc.split='seal': held-out tasks {sorted(long)} need answers of up to {max(long.values())} "
                       f'tokens (target + arc.answer_slack) > arc.max_answer_tokens={self.c.max_answer_tokens}; set '
                       f'--config.arc.max_answer_tokens={max(need.values())} and a sampling.gen_buckets entry >= it '
                       '(docs/paper_scale/squad.md has a command)')
    return tasks

  def heldout(self, seed: int) -> list[str]:
    return draw_heldout(list(self.pool), self.c.n_heldout, seed)

  # -------------------------------------------------------------------------------------------- evaluation
  def answer(self, params, cms, task) -> dict:
    """Greedy answer to the few-shot prompt, exact match, cell accuracy and the target's per-token NLL."""
    from sleep_jax.data import arc
    prompt, target = answer_prompt(task), arc.task_target(task)
    text = self.lab.generate(params, cms, [prompt], max_new_tokens=self._answer_tokens(task))[0]
    grid = task['test'][0]['output']
    n_tok = len(self.lab.tok.encode(target))
    nll = -float(self.lab.score(params, cms, prompt, [target])[0]) / n_tok
    return {'text': text, 'correct': bool(arc.grid_exact_match(text, grid)),
            'cell_acc': cell_accuracy(text, grid), 'nll': nll}

  def _rows(self, prompts_targets, n_rows):
    """Memory-format rows (chat prompt -> target + EOS) for inner_deltas."""
    from sleep_jax.phases import dream
    tok = self.lab.tok
    prompts = [self.lab.chat(p) for p, _ in prompts_targets]
    ys = [tok.encode(t) + [tok.eos_id] for _, t in prompts_targets]
    from sleep_jax.sampling import bucket
    n_gen = bucket(max(len(y) for y in ys), self.config.sampling.prompt_buckets, 'ttt target', 'prompt')
    return dream.completion_rows(prompts, prompts, ys, pad_id=self.lab.sampler.pad_id, n_rows=n_rows,
                                 buckets=self.config.sampling.prompt_buckets, n_gen=n_gen)

  def ttt(self, task, seed: int) -> dict:
    del seed   # full-batch steps from the zero-B expert: deterministic
    import jax
    rows = self._rows(loo_pairs(task), self.dreamer._rows(len(task['train'])))
    deltas, losses = self._ttt(self.delta0, self.frozen, self.dreamer._put(jax.tree.map(lambda x: x[None], rows), 1))
    d = jax.tree.map(lambda x: x[0], deltas)
    a = self.answer(self._merge(self.sp, d, self.frozen['index']), self.scms, task)
    return {'answers': [a], 'loss': self.np.asarray(losses)[0].tolist()}

  def self_edits(self, task, tid, delta0, seed: int) -> dict:
    """`dreams_per_task` dreams from the model with `delta0`, each applied alone to a copy of delta0 by the inner
    loop; every copy answers. The SEAL protocol (seal: delta0 = the fresh expert; sleep: the trained one)."""
    import jax
    from sleep_jax.phases import dream
    dt = dream.arc_task(task, tid)
    gen_params = self._merge(self.sp, delta0, self.frozen['index'])
    ys, which = self.dreamer.generate(gen_params, self.scms, dt, jax.random.key(seed),
                                      random_expert=self.c.heldout_random_expert)
    del gen_params
    K = self.dreamer._rows(len(ys))
    rows = self.dreamer.dream_rows(dt, [y if y else [self.lab.tok.eos_id] for y in ys], which, K)
    deltas, losses = self._inner(delta0, self.frozen, self.dreamer._put(jax.tree.map(lambda x: x[:, None], rows), 0))
    answers = []
    for k in range(len(ys)):
      d = jax.tree.map(lambda x: x[k], deltas)
      answers.append(self.answer(self._merge(self.sp, d, self.frozen['index']), self.scms, task))
    return {'answers': answers, 'dreams': [self.lab.tok.decode(y) for y in ys], 'requests': list(which),
            'loss': self.np.asarray(losses)[:len(ys)].tolist()}

  def sleep(self, seed: int):
    """ReST-EM Dreaming over the training tasks into the new expert: (trained delta, per-round history)."""
    import jax
    from sleep_jax.phases import dream
    tasks = [dream.arc_task(t, tid) for tid, t in self.train_tasks.items()]
    state, hist = self.trainer.run(self.sp, self.scms, self.index, self.view, tasks, jax.random.key(seed),
                                   progress_desc=f'seed {seed} sleep')
    return state['delta'], hist

  # -------------------------------------------------------------------------------------------- one seed
  def run_seed(self, seed: int, log=print) -> tuple[list[dict], dict]:
    """The sleep on the training tasks, then every row on each held-out task of `seed`: (one record per task,
    the sleep's record)."""
    import jax
    lab = self.lab
    recs = []
    ids = self.heldout(seed)
    pool = self.pool
    t0 = time.perf_counter()
    delta_s, hist = self.sleep(seed)
    sleep_s = time.perf_counter() - t0
    log(f'seed {seed} sleep on {len(self.train_tasks)} training tasks: reward rate per round '
        f'{[round(h["reward_rate"], 2) for h in hist]} ({sleep_s:.0f}s)')
    slept = self._merge(self.sp, delta_s, self.frozen['index'])
    for t_i, tid in enumerate(ids):
      task = pool[tid]
      rec = {'seed': seed, 'task': tid}
      for row in ROWS:
        t1 = time.perf_counter()
        s = jax.random.fold_in(jax.random.key(seed), t_i)
        s = int(jax.random.randint(jax.random.fold_in(s, ROWS.index(row)), (), 0, 2 ** 30))
        if row == 'icl':
          r = {'answers': [self.answer(lab.params, lab.cms, task)]}
        elif row == 'ttt':
          r = self.ttt(task, s)
        elif row == 'seal':
          r = self.self_edits(task, tid, self.delta0, s)
        elif row == 'sleep':
          r = self.self_edits(task, tid, delta_s, s)
        else:
          r = {'answers': [self.answer(slept, self.scms, task)]}
        r['seconds'] = time.perf_counter() - t1
        rec[row] = r
        a = r['answers']
        log(f"seed {seed} {tid} {row}: correct {sum(x['correct'] for x in a)}/{len(a)} "
            f"cell acc {100 * self.np.mean([x['cell_acc'] for x in a]):.0f}% "
            f"target NLL {self.np.mean([x['nll'] for x in a]):.3f} ({r['seconds']:.0f}s) "
            f"first answer {a[0]['text'][:40]!r}")
      recs.append(rec)
    return recs, {'seed': seed, 'history': hist, 'sleep_s': sleep_s}


# ---------------------------------------------------------------------------------------------- reporting
def per_seed(rows: list[dict]) -> dict:
  """row -> metric -> [one value per seed] (success %, cell accuracy %, target NLL), seeds sorted."""
  import numpy as np
  seeds = sorted({r['seed'] for r in rows})
  names = [n for n in ROWS if all(n in r for r in rows)]
  out = {}
  for n in names:
    out[n] = {'success': [], 'cell_acc': [], 'nll': []}
    for s in seeds:
      rs = [r for r in rows if r['seed'] == s]
      out[n]['success'].append(success(rs, n))
      out[n]['cell_acc'].append(100 * float(np.mean([np.mean([a['cell_acc'] for a in r[n]['answers']]) for r in rs])))
      out[n]['nll'].append(float(np.mean([np.mean([a['nll'] for a in r[n]['answers']]) for r in rs])))
  return out


def report(rows: list[dict], sleeps: list[dict], workdir: str, footer: str) -> str:
  """table.md and arc_success.png in `workdir`; returns the table."""
  import numpy as np
  from experiments.common import mean_sd, pyplot, write_table
  ps = per_seed(rows)
  seeds = sorted({r['seed'] for r in rows})
  n_tasks = len({r['task'] for r in rows})
  lines = ['| method | success % (exact grid) | cell accuracy % (diagnostic) | target NLL / token (diagnostic) |',
           '|---|---:|---:|---:|']
  for n, m in ps.items():
    lines.append(f"| {LABELS[n]} | {mean_sd(m['success'])} | {mean_sd(m['cell_acc'])} | "
                 f"{mean_sd(m['nll'], '.3f')} |")
  rr = [[h['reward_rate'] for h in s['history']] for s in sleeps]
  if rr:
    k = min(len(r) for r in rr)
    a = np.asarray([r[:k] for r in rr])
    lines += ['', '| sleep on the training tasks | ' + ' | '.join(f'round {i + 1}' for i in range(k)) + ' |',
              '|---|' + '---:|' * k,
              '| ReST-EM reward rate (kept dreams that lowered the leave-one-out NLL) | '
              + ' | '.join(mean_sd(a[:, i], '.2f') for i in range(k)) + ' |']
  table = '\n'.join(lines)
  write_table(workdir, table, footer + f'\nmean ± sd over seeds {",".join(map(str, seeds))}; {n_tasks} distinct '
              'held-out tasks; success per task = share of its answers (1, or one per dream) with an exact grid.')
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  names = list(ps)
  x = np.arange(len(names))
  for ax, key, ylab in ((axes[0], 'success', 'success % (exact grid match)'),
                        (axes[1], 'cell_acc', 'cell accuracy % (diagnostic)')):
    vals = [np.asarray(ps[n][key]) for n in names]
    ax.bar(x, [v.mean() for v in vals], yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
           color=['tab:gray', 'tab:orange', 'tab:purple', 'tab:blue', 'tab:cyan'][:len(names)], capsize=3)
    for i, v in enumerate(vals):
      ax.scatter(np.full(len(v), i), v, color='k', s=10, zorder=3)
    ax.set_xticks(x, names)
    ax.set_ylabel(ylab)
    ax.set_ylim(0, max(5.0, 1.15 * max(float(v.max()) for v in vals)))   # an all-zero row still shows its axis
  fig.suptitle(f'Few-shot ARC, {len(seeds)} seeds (dots), {n_tasks} held-out tasks', fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'arc_success.png'), dpi=120)
  plt.close(fig)
  return table


def merge_main(paths, workdir):
  from experiments.common import read_results, write_json
  rows, sleeps, splits = [], [], set()
  for r in read_results(paths, 'few_shot_arc', ('rows', 'sleeps', 'config')):
    rows += r['rows']
    sleeps += r['sleeps']
    splits.add(r['config']['arc']['split'])
  seeds = [s['seed'] for s in sleeps]
  if len(seeds) != len(set(seeds)):
    raise ValueError(f'--from_results: seeds repeat across files: {seeds}')
  if len(splits) != 1:
    raise ValueError(f'--from_results: files mix splits {sorted(splits)}')
  from sleep_jax import results
  write_json(os.path.join(workdir, 'results.json'),
             {'rows': rows, 'sleeps': sleeps, 'merged_from': list(paths), **results.versions()})
  report(rows, sleeps, workdir, f'split {splits.pop()}; merged from {", ".join(paths)}')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _FROM.value:
    return merge_main(_FROM.value, _WORKDIR.value)
  from experiments.common import save_results
  from experiments.common import checked
  config = checked(_CONFIG.value)
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise ValueError(f'--seeds must be integers, got {_SEEDS.value}') from None
  if not seeds:
    raise ValueError('--seeds is empty')
  t_all = time.perf_counter()
  exp = Arc(config)
  print(f'built in {time.perf_counter() - t_all:.0f}s; receiver layers {exp.layers}; training tasks '
        f'{list(exp.train_tasks)}; held-out pool ({config.arc.split}) {list(exp.pool)}', flush=True)
  rows, sleeps = [], []
  log = lambda s: print(s, flush=True)
  for seed in seeds:
    recs, sl = exp.run_seed(seed, log)
    rows += recs
    sleeps.append(sl)
    save_results(_WORKDIR.value, {'rows': rows, 'sleeps': sleeps, 'split': config.arc.split,
                                  'train_tasks': list(exp.train_tasks)}, config)
  report(rows, sleeps, _WORKDIR.value, f'split {config.arc.split}; {time.perf_counter() - t_all:.0f}s wall '
         f'for seeds {",".join(map(str, seeds))} in one process')


if __name__ == '__main__':
  define_flags()
  app.run(main)
