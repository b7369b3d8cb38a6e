"""Divergences and masked reductions against float64 numpy references written here, plus their properties."""
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from sleep_jax import losses

KINDS = ('fkl', 'rkl', 'jsd')


# ---- float64 numpy references ------------------------------------------------------------------------
def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(x, axis=-1, keepdims=True)
  return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


def np_kl(lp, lq):
  """sum_v p (log p - log q) with 0 log 0 = 0."""
  p = np.exp(lp)
  with np.errstate(invalid='ignore'):
    return np.sum(np.where(p > 0, p * (lp - lq), 0.0), axis=-1)


def np_divergence(t, s, kind, beta=0.5):
  lt, ls = np_log_softmax(t), np_log_softmax(s)
  if kind == 'fkl':
    return np_kl(lt, ls)
  if kind == 'rkl':
    return np_kl(ls, lt)
  with np.errstate(divide='ignore'):
    lm = np.log(beta * np.exp(lt) + (1 - beta) * np.exp(ls))   # plain (not log-space) mixture
  return beta * np_kl(lt, lm) + (1 - beta) * np_kl(ls, lm)


def per_token(t, s, kind, beta=0.5):
  return np.asarray(losses.divergence_per_token(jnp.asarray(t), jnp.asarray(s), kind, beta))


def rand_logits(rng, shape, scale=3.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def extreme_pair(rng, B=2, L=5, V=11):
  """Logits in {-1e4, 0, 1e4} (near one-hot rows, ties), a shared -inf column and a shared -1e30 column."""
  t = rng.choice([-1e4, 0.0, 1e4], size=(B, L, V)).astype(np.float32)
  s = rng.choice([-1e4, 0.0, 1e4], size=(B, L, V)).astype(np.float32)
  t[..., 3] = s[..., 3] = -np.inf
  t[..., 7] = s[..., 7] = -1e30
  t[0, 0] = s[0, 0] = -1e4
  t[0, 0, 0] = s[0, 0, 0] = 1e4        # identical one-hot rows
  t[0, 1] = -1e4
  t[0, 1, 1] = 1e4                     # one-hot teacher against whatever the student has
  return t, s


# ---- against the references ------------------------------------------------------------------------------
@pytest.mark.parametrize('kind,beta', [('fkl', 0.5), ('rkl', 0.5), ('jsd', 0.1), ('jsd', 0.5), ('jsd', 0.9)])
@pytest.mark.parametrize('shape', [(2, 3, 7), (3, 1, 2), (1, 2, 49152)])
def test_matches_numpy_on_random_logits(kind, beta, shape):
  rng = np.random.default_rng(sum(shape))
  t, s = rand_logits(rng, shape), rand_logits(rng, shape)
  got = per_token(t, s, kind, beta)
  assert got.shape == shape[:2] and got.dtype == np.float32
  np.testing.assert_allclose(got, np_divergence(t, s, kind, beta), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('kind', KINDS)
def test_matches_numpy_on_extreme_logits(kind):
  t, s = extreme_pair(np.random.default_rng(0))
  got = per_token(t, s, kind, 0.3)
  ref = np_divergence(t, s, kind, 0.3)
  assert np.isfinite(got).all() and np.isfinite(ref).all()
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
  assert got[0, 0] == 0.0 if kind != 'jsd' else abs(got[0, 0]) < 1e-6


def test_bfloat16_logits_are_computed_in_float32():
  rng = np.random.default_rng(1)
  t, s = rand_logits(rng, (2, 3, 50)), rand_logits(rng, (2, 3, 50))
  tb, sb = jnp.asarray(t, jnp.bfloat16), jnp.asarray(s, jnp.bfloat16)
  got = losses.divergence_per_token(tb, sb, 'jsd')
  assert got.dtype == jnp.float32
  ref = np_divergence(np.asarray(tb.astype(jnp.float32)), np.asarray(sb.astype(jnp.float32)), 'jsd')
  np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-4, atol=2e-5)


# ---- properties ----------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(t=hnp.arrays(np.float32, (2, 3, 5), elements=st.floats(-30, 30, width=32)),
       s=hnp.arrays(np.float32, (2, 3, 5), elements=st.floats(-30, 30, width=32)),
       beta=st.floats(0.01, 0.99))
