"""Long-horizon memory experiment: window cutting, the CMS sleep schedule, answer recall, the per-seed table, and
the smoke run end to end (tiny random model)."""
import json
import os
import subprocess
import sys

import pytest

from experiments import long_horizon_memory as E
from sleep_jax.data import long_horizon as H

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('m', [2, 4, 5])
def test_cut_windows_exact_count_balanced_and_needles_whole(m):
  it = H.make_item('mk_niah', 'validation', 1, window=128, multiplier=m, depths=[0.1, 0.5, 0.9], n_keys=3)
  ws = E.cut_windows(it['stream'], m, H.approx_tokens)
  assert len(ws) == m
  assert ' '.join(' '.join(ws).split()) == ' '.join(it['stream'].split())     # nothing lost, nothing added
  sizes = [H.approx_tokens(w) for w in ws]
  assert max(abs(s - 128) for s in sizes) < 80, sizes                     # cut near k/m of the tokens
  qs = E.needle_questions(it, ws)
  assert [q['window'] for q in qs] == sorted(q['window'] for q in qs)
  for q in qs:
    assert q['answer'] in ws[q['window']] and all(q['answer'] not in w for i, w in enumerate(ws) if i != q['window'])
  assert qs[0]['window'] == 0 and qs[-1]['window'] == m - 1                 # depth 0.1 dropped, 0.9 in context
  with pytest.raises(ValueError):
    E.cut_windows('One sentence only.', 2, H.approx_tokens)


