"""Dreaming's inner loop: all isolated copies in one vmapped jitted function vs a Python loop over the same dreams.

Both paths run the same jitted per-copy computation (`dream.inner_one`: `inner_steps` Adam steps of the new
experts on one dream, then tau = the probe NLL of the copy) over the same dreams, from the same state; the loop
calls it once per dream (plus tau of the original once), the vmapped path calls `dream.inner_vmapped` once. The
table also checks they agree, and splits one whole Dreaming round (generate, gradient selection, inner loop,
M-step) for the larger model. Median of --reps timed repetitions after a warm-up (compilation). Sizes: configs/
sleep.py (SmolLM2-135M, new rank-16 experts in the 15 level-0 layers) and its :smoke variant (tiny model).

  python -m experiments.benchmarks.dreaming --reps=3 --out=/tmp/dream_bench.json
  python -m experiments.benchmarks.dreaming --models=tiny --reps=2     # seconds, checks the script
"""
import json
import os
import platform

from absl import app, flags, logging

from experiments.benchmarks import timing


def define_flags():
  """The command-line flags, defined only when run as a program, so the suite can import this module."""
  flags.DEFINE_integer('reps', 3, 'Timed repetitions (median reported).')
  flags.DEFINE_integer('dreams', 8, 'Isolated copies (dreams) per inner loop.')
  flags.DEFINE_list('models', ['tiny', 'smollm2'], "'tiny' (configs/sleep.py:smoke) and/or 'smollm2'.")
  flags.DEFINE_string('out', '', 'Write the measurements as JSON here too.')
  flags.DEFINE_bool('round', True, 'Also split one whole Dreaming round (larger models only).')