def test_properties(t, s, beta):
  H = -beta * np.log(beta) - (1 - beta) * np.log(1 - beta)
  for kind in KINDS:
    d = per_token(t, s, kind, beta)
    assert (d >= -1e-5).all(), (kind, d.min())
    np.testing.assert_allclose(d, np_divergence(t, s, kind, beta), rtol=1e-3, atol=1e-5)
    assert np.abs(per_token(t, t, kind, beta)).max() < 1e-6
  jsd = per_token(t, s, 'jsd', beta)
  assert (jsd <= H + 1e-5).all()
  np.testing.assert_allclose(jsd, per_token(s, t, 'jsd', 1 - beta), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('beta', [0.2, 0.5, 0.8])
def test_jsd_reaches_the_mixture_entropy_on_disjoint_supports(beta):
  t = np.full((1, 2, 6), -1e4, np.float32)
  s = t.copy()
  t[0, 0, 0] = s[0, 0, 1] = 0.0
  t[0, 1, :3] = s[0, 1, 3:] = 0.0
  H = -beta * np.log(beta) - (1 - beta) * np.log(1 - beta)
  np.testing.assert_allclose(per_token(t, s, 'jsd', beta), [[H, H]], rtol=1e-5)


def test_jsd_limits_scale_like_forward_and_reverse_kl():
  """JSD(beta)/beta -> KL(T||S) as beta -> 0 and JSD(beta)/(1-beta) -> KL(S||T) as beta -> 1, error O(beta)."""
  rng = np.random.default_rng(3)
  t, s = rand_logits(rng, (2, 4, 9), 1.0), rand_logits(rng, (2, 4, 9), 1.0)
  fkl, rkl = per_token(t, s, 'fkl'), per_token(t, s, 'rkl')
  for eps in (1e-2, 1e-3):
    np.testing.assert_allclose(per_token(t, s, 'jsd', eps) / eps, fkl, rtol=5 * eps + 1e-3)
    np.testing.assert_allclose(per_token(t, s, 'jsd', 1 - eps) / eps, rkl, rtol=5 * eps + 1e-3)


@pytest.mark.parametrize('kind', KINDS)
def test_gradients_finite_with_extreme_logits(kind):
  t, s = extreme_pair(np.random.default_rng(2))
  w = np.ones(t.shape[:2], np.float32)
  g_s = jax.grad(lambda s: losses.divergence(t, s, w, kind))(jnp.asarray(s))
  g_t = jax.grad(lambda t: losses.divergence(t, s, w, kind))(jnp.asarray(t))
  assert np.isfinite(np.asarray(g_s)).all() and np.isfinite(np.asarray(g_t)).all()
  assert np.abs(np.asarray(g_s)).max() > 0


@pytest.mark.parametrize('kind', KINDS)
def test_gradient_matches_finite_differences(kind):
  rng = np.random.default_rng(4)
  t, s = rand_logits(rng, (1, 1, 6), 1.0), rand_logits(rng, (1, 1, 6), 1.0)
  g = np.asarray(jax.grad(lambda s: losses.divergence_per_token(t, s, kind, 0.3).sum())(jnp.asarray(s)))
  h = 1e-6
  for v in range(6):
    e = np.zeros_like(s, np.float64)
    e[0, 0, v] = h
    fd = (np_divergence(t, s + e, kind, 0.3) - np_divergence(t, s - e, kind, 0.3))[0, 0] / (2 * h)
    np.testing.assert_allclose(g[0, 0, v], fd, rtol=1e-3, atol=1e-5)


def test_support_mismatch_is_huge_but_finite_and_masks_agree():
  """-inf and -1e30 masks give the same result; a student with no mass where the teacher has some gets a
  huge finite KL, and a weight-0 such position does not poison the gradient."""
  t = np.zeros((1, 2, 4), np.float32)
  s_inf, s_big = t.copy(), t.copy()
  s_inf[0, 1, 0], s_big[0, 1, 0] = -np.inf, -1e30
  for kind in ('fkl', 'rkl'):
    a, b = per_token(t, s_inf, kind), per_token(t, s_big, kind)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
  assert per_token(t, s_inf, 'fkl')[0, 1] > 1e20
  w = np.array([[1.0, 0.0]], np.float32)
  for kind in KINDS:
    g = jax.grad(lambda t, s: losses.divergence(t, s, w, kind), argnums=(0, 1))(jnp.asarray(t), jnp.asarray(s_inf))
    assert all(np.isfinite(np.asarray(x)).all() for x in g)
    v = losses.divergence(t, s_inf, w, kind)
    np.testing.assert_allclose(v, 0.0, atol=1e-6)   # position 0: T == S


def test_errors_name_the_argument():
  x = jnp.zeros((1, 1, 3))
  with pytest.raises(ValueError, match="kind='kl'.*'fkl', 'rkl', 'jsd'"):
    losses.divergence_per_token(x, x, 'kl')
  for beta in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match="beta.*'fkl'.*'rkl'"):
      losses.divergence_per_token(x, x, 'jsd', beta)
  losses.divergence_per_token(x, x, 'fkl', beta=0.0)   # beta is ignored by the KLs


