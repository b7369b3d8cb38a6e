"""The controlled world (data/world.py): people and splits, bios, held-out question templates, the word tokenizer,
the packed pretraining stream, teacher-forced exact match against greedy decoding, gates, and the `sleep_world`
dataset and seqio tasks. No training: a random tiny Llama stands in for the world model."""
import re

import numpy as np
import pytest

from sleep_jax.data import registry
from sleep_jax.data import world as W
from sleep_jax.data.splits import SPLITS

VOCAB = W.vocabulary()
SMALL = W.WorldSpec(seed=3, n_pretrain=21, n_validation=5, n_test=7)


@pytest.fixture(scope='module')
def world():
  return W.World(W.WorldSpec(seed=registry.SEED))


@pytest.fixture(scope='module')
def tok():
  return W.make_tokenizer()


def text(ids) -> str:
  return ' '.join(VOCAB[int(i)] for i in ids)


def has(haystack: str, needle: str) -> bool:
  """Whole-word containment ('ek' is not inside 'ekland')."""
  return f' {needle} ' in f' {haystack} '


def names_in(words: list[str]) -> set[str]:
  """Every 'first last' pair of consecutive words (how a person is written)."""
  first, last = set(W.FIRST), set(W.LAST)
  return {f'{a} {b}' for a, b in zip(words, words[1:]) if a in first and b in last}


def everyone(w: W.World) -> list[W.Person]:
  return [p for s in W.SPLITS for p in w.people[s]]


# ---- people and splits ------------------------------------------------------------------------------------------

def test_version_and_the_registry_world_is_the_configured_one():
  assert re.fullmatch(r'\d+\.\d+\.\d+', W.VERSION)
  assert registry.get_spec('sleep_world').version() == W.VERSION
  from configs import world as world_config   # the dataset shows the people the shipped world model learned
  assert W.spec_from(world_config.get_config().world) == W.WorldSpec(seed=registry.SEED)


def test_world_is_a_function_of_its_seed():
  a, b, c = W.World(SMALL), W.World(SMALL), W.World(W.WorldSpec(seed=4, n_pretrain=21, n_validation=5, n_test=7))
  assert a.people == b.people and a._fresh_names == b._fresh_names
  assert [p.name for p in everyone(a)] != [p.name for p in everyone(c)]
  assert [p.values for p in everyone(a)] != [p.values for p in everyone(c)]


def test_split_sizes_halves_and_disjoint_names():
  w = W.World(SMALL)
  assert {s: len(w.people[s]) for s in W.SPLITS} == {'pretrain_qa': 10, 'pretrain_bio': 11, 'validation': 5,
                                                      'test': 7}
  names = [p.name for p in everyone(w)]
  assert len(names) == len(set(names))                       # no person in two splits
  assert not set(names) & set(w._fresh_names)                # open-book people are never anyone of the world
  assert len(names) + len(w._fresh_names) == len(W.FIRST) * len(W.LAST)
  for p in everyone(w):
    month, day, year = p.value('birth_date').split()
    assert month in W.MONTHS and day in W.DAYS and year in W.YEARS
    for a in W.ATTRS[1:]:
      assert p.value(a) in W._values(a), (p, a)
    rec = p.as_record()
    assert rec['id'] == p.name.replace(' ', '_') and [rec[a] for a in W.ATTRS] == list(p.values)
  with pytest.raises(ValueError, match='n_pretrain=1'):
    W.WorldSpec(n_pretrain=1)
  with pytest.raises(ValueError, match='name pairs'):
    W.WorldSpec(n_pretrain=2000)


# ---- bios -------------------------------------------------------------------------------------------------------

def sentences(bio: str) -> list[str]:
  assert bio.endswith(' .')
  return [s.strip() + ' .' for s in bio.split(' .') if s.strip()]


def test_bios_name_everyone_in_every_sentence_and_state_every_value(world):
  for i, p in enumerate(world.people['pretrain_qa'][:10] + world.people['test'][:5]):
    bio = world.bio(p, np.random.default_rng(i))
    sents = sentences(bio)
    assert len(sents) == len(W.ATTRS)
    for s in sents:
      assert has(s, p.name), s
    for a in W.ATTRS:
      assert has(bio, p.value(a)), (a, bio)
    # each sentence is one attribute's template, one sentence per attribute
    rendered = {t.replace('{n}', p.name).replace('{v}', p.value(a)): a
                for a in W.ATTRS for t in W.BIO_TEMPLATES[a]}
    assert sorted(rendered[s] for s in sents) == sorted(W.ATTRS)
    assert world.bio(p, np.random.default_rng(i)) == bio        # a rendering is a function of its generator


