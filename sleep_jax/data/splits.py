"""Deterministic train / validation / test assignment, and the guard that keeps the test split held out.

An item's split is a pure function of a stable key (e.g. an entity name or a task id) and the generator
seed, so splits never depend on generation order and no key can land in two splits. Reading the test
split needs `allow_test=True`, which only final-evaluation code passes: training, selection and tuning
code never does, and `check_split` makes forgetting that an error rather than a leak.
"""
from __future__ import annotations

import hashlib

SPLITS = ('train', 'validation', 'test')
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def assign_split(key: str, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> str:
  """Split for `key`: a hash of (seed, key) mapped to [0, 1) against cumulative fractions."""
  if abs(sum(fractions) - 1.0) > 1e-9 or len(fractions) != 3:
    raise ValueError(f'split fractions must be 3 numbers summing to 1, got {fractions}')
  h = hashlib.sha256(f'{seed}:{key}'.encode()).digest()
  u = int.from_bytes(h[:8], 'big') / 2.0**64
  return 'train' if u < fractions[0] else 'validation' if u < fractions[0] + fractions[1] else 'test'


def check_split(split: str, allow_test: bool = False) -> str:
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is not one of {SPLITS}')
  if split == 'test' and not allow_test:
    raise PermissionError("the 'test' split is held out: only final evaluation reads it, by passing "
                          "allow_test=True; train and tune on 'train' and 'validation'")
  return split
