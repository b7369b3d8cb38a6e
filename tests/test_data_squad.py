"""SQuAD v1.1 with the SEAL protocol: TFDS's squad builder (mocked, no network) grouped by passage, the seqio tasks,
SEAL's selection rule, the official SQuAD EM/F1 against hand-computed values, the missing-data error, and a smoke
run of the single-passage and continued-pretraining experiments on the tiny model (every row in the table)."""
import json

import pytest

from sleep_jax.data import metrics as M
from sleep_jax.data import squad

# Hand-made SQuAD rows (TFDS 'squad/v1.1' features). Validation: 4 passages in first-appearance order P0, P1, P2, P3
# (P3's only row has no usable answer); train: 1 passage.
_P = ['The Broncos beat the Panthers 24-10 in Santa Clara.', 'Gold was the colour of the fiftieth game.',
      'Levi Stadium opened in 2014.', 'An empty passage.']
_ROWS = {'validation': [
    ('q1', 'SB50', _P[0], 'Who won?', ['Denver Broncos', 'Broncos', 'Broncos']),
    ('q2', 'SB50', _P[1], 'Which colour?', ['gold']),
    ('q3', 'SB50', _P[0], 'Final score?', ['24-10']),
    ('q4', 'Levi', _P[2], 'When did it open?', ['2014', 'in 2014']),
    ('q5', 'SB50', _P[0], 'Where?', ['Santa Clara']),
    ('q6', 'Empty', _P[3], 'Nothing?', ['  ']),
], 'train': [('t1', 'Other', 'Paris is in France.', 'Where is Paris?', ['France'])]}


def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
  """The mocked FileReaderBuilder._as_dataset: our rows in the squad builder's feature structure."""
  import tensorflow as tf
  del self, decoders, read_config, shuffle_files
  s = tf.TensorSpec((), tf.string)
  sig = {'id': s, 'title': s, 'context': s, 'question': s,
         'answers': {'text': tf.TensorSpec((None,), tf.string), 'answer_start': tf.TensorSpec((None,), tf.int32)}}
  rows = [{'id': i, 'title': t, 'context': c, 'question': q, 'answers': {'text': a, 'answer_start': [0] * len(a)}}
          for i, t, c, q, a in _ROWS[str(split)]]
  return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=sig)


@pytest.fixture
def mocked():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=_as_dataset):
    yield


def test_tfds_squad_grouped_by_passage(mocked):
  ps = squad.passages('test', allow_test=True)   # 'test' = SQuAD validation (SEAL's evaluation split)
  assert [p['text'] for p in ps] == _P   # first-appearance order, one record per context
  p0 = ps[0]
  assert p0['title'] == 'SB50' and [q['id'] for q in p0['questions']] == ['q1', 'q3', 'q5']
  assert p0['questions'][0] == {'id': 'q1', 'question': 'Who won?', 'answer': 'Denver Broncos',
                                'aliases': ['Denver Broncos', 'Broncos'], 'hops': 1}   # every distinct gold answer
  assert ps[3]['questions'] == [] and len({p['id'] for p in ps}) == 4
  assert [p['text'] for p in squad.passages('validation')] == ['Paris is in France.']   # tuning = SQuAD train
  with pytest.raises(PermissionError):
    squad.passages('test')   # the held-out split needs allow_test


def test_seqio_rows_one_per_passage_and_closed_book_questions(mocked):
  from sleep_jax.data import tasks
  rows = list(tasks.squad_passage_rows('test', allow_test=True))
  assert [r['targets'] for r in rows] == _P and rows[0]['title'] == 'SB50'
  assert json.loads(rows[0]['questions'])[0] == {'id': 'q1', 'question': 'Who won?',
                                                 'answers': ['Denver Broncos', 'Broncos']}
  qa = list(tasks.squad_qa_rows('test', allow_test=True))
  assert [r['id'] for r in qa] == ['q1', 'q3', 'q5', 'q2', 'q4'] and all(_P[0] not in r['inputs'] for r in qa)
  assert 'Who won?' in qa[0]['inputs'] and json.loads(qa[0]['aliases']) == ['Denver Broncos', 'Broncos']


def test_missing_data_names_the_prepare_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'tfds build squad/v1.1 --data_dir=.*ki.data_dir'):
    squad.passages('validation', str(tmp_path))


def test_selection_is_seal_rule_deterministic_nested_and_seeded():
  import random
  ps = [{'id': f'p{i}', 'questions': [] if i % 5 == 0 else [{'id': 'q'}]} for i in range(40)]
  pool = [p for p in ps if p['questions']]   # 32 passages with questions
  a = squad.select(ps, 10, seed=3)
  order = list(range(32))
  random.Random(3).shuffle(order)   # independent reference: SEAL's random.seed(s); random.shuffle(list)
  assert [p['id'] for p in a] == [pool[i]['id'] for i in order[:10]]
  assert squad.select(ps, 10, seed=3) == a and squad.select(ps, 4, seed=3) == a[:4]
  assert [p['id'] for p in squad.select(ps, 10, seed=4)] != [p['id'] for p in a]
  assert all(p['questions'] for p in squad.select(ps, 32, seed=0))
  with pytest.raises(ValueError, match='32 with questions'):
    squad.select(ps, 33, seed=0)