def test_bios_are_rerendered_per_exposure(world):
  p = world.people['pretrain_bio'][0]
  bios = [world.bio(p, np.random.default_rng(s)) for s in range(20)]
  assert len(set(bios)) >= 15
  assert len({sentences(b)[0] for b in bios}) >= 5          # the order changes, not only the templates
  assert all(len(set(W.BIO_TEMPLATES[a])) == 6 for a in W.ATTRS)


# ---- held-out question templates ---------------------------------------------------------------------------------

def test_held_out_templates_are_disjoint_and_rotate():
  held = {a: set(W.questions(a, True)) for a in W.ATTRS}
  for a in W.ATTRS:
    trained = set(W.questions(a, False))
    assert len(held[a]) == 2 and len(trained) == len(W.FRAMES) - 2 + 2
    assert not held[a] & trained, a
    assert set(W.NATURAL[a]) <= trained                    # natural questions are always trained
    for i in W.heldout_frames(a):                          # every held-out frame is trained with another attribute
      assert any(i not in W.heldout_frames(b) for b in W.ATTRS if b != a), (a, i)
  assert {i for a in W.ATTRS for i in W.heldout_frames(a)} == set(range(len(W.FRAMES)))
  assert len({q for a in W.ATTRS for q in W.questions(a, True) + W.questions(a, False)}) == \
      sum(len(W.questions(a, True)) + len(W.questions(a, False)) for a in W.ATTRS)


class RecordingWorld(W.World):
  """A world that notes every (attribute, template) it writes a question with."""

  def __init__(self, spec):
    super().__init__(spec)
    self.asked = []

  def question(self, person, attr, template):
    self.asked.append((attr, template))
    return super().question(person, attr, template)


def test_pretraining_never_asks_a_held_out_question():
  w, mix = RecordingWorld(W.WorldSpec(seed=registry.SEED)), W.Mix()
  batches = [W.pretrain_batch(w, mix, 0, step, 4, 256) for step in range(20)]
  assert len(w.asked) > 200
  for attr, template in w.asked:
    assert template in W.questions(attr, False), (attr, template)
  # ... and in the packed token stream itself: no document contains a held-out question of a person it names,
  # unless that string is also part of a trained question ('university of {n} ?' ends 'what is the university
  # of {n} ?', so it occurs inside trained text; the only such case)
  exempt = {(a, h) for a in W.ATTRS for h in W.questions(a, True)
            if any(h in t for b in W.ATTRS for t in W.questions(b, False))}
  assert exempt <= {('university', 'university of {n} ?')}
  docs, asked_seen = 0, 0
  trained = {q for a in W.ATTRS for q in W.questions(a, False)}
  for b in batches:
    for r in range(b['inputs'].shape[0]):
      for s in range(1, b['segment_ids'][r].max() + 1):
        where = b['segment_ids'][r] == s
        seg = text(list(b['inputs'][r][where]) + [b['targets'][r][where][-1]])
        docs += 1
        for name in names_in(seg.split()):
          for a in W.ATTRS:
            for h in W.questions(a, True):
              if (a, h) not in exempt:
                assert not has(seg, h.replace('{n}', name)), (h, seg)
          asked_seen += sum(has(seg, t.replace('{n}', name)) for t in trained)
  assert docs > 80 and asked_seen > 100


def test_validation_and_test_people_never_appear_in_pretraining(world):
  rng, mix = np.random.default_rng(11), W.Mix()
  held = {p.name for s in ('validation', 'test') for p in world.people[s]}
  pre = {p.name for s in ('pretrain_qa', 'pretrain_bio') for p in world.people[s]}
  fresh = set(world._fresh_names)
  seen = set()
  for _ in range(400):
    toks, weights = W.document(world, rng, mix)
    assert toks[0] == W.ids(W.BOS) and toks[-1] == W.ids(W.EOS) and len(weights) == len(toks) - 1
    names = names_in(text(toks).split())
    assert names and not names & held, names & held
    assert names <= pre | fresh
    seen |= names
  assert len(seen & pre) > 100 and len(seen & fresh) > 100      # both pretraining people and open-book people