def bench_model(name, reps, n_dreams, split_round=True):
  import jax
  import numpy as np
  from configs import sleep as sleep_config
  from sleep_jax import runtime
  from sleep_jax.data import documents
  from sleep_jax.phases import consolidate as ks
  from sleep_jax.phases import dream

  config = sleep_config.get_config('smoke' if name == 'tiny' else '')
  rt = runtime.Runtime(config)
  b = rt.b
  dr = rt.dreamer(rt.dream_config(n_dreams=n_dreams, top_k=n_dreams, n_random=0))
  dcfg = dr.dcfg
  layers = rt.layers()
  params, cms, index = ks.expand_student(b.params, b.cms, layers)
  view = ks.View(layers, True)
  task = dream.knowledge_task(documents.load_docs(config.knowledge, config.seed)[0], dcfg.probe_rows)
  f = dr.fns(view)
  ys, which = dr.generate(params, cms, task, jax.random.key(0))
  rows = jax.tree.map(lambda x: x[:, None], dr.dream_rows(task, ys, which, n_dreams))
  probe = dr.probe_rows(task)
  delta = dr.init_state(params, index, view)['delta']
  frozen = {'params': params, 'cms': cms, 'index': ks._index_arrays(index)}

  def vmapped():
    return jax.block_until_ready(f['inner'](delta, frozen, rows, probe))

  def loop():
    taus = [f['inner_one'](delta, frozen, jax.tree.map(lambda x: x[k], rows), probe)[0] for k in range(n_dreams)]
    return jax.block_until_ready((taus, f['tau'](delta, frozen, probe)))

  t_v, ts_v = timing.median_time(vmapped, reps)
  t_l, ts_l = timing.median_time(loop, reps)
  # Profile: the work both paths do (XLA's FLOP count) and the rate they reach
  one = jax.tree.map(lambda x: x[0], rows)
  flops_v = timing.compiled_flops(f['inner'], delta, frozen, rows, probe)
  flops_l = n_dreams * timing.compiled_flops(f['inner_one'], delta, frozen, one, probe) + \
      timing.compiled_flops(f['tau'], delta, frozen, probe)
  tau_v = np.asarray(vmapped()[0])
  tau_l = np.asarray([float(t) for t in loop()[0]])
  rec = {'model': name, 'dreams': n_dreams, 'inner_steps': dcfg.inner_steps,
         'dream_tokens': int(rows['targets'].shape[-1]), 'row_len': int(rows['s_tokens'].shape[-1]),
         'probe_rows': int(probe['targets'].shape[0]), 'vmapped_s': t_v, 'loop_s': t_l, 'speedup': t_l / t_v,
         'vmapped_all_s': ts_v, 'loop_all_s': ts_l, 'max_abs_tau_diff': float(np.abs(tau_v - tau_l).max()),
         'vmapped_gflop': flops_v / 1e9, 'loop_gflop': flops_l / 1e9,
         'vmapped_gflops': flops_v / t_v / 1e9, 'loop_gflops': flops_l / t_l / 1e9}
  if name != 'tiny' and split_round:   # one whole round, split (after a warm-up round)
    dr2 = rt.dreamer()
    st = dr2.init_state(params, index, view)
    st, _ = dr2.round(st, params, cms, index, view, task, jax.random.key(1))
    st, info = dr2.round(st, params, cms, index, view, task, jax.random.key(2))
    rec['round'] = {k: info.get(k, 0.0) for k in ('gen_s', 'select_s', 'inner_s', 'mstep_s')}
    rec['round']['config'] = {k: getattr(dr2.dcfg, k) for k in ('n_dreams', 'top_k', 'n_random', 'max_new_tokens',
                                                                 'inner_steps', 'mstep_steps')}
  return rec


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  recs = [bench_model(m, flags.FLAGS.reps, flags.FLAGS.dreams, flags.FLAGS.round) for m in flags.FLAGS.models]
  peak = timing.matmul_peak_gflops(flags.FLAGS.reps)
  machine = f'{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} {jax.default_backend()}'
  lines = [f'Dreaming inner loop, {flags.FLAGS.dreams} isolated copies ({machine}); median of {flags.FLAGS.reps}; '
           f'float32 matmul peak measured in this run: {peak:.0f} GFLOP/s',
           '', '| model | dreams x inner steps | row tokens | vmapped (s) | Python loop (s) | speedup | '
           'GFLOP (vmapped / loop) | GFLOP/s (vmapped / loop) | % of matmul peak (vmapped / loop) | '
           'max abs tau diff |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in recs:
    r['matmul_peak_gflops'] = peak
    lines.append(f"| {r['model']} | {r['dreams']} x {r['inner_steps']} | {r['row_len']} | {r['vmapped_s']:.3f} | "
                 f"{r['loop_s']:.3f} | {r['speedup']:.2f}x | {r['vmapped_gflop']:.1f} / {r['loop_gflop']:.1f} | "
                 f"{r['vmapped_gflops']:.1f} / {r['loop_gflops']:.1f} | {100 * r['vmapped_gflops'] / peak:.0f}% / "
                 f"{100 * r['loop_gflops'] / peak:.0f}% | {r['max_abs_tau_diff']:.1e} |")
  for r in recs:
    if 'round' in r:
      rd = r['round']
      tot = sum(rd[k] for k in ('gen_s', 'select_s', 'inner_s', 'mstep_s'))
      lines += ['', f"One Dreaming round on one passage, {r['model']} ({rd['config']}): {tot:.1f} s",
                '', '| part | seconds | share |', '|---|---:|---:|']
      for k, lab in (('gen_s', 'generate dreams (sampler, random experts)'),
                     ('select_s', 'gradient selection (vmapped per-dream grads)'),
                     ('inner_s', 'inner loop (vmapped copies)'), ('mstep_s', 'ReST-EM M-step')):
        lines.append(f'| {lab} | {rd[k]:.2f} | {100 * rd[k] / tot:.0f}% |')
  print('\n'.join(lines))
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, 'w') as fh:
      json.dump({'machine': machine, 'results': recs}, fh, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
