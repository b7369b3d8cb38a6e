"""Knowledge-incorporation generator: determinism, counts, split hygiene and answerability of every question."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from sleep_jax.data import knowledge as K
from sleep_jax.data.splits import SPLITS


@pytest.fixture(scope='module')
def data() -> dict[str, list[dict]]:
  return {s: K.generate(s, allow_test=True) for s in SPLITS}


def _tokens(s: str) -> list[str]:
  return K.normalize_answer(s).split()


def _contains(haystack: str, needle: str) -> bool:
  """Whole-token containment after SQuAD normalisation ('12' is not inside '1812')."""
  h, n = _tokens(haystack), _tokens(needle)
  return any(h[i:i + len(n)] == n for i in range(len(h) - len(n) + 1))


def test_version():
  assert re.fullmatch(r'\d+\.\d+\.\d+', K.VERSION)


def test_test_split_is_guarded():
  with pytest.raises(PermissionError):
    K.generate('test')
  with pytest.raises(ValueError):
    K.generate('dev')


def test_deterministic_and_seed_dependent(data):
  assert K.generate('train') == data['train']
  other = K.generate('train', seed=1)
  assert [p['text'] for p in other] != [p['text'] for p in data['train']]


def test_counts_and_schema(data):
  everything = [p for s in SPLITS for p in data[s]]
  assert len(everything) >= 300 and all(data[s] for s in SPLITS)
  assert {p['entity_type'] for p in everything} == set(K.ENTITY_TYPES)
  assert len({p['style'] for p in everything}) >= 6
  for s in SPLITS:
    for p in data[s]:
      assert p['split'] == s
      assert {'id', 'title', 'text', 'entity_type', 'questions', 'split'} <= set(p)
      assert len(p['questions']) >= 5 and len(re.findall(r'[.?!](?=\s|$)', p['text'])) >= 6
      for q in p['questions']:
        assert {'id', 'question', 'answer', 'aliases', 'hops'} <= set(q) and q['hops'] in (1, 2)
  hops = [q['hops'] for p in everything for q in p['questions']]
  assert hops.count(2) >= len(everything) and hops.count(1) >= 4 * len(everything)
  ids = [p['id'] for p in everything] + [q['id'] for p in everything for q in p['questions']]
  assert len(ids) == len(set(ids))


def test_every_answer_is_in_its_passage_and_not_in_its_question(data):
  for p in (p for s in SPLITS for p in data[s]):
    for q in p['questions']:
      assert q['answer'] in p['text'], (p['id'], q)
      assert _contains(p['text'], q['answer']), (p['id'], q)
      assert not _contains(q['question'], q['answer']), (p['id'], q)
      assert q['aliases'][0] == q['answer'] and all(a.strip() for a in q['aliases'])
      assert q['question'].endswith('?')


def test_splits_share_no_entity(data):
  titles = {s: {p['title'] for p in data[s]} for s in SPLITS}
  assert sum(len(t) for t in titles.values()) == sum(len(data[s]) for s in SPLITS)  # names unique overall
  for a, b in (('train', 'test'), ('train', 'validation'), ('validation', 'test')):
    assert not titles[a] & titles[b]
    assert not {p['id'] for p in data[a]} & {p['id'] for p in data[b]}
  train_text = '\n'.join(p['text'] for p in data['train']).lower()
  for p in data['test']:
    assert p['title'].lower() not in train_text
    for q in p['questions']:
      if not q['answer'].isdigit() and q['answer'] not in K.COLOURS + K.MONTHS:  # an invented name
        assert not re.search(rf'\b{re.escape(q["answer"].lower())}\b', train_text), (p['id'], q['answer'])


def test_prompt_and_normalisation():
  prompt = K.format_qa_prompt('Who founded the Bramel Guild of Lamplighters?')
  assert 'Who founded the Bramel Guild of Lamplighters?' in prompt and prompt.rstrip().endswith('Answer:')
  assert K.normalize_answer('  The Bramel  Guild, of Lamplighters! ') == 'bramel guild of lamplighters'
  assert K.normalize_answer('An ochre fox.') == 'ochre fox'
  assert K.number_words(21) == 'twenty-one' and K.number_words(140) == ''


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_property_deterministic_and_disjoint(seed):
  parts = {s: K.generate(s, seed=seed, n_passages=40, allow_test=True) for s in SPLITS}
  assert parts == {s: K.generate(s, seed=seed, n_passages=40, allow_test=True) for s in SPLITS}
  assert sum(len(v) for v in parts.values()) == 40
  titles = [p['title'] for s in SPLITS for p in parts[s]]
  assert len(titles) == len(set(titles))
  for p in (p for s in SPLITS for p in parts[s]):
    assert all(q['answer'] in p['text'] and not _contains(q['question'], q['answer']) for q in p['questions'])