# ---- tokenizer --------------------------------------------------------------------------------------------------

def test_vocabulary_round_trips_through_the_tokenizer(tok, tmp_path):
  assert VOCAB[:4] == [W.PAD, W.BOS, W.EOS, W.UNK] and len(set(VOCAB)) == len(VOCAB)
  assert VOCAB[4:] == sorted(VOCAB[4:]) and all(' ' not in v and v for v in VOCAB)
  assert tok.vocab_size == len(VOCAB)
  from configs import world as world_config
  assert world_config.world_model().vocab_size >= len(VOCAB)    # the model's embedding has a row per word
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (W.ids(W.PAD), W.ids(W.BOS), W.ids(W.EOS)) == (0, 1, 2)
  for i, v in enumerate(VOCAB):
    assert tok.encode(v) == [i] == W.encode(v), v
    assert tok.decode([i], skip_special=False) == v
  tok.save(tmp_path)
  again = type(tok).load(tmp_path)
  assert again.encode(' '.join(VOCAB)) == list(range(len(VOCAB)))


def test_tokenizer_agrees_with_the_fast_encoder(world, tok):
  rng = np.random.default_rng(0)
  people = world.people['pretrain_qa'][:5] + world.people['validation'][:5]
  texts = [world.bio(p, rng) for p in people] + [q['question'] for q in world.eval_questions(people, True)] \
      + [q['question'] for q in world.eval_questions(people, False)] + [q['answer'] for q in
                                                                        world.eval_questions(people)]
  for t in texts:
    ids = W.encode(t)
    assert tok.encode(t) == ids and W.ids(W.UNK) not in ids
    assert tok.decode(ids) == t
    chat = tok.chat_tokens([{'role': 'user', 'content': t}])
    assert chat[0] == tok.bos_id and chat[1:] == ids
  with pytest.raises(ValueError, match="outside the vocabulary: 'zebra'"):
    W.encode('alma adler was born in zebra .')


# ---- pretraining stream -----------------------------------------------------------------------------------------

def test_pretrain_batch_is_a_function_of_seed_and_step(world):
  mix = W.Mix()
  a, b = W.pretrain_batch(world, mix, 5, 3, 4, 128), W.pretrain_batch(world, mix, 5, 3, 4, 128)
  assert sorted(a) == ['inputs', 'positions', 'segment_ids', 'targets', 'weights']
  for k in a:
    assert a[k].shape == (4, 128) and a[k].dtype == (np.float32 if k == 'weights' else np.int32)
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert not np.array_equal(a['inputs'], W.pretrain_batch(world, mix, 5, 4, 4, 128)['inputs'])
  assert not np.array_equal(a['inputs'], W.pretrain_batch(world, mix, 6, 3, 4, 128)['inputs'])
  with pytest.raises(ValueError, match='does not fit'):
    W.pretrain_batch(world, mix, 5, 3, 2, 8)


