"""Long-horizon streams: needle placement, depth control, lengths 4x..64x a window, held-out essays and values."""
import pytest

from sleep_jax.data import long_horizon as H
from sleep_jax.data.splits import assign_split

WINDOW = 512


@pytest.fixture(scope='module')
def train_items():
  return {k: H.make_items(k, 'train', 5, window=WINDOW) for k in H.KINDS}


def test_needles_at_offsets_and_answer_in_needle(train_items):
  for kind, items in train_items.items():
    for it in items:
      assert it['kind'] == kind and it['split'] == 'train'
      for n in it['needles']:
        assert it['stream'][n['char_offset']:n['char_offset'] + len(n['text'])] == n['text']
      holders = [n for n in it['needles'] if it['answer'] in n['text']]
      assert holders, it['id']
      assert it['stream'].count(it['answer']) == len(holders)  # nowhere else in the haystack
      assert len(it['needles']) == {'niah': 1, 'mk_niah': 4, 'multi_hop': 4}[kind]


def test_lengths_span_4x_to_64x_window(train_items):
  for items in train_items.values():
    targets = [WINDOW * m for m in H.MULTIPLIERS]
    assert targets[0] == 4 * WINDOW and targets[-1] == 64 * WINDOW
    for it, t in zip(items, targets):
      assert abs(it['n_tokens_approx'] - t) <= 0.02 * t, (it['id'], it['n_tokens_approx'], t)
      assert it['n_tokens_approx'] == H.approx_tokens(it['stream'])


def test_custom_token_counter():
  count = lambda s: len(s) // 4  # noqa: E731
  it = H.make_item('niah', 'train', 0, window=256, multiplier=8, count_tokens=count)
  assert it['n_tokens_approx'] == count(it['stream'])
  assert abs(it['n_tokens_approx'] - 2048) <= 50


def test_depths_are_controlled_and_ordered():
  depths = [0.9, 0.1, 0.5, 0.3]
  it = H.make_item('mk_niah', 'train', 3, window=WINDOW, multiplier=8, depths=depths)
  offs = [n['char_offset'] for n in it['needles']]
  assert offs == sorted(offs)
  assert [n['depth'] for n in it['needles']] == sorted(n['depth'] for n in it['needles'])
  for got, want in zip([n['depth'] for n in it['needles']], sorted(depths)):
    assert abs(got - want) < 0.02
  for d in (0.0, 1.0):
    one = H.make_item('niah', 'train', 0, depths=d)
    n = one['needles'][0]
    assert n['depth'] == d
    assert (one['stream'].startswith(n['text']) if d == 0 else one['stream'].endswith(n['text']))
  with pytest.raises(ValueError):
    H.make_item('niah', 'train', 0, depths=1.5)


def test_multi_hop_chain_leads_to_answer():
  it = H.make_item('multi_hop', 'train', 7, hops=3, n_distractors=2, depths=None)
  facts = dict(n['text'].rstrip('.').lower().split(' is in ') for n in it['needles'])
  start = 'the ' + it['question'].split('Where is the ')[1].split('?')[0]
  node, steps = start, 0
  while node in facts:
    node, steps = facts[node], steps + 1
  assert steps == 3 and node == 'the ' + it['answer']
  assert len(it['needles']) == 9


def test_test_split_is_held_out():
  with pytest.raises(PermissionError):
    H.make_item('niah', 'test', 0)
  test_items = [H.make_item(k, 'test', i, multiplier=16, allow_test=True) for k in H.KINDS for i in range(2)]
  train_items = [H.make_item(k, 'train', i, multiplier=16) for k in H.KINDS for i in range(2)]
  test_essays = {e for it in test_items for e in it['essays']}
  train_essays = {e for it in train_items for e in it['essays']}
  assert test_essays and train_essays and not test_essays & train_essays
  assert {n for n, _ in H.split_essays('test', allow_test=True)}.isdisjoint(n for n, _ in H.split_essays('train'))
  assert not set(H.keys('train')) & set(H.keys('test'))
  assert not set(H.places('train')) & set(H.places('test'))
  for it in test_items:
    if it['kind'] != 'multi_hop':
      assert assign_split(f"value:{it['answer']}") == 'test'


def test_deterministic():
  a = H.make_item('mk_niah', 'validation', 2, multiplier=8)
  b = H.make_item('mk_niah', 'validation', 2, multiplier=8)
  assert a == b
  assert H.make_item('mk_niah', 'validation', 3, multiplier=8)['stream'] != a['stream']


def test_needle_vocabulary_never_occurs_in_essays():
  text = ' '.join(' '.join(t.split()) for _, t in H.sources.essays()).lower()
  for split in ('train', 'validation', 'test'):
    for phrase in H.keys(split) + H.objects(split) + H.places(split):
      assert phrase not in text, phrase
