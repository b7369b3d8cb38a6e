"""The controlled world: invented people with six attributes, bios, questions, and a closed word vocabulary.

The CPU-scale instrument of the project (Allen-Zhu & Li, *Physics of Language Models 3.1*, bioS): a tiny Llama
trained from scratch on this world can be measured, in minutes, on whether a sleep puts new people's facts into
its weights (closed-book recall), what it costs the people it knew (retention), and how far it gets towards
reading the bio in its context (the open-book ceiling). Everything is a pure function of the world seed.

People and splits (`World.people[split]`):
  pretrain_qa   bios AND closed-book question-answer documents during pretraining
  pretrain_bio  bios only during pretraining (closed-book QA on them measures *extraction*)
  validation    never seen in pretraining: the people every knob of a sleep is chosen on
  test          never seen in pretraining: the people results are reported on

Text:
  bio           one sentence per attribute, each from one of several templates, the full name in every sentence,
                the sentences shuffled; re-rendered at every exposure (a new template draw and order)
  question      a frame x an attribute phrase ("what is the birth city of {name} ?", "{name} : employer ?", ...) or
                one of the attribute's natural questions ("where was {name} born ?"); per attribute two of the
                eight generic frames are HELD OUT of every training document and used only for evaluation. The
                held-out frames rotate over attributes, so every frame is seen in training with other attributes:
                recall on held-out frames measures knowledge, not a memorised question string.
  answer        the value's words, then <eos>. A document ends with <eos> too.

Pretraining documents (`pretrain_batch`) mix bios of pretraining people, closed-book QA documents of the QA half,
and open-book documents: a *fresh random person* (a new name pair and random values, drawn per document) whose
bio is followed by questions about them, so the model learns to read a bio in its context (the teacher of a
sleep) without ever seeing the validation / test people. Answer tokens are up-weighted in the loss.

Tokenizer: a `tokenizers` WordLevel model over whitespace-split words (each name part and value word one token),
saved and loaded like any Hugging Face tokenizer; its chat template is `<bos>` + the user message, so the project's
chat-format code paths (Seeder, Dreamer, Lab) run on the world unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Sequence

import numpy as np

VERSION = '1.0.0'   # of the built `sleep_world` dataset (registry.py): bump when people, templates or sizes change
PAD, BOS, EOS, UNK = '<pad>', '<bos>', '<eos>', '<unk>'
SPLITS = ('pretrain_qa', 'pretrain_bio', 'validation', 'test')
ATTRS = ('birth_date', 'birth_city', 'university', 'major', 'employer', 'work_city')

FIRST = ('alma', 'bruno', 'cora', 'dario', 'elin', 'fabio', 'greta', 'hugo', 'ines', 'jonas', 'karla', 'luca',
         'mira', 'nils', 'olga', 'pavel', 'quinn', 'rosa', 'sven', 'tara', 'umar', 'vera', 'wim', 'xena', 'yuri',
         'zora', 'anton', 'bea', 'cyril', 'dora', 'emil', 'freya', 'gideon', 'hanna', 'ivo', 'jana', 'kai', 'lena',
         'milo', 'nora', 'oskar', 'petra', 'rafael', 'selma', 'theo', 'ulla', 'viktor', 'wanda', 'yara', 'zeno',
         'ada', 'boris', 'celia', 'dmitri', 'edda', 'felix', 'gemma', 'henrik', 'ilse', 'jakob')
LAST = ('adler', 'berg', 'castell', 'dahl', 'engel', 'falk', 'graf', 'haas', 'iversen', 'jung', 'keller', 'lind',
        'moreau', 'nagel', 'ortiz', 'pohl', 'quast', 'roth', 'stein', 'thiel', 'ueda', 'vogel', 'wolff', 'yilmaz',
        'zimmer', 'arndt', 'brandt', 'conti', 'dietz', 'ek', 'fuchs', 'gallo', 'horn', 'ito', 'janssen', 'krause',
        'lorenz', 'marino', 'novak', 'olsen', 'petrov', 'ricci', 'sauer', 'tanaka', 'ulrich', 'vidal', 'weber',
        'young', 'zeller', 'aalto', 'bauer', 'costa', 'diaz', 'eriksen', 'fischer', 'gruber', 'hoffmann', 'kaya',
        'lange', 'meyer')
MONTHS = ('january', 'february', 'march', 'april', 'may', 'june', 'july', 'august', 'september', 'october',
          'november', 'december')
CITIES = ('arden', 'belmora', 'calder', 'dunmere', 'elstow', 'farhaven', 'glenmoor', 'harwick', 'ivybridge',
          'jarrow', 'kelso', 'lindfield', 'marlow', 'northam', 'oakhurst', 'penrith', 'quarry', 'redmarsh',
          'saltash', 'thornby', 'upton', 'valemouth', 'wexley', 'yarmond', 'ashcombe', 'brixley', 'coldwater',
          'dovecot', 'eastleigh', 'foxton', 'greyhaven', 'hollins', 'irwell', 'kirkby', 'lowestoft', 'morland',
          'newbold', 'otterby', 'pelham', 'rowan')
UNIVERSITIES = ('aldine', 'brookfield', 'carrow', 'delmont', 'everly', 'fairholm', 'grantham', 'holloway',
                'islington', 'kingsbury', 'lancing', 'merton', 'norcross', 'oriel', 'prescott', 'queensbury',
                'radcliffe', 'selwyn', 'trinmore', 'uxbridge', 'vanbrugh', 'westcott', 'york', 'ashford',
                'bexley', 'clifton', 'dorset', 'ellery', 'fenwick', 'gresham')
MAJORS = ('physics', 'chemistry', 'biology', 'history', 'economics', 'philosophy', 'linguistics', 'geology',
          'astronomy', 'sociology', 'mathematics', 'medicine', 'law', 'architecture', 'music', 'statistics',
          'psychology', 'anthropology', 'botany', 'zoology', 'ecology', 'journalism', 'literature', 'theology',
          'agronomy', 'robotics', 'optics', 'genetics', 'archaeology', 'cartography')
EMPLOYERS = ('acmecorp', 'bluepeak', 'corvid', 'driftwood', 'emberline', 'foxglove', 'goldleaf', 'hexa',
             'ironbark', 'junoware', 'keystone', 'lumen', 'moonrise', 'northwind', 'onyx', 'pinecrest', 'quantra',
             'redfern', 'silverline', 'tidewater', 'umbra', 'vantage', 'willowby', 'xylo', 'yellowfin', 'zephyr',
             'anvil', 'birchwood', 'cobalt', 'dynamo', 'ember', 'fathom', 'granite', 'harbor', 'indigo', 'jasper',
             'kestrel', 'lattice', 'meridian', 'nimbus')
DAYS = tuple(str(d) for d in range(1, 29))
YEARS = tuple(str(y) for y in range(1940, 2000))

BIO_TEMPLATES = {
    'birth_date': ('{n} was born on {v} .', '{n} came into the world on {v} .', 'the birthday of {n} is {v} .',
                   '{n} celebrates a birthday on {v} .', '{n} entered life on {v} .', 'on {v} {n} was born .'),
    'birth_city': ('{n} was born in {v} .', '{n} is a native of {v} .', 'the birthplace of {n} is {v} .',
                   '{n} spent early years in {v} .', '{n} was raised in {v} .', 'in {v} {n} was born .'),
    'university': ('{n} studied at {v} .', '{n} graduated from {v} .', '{n} attended {v} .',
                   '{n} received an education at {v} .', '{n} is an alumnus of {v} .', 'at {v} {n} was a student .'),
    'major': ('{n} majored in {v} .', '{n} studied the field of {v} .', 'the major of {n} was {v} .',
              '{n} specialized in {v} .', '{n} earned a degree in {v} .', '{n} focused on {v} at university .'),
    'employer': ('{n} works for {v} .', '{n} is employed by {v} .', 'the employer of {n} is {v} .',
                 '{n} has a job at {v} .', '{n} joined {v} .', '{v} pays the salary of {n} .'),
    'work_city': ('{n} works in {v} .', '{n} has an office in {v} .', 'the workplace of {n} is in {v} .',
                  '{n} commutes to {v} .', '{n} is based in {v} .', 'in {v} {n} goes to work .'),
}
ATTR_PHRASES = {'birth_date': 'birth date', 'birth_city': 'birth city', 'university': 'university',
                'major': 'field of study', 'employer': 'employer', 'work_city': 'work city'}
FRAMES = ('what is the {a} of {n} ?', '{n} : {a} ?', 'tell me the {a} of {n} .', 'what was the {a} of {n} ?',
          'do you know the {a} of {n} ?', '{a} of {n} ?', 'give the {a} of {n} .', 'name the {a} of {n} .')
NATURAL = {
    'birth_date': ('when was {n} born ?', 'on which date was {n} born ?'),
    'birth_city': ('where was {n} born ?', 'in which city was {n} born ?'),
    'university': ('where did {n} study ?', 'which university did {n} attend ?'),
    'major': ('what did {n} study ?', 'which subject did {n} major in ?'),
    'employer': ('where does {n} work ?', 'which company employs {n} ?'),
    'work_city': ('in which city does {n} work ?', 'where is the office of {n} ?'),
}


def heldout_frames(attr: str) -> tuple[int, int]:
  """The two generic frames never used in training for `attr` (rotating: each frame is held out for some
  attributes and trained with the others)."""
  a = ATTRS.index(attr)
  return (2 * a) % len(FRAMES), (2 * a + 1) % len(FRAMES)


def questions(attr: str, held_out: bool) -> tuple[str, ...]:
  """Question templates of `attr` ('{n}' = the full name): the held-out ones, or the trained ones."""
  a, ho = ATTR_PHRASES[attr], heldout_frames(attr)
  gen = [f.replace('{a}', a) for i, f in enumerate(FRAMES) if (i in ho) == held_out]
  return tuple(gen) if held_out else tuple(gen) + NATURAL[attr]


def _values(attr: str):
  return {'birth_city': CITIES, 'work_city': CITIES, 'university': UNIVERSITIES, 'major': MAJORS,
          'employer': EMPLOYERS}[attr]


def vocabulary() -> list[str]:
  """Every word the world can write, specials first; sorted otherwise, so ids depend on nothing but this module."""
  words = set(FIRST) | set(LAST) | set(MONTHS) | set(DAYS) | set(YEARS) | set(CITIES) | set(UNIVERSITIES) \
      | set(MAJORS) | set(EMPLOYERS)
  texts = [t for ts in BIO_TEMPLATES.values() for t in ts] + list(FRAMES) + list(ATTR_PHRASES.values()) \
      + [q for qs in NATURAL.values() for q in qs]
  for t in texts:
    words |= {w for w in t.split() if w not in ('{n}', '{v}', '{a}')}
  return [PAD, BOS, EOS, UNK] + sorted(words)


@dataclasses.dataclass(frozen=True)
class Person:
  name: str                     # 'first last'
  values: tuple[str, ...]       # one per ATTRS entry, each a string of words

  def value(self, attr: str) -> str:
    return self.values[ATTRS.index(attr)]

  def as_record(self) -> dict:
    return {'id': self.name.replace(' ', '_'), 'name': self.name, **dict(zip(ATTRS, self.values))}


def random_values(rng: np.random.Generator) -> tuple[str, ...]:
  date = f'{MONTHS[rng.integers(12)]} {DAYS[rng.integers(len(DAYS))]} {YEARS[rng.integers(len(YEARS))]}'
  return (date,) + tuple(str(rng.choice(_values(a))) for a in ATTRS[1:])


@dataclasses.dataclass(frozen=True)
class WorldSpec:
  """The sizes that define a world (with its seed). `config.world` carries these fields."""
  seed: int = 0
  n_pretrain: int = 200          # pretraining people; the first half QA-trained, the second half bio-only
  n_validation: int = 300        # new people: enough for 256 in one sleep
  n_test: int = 300

  def __post_init__(self):
    n = self.n_pretrain + self.n_validation + self.n_test
    if self.n_pretrain < 2 or self.n_validation < 1 or self.n_test < 1:
      raise ValueError(f'world: n_pretrain={self.n_pretrain} must be >= 2 and n_validation / n_test >= 1')
    if n > len(FIRST) * len(LAST) // 2:
      raise ValueError(f'world: {n} people need more than half of the {len(FIRST) * len(LAST)} name pairs; '
                       'fresh open-book people are drawn from the rest: use fewer people')


class World:
  """The people of one WorldSpec, rendered into bios, questions and documents (pure functions of the seed)."""

  def __init__(self, spec: WorldSpec = WorldSpec()):
    self.spec = spec
    rng = np.random.default_rng([spec.seed, 0x5eed])
    pairs = list(itertools.product(FIRST, LAST))
    order = rng.permutation(len(pairs))
    n_qa = spec.n_pretrain // 2
    sizes = {'pretrain_qa': n_qa, 'pretrain_bio': spec.n_pretrain - n_qa, 'validation': spec.n_validation,
             'test': spec.n_test}
    self.people: dict[str, list[Person]] = {}
    k = 0
    for split in SPLITS:
      self.people[split] = [Person(' '.join(pairs[i]), random_values(rng)) for i in order[k:k + sizes[split]]]
      k += sizes[split]
    self._fresh_names = [' '.join(pairs[i]) for i in order[k:]]   # fresh open-book people use only these

  # ------------------------------------------------------------------------------------- rendering
  @staticmethod
  def bio(person: Person, rng: np.random.Generator) -> str:
    sents = [str(rng.choice(BIO_TEMPLATES[a])).replace('{n}', person.name).replace('{v}', person.value(a))
             for a in ATTRS]
    return ' '.join(sents[i] for i in rng.permutation(len(sents)))

  @staticmethod
  def question(person: Person, attr: str, template: str) -> str:
    return template.replace('{n}', person.name)

  def fresh_person(self, rng: np.random.Generator) -> Person:
    return Person(self._fresh_names[rng.integers(len(self._fresh_names))], random_values(rng))

  def qa_pairs(self, person: Person, rng: np.random.Generator, n: int, held_out: bool = False
               ) -> list[tuple[str, str]]:
    """`n` (question, answer) pairs on distinct attributes, templates drawn from the trained (or held-out) set."""
    attrs = [ATTRS[i] for i in rng.permutation(len(ATTRS))[:n]]
    return [(self.question(person, a, str(rng.choice(questions(a, held_out)))), person.value(a)) for a in attrs]

  # ------------------------------------------------------------------------------------- evaluation rows
  def eval_questions(self, people: Sequence[Person], held_out: bool = True) -> list[dict]:
    """Every (person, attribute, template) question of the held-out (or trained) templates: dicts with
    'person', 'attr', 'question', 'answer'."""
    return [{'person': p.name, 'attr': a, 'question': self.question(p, a, t), 'answer': p.value(a)}
            for p in people for a in ATTRS for t in questions(a, held_out)]

  def no_knowledge_baseline(self) -> float:
    """Expected exact-match accuracy of the best answer that ignores who is asked: per attribute, the most
    frequent value among the pretraining people (what a model that knows nobody can do at best)."""
    pre = self.people['pretrain_qa'] + self.people['pretrain_bio']
    accs = []
    for a in ATTRS:
      vals = [p.value(a) for p in pre]
      top = max(set(vals), key=vals.count)
      accs.append(np.mean([p.value(a) == top for p in self.people['validation']]))   # never the test people
    return float(np.mean(accs))


# -------------------------------------------------------------------------------------------- tokenizer


def make_tokenizer():
  """The world's closed word-level tokenizer as a project `io.Tokenizer` (save / load like any HF tokenizer)."""
  from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
  from sleep_jax.io.tokenizer import Tokenizer
  vocab = {w: i for i, w in enumerate(vocabulary())}
  tk = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tk.decoder = decoders.WordPiece(prefix='##', cleanup=False)   # joins words with single spaces
  tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, BOS, EOS, UNK)])
  template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
  return Tokenizer(tk, bos=BOS, eos=EOS, pad=PAD, chat_template=template, add_bos=True)