def test_pretrain_rows_are_packed_documents_with_weighted_answers(world):
  mix = W.Mix(qa_per_doc=2, answer_weight=2.5)
  bos, eos = W.ids(W.BOS), W.ids(W.EOS)
  by_name = {p.name: p for p in everyone(world)}
  values = {v for a in W.ATTRS[1:] for v in W._values(a)} | {f'{m} {d} {y}' for m in W.MONTHS for d in W.DAYS
                                                             for y in W.YEARS}
  n_segments, n_answers = 0, 0
  for step in range(3):
    b = W.pretrain_batch(world, mix, 1, step, 4, 160)
    for r in range(4):
      seg, pos, w = b['segment_ids'][r], b['positions'][r], b['weights'][r]
      inp, tgt = b['inputs'][r], b['targets'][r]
      pad = seg == 0
      assert not pad.all() and (np.flatnonzero(pad) >= np.flatnonzero(~pad).max()).all()   # padding at the end
      assert (w[pad] == 0).all() and (w[~pad] > 0).all()
      assert (inp[pad] == 0).all() and (tgt[pad] == 0).all() and (pos[pad] == 0).all()
      assert set(np.unique(w[~pad])) <= {1.0, 2.5}
      k = seg.max()
      assert set(np.unique(seg[~pad])) == set(range(1, k + 1))
      for s in range(1, k + 1):
        n_segments += 1
        (idx,) = np.nonzero(seg == s)
        assert (np.diff(idx) == 1).all()
        np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))       # positions restart per document
        assert inp[idx[0]] == bos and tgt[idx[-1]] == eos
        np.testing.assert_array_equal(tgt[idx[:-1]], inp[idx[1:]])         # targets: inputs shifted, in-segment
        words = [VOCAB[t] for t in tgt[idx]]
        ws = w[idx]
        runs, cur = [], []                                                   # answer runs: weight 2.5, end in eos
        for j, (word, x) in enumerate(zip(words, ws)):
          if x == 2.5:
            cur.append(j)
            if word == W.EOS:
              runs.append(cur)
              cur = []
          else:
            assert not cur and (word != W.EOS or j == len(words) - 1), (words, ws)
        assert not cur and len(runs) in (0, mix.qa_per_doc)
        for run in runs:
          n_answers += 1
          answer = ' '.join(words[j] for j in run[:-1])
          before = words[:run[0]]
          assert answer in values and before[-1] in ('?', '.')
          asked = names_in(before[-12:])        # the person the question names
          assert len(asked) == 1
          (name,) = asked
          if name in by_name:                   # a pretraining person: a closed-book answer of their own
            assert answer in by_name[name].values and name in {p.name for p in world.people['pretrain_qa']}
          else:                                 # a fresh open-book person: the answer is in their bio above
            assert has(' '.join(words[:run[0]]), answer)
    assert (b['segment_ids'].max(axis=1) >= 2).any()                      # rows hold several documents
  assert n_segments > 12 and n_answers > 10


