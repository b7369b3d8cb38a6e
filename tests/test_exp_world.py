"""experiments/world.py: every variant runs end to end on smoke settings over the shipped world model, tables report
mean ± sample sd over seeds, people draws are seeded and nested. (Variant (a) with its plot also runs in
colab/world.ipynb, which tests/test_notebooks.py executes.)"""
import numpy as np
import pytest

from configs import world_sleep as cfg_mod
from experiments import world as ew


@pytest.fixture(scope='module')
def wl():
  return ew.WorldLab(cfg_mod.get_config('smoke'))


def test_people_draws_are_seeded_and_nested(wl):
  a1, a8 = wl.people(0, 1), wl.people(0, 8)
  assert a8[:1] == a1 and len({p.name for p in a8}) == 8
  assert wl.people(1, 8) != a8
  assert {p.name for p in a8} <= {p.name for p in wl.world.people['validation']}
  with pytest.raises(ValueError, match='has 300'):
    wl.people(0, 301)


def test_every_variant_runs_and_reports(wl, tmp_path):
  one = ew.run_one(wl, 0, ('base', 'ks'), k=2)
  assert one['rows']['base']['recall'] == one['before']['recall']      # the floor is the untouched model
  for r in one['rows'].values():
    assert 0 <= r['recall'] <= 1 and 0 <= r['retention_qa'] <= 1 and r['seconds'] >= 0
  seq = ew.run_sequential(wl, 0, ('ft_bios',), n_sleeps=2, k=1)
  assert [c['sleep'] for c in seq['rows']['ft_bios']['curve']] == [1, 2]
  bud = ew.run_budget(wl, 0, ('ks',), (1, 2), k=1)
  assert [p['steps'] for p in bud['rows']['ks']] == [1, 2]
  for variant, runs in (('many', [one]), ('sequential', [seq]), ('budget', [bud])):
    ew.report(str(tmp_path / variant), variant, runs, wl.config)
    assert (tmp_path / variant / f'world_{variant}.png').exists()
    assert '| ' in (tmp_path / variant / 'table.md').read_text()


def _run(seed, recall):
  row = {'recall': recall, 'gap_closed': recall, 'retention_qa': 1.0, 'retention_bio': 0.9, 'seconds': 2.0}
  return {'seed': seed, 'k': 1, 'before': {'recall': 0.0, 'retention_qa': 1.0, 'retention_bio': 0.9},
          'ceiling': 1.0, 'rows': {'ks': row}}


def test_table_is_mean_and_sample_sd_over_seeds():
  t = ew.table_rows([_run(0, 0.5), _run(1, 0.7)])
  # 50 and 70: mean 60.0, sample sd 14.1
  assert '| 1 | ks | 60.0 ± 14.1 | 60.0 ± 14.1 | 100.0 ± 0.0 | 90.0 ± 0.0 | 2.0 ± 0.0 | 2 |' in t
  assert np.isclose(float(ew._ms([0.5, 0.7]).split(' ± ')[1]), 14.142, atol=0.05)


def test_runs_of_one_seed_from_two_processes_merge_into_one_record():
  a, b = _run(0, 0.5), _run(0, 0.5)
  b['rows'] = {'sleep': dict(a['rows']['ks'], recall=0.9)}
  merged = ew.merge_runs([a, b, _run(1, 0.7)])
  assert [m['seed'] for m in merged] == [0, 1] and set(merged[0]['rows']) == {'ks', 'sleep'}
  assert '| 1 | *before* | 0.0 ± 0.0 | | 100.0 ± 0.0 | 90.0 ± 0.0 | | 2 |' in ew.table_rows(merged)