@functools.lru_cache(maxsize=None)
def _encoder():
  return {w: i for i, w in enumerate(vocabulary())}


def encode(text: str) -> list[int]:
  """Word ids without the tokenizer object (the pretraining stream's fast path; same ids as make_tokenizer)."""
  enc = _encoder()
  try:
    return [enc[w] for w in text.split()]
  except KeyError as e:
    raise ValueError(f'world text has a word outside the vocabulary: {e.args[0]!r}') from None


def ids(word: str) -> int:
  return _encoder()[word]


# -------------------------------------------------------------------------------------------- pretraining


@dataclasses.dataclass(frozen=True)
class Mix:
  """Pretraining document mix (shares of documents) and loss weights."""
  bio: float = 0.3
  closed_qa: float = 0.2
  open_book: float = 0.5
  qa_per_doc: int = 3
  answer_weight: float = 3.0

  def __post_init__(self):
    if min(self.bio, self.closed_qa, self.open_book) < 0 or self.bio + self.closed_qa + self.open_book <= 0:
      raise ValueError(f'world.mix shares must be >= 0 and not all 0, got {self}')
    if not 1 <= self.qa_per_doc <= len(ATTRS):
      raise ValueError(f'world.mix.qa_per_doc={self.qa_per_doc} must be in [1, {len(ATTRS)}]')