def test_answer_rows_weight_exactly_the_answer():
  r = W.answer_rows([[1, 5, 6], [1, 7]], [[8, 9, 2], [2]], seq_len=7, pad_id=0)
  np.testing.assert_array_equal(r['inputs'], [[1, 5, 6, 8, 9, 0, 0], [1, 7, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(r['targets'], [[5, 6, 8, 9, 2, 0, 0], [7, 2, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(r['weights'], [[0, 0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0]])
  W.answer_rows([[1, 2, 3, 4]], [[5, 6, 7, 8]], seq_len=7, pad_id=0)          # 8 tokens = 7 (input, target) pairs
  with pytest.raises(ValueError, match='does not fit'):
    W.answer_rows([[1, 2, 3, 4]], [[5, 6, 7, 8, 9]], seq_len=7, pad_id=0)


# ---- exact match == greedy decoding ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny():
  """A random tiny Llama over the world's vocabulary whose <eos> logit is boosted, so greedy decoding stops after a
  few tokens for some prompts and not for others (some hits, some misses). Parameters are drawn in numpy over
  the shapes of `init` (no compilation)."""
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from sleep_jax.models.layers import ModelConfig
  from sleep_jax.models.llama import Transformer
  cfg = ModelConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64,
                    tie_embeddings=False, max_seq_len=160)
  model = Transformer(cfg)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  rng = np.random.default_rng(0)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if len(s.shape) == 1:                                   # norm scales
      return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    fan_in = s.shape[0] if 'embed' not in name else 1
    return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  params['lm_head'][:, W.ids(W.EOS)] *= 3.0
  params = jax.tree.map(jnp.asarray, params)
  return model, params


def greedy(model, params, prompts: list[list[int]], max_new: int, length: int = 150) -> list[list[int]]:
  """Plain greedy decoding: one forward pass per new token over the whole sequence so far (right-padded to a fixed
  length, read at the last real position), argmax, append, stop at <eos>."""
  import jax
  fwd = jax.jit(lambda p, x: model.apply({'params': p}, x)[0])
  seqs, out = [list(p) for p in prompts], [[] for _ in prompts]
  for _ in range(max_new):
    live = [i for i, o in enumerate(out) if not o or o[-1] != W.ids(W.EOS)]
    if not live:
      break
    x = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
      x[i, :len(s)] = s
    logits = np.asarray(fwd(params, x))
    for i in live:
      nxt = int(np.argmax(logits[i, len(seqs[i]) - 1]))
      seqs[i].append(nxt)
      out[i].append(nxt)
  return out


def test_exact_match_equals_greedy_decoding(world, tok, tiny):
  model, params = tiny
  people = world.people['pretrain_qa'][:3] + world.people['validation'][:2]
  qs = world.eval_questions(people)[::5]
  prompts = [q['question'] for q in qs] + W.open_book_prompts(world, qs[:3], seed=0)
  prompt_ids = [[tok.bos_id] + W.encode(p) for p in prompts]
  max_new = 12
  gen = greedy(model, params, prompt_ids, max_new)
  pairs = []                                     # (prompt index, answer): the true answer, the model's own, near misses
  for i, g in enumerate(gen):
    pairs.append((i, (qs + qs[:3])[i]['answer']))
    if g[-1] == tok.eos_id and len(g) <= max_new - 2:
      own = [VOCAB[t] for t in g[:-1]]
      pairs.append((i, ' '.join(own)))
      pairs.append((i, ' '.join(own + ['alma'])))
      if own:
        pairs.append((i, ' '.join(own[:-1])))
        pairs.append((i, ' '.join(own[:-1] + ['zeno' if own[-1] != 'zeno' else 'ada'])))
  expected = []
  for i, a in pairs:
    want = W.encode(a) + [tok.eos_id]
    assert len(want) <= max_new
    expected.append(gen[i] == want)
  expected = np.array(expected)
  assert expected.sum() >= 3 and (~expected).sum() >= 3, gen      # the model must give both outcomes
  assert any(e and a for e, (_, a) in zip(expected, pairs))       # ... including a hit on a non-empty answer
  em = W.ExactMatch(model, tok, chunk=4)              # several chunks, the last one padded
  p_ids, a_ids = em.rows([prompts[i] for i, _ in pairs], [a for _, a in pairs])
  assert p_ids == [prompt_ids[i] for i, _ in pairs]
  hits = em.hits(params, None, [prompts[i] for i, _ in pairs], [a for _, a in pairs])
  assert hits.dtype == bool and hits.shape == expected.shape
  np.testing.assert_array_equal(hits, expected)
  assert em.accuracy(params, {}, [prompts[i] for i, _ in pairs], [a for _, a in pairs]) == pytest.approx(
      expected.mean())
  assert em.hits(params, None, [], []).shape == (0,)


def test_gate_metrics_on_a_random_model(tok, tiny):
  model, params = tiny
  w = W.World(W.WorldSpec(seed=1, n_pretrain=4, n_validation=2, n_test=2))
  em = W.ExactMatch(model, tok, chunk=8)
  m = W.gate_metrics(em, params, None, w)
  assert set(W.GATES) <= set(m) and all(0 <= m[k] <= 1 for k in m if k != 'closed_new_excess')
  assert m['closed_new_excess'] == pytest.approx(m['closed_new'] - m['no_knowledge_baseline'])
  assert m['open_book_new'] < 0.95                                  # a random model cannot read
  prompts = W.open_book_prompts(w, w.eval_questions(w.people['validation']), seed=0)
  for q, p in zip(w.eval_questions(w.people['validation']), prompts):
    assert p.endswith(' ' + q['question']) and has(p, q['answer'])


# ---- gates --------------------------------------------------------------------------------------------------------

def test_gate_failures_and_table():
  good = {'open_book_new': 0.99, 'closed_qa': 0.95, 'closed_bio': 0.7, 'closed_new_excess': 0.01}
  assert W.gate_failures(good) == []
  assert W.gate_failures({**good, 'closed_new_excess': 0.05}) == []              # thresholds are inclusive
  bad = {**good, 'closed_bio': 0.42, 'closed_new_excess': 0.2}
  fails = W.gate_failures(bad)
  assert len(fails) == 2
  assert fails[0].startswith('closed_bio = 0.420, needs >= 0.6') and fails[1].startswith('closed_new_excess = 0.200')
  table = W.gate_table(bad).splitlines()
  assert len(table) == 2 + len(W.GATES)
  assert table[2].endswith('| 99.0% | >= 95% | yes |') and table[4].endswith('| 42.0% | >= 60% | NO |')
  assert table[5].endswith('| 20.0% | <= 5% | NO |')
  with pytest.raises(KeyError):
    W.gate_failures({'open_book_new': 1.0})


def test_no_knowledge_baseline_is_small(world):
  assert 0 < world.no_knowledge_baseline() < 0.15


# ---- the sleep_world dataset and its seqio tasks -------------------------------------------------------------------

def test_registry_records(world):
  spec = registry.get_spec('sleep_world')
  recs = {s: list(spec.records(s)) for s in SPLITS}
  assert recs == {s: list(spec.records(s)) for s in SPLITS}                       # deterministic, bios included
  assert [len(recs[s]) for s in SPLITS] == [200, 300, 300]
  assert [r['kind'] for r in recs['train']] == ['qa'] * 100 + ['bio'] * 100
  assert {r['kind'] for s in ('validation', 'test') for r in recs[s]} == {'new'}
  ids = [r['id'] for s in SPLITS for r in recs[s]]
  assert len(ids) == len(set(ids))
  assert [r['name'] for r in recs['validation']] == [p.name for p in world.people['validation']]
  for s in SPLITS:
    for r in recs[s]:
      p = W.Person(r['name'], tuple(r[a] for a in W.ATTRS))
      assert {k: r[k] for k in ('id', 'name', *W.ATTRS)} == p.as_record()
      assert all(has(r['bio'], v) for v in p.values) and len(sentences(r['bio'])) == len(W.ATTRS)
      assert r['questions'] == [{k: q[k] for k in ('attr', 'question', 'answer')} for q in world.eval_questions([p])]
      assert len(r['questions']) == 2 * len(W.ATTRS)
  assert len({r['bio'].split(' .')[0].replace(r['name'], '') for r in recs['train']}) > 10   # renderings vary


def test_dataset_builds_and_holds_out_test(data_dir):
  from sleep_jax.data import tfds_builders as tb
  assert tb.sizes('sleep_world') == {'train': 200, 'validation': 300, 'test': 300}
  assert (data_dir / 'sleep_world' / W.VERSION).is_dir()
  with pytest.raises(PermissionError, match='held out'):
    tb.load('sleep_world', 'test')
  got = {r['id']: r for r in tb.load('sleep_world', 'test', allow_test=True)}
  assert got == {r['id']: r for r in registry.get_spec('sleep_world').records('test')}


def test_task_rows(data_dir):
  from sleep_jax.data import tasks
  rows = list(tasks.rows('sleep_world', 'validation', tasks._world_qa_rows))
  assert len(rows) == 300 * 2 * len(W.ATTRS) and len({r['id'] for r in rows}) == len(rows)
  held = {q for a in W.ATTRS for q in W.questions(a, True)}
  for r in rows:
    assert any(r['inputs'] == q.replace('{n}', r['id'].split('-')[0].replace('_', ' ')) for q in held)
    assert r['aliases'] == f'["{r["targets"]}"]'
  bios = list(tasks.rows('sleep_world', 'train', tasks._bio_rows))
  assert len(bios) == 200 and all(r['inputs'] == '' and r['targets'].endswith(' .') for r in bios)
  with pytest.raises(PermissionError):
    list(tasks.rows('sleep_world', 'test', tasks._world_qa_rows))


@pytest.mark.slow
def test_seqio_tasks(data_dir):
  import seqio
  from sleep_jax.data import tasks
  names = tasks.register_all()
  assert names['sleep_world_qa'] == names['sleep_world_bios_lm'] == 'sleep_world'
  lens = {'inputs': 64, 'targets': 128}
  task = seqio.get_mixture_or_task('sleep_world_qa')
  exs = list(task.get_dataset(split='validation', sequence_length=lens, shuffle=False).as_numpy_iterator())
  assert len(exs) == 300 * 2 * len(W.ATTRS) and all(e['targets'][-1] == tasks.vocabulary().eos_id for e in exs)
  tgts = [task.postprocess_fn(e['targets_pretokenized'], example=e, is_target=True) for e in exs[:20]]
  preds = [task.postprocess_fn(e['targets_pretokenized'].decode(), example=e, is_target=False) for e in exs[:20]]
  assert task.metric_fns[0](tgts, preds) == {'exact_match': pytest.approx(100.0)}
  assert task.metric_fns[0](tgts, preds[1:] + preds[:1])['exact_match'] < 100
  lm = seqio.get_mixture_or_task('sleep_world_bios_lm')
  assert lm.metric_fns == []
  ex = next(lm.get_dataset(split='train', sequence_length=lens, shuffle=False).as_numpy_iterator())
  assert ex['inputs_pretokenized'] == b'' and ex['targets_pretokenized'].decode().endswith(' .')
  with pytest.raises(PermissionError):
    task.get_dataset(split='test', sequence_length=lens)
  with tasks.held_out():
    assert sum(1 for _ in task.get_dataset(split='test', sequence_length=lens)) == 300 * 2 * len(W.ATTRS)
