"""ARC as text: serialisation round trips, malformed text, the curated small-grid subset, exact match."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleep_jax.data import arc


@st.composite
def grids(draw):
  h = draw(st.integers(1, 30))
  w = draw(st.integers(1, 30))
  return [draw(st.lists(st.integers(0, 9), min_size=w, max_size=w)) for _ in range(h)]


def test_round_trip_fixed():
  g = [[0, 1, 2], [3, 4, 5]]
  assert arc.grid_to_text(g) == '012\n345'
  assert arc.text_to_grid('012\n345') == g
  assert arc.text_to_grid('\n012\n345\n\n') == g


@settings(max_examples=200, deadline=None)
@given(grids())
def test_round_trip_random(g):
  text = arc.grid_to_text(g)
  assert len(text.split('\n')) == len(g)
  assert arc.text_to_grid(text) == g
  assert arc.grid_exact_match(text, g)


@pytest.mark.parametrize('text', ['', '   \n', '12\n3', '1a\n22', '1 2\n3 4', '12\n\n34', '-1'])
def test_malformed_text_raises(text):
  with pytest.raises(ValueError):
    arc.text_to_grid(text)


@pytest.mark.parametrize('grid', [[], [[]], [[1, 2], [3]], [[10]]])
def test_bad_grid_to_text_raises(grid):
  with pytest.raises(ValueError):
    arc.grid_to_text(grid)


def test_exact_match():
  g = [[1, 2], [3, 4]]
  assert arc.grid_exact_match('12\n34', g)
  assert arc.grid_exact_match(' 12\n34\n\nExample 2\nInput:', g)  # generation ran on past the grid
  assert not arc.grid_exact_match('12\n35', g)
  assert not arc.grid_exact_match('12\n34\n56', g)
  assert not arc.grid_exact_match('12\n3', g)
  assert not arc.grid_exact_match('the answer is 12', g)


def test_subset_sizes_criteria_and_disjointness():
  got = {s: arc.subset(s, allow_test=True) for s in ('train', 'validation', 'test')}
  assert len(got['train']) >= 11 and len(got['test']) >= 8 and got['validation']
  ids = [set(v) for v in got.values()]
  assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
  for tasks in got.values():
    for task in tasks.values():
      assert len(task['train']) <= arc.MAX_DEMOS and len(task['test']) == 1
      for p in task['train'] + task['test']:
        for g in (p['input'], p['output']):
          assert len(g) <= arc.MAX_SIDE and len(g[0]) <= arc.MAX_SIDE
  assert list(arc.subset('train', n=11)) == list(got['train'])[:11]
  with pytest.raises(PermissionError):
    arc.subset('test')


def test_task_prompt():
  tid, task = next(iter(arc.subset('train', n=1).items()))
  p = arc.task_prompt(task)
  for ex in task['train']:
    assert arc.grid_to_text(ex['input']) in p and arc.grid_to_text(ex['output']) in p
  assert p.endswith('Test\nInput:\n' + arc.grid_to_text(task['test'][0]['input']) + '\nOutput:\n')
  assert arc.task_target(task) not in p.split('Test\n')[1]
  assert arc.grid_exact_match(arc.task_target(task), task['test'][0]['output'])
