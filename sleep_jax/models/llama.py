"""Llama-family decoder in Flax Linen: RMSNorm, rotate-half RoPE, GQA attention, SwiGLU MLP.

Every parameter carries logical axis names (see `sleep_jax.sharding`). The MLP is a separate module
(`mlp_cls`) so the CMS issue can swap in base MLP + expert pool without touching attention.

Shape suffixes: B batch, L query length, T key length (cache slots), D model dim, H query heads,
K kv heads, G = H // K query heads per kv head, E head dim, F mlp hidden, V vocab.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp

from sleep_jax.models.cms import CMSMLP
from sleep_jax.models.layers import (MLP, Attention, ModelConfig, RMSNorm, _init, _param,  # noqa: F401
                                     rope)  # rope, Attention: part of this module's API (tests import them here)

Cache = list  # one {'k': [B,K,T,E], 'v': [B,K,T,E]} per layer


class Block(nn.Module):
  """Pre-norm block. With `cfg.n_experts > 0` the MLP is a CMS block (base MLP + expert pool + router)."""
  cfg: ModelConfig
  mlp_cls: Callable[..., nn.Module] = MLP

  @nn.compact
  def __call__(self, x_BLD, pos_BL, mask_BLT, cache=None, cache_index=None):
    c = self.cfg
    dt = jnp.dtype(c.dtype)
    norm = lambda name: RMSNorm(c.norm_eps, dt, jnp.dtype(c.param_dtype), name=name)
    a_BLD, new_cache = Attention(c, name='attn')(norm('attn_norm')(x_BLD), pos_BL, mask_BLT, cache, cache_index)
    h_BLD = x_BLD + a_BLD
    mlp_cls = self.mlp_cls
    if c.n_experts > 0:
      if mlp_cls is not MLP:
        raise ValueError(f'model.n_experts={c.n_experts} selects CMSMLP, which conflicts with a custom mlp_cls '
                         f'{getattr(mlp_cls, "__name__", mlp_cls)}; set model.n_experts=0 to use it')
      mlp_cls = CMSMLP
    return h_BLD + mlp_cls(c, name='mlp')(norm('mlp_norm')(h_BLD)), new_cache


def _recompute_after_cotangent(fn):
  """`fn` whose backward pass recomputes it from its inputs instead of keeping its intermediates.

  What jax.checkpoint does, but in an order XLA:CPU keeps. XLA:CPU removes jax.checkpoint's optimization barrier
  early (its cse_barrier_expander pass) and then schedules every block's recomputation up front, so all the
  activations are live again: Dreaming's M-step on SmolLM2-135M (3 rows of 576 tokens) needed 5.25 GiB of XLA
  temp buffers without remat, 4.87 GiB with nn.remat and 0.44 GiB with this. Here the recomputation's inputs
  depend on the incoming cotangent (`+ 0 * ct`), so block i is recomputed only after block i+1's backward has
  produced it. Exact: `fn` is traced once and the backward pass re-runs that same program (same rng draws), and
  adding zero changes no finite value (a non-finite cotangent makes the gradient non-finite either way).
  """
  is_float = lambda x: jnp.issubdtype(x.dtype, jnp.floating)

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    run = jax.extend.core.jaxpr_as_fun(closed)

    @jax.custom_vjp
    def f(*leaves):
      return run(*leaves)

    def fwd(*leaves):
      return run(*leaves), leaves

    def bwd(leaves, ct):
      zero = jnp.ravel(next(c for c in ct if is_float(c)))[0] * 0
      leaves = [x + zero.astype(x.dtype) if is_float(x) else x for x in leaves]
      return jax.vjp(run, *leaves)[1](list(ct))

    f.defvjp(fwd, bwd)
    return jax.tree.unflatten(jax.tree.structure(out_shape), f(*jax.tree.leaves(args)))

  return wrapped


def _remat_lift(fn, variables=True, rngs=True):
  """`flax.core.lift.checkpoint` with `_recompute_after_cotangent` in place of jax.checkpoint."""
  from flax.core import lift

  def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
    def pure(variable_groups, rng_groups, *args):
      scope = scope_fn(variable_groups, rng_groups)
      return fn(scope, *args), repack_fn(scope)
    return _recompute_after_cotangent(pure)(variable_groups, rng_groups, *args)

  return lift.pack(inner, (variables,), (variables,), (rngs,), name='remat')


def remat(module_cls):
  """A module class whose `__call__` is rematerialised under differentiation (same scope, same parameters)."""
  return nn.transforms.lift_transform(_remat_lift, module_cls)


RematBlock = remat(Block)


class Transformer(nn.Module):
  """Decoder-only LM. Returns float32 logits [B,L,V] and the updated KV cache (None without one).

  Without a cache, `mask_BLT` (bool, query x key) defaults to causal over the L tokens. With a cache
  (a list of per-layer {'k','v'} of T slots), the new keys go to slots [cache_index, cache_index+L) and
  the caller's mask says which of the T slots each query may see. `last_only` returns logits [B,1,V];
  `tail=n` returns the logits of the last n positions only, [B,n,V] (distillation scores a completion
  block at the end of each row and never needs the prompt's [B,P,V] logits).
  """
  cfg: ModelConfig
  mlp_cls: Callable[..., nn.Module] = MLP

  @nn.compact
  def __call__(self, tokens_BL, pos_BL=None, mask_BLT=None, cache: Cache | None = None, cache_index=None,
               last_only: bool = False, tail: int = 0):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    B, L = tokens_BL.shape
    if pos_BL is None:
      pos_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
    if mask_BLT is None:
      mask_BLT = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    embed_VD = _param(self, 'embed', _init(c.init_std), (c.vocab_size, c.d_model), ('vocab', 'embed'), pdt)
    x_BLD = jnp.take(embed_VD, tokens_BL, axis=0).astype(dt)
    new_cache = [] if cache is not None else None
    # Rematerialised blocks keep the scope names, so the parameter tree is the same; decoding (a cache) is never
    # differentiated and takes the plain block.
    block_cls = RematBlock if c.remat and cache is None else Block
    for i in range(c.n_layers):
      x_BLD, layer_cache = block_cls(c, self.mlp_cls, name=f'layers_{i}')(
          x_BLD, pos_BL, mask_BLT, None if cache is None else cache[i], cache_index)
      if cache is not None:
        new_cache.append(layer_cache)
    if last_only or tail:  # only the positions asked for (sampler prefill, distillation): skips head FLOPs
      x_BLD = x_BLD[:, -(1 if last_only else tail):]
    x_BLD = RMSNorm(c.norm_eps, dt, pdt, name='final_norm')(x_BLD)
    if c.tie_embeddings:
      logits_BLV = jnp.einsum('bld,vd->blv', x_BLD, embed_VD.astype(dt), preferred_element_type=jnp.float32)
    else:
      head_DV = _param(self, 'lm_head', _init(c.init_std), (c.d_model, c.vocab_size), ('embed', 'vocab'), pdt)
      logits_BLV = jnp.einsum('bld,dv->blv', x_BLD, head_DV.astype(dt), preferred_element_type=jnp.float32)
    return logits_BLV.astype(jnp.float32), new_cache


def causal_mask(segment_ids_BL=None, length: int | None = None):
  """[B,L,L] bool: causal, and within one packed segment when segment ids are given (0 = padding)."""
  if segment_ids_BL is None:
    return jnp.tril(jnp.ones((length, length), bool))[None]
  L = segment_ids_BL.shape[1]
  same_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
  return same_BLL & jnp.tril(jnp.ones((L, L), bool))[None] & (segment_ids_BL > 0)[:, None, :]


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype=None) -> Cache:
  dtype = jnp.dtype(dtype or cfg.dtype)
  z = lambda: jnp.zeros((batch, cfg.n_kv_heads, slots, cfg.head_dim), dtype)
  return [{'k': z(), 'v': z()} for _ in range(cfg.n_layers)]
