"""LTI rewards: Levenshtein against a pure-python DP, r_abs thresholds, GRPO advantages, the judge on a tiny model."""
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from sleep_jax import rewards
from sleep_jax.io.byte_tokenizer import ByteTokenizer
from tests.helpers import random_params, tiny_model


def dp_levenshtein(a, b):
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


# ---- Levenshtein and r_abs -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(a=st.text(alphabet='abcé ', max_size=12), b=st.text(alphabet='abcé ', max_size=12),
       x=st.lists(st.integers(0, 5), max_size=12), y=st.lists(st.integers(0, 5), max_size=12))
def test_levenshtein_matches_dp(a, b, x, y):
  assert rewards.levenshtein(a, b) == dp_levenshtein(a, b)
  assert rewards.levenshtein(x, y) == dp_levenshtein(x, y)
  assert rewards.levenshtein(np.asarray(x, np.int32), np.asarray(y, np.int32)) == dp_levenshtein(x, y)


def test_levenshtein_known_values():
  assert rewards.levenshtein('kitten', 'sitting') == 3
  assert rewards.levenshtein([1, 2, 3], [1, 3]) == 1
  assert rewards.levenshtein('', 'abc') == 3


def test_r_abs_threshold_edges():
  ref = 'abcdefghij'                         # |ref| = 10
  five, six = 'vwxyzfghij', 'uvwxyzghij'     # lev 5 and 6
  assert rewards.levenshtein(five, ref) == 5 and rewards.levenshtein(six, ref) == 6
  assert rewards.r_abs(five, ref, 0.5) == pytest.approx(0.5)   # exactly at z0 = 5: kept
  assert rewards.r_abs(six, ref, 0.5) == 0.0                   # just above: 0
  assert rewards.r_abs(six, ref, 0.6) == pytest.approx(0.4)
  assert rewards.r_abs(six, ref, 1.0) == pytest.approx(0.4)    # no threshold
  assert rewards.r_abs(ref, ref, 0.1) == 1.0
  # 0.29 * 100 rounds to 28.999...; lev 29 is still exactly at the threshold
  assert rewards.r_abs([1] * 29 + [0] * 71, [0] * 100, 0.29) == pytest.approx(0.71)
  assert rewards.r_abs([1] * 30 + [0] * 70, [0] * 100, 0.29) == 0.0


def test_r_abs_lengths_and_empty():
  assert rewards.r_abs('', '', 0.5) == 1.0
  assert rewards.r_abs([], [], 0.5) == 1.0
  assert rewards.r_abs('', 'ab', 1.0) == 0.0
  assert rewards.r_abs('abc', 'abcd', 0.5) == pytest.approx(0.75)   # normalised by the longer one
  assert rewards.r_abs([4, 5, 6, 7], [4, 5, 6], 0.5) == pytest.approx(0.75)
  got = rewards.r_abs_batch(['abc', '', 'xyz'], ['abcd', '', 'abc'], 0.5)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, [0.75, 1.0, 0.0])


def test_r_abs_errors():
  for z in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match='z0_frac'):
      rewards.r_abs('a', 'b', z)
  with pytest.raises(ValueError, match='2 preds and 1 refs'):
    rewards.r_abs_batch(['a', 'b'], ['a'], 0.5)


# ---- combination and advantages ------------------------------------------------------------------------
def test_lti_reward():
  s, a = np.array([1.0, 0.0, 0.5]), np.array([0.2, 0.8, 0.5])
  np.testing.assert_allclose(rewards.lti_reward(s, a, 0.25), 0.25 * s + 0.75 * a, rtol=1e-6)
  np.testing.assert_array_equal(rewards.lti_reward(s, a, 0.0), a.astype(np.float32))
  np.testing.assert_array_equal(rewards.lti_reward(s, a, 1.0), s.astype(np.float32))
  for g in (-0.1, 1.1):
    with pytest.raises(ValueError, match='gamma'):
      rewards.lti_reward(s, a, g)
  with pytest.raises(ValueError, match='shape'):
    rewards.lti_reward(s, a[:2], 0.5)


