"""Metric functions for seqio tasks: `fn(targets, predictions) -> {name: value in percent}`.

Same calling convention and scale as seqio / t5 metrics, so a task lists them in `metric_fns` directly.
A target may be one string or a list of aliases (any acceptable answer); per-example scores take the best
alias. `exact_match` and `token_f1` use SQuAD answer normalisation (lowercase, drop punctuation, the
articles a/an/the and extra whitespace). Empty inputs are an error: an evaluation over no examples is a bug.
"""
from __future__ import annotations

import collections
import json
import re
import string
from typing import Any, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r'\b(a|an|the)\b')


def normalize_answer(s: str) -> str:
  """SQuAD v1.1 normalisation: lowercase, remove punctuation, articles and extra whitespace."""
  s = ''.join(ch for ch in str(s).lower() if ch not in _PUNCT)
  return ' '.join(_ARTICLES.sub(' ', s).split())


def _aliases(target: Any) -> list[str]:
  if isinstance(target, (list, tuple)):
    if not target:
      raise ValueError('a target alias list is empty')
    return [str(t) for t in target]
  return [str(target)]


def _check(targets: Sequence, predictions: Sequence, name: str) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{name}: {len(targets)} targets but {len(predictions)} predictions')
  if not targets:
    raise ValueError(f'{name}: no examples')


def _f1(target: str, prediction: str) -> float:
  """Token F1 in [0, 1] of normalised strings; two empty answers agree (SQuAD v2 convention)."""
  t, p = normalize_answer(target).split(), normalize_answer(prediction).split()
  if not t or not p:
    return float(t == p)
  common = sum((collections.Counter(t) & collections.Counter(p)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(p), common / len(t)
  return 2 * precision * recall / (precision + recall)


def exact_match(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """% of predictions equal to some alias after SQuAD normalisation."""
  _check(targets, predictions, 'exact_match')
  hits = [max(normalize_answer(a) == normalize_answer(p) for a in _aliases(t))
          for t, p in zip(targets, predictions)]
  return {'exact_match': 100.0 * sum(hits) / len(hits)}


def token_f1(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Mean over examples of the best-alias SQuAD token F1, in percent."""
  _check(targets, predictions, 'token_f1')
  f1s = [max(_f1(a, p) for a in _aliases(t)) for t, p in zip(targets, predictions)]
  return {'token_f1': 100.0 * sum(f1s) / len(f1s)}


def chrf(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Corpus-level chrF (sacrebleu defaults: char order 6, beta 2); aliases become extra reference streams."""
  from sacrebleu.metrics import CHRF
  _check(targets, predictions, 'chrf')
  refs = [_aliases(t) for t in targets]
  n = max(len(r) for r in refs)
  streams = [[r[i] if i < len(r) else None for r in refs] for i in range(n)]  # None: no i-th reference
  return {'chrf': float(CHRF().corpus_score([str(p) for p in predictions], streams).score)}


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """% of predictions exactly equal to their target (labels, class ids); no normalisation."""
  _check(targets, predictions, 'accuracy')
  return {'accuracy': 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


# ---- ARC grids -------------------------------------------------------------------------------------

Grid = list[list[int]]


def parse_grid(text: str) -> Grid | None:
  """A rectangular grid of digits from text, or None when malformed.

  Accepts one row per line with digits written together ('012') or separated by spaces/commas ('0 1 2'),
  or a JSON list of lists ('[[0, 1], [2, 3]]'). Blank lines around the grid are ignored.
  """
  text = str(text).strip()
  if not text:
    return None
  if text.startswith('['):
    try:
      grid = json.loads(text)
    except ValueError:
      return None
    if not (isinstance(grid, list) and grid and all(isinstance(r, list) and r for r in grid)):
      return None
    if not all(type(v) is int and 0 <= v <= 9 for r in grid for v in r):
      return None
  else:
    grid = []
    for line in text.splitlines():
      cells = re.sub(r'[\s,]', '', line)
      if not cells or not cells.isdigit() or not cells.isascii():
        return None
      grid.append([int(c) for c in cells])
  return grid if len({len(r) for r in grid}) == 1 else None


def arc_grid_exact_match(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """% of predicted grids equal to the target grid; a malformed prediction counts as wrong.

  Targets are lists of lists of ints or text in a format `parse_grid` reads; an unreadable target raises.
  """
  _check(targets, predictions, 'arc_grid_exact_match')
  hits = 0
  for i, (t, p) in enumerate(zip(targets, predictions)):
    target = parse_grid(t) if isinstance(t, str) else [[int(v) for v in row] for row in t]
    if target is None:
      raise ValueError(f'arc_grid_exact_match: target {i} is not a grid: {t!r}')
    hits += parse_grid(p) == target
  return {'arc_grid_exact_match': 100.0 * hits / len(targets)}
