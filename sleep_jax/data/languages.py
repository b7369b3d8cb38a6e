"""Synthetic languages for the continual-translation experiment (the paper's "new languages learned in sequence").

Source sentences come from a small generated English grammar with a controlled vocabulary (169 lemmas, 352
English word forms), not from Shakespeare or essay text: every sentence then parses to one tree, each
language renders that tree, and the translation is exact and learnable. Each language is an invented lexicon,
drawn deterministically from a seed with its own phonotactics, plus grammar rules (word order, adjective and
adposition placement, plural/definite/case/tense/negation morphology, agreement). Every English distinction is
marked in every language, so both directions (en->xx and xx->en) are well defined. `grammar_book()` is the
MTOB-style dictionary + rules document a model reads in context. Splits: `assign_split(english, seed)`, so one
English sentence lands in the same split for every language.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Iterator

from sleep_jax.data.splits import assign_split, check_split

VERSION = '1.0.0'

# ------------------------------------------------------------------------------------------ English side
# Nouns as (singular, plural). Animate nouns can be subjects; places head locative phrases; all can be objects.
ANIMATE = (
    ('man', 'men'), ('woman', 'women'), ('child', 'children'), ('farmer', 'farmers'), ('king', 'kings'),
    ('queen', 'queens'), ('soldier', 'soldiers'), ('teacher', 'teachers'), ('doctor', 'doctors'),
    ('sailor', 'sailors'), ('baker', 'bakers'), ('hunter', 'hunters'), ('singer', 'singers'), ('thief', 'thieves'),
    ('friend', 'friends'), ('girl', 'girls'), ('boy', 'boys'), ('dog', 'dogs'), ('cat', 'cats'),
    ('horse', 'horses'), ('bird', 'birds'), ('wolf', 'wolves'), ('mouse', 'mice'), ('cow', 'cows'),
    ('goat', 'goats'), ('snake', 'snakes'), ('fox', 'foxes'), ('bear', 'bears'), ('frog', 'frogs'),
    ('duck', 'ducks'), ('lion', 'lions'), ('rabbit', 'rabbits'),
)
THINGS = (
    ('apple', 'apples'), ('stone', 'stones'), ('book', 'books'), ('letter', 'letters'), ('cup', 'cups'),
    ('knife', 'knives'), ('box', 'boxes'), ('song', 'songs'), ('door', 'doors'), ('window', 'windows'),
    ('boat', 'boats'), ('flower', 'flowers'), ('tree', 'trees'), ('key', 'keys'), ('coin', 'coins'),
    ('ring', 'rings'), ('sword', 'swords'), ('shoe', 'shoes'), ('hat', 'hats'), ('basket', 'baskets'),
    ('rope', 'ropes'), ('egg', 'eggs'), ('cake', 'cakes'), ('lamp', 'lamps'), ('map', 'maps'),
)
PLACES = (
    ('house', 'houses'), ('garden', 'gardens'), ('forest', 'forests'), ('river', 'rivers'), ('market', 'markets'),
    ('field', 'fields'), ('village', 'villages'), ('city', 'cities'), ('castle', 'castles'), ('kitchen', 'kitchens'),
    ('road', 'roads'), ('mountain', 'mountains'), ('hill', 'hills'), ('lake', 'lakes'), ('bridge', 'bridges'),
    ('church', 'churches'), ('school', 'schools'), ('cave', 'caves'), ('tower', 'towers'), ('island', 'islands'),
)
# Verbs as (base, third person singular, past).
# Transitive verbs also carry their object classes: a(nimate), t(hing), p(lace), f(ood).
TRANSITIVE = (
    ('see', 'sees', 'saw', 'atp'), ('find', 'finds', 'found', 'at'), ('take', 'takes', 'took', 't'),
    ('eat', 'eats', 'ate', 'f'), ('hold', 'holds', 'held', 't'), ('carry', 'carries', 'carried', 'at'),
    ('watch', 'watches', 'watched', 'a'), ('follow', 'follows', 'followed', 'a'), ('help', 'helps', 'helped', 'a'),
    ('call', 'calls', 'called', 'a'), ('love', 'loves', 'loved', 'atp'), ('hate', 'hates', 'hated', 'atp'),
    ('want', 'wants', 'wanted', 'tp'), ('bring', 'brings', 'brought', 't'), ('buy', 'buys', 'bought', 'tp'),
    ('sell', 'sells', 'sold', 'tp'), ('build', 'builds', 'built', 'tp'), ('break', 'breaks', 'broke', 't'),
    ('open', 'opens', 'opened', 't'), ('push', 'pushes', 'pushed', 'at'), ('pull', 'pulls', 'pulled', 't'),
    ('draw', 'draws', 'drew', 'atp'), ('catch', 'catches', 'caught', 'a'), ('hide', 'hides', 'hid', 't'),
    ('wash', 'washes', 'washed', 'at'), ('paint', 'paints', 'painted', 'tp'), ('keep', 'keeps', 'kept', 't'),
    ('meet', 'meets', 'met', 'a'), ('chase', 'chases', 'chased', 'a'), ('visit', 'visits', 'visited', 'ap'),
    ('fear', 'fears', 'feared', 'a'), ('steal', 'steals', 'stole', 't'), ('throw', 'throws', 'threw', 't'),
    ('lose', 'loses', 'lost', 't'),
)
INTRANSITIVE = (
    ('sleep', 'sleeps', 'slept'), ('run', 'runs', 'ran'), ('walk', 'walks', 'walked'), ('sing', 'sings', 'sang'),
    ('dance', 'dances', 'danced'), ('laugh', 'laughs', 'laughed'), ('cry', 'cries', 'cried'),
    ('swim', 'swims', 'swam'), ('wait', 'waits', 'waited'), ('sit', 'sits', 'sat'), ('fall', 'falls', 'fell'),
    ('play', 'plays', 'played'), ('work', 'works', 'worked'), ('rest', 'rests', 'rested'),
    ('shout', 'shouts', 'shouted'),
)
ADJECTIVES = (
    'big', 'small', 'old', 'young', 'red', 'blue', 'green', 'white', 'black', 'happy', 'sad', 'tall', 'quiet',
    'loud', 'brave', 'clever', 'lazy', 'angry', 'hungry', 'tired', 'rich', 'poor', 'kind', 'cruel', 'strong',
    'weak', 'beautiful', 'ugly', 'dark', 'bright', 'cold', 'warm', 'heavy', 'gentle', 'wild', 'proud', 'strange',
)
PREPOSITIONS = ('in', 'near', 'behind', 'under', 'beside', 'above')
TENSES = ('present', 'past', 'future')

NOUNS = ANIMATE + THINGS + PLACES
VERBS = TRANSITIVE + INTRANSITIVE
_NOUN_SG = {sg: sg for sg, _ in NOUNS}
_NOUN_PL = {pl: sg for sg, pl in NOUNS}
_VERB_BASE = {v[0]: v for v in VERBS}
_VERB_3SG = {v[1]: v for v in VERBS}
_VERB_PAST = {v[2]: v for v in VERBS}
_TRANSITIVE = frozenset(v[0] for v in TRANSITIVE)
_ANIMATE = frozenset(sg for sg, _ in ANIMATE)
_PLACES = frozenset(sg for sg, _ in PLACES)
_ADJ = frozenset(ADJECTIVES)
FOOD = ('apple', 'egg', 'cake')
_OBJECT_CLASSES = {'a': tuple(sg for sg, _ in ANIMATE), 't': tuple(sg for sg, _ in THINGS),
                   'p': tuple(sg for sg, _ in PLACES), 'f': FOOD}
_FUNCTION = ('the', 'a', 'an', 'will', 'not', 'does', 'do', 'did')


def _check_vocabulary() -> None:
  """Every surface form belongs to one category, so English parses have one reading."""
  groups = [set(_NOUN_SG) | set(_NOUN_PL), set(_VERB_BASE) | set(_VERB_3SG) | set(_VERB_PAST), set(_ADJ),
            set(PREPOSITIONS), set(_FUNCTION)]
  seen = set()
  for g in groups:
    if seen & g:
      raise AssertionError(f'ambiguous English vocabulary: {sorted(seen & g)}')
    seen |= g


_check_vocabulary()


@dataclasses.dataclass(frozen=True)
class NP:
  noun: str  # singular lemma
  plural: bool
  definite: bool
  adj: str | None = None


@dataclasses.dataclass(frozen=True)
class Clause:
  subj: NP
  verb: str  # base lemma
  tense: str
  neg: bool
  obj: NP | None = None
  prep: str | None = None
  loc: NP | None = None


def lemmas(tree: Clause) -> list[str]:
  """English content lemmas of a sentence tree, in order (nouns singular, verbs base form)."""
  out = []
  for np in (tree.subj, tree.obj):
    if np is not None:
      out += [w for w in (np.adj, np.noun) if w]
    if np is tree.subj:
      out.append(tree.verb)
  if tree.loc is not None:
    out += [tree.prep] + [w for w in (tree.loc.adj, tree.loc.noun) if w]
  return out


def _english_np(np: NP) -> list[str]:
  noun = dict(NOUNS)[np.noun] if np.plural else np.noun
  words = [np.adj, noun] if np.adj else [noun]
  if np.definite:
    return ['the'] + words
  if np.plural:
    return words
  return ['an' if words[0][0] in 'aeiou' else 'a'] + words


def english(tree: Clause) -> str:
  """The English sentence of a tree: capitalised, with a final period."""
  base, s3, past = _VERB_BASE[tree.verb][:3]
  if tree.tense == 'future':
    vg = ['will', 'not', base] if tree.neg else ['will', base]
  elif tree.tense == 'past':
    vg = ['did', 'not', base] if tree.neg else [past]
  else:
    sg = not tree.subj.plural
    vg = (['does' if sg else 'do', 'not', base] if tree.neg else [s3 if sg else base])
  words = _english_np(tree.subj) + vg
  if tree.obj is not None:
    words += _english_np(tree.obj)
  if tree.loc is not None:
    words += [tree.prep] + _english_np(tree.loc)
  s = ' '.join(words)
  return s[0].upper() + s[1:] + '.'


def parse(sentence: str) -> Clause:
  """The tree of an English sentence of this grammar; ValueError naming the problem otherwise."""
  toks = sentence.strip().rstrip('.').lower().split()
  pos = 0

  def fail(msg):
    raise ValueError(f'not in the controlled English grammar ({msg}): {sentence!r}')

  def np(allowed: frozenset | None) -> NP:
    nonlocal pos
    det = toks[pos] if pos < len(toks) and toks[pos] in ('the', 'a', 'an') else None
    pos += det is not None
    adj = toks[pos] if pos < len(toks) and toks[pos] in _ADJ else None
    pos += adj is not None
    if pos >= len(toks):
      fail('missing noun')
    w = toks[pos]
    pos += 1
    if w in _NOUN_SG:
      noun, plural = w, False
    elif w in _NOUN_PL:
      noun, plural = _NOUN_PL[w], True
    else:
      fail(f'expected a noun, got {w!r}')
    if allowed is not None and noun not in allowed:
      fail(f'{noun!r} cannot stand here')
    if det in ('a', 'an'):
      if plural:
        fail(f'{det!r} with a plural noun')
      if det != ('an' if (adj or noun)[0] in 'aeiou' else 'a'):
        fail(f'wrong article {det!r}')
    elif det is None and not plural:
      fail(f'bare singular noun {w!r}')
    return NP(noun, plural, det == 'the', adj)

  subj = np(_ANIMATE)
  rest = toks[pos:]
  neg = False
  if rest[:1] == ['will']:
    tense, neg = 'future', rest[1:2] == ['not']
    pos += 1 + neg
    verb = toks[pos] if pos < len(toks) else ''
    if verb not in _VERB_BASE:
      fail('expected a base verb after will')
  elif rest[:1] in (['does'], ['do'], ['did']):
    if rest[1:2] != ['not']:
      fail(f'{rest[0]!r} without not')
    tense, neg = ('past' if rest[0] == 'did' else 'present'), True
    if tense == 'present' and (rest[0] == 'do') != subj.plural:
      fail('do/does does not agree with the subject')
    pos += 2
    verb = toks[pos] if pos < len(toks) else ''
    if verb not in _VERB_BASE:
      fail(f'expected a base verb after {rest[0]} not')
  elif rest and rest[0] in _VERB_PAST:
    tense, verb = 'past', _VERB_PAST[rest[0]][0]
  elif rest and rest[0] in _VERB_3SG:
    if subj.plural:
      fail('singular verb with a plural subject')
    tense, verb = 'present', _VERB_3SG[rest[0]][0]
  elif rest and rest[0] in _VERB_BASE:
    if not subj.plural:
      fail('plural verb with a singular subject')
    tense, verb = 'present', rest[0]
  else:
    fail('expected a verb')
  pos += 1
  obj = np(None) if verb in _TRANSITIVE else None
  prep = loc = None
  if pos < len(toks):
    prep = toks[pos]
    if prep not in PREPOSITIONS:
      fail(f'expected a preposition, got {prep!r}')
    pos += 1
    loc = np(_PLACES)
  if pos != len(toks):
    fail(f'trailing words {toks[pos:]}')
  return Clause(subj, verb, tense, neg, obj, prep, loc)


def sample_tree(rng: random.Random) -> Clause:
  """One random sentence tree; the mix favours short transitive clauses."""
  def np(pool):
    return NP(rng.choice(pool), rng.random() < 0.35, rng.random() < 0.6,
              rng.choice(ADJECTIVES) if rng.random() < 0.4 else None)

  transitive = rng.random() < 0.7
  verb = rng.choice(TRANSITIVE if transitive else INTRANSITIVE)
  subj = np(_OBJECT_CLASSES['a'])
  obj = np(sum((_OBJECT_CLASSES[c] for c in verb[3]), ())) if transitive else None
  has_pp = rng.random() < (0.3 if transitive else 0.7)
  return Clause(subj, verb[0], rng.choice(TENSES), rng.random() < 0.15, obj,
                rng.choice(PREPOSITIONS) if has_pp else None, np(_OBJECT_CLASSES['p']) if has_pp else None)


def sentences(split: str, seed: int = 0, n: int = 1000, allow_test: bool = False) -> list[Clause]:
  """The first n distinct sentence trees of `split`: one seeded stream filtered by assign_split(english, seed),
  so a smaller n is a prefix of a larger one and the splits never share an English sentence."""
  check_split(split, allow_test)
  rng = random.Random(f'{VERSION}:sentences:{seed}')
  seen, out = set(), []
  for _ in range(100 * n + 1000):
    if len(out) >= n:
      break
    tree = sample_tree(rng)
    en = english(tree)
    if en in seen:
      continue
    seen.add(en)
    if assign_split(en, seed) == split:
      out.append(tree)
  if len(out) < n:
    raise RuntimeError(f'could only draw {len(out)} of {n} distinct {split} sentences')
  return out


# ------------------------------------------------------------------------------------------- languages


@dataclasses.dataclass(frozen=True)
class Phonology:
  onsets: tuple[str, ...]
  vowels: tuple[str, ...]
  codas: tuple[str, ...]
  syllables: tuple[int, int]  # min, max syllables of a content root


@dataclasses.dataclass(frozen=True)
class Grammar:
  order: str         # 'SVO' | 'SOV' | 'VSO' | 'VOS'
  adj: str           # 'pre' | 'post': adjective before or after the noun
  adposition: str    # 'pre' | 'post': prepositions or postpositions
  pp: str            # 'end' | 'start' | 'before_verb': where the place phrase goes
  plural: str        # 'suffix' | 'prefix' | 'redup' | 'particle'  (particle = a word after the noun)
  adj_agree: bool    # adjectives copy the noun's plural affix
  definite: str      # 'article_pre' | 'article_post' | 'suffix'
  case: str          # 'none' | 'obj_particle' (word before the object) | 'obj_suffix' | 'subj_particle' (after)
  tense: str         # 'particle' (word before the verb) | 'suffix' | 'prefix'
  negation: str      # 'particle_pre' | 'particle_post' | 'prefix' | 'suffix'
  verb_agree: str    # 'none' | 'suffix' | 'prefix': marks a plural subject on the verb


@dataclasses.dataclass(frozen=True)
class LanguageSpec:
  name: str
  phonology: Phonology
  grammar: Grammar


SPECS = (
    LanguageSpec('tamu', Phonology(('p', 't', 'k', 'm', 'n', 'h', 'l', 'v', 'w'), ('a', 'e', 'i', 'o', 'u'), ('',),
                                   (2, 3)),
                 Grammar(order='VSO', adj='post', adposition='pre', pp='end', plural='redup', adj_agree=False,
                         definite='article_pre', case='obj_particle', tense='particle', negation='particle_pre',
                         verb_agree='none')),
    LanguageSpec('grevok', Phonology(('b', 'd', 'g', 'k', 'r', 's', 't', 'v', 'z', 'br', 'dr', 'gr', 'kr', 'st',
                                      'tr', 'zv'), ('a', 'e', 'o', 'u', 'y'), ('k', 'r', 's', 't', 'v', 'sk', 'rn'),
                                     (1, 2)),
                 Grammar(order='SOV', adj='pre', adposition='post', pp='before_verb', plural='suffix',
                         adj_agree=True, definite='suffix', case='obj_suffix', tense='suffix', negation='prefix',
                         verb_agree='suffix')),
    LanguageSpec('ishqa', Phonology(('q', 'sh', 'kh', 'z', 'd', 'n', 'r', 'y', 'f', 'j'), ('a', 'i', 'u', 'aa', 'ii'),
                                    ('', '', 'n', 'r', 'q'), (2, 2)),
                 Grammar(order='SVO', adj='post', adposition='pre', pp='end', plural='prefix', adj_agree=True,
                         definite='article_post', case='none', tense='prefix', negation='particle_post',
                         verb_agree='none')),
    LanguageSpec('elunai', Phonology(('', 'l', 'n', 'r', 'w', 'y', 's', 'f', 'th'), ('a', 'e', 'i', 'o', 'ai', 'ei',
                                                                                     'ou'), ('', '', 'n', 'l'),
                                     (2, 3)),
                 Grammar(order='VOS', adj='pre', adposition='post', pp='start', plural='particle', adj_agree=False,
                         definite='article_pre', case='subj_particle', tense='suffix', negation='suffix',
                         verb_agree='prefix')),
)
NAMES = tuple(s.name for s in SPECS)
CONTENT = (tuple(sg for sg, _ in NOUNS) + tuple(v[0] for v in VERBS) + ADJECTIVES + PREPOSITIONS)
_MORPHEMES = ('plural', 'definite', 'case', 'past', 'future', 'negation', 'agree')
_ORDER_NAMES = {'S': 'subject', 'V': 'verb', 'O': 'object'}


def _syllable(ph: Phonology, rng: random.Random, coda: bool = True) -> str:
  return rng.choice(ph.onsets) + rng.choice(ph.vowels) + (rng.choice(ph.codas) if coda else '')


class Language:
  """An invented language: a seeded lexicon for every English lemma, grammatical morphemes, and the rules."""

  def __init__(self, spec: LanguageSpec, seed: int = 0):
    self.spec, self.seed, self.name = spec, seed, spec.name
    self.grammar = g = spec.grammar
    ph = spec.phonology
    rng = random.Random(f'{VERSION}:lexicon:{spec.name}:{seed}')
    # grammatical morphemes first: distinct open syllables (unused ones are not drawn)
    needed = [m for m in _MORPHEMES if not ((m == 'plural' and g.plural == 'redup')
                                            or (m == 'agree' and g.verb_agree == 'none')
                                            or (m == 'case' and g.case == 'none'))]
    self.morph = {}
    for m in needed:
      for _ in range(10000):
        w = _syllable(ph, rng, coda=False)
        if len(w) >= 2 and w not in self.morph.values() and w not in _ALL_ENGLISH:
          self.morph[m] = w
          break
      else:
        raise RuntimeError(f'{spec.name}: phonology too small for {len(needed)} morphemes')
    # content roots: a root is accepted only if none of its inflected forms is a form already taken, so every
    # surface word has one analysis (and translation en -> xx is injective word by word)
    lo, hi = ph.syllables
    taken = set(self.morph.values())
    self.lexicon = {}
    for lemma in CONTENT:
      for _ in range(10000):
        n_syl = 1 if lemma in PREPOSITIONS else rng.randint(lo, hi)  # adpositions are short function words
        root = ''.join(_syllable(ph, rng) for _ in range(n_syl))
        forms = self._forms(lemma, root)
        if len(root) >= 2 and not forms & taken and not forms & _ALL_ENGLISH:
          break
      else:
        raise RuntimeError(f'{spec.name}: phonology too small for an unambiguous root for {lemma!r}')
      self.lexicon[lemma] = root
      taken |= forms

  def _forms(self, lemma: str, root: str) -> set[str]:
    """Every surface word the root can take."""
    b = (False, True)
    if lemma in _NOUN_SG:
      return {self._noun_word(root, p, d, o) for p in b for d in b for o in b}
    if lemma in _VERB_BASE:
      return {self._verb_word(root, t, p, n) for t in TENSES for p in b for n in b}
    if lemma in _ADJ:
      return {self._adj_word(root, p) for p in b}
    return {root}

  # --------------------------------------------------------------------------------------- rendering
  def _first_syllable(self, word: str) -> str:
    ph = self.spec.phonology
    onset = max((o for o in ph.onsets if word.startswith(o)), key=len, default='')
    vowel = max((v for v in ph.vowels if word[len(onset):].startswith(v)), key=len, default='')
    return onset + vowel

  def _plural(self, word: str) -> str:
    g, m = self.grammar.plural, self.morph.get('plural')
    if g == 'suffix':
      return word + m
    if g == 'prefix':
      return m + word
    if g == 'redup':
      return self._first_syllable(word) + word
    return word  # 'particle': a separate word after the noun

  def _noun_word(self, root: str, plural: bool, definite: bool, obj: bool) -> str:
    g, m = self.grammar, self.morph
    w = self._plural(root) if plural else root
    if definite and g.definite == 'suffix':
      w += m['definite']
    if obj and g.case == 'obj_suffix':
      w += m['case']
    return w

  def _adj_word(self, root: str, plural: bool) -> str:
    return self._plural(root) if plural and self.grammar.adj_agree else root

  def _verb_word(self, root: str, tense: str, plural_subj: bool, neg: bool) -> str:
    g, m = self.grammar, self.morph
    v = root
    if tense != 'present' and g.tense == 'prefix':
      v = m[tense] + v
    if tense != 'present' and g.tense == 'suffix':
      v += m[tense]
    if plural_subj and g.verb_agree == 'suffix':
      v += m['agree']
    if plural_subj and g.verb_agree == 'prefix':
      v = m['agree'] + v
    if neg and g.negation == 'prefix':
      v = m['negation'] + v
    if neg and g.negation == 'suffix':
      v += m['negation']
    return v

  def _np(self, np: NP, role: str) -> list[str]:
    g, m = self.grammar, self.morph
    noun = self._noun_word(self.lexicon[np.noun], np.plural, np.definite, role == 'obj')
    adj = self._adj_word(self.lexicon[np.adj], np.plural) if np.adj else None
    head = [noun] + ([m['plural']] if np.plural and g.plural == 'particle' else [])
    words = head if adj is None else ([adj] + head if g.adj == 'pre' else head + [adj])
    if np.definite and g.definite == 'article_pre':
      words = [m['definite']] + words
    if np.definite and g.definite == 'article_post':
      words = words + [m['definite']]
    if role == 'obj' and g.case == 'obj_particle':
      words = [m['case']] + words
    if role == 'subj' and g.case == 'subj_particle':
      words = words + [m['case']]
    return words

  def _verb(self, tree: Clause) -> list[str]:
    g, m = self.grammar, self.morph
    v = self._verb_word(self.lexicon[tree.verb], tree.tense, tree.subj.plural, tree.neg)
    pre = [m['negation']] if tree.neg and g.negation == 'particle_pre' else []
    post = [m['negation']] if tree.neg and g.negation == 'particle_post' else []
    if tree.tense != 'present' and g.tense == 'particle':
      pre.append(m[tree.tense])
    return pre + [v] + post

  def render(self, tree: Clause) -> str:
    g = self.grammar
    parts = {'S': self._np(tree.subj, 'subj'), 'V': self._verb(tree),
             'O': self._np(tree.obj, 'obj') if tree.obj is not None else []}
    pp = []
    if tree.loc is not None:
      loc, adp = self._np(tree.loc, 'loc'), self.lexicon[tree.prep]
      pp = [adp] + loc if g.adposition == 'pre' else loc + [adp]
    words = []
    for c in g.order:
      if c == 'V' and g.pp == 'before_verb':
        words += pp
      words += parts[c]
    words = (pp + words if g.pp == 'start' else words + pp if g.pp == 'end' else words)
    s = ' '.join(words)
    return s[0].upper() + s[1:] + '.'

  def translate(self, english_sentence: str) -> str:
    return self.render(parse(english_sentence))

  # ------------------------------------------------------------------------------------------ data
  def parallel(self, split: str, seed: int = 0, n: int = 1000, allow_test: bool = False) -> list[dict]:
    """n {'id','en','xx','lang'} pairs of `split`; swap 'en' and 'xx' for the xx->en direction."""
    out = []
    for tree in sentences(split, seed, n, allow_test):
      en = english(tree)
      out.append({'id': f'{self.name}-{hashlib.sha256(en.encode()).hexdigest()[:12]}', 'en': en,
                  'xx': self.render(tree), 'lang': self.name})
    return out

  # ---------------------------------------------------------------------------------- grammar book
  def grammar_book(self, n_examples: int = 3, example_seed: int = 0) -> str:
    """Rules + full dictionary, MTOB style; example sentences come from the train split only."""
    g, m, lx = self.grammar, self.morph, self.lexicon
    title = self.name.capitalize()
    order = '-'.join(_ORDER_NAMES[c] for c in g.order)
    pp_where = {'end': 'at the end of the sentence', 'start': 'at the start of the sentence',
                'before_verb': 'just before the verb'}[g.pp]
    dog, dogs = lx['dog'], self._plural(lx['dog'])
    rules = [f'# {title}: grammar and dictionary',
             f'Word order: {order} ({g.order}); an intransitive clause drops the object. '
             f'The place phrase goes {pp_where}.']
    if g.plural == 'particle':
      rules.append(f"Plural: the word '{m['plural']}' follows the noun ({dog} 'dog', {dog} {m['plural']} 'dogs').")
    else:
      how = {'suffix': f"add the suffix -{m.get('plural')}", 'prefix': f"add the prefix {m.get('plural')}-",
             'redup': 'repeat the first syllable'}[g.plural]
      rules.append(f"Plural: {how} ({dog} 'dog', {dogs} 'dogs')"
                   + ('; adjectives take it too.' if g.adj_agree else '; adjectives do not change.'))
    rules.append(f"Adjectives go {'before' if g.adj == 'pre' else 'after'} the noun.")
    rules.append({'article_pre': f"'the' is the word '{m['definite']}' before the noun phrase",
                  'article_post': f"'the' is the word '{m['definite']}' after the noun phrase",
                  'suffix': f"'the' is the noun suffix -{m['definite']} (after any plural suffix)"}[g.definite]
                 + "; 'a' and bare plurals are unmarked.")
    if g.case != 'none':
      rules.append({'obj_particle': f"The object noun phrase is introduced by the particle '{m['case']}'.",
                    'obj_suffix': f"The object noun takes the suffix -{m['case']} (last).",
                    'subj_particle': f"The subject noun phrase is followed by the particle '{m['case']}'."}[g.case])
    tense_how = {'particle': "the word '{}' before the verb", 'suffix': 'the verb suffix -{}',
                 'prefix': 'the verb prefix {}-'}[g.tense]
    rules.append(f'Tense: past = {tense_how.format(m["past"])}, future = {tense_how.format(m["future"])}; '
                 'present unmarked.')
    rules.append('Negation: ' + {'particle_pre': f"the word '{m['negation']}' before the verb and its tense word",
                                 'particle_post': f"the word '{m['negation']}' after the verb",
                                 'prefix': f"the verb prefix {m['negation']}- (outermost)",
                                 'suffix': f"the verb suffix -{m['negation']} (last)"}[g.negation] + '.')
    if g.verb_agree != 'none':
      rules.append(f"A plural subject adds the suffix -{m['agree']} to the verb (after the tense suffix)."
                   if g.verb_agree == 'suffix' else
                   f"A plural subject adds the prefix {m['agree']}- to the verb (before the negation prefix)."
                   if g.negation == 'prefix' else f"A plural subject adds the prefix {m['agree']}- to the verb.")
    rules.append(f"{'Prepositions come before' if g.adposition == 'pre' else 'Postpositions come after'} "
                 'their noun phrase.')
    if n_examples:
      rules.append('Examples:')
      for item in self.parallel('train', example_seed, n_examples):
        rules.append(f"{item['en']} = {item['xx']}")

    def entries(words):
      return ', '.join(f'{w}={lx[w]}' for w in words)

    rules += ['## Dictionary',
              'Nouns: ' + entries(sorted(sg for sg, _ in NOUNS)),
              'Verbs: ' + entries(sorted(v[0] for v in VERBS)),
              'Adjectives: ' + entries(sorted(ADJECTIVES)),
              ('Prepositions: ' if g.adposition == 'pre' else 'Postpositions: ') + entries(PREPOSITIONS)]
    return '\n'.join(rules) + '\n'


_ALL_ENGLISH = (frozenset(_NOUN_SG) | frozenset(_NOUN_PL) | frozenset(_VERB_BASE) | frozenset(_VERB_3SG)
                | frozenset(_VERB_PAST) | _ADJ | frozenset(PREPOSITIONS) | frozenset(_FUNCTION))


def language(name: str, seed: int = 0) -> Language:
  for spec in SPECS:
    if spec.name == name:
      return Language(spec, seed)
  raise KeyError(f'unknown language {name!r}; known: {NAMES}')


def languages(seed: int = 0) -> dict[str, Language]:
  return {s.name: Language(s, seed) for s in SPECS}


def directed(items: list[dict], direction: str = 'en-xx') -> Iterator[tuple[str, str]]:
  """(source, target) pairs for 'en-xx' or 'xx-en'."""
  if direction not in ('en-xx', 'xx-en'):
    raise ValueError(f"direction must be 'en-xx' or 'xx-en', got {direction!r}")
  src, tgt = ('en', 'xx') if direction == 'en-xx' else ('xx', 'en')
  return ((it[src], it[tgt]) for it in items)


def approx_tokens(text: str) -> int:
  """Whitespace words * 1.3, the project-wide rough token count."""
  return int(round(len(text.split()) * 1.3))
