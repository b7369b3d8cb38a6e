"""Wake: the multi-frequency CMS step of PAPER Eq. 2.

Level l holds the `mlp` subtrees (base MLP + experts + router) of the layers assigned to it. Every step adds
the LM-loss gradient of those leaves to the level's accumulator; at its chunk boundary ((step+1) % C^(l) == 0)
the level's optimizer is applied to the accumulated sum and the accumulator is reset. For SGD that is
exactly Eq. 2, theta^(l) -= lr^(l) * sum_{t in chunk} g_t. Period 0 (or level -1) = frozen.
Attention, norms and embeddings are the infinitely fast level (they "learn" in context) and stay fixed
unless `train_other=True`, which updates them every step with `other_lr`.

Wake state is a plain dict:
  {'step': int32[], 'params': params, 'cms': cms state,
   'acc': [acc_l per level], 'opt_state': [optax state per level] (+ one 'other' entry with train_other)}
acc_l is the params tree pruned to level l's leaves (`level_masks`), float32; it is {} for levels that need
no accumulator (period 0 or 1, or no layers), except that a period-1 level listed in `WakeConfig.holdable` keeps
one: its every-step update can then be held back for a sleep (the level -> level protocol's period-1 senders).
The traced step decides boundaries with `lax.cond`, so one compilation serves a whole stream (`step.n_traces`
counts traces).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from sleep_jax import guard, sharding, train

Params = Any
OPTIMIZERS = ('sgd', 'adamw')


@dataclasses.dataclass(frozen=True)
class WakeConfig:
  """Which layer belongs to which CMS level, and each level's chunk size C^(l) and learning rate."""
  level_of_layer: tuple[int, ...]   # one level index per layer; -1 = in no level (frozen)
  periods: tuple[int, ...]          # C^(l) per level; 0 = frozen level; C^(l) divides C^(l+1)
  lrs: tuple[float, ...]            # per level
  optimizer: str = 'sgd'            # 'sgd' | 'adamw'
  train_other: bool = False         # also train attention / norms / embeddings (every step, other_lr)
  other_lr: float = 0.0
  b1: float = 0.9                   # adamw only
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  # Levels whose boundary update a sleep may hold back (`WakeStep(hold=...)`): a period-1 level in it keeps an
  # accumulator so its update can wait, be consolidated and be applied later (the cycle's protocol sets it to
  # its levels, runtime.wake_config). Period-1 levels not in it take the plain every-step path, no accumulator.
  holdable: tuple[int, ...] = ()

  def __post_init__(self):
    for f in ('level_of_layer', 'periods', 'lrs', 'holdable'):
      v = getattr(self, f)
      if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ValueError(f'wake.{f} must be a tuple, got {v!r}')
      object.__setattr__(self, f, tuple(v))
    n = len(self.periods)
    if n == 0:
      raise ValueError('wake.periods must define at least one level')
    if len(self.lrs) != n:
      raise ValueError(f'wake.lrs has {len(self.lrs)} entries but wake.periods defines {n} levels (one lr each)')
    for l, c in enumerate(self.periods):
      if int(c) != c or c < 0:
        raise ValueError(f'wake.periods[{l}]={c} must be an integer >= 0 (0 = frozen level)')
    for l, lr in enumerate(self.lrs):
      if not lr >= 0:
        raise ValueError(f'wake.lrs[{l}]={lr} must be >= 0')
    live = [(l, c) for l, c in enumerate(self.periods) if c > 0]
    for (l0, c0), (l1, c1) in zip(live, live[1:]):
      if c1 % c0:
        raise ValueError(f'wake.periods: C^({l0})={c0} must divide C^({l1})={c1} (chunk sizes nest, Eq. 2; '
                         f'period-0 levels are ignored)')
    for i, l in enumerate(self.level_of_layer):
      if int(l) != l or not -1 <= l < n:
        raise ValueError(f'wake.level_of_layer[{i}]={l} references an undefined level: wake.periods defines '
                         f'levels 0..{n - 1} (-1 = frozen)')
    for l in self.holdable:
      if int(l) != l or not 0 <= l < n:
        raise ValueError(f'wake.holdable={self.holdable} names level {l}, but wake.periods defines levels 0..{n - 1}')
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'wake.optimizer={self.optimizer!r} is not one of {OPTIMIZERS}')
    if self.train_other and not self.other_lr > 0:
      raise ValueError(f'wake.other_lr={self.other_lr} must be > 0 when wake.train_other=True')

  @property
  def n_levels(self) -> int:
    return len(self.periods)

  @classmethod
  def from_config(cls, c) -> 'WakeConfig':
    """From an ml_collections ConfigDict (or dict); an unknown key is an error that names it."""
    d = dict(c)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'wake.{unknown[0]} is not a wake config field; fields: {sorted(names)}')
    return cls(**d)


