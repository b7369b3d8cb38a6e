"""Multi-passage knowledge incorporation: nested passage draws, the table's arithmetic against hand-computed values,
merging per-seed results, and config errors. (The end-to-end smoke run is colab/multi_passage_ki.ipynb, which
tests/test_notebooks.py executes on the smoke config.)"""
import json

import pytest

from configs import multi_passage_ki as cfg_mod
from experiments import multi_passage_ki as mp


def test_draws_are_nested_in_n_and_differ_by_seed():
  passages = [{'id': f'p{i}'} for i in range(30)]
  a1, a6 = mp.draw(passages, 0, 1), mp.draw(passages, 0, 6)
  assert a6[:1] == a1 and len({p['id'] for p in a6}) == 6
  assert [p['id'] for p in mp.draw(passages, 1, 6)] != [p['id'] for p in a6]
  with pytest.raises(ValueError, match='the split has 30'):
    mp.draw(passages, 0, 31)


def _row(seed, n, recall, probe):
  r = {'recall': recall, 'token_f1': 0.0, 'answers': []}
  return {'seed': seed, 'n': n, 'questions': 5 * n, 'before': dict(r, recall=0.0), 'ceiling': dict(r, recall=50.0),
          'sleep': dict(r, probe_nll=probe), 'finetune': dict(r, recall=0.0, probe_nll=probe + 1)}


def test_table_reports_mean_and_sample_sd_over_seeds(tmp_path):
  rows = [_row(0, 1, 10.0, 3.0), _row(1, 1, 30.0, 3.2), _row(0, 6, 0.0, 3.1), _row(1, 6, 20.0, 3.3)]
  t = mp.table(rows, 3.0)
  # seeds 10 and 30: mean 20, sample sd 14.1; probe 3.0/3.2: mean 3.1, sd 0.1414
  assert '| sleep | 20.0 ± 14.1 | 10.0 ± 14.1 | 3.1000 ± 0.1414 | 3.2000 ± 0.1414 |' in t
  assert '| before | 0.0 ± 0.0 | 0.0 ± 0.0 | - | - |' in t and 'n=6: 30-30' in t
  for i, s in enumerate((0, 1)):
    (tmp_path / f's{s}').mkdir()
    (tmp_path / f's{s}' / 'results.json').write_text(json.dumps({'rows': rows[i::2], 'probe_before': 3.0}))
  mp.merge([str(tmp_path / 's0' / 'results.json'), str(tmp_path / 's1' / 'results.json')], str(tmp_path / 'm'))
  assert len(json.loads((tmp_path / 'm' / 'results.json').read_text())['rows']) == 4
  assert (tmp_path / 'm' / 'recall_vs_n.png').exists() and '20.0 ± 14.1' in (tmp_path / 'm' / 'table.md').read_text()
  (tmp_path / 'bad.json').write_text(json.dumps({'rows': rows[:1], 'probe_before': 9.0}))
  with pytest.raises(ValueError, match='not the same model'):
    mp.merge([str(tmp_path / 's0' / 'results.json'), str(tmp_path / 'bad.json')], str(tmp_path / 'm2'))


def test_config_variants():
  assert cfg_mod.get_config('').multi.split == 'test' and cfg_mod.get_config('smoke').model.source == 'random'
  sq = cfg_mod.get_config('squad')   # SEAL's continued-pretraining setting: 200 SQuAD passages in one sleep
  assert sq.ki.source == 'squad' and sq.multi.sizes == (200,) and sq.model.source != 'random'
  assert cfg_mod.get_config('').ki.source == 'generated'
  with pytest.raises(ValueError, match="variants '', 'smoke' and 'squad'"):
    cfg_mod.get_config('full')