def _qa_tokens(world: World, person: Person, rng, n: int, answer_weight: float) -> tuple[list[int], list[float]]:
  toks, w = [], []
  eos = ids(EOS)
  for q, a in world.qa_pairs(person, rng, n):
    qt, at = encode(q), encode(a) + [eos]
    toks += qt + at
    w += [1.0] * len(qt) + [answer_weight] * len(at)
  return toks, w


def document(world: World, rng: np.random.Generator, mix: Mix) -> tuple[list[int], list[float]]:
  """One pretraining document: (ids starting with <bos>, per-token loss weight of predicting each id)."""
  shares = np.array([mix.bio, mix.closed_qa, mix.open_book], float)
  kind = rng.choice(3, p=shares / shares.sum())
  bos, eos = ids(BOS), ids(EOS)
  if kind == 0:
    pre = world.people['pretrain_qa'] + world.people['pretrain_bio']
    t = encode(world.bio(pre[rng.integers(len(pre))], rng)) + [eos]
    return [bos] + t, [1.0] * len(t)
  if kind == 1:
    qa = world.people['pretrain_qa']
    t, w = _qa_tokens(world, qa[rng.integers(len(qa))], rng, mix.qa_per_doc, mix.answer_weight)
    return [bos] + t, w
  p = world.fresh_person(rng)
  b = encode(world.bio(p, rng))
  t, w = _qa_tokens(world, p, rng, mix.qa_per_doc, mix.answer_weight)
  return [bos] + b + t, [1.0] * len(b) + w


