"""Where the time of one Knowledge Seeding update goes: sampling, teacher scoring, the student update.

One update (configs/sleep.py defaults: 1 prompt x (1 teacher sample + G=4 student completions), 32 new tokens,
SmolLM2-135M with a new rank-16 expert in each of the 15 level-0 layers) is split into
  student sampling    the on-policy completions (the one Sampler)
  rewards             r_abs (+ the judge's r_sem when gamma > 0), host side
  teacher scoring     the teacher's forward over its rows (context + prompt + completion), timed alone
  update step         the whole jitted step: teacher forward + student forward/backward + AdamW on the expert
  (student fwd/bwd + optimizer = update step - teacher scoring)
plus the once-per-sleep teacher sampling. Median of --reps timed repetitions after a warm-up (compilation).

  python -m experiments.benchmarks.consolidation --reps=3
"""
import os

from absl import app, flags, logging

from experiments.benchmarks import timing


def define_flags():
  """The command-line flags, defined only when run as a program, so the suite can import this module."""
  flags.DEFINE_integer('reps', 3, 'Timed repetitions (median reported).')
  flags.DEFINE_bool('smoke', False, 'Tiny random model (checks the script runs).')


def _median_time(fn, reps):
  return timing.median_time(fn, reps)[0]


def setup(smoke: bool, eos_ids=None) -> dict:
  """One Knowledge Seeding update's inputs on configs/sleep.py (or :smoke): the teacher, the student with a new
  expert in each receiver layer, memory-buffer items, teacher samples, a fresh state and one batch. `eos_ids`
  replaces the sampler's stop tokens (benchmarks pass [-1] so every completion has max_new_tokens tokens)."""
  import jax
  from configs import sleep as sleep_config
  from sleep_jax import runtime
  from sleep_jax.data import documents
  from sleep_jax.phases import consolidate as ks

  config = sleep_config.get_config('smoke' if smoke else '')
  rt = runtime.Runtime(config, eos_ids=eos_ids)
  b, tok, sampler, seeder = rt.b, rt.tokenizer, rt.sampler, rt.seeder()
  kcfg, judge = seeder.kcfg, seeder.judge
  layers = rt.layers()
  sp, cms, index = ks.expand_student(b.params, b.cms, layers)
  view = ks.View(layers, True)
  teacher, student = {'params': b.params, 'cms': b.cms}, {'params': sp, 'cms': cms}
  docs = documents.load_docs(config.knowledge, config.seed)[:1]
  items = ks.context_items(tok, docs, tuple(config.sleep.templates), 0, config.sleep.prefix_prompts)
  items = items[:kcfg.prompts_per_step]
  samples = seeder.teacher_samples(teacher, items, jax.random.key(0))
  state = ks.init_state(sp, index, view, seeder.tx)
  merged = ks.commit(sp, state, index, view)
  batch, _ = seeder.step_batch(items, samples, merged, cms, teacher, jax.random.key(1))
  cuts = [len(d) // 4 for d in samples]
  prompts = [it.student + d[:c] for it, d, c in zip(items, samples, cuts) for _ in range(kcfg.group_size)]
  return dict(config=config, b=b, sampler=sampler, kcfg=kcfg, judge=judge, seeder=seeder, layers=layers, view=view,
              index=index, cms=cms, teacher=teacher, student=student, items=items, samples=samples, state=state,
              merged=merged, batch=jax.device_put(batch), prompts=prompts,
              frozen={'teacher': teacher, 'student': student, 'index': ks._index_arrays(index)})


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  from sleep_jax.phases import consolidate as ks

  S = setup(flags.FLAGS.smoke)
  b, sampler, kcfg, seeder, judge = (S[k] for k in ('b', 'sampler', 'kcfg', 'seeder', 'judge'))
  teacher, items, samples, state, merged, cms = (S[k] for k in ('teacher', 'items', 'samples', 'state', 'merged',
                                                                'cms'))
  frozen, view, batch, prompts = S['frozen'], S['view'], S['batch'], S['prompts']
  reps = flags.FLAGS.reps

  t_teacher_sample = _median_time(lambda: seeder.teacher_samples(teacher, items, jax.random.key(0)), reps)

  # step_batch = student sampling + rewards; time sampling alone with the same prompts to split them.
  t_batch = _median_time(lambda: seeder.step_batch(items, samples, merged, cms, teacher, jax.random.key(1)), reps)
  t_sample = _median_time(lambda: sampler(merged, prompts, max_new_tokens=kcfg.max_new_tokens, rng=jax.random.key(2),
                                          temperature=kcfg.temperature, cms=cms), reps)
  N = batch['targets'].shape[1]
  score = jax.jit(lambda p, c, t, v: ks._forward_tail(b.model, p, c, t, v, N + 1)[:, :N].sum())
  t_score = _median_time(lambda: score(teacher['params'], teacher['cms'], batch['t_tokens'],
                                       batch['t_valid']).block_until_ready(), reps)
  update = seeder.update_fn(view)

  def one_update():
    nonlocal state
    state, m = update(state, frozen, batch)
    jax.block_until_ready(m)

  t_update = _median_time(one_update, reps)
  t_rewards = max(t_batch - t_sample, 0.0)
  total = t_batch + t_update
  rows = [('teacher sampling (once per sleep, %d prompt(s))' % len(items), t_teacher_sample, None),
          ('student sampling (%d completions x %d tokens)' % (len(prompts), kcfg.max_new_tokens), t_sample, total),
          ('rewards (r_abs%s) + batch assembly' % (' + judge' if judge else ''), t_rewards, total),
          ('teacher scoring (%d rows x %d tokens, forward)' % batch['t_tokens'].shape, t_score, total),
          ('student forward/backward + AdamW (update - teacher)', max(t_update - t_score, 0.0), total),
          ('whole update step (jitted)', t_update, total),
          ('one Knowledge Seeding update in all', total, total)]
  print(f'\nKnowledge Seeding update, {b.cfg.num_params() / 1e6:.0f}M params, {jax.device_count()} '
        f'{jax.default_backend()} device(s), {os.cpu_count()} CPUs, median of {reps}\n')
  print('| part | seconds | share of an update |')
  print('|---|---:|---:|')
  for name, t, tot in rows:
    print(f'| {name} | {t:.2f} | {"" if tot is None else f"{100 * t / tot:.0f}%"} |')


if __name__ == '__main__':
  define_flags()
  app.run(main)
