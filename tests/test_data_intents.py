"""Class-incremental intent generator: determinism, classes and stages, per-class counts, split hygiene."""
import re
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from sleep_jax.data import intents as I
from sleep_jax.data.splits import SPLITS


@pytest.fixture(scope='module')
def data() -> dict[str, list[dict]]:
  return {s: I.generate(s, allow_test=True) for s in SPLITS}


def test_version():
  assert re.fullmatch(r'\d+\.\d+\.\d+', I.VERSION)


def test_test_split_is_guarded():
  with pytest.raises(PermissionError):
    I.generate('test')
  with pytest.raises(ValueError):
    I.generate('eval')


def test_classes():
  cs = I.classes()
  assert len(cs) >= 60 and [c['label'] for c in cs] == list(range(len(cs)))
  assert len({c['label_name'] for c in cs}) == len(cs)
  assert len({c['domain'] for c in cs}) >= 10 and all(c['description'] for c in cs)


def test_stages_partition_the_classes():
  st0 = I.stages(0)
  flat = [n for s in st0 for n in s]
  assert len(st0) >= 6 and all(st0)
  assert sorted(flat) == sorted(c['label_name'] for c in I.classes())  # each class in exactly one stage
  assert I.stages(0) == st0 and I.stages(1) != st0


def test_deterministic_and_seed_dependent(data):
  assert I.generate('train') == data['train']
  assert [r['text'] for r in I.generate('train', seed=1)] != [r['text'] for r in data['train']]


def test_counts_and_fields(data):
  rows = [r for s in SPLITS for r in data[s]]
  stage_of = {n: i for i, s in enumerate(I.stages(0)) for n in s}
  names = {c['label']: c['label_name'] for c in I.classes()}
  for r in rows:
    assert {'id', 'text', 'label', 'label_name', 'stage'} <= set(r)
    assert names[r['label']] == r['label_name'] and r['stage'] == stage_of[r['label_name']]
  per_class = Counter(r['label'] for r in rows)
  assert len(per_class) == len(names) and min(per_class.values()) >= 40
  for s in SPLITS:
    assert len({r['label'] for r in data[s]}) == len(names)  # every class in every split
  distinct = Counter(r['label'] for r in {(r['label'], r['text']): r for r in rows}.values())
  assert min(distinct.values()) >= 40
  assert len({r['id'] for r in rows}) == len(rows)


def test_surface_variety(data):
  texts = [r['text'] for r in data['train']]
  assert sum(t.endswith('?') for t in texts) > len(texts) // 10
  assert sum(t != t.lower() for t in texts) > len(texts) // 10
  assert any(t.startswith(('can you', 'Can you')) for t in texts)
  assert any(t.startswith(('i need to', 'I need to')) for t in texts)


def test_splits_share_no_utterance(data):
  raw = {s: {r['text'] for r in data[s]} for s in SPLITS}
  norm = {s: {I.normalize(t) for t in raw[s]} for s in SPLITS}
  for a, b in (('train', 'test'), ('train', 'validation'), ('validation', 'test')):
    assert not raw[a] & raw[b] and not norm[a] & norm[b]


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_property_deterministic_and_disjoint(seed):
  parts = {s: I.generate(s, seed=seed, allow_test=True) for s in SPLITS}
  assert parts['train'] == I.generate('train', seed=seed)
  keys = {s: {I.normalize(r['text']) for r in parts[s]} for s in SPLITS}
  assert not keys['train'] & keys['test'] and not keys['train'] & keys['validation']
  assert not keys['validation'] & keys['test']
  assert sorted(n for s in I.stages(seed) for n in s) == sorted(c['label_name'] for c in I.classes())
