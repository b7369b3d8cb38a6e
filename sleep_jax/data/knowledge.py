"""Knowledge incorporation data: passages about invented entities, and no-context QA about them (SQuAD-like).

The model reads a passage during wake, and is later asked the questions without it. Every name (people, towns,
organisations, devices, events, materials) is composed from syllable inventories, and every attribute is
drawn at random, so no pretrained model can know or guess an answer: what it answers it learned from the
passage. Passages come in varied styles (encyclopaedia, news, diary, placard, interview, guide, letter) with
distractor facts of the same kinds as the answers. Each passage has at least 5 questions whose short answers
are stated verbatim in it; `hops=2` questions join two facts (e.g. who founded it, and separately, when).

Deterministic in (seed, n_passages); the split of a passage is `assign_split(main entity name, seed)`, and
each invented word is used in one passage only, so no name crosses splits. Reading 'test' needs allow_test.
"""
from __future__ import annotations

import re
import string
from typing import Callable

import numpy as np

from sleep_jax.data.splits import assign_split, check_split

VERSION = '1.0.0'
ENTITY_TYPES = ('person', 'place', 'organisation', 'invention', 'event')
STYLES = ('encyclopaedic', 'news', 'diary', 'placard', 'interview', 'guide', 'letter')

# ------------------------------------------------------------------------------------------ inventories

ONSETS = ('al', 'bel', 'cor', 'dra', 'el', 'fen', 'gal', 'hal', 'isk', 'jor', 'kel', 'lum', 'mor', 'nal', 'orr',
          'pel', 'quo', 'rav', 'sel', 'tor', 'ul', 'vas', 'wen', 'yor', 'zel', 'bra', 'cal', 'dor', 'eth', 'fal',
          'gor', 'hes', 'ir', 'ka', 'lo', 'mi', 'ny', 'os', 'pra', 'ru', 'sa', 'ti', 've', 'xa', 'zo')
MIDDLES = ('a', 'e', 'i', 'o', 'an', 'en', 'ir', 'or', 'ul', 'ay', 'el', 'is', 'ov', 'ar')
CODAS = ('dra', 'ven', 'mir', 'wick', 'thas', 'lor', 'nek', 'quist', 'vane', 'rith', 'mond', 'sk', 'th', 'var',
         'dun', 'ric', 'sa', 'lin', 'bek', 'ros', 'tan', 'mel', 'vok', 'zar', 'ith')
MATERIAL_ENDS = ('rite', 'lium', 'nite', 'vine', 'dene', 'sar', 'thium', 'quine')
TOWN_PATTERNS = ('{w}', '{w}', 'Port {w}', 'Upper {w}', '{w} Crossing', '{w} Hollow', 'Lower {w}', '{w} Ford')

COLOURS = ('saffron', 'teal', 'crimson', 'ochre', 'violet', 'amber', 'indigo', 'scarlet', 'turquoise', 'silver',
           'emerald', 'maroon', 'cobalt', 'olive', 'lilac', 'russet', 'vermilion', 'ivory', 'copper', 'plum',
           'mustard', 'jade')
MONTHS = ('January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October',
          'November', 'December')
WEEKDAYS = ('Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday')
MATERIAL_DESCS = ('a pale mineral', 'a dense resin', 'a soft clay', 'a fibrous bark', 'a brittle ore',
                  'a waxy shale', 'a glassy sand', 'a springy reed')
ASSOCIATES = ('closest friend', 'old rival', 'cousin', 'business partner', 'first apprentice')