def pretrain_batch(world: World, mix: Mix, seed: int, step: int, batch_size: int, seq_len: int) -> dict:
  """Rows of `seq_len` packed with whole documents (a pure function of (seed, step): resumable without iterator
  state): 'inputs', 'targets', 'weights' (0 on padding), 'segment_ids' (0 = padding) and 'positions', so each
  document attends only to itself (train.lm_loss)."""
  rng = np.random.default_rng([seed, step, 0xb10])
  shape = (batch_size, seq_len)
  out = {'inputs': np.zeros(shape, np.int32), 'targets': np.zeros(shape, np.int32),
         'weights': np.zeros(shape, np.float32), 'segment_ids': np.zeros(shape, np.int32),
         'positions': np.zeros(shape, np.int32)}
  for r in range(batch_size):
    col, seg = 0, 1
    while True:
      toks, w = document(world, rng, mix)
      n = len(toks) - 1
      if n > seq_len:
        raise ValueError(f'a world document of {n + 1} tokens does not fit world.seq_len={seq_len}')
      if col + n > seq_len:
        break
      sl = slice(col, col + n)
      out['inputs'][r, sl], out['targets'][r, sl] = toks[:-1], toks[1:]
      out['weights'][r, sl], out['segment_ids'][r, sl], out['positions'][r, sl] = w, seg, np.arange(n)
      col, seg = col + n, seg + 1
  return out