@pytest.mark.parametrize('golds,pred,em,f1', [
    (['Denver Broncos'], 'The Denver Broncos!', 100.0, 100.0),       # articles and punctuation dropped
    (['Denver Broncos'], 'Broncos won', 0.0, 50.0),                  # 1 common token: P = R = 1/2
    (['Santa Clara, California', 'Santa Clara'], 'in santa clara', 0.0, 100 * 2 * (2 / 3) / (2 / 3 + 1)),
    (['24-10', 'twenty four'], '2410', 100.0, 100.0),                # '-' is punctuation: '24-10' -> '2410'
    (['gold'], 'a', 0.0, 0.0),                                       # empty after normalisation
])
def test_official_squad_em_f1_max_over_gold_answers(golds, pred, em, f1):
  # F1 of 'in santa clara' vs 'santa clara': P = 2/3, R = 1 -> 0.8; vs 'santa clara california': P = R = 2/3.
  assert M.exact_match([golds], [pred])['exact_match'] == pytest.approx(em)
  assert M.token_f1([golds], [pred])['token_f1'] == pytest.approx(f1)


def test_squad_table_weights_questions_within_a_seed_and_averages_seeds():
  from experiments import knowledge_incorporation as ki
  r = lambda seed, n, em, f1: {'seed': seed, 'n': n, 'ks': {'exact_match': em, 'token_f1': f1}}
  rows = [r(0, 1, 100.0, 100.0), r(0, 3, 0.0, 40.0), r(1, 2, 50.0, 60.0)]
  # seed 0: EM (100 + 0) / 4 = 25, F1 (100 + 120) / 4 = 55; seed 1: 50, 60 -> means 37.5, 57.5; sd 17.7, 3.5
  assert '| ks | 37.5 ± 17.7 | 57.5 ± 3.5 |' in ki.squad_table(rows, ['ks'])


def test_unknown_source_is_refused():
  import ml_collections as mlc
  with pytest.raises(ValueError, match="ki.source='wiki'"):
    squad.knowledge_passages(mlc.ConfigDict(dict(source='wiki', data_dir='')), 'validation')


# ------------------------------------------------------------------------------------------------ smoke runs
@pytest.fixture
def squad_offline(monkeypatch, data_dir):
  """squad.passages reads the mocked TFDS builder; the project's own datasets (probe essays) build normally."""
  import tensorflow_datasets as tfds
  real = squad.passages

  def passages(split, data_dir='', allow_test=False):
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=_as_dataset):
      return real(split, data_dir, allow_test)
  monkeypatch.setattr(squad, 'passages', passages)


@pytest.fixture(scope='module')
def lab_config(data_dir):
  """One tiny-model Lab for both protocols (the continued-pretraining smoke config is a superset of the single-
  passage one), so they share its compiled updates instead of compiling each twice."""
  from configs import multi_passage_ki as cfg
  from experiments.common import Lab
  c = cfg.get_config('smoke')
  assert c.ki.source == 'generated'   # the default stays the invented passages
  with c.unlocked():
    c.ki.source, c.multi.sizes, c.multi.split = 'squad', (2,), 'test'
    # Fewer compilations: one generation bucket for answers, fact prompts and self-edits, two prompt buckets.
    c.sampling.gen_buckets, c.sampling.prompt_buckets = (16,), (128, 384)
  return Lab(c), c


def test_single_passage_smoke_every_row(squad_offline, lab_config, tmp_path):
  from configs import knowledge_incorporation as cfg
  from experiments import knowledge_incorporation as ki
  assert cfg.get_config('smoke').ki.source == 'generated'
  lab, c = lab_config
  # Every row but Dreaming ('sleep' = KS + Dreaming: its loop does not depend on where the passage came from and
  # tests/test_dream_entry_points.py runs it end to end in this experiment; here it would double the compile cost).
  rows = ki.run(c, str(tmp_path), seeds=[0], n_passages=1, split='test', variants=['ks', 'finetune', 'seal'], lab=lab)
  passage = squad.select(squad.passages('test', allow_test=True), 1, 0)[0]
  assert rows[0]['passage'] == passage['id'] and rows[0]['n'] == len(passage['questions'])
  assert [a['question'] for a in rows[0]['ks']['answers']] == [q['question'] for q in passage['questions']]
  table = (tmp_path / 'table.md').read_text()
  for v in ('before', 'ks', 'finetune', 'seal', 'ceiling'):   # base, fine-tuning, SEAL-style, sleep KS
    assert f'| {v} |' in table
  assert '| variant | SQuAD exact match % | SQuAD token F1 % |' in table
  assert json.loads((tmp_path / 'results.json').read_text())['source'] == 'squad'


def test_continued_pretraining_smoke_every_row(squad_offline, lab_config, tmp_path):
  from configs import multi_passage_ki as cfg
  from experiments import multi_passage_ki as mp
  assert cfg.get_config('squad').multi.sizes == (200,) and cfg.get_config('squad').ki.source == 'squad'
  lab, c = lab_config
  rows = mp.run(c, str(tmp_path), seeds=[0], lab=lab)
  want = squad.select(squad.passages('test', allow_test=True), 2, 0)
  assert rows[0]['passages'] == [p['id'] for p in want]
  assert rows[0]['questions'] == sum(len(p['questions']) for p in want)
  table = (tmp_path / 'table.md').read_text()
  for v in mp.ROWS:
    assert f'| {v} |' in table
  assert 'SQuAD EM %, n=2' in table


def test_knowledge_incorporation_config_validates():
  from configs import knowledge_incorporation as cfg
  from sleep_jax import runtime
  for variant in ('', 'smoke'):
    runtime.validate(cfg.get_config(variant))