# (profession, work noun, count noun, past verb, base verb, material clause, material question)
PROFESSIONS = (
    ('cartographer', 'Atlas', 'maps', 'drew', 'draw', 'mixed {pos} inks from {material}', 'make {pos} inks'),
    ('composer', 'Nocturne', 'songs', 'wrote', 'write', 'strung {pos} harps with wire drawn from {material}',
     'string {pos} harps'),
    ('clockmaker', 'Regulator', 'clocks', 'built', 'build', 'cut {pos} gears from {material}', 'cut {pos} gears'),
    ('glassblower', 'Chalice', 'vessels', 'blew', 'blow', 'coloured {pos} glass with powdered {material}',
     'colour {pos} glass'),
    ('botanist', 'Herbarium', 'plant species', 'described', 'describe',
     'pressed {pos} specimens between sheets of {material}', 'press {pos} specimens'),
    ('astronomer', 'Star Tables', 'comets', 'recorded', 'record', 'ground {pos} lenses from {material}',
     'grind {pos} lenses'),
    ('weaver', 'Tapestry', 'tapestries', 'wove', 'weave', 'dyed {pos} thread with {material}', 'dye {pos} thread'),
    ('architect', 'Rotunda', 'bridges', 'designed', 'design', 'built {pos} bridges from blocks of {material}',
     'build {pos} bridges'),
    ('poet', 'Elegies', 'sonnets', 'wrote', 'write', 'wrote only on tablets of {material}',
     'make the tablets {pro} wrote on'),
    ('sculptor', 'Colossus', 'statues', 'carved', 'carve', 'carved {pos} statues from {material}',
     'carve {pos} statues'),
)
TOWN_FEATURES = ('roofs', 'shutters', 'banners', 'doors', 'boats')
PLACE_KINDS = ('harbour town', 'hill town', 'river town', 'market town', 'mining town', 'island town')
REGION_NOUNS = ('Coast', 'Highlands', 'Marches', 'Downs', 'Lowlands', 'Reach')
FESTIVAL_NOUNS = ('Lantern Festival', 'Kite Fair', 'Bell Night', 'Salt Market', 'Boat Blessing', 'Apple Wake')
LANDMARK_NOUNS = ('Tower', 'Bridge', 'Gate', 'Lighthouse', 'Clock House', 'Chapel')
# (kind, name pattern, member noun, leader title, specialty clause, specialty question)
ORG_KINDS = (
    ('guild', '{w} Guild of Lamplighters', 'members', 'guildmaster',
     'the guild burns nothing but oil pressed from {material}', 'What do the lamps of {the_name} burn?'),
    ('society', '{w} Society', 'fellows', 'president',
     'the society was formed to study {material}', 'What substance was {the_name} formed to study?'),
    ('company', '{w} Trading Company', 'employees', 'director',
     'the company made its fortune shipping {material}', 'What did {the_name} make its fortune shipping?'),
    ('orchestra', '{w} Orchestra', 'musicians', 'conductor',
     'its instruments are all carved from {material}', 'What are the instruments of {the_name} carved from?'),
    ('academy', '{w} Academy', 'students', 'rector',
     'its students are taught to work {material} before anything else',
     'Which material do students of {the_name} learn to work first?'),
    ('bank', '{w} Savings House', 'clerks', 'governor',
     'its vault doors are lined with {material}', 'What are the vault doors of {the_name} lined with?'),
)
EMBLEM_ANIMALS = ('heron', 'fox', 'stag', 'owl', 'salmon', 'hare', 'boar', 'swan', 'lynx', 'crane')
# (device noun, purpose, part noun)
DEVICES = (
    ('tide-clock', 'predicting the tides', 'gears'),
    ('loom', 'weaving patterned sailcloth', 'shuttles'),
    ('seed drill', 'sowing barley in straight rows', 'tines'),
    ('calculating engine', 'adding up harbour tolls', 'brass wheels'),
    ('signal lamp', 'sending messages between lighthouses', 'mirrors'),
    ('water pump', 'draining flooded mines', 'valves'),
    ('weather organ', 'warning of storms', 'pipes'),
    ('printing press', 'printing music', 'rollers'),
)
# (kind, name pattern, participant noun, leader verb, leader question verb, winner clause, winner question)
EVENTS = (
    ('regatta', '{w} Regatta', 'boats', 'organised by', 'organised', 'the race was won by {winner}',
     'Who won {ev}?'),
    ('expedition', '{w} Expedition', 'members', 'led by', 'led',
     'the first member to reach the glacier was {winner}', 'Which member of {ev} reached the glacier first?'),
    ('fair', 'Great {w} Fair', 'exhibitors', 'organised by', 'organised', 'the gold medal went to {winner}',
     'Who won the gold medal at {ev}?'),
    ('congress', '{w} Congress', 'delegates', 'chaired by', 'chaired',
     'the closing address was given by {winner}', 'Who gave the closing address at {ev}?'),
    ('tournament', '{w} Chess Open', 'players', 'directed by', 'directed', 'the title went to {winner}',
     'Who won {ev}?'),
    ('pilgrimage', '{w} Walk', 'walkers', 'led by', 'led', 'the first walker to finish was {winner}',
     'Who was the first to finish {ev}?'),
)
EVENT_COLOUR_ITEMS = ('ribbons', 'scarves', 'sashes', 'caps')
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven',
                'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen', 'nineteen')
TENS_WORDS = ('', '', 'twenty', 'thirty', 'forty', 'fifty', 'sixty', 'seventy', 'eighty', 'ninety')
# Words an invented name must never spell: vocabulary the templates or answers use, and real names that the
# syllables can happen to compose.
RESERVED = frozenset(w.lower() for w in COLOURS + MONTHS + WEEKDAYS + EMBLEM_ANIMALS) | {
    'alma', 'elsa', 'galen', 'calvin', 'selma', 'kalmar', 'tosca', 'malta', 'salsa', 'torsk', 'elith'}

# ---------------------------------------------------------------------------------------- small helpers


def _pick(rng: np.random.Generator, seq):
  return seq[int(rng.integers(len(seq)))]


def _cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def _a(word: str) -> str:
  """`word` with its indefinite article."""
  return ('an ' if word[0] in 'aeiou' else 'a ') + word