# ---- reductions ----------------------------------------------------------------------------------------
def test_masked_mean_ignores_masked_positions():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((3, 6)).astype(np.float32)
  w = (rng.random((3, 6)) < 0.5).astype(np.float32)
  w[0, 0], w[0, 1] = 1.0, 0.0
  x_bad = np.where(w > 0, x, 1e30).astype(np.float32)
  x_bad[0, 1] = np.inf
  ref = (x * w).sum() / w.sum()
  np.testing.assert_allclose(losses.masked_mean(x_bad, w), ref, rtol=1e-6)
  g = jax.grad(lambda x: losses.masked_mean(x, w))(jnp.asarray(x_bad))
  np.testing.assert_allclose(g, w / w.sum(), rtol=1e-6)
  wf = rng.random((3, 6)).astype(np.float32)   # fractional weights
  np.testing.assert_allclose(losses.masked_mean(x, wf), (x * wf).sum() / max(wf.sum(), 1.0), rtol=1e-5)
  assert float(losses.masked_mean(x, np.zeros_like(w))) == 0.0


@pytest.mark.parametrize('kind', KINDS)
def test_divergence_is_the_masked_mean_of_the_per_token_values(kind):
  rng = np.random.default_rng(6)
  t, s = rand_logits(rng, (2, 4, 8)), rand_logits(rng, (2, 4, 8))
  w = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], np.float32)
  ref = (np_divergence(t, s, kind, 0.4) * w).sum() / w.sum()
  np.testing.assert_allclose(losses.divergence(t, s, w, kind, 0.4), ref, rtol=1e-4)


def test_sequence_logprob():
  rng = np.random.default_rng(7)
  logits = rand_logits(rng, (3, 5, 10))
  logits[0, 4, :] = -np.inf
  logits[0, 4, 0] = 0.0                               # a masked row at a weight-0 position
  tok = rng.integers(1, 10, (3, 5)).astype(np.int32)  # token 1..9 has log p = -inf at [0, 4]
  w = np.ones((3, 5), np.float32)
  w[0, 4] = w[2, 0] = 0.0
  lp = np_log_softmax(logits)
  ref = [sum(lp[b, l, tok[b, l]] for l in range(5) if w[b, l]) for b in range(3)]
  got = losses.sequence_logprob(jnp.asarray(logits), tok, w)
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  g = jax.grad(lambda l: losses.sequence_logprob(l, tok, w).sum())(jnp.asarray(logits))
  assert np.isfinite(np.asarray(g)).all()
