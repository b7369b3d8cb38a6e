"""TFDS builders (offline, versioned, atomic) and the seqio tasks over them."""

import pytest

from sleep_jax.data import tfds_builders as tb
from sleep_jax.data.splits import SPLITS

DATASETS = ['sleep_knowledge', 'sleep_intents', 'sleep_languages', 'sleep_long_horizon', 'sleep_arc_fewshot',
            'sleep_arc_agi1', 'sleep_arc_agi2', 'sleep_essays', 'sleep_shakespeare', 'sleep_world']


def test_every_dataset_builds_offline_with_all_splits(data_dir):
  assert set(DATASETS) <= set(tb.REGISTRY) | set(DATASETS)
  for name in DATASETS:
    n = tb.sizes(name)
    assert all(n[s] > 0 for s in SPLITS), (name, n)
    rec = tb.load(name, 'train')[0]
    assert 'id' in rec
  assert tb.sizes('sleep_knowledge')['train'] + tb.sizes('sleep_knowledge')['validation'] + \
      tb.sizes('sleep_knowledge')['test'] >= 300
  assert (data_dir / 'sleep_knowledge' / tb.get_spec('sleep_knowledge').version()).is_dir()


def test_test_split_is_held_out(data_dir):
  with pytest.raises(PermissionError, match='held out'):
    tb.load('sleep_knowledge', 'test')
  assert len(tb.load('sleep_knowledge', 'test', allow_test=True)) > 0


def test_no_entity_or_task_in_two_splits(data_dir):
  def ids(name, key):
    return {s: {str(r[key]) for r in tb.load(name, s, allow_test=True)} for s in SPLITS}
  for name, key in [('sleep_knowledge', 'title'), ('sleep_arc_fewshot', 'id'), ('sleep_languages', 'en'),
                    ('sleep_essays', 'id'), ('sleep_world', 'name')]:
    got = ids(name, key)
    assert not got['train'] & got['test'] and not got['validation'] & got['test'], name


def test_unchanged_version_is_reused_and_new_version_rebuilds(data_dir, monkeypatch):
  calls = []

  def records(split):
    calls.append(split)
    return [{'id': f'{split}-{i}', 'x': i} for i in range(3)]
  version = ['1.0.0']
  tb.register(tb.Spec('sleep_test_tmp', lambda: version[0], records, 'test', 'test'))
  assert tb.sizes('sleep_test_tmp') == {'train': 3, 'validation': 3, 'test': 3}
  tb.sizes('sleep_test_tmp')
  assert len(calls) == 3                      # built once
  version[0] = '1.0.1'
  tb.sizes('sleep_test_tmp')
  assert len(calls) == 6 and (data_dir / 'sleep_test_tmp' / '1.0.1').is_dir()


def test_a_failed_build_leaves_nothing_that_reads_as_whole(data_dir):
  def records(split):
    yield {'id': 'a', 'x': 1}
    raise RuntimeError('generator crashed mid-way')
  tb.register(tb.Spec('sleep_test_broken', lambda: '1.0.0', records, 'test', 'test'))
  with pytest.raises(RuntimeError, match='mid-way'):
    tb.prepare('sleep_test_broken')
  assert not (data_dir / 'sleep_test_broken' / '1.0.0').exists()
  tb.register(tb.Spec('sleep_test_broken', lambda: '1.0.0', lambda s: [{'id': 'a'}], 'test', 'test'))
  assert tb.sizes('sleep_test_broken')['train'] == 1


def test_duplicate_ids_are_an_error(data_dir):
  tb.register(tb.Spec('sleep_test_dup', lambda: '1.0.0', lambda s: [{'id': 'a'}, {'id': 'a'}], 'test', 'test'))
  with pytest.raises(ValueError, match="duplicate record id 'a'"):
    tb.prepare('sleep_test_dup')


@pytest.mark.slow
def test_seqio_tasks_tokenise_and_score(data_dir):
  import seqio
  from sleep_jax.data import tasks
  names = tasks.register_all()
  assert len(names) >= 12
  lens = {'inputs': 4096, 'targets': 256}
  for name in ['sleep_knowledge_qa', 'sleep_intents', 'sleep_translate_tamu_xx_en', 'sleep_arc_fewshot',
               'sleep_world_qa']:
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(split='validation', sequence_length=lens, shuffle=False)
    exs = list(ds.take(3).as_numpy_iterator())
    assert exs and all(e['targets'][-1] == tasks.vocabulary().eos_id for e in exs)
    # perfect predictions score 100 through the task's own postprocessor and metrics
    tgts = [task.postprocess_fn(e['targets_pretokenized'], example=e, is_target=True) for e in exs]
    preds = [task.postprocess_fn(e['targets_pretokenized'].decode(), example=e, is_target=False) for e in exs]
    for fn in task.metric_fns:
      assert all(v == pytest.approx(100.0) for v in fn(tgts, preds).values()), (name, fn)
  with pytest.raises(PermissionError):
    seqio.get_mixture_or_task('sleep_knowledge_qa').get_dataset(split='test', sequence_length=lens)
  with tasks.held_out():
    ds = seqio.get_mixture_or_task('sleep_arc_fewshot').get_dataset(split='test', sequence_length=lens)
    assert sum(1 for _ in ds) == tb.sizes('sleep_arc_fewshot')['test']
