"""Token-level losses in float32. Masks are [B,L] weights (1 = counted)."""
from __future__ import annotations

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
