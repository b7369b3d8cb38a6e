"""Token-level losses in float32. Masks are [B,L] weights (1 = counted)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def cross_entropy(logits_BLV, targets_BL, weights_BL):
  """Mean next-token cross-entropy over weighted positions; returns (loss, total_weight)."""
  logits = logits_BLV.astype(jnp.float32)
  logz_BL = jax.nn.logsumexp(logits, axis=-1)
  tgt_BL = jnp.take_along_axis(logits, targets_BL[..., None], axis=-1)[..., 0]
  w = weights_BL.astype(jnp.float32)
  total = jnp.sum(w)
  return jnp.sum((logz_BL - tgt_BL) * w) / jnp.maximum(total, 1.0), total


def token_logprobs(logits_BLV, tokens_BL):
  """log p(tokens) under logits, float32, [B,L]."""
  logp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens_BL[..., None], axis=-1)[..., 0]


DIVERGENCES = ('fkl', 'rkl', 'jsd')
LOGP_FLOOR = -1e30  # the sampler's mask value


def _log_probs(logits_BLV):
  """float32 log-softmax floored at -1e30, so a -inf mask acts like the -1e30 one (finite everywhere)."""
  lp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return jnp.where(lp < LOGP_FLOOR, LOGP_FLOOR, lp)


def _kl_terms(lp_P, lp_Q):
  """p * (log p - log q) per entry, exactly 0 (value and gradient) where p == 0, so masked (-inf, -1e30)
  logits give no NaN. Where p > 0 but q == 0 (support mismatch) the term is huge (~1e30 p) but finite, so
  a weight-0 position cannot turn a gradient into NaN."""
  p = jnp.exp(lp_P)
  live = p > 0
  return jnp.where(live, p * (jnp.where(live, lp_P, 0.0) - jnp.where(live, lp_Q, 0.0)), 0.0)


def divergence_per_token(teacher_logits_BLV, student_logits_BLV, kind: str, beta: float = 0.5):
  """D(T || S) between next-token distributions at every position, float32 [B,L] (PAPER Sec. 3).

  'fkl': KL(T||S); 'rkl': KL(S||T); 'jsd': generalized JSD(beta) of GKD (Agarwal et al. 2024),
  beta KL(T||M) + (1-beta) KL(S||M) with M = beta T + (1-beta) S, log M in log space. JSD(beta)/beta -> KL(T||S)
  as beta -> 0 and JSD(beta)/(1-beta) -> KL(S||T) as beta -> 1. No gradient is stopped here: the caller
  stops the teacher's.
  """
  if kind not in DIVERGENCES:
    raise ValueError(f'kind={kind!r} is not a divergence; use one of {DIVERGENCES}')
  lp_T, lp_S = _log_probs(teacher_logits_BLV), _log_probs(student_logits_BLV)
  if kind == 'fkl':
    return jnp.sum(_kl_terms(lp_T, lp_S), axis=-1)
  if kind == 'rkl':
    return jnp.sum(_kl_terms(lp_S, lp_T), axis=-1)
  beta = float(beta)
  if not 0.0 < beta < 1.0:
    raise ValueError(f"beta={beta} must be strictly inside (0, 1) for kind='jsd'; for the limits use "
                     f"kind='fkl' (beta -> 0) or kind='rkl' (beta -> 1)")
  lp_M = jnp.logaddexp(lp_T + math.log(beta), lp_S + math.log1p(-beta))
  return beta * jnp.sum(_kl_terms(lp_T, lp_M), axis=-1) + (1 - beta) * jnp.sum(_kl_terms(lp_S, lp_M), axis=-1)


def masked_mean(x_BL, weights_BL):
  """sum(x w) / max(sum(w), 1) in float32; positions with weight 0 are dropped before multiplying, so
  Inf or NaN there (padding) cannot leak into the value or the gradient."""
  x = x_BL.astype(jnp.float32)
  w = weights_BL.astype(jnp.float32)
  return jnp.sum(jnp.where(w != 0, x, 0.0) * w) / jnp.maximum(jnp.sum(w), 1.0)


def divergence(teacher_logits_BLV, student_logits_BLV, weights_BL, kind: str, beta: float = 0.5):
  """Mean token-level divergence D(T||S) over weighted (completion) positions: the distillation loss F."""
  return masked_mean(divergence_per_token(teacher_logits_BLV, student_logits_BLV, kind, beta), weights_BL)


def sequence_logprob(logits_BLV, tokens_BL, weights_BL):
  """sum over weighted positions of log p(token), float32 [B]: log-probability of each completion (REINFORCE)."""
  lp_BL = token_logprobs(logits_BLV, tokens_BL)
  w = weights_BL.astype(jnp.float32)
  return jnp.sum(jnp.where(w != 0, lp_BL, 0.0) * w, axis=-1)