def test_sleep_schedule_against_enumeration():
  # Independent reference: level l fires at drops t with t % 2^l == 0, on windows t-2^l .. t-1.
  for d in range(0, 9):
    for L in (1, 2, 3):
      want = [(t, l, list(range(t - 2 ** l, t))) for t in range(1, d + 1) for l in range(L) if t % 2 ** l == 0]
      assert E.sleep_schedule(d, L, 2) == want
      assert E.sleeps_per_level(d, L, 2) == [d // 2 ** l for l in range(L)]
  # Every dropped window is consolidated by every level that fired over it, each window at most once per level.
  sched = E.sleep_schedule(4, 3, 2)
  for l in range(3):
    ws = [w for _, lv, s in sched if lv == l for w in s]
    assert ws == sorted(set(ws)) == list(range(4))
  assert [g[0] for g in E.level_groups(30, 3, 2)] == [0, 10, 20]
  assert sum(len(g) for g in E.level_groups(30, 2, 2)) == 30
  with pytest.raises(ValueError):
    E.sleep_schedule(3, 0, 2)


def test_recall_and_per_seed_table():
  assert E.recall('1234567', 'The number is 1234567.')
  assert not E.recall('1234567', 'The number is 12345678.')
  assert not E.recall('1234567', 'I do not know.')
  rows = []
  # seed 0: 1/2 right at m=2, 2/2 at m=4; seed 1: 0/2 and 1/2  ->  m=2: [50, 0], m=4: [100, 50]
  for seed, m, ok in [(0, 2, [1, 0]), (0, 4, [1, 1]), (1, 2, [0, 0]), (1, 4, [0, 1])]:
    for i, c in enumerate(ok):
      rows.append({'seed': seed, 'multiplier': m, 'method': 'icl', 'correct': bool(c), 'depth': 0.1 + 0.8 * i,
                   'window': i * (m - 1), 'key': f'k{i}', 'stream': f's{seed}{m}'})
  assert E.per_seed(rows, 'icl', 'multiplier') == {2: [50.0, 0.0], 4: [100.0, 50.0]}
  table = E.summarize(rows, ['icl'])
  # all: seed 0 3/4, seed 1 1/4; dropped windows only (window < m - 1, the i = 0 needles): seed 0 2/2, seed 1 0/2
  assert '| icl | 25.0 ± 35.4 | 75.0 ± 35.4 | 50.0 ± 35.4 | 50.0 ± 70.7 |' in table


def test_merge_runs_split_by_method(tmp_path):
  """The full run splits the rows over two processes: the merge is their union, in the canonical row order."""
  cfg = {'lhm': {'levels': [1, 2], 'split': 'test', 'window': 128, 'depths': [0.1, 0.9]}, 'sleep': {'ks': {'steps': 2}}}
  def row(meth, seed, ok):
    return {'seed': seed, 'multiplier': 2, 'method': meth, 'correct': ok, 'depth': 0.1, 'window': 0, 'key': 'k',
            'stream': f's{seed}', 'probe_nll': 1.0, 'seconds': 1.0}
  paths = []
  for name, meths in [('a', ['sleep_L2']), ('b', ['icl', 'sleep_L1'])]:
    p = tmp_path / name / 'results.json'
    p.parent.mkdir()
    p.write_text(json.dumps({'rows': [row(m, s, s == 0) for m in meths for s in (0, 1)], 'methods': meths,
                             'streams': [{'seed': s, 'id': f's{s}'} for s in (0, 1)], 'seconds': 5, 'config': cfg}))
    paths.append(str(p))
  E.merge_main(paths, str(tmp_path / 'm'))
  res = json.loads((tmp_path / 'm' / 'results.json').read_text())
  assert res['methods'] == ['icl', 'sleep_L1', 'sleep_L2'] and len(res['streams']) == 2
  table = (tmp_path / 'm' / 'table.md').read_text()
  for m in res['methods']:
    assert f'| {m} | 50.0 ± 70.7 |' in table


def test_smoke_run_end_to_end(tmp_path):
  # Both processes share one persistent compilation cache: the second loads the executables the first compiled
  # (the same code, so the same numbers) and does not compile them again.
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  out = tmp_path / 'run'
  # m = 3 windows: 2 dropped, so sleep_L2 runs both its levels (level 0 at drops 1 and 2, level 1 on both windows)
  methods = ['icl', 'finetune', 'sleep_L2']   # full_context differs from icl only in the prompt (and compiles a long one)
  cmd = [sys.executable, '-m', 'experiments.long_horizon_memory', '--config=configs/long_horizon_memory.py:smoke',
         f'--workdir={out}', '--seeds=0,1', '--multipliers=3', f'--methods={",".join(methods)}']
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  for f in ('results.json', 'table.md', 'accuracy_vs_length.png', 'accuracy_vs_depth.png'):
    assert (out / f).exists(), f
  res = json.loads((out / 'results.json').read_text())
  assert {'rows', 'streams', 'methods', 'config', 'seconds'} <= set(res)
  assert res['methods'] == methods
  for m in methods:   # 2 seeds x 1 stream x 2 needles per method
    assert sum(r['method'] == m for r in res['rows']) == 4, m
  assert all(r['in_context'] == (r['window'] == 2) for r in res['rows'])
  sl = [r['sleeps'] for r in res['rows'] if r['method'] == 'sleep_L2' and 'sleeps' in r]
  assert len(sl) == 2
  for s in sl:
    assert [(x['drop'], x['level'], x['windows']) for x in s] == [(1, 0, [0]), (2, 0, [1]), (2, 1, [0, 1])]
  ft = [r['ft_losses'] for r in res['rows'] if r['method'] == 'finetune' and 'ft_losses' in r]
  assert len(ft) == 2 and all(len(f) == 2 for f in ft)        # one fine-tuning per dropped window
  table = (out / 'table.md').read_text()
  assert 'sleep_L2' in table and '3 windows' in table and '±' in table
  # --from_results merges per-seed runs (same table); a duplicate is refused
  merged = tmp_path / 'merged'
  E.merge_main([str(out / 'results.json')], str(merged))
  assert (merged / 'table.md').read_text().split('\n\n')[:3] == table.split('\n\n')[:3]
  with pytest.raises(ValueError, match='appears twice'):
    E.merge_main([str(out / 'results.json')] * 2, str(merged))
  # Determinism: seed 0's sleep_L2 rows again, alone, in a new process: identical to the first run's (timings aside)
  again = tmp_path / 'again'
  cmd2 = [c for c in cmd if not c.startswith(('--workdir', '--seeds', '--methods'))] + [
      f'--workdir={again}', '--seeds=0', '--methods=sleep_L2']
  r = subprocess.run(cmd2, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  untimed = lambda rows: [{k: v for k, v in x.items() if not k.endswith(('seconds', '_s'))}
                          for x in rows if x['method'] == 'sleep_L2' and x['seed'] == 0]
  rows2 = json.loads((again / 'results.json').read_text())['rows']
  assert untimed(rows2) == untimed(res['rows']) and len(untimed(rows2)) == 2