# -------------------------------------------------------------------------------------------- exact match


def answer_rows(prompts: Sequence[list[int]], answers: Sequence[list[int]], seq_len: int, pad_id: int) -> dict:
  """Teacher-forced rows for exact-match scoring: prompt + answer (+<eos> included by the caller), right-padded;
  'weights' mark the answer's positions (as targets)."""
  n = len(prompts)
  out = {'inputs': np.full((n, seq_len), pad_id, np.int32), 'targets': np.full((n, seq_len), pad_id, np.int32),
         'weights': np.zeros((n, seq_len), np.float32)}
  for r, (p, a) in enumerate(zip(prompts, answers)):
    t = list(p) + list(a)
    if len(t) - 1 > seq_len:
      raise ValueError(f'an evaluation row of {len(t)} tokens does not fit {seq_len}; raise the eval seq_len')
    k = len(t) - 1
    out['inputs'][r, :k], out['targets'][r, :k] = t[:-1], t[1:]
    out['weights'][r, len(p) - 1:k] = 1.0
  return out


class ExactMatch:
  """Greedy exact-match accuracy of answers, computed teacher-forced in one forward pass per chunk: greedy
  decoding reproduces the answer (and stops on its <eos>) iff the argmax at every answer position is the
  answer's token, so this equals decoding and costs one forward pass. Rows are padded to the smallest multiple of
  32 tokens that holds the longest row of a call, in chunks of `chunk` rows: one compilation per length."""

  def __init__(self, model, tokenizer, chunk: int = 256):
    import jax
    import jax.numpy as jnp
    from sleep_jax.models.cms import variables
    self.tok, self.chunk = tokenizer, chunk

    def correct(params, cms, inputs, targets, weights):
      logits, _ = model.apply(variables(params, cms), inputs)
      hit = (jnp.argmax(logits, -1) == targets) | (weights == 0)
      return jnp.all(hit, axis=-1)
    self._fn = jax.jit(correct)

  def rows(self, prompts: Sequence[str], answers: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    eos = self.tok.eos_id
    return ([self.tok.chat_tokens([{'role': 'user', 'content': p}]) for p in prompts],
            [self.tok.encode(a) + [eos] for a in answers])

  def hits(self, params, cms, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Bool per (prompt, answer): does greedy decoding after the prompt produce exactly the answer?"""
    p_ids, a_ids = self.rows(prompts, answers)
    if not p_ids:
      return np.zeros(0, bool)
    longest = max(len(p) + len(a) - 1 for p, a in zip(p_ids, a_ids))
    L = -(-longest // 32) * 32
    out = []
    for s in range(0, len(p_ids), self.chunk):
      n = len(p_ids[s:s + self.chunk])
      r = answer_rows(p_ids[s:s + self.chunk] + [[self.tok.bos_id]] * (self.chunk - n),
                      a_ids[s:s + self.chunk] + [[self.tok.eos_id]] * (self.chunk - n), L, self.tok.pad_id)
      out.append(np.asarray(self._fn(params, cms or {}, r['inputs'], r['targets'], r['weights']))[:n])
    return np.concatenate(out)

  def accuracy(self, params, cms, prompts, answers) -> float:
    return float(self.hits(params, cms, prompts, answers).mean())


# -------------------------------------------------------------------------------------------- config, gates


def spec_from(c) -> WorldSpec:
  """`config.world` -> WorldSpec."""
  return WorldSpec(seed=c.seed, n_pretrain=c.n_pretrain, n_validation=c.n_validation, n_test=c.n_test)


def mix_from(c) -> Mix:
  return Mix(**dict(c.mix))


def open_book_prompts(world: World, qs: Sequence[dict], seed: int) -> list[str]:
  """Each question after a bio of the person it asks about (one rendering per question, seeded)."""
  by_name = {p.name: p for ps in world.people.values() for p in ps}
  rng = np.random.default_rng([seed, 0x0b00c])
  return [f"{world.bio(by_name[q['person']], rng)} {q['question']}" for q in qs]


def recall(em: ExactMatch, params, cms, world: World, people: Sequence[Person], *, open_book: bool = False,
           held_out: bool = True, seed: int = 0) -> float:
  """Exact-match accuracy over every (person, attribute, held-out template) question: closed-book (the question
  alone) or open-book (a bio of the person, then the question)."""
  qs = world.eval_questions(people, held_out)
  prompts = open_book_prompts(world, qs, seed) if open_book else [q['question'] for q in qs]
  return em.accuracy(params, cms, prompts, [q['answer'] for q in qs])


# name -> (direction, threshold, what): the world model's pretraining gates, all on HELD-OUT question templates.
GATES = {
    'open_book_new': ('>=', 0.95, 'open-book QA on validation people (reads a bio in context)'),
    'closed_qa': ('>=', 0.90, 'closed-book QA on pretraining people trained with QA'),
    'closed_bio': ('>=', 0.60, 'closed-book QA on bio-only pretraining people (extraction)'),
    'closed_new_excess': ('<=', 0.05, 'closed-book QA on validation people minus the no-knowledge baseline'),
}


def gate_metrics(em: ExactMatch, params, cms, world: World, seed: int = 0, limit: int | None = None) -> dict:
  """The gates' measurements over every validation / pretraining person (the first `limit` of each group with
  `limit`, e.g. a quick check in a test)."""
  pick = lambda split: world.people[split][:limit]
  val = pick('validation')
  base = world.no_knowledge_baseline()
  closed_new = recall(em, params, cms, world, val, seed=seed)
  return {'open_book_new': recall(em, params, cms, world, val, open_book=True, seed=seed),
          'closed_qa': recall(em, params, cms, world, pick('pretrain_qa'), seed=seed),
          'closed_bio': recall(em, params, cms, world, pick('pretrain_bio'), seed=seed),
          'closed_new': closed_new, 'no_knowledge_baseline': base, 'closed_new_excess': closed_new - base}


def gate_failures(metrics: dict, gates: dict | None = None) -> list[str]:
  """The gates `metrics` misses, each named with its value and threshold ([] = all passed)."""
  out = []
  for name, (op, thr, what) in (gates or GATES).items():
    v = metrics[name]
    if not (v >= thr if op == '>=' else v <= thr):
      out.append(f'{name} = {v:.3f}, needs {op} {thr} ({what})')
  return out


def gate_table(metrics: dict, gates: dict | None = None) -> str:
  lines = ['| gate (held-out question templates) | measured | needs | passed |', '|---|---|---|---|']
  for name, (op, thr, what) in (gates or GATES).items():
    v = metrics[name]
    ok = v >= thr if op == '>=' else v <= thr
    lines.append(f'| {what} | {100 * v:.1f}% | {op} {100 * thr:.0f}% | {"yes" if ok else "NO"} |')
  return '\n'.join(lines)