def test_group_advantages_by_hand():
  r = np.array([1.0, 0.0, 0.5, 0.5,  0.3, 0.3, 0.3, 0.3,  0.0, 0.0, 0.0, 2.0], np.float32)
  got = rewards.group_advantages(r, 4)
  assert got.dtype == np.float32 and got.shape == (12,)
  g0 = np.array([1.0, 0.0, 0.5, 0.5])           # mean 0.5, population std sqrt(0.125)
  np.testing.assert_allclose(got[:4], (g0 - 0.5) / (np.sqrt(0.125) + 1e-6), rtol=1e-5)
  np.testing.assert_array_equal(got[4:8], 0.0)   # all-equal group (0.3 is not exact in binary): exactly 0
  g2 = np.array([0.0, 0.0, 0.0, 2.0])           # mean 0.5, std sqrt(0.75)
  np.testing.assert_allclose(got[8:], (g2 - 0.5) / (np.sqrt(0.75) + 1e-6), rtol=1e-5)
  np.testing.assert_allclose(got.reshape(3, 4).sum(1), 0.0, atol=1e-5)
  np.testing.assert_array_equal(rewards.group_advantages(r, 1), 0.0)
  with pytest.raises(ValueError, match='len\\(rewards\\)=12.*group_size=5'):
    rewards.group_advantages(r, 5)


# ---- judge ---------------------------------------------------------------------------------------------
PAIRS = [('The cat sat on the mat.', 'A cat was sitting on the mat.'),
         ('hello', 'hello'),
         ('Paris is in France.', 'Bananas are yellow and sweet, and monkeys like them a lot.')]


@pytest.fixture(scope='module')
def tiny_judge():
  cfg, model = tiny_model()
  params = jax.jit(lambda: random_params(model, seed=3, scale=4.0))()   # jitted: eager init is slow
  return model, params, rewards.Judge(model, ByteTokenizer(), prompt_buckets=(256, 512))


def test_answer_ids_drop_shared_first_tokens():
  tok = ByteTokenizer()
  y, n = rewards.answer_ids(tok)
  assert y == tuple(tok.encode(c)[0] for c in 'yY') and n == tuple(tok.encode(c)[0] for c in 'nN')
  with pytest.raises(ValueError, match='same first tokens'):
    rewards.answer_ids(tok, yes=(' yes',), no=(' no',))


def test_judge_matches_each_prompt_alone(tiny_judge):
  model, params, judge = tiny_judge
  got = judge(params, PAIRS)
  assert got.shape == (3,) and got.dtype == np.float32
  assert ((got >= 0) & (got <= 1)).all()
  tok = ByteTokenizer()
  ys, ns = [tok.encode(c)[0] for c in 'yY'], [tok.encode(c)[0] for c in 'nN']
  apply = jax.jit(model.apply)
  for i, (a, b) in enumerate(PAIRS):
    text = f'Do these two texts mean the same thing? Answer yes or no.\n\nText A: {a}\n\nText B: {b}'
    ids = tok.chat_tokens([{'role': 'user', 'content': text}])
    assert judge.prompt(a, b) == ids
    logits, _ = apply({'params': params}, jnp.asarray([ids]))   # alone, no padding, default causal mask
    p = np.exp(np.asarray(logits[0, -1], np.float64) - np.max(np.asarray(logits[0, -1], np.float64)))
    p /= p.sum()
    ref = p[ys].sum() / (p[ys].sum() + p[ns].sum())
    np.testing.assert_allclose(got[i], ref, atol=1e-5)
  assert len(set(np.round(got, 6))) == 3, 'degenerate judge: identical scores for different pairs'
  np.testing.assert_array_equal(judge(params, PAIRS, hard=True), (got > 0.5).astype(np.float32))


def test_judge_no_recompilation_within_a_bucket(tiny_judge):
  _, params, judge = tiny_judge
  judge(params, PAIRS)
  n = judge.num_compiles
  other = judge(params, [('x', 'y'), ('a longer text here', 'another one'), ('q', 'r'), ('s', 't')])  # 4 rows
  again = judge(params, [('short', 'text'), ('different', 'words')] + PAIRS[:1])
  assert judge.num_compiles == n
  assert other.shape == (4,) and again.shape == (3,)
  judge(params, [('x' * 300, 'y')])   # a larger bucket is one new program
  assert judge.num_compiles == n + 1


def test_judge_truncates_and_rejects_oversized_prompts(tiny_judge):
  model, _, _ = tiny_judge
  j = rewards.Judge(model, ByteTokenizer(), prompt_buckets=(128,), max_chars=10)
  assert j.prompt('a' * 50, 'b') == j.prompt('a' * 10, 'b')
  j = rewards.Judge(model, ByteTokenizer(), prompt_buckets=(64,), max_chars=600)
  with pytest.raises(ValueError, match='prompt_buckets.*max_chars'):
    j._pad([j.prompt('a' * 100, 'b')])
