"""Metric functions against hand-computed cases."""
import pytest
from sacrebleu.metrics import CHRF

from sleep_jax.data import metrics as m


def test_normalize_answer():
  assert m.normalize_answer('  The Cat, sat!  ') == 'cat sat'
  assert m.normalize_answer('An apple a day') == 'apple day'
  assert m.normalize_answer('theatre') == 'theatre'      # articles only as whole words
  assert m.normalize_answer('') == ''


def test_exact_match_normalisation_and_aliases():
  # 1: 'Paris.' == 'paris' after normalisation; 2: 'The Louvre' matches the second alias; 3: wrong.
  out = m.exact_match([['Paris'], ['Musée', 'louvre'], 'Rome'], ['paris.', 'The Louvre', 'Roma'])
  assert out == {'exact_match': pytest.approx(200 / 3)}
  assert m.exact_match(['x'], ['x']) == {'exact_match': 100.0}


def test_token_f1_hand_computed():
  # target 'the cat sat' -> ['cat', 'sat']; prediction 'a cat sat down' -> ['cat', 'sat', 'down'].
  # common = 2, precision = 2/3, recall = 2/2 = 1, F1 = 2 * (2/3) * 1 / (2/3 + 1) = (4/3) / (5/3) = 0.8.
  assert m.token_f1(['the cat sat'], ['a cat sat down'])['token_f1'] == pytest.approx(80.0)
  # Counts are clipped: target 'a a b' -> ['b'] (the article 'a' is dropped); prediction 'b b' -> ['b', 'b'].
  # common = min(1, 2) = 1, precision = 1/2, recall = 1/1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
  assert m.token_f1(['a a b'], ['b b'])['token_f1'] == pytest.approx(200 / 3)
  # 'red fox' vs 'blue fox jumps': common 1, P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4.
  assert m.token_f1(['red fox'], ['blue fox jumps'])['token_f1'] == pytest.approx(40.0)


def test_token_f1_aliases_take_max_and_average_over_examples():
  # Example 1: aliases 'red fox' (F1 0.4, above) and 'fox jumps' (common 2, P = 2/3, R = 1, F1 = 0.8): max 0.8.
  # Example 2: no overlap, F1 0. Mean = 0.4 -> 40%.
  out = m.token_f1([['red fox', 'fox jumps'], 'dog'], ['blue fox jumps', 'cat'])
  assert out['token_f1'] == pytest.approx(40.0)


def test_empty_strings():
  # Two empty answers agree (SQuAD v2 convention); empty vs non-empty scores 0. 'The' normalises to ''.
  assert m.token_f1([''], [''])['token_f1'] == 100.0
  assert m.token_f1(['the'], [''])['token_f1'] == 100.0
  assert m.token_f1(['cat'], [''])['token_f1'] == 0.0
  assert m.token_f1([''], ['cat'])['token_f1'] == 0.0
  assert m.exact_match([''], [''])['exact_match'] == 100.0
  assert m.exact_match(['cat'], [''])['exact_match'] == 0.0
  assert m.chrf(['abc'], [''])['chrf'] == 0.0


def test_length_mismatch_and_no_examples_raise():
  for fn in (m.exact_match, m.token_f1, m.chrf, m.accuracy, m.arc_grid_exact_match):
    with pytest.raises(ValueError):
      fn(['a'], [])
    with pytest.raises(ValueError):
      fn([], [])


def test_chrf_matches_sacrebleu():
  tgt, pred = 'Le chat est assis sur le tapis.', 'Le chat assis sur un tapis.'
  expected = CHRF().sentence_score(pred, [tgt]).score
  assert m.chrf([tgt], [pred])['chrf'] == pytest.approx(expected)
  assert 0 < expected < 100
  assert m.chrf(['identical text', 'more'], ['identical text', 'more'])['chrf'] == pytest.approx(100.0)
  # Corpus-level: statistics summed over sentences, not the mean of sentence scores.
  tg, pr = ['the cat sat on the mat', 'hello'], ['the cat sat', 'hallo']
  assert m.chrf(tg, pr)['chrf'] == pytest.approx(CHRF().corpus_score(pr, [tg]).score)
  # An alias list is a second reference stream: a prediction equal to any alias scores 100.
  assert m.chrf([['bonjour', 'salut']], ['salut'])['chrf'] == pytest.approx(100.0)


def test_accuracy():
  assert m.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == {'accuracy': 75.0}
  assert m.accuracy(['book_flight', 'weather'], ['book_flight', 'Weather']) == {'accuracy': 50.0}


def test_parse_grid():
  assert m.parse_grid('01\n23\n') == [[0, 1], [2, 3]]
  assert m.parse_grid('\n0 1\n2, 3') == [[0, 1], [2, 3]]
  assert m.parse_grid('[[0, 1], [2, 3]]') == [[0, 1], [2, 3]]
  for bad in ('', '01\n2', '0a\n12', '01\n\n23', '[[0, 1], [2]]', '[[10]]', '[[0, 1]', '[]', '²'):
    assert m.parse_grid(bad) is None, bad


def test_arc_grid_exact_match():
  targets = [[[0, 1], [2, 3]], '01\n23', [[5]], [[7, 7]]]
  preds = ['01\n23', '0 1\n2 3\n', 'garbage output', '77\n77']   # hit, hit, malformed, wrong shape
  assert m.arc_grid_exact_match(targets, preds) == {'arc_grid_exact_match': 50.0}
  with pytest.raises(ValueError, match='target 0'):
    m.arc_grid_exact_match(['not a grid'], ['01'])
