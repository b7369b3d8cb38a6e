"""The Llama-family building blocks (config, RMSNorm, RoPE, GQA attention, SwiGLU MLP) that both the decoder
(llama.py) and the CMS expert pools (cms.py) build on: a module of its own so neither imports the other back.

Shape suffixes as in llama.py.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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
  # Architecture variants of the Llama family (issue 19; io/hf.py maps Hugging Face config.json onto these).
  qkv_bias: bool = False        # biases on the q/k/v projections (Qwen2 / Qwen2.5)
  o_bias: bool = False          # bias on the attention output projection
  mlp_bias: bool = False        # biases on gate/up/down (Llama `mlp_bias: true`)
  qk_norm: bool = False         # per-head RMSNorm on q and k before RoPE (Qwen3)
  # RoPE frequency scaling (HF `rope_scaling` / `rope_parameters`): 'default' (none), 'linear', 'llama3', 'yarn'.
  rope_type: str = 'default'
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0      # llama3
  rope_high_freq_factor: float = 4.0     # llama3
  rope_original_max_len: int = 0         # llama3 / yarn: original_max_position_embeddings (0 = unset)
  rope_beta_fast: float = 32.0           # yarn
  rope_beta_slow: float = 1.0            # yarn
  rope_attention_factor: float = 0.0     # yarn: scale of cos/sin (0 = 0.1 ln(factor) + 1, HF's default)

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
    if self.rope_type not in ('default', 'linear', 'llama3', 'yarn'):
      problems.append(f"model.rope_type={self.rope_type!r} must be one of 'default', 'linear', 'llama3', 'yarn'")
    elif self.rope_type != 'default':
      if not (math.isfinite(self.rope_factor) and self.rope_factor > 0):
        problems.append(f'model.rope_factor={self.rope_factor} must be a positive number for '
                        f'rope_type={self.rope_type!r}')
      if self.rope_type in ('llama3', 'yarn') and self.rope_original_max_len <= 0:
        problems.append(f'model.rope_original_max_len={self.rope_original_max_len} must be positive for '
                        f"rope_type={self.rope_type!r} (HF original_max_position_embeddings)")
      if self.rope_type == 'llama3' and not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
        problems.append(f'model.rope_low_freq_factor={self.rope_low_freq_factor} and rope_high_freq_factor='
                        f'{self.rope_high_freq_factor} must satisfy 0 < low < high for rope_type=llama3')
      if self.rope_type == 'yarn' and (self.rope_beta_fast <= 0 or self.rope_beta_slow <= 0
                                       or self.rope_attention_factor < 0):
        problems.append(f'model.rope_beta_fast={self.rope_beta_fast}, rope_beta_slow={self.rope_beta_slow} must be '
                        f'positive and rope_attention_factor={self.rope_attention_factor} >= 0 for rope_type=yarn')
    if problems:
      raise ValueError('; '.join(problems))

  @classmethod
  def from_dict(cls, d) -> 'ModelConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(d).items() if k in names})

  def num_params(self) -> int:
    D, F, V = self.d_model, self.d_ff, self.vocab_size
    H, K, E = self.n_heads, self.n_kv_heads, self.head_dim
    attn = D * E * (2 * H + 2 * K)
    attn += (H + 2 * K) * E * self.qkv_bias + D * self.o_bias + 2 * E * self.qk_norm
    per_layer = attn + 3 * D * F + 2 * D + (2 * F + D) * self.mlp_bias
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
  axis_name: str = 'norm'     # logical axis of `scale` ('head_dim' for Qwen3's per-head q/k norms)

  @nn.compact
  def __call__(self, x):
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), (self.axis_name,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def rope_frequencies(cfg: ModelConfig) -> tuple[np.ndarray | None, float]:
  """(inv_freq [E/2] float32, attention factor) of `cfg`'s RoPE scaling; (None, 1.0) for plain RoPE.

  The formulas of Hugging Face transformers' modeling_rope_utils (`_compute_linear_scaling_rope_parameters`,
  `_compute_llama3_parameters`, `_compute_yarn_parameters`), so imported checkpoints see the positions they were
  trained with. Computed on the host in float64 from config constants (cast once to float32), so it is a constant
  of the traced program. The yarn `factor` is the configured one (transformers >= 4.56 behaviour; older versions
  replaced it by max_position_embeddings / original_max_position_embeddings).
  """
  if cfg.rope_type == 'default':
    return None, 1.0
  E, base, factor = cfg.head_dim, cfg.rope_base, cfg.rope_factor
  pos_freqs = base ** (np.arange(0, E, 2, dtype=np.float64) / E)
  inv_freq = 1.0 / pos_freqs
  attention = 1.0
  if cfg.rope_type == 'linear':
    inv_freq = inv_freq / factor
  elif cfg.rope_type == 'llama3':
    old, lo, hi = cfg.rope_original_max_len, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old / lo, inv_freq / factor, inv_freq)      # long wavelengths: interpolate
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    inv_freq = np.where(medium, smoothed, scaled)
  elif cfg.rope_type == 'yarn':
    def correction_dim(rotations):
      return E * math.log(cfg.rope_original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(correction_dim(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.rope_beta_slow)), E - 1)
    ramp = np.clip((np.arange(E // 2, dtype=np.float64) - low) / ((high - low) or 0.001), 0, 1)
    extrapolation = 1 - ramp       # 1: keep the pretrained frequency, 0: interpolate by `factor`
    inv_freq = inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation
    attention = cfg.rope_attention_factor or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
  return inv_freq.astype(np.float32), float(attention)


def rope(x_BLHE, pos_BL, base: float, inv_freq=None, attention_factor: float = 1.0):
  """Rotate-half rotary embedding (the Hugging Face Llama convention), computed in float32.

  `inv_freq` (from `rope_frequencies`) replaces the plain 1 / base^(2i/E) for scaled RoPE; `attention_factor`
  scales cos and sin (yarn), as transformers does.
  """
  E = x_BLHE.shape[-1]
  if inv_freq is None:
    inv_freq = 1.0 / (base ** (jnp.arange(0, E, 2, dtype=jnp.float32) / E))   # [E/2]
  ang_BLe = pos_BL.astype(jnp.float32)[..., None] * inv_freq                  # [B,L,E/2]
  cos = jnp.cos(ang_BLe)[:, :, None, :]
  sin = jnp.sin(ang_BLe)[:, :, None, :]
  if attention_factor != 1.0:
    cos, sin = cos * attention_factor, sin * attention_factor
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
    q_BLHE = jnp.einsum('bld,dhe->blhe', x, wq.astype(dt))
    k_BLKE = jnp.einsum('bld,dke->blke', x, wk.astype(dt))
    v_BLKE = jnp.einsum('bld,dke->blke', x, wv.astype(dt))
    if c.qkv_bias:   # Qwen2 / Qwen2.5
      zeros = nn.initializers.zeros
      q_BLHE = q_BLHE + _param(self, 'bq', zeros, (H, E), ('heads', 'head_dim'), pdt).astype(dt)
      k_BLKE = k_BLKE + _param(self, 'bk', zeros, (K, E), ('kv_heads', 'head_dim'), pdt).astype(dt)
      v_BLKE = v_BLKE + _param(self, 'bv', zeros, (K, E), ('kv_heads', 'head_dim'), pdt).astype(dt)
    if c.qk_norm:    # Qwen3: RMSNorm over each head's E features (one [E] weight shared by the heads), before RoPE
      q_BLHE = RMSNorm(c.norm_eps, dt, pdt, 'head_dim', name='q_norm')(q_BLHE)
      k_BLKE = RMSNorm(c.norm_eps, dt, pdt, 'head_dim', name='k_norm')(k_BLKE)
    inv_freq, attention_factor = rope_frequencies(c)
    q_BLHE = rope(q_BLHE, pos_BL, c.rope_base, inv_freq, attention_factor)
    k_BLKE = rope(k_BLKE, pos_BL, c.rope_base, inv_freq, attention_factor)
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
    if c.o_bias:
      out_BLD = out_BLD + _param(self, 'bo', nn.initializers.zeros, (D,), ('embed',), pdt).astype(dt)
    return out_BLD, new_cache


class MLP(nn.Module):
  """SwiGLU MLP: down(silu(x @ gate + b_gate) * (x @ up + b_up)) + b_down (biases only with cfg.mlp_bias)."""
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
    if not c.mlp_bias:
      h_BLF = jax.nn.silu(x @ w_gate.astype(dt)) * (x @ w_up.astype(dt))
      return h_BLF @ w_down.astype(dt)
    zeros = nn.initializers.zeros
    b_gate = _param(self, 'b_gate', zeros, (c.d_ff,), ('mlp',), pdt).astype(dt)
    b_up = _param(self, 'b_up', zeros, (c.d_ff,), ('mlp',), pdt).astype(dt)
    b_down = _param(self, 'b_down', zeros, (c.d_model,), ('embed',), pdt).astype(dt)
    h_BLF = jax.nn.silu(x @ w_gate.astype(dt) + b_gate) * (x @ w_up.astype(dt) + b_up)
    return h_BLF @ w_down.astype(dt) + b_down