def default_levels(n_layers: int, n_levels: int, base_period: int,
                   factor: int = 10) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(level_of_layer, periods): contiguous layer groups, first layers = fastest level, C^(l) = base * factor^l.

  Groups are as even as possible (earlier groups take the remainder). factor=10 follows the paper's example
  (periods 1k and 10k: 10 consolidations per slow update); factor=2 is the doubling rule. Each level starts
  from the pretrained MLPs of its layers ("ad-hoc level stacking").
  """
  if not 1 <= n_levels <= n_layers:
    raise ValueError(f'default_levels: n_levels={n_levels} must be in 1..n_layers={n_layers}')
  if base_period < 1 or factor < 2:
    raise ValueError(f'default_levels: base_period={base_period} must be >= 1 and factor={factor} >= 2')
  sizes = [n_layers // n_levels + (l < n_layers % n_levels) for l in range(n_levels)]
  level_of_layer = tuple(l for l, s in enumerate(sizes) for _ in range(s))
  return level_of_layer, tuple(base_period * factor ** l for l in range(n_levels))


# ---------------------------------------------------------------------------------------------------
# Level membership


def _n_layers(params) -> int:
  return sum(1 for k in params if k.startswith('layers_'))


def _check_layers(params, wcfg: WakeConfig):
  n = _n_layers(params)
  if len(wcfg.level_of_layer) != n:
    raise ValueError(f'wake.level_of_layer has {len(wcfg.level_of_layer)} entries but the model has {n} layers')


def _level_of_path(path: tuple[str, ...], wcfg: WakeConfig) -> int:
  """Level of a flattened param path; -1 = in no level (attention, norms, embeddings, frozen MLPs)."""
  if len(path) > 2 and path[0].startswith('layers_') and path[1] == 'mlp':
    return wcfg.level_of_layer[int(path[0][len('layers_'):])]
  return -1


def level_masks(params, wcfg: WakeConfig) -> list:
  """One boolean tree per level: True on the `mlp` leaves of that level's layers."""
  _check_layers(params, wcfg)
  flat = traverse_util.flatten_dict(params)
  return [traverse_util.unflatten_dict({k: _level_of_path(k, wcfg) == l for k in flat})
          for l in range(wcfg.n_levels)]


def other_mask(params, wcfg: WakeConfig):
  """The `train_other` group: True on every leaf outside the block MLPs (attention, norms, embeddings).

  MLPs of layers in no level (-1) are not in it: they stay frozen either way."""
  _check_layers(params, wcfg)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: not (len(k) > 2 and k[1] == 'mlp') for k in flat})


def _group_keys(params, wcfg: WakeConfig) -> list[list[tuple]]:
  """Flat param keys of each group: levels 0..n-1, then 'other' when train_other."""
  masks = level_masks(params, wcfg) + ([other_mask(params, wcfg)] if wcfg.train_other else [])
  return [[k for k, v in traverse_util.flatten_dict(m).items() if v] for m in masks]


def _periods(wcfg: WakeConfig) -> list[int]:
  return list(wcfg.periods) + ([1] if wcfg.train_other else [])


def _lrs(wcfg: WakeConfig) -> list[float]:
  return list(wcfg.lrs) + ([wcfg.other_lr] if wcfg.train_other else [])


def _sub(flat: dict, keys) -> dict:
  return traverse_util.unflatten_dict({k: flat[k] for k in keys}) if keys else {}


def _trains(keys, period: int) -> bool:
  return bool(keys) and period > 0


def _needs_acc(keys, period: int, holdable: bool = False) -> bool:
  return bool(keys) and (period > 1 or (holdable and period == 1))


def _holdable(wcfg: WakeConfig) -> list[bool]:
  """Per group (levels, then 'other', which is never held): whether it keeps an accumulator at period 1."""
  return [l in wcfg.holdable for l in range(wcfg.n_levels)] + ([False] if wcfg.train_other else [])


def make_level_optimizer(wcfg: WakeConfig, lr: float) -> optax.GradientTransformation:
  return train.optimizer(wcfg.optimizer, lr, b1=wcfg.b1, b2=wcfg.b2, eps=wcfg.eps, weight_decay=wcfg.weight_decay)


# ---------------------------------------------------------------------------------------------------
# State and step


def init_wake_state(params, cms, wcfg: WakeConfig) -> dict:
  """Fresh wake state: step 0, zero accumulators, fresh per-level optimizer states."""
  flat = traverse_util.flatten_dict(params)
  acc, opt_state = [], []
  for keys, period, lr, h in zip(_group_keys(params, wcfg), _periods(wcfg), _lrs(wcfg), _holdable(wcfg)):
    sub = _sub(flat, keys)
    acc.append(jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), sub) if _needs_acc(keys, period, h) else {})
    opt_state.append(make_level_optimizer(wcfg, lr).init(sub) if _trains(keys, period) else ())
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'cms': cms, 'acc': acc, 'opt_state': opt_state}


