"""Text helpers shared by the sleep phases: sentence splitting and the memory buffer's prompts."""
from __future__ import annotations

import numpy as np


def sentences(text: str) -> list[str]:
  out, cur = [], ''
  for ch in text.replace('\n', ' '):
    cur += ch
    if ch in '.!?' and len(cur.split()) >= 4:
      out.append(cur.strip())
      cur = ''
  if len(cur.split()) >= 4:
    out.append(cur.strip())
  return out


def buffer_prompts(doc: dict, templates, rng: np.random.Generator, n_prefix: int) -> list[str]:
  """Instructions made from one buffered document: templates with {title}, and with {prefix} the first
  half of `n_prefix` random sentences (prefixes of the wake context, PAPER sec. 3's default)."""
  out = []
  sents = sentences(doc['text'])
  for t in templates:
    if '{prefix}' in t:
      for j in rng.permutation(len(sents))[:n_prefix]:
        words = sents[j].split()
        out.append(t.format(prefix=' '.join(words[:max(2, len(words) // 2)]), title=doc.get('title', '')))
    else:
      out.append(t.format(title=doc.get('title', '')))
  return out