def _sent(clause: str) -> str:
  return _cap(clause) + '.'


def number_words(n: int) -> str:
  """English words for 0 <= n < 100 (an accepted alias of a numeric answer); '' beyond that."""
  if n < 20:
    return NUMBER_WORDS[n]
  if n < 100:
    return TENS_WORDS[n // 10] + ('' if n % 10 == 0 else '-' + NUMBER_WORDS[n % 10])
  return ''


def _num_aliases(n: int) -> list[str]:
  return [str(n)] + ([number_words(n)] if number_words(n) else [])


class _Names:
  """Invented words, each used once per generation: every name is unique and none can leak across splits."""

  def __init__(self, rng: np.random.Generator):
    self.rng, self.used = rng, set()

  def _take(self, make: Callable[[], str]) -> str:
    for _ in range(10_000):
      w = make()
      if len(w) >= 4 and w not in self.used and w not in RESERVED and not re.search(r'(.)\1\1', w):
        self.used.add(w)
        return w
    raise RuntimeError('ran out of invented words; enlarge the syllable inventories')

  def word(self, p_mid: float = 0.6) -> str:
    r = self.rng
    return self._take(lambda: (_pick(r, ONSETS) + (_pick(r, MIDDLES) if r.random() < p_mid else '')
                               + _pick(r, CODAS))).capitalize()

  def person(self) -> tuple[str, str]:
    """(full name, surname)."""
    last = self.word(0.85)
    return f'{self.word(0.3)} {last}', last

  def town(self) -> tuple[str, str]:
    """(town name, its invented core word)."""
    w = self.word()
    return _pick(self.rng, TOWN_PATTERNS).format(w=w), w

  def material(self) -> str:
    r = self.rng
    return self._take(lambda: _pick(r, ONSETS) + _pick(r, 'aeiou') + _pick(r, MATERIAL_ENDS))


class _Entity:
  """One passage's content before styling: fact clauses (lowercase-initial, no final stop) and question pools."""

  def __init__(self, kind: str, name: str, loc: str, lead: str):
    self.kind, self.name, self.loc, self.lead = kind, name, loc, lead
    self.facts: list[str] = []
    self.one_hop: list[tuple] = []
    self.two_hop: list[tuple] = []

  def fact(self, rng: np.random.Generator, *variants: str, **kw) -> None:
    self.facts.append(_pick(rng, variants).format(**kw))

  def ask(self, hops: int, rng: np.random.Generator, questions: tuple[str, ...] | str, answer, aliases=None,
          **kw) -> None:
    q = _pick(rng, questions) if isinstance(questions, tuple) else questions
    answer = str(answer)
    pool = self.one_hop if hops == 1 else self.two_hop
    pool.append((q.format(**kw), answer, list(aliases) if aliases else [answer]))


def _pronouns(rng: np.random.Generator) -> tuple[str, str]:
  return ('she', 'her') if rng.random() < 0.5 else ('he', 'his')


# ------------------------------------------------------------------------------------------ entity types


def _person(rng: np.random.Generator, nm: _Names) -> _Entity:
  name, last = nm.person()
  prof, work_noun, unit, verb, verb_base, mat_clause, mat_q = _pick(rng, PROFESSIONS)
  pro, pos = _pronouns(rng)
  town, town_w = nm.town()
  mentor, mentor_last = nm.person()
  associate, _ = nm.person()
  moved, _ = nm.town()
  quarry, _ = nm.town()
  work = f'{nm.word()} {work_noun}'
  material = nm.material()
  colour, feature = _pick(rng, COLOURS), _pick(rng, TOWN_FEATURES)
  born = int(rng.integers(1580, 1880))
  work_year, moved_year = born + int(rng.integers(22, 38)), born + int(rng.integers(40, 52))
  died = moved_year + int(rng.integers(3, 25))
  count = int(rng.integers(12, 400))
  other_prof = _pick(rng, [p[0] for p in PROFESSIONS if p[0] != prof])
  kw = dict(name=name, last=last, prof=prof, pro=pro, pos=pos, town=town, mentor=mentor, associate=associate,
            moved=moved, quarry=quarry, work=work, material=material, colour=colour, feature=feature, born=born,
            work_year=work_year, moved_year=moved_year, died=died, count=count, unit=unit, verb=verb,
            verb_base=verb_base, a_prof=_a(prof), other_prof=other_prof, a_other_prof=_a(other_prof),
            rel=_pick(rng, ASSOCIATES), mat_desc=_pick(rng, MATERIAL_DESCS))
  kw['mat_clause'] = mat_clause.format(**kw)
  kw['mat_q'] = mat_q.format(**kw)
  e = _Entity('person', name, town, f'the {prof} {name}')
  e.fact(rng, '{name} was {a_prof} born in {town} in {born}',
         'born in {born} in the town of {town}, {name} became the best-known {prof} of {pos} generation',
         '{name}, who lived from {born} to {died}, was {a_prof} from {town}', **kw)
  e.fact(rng, 'as a young {prof}, {pro} trained under {mentor}', '{pos} teacher was {mentor}, {a_other_prof} '
         'turned {prof}', '{pro} learned the craft in the workshop of {mentor}', **kw)
  e.fact(rng, '{town} is still known for its {colour} {feature}',
         'to this day the {feature} of {town} are painted {colour}', **kw)
  e.fact(rng, '{pos} best-known work, the {work}, was completed in {work_year}',
         'in {work_year} {pro} finished the {work}, the piece for which {pro} is remembered', **kw)
  e.fact(rng, 'in all, {last} {verb} {count} {unit}', 'over a long career {pro} {verb} {count} {unit}', **kw)
  e.fact(rng, '{pro} {mat_clause}; {material} is {mat_desc} dug near {quarry}',
         'unusually, {pro} {mat_clause}, {mat_desc} quarried near {quarry}', **kw)
  e.fact(rng, '{pos} {rel}, {associate}, worked as {a_other_prof} in {moved}',
         'in {moved_year} {pro} moved to {moved}, where {pro} died in {died}', **kw)
  ta = [town, town_w] if town != town_w else [town]
  e.ask(1, rng, ('In which town was {name} born?', 'What is the name of the town where {name} was born?'), town,
        ta, **kw)
  e.ask(1, rng, ('In what year was {name} born?',), born, **kw)
  e.ask(1, rng, ('Who trained {name}?', 'Who was the teacher of {name}?'), mentor, [mentor, mentor_last], **kw)
  e.ask(1, rng, ('What is the title of the best-known work of {name}?',), work, **kw)
  e.ask(1, rng, ('How many {unit} did {name} {verb_base} in total?',), count, _num_aliases(count), **kw)
  e.ask(1, rng, ('What material did {name} use to {mat_q}?',), material, **kw)
  e.ask(1, rng, ('In what year did {name} complete the {work}?',), work_year, **kw)
  e.ask(2, rng, ('What colour are the {feature} in the town where {name} was born?',), colour, **kw)
  e.ask(2, rng, ('Who trained the {prof} who created the {work}?',), mentor, [mentor, mentor_last], **kw)
  e.ask(2, rng, ('In which town was the creator of the {work} born?',), town, ta, **kw)
  e.ask(2, rng, ('In what year was the creator of the {work} born?',), born, **kw)
  return e


def _place(rng: np.random.Generator, nm: _Names) -> _Entity:
  name, core = nm.town()
  founder, founder_last = nm.person()
  mayor, _ = nm.person()
  twin, _ = nm.town()
  region_w = nm.word()
  region = f'{region_w} {_pick(rng, REGION_NOUNS)}'
  river = nm.word()
  festival = f'{nm.word()} {_pick(rng, FESTIVAL_NOUNS)}'
  landmark = f'{nm.word()} {_pick(rng, LANDMARK_NOUNS)}'
  material = nm.material()
  founded = int(rng.integers(1050, 1800))
  rebuilt = founded + int(rng.integers(60, 300))
  kw = dict(name=name, kind=_pick(rng, PLACE_KINDS), founder=founder, mayor=mayor, twin=twin, region=region,
            river=river, festival=festival, landmark=landmark, material=material, founded=founded,
            rebuilt=rebuilt, pop=int(rng.integers(300, 9800)), month=_pick(rng, MONTHS),
            colour=_pick(rng, COLOURS), other_colour=_pick(rng, COLOURS), mat_desc=_pick(rng, MATERIAL_DESCS),
            weeks=int(rng.integers(2, 9)))
  kw['a_kind'] = _a(kw['kind'])
  e = _Entity('place', name, twin, name)
  e.fact(rng, '{name} is {a_kind} in the {region}, on the banks of the river {river}',
         'the {kind} of {name} lies in the {region}, where the {river} river bends to the south', **kw)
  e.fact(rng, 'it was founded in {founded} by {founder}', 'the town was founded by {founder} in {founded}',
         **kw)
  e.fact(rng, 'about {pop} people live there today', 'its population is {pop}', **kw)
  e.fact(rng, 'its main export is {material}, {mat_desc} that is loaded onto barges every spring',
         'most families there make their living from {material}, the town\'s main export', **kw)
  e.fact(rng, 'every {month} the town holds the {festival}', 'the {festival} takes place each year in {month}',
         **kw)
  e.fact(rng, 'the {landmark}, painted {colour}, was rebuilt in {rebuilt} after a fire',
         'visitors notice the {colour} walls of the {landmark} first; the building was rebuilt in {rebuilt}',
         **kw)
  e.fact(rng, 'the current mayor, {mayor}, has twinned the town with {twin}',
         'its sister town, {twin}, paints its own harbour wall {other_colour}', **kw)
  e.ask(1, rng, ('Who founded {name}?', 'Who was the founder of {name}?'), founder, [founder, founder_last], **kw)
  e.ask(1, rng, ('In what year was {name} founded?',), founded, **kw)
  e.ask(1, rng, ('How many people live in {name}?', 'What is the population of {name}?'), kw['pop'],
        _num_aliases(kw['pop']), **kw)
  e.ask(1, rng, ('What is the main export of {name}?',), material, **kw)
  e.ask(1, rng, ('In which month is the {festival} held?',), kw['month'], **kw)
  e.ask(1, rng, ('On which river does {name} stand?',), river, [river, f'{river} river'], **kw)
  e.ask(1, rng, ('What colour is the {landmark}?', 'What colour are the walls of the {landmark}?'), kw['colour'],
        **kw)
  e.ask(1, rng, ('In which region does {name} lie?',), region, [region, region_w], **kw)
  e.ask(2, rng, ('What is the main export of the town founded by {founder}?',), material, **kw)
  e.ask(2, rng, ('On which river stands the town that holds the {festival}?',), river, [river, f'{river} river'],
        **kw)
  e.ask(2, rng, ('In what year was the town that holds the {festival} founded?',), founded, **kw)
  e.ask(2, rng, ('Who founded the town where the {landmark} stands?',), founder, [founder, founder_last], **kw)
  return e


def _organisation(rng: np.random.Generator, nm: _Names) -> _Entity:
  kind, pattern, members, title, spec_clause, spec_q = _pick(rng, ORG_KINDS)
  name = pattern.format(w=nm.word())
  founder, founder_last = nm.person()
  leader, leader_last = nm.person()
  hq, hq_w = nm.town()
  old_hq, old_w = nm.town()
  rival = pattern.format(w=nm.word())
  material = nm.material()
  founded = int(rng.integers(1400, 1900))
  kw = dict(name=name, the_name=f'the {name}', kind=kind, members=members, title=title, founder=founder,
            leader=leader, hq=hq, old_hq=old_hq, rival=rival, material=material, founded=founded,
            moved=founded + int(rng.integers(15, 120)), rival_year=founded + int(rng.integers(3, 40)),
            n=int(rng.integers(20, 900)), colour=_pick(rng, COLOURS), rival_colour=_pick(rng, COLOURS),
            animal=_pick(rng, EMBLEM_ANIMALS))
  kw.update(spec=spec_clause.format(**kw), a_colour=_a(kw['colour']), a_rival_colour=_a(kw['rival_colour']))
  e = _Entity('organisation', name, hq, f'the {name}')
  e.fact(rng, 'the {name} was founded by {founder} in {founded}',
         '{founder} established the {name} in {founded}', **kw)
  e.fact(rng, 'it moved its headquarters from {old_hq} to {hq} in {moved}',
         'since {moved} the {kind} has been based in {hq}, having started out in {old_hq}', **kw)
  e.fact(rng, 'today it has {n} {members}', 'the {kind} counts {n} {members} on its rolls', **kw)
  e.fact(rng, 'its emblem shows {a_colour} {animal}', '{a_colour} {animal} appears on its emblem', **kw)
  e.fact(rng, 'the present {title} is {leader}', '{leader} has served as {title} for the last eleven years',
         **kw)
  e.fact(rng, '{spec}', **kw)
  e.fact(rng, 'a rival, the {rival}, was set up in {rival_year} and chose {a_rival_colour} {animal} as its '
         'emblem', 'its old rival, the {rival}, never recovered from a scandal in {rival_year}', **kw)
  ha, fa = [hq, hq_w] if hq != hq_w else [hq], [founder, founder_last]
  e.ask(1, rng, ('Who founded the {name}?',), founder, fa, **kw)
  e.ask(1, rng, ('In what year was the {name} founded?',), founded, **kw)
  e.ask(1, rng, ('In which town does the {name} have its headquarters today?',), hq, ha, **kw)
  e.ask(1, rng, ('From which town did the {name} move its headquarters?',), old_hq,
        [old_hq, old_w] if old_hq != old_w else [old_hq], **kw)
  e.ask(1, rng, ('How many {members} does the {name} have?',), kw['n'], _num_aliases(kw['n']), **kw)
  e.ask(1, rng, ('What colour is the {animal} on the emblem of the {name}?',), kw['colour'], **kw)
  e.ask(1, rng, ('Who is the {title} of the {name}?',), leader, [leader, leader_last], **kw)
  e.ask(1, rng, (spec_q,), material, **kw)
  e.ask(2, rng, ('In what year was the {kind} founded by {founder} established?',), founded, **kw)
  e.ask(2, rng, ('In which town is the {kind} whose {title} is {leader} based?',), hq, ha, **kw)
  e.ask(2, rng, ('What colour is the emblem animal of the {kind} founded by {founder}?',), kw['colour'], **kw)
  e.ask(2, rng, ('Who founded the {kind} that is now headquartered in {hq}?',), founder, fa, **kw)
  return e


def _invention(rng: np.random.Generator, nm: _Names) -> _Entity:
  device, purpose, parts = _pick(rng, DEVICES)
  name = f'{nm.word()} {device}'
  improved = f'{nm.word()} {device}'
  inventor, inventor_last = nm.person()
  assistant, _ = nm.person()
  town, town_w = nm.town()
  sponsor = f'{nm.word()} {_pick(rng, ("Society", "Trust", "Company", "Guild"))}'
  material = nm.material()
  year = int(rng.integers(1600, 1910))
  kw = dict(name=name, device=device, purpose=purpose, parts=parts, improved=improved, inventor=inventor,
            assistant=assistant, town=town, sponsor=sponsor, material=material, year=year,
            demo=year + int(rng.integers(1, 6)), improved_year=year + int(rng.integers(8, 30)),
            n=int(rng.integers(6, 240)), n2=int(rng.integers(6, 240)), colour=_pick(rng, COLOURS),
            mat_desc=_pick(rng, MATERIAL_DESCS))
  e = _Entity('invention', name, town, f'the {name}')
  e.fact(rng, 'the {name} is a machine for {purpose}, invented by {inventor} in {year}',
         'in {year} {inventor} invented the {name}, a device for {purpose}', **kw)
  e.fact(rng, 'it was built in a workshop in {town} with the help of {assistant}',
         '{inventor} assembled it in {town}, helped by an apprentice, {assistant}', **kw)
  e.fact(rng, 'its frame is made of {material}, {mat_desc}', 'the frame was cut from {material}, {mat_desc}',
         **kw)
  e.fact(rng, 'inside there are {n} {parts}', 'the mechanism uses {n} {parts}', **kw)
  e.fact(rng, 'the first prototype was painted {colour}', 'the original prototype was painted {colour} and '
         'still stands in the workshop', **kw)
  e.fact(rng, 'the {sponsor} paid for its development and showed it to the public in {demo}',
         'its first public showing came in {demo}, paid for by the {sponsor}', **kw)
  e.fact(rng, 'a lighter successor, the {improved}, followed in {improved_year} and used {n2} {parts}',
         'rivals copied it, and the {improved} of {improved_year} was a near twin', **kw)
  ta, ia = [town, town_w] if town != town_w else [town], [inventor, inventor_last]
  e.ask(1, rng, ('Who invented the {name}?',), inventor, ia, **kw)
  e.ask(1, rng, ('In what year was the {name} invented?',), year, **kw)
  e.ask(1, rng, ('In which town was the {name} built?',), town, ta, **kw)
  e.ask(1, rng, ('What material is the frame of the {name} made of?',), material, **kw)
  e.ask(1, rng, ('How many {parts} does the {name} have?',), kw['n'], _num_aliases(kw['n']), **kw)
  e.ask(1, rng, ('What colour was the first prototype of the {name} painted?',), kw['colour'], **kw)
  e.ask(1, rng, ('Which organisation paid for the development of the {name}?',), sponsor, **kw)
  e.ask(1, rng, ('In what year was the {name} first shown to the public?',), kw['demo'], **kw)
  e.ask(2, rng, ('In what year was the device built by {inventor} invented?',), year, **kw)
  e.ask(2, rng, ('What material is the frame of the device paid for by the {sponsor} made of?',), material,
        **kw)
  e.ask(2, rng, ('How many {parts} does the device built in {town} have?',), kw['n'], _num_aliases(kw['n']),
        **kw)
  e.ask(2, rng, ('Who invented the device that the {sponsor} paid for?',), inventor, ia, **kw)
  return e


def _event(rng: np.random.Generator, nm: _Names) -> _Entity:
  kind, pattern, who, led_by, led_q, win_clause, win_q = _pick(rng, EVENTS)
  name = pattern.format(w=nm.word())
  leader, leader_last = nm.person()
  deputy, _ = nm.person()
  winner, winner_last = nm.person()
  town, town_w = nm.town()
  venue = f'{nm.word()} Green'
  year = int(rng.integers(1500, 1950))
  kw = dict(name=name, kind=kind, who=who, led_by=led_by, led_q=led_q, leader=leader, deputy=deputy,
            winner=winner, town=town, venue=venue, year=year, earlier=year - int(rng.integers(4, 40)),
            n=int(rng.integers(8, 600)), days=int(rng.integers(2, 40)), colour=_pick(rng, COLOURS),
            item=_pick(rng, EVENT_COLOUR_ITEMS))
  kw['win'] = win_clause.format(**kw)
  ta, la, wa = [town, town_w] if town != town_w else [town], [leader, leader_last], [winner, winner_last]
  e = _Entity('event', name, town, f'the {name}')
  e.fact(rng, 'the {name} was held in {town} in {year}', 'in {year} the town of {town} hosted the {name}',
         **kw)
  e.fact(rng, 'it was {led_by} {leader}, with {deputy} as deputy', '{leader} {led_q} it, although most of the '
         'daily work fell to {deputy}', **kw)
  e.fact(rng, '{n} {who} took part', 'the organisers counted {n} {who}', **kw)
  e.fact(rng, 'it lasted {days} days', 'the whole affair lasted {days} days', **kw)
  e.fact(rng, 'everyone taking part wore {colour} {item}', 'all the {who} wore {colour} {item}', **kw)
  e.fact(rng, '{win}', 'in the end, {win}', **kw)
  e.fact(rng, 'an earlier attempt in {earlier} on the {venue} had been abandoned after a storm',
         'the {venue}, where a smaller gathering had met in {earlier}, was used for the closing ceremony', **kw)
  e.ask(1, rng, ('In what year was the {name} held?', 'In what year did the {name} take place?'), year, **kw)
  e.ask(1, rng, ('In which town was the {name} held?',), town, ta, **kw)
  e.ask(1, rng, ('Who {led_q} the {name}?',), leader, la, **kw)
  e.ask(1, rng, ('How many {who} took part in the {name}?',), kw['n'], _num_aliases(kw['n']), **kw)
  e.ask(1, rng, ('For how many days did the {name} last?',), kw['days'], _num_aliases(kw['days']), **kw)
  e.ask(1, rng, ('What colour were the {item} worn at the {name}?',), kw['colour'], **kw)
  e.ask(1, rng, (win_q.replace('{ev}', 'the {name}'),), winner, wa, **kw)
  e.ask(2, rng, ('In what year did the {kind} {led_by} {leader} take place?',), year, **kw)
  e.ask(2, rng, (win_q.replace('{ev}', 'the {kind} held in {town}'),), winner, wa, **kw)
  e.ask(2, rng, ('How many days did the {kind} {led_by} {leader} last?',), kw['days'], _num_aliases(kw['days']),
        **kw)
  e.ask(2, rng, ('In which town was the {kind} {led_by} {leader} held?',), town, ta, **kw)
  return e


BUILDERS = {'person': _person, 'place': _place, 'organisation': _organisation, 'invention': _invention,
            'event': _event}

# ------------------------------------------------------------------------------------------------ styles

NEWS_HEADLINES = ('Archive find revives interest in {lead}', 'New exhibition on {lead} opens',
                  'Historians return to {lead}', 'Town celebrates {lead}')
NEWS_ATTRIBUTIONS = ('', '', 'according to the town archive, ', 'records show that ', 'historians say ')
NEWS_QUOTES = ('We keep finding new details', 'People here are proud of this history',
               'It deserves to be better known', 'There is still a great deal to learn')
DIARY_OPENERS = ('Rain all morning, so I spent the day in the reading room at {loc} with a file on {lead}.',
                 'Walked into {loc} before breakfast; the archivist let me read everything on {lead}.',
                 'A slow day in {loc}. I finally sat down with the papers about {lead}.')
DIARY_PREFIXES = ('', '', 'I learned that ', 'the archivist told me that ', 'it turns out that ',
                  'apparently ')
DIARY_CLOSERS = ('Must remember to write all this down properly tomorrow.', 'Supper was cold again.',
                 'My feet ache, but it was worth it.')
PLACARD_LINES = ('Gallery {n}', 'Room {n}, east wing', 'Case {n}')
INTERVIEW_QUESTIONS = ('Where does the story begin?', 'What should people know first?', 'What else?',
                       'Is there a detail people usually miss?', 'And after that?', 'What surprised you?')
INTERVIEW_PREFIXES = ('', 'Well, ', 'Oh, ', 'People forget that ', 'As far as we know, ')
GUIDE_PREFIXES = ('', '', 'guides like to point out that ', 'a plaque explains that ', 'note that ')
GUIDE_TIMES = ('an hour', 'two hours', 'half a day', 'a whole afternoon')
LETTER_OPENERS = ('I promised to tell you about {lead}, so here it is.',
                  'You asked what I found out about {lead} while I was in {loc}.')


def _render(e: _Entity, style: str, rng: np.random.Generator, nm: _Names) -> str:
  """The passage text: the entity's facts framed in one of STYLES."""
  facts, lead, loc = e.facts, e.lead, e.loc
  fill = dict(lead=lead, loc=loc)
  if style == 'encyclopaedic':
    return ' '.join(_sent(f) for f in facts)
  if style == 'news':
    speaker, _ = nm.person()
    body = ' '.join(_sent(_pick(rng, NEWS_ATTRIBUTIONS) + f) for f in facts)
    quote = f'"{_pick(rng, NEWS_QUOTES)}," said {speaker}, a local historian.'
    return f'{_cap(_pick(rng, NEWS_HEADLINES).format(**fill))}\n\n{loc.upper()} - {body} {quote}'
  if style == 'diary':
    head = f'{_pick(rng, WEEKDAYS)}, {int(rng.integers(1, 29))} {_pick(rng, MONTHS)}.'
    body = ' '.join(_sent(_pick(rng, DIARY_PREFIXES) + f) for f in facts)
    return f'{head} {_pick(rng, DIARY_OPENERS).format(**fill)} {body} {_pick(rng, DIARY_CLOSERS)}'
  if style == 'placard':
    donor = nm.word()
    head = f'{_cap(lead)}\n{_pick(rng, PLACARD_LINES).format(n=int(rng.integers(2, 40)))}'
    return f'{head}\n\n' + ' '.join(_sent(f) for f in facts) + f'\n\nOn loan from the {donor} family collection.'
  if style == 'interview':
    lines = [f'From an interview with a local historian in {loc}.']
    qs = list(INTERVIEW_QUESTIONS[1:])
    rng.shuffle(qs)
    qs.insert(0, INTERVIEW_QUESTIONS[0])
    i, turn = 0, 0
    while i < len(facts):
      take = 1 + int(rng.random() < 0.4)
      first = _sent(_pick(rng, INTERVIEW_PREFIXES) + facts[i])
      ans = ' '.join([first] + [_sent(f) for f in facts[i + 1:i + take]])
      lines += [f'Q: {qs[turn % len(qs)]}', f'A: {ans}']
      i, turn = i + take, turn + 1
    return '\n'.join(lines)
  if style == 'guide':
    days = f'Open daily except {_pick(rng, WEEKDAYS)}; allow about {_pick(rng, GUIDE_TIMES)}.'
    body = ' '.join(_sent(_pick(rng, GUIDE_PREFIXES) + f) for f in facts)
    return f'{loc}: what to see\n\nTravellers passing through {loc} will hear a great deal about {lead}. {body} ' \
           f'{days}'
  if style == 'letter':
    friend, sender = nm.word(0.3), nm.word(0.3)
    body = ' '.join(_sent(f) for f in facts)
    return f'Dear {friend},\n\n{_pick(rng, LETTER_OPENERS).format(**fill)} {body}\n\nWrite soon,\n{sender}'
  raise ValueError(f'unknown style {style!r}; known: {STYLES}')


# ------------------------------------------------------------------------------------------- generation


def _passage(i: int, seed: int, rng: np.random.Generator, nm: _Names) -> dict:
  kind = ENTITY_TYPES[i % len(ENTITY_TYPES)]
  e = BUILDERS[kind](rng, nm)
  e.facts[1:] = [e.facts[1 + j] for j in rng.permutation(len(e.facts) - 1)]  # the intro stays first
  style = _pick(rng, STYLES)
  pid = f'knowledge-s{seed}-{i:04d}'
  n1, n2 = 4 + int(rng.random() < 0.5), 1 + int(rng.random() < 0.6)
  chosen = [(q, 1) for q in (e.one_hop[j] for j in rng.permutation(len(e.one_hop))[:n1])]
  chosen += [(q, 2) for q in (e.two_hop[j] for j in rng.permutation(len(e.two_hop))[:n2])]
  questions = [{'id': f'{pid}-q{j}', 'question': q, 'answer': a, 'aliases': al, 'hops': hops}
               for j, ((q, a, al), hops) in enumerate(chosen)]
  return {'id': pid, 'title': e.name, 'text': _render(e, style, rng, nm), 'entity_type': kind, 'style': style,
          'questions': questions, 'split': assign_split(e.name, seed)}


def _generate_all(seed: int = 0, n_passages: int = 360) -> list[dict]:
  """Every passage of every split, each tagged with its 'split'; only `generate` (which guards 'test') calls it."""
  rng = np.random.default_rng([seed, 0x6b6e])
  nm = _Names(rng)
  return [_passage(i, seed, rng, nm) for i in range(n_passages)]


def generate(split: str, seed: int = 0, n_passages: int = 360, allow_test: bool = False) -> list[dict]:
  """The passages of `split`; 'test' is held out and needs allow_test=True (final evaluation only)."""
  check_split(split, allow_test)
  return [p for p in _generate_all(seed, n_passages) if p['split'] == split]


def format_qa_prompt(question: str) -> str:
  """The no-context QA prompt: the question alone, as asked after the passage has been slept on."""
  return f'Answer with a short phrase.\nQuestion: {question}\nAnswer:'


_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCT = set(string.punctuation) | {'\u2013', '\u2014', '\u2018', '\u2019', '\u201c', '\u201d'}


def normalize_answer(s: str) -> str:
  """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
  s = ''.join(ch for ch in s.lower() if ch not in _PUNCT)
  return ' '.join(_ARTICLES.sub(' ', s).split())
