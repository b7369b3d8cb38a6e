"""CMS block MLP: base SwiGLU MLP + a pre-allocated pool of S low-rank experts + a router (PAPER Sec. 2).

    y = base(x) + sum_j m_j * sigmoid(x . router_j) * ((x @ A_j) @ B_j),      m_j = active_j

Parameters (collection 'params', module 'mlp' inside each block; base names as in `llama.MLP`, so
pretrained MLP weights load unchanged):
  w_gate [D,F] ('embed','mlp'), w_up [D,F] ('embed','mlp'), w_down [F,D] ('mlp','embed'),
  router [D,S] ('embed','expert'), expert_a [S,D,R] ('expert','embed','rank'),
  expert_b [S,R,D] ('expert','rank','embed').
State (collection 'cms', not trained): active [S] bool per block, so
`model.apply({'params': p, 'cms': c}, tokens)`.

Gates are independent sigmoids, not a softmax: with a softmax, activating expert j would renormalise the
weights of every other active expert and change the function even with B_j = 0. With independent gates
expert j's term is g_j * (x A_j) B_j, exactly zero when B_j = 0, so activation is function-preserving.

Inactive experts are masked with `jnp.where` on A, B, router and gate (never multiplied by 0), so their
parameters contribute exactly zero and get exactly zero gradient even when they hold NaN or Inf.

Dreaming: when the apply call provides an rng stream 'dream' (`rngs={'dream': key}`), every CMS block
also activates, for each batch row, one uniformly random inactive expert (none if the pool is full); its random
B injects novelty, and different rows (different dreams) get independent draws. The choice is a function of the
key, the module path and the row only, so a sampler that passes the same 'dream' key to prefill and every decode
step keeps the same extra experts for the whole generation. The effective mask is sown as intermediates
'active', bool [B, S].
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax.models.layers import MLP, ModelConfig, _init, _param

Params = Any
CmsState = Any

def expert_a_std(d_model: int) -> float:
  return 1.0 / math.sqrt(d_model)


def expert_b_std(rank: int) -> float:
  """Small but non-zero: an inactive expert switched on at random while dreaming perturbs the function."""
  return 0.02 / math.sqrt(rank)


def dream_mask(key, active_S):
  """`active_S` plus one uniformly random inactive expert (unchanged when none is inactive)."""
  S = active_S.shape[0]
  u_S = jax.random.uniform(key, (S,))
  idx = jnp.argmax(jnp.where(active_S, -1.0, u_S))
  return active_S | ((jnp.arange(S) == idx) & ~active_S)


class CMSMLP(MLP):
  """Base SwiGLU MLP (`MLP`'s parameters, same scope and names) plus a masked pool of `cfg.n_experts`
  rank-`cfg.expert_rank` experts with sigmoid gates."""

  @nn.compact
  def __call__(self, x_BLD):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    D, S, R = c.d_model, c.n_experts, c.expert_rank
    y_BLD = super().__call__(x_BLD)
    router_DS = _param(self, 'router', nn.initializers.zeros, (D, S), ('embed', 'expert'), pdt)
    a_SDR = _param(self, 'expert_a', _init(expert_a_std(D)), (S, D, R), ('expert', 'embed', 'rank'), pdt)
    b_SRD = _param(self, 'expert_b', _init(expert_b_std(R)), (S, R, D), ('expert', 'rank', 'embed'), pdt)
    active_S = self.variable('cms', 'active', lambda: jnp.zeros((S,), bool)).value
    B = x_BLD.shape[0]
    if self.has_rng('dream'):   # each row (each dream) gets its own random extra expert
      keys_B = jax.random.split(self.make_rng('dream'), B)
      active_BS = jax.vmap(dream_mask, in_axes=(0, None))(keys_B, active_S)
    else:
      active_BS = jnp.broadcast_to(active_S, (B, S))
    used_S = active_BS.any(axis=0)
    self.sow('intermediates', 'active', active_BS)

    x = x_BLD.astype(dt)
    # where (not multiply): garbage in an inactive expert can neither leak forward nor receive gradient.
    router_DS = jnp.where(used_S[None, :], router_DS, 0).astype(dt)
    a_SDR = jnp.where(used_S[:, None, None], a_SDR, 0).astype(dt)
    b_SRD = jnp.where(used_S[:, None, None], b_SRD, 0).astype(dt)
    g_BLS = jnp.where(active_BS[:, None, :], jax.nn.sigmoid(x @ router_DS), 0).astype(dt)
    z_BLSR = jnp.einsum('bld,sdr->blsr', x, a_SDR) * g_BLS[..., None]
    return y_BLD + jnp.einsum('blsr,srd->bld', z_BLSR, b_SRD)


# ---------------------------------------------------------------------------------------------------
# State helpers and expert operations: pure functions over (params, cms).


def init_cms_state(cfg: ModelConfig) -> CmsState:
  """All experts inactive: {'layers_i': {'mlp': {'active': bool[S]}}} ({} without an expert pool)."""
  if cfg.n_experts == 0:
    return {}
  return {f'layers_{i}': {'mlp': {'active': jnp.zeros((cfg.n_experts,), bool)}} for i in range(cfg.n_layers)}


def split_variables(variables) -> tuple[Params, CmsState]:
  """`model.init(...)` output -> (unboxed params, cms state)."""
  return nn.meta.unbox(variables['params']), dict(variables.get('cms', {}))


def variables(params: Params, cms: CmsState) -> dict:
  """The variables dict `model.apply` wants (no 'cms' collection for a model without experts)."""
  return {'params': params, 'cms': cms} if cms else {'params': params}


def _with_mlp(tree, lk: str, mlp: dict):
  """Copy of a params / cms tree with layer `lk`'s 'mlp' subtree replaced."""
  return {**tree, lk: {**tree[lk], 'mlp': mlp}}


def activate_expert(params: Params, cms: CmsState, layer: int,
                    index: int | None = None) -> tuple[Params, CmsState, int]:
  """Mark expert `index` (default: the first inactive one) of `layer` active and zero its B.

  Zeroing B makes the activation function-preserving (its sigmoid-gated term is then exactly 0); A keeps
  its random init so B receives gradient. Raises when the pool is full or `index` is already active.
  """
  lk = f'layers_{layer}'
  if lk not in cms or 'active' not in cms[lk].get('mlp', {}):
    raise ValueError(f'layer={layer} has no expert pool (cms state keys: {sorted(cms)}); '
                     'set model.n_experts > 0, or grow one with growth.grow_pool')
  active = np.asarray(jax.device_get(cms[lk]['mlp']['active']))
  S = active.shape[0]
  if index is None:
    free = np.flatnonzero(~active)
    if free.size == 0:
      raise ValueError(f'layer {layer}: expert pool is full ({S} of {S} active); grow it with growth.grow_pool '
                       '(the cycle does so when sleep.when_full=\'grow\')')
    index = int(free[0])
  if not 0 <= index < S:
    raise ValueError(f'layer {layer}: expert index={index} is out of range for a pool of size {S}')
  if active[index]:
    raise ValueError(f'layer {layer}: expert {index} is already active (pool size {S})')
  mlp = dict(params[lk]['mlp'])
  mlp['expert_b'] = jnp.asarray(mlp['expert_b']).at[index].set(0)
  new_active = jnp.asarray(cms[lk]['mlp']['active']).at[index].set(True)
  new_cms = _with_mlp(cms, lk, {**cms[lk]['mlp'], 'active': new_active})
  return _with_mlp(params, lk, mlp), new_cms, index


def deactivate_expert(params: Params, cms: CmsState, layer: int, index: int) -> tuple[Params, CmsState]:
  """Prune expert `index` of `layer` ("synaptic pruning"): inactive, router column reset to 0.

  A and B stay as they are (masked, so irrelevant); `activate_expert` zeroes B when it is reused.
  """
  lk = f'layers_{layer}'
  if lk not in cms:
    raise ValueError(f'layer={layer} has no expert pool (cms state keys: {sorted(cms)})')
  active = np.asarray(jax.device_get(cms[lk]['mlp']['active']))
  if not 0 <= index < active.shape[0] or not active[index]:
    raise ValueError(f'layer {layer}: expert {index} is not an active expert of a pool of size {active.shape[0]}')
  mlp = dict(params[lk]['mlp'])
  mlp['router'] = jnp.asarray(mlp['router']).at[:, index].set(0)
  new_active = jnp.asarray(cms[lk]['mlp']['active']).at[index].set(False)
  new_cms = _with_mlp(cms, lk, {**cms[lk]['mlp'], 'active': new_active})
  return _with_mlp(params, lk, mlp), new_cms
