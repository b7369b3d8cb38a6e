"""Sleep on the controlled world: new people, read in context, consolidated into new experts.

The pre-sleep model reads a person's bio in its context (the wake phase of this setting: attention is the fast
memory, as in the main knowledge job with wake.lr = 0). A sleep then runs the project's own phases, unchanged:

  Knowledge Seeding  teacher = the pre-sleep model with a bio in its prompt, student = the same model plus one new
                     expert per receiver layer with the question alone (`consolidate.Seeder`, `View`); the memory
                     buffer is questions on the TRAINED templates (never the held-out ones the evaluation asks), plus
                     generative replay: `<bos>` prompts whose teacher samples are whatever the pre-sleep model
                     writes unprompted (the teacher and student prompts are equal there, so the student learns to
                     keep the old model's distribution; no pretraining data is read).
  Dreaming           per person a `DreamTask`: with the bio, the model restates a fact (prompt = the name) or answers
                     a trained question; tau = NLL of the bio's facts as sentence completions without the bio
                     (`dream.Dreamer`: gradient selection, isolated copies, ReST-EM into the same new experts).

Measured (`Bench`): closed-book recall of the new people on HELD-OUT question templates (exact match of greedy
answers), the open-book ceiling (the pre-sleep model reading a bio), retention (closed-book recall of pretraining
people, QA-trained and bio-only) and gap closed = (after - before) / (ceiling - before).

The `world_sleep` job (`make run`) sleeps the shipped world model on a few validation people and prints that table.
The experiments (experiments/world.py) use the same functions for every row.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import numpy as np

from sleep_jax.data import world as world_lib
from sleep_jax.data.world import ATTRS, BIO_TEMPLATES, Person, World
from sleep_jax.phases import consolidate as ks
from sleep_jax.phases import dream as dream_lib
from sleep_jax.results import run_info, write_json
from sleep_jax.runtime import Runtime


def _chat(tok, text: str) -> list[int]:
  return tok.chat_tokens([{'role': 'user', 'content': text}])


def ks_items(world: World, tok, people: Sequence[Person], seed: int, questions_per_person: int,
             replay: float, restate_per_person: int = 0, replay_kind: str = 'bos') -> list[ks.Item]:
  """The memory buffer of one sleep. Per person: `questions_per_person` trained-template questions (cycling over
  the attributes) and `restate_per_person` restatements (the prompt is the name, so the teacher continues with the
  bio's sentences, several facts per sample), the teacher's prompt a fresh rendering of the bio before the
  student's; then `replay` x as many generative-replay items, teacher prompt = student prompt, so the student keeps
  the pre-sleep model's distribution on what the teacher samples: `<bos>` ('bos': whatever the model writes
  unprompted) or a trained-template question about a stranger ('names': a name pair no world person has; what the
  model answers about people it does not know). Neither reads pretraining data."""
  rng = np.random.default_rng([seed, 0x17e5])
  items = []
  for p in people:
    for j in range(questions_per_person):
      a = ATTRS[j % len(ATTRS)]
      q = world.question(p, a, str(rng.choice(world_lib.questions(a, held_out=False))))
      items.append(ks.Item(_chat(tok, q), _chat(tok, f'{world.bio(p, rng)} {q}'), p.name))
    for _ in range(restate_per_person):
      items.append(ks.Item(_chat(tok, p.name), _chat(tok, f'{world.bio(p, rng)} {p.name}'), p.name))
  n_replay = int(round(replay * len(items)))
  if replay_kind not in ('bos', 'names'):
    raise ValueError(f"world_sleep.replay_kind={replay_kind!r} is not one of 'bos', 'names'")
  for j in range(n_replay):
    if replay_kind == 'bos':
      prompt = [tok.bos_id]
    else:
      a = ATTRS[j % len(ATTRS)]
      prompt = _chat(tok, world.question(world.fresh_person(rng), a,
                                         str(rng.choice(world_lib.questions(a, held_out=False)))))
    items.append(ks.Item(prompt, prompt, 'replay'))
  return items


def probe_pairs(person: Person) -> list[tuple[str, str]]:
  """tau of Dreaming: each fact as a sentence completion ('{name} was born in' -> '{city} .'), without the bio."""
  out = []
  for a in ATTRS:
    head, tail = BIO_TEMPLATES[a][0].split('{v}')
    out.append((head.replace('{n}', person.name).strip(), f'{person.value(a)}{tail}'.strip()))
  return out


def dream_tasks(world: World, people: Sequence[Person], seed: int, n_questions: int = 2) -> list[dream_lib.DreamTask]:
  """One DreamTask per person: with the bio, restate a fact (the name starts a bio sentence) or answer trained
  questions; the memory format is the same request without the bio."""
  rng = np.random.default_rng([seed, 0xd2ea])
  tasks = []
  for p in people:
    bio = world.bio(p, rng)
    attrs = [ATTRS[i] for i in rng.permutation(len(ATTRS))[:n_questions]]
    qs = [world.question(p, a, str(rng.choice(world_lib.questions(a, held_out=False)))) for a in attrs]
    mem = [p.name] + qs
    tasks.append(dream_lib.DreamTask(p.name, [f'{bio} {m}' for m in mem], mem, probe_pairs(p)))
  return tasks


class Bench:
  """Closed-book recall, open-book ceiling and retention on held-out question templates (exact match)."""

  def __init__(self, rt: Runtime, world: World, *, retention_people: int = 100, seed: int = 0):
    self.world, self.seed = world, seed
    self.em = world_lib.ExactMatch(rt.b.model, rt.tokenizer)
    self.retain = {'qa': world.people['pretrain_qa'][:retention_people],
                   'bio': world.people['pretrain_bio'][:retention_people]}

  def recall(self, params, cms, people, open_book: bool = False, held_out: bool = True) -> float:
    return world_lib.recall(self.em, params, cms, self.world, people, open_book=open_book, held_out=held_out,
                            seed=self.seed)

  def per_person(self, params, cms, people) -> np.ndarray:
    """Closed-book recall of each person (mean over attributes and held-out templates)."""
    qs = self.world.eval_questions(people)
    hits = self.em.hits(params, cms, [q['question'] for q in qs], [q['answer'] for q in qs])
    return hits.reshape(len(people), -1).mean(axis=1)

  def measure(self, params, cms, people) -> dict:
    return {'recall': self.recall(params, cms, people),
            'recall_trained': self.recall(params, cms, people, held_out=False),   # diagnostic: trained templates
            'retention_qa': self.recall(params, cms, self.retain['qa']),
            'retention_bio': self.recall(params, cms, self.retain['bio'])}


def gap_closed(before: float, after: float, ceiling: float) -> float:
  return (after - before) / (ceiling - before) if ceiling > before else float('nan')


def sleep_people(rt: Runtime, params, cms, world: World, people: Sequence[Person], seed: int, *,
                 kcfg: ks.KSConfig | None = None, dcfg: dream_lib.DreamConfig | None = None,
                 questions_per_person: int = 24, replay: float = 1.0, restate_per_person: int = 0,
                 replay_kind: str = 'bos', layers: Sequence[int] | None = None, desc: str = 'sleep') -> tuple[dict, dict, dict]:
  """One sleep on `people`: Knowledge Seeding into a new expert per receiver layer (or the receivers' base MLPs
  with kcfg.expand=False), then Dreaming into the same parameters when dcfg.enabled. Returns (params, cms, info)."""
  kcfg = kcfg or rt.ks_config()
  dcfg = dcfg or rt.dream_config()
  layers = tuple(rt.layers() if layers is None else layers)
  t0 = time.perf_counter()
  view = ks.View(layers, kcfg.expand)
  if kcfg.expand:
    sp, scms, index = ks.expand_student(params, cms, layers)
  else:
    sp, scms, index = params, cms, {}
  items = ks_items(world, rt.tokenizer, people, seed, questions_per_person, replay, restate_per_person, replay_kind)
  state, ks_hist = rt.seeder(kcfg).run({'params': params, 'cms': cms}, {'params': sp, 'cms': scms}, index, view,
                                       items, jax.random.key(seed), progress_desc=f'{desc}/ks')
  new = ks.commit(sp, state, index, view) if kcfg.steps else sp
  info = {'ks': ks_hist, 'n_items': len(items), 'ks_seconds': time.perf_counter() - t0}
  if dcfg.enabled:
    t1 = time.perf_counter()
    dreamer = rt.dreamer(dcfg)
    dstate, rounds = dreamer.run(new, scms, index, view, dream_tasks(world, people, seed), jax.random.key(seed + 1),
                                 progress_desc=f'{desc}/dream')
    new = dreamer.commit(new, dstate, index, view)
    info.update(dream_rounds=[{'round': r['round'], 'reward_rate': r['reward_rate']} for r in rounds],
                dream_seconds=time.perf_counter() - t1)
  info['seconds'] = time.perf_counter() - t0
  return new, scms, info


def world_sleep(config, workdir: str) -> dict:
  """The main job on the world: sleep the shipped world model on `world_sleep.people` validation people and print
  closed-book recall before / after, the open-book ceiling, retention and the gap closed."""
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  c = config.world_sleep
  rt = Runtime(config)
  b = rt.b
  world = World(world_lib.spec_from(config.world))
  people = world.people[c.split][:c.people]
  bench = Bench(rt, world, retention_people=c.retention_people, seed=config.seed)
  before = bench.measure(b.params, b.cms, people)
  ceiling = bench.recall(b.params, b.cms, people, open_book=True)
  params, cms, info = sleep_people(rt, b.params, b.cms, world, people, config.seed,
                                   questions_per_person=c.questions_per_person, replay=c.replay,
                                   restate_per_person=c.restate_per_person, replay_kind=c.replay_kind)
  after = bench.measure(params, cms, people)
  res = {'job': 'world_sleep', 'people': [p.name for p in people], 'split': c.split, 'before': before,
         'after': after, 'ceiling': ceiling, 'gap_closed': gap_closed(before['recall'], after['recall'], ceiling),
         'sleep': info, 'ks': dict(config.sleep.ks), 'dream': dict(config.sleep.dream),
         'seconds': time.perf_counter() - t0, **run_info(config)}
  write_json(os.path.join(workdir, 'results.json'), res)
  pct = lambda x: f'{100 * x:.1f}'
  print(f'\nSleep on the controlled world: {len(people)} new {c.split} people, questions on held-out templates\n'
        '| measure | before sleep | after sleep |\n|---|---:|---:|\n'
        f"| closed-book recall, new people % | {pct(before['recall'])} | {pct(after['recall'])} |\n"
        f"| open-book ceiling (bio in context) % | {pct(ceiling)} | |\n"
        f"| retention, QA-trained pretraining people % | {pct(before['retention_qa'])} | "
        f"{pct(after['retention_qa'])} |\n"
        f"| retention, bio-only pretraining people % | {pct(before['retention_bio'])} | "
        f"{pct(after['retention_bio'])} |\n"
        f"gap closed {pct(res['gap_closed'])}%; sleep {info['seconds']:.0f}s "
        f"(Knowledge Seeding {info['ks_seconds']:.0f}s"
        + (f", Dreaming {info['dream_seconds']:.0f}s" if 'dream_seconds' in info else '') + f"); "
        f"{res['seconds']:.0f}s in all; results in {os.path.join(workdir, 'results.json')}")
  return res

