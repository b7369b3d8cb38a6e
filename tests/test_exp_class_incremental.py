"""Class-incremental intents experiment: the prefix-cached scorer against Lab.score, the sleep documents and
ICL budget, the table's bookkeeping, and the smoke protocol end to end (two seeds, report, --from_results)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import class_incremental as cfg_lib
from experiments import class_incremental as ci

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def lab():
  from experiments.common import Lab
  return Lab(cfg_lib.get_config('smoke'))


def test_config_variants():
  assert cfg_lib.get_config('').ci.n_stages <= cfg_lib.get_config('').model.n_experts
  with pytest.raises(ValueError):
    cfg_lib.get_config('big')


def test_prefix_scorer_matches_lab_score(lab):
  """Same sum log p as the plain full-row scorer, for short prompts and for prompts after a long context."""
  config = lab.config
  run = ci.Run(lab, ci.PrefixScorer(lab, chunk=8), config, seed=0, split='validation')
  ctx, _ = run.icl_context(0)
  assert len(lab.chat(ctx)) > 256          # a context past the first prompt bucket
  names = run.seen(1)
  cands = [lab.tok.encode(n) for n in names]
  for context in (None, ctx):
    users = [run.user(u, context) for u, _, _ in run.d['eval'][:2]]
    got = run.scorer(lab.params, lab.cms, [lab.chat(u) for u in users], cands)
    want = np.stack([lab.score(lab.params, lab.cms, u, names) for u in users])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)


def test_sleep_docs_and_icl_budget(lab):
  config = lab.config
  run = ci.Run(lab, None, config, seed=1, split='validation')
  for s in range(config.ci.n_stages):
    docs = run.sleep_docs(s)
    assert len(docs) == config.ci.sleep_prompts
    stage_utts = {u for n in run.d['stages'][s] for u in run.d['train'][n]}
    for d in docs:
      assert d['title'] in stage_utts                      # a train utterance of this stage's classes
      assert f"{d['title']} -> " not in d['text']           # never one of the document's own examples
      assert all(f'{n}: ' in d['text'] for n in run.d['stages'][s])
    ctx, k = run.icl_context(s)
    assert 1 <= k <= config.ci.icl_max_k and all(f'{n}: ' in ctx for n in run.seen(s))
    assert len(lab.chat(run.user('x' * 60, ctx))) <= config.ci.icl_max_tokens
  assert not {r[0] for r in run.d['eval']} & {u for v in run.d['train'].values() for u in v}


def _row(seed, accs, firsts):
  return {'seed': seed, 'split': 'test', 'stages': [['a', 'b'], ['c', 'd']], 'seconds': {'before': 1.0},
          'methods': {'before': [{'acc': a, 'acc_by_stage': [f] * (i + 1)} for i, (a, f) in enumerate(zip(accs, firsts))]}}


def test_summary_columns():
  rows = [_row(0, [50.0, 30.0], [50.0, 10.0]), _row(1, [70.0, 40.0], [70.0, 30.0])]
  line = [l for l in ci.summarize(rows).splitlines() if l.startswith('| before')][0]
  cells = [c.strip() for c in line.strip('|').split('|')]
  assert cells == ['before', '60.0 ± 14.1', '35.0 ± 7.1', '60.0 ± 14.1', '20.0 ± 14.1']


def test_smoke_end_to_end(lab, tmp_path):
  config = lab.config
  scorer = ci.PrefixScorer(lab, config.ci.score_chunk)
  paths = []
  for seed in (0, 1):
    row = ci.run_seed(lab, scorer, config, seed, 'test', ci.METHODS, (config.finetune.ewc_lambda,))
    assert set(row['methods']) == set(ci.METHODS)
    for m in ci.METHODS:
      assert len(row['methods'][m]) == config.ci.n_stages
      for s, r in enumerate(row['methods'][m]):   # a share of r['n'] answers, between its stages' accuracies
        assert len(r['acc_by_stage']) == s + 1 and np.isclose(r['acc'] * r['n'] / 100, round(r['acc'] * r['n'] / 100))
        assert min(r['acc_by_stage']) - 1e-9 <= r['acc'] <= max(r['acc_by_stage']) + 1e-9
    assert row['methods']['ewc'][0]['acc'] == row['methods']['finetune'][0]['acc']   # stage 1: no penalty yet
    w = tmp_path / f's{seed}'
    ci.report([row], str(w), config, 'smoke')
    paths.append(str(w / 'results.json'))
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = tmp_path / 'merged'
  subprocess.run([sys.executable, '-m', 'experiments.class_incremental', '--config=configs/class_incremental.py:smoke',
                  f'--workdir={out}', f'--from_results={",".join(paths)}'], cwd=ROOT, env=env, check=True)
  for f in ('results.json', 'table.md', 'accuracy_by_stage.png'):
    assert (out / f).exists(), f
  res = json.loads((out / 'results.json').read_text())
  assert [r['seed'] for r in res['rows']] == [0, 1] and 'config' in res
  table = (out / 'table.md').read_text()
  assert all(f'| {m}' in table for m in ci.METHODS) and 'stage-1 classes after stage 2' in table
