"""The one sampler: jit-compiled KV-cache decoding for batched prompts of different lengths.

Prompts are left-padded to a length bucket, the batch to a size bucket, and the generation buffer to a
bucket, so repeated calls reuse one compiled program. Pad slots are masked out of attention and
positions count real tokens only, so a row in a padded batch sees exactly what it would see alone.
Temperature, top-k, top-p and the number of new tokens are traced values (no recompilation when they
change); only whether top-k / top-p filtering is on at all is static.

Returns tokens, the raw model (temperature 1, unfiltered) log-prob of each sampled token, and a
completion mask (True up to and including the stop token) -- what on-policy distillation and policy
gradients need.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sleep_jax import sharding
from sleep_jax.models.cms import variables
from sleep_jax.models.llama import ModelConfig, init_cache

NEG_INF = -1e30


@dataclasses.dataclass
class SampleOutput:
  tokens: np.ndarray     # [B, N] int32, pad_id after the stop
  logprobs: np.ndarray   # [B, N] float32, log p_model(token), 0 where mask is False
  mask: np.ndarray       # [B, N] bool, generated tokens including the stop token

  @property
  def lengths(self) -> np.ndarray:
    return self.mask.sum(-1)


def bucket(n: int, buckets: Sequence[int], what: str, field: str | None = None) -> int:
  """The smallest bucket >= n; an error naming `sampling.<field or what>_buckets` when none fits."""
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(f'{what}={n} exceeds the largest bucket {max(buckets)}; add a larger bucket to '
                   f'sampling.{field or what}_buckets')


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int, rows: int):
  """(tokens int32 [rows, length], mask bool) with each prompt right-aligned; extra rows are all padding."""
  toks = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for i, p in enumerate(prompts):
    toks[i, length - len(p):] = p
    mask[i, length - len(p):] = True
  return toks, mask


def filter_logits(logits_BV, temperature, top_k, top_p, use_top_k: bool, use_top_p: bool):
  """Temperature-scale, then mask to the top-k and the top-p nucleus (ties at the threshold kept)."""
  l = logits_BV / jnp.maximum(temperature, 1e-6)
  if use_top_k or use_top_p:
    sorted_BV = -jnp.sort(-l, axis=-1)
    if use_top_k:
      k = jnp.clip(top_k, 1, l.shape[-1])
      kth_B1 = jnp.take_along_axis(sorted_BV, jnp.broadcast_to(k - 1, l.shape[:1])[:, None], axis=-1)
      l = jnp.where(l < kth_B1, NEG_INF, l)
      sorted_BV = jnp.where(sorted_BV < kth_B1, NEG_INF, sorted_BV)
    if use_top_p:
      p_BV = jax.nn.softmax(sorted_BV, axis=-1)
      keep_BV = (jnp.cumsum(p_BV, axis=-1) - p_BV) < top_p          # smallest prefix reaching top_p
      thresh_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
      l = jnp.where(l < thresh_B1, NEG_INF, l)
  return l


def sample_token(rng, logits_BV, temperature, top_k, top_p, use_top_k: bool, use_top_p: bool):
  greedy_B = jnp.argmax(logits_BV, axis=-1)
  l = filter_logits(logits_BV, temperature, top_k, top_p, use_top_k, use_top_p)
  drawn_B = jax.random.categorical(rng, l, axis=-1)
  return jnp.where(temperature <= 0, greedy_B, drawn_B).astype(jnp.int32)


class Sampler:
  """`Sampler(model, cfg, pad_id=..., eos_ids=...)(params, prompts, max_new_tokens=..., rng=...)`."""

  def __init__(self, model: nn.Module, cfg: ModelConfig, *, pad_id: int, eos_ids: Sequence[int],
               prompt_buckets: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024, 2048),
               gen_buckets: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024),
               mesh=None, param_shardings=None, batch_axes: Any = ('data', 'fsdp'), cache_dtype=None):
    self.model, self.cfg = model, cfg
    self.pad_id, self.eos_ids = int(pad_id), tuple(int(e) for e in eos_ids)
    self.prompt_buckets, self.gen_buckets = tuple(prompt_buckets), tuple(gen_buckets)
    self.mesh, self.param_shardings = mesh, param_shardings
    self.cache_dtype = cache_dtype
    self.num_compiles = 0
    self._batch_multiple = 1
    self._data_spec = None
    if mesh is not None:
      axes = tuple(a for a in (batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)) if a in mesh.shape)
      self._batch_multiple = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
      self._data_spec = axes or None
    self._fn = jax.jit(self._generate, static_argnames=('n_buf', 'use_top_k', 'use_top_p'))

  # ---- traced --------------------------------------------------------------------------------
  def _cache_constraint(self, cache):
    if self.mesh is None:
      return cache
    kv = 'tensor' if 'tensor' in self.mesh.shape and self.cfg.n_kv_heads % self.mesh.shape['tensor'] == 0 else None
    sh = NamedSharding(self.mesh, P(self._data_spec, kv, None, None))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sh), cache)

  def _generate(self, params, cms, dream_key, prompt_BP, pmask_BP, rng, max_new, temperature, top_k, top_p, *,
                n_buf: int, use_top_k: bool, use_top_p: bool):
    self.num_compiles += 1  # runs once per trace, i.e. per compilation
    B, Pn = prompt_BP.shape
    T = Pn + n_buf
    # With a dream key every CMS block adds one random inactive expert; the same key at every step keeps
    # the same extra experts for the whole generation.
    rngs = {} if dream_key is None else {'dream': dream_key}
    apply = lambda *a, **k: self.model.apply(variables(params, cms), *a, rngs=rngs, **k)
    slots_T = jnp.arange(T)
    cache = self._cache_constraint(init_cache(self.cfg, B, T, self.cache_dtype))
    kv_valid_BT = jnp.concatenate([pmask_BP, jnp.zeros((B, n_buf), bool)], axis=1)
    pos_BP = jnp.maximum(jnp.cumsum(pmask_BP, axis=1) - 1, 0)
    len_B = pmask_BP.sum(axis=1)
    mask_BPT = kv_valid_BT[:, None, :] & (slots_T[None, None, :] <= jnp.arange(Pn)[None, :, None])
    logits_B1V, cache = apply(prompt_BP, pos_BP, mask_BPT, cache, 0, last_only=True)

    def pick(rng, logits_BV):
      tok_B = sample_token(rng, logits_BV, temperature, top_k, top_p, use_top_k, use_top_p)
      lp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV), tok_B[:, None], axis=-1)[:, 0]
      return tok_B, lp_B

    eos = jnp.asarray(self.eos_ids, jnp.int32)
    rng, sub = jax.random.split(rng)
    tok_B, lp_B = pick(sub, logits_B1V[:, 0])
    live_B = len_B > 0                       # padding rows of the batch bucket never generate
    out_tok = jnp.full((B, n_buf), self.pad_id, jnp.int32).at[:, 0].set(jnp.where(live_B, tok_B, self.pad_id))
    out_lp = jnp.zeros((B, n_buf), jnp.float32).at[:, 0].set(jnp.where(live_B, lp_B, 0.0))
    out_mask = jnp.zeros((B, n_buf), bool).at[:, 0].set(live_B)
    done_B = ~live_B | jnp.isin(tok_B, eos)

    def cond(c):
      t, _, _, _, done_B, *_ = c
      return (t < jnp.minimum(max_new, n_buf)) & ~jnp.all(done_B)

    def body(c):
      t, tok_B, cache, kv_valid_BT, done_B, rng, out_tok, out_lp, out_mask = c
      slot = Pn + t - 1                       # the previous token goes to this cache slot
      kv_valid_BT = kv_valid_BT.at[:, slot].set(True)
      mask_B1T = (kv_valid_BT & (slots_T[None, :] <= slot))[:, None, :]
      pos_B1 = (len_B + t - 1)[:, None]
      logits_B1V, cache = apply(tok_B[:, None], pos_B1, mask_B1T, cache, slot)
      rng, sub = jax.random.split(rng)
      new_B, lp_B = pick(sub, logits_B1V[:, 0])
      keep_B = ~done_B
      out_tok = out_tok.at[:, t].set(jnp.where(keep_B, new_B, self.pad_id))
      out_lp = out_lp.at[:, t].set(jnp.where(keep_B, lp_B, 0.0))
      out_mask = out_mask.at[:, t].set(keep_B)
      done_B = done_B | jnp.isin(new_B, eos)
      return t + 1, new_B, cache, kv_valid_BT, done_B, rng, out_tok, out_lp, out_mask

    carry = (jnp.int32(1), tok_B, cache, kv_valid_BT, done_B, rng, out_tok, out_lp, out_mask)
    *_, out_tok, out_lp, out_mask = jax.lax.while_loop(cond, body, carry)
    return out_tok, out_lp, out_mask

  # ---- host ----------------------------------------------------------------------------------
  def pad_prompts(self, prompts: Sequence[Sequence[int]]):
    if not prompts:
      raise ValueError('sampler got no prompts')
    lens = [len(p) for p in prompts]
    if min(lens) == 0:
      raise ValueError(f'prompt {lens.index(0)} is empty; every prompt needs at least one token')
    Pn = bucket(max(lens), self.prompt_buckets, 'prompt')
    B = 1 << (len(prompts) - 1).bit_length()
    B = -(-B // self._batch_multiple) * self._batch_multiple
    return left_pad(prompts, Pn, self.pad_id, B)

  def __call__(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, rng,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cms=None,
               dream_key=None) -> SampleOutput:
    """`cms`: the expert active masks of a CMS model; `dream_key`: also activate one random inactive
    expert per block (Dreaming's 'random low-rank expert selection')."""
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1], got {top_p}')
    toks, mask = self.pad_prompts(prompts)
    n_buf = bucket(max_new_tokens, self.gen_buckets, 'gen')
    if toks.shape[1] + n_buf > self.cfg.max_seq_len:
      raise ValueError(f'prompt bucket {toks.shape[1]} + generation bucket {n_buf} exceeds '
                       f'model.max_seq_len={self.cfg.max_seq_len}')
    if self.mesh is not None:
      sh = NamedSharding(self.mesh, P(self._data_spec))
      toks, mask = jax.device_put(toks, sh), jax.device_put(mask, sh)
      # The expert masks replicated on the mesh whatever made them (fresh host arrays or a jitted step's
      # outputs): a different placement is a different jit signature and compiled the sampler again.
      cms = jax.device_put(cms, NamedSharding(self.mesh, P())) if cms else cms
    out = self._fn(params, cms or {}, dream_key, toks, mask, rng, jnp.int32(max_new_tokens), jnp.float32(temperature),
                   jnp.int32(top_k), jnp.float32(top_p), n_buf=n_buf, use_top_k=top_k > 0,
                   use_top_p=top_p < 1.0)
    tok, lp, m = (sharding.to_host(x)[: len(prompts), :max_new_tokens] for x in out)   # multi-process too
    return SampleOutput(tok, lp, m)
