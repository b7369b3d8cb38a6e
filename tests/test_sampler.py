import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax import sharding
from sleep_jax.build import abstract_params
from sleep_jax.sampling import Sampler, filter_logits, sample_token
from tests.helpers import mesh, random_params, tiny_model

PROMPTS = [[5, 6, 7], list(range(20, 29)), list(range(40, 57))]   # lengths 3, 9, 17: two prompt buckets


@pytest.fixture(scope='module')
def setup():
  cfg, model = tiny_model()
  params = random_params(model, seed=1, scale=6.0)   # peaky logits: varied greedy continuations
  return cfg, model, params


def sampler(cfg, model, **kw):
  return Sampler(model, cfg, pad_id=0, eos_ids=kw.pop('eos_ids', [2]), prompt_buckets=(8, 16, 32),
                 gen_buckets=(8, 16), **kw)


def test_padded_batch_equals_each_prompt_alone(setup):
  cfg, model, params = setup
  s = sampler(cfg, model, eos_ids=[-1])
  batch = s(params, PROMPTS, max_new_tokens=12, rng=jax.random.key(0), temperature=0)
  assert len({tuple(t) for t in batch.tokens}) == 3, 'degenerate model: continuations identical'
  for i, p in enumerate(PROMPTS):
    alone = s(params, [p], max_new_tokens=12, rng=jax.random.key(0), temperature=0)
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
    np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[i], atol=1e-5)


def test_logprobs_are_the_models_teacher_forced_logprobs(setup):
  cfg, model, params = setup
  s = sampler(cfg, model, eos_ids=[-1])
  out = s(params, PROMPTS, max_new_tokens=10, rng=jax.random.key(4), temperature=1.0)
  for i, p in enumerate(PROMPTS):
    seq = jnp.asarray([p + list(out.tokens[i])])
    logp = jax.nn.log_softmax(model.apply({'params': params}, seq)[0][0])
    ref = [float(logp[len(p) - 1 + t, seq[0, len(p) + t]]) for t in range(10)]
    np.testing.assert_allclose(out.logprobs[i], ref, atol=1e-4)


def test_deterministic_for_a_seed_and_no_recompilation(setup):
  cfg, model, params = setup
  s = sampler(cfg, model, eos_ids=[-1])
  a = s(params, PROMPTS[:2], max_new_tokens=9, rng=jax.random.key(7), temperature=1.0)
  b = s(params, PROMPTS[:2], max_new_tokens=9, rng=jax.random.key(7), temperature=1.0)
  c = s(params, PROMPTS[:2], max_new_tokens=9, rng=jax.random.key(8), temperature=1.0)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert (a.tokens != c.tokens).any()
  n = s.num_compiles
  # other lengths inside the same buckets, other temperatures and lengths: same program
  for k, (temp, new) in enumerate([(0.0, 16), (0.5, 10), (1.3, 12)]):
    s(params, [[3, 4], list(range(30, 44))], max_new_tokens=new, rng=jax.random.key(k), temperature=temp)
  assert s.num_compiles == n


def test_topk1_and_tiny_topp_equal_greedy(setup):
  cfg, model, params = setup
  s = sampler(cfg, model, eos_ids=[-1])
  g = s(params, PROMPTS, max_new_tokens=8, rng=jax.random.key(0), temperature=0)
  k1 = s(params, PROMPTS, max_new_tokens=8, rng=jax.random.key(1), temperature=1.0, top_k=1)
  p0 = s(params, PROMPTS, max_new_tokens=8, rng=jax.random.key(2), temperature=1.0, top_p=1e-6)
  np.testing.assert_array_equal(g.tokens, k1.tokens)
  np.testing.assert_array_equal(g.tokens, p0.tokens)


def test_stops_at_eos_and_masks_the_rest(setup):
  cfg, model, params = setup
  g = sampler(cfg, model, eos_ids=[-1])(params, PROMPTS, max_new_tokens=8, rng=jax.random.key(0), temperature=0)
  eos = int(g.tokens[1, 2])          # make the third token of prompt 1 the stop token
  out = sampler(cfg, model, eos_ids=[eos])(params, PROMPTS, max_new_tokens=8, rng=jax.random.key(0),
                                            temperature=0)
  first = np.argmax(g.tokens[1] == eos)
  assert out.mask[1].sum() == first + 1 and out.tokens[1, first] == eos
  assert (out.tokens[1, first + 1:] == 0).all() and (out.logprobs[1, first + 1:] == 0).all()


def test_filtering_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
  for k, p, t in [(5, 1.0, 1.0), (0, 0.7, 0.8), (10, 0.5, 1.5)]:
    got = np.asarray(filter_logits(jnp.asarray(logits), t, k, p, k > 0, p < 1)) > -1e29
    for row, keep in zip(logits / t, got):
      order = np.argsort(-row)
      allowed = set(order[:k]) if k else set(order)
      pr = np.exp(row - row.max())
      pr[[i for i in range(50) if i not in allowed]] = 0
      pr /= pr.sum()
      cum, nucleus = 0.0, set()
      for i in order:
        if i in allowed and cum < p:
          nucleus.add(i)
          cum += pr[i]
      assert set(np.flatnonzero(keep)) == nucleus


def test_sampling_frequencies_match_softmax():
  logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0]])
  draws = jax.vmap(lambda k: sample_token(k, logits, 1.0, 0, 1.0, False, False))(
      jax.random.split(jax.random.key(0), 20000))
  freq = np.bincount(np.asarray(draws)[:, 0], minlength=4) / 20000
  np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(logits[0])), atol=0.015)


def test_sharded_params_give_the_same_tokens(setup, devices8):
  cfg, model, params = setup
  ref = sampler(cfg, model, eos_ids=[-1])(params, PROMPTS, max_new_tokens=10, rng=jax.random.key(5),
                                           temperature=0.9)
  m = mesh(2, 2, 2)
  sh = sharding.logical_shardings(abstract_params(model), m, sharding.DEFAULT_RULES)
  sp = sharding.put_tree(params, sh)
  out = sampler(cfg, model, eos_ids=[-1], mesh=m, param_shardings=sh)(
      sp, PROMPTS, max_new_tokens=10, rng=jax.random.key(5), temperature=0.9)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)


def test_bad_requests_are_clear(setup):
  cfg, model, params = setup
  s = sampler(cfg, model)
  with pytest.raises(ValueError, match='prompt 1 is empty'):
    s(params, [[1], []], max_new_tokens=4, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='largest bucket'):
    s(params, [list(range(1, 40))], max_new_tokens=4, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='top_p'):
    s(params, [[1]], max_new_tokens=4, rng=jax.random.key(0), top_p=0.0)


def test_cms_model_samples_with_masks_and_dream_experts():
  from sleep_jax.models import cms as cms_lib
  cfg, model = tiny_model(n_experts=3, expert_rank=4)
  params = random_params(model, seed=2, scale=6.0)
  cms = cms_lib.init_cms_state(cfg)
  s = sampler(cfg, model, eos_ids=[-1])
  kw = dict(max_new_tokens=12, rng=jax.random.key(0), temperature=0)
  plain = s(params, PROMPTS, cms=cms, **kw)
  dream_a = s(params, PROMPTS, cms=cms, dream_key=jax.random.key(1), **kw)
  dream_b = s(params, PROMPTS, cms=cms, dream_key=jax.random.key(1), **kw)
  np.testing.assert_array_equal(dream_a.tokens, dream_b.tokens)            # deterministic per dream key
  assert not np.allclose(plain.logprobs, dream_a.logprobs)                   # the random expert changes the model