def wake_state_shardings(state: dict, param_shardings, mesh) -> dict:
  """Accumulators and optimizer slots take their parameter's sharding; step and cms masks replicate."""
  rep = sharding.replicated(mesh)
  flat_sh = traverse_util.flatten_dict(param_shardings)
  acc_sh = [_sub(flat_sh, list(traverse_util.flatten_dict(a))) for a in state['acc']]
  opt_sh = [train.state_shardings({'opt_state': o}, param_shardings, mesh)['opt_state'] for o in state['opt_state']]
  return {'step': rep, 'params': param_shardings, 'cms': jax.tree.map(lambda _: rep, state['cms']),
          'acc': acc_sh, 'opt_state': opt_sh}


class WakeStep:
  """The jitted wake step; `n_traces` counts how often it was traced (1 for a whole stream)."""

  def __init__(self, jitted: Callable, counter: list, periods: list):
    self._jitted, self._counter, self._periods = jitted, counter, periods

  def __call__(self, state, batch, hold=None):
    """`hold` bool[n_levels]: levels whose boundary update is held back this step (their accumulator keeps the
    chunk's sum), so a sleep can consolidate the update before it is applied (`consolidate.sender_update`)."""
    n = len(self._periods)                  # levels, plus the 'other' group with train_other (never held)
    h = np.zeros((n,), bool)
    if hold is not None:
      hold = np.asarray(hold, bool).reshape(-1)
      if hold.shape[0] > n:
        raise ValueError(f'hold has {hold.shape[0]} entries but the wake step has {n} level groups')
      h[:hold.shape[0]] = hold
    return self._jitted(state, batch, h)

  @property
  def n_traces(self) -> int:
    return self._counter[0]


def make_wake_step(model: nn.Module, wcfg: WakeConfig, state_shardings=None, batch_sharding=None,
                   loss_fn: Callable = train.lm_loss, skip_nonfinite: bool = False) -> WakeStep:
  """Jitted pure `step(state, batch) -> (state, metrics)` with the state donated (PAPER Eq. 2).

  metrics: 'loss', 'tokens', 'grad_norm' (over trained leaves) and 'boundary' bool[n_levels]: which levels
  applied their accumulated update at this step (the sleep triggers).
  """
  periods, lrs, holdable = _periods(wcfg), _lrs(wcfg), _holdable(wcfg)
  txs = [make_level_optimizer(wcfg, lr) for lr in lrs]
  counter = [0]

  def step(state, batch, hold):
    counter[0] += 1
    params = state['params']
    _check_layers(params, wcfg)
    flat = traverse_util.flatten_dict(params)
    groups = _group_keys(params, wcfg)
    live = [g for g, (keys, c) in enumerate(zip(groups, periods)) if _trains(keys, c)]
    subs = {g: _sub(flat, groups[g]) for g in live}

    def loss_of(subs):
      merged = dict(flat)
      for sub in subs.values():
        merged.update(traverse_util.flatten_dict(sub))
      return loss_fn(model, traverse_util.unflatten_dict(merged), batch, state['cms'])

    (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(subs)
    n_done = state['step'] + 1
    new_flat, acc, opt_state = dict(flat), list(state['acc']), list(state['opt_state'])
    boundary = [jnp.zeros((), bool)] * wcfg.n_levels
    for g in live:
      tx, c, p = txs[g], periods[g], subs[g]
      accumulates = _needs_acc(groups[g], c, holdable[g])
      total = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc[g], grads[g]) if accumulates else grads[g]

      def update(ops, tx=tx):
        total, os, p = ops
        u, os = tx.update(jax.tree.map(lambda t, x: t.astype(x.dtype), total, p), os, p)
        return optax.apply_updates(p, u), os, jax.tree.map(jnp.zeros_like, total)

      if not accumulates:   # period 1, never held: today's plain path (bit-identical to a run without protocol)
        p, opt_state[g], _ = update((total, opt_state[g], p))
        is_b = jnp.ones((), bool)
      else:
        is_b = (n_done % c == 0) & ~hold[g]
        p, opt_state[g], acc[g] = jax.lax.cond(is_b, update, lambda ops: (ops[2], ops[1], ops[0]),
                                               (total, opt_state[g], p))
      new_flat.update(traverse_util.flatten_dict(p))
      if g < wcfg.n_levels:
        boundary[g] = is_b
    grad_norm = optax.tree.norm(grads)
    ok = guard.finite(metrics['loss'], grad_norm)
    new_params = traverse_util.unflatten_dict(new_flat)
    if skip_nonfinite:   # the bad batch is dropped: params, accumulators and moments as before (guard.py)
      new_params, acc, opt_state = guard.keep_if(ok, (new_params, acc, opt_state),
                                                 (params, list(state['acc']), list(state['opt_state'])))
      boundary = [b & ok for b in boundary]
    metrics = dict(metrics, boundary=jnp.stack(boundary), grad_norm=grad_norm, finite=ok)
    new_state = {'step': n_done, 'params': new_params, 'cms': state['cms'], 'acc': acc, 'opt_state': opt_state}
    return new_state, metrics

  if state_shardings is None:
    jitted = jax.jit(step, donate_argnums=0)
  else:
    mesh = jax.tree.leaves(state_shardings)[0].mesh
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
                     out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  return WakeStep(jitted, counter, periods)
