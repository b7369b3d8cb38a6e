"""Llama-family decoder in Flax Linen: RMSNorm, rotate-half RoPE, GQA attention, SwiGLU MLP.

Every parameter carries logical axis names (see `sleep_jax.sharding`). The MLP is a separate module
(`mlp_cls`) so the CMS issue can swap in base MLP + expert pool without touching attention.

Shape suffixes: B batch, L query length, T key length (cache slots), D model dim, H query heads,
K kv heads, G = H // K query heads per kv head, E head dim, F mlp hidden, V vocab.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp

Cache = list  # one {'k': [B,K,T,E], 'v': [B,K,T,E]} per layer


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  rope_base: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  max_seq_len: int = 2048
  dtype: str = 'float32'        # activation / compute dtype
  param_dtype: str = 'float32'
  init_std: float = 0.02
  # CMS expert pool per block MLP (sleep_jax.models.cms): S pre-allocated low-rank experts of rank R.
  # 0 / 0 = the plain SwiGLU MLP with exactly the pre-CMS parameter tree.
  n_experts: int = 0
  expert_rank: int = 0
  # Rematerialise each Block under differentiation: a backward pass keeps only the blocks' inputs and recomputes
  # one block at a time (one more forward pass per gradient) instead of keeping every layer's activations.
  # Exact (same loss and gradients), same parameter tree; sampling is unaffected.
  remat: bool = False

  def __post_init__(self):
    problems = []
    for f in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'head_dim', 'd_ff'):
      if getattr(self, f) <= 0:
        problems.append(f'model.{f} must be positive, got {getattr(self, f)}')
    if (self.n_experts < 0 or self.expert_rank < 0 or (self.n_experts == 0) != (self.expert_rank == 0)):
      problems.append(f'model.n_experts={self.n_experts} and model.expert_rank={self.expert_rank} must be '
                      'both 0 (no expert pool) or both positive')
    if self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads:
      problems.append(f'model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads}')
    if self.head_dim % 2:
      problems.append(f'model.head_dim={self.head_dim} must be even for rotate-half RoPE')
    if problems:
      raise ValueError('; '.join(problems))

  @classmethod
  def from_dict(cls, d) -> 'ModelConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(d).items() if k in names})

  def num_params(self) -> int:
    D, F, V = self.d_model, self.d_ff, self.vocab_size
    attn = D * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    per_layer = attn + 3 * D * F + 2 * D
    per_layer += self.n_experts * (2 * D * self.expert_rank + D)   # expert A, B and router column
    return self.n_layers * per_layer + V * D * (1 if self.tie_embeddings else 2) + D


def _init(std):
  return nn.initializers.normal(stddev=std)


def _param(mod: nn.Module, name, init, shape, axes, dtype):
  return mod.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('norm',), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rope(x_BLHE, pos_BL, base: float):
  """Rotate-half rotary embedding (the Hugging Face Llama convention), computed in float32."""
  E = x_BLHE.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, E, 2, dtype=jnp.float32) / E))   # [E/2]
  ang_BLe = pos_BL.astype(jnp.float32)[..., None] * inv_freq                  # [B,L,E/2]
  cos = jnp.cos(ang_BLe)[:, :, None, :]
  sin = jnp.sin(ang_BLe)[:, :, None, :]
  x = x_BLHE.astype(jnp.float32)
  x1, x2 = x[..., : E // 2], x[..., E // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHE.dtype)


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, pos_BL, mask_BLT, cache=None, cache_index=None):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    D, H, K, E = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    init = _init(c.init_std)
    wq = _param(self, 'wq', init, (D, H, E), ('embed', 'heads', 'head_dim'), pdt)
    wk = _param(self, 'wk', init, (D, K, E), ('embed', 'kv_heads', 'head_dim'), pdt)
    wv = _param(self, 'wv', init, (D, K, E), ('embed', 'kv_heads', 'head_dim'), pdt)
    wo = _param(self, 'wo', init, (H, E, D), ('heads', 'head_dim', 'embed'), pdt)
    x = x_BLD.astype(dt)
    q_BLHE = rope(jnp.einsum('bld,dhe->blhe', x, wq.astype(dt)), pos_BL, c.rope_base)
    k_BLKE = rope(jnp.einsum('bld,dke->blke', x, wk.astype(dt)), pos_BL, c.rope_base)
    v_BLKE = jnp.einsum('bld,dke->blke', x, wv.astype(dt))
    # Keys/values live as [B,K,T,E] (the cache layout too), so attention contracts without
    # transposing the whole cache every decode step.
    k_BKLE, v_BKLE = k_BLKE.transpose(0, 2, 1, 3), v_BLKE.transpose(0, 2, 1, 3)
    new_cache = None
    if cache is not None:
      k_BKTE = jax.lax.dynamic_update_slice_in_dim(cache['k'], k_BKLE.astype(cache['k'].dtype), cache_index, axis=2)
      v_BKTE = jax.lax.dynamic_update_slice_in_dim(cache['v'], v_BKLE.astype(cache['v'].dtype), cache_index, axis=2)
      new_cache = {'k': k_BKTE, 'v': v_BKTE}
    else:
      k_BKTE, v_BKTE = k_BKLE, v_BKLE
    B, L = x.shape[:2]
    q_BKGLE = q_BLHE.reshape(B, L, K, H // K, E).transpose(0, 2, 3, 1, 4)
    s_BKGLT = jnp.einsum('bkgle,bkte->bkglt', q_BKGLE, k_BKTE.astype(dt),
                         preferred_element_type=jnp.float32) * (E ** -0.5)
    s_BKGLT = jnp.where(mask_BLT[:, None, None], s_BKGLT, jnp.finfo(jnp.float32).min)
    p_BKGLT = jax.nn.softmax(s_BKGLT, axis=-1)
    # A query row with no visible key (a pad position) would softmax to uniform; zero it instead.
    p_BKGLT = jnp.where(mask_BLT[:, None, None], p_BKGLT, 0.0).astype(dt)
    o_BLKGE = jnp.einsum('bkglt,bkte->blkge', p_BKGLT, v_BKTE.astype(dt))
    # One [B,L,H*E] x [H*E,D] matmul: with the 3-D einsum XLA:CPU chose to transpose wo (a weight, every
    # call) to match the attention output's layout, which was 24% of a decode step (issue 8's profile).
    out_BLD = o_BLKGE.reshape(B, L, H * E) @ wo.astype(dt).reshape(H * E, D)
    return out_BLD, new_cache


class MLP(nn.Module):
  """SwiGLU MLP: down(silu(x @ gate) * (x @ up))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    init = _init(c.init_std)
    w_gate = _param(self, 'w_gate', init, (c.d_model, c.d_ff), ('embed', 'mlp'), pdt)
    w_up = _param(self, 'w_up', init, (c.d_model, c.d_ff), ('embed', 'mlp'), pdt)
    w_down = _param(self, 'w_down', init, (c.d_ff, c.d_model), ('mlp', 'embed'), pdt)
    x = x_BLD.astype(dt)
    h_BLF = jax.nn.silu(x @ w_gate.astype(dt)) * (x @ w_up.astype(dt))
    return h_BLF @ w_down.astype(dt)


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
      from sleep_jax.models.cms import CMSMLP  # cms builds on this module
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
