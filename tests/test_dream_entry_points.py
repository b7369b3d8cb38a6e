"""The Dreaming entry points run end to end on the tiny model: the knowledge-incorporation experiment's Dreaming
and SEAL-style variants (table with reward rates, rest_em.png) and the inner-loop benchmark."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p.stdout


def test_knowledge_incorporation_with_dreaming_smoke(tmp_path):
  out = _run(['experiments.knowledge_incorporation', '--config=configs/sleep.py:smoke', f'--workdir={tmp_path}',
              '--split=validation', '--seeds=0', '--variants=ks,sleep,seal'], tmp_path)
  assert '| sleep |' in out and 'reward rate, round 2' in out
  res = json.loads((tmp_path / 'results.json').read_text())
  row = res['rows'][0]
  assert len(row['sleep']['reward_rate']) == 2   # each round's rate: the mean of its logged per-dream rewards
  logged = [[x for c in h['contexts'] for x in c['rewards']] for h in row['sleep']['dream_history']]
  assert row['sleep']['reward_rate'] == [float(np.mean(r)) if r else 0.0 for r in logged]
  assert 'sft_loss' in row['seal'] and (tmp_path / 'rest_em.png').exists()
  # seeds run in parallel merge into one report
  merged = tmp_path / 'merged'
  out = _run(['experiments.knowledge_incorporation', f'--workdir={merged}',
              f'--from_results={tmp_path}/results.json,{tmp_path}/results.json'], tmp_path)
  m = json.loads((merged / 'results.json').read_text())
  assert len(m['rows']) == 2 and '| seal |' in out and 'jax' in m and m['merged_from']
  assert res['seed'] == 0 and 'orbax_checkpoint' in res   # seed and library versions in every results file
  assert (merged / 'table.md').exists() and (merged / 'rest_em.png').exists()


def test_dreaming_benchmark_smoke(tmp_path):
  out = _run(['experiments.benchmarks.dreaming', '--models=tiny', '--reps=1', f'--out={tmp_path}/b.json'], tmp_path)
  rec = json.loads((tmp_path / 'b.json').read_text())['results'][0]
  assert rec['dreams'] == 8 and rec['vmapped_s'] > 0 and rec['loop_s'] > 0
  assert rec['max_abs_tau_diff'] < 1e-3            # both paths compute the same copies
  assert '| tiny |' in out
