"""Synthetic languages: determinism, distinct grammars, exact round trips, grammar-book coverage, held-out splits."""
import re

import pytest

from sleep_jax.data import languages as L

N = 400


@pytest.fixture(scope='module')
def langs():
  return L.languages()


def _words(s):
  return re.findall(r'[a-z]+', s.lower())


def test_deterministic(langs):
  again = L.languages()
  for name, lang in langs.items():
    assert lang.lexicon == again[name].lexicon and lang.morph == again[name].morph
    assert lang.parallel('train', n=50) == again[name].parallel('train', n=50)
    assert lang.grammar_book() == again[name].grammar_book()
  assert L.Language(L.SPECS[0], seed=1).lexicon != langs[L.NAMES[0]].lexicon


def test_at_least_three_word_orders(langs):
  assert len(langs) >= 3
  assert len({lang.grammar.order for lang in langs.values()}) >= 3


def test_lexicons_are_distinct_and_not_english(langs):
  english = L._ALL_ENGLISH
  lex = {n: set(lang.lexicon.values()) for n, lang in langs.items()}
  for n, words in lex.items():
    assert len(words) == len(L.CONTENT)  # one root per lemma, no homophones
    assert not words & english
    for m, other in lex.items():
      if m != n:
        assert len(words & other) <= 2, (n, m)


def test_every_surface_word_has_one_analysis(langs):
  for lang in langs.values():
    forms = [lang._forms(lemma, root) for lemma, root in lang.lexicon.items()]
    union = set().union(*forms)
    assert len(union) == sum(len(f) for f in forms)
    assert not union & set(lang.morph.values())


def test_english_round_trip_and_rejects():
  for tree in L.sentences('train', n=N):
    assert L.parse(L.english(tree)) == tree
  for bad in ('The dog sees.', 'Dog sees a cat.', 'The dogs sees a cat.', 'A apple sees the cat.',
              'The dog sees a cat a.', 'The dog does see a cat.', 'The stone sees a cat.'):
    with pytest.raises(ValueError):
      L.parse(bad)


def test_translations_differ_from_english_and_are_injective(langs):
  for lang in langs.values():
    items = lang.parallel('train', n=N)
    assert len({it['xx'] for it in items}) == len(items)
    for it in items:
      assert it['lang'] == lang.name and it['xx'] != it['en']
      assert not set(_words(it['xx'])) & L._ALL_ENGLISH, it
      assert lang.translate(it['en']) == it['xx']
    pairs = list(L.directed(items[:3], 'xx-en'))
    assert pairs[0] == (items[0]['xx'], items[0]['en'])


def test_word_orders_show_in_output(langs):
  tree = L.parse('The dog sees a cat.')
  for lang in langs.values():
    xx = lang.render(tree)
    pos = {c: xx.lower().find(lang.lexicon[w]) for c, w in (('S', 'dog'), ('V', 'see'), ('O', 'cat'))}
    assert ''.join(sorted(pos, key=pos.get)) == lang.grammar.order


def test_grammar_book_covers_train_vocabulary(langs):
  for lang in langs.values():
    book = lang.grammar_book()
    assert len(book.split()) < 500  # about 1.3k SmolLM2 tokens: fits a 2k context
    for m in lang.morph.values():
      assert m in book
    for it in lang.parallel('train', n=N):
      for lemma in L.lemmas(L.parse(it['en'])):
        assert f'{lemma}={lang.lexicon[lemma]}' in book, (lang.name, lemma)


def test_grammar_book_examples_come_from_train(langs):
  train = {it['en'] for it in langs['tamu'].parallel('train', n=3)}
  book = langs['tamu'].grammar_book(n_examples=3)
  assert all(s in book for s in train)


def test_splits_are_disjoint_and_test_is_guarded(langs):
  lang = langs[L.NAMES[0]]
  got = {s: {it['en'] for it in lang.parallel(s, n=300, allow_test=True)} for s in ('train', 'validation', 'test')}
  assert all(len(v) == 300 for v in got.values())
  assert not got['train'] & got['validation'] and not got['train'] & got['test']
  assert not got['validation'] & got['test']
  with pytest.raises(PermissionError):
    lang.parallel('test', n=5)
  # a shorter request is a prefix of a longer one, and the split is shared by every language
  other = langs[L.NAMES[1]]
  assert [it['en'] for it in lang.parallel('train', n=20)] == [it['en'] for it in other.parallel('train', n=20)]
  assert lang.parallel('train', n=20) == lang.parallel('train', n=40)[:20]
