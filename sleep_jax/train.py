"""Train state, optimizer with a trainable mask, and the pure sharded LM train step.

State is a plain dict pytree {'step', 'params', 'opt_state'}; a step is a pure function
`state, batch -> state, metrics` jitted once with in/out shardings and the state donated. The loss is a plug-in
(`loss_fn(model, params, batch, cms[, loss_state])`); constants it needs that are as large as the params (EWC's
anchor and Fisher) ride in `state['loss_state']`, sharded like the params, instead of being baked into the program.
Freezing is a label tree for `optax.multi_transform` (frozen leaves get `set_to_zero` and no slots).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from sleep_jax import guard, losses, sharding
from sleep_jax.models.cms import variables
from sleep_jax.models.llama import causal_mask

Params = Any


def param_paths(params) -> list[str]:
  return ['/'.join(k) for k in traverse_util.flatten_dict(params)]


def trainable_labels(params, trainable: str = '.*', frozen: str = '') -> Any:
  """'train' / 'freeze' per leaf: a path is trained if it matches `trainable` and not `frozen` (re.search)."""
  try:
    tr, fr = re.compile(trainable), (re.compile(frozen) if frozen else None)
  except re.error as e:
    raise ValueError(f'optim.trainable / optim.frozen is not a valid regex: {e}') from e
  labels = {k: 'train' if tr.search('/'.join(k)) and not (fr and fr.search('/'.join(k))) else 'freeze'
            for k in traverse_util.flatten_dict(params)}
  if 'train' not in labels.values():
    raise ValueError(f'optim.trainable={trainable!r} / optim.frozen={frozen!r} leave no parameter trainable; '
                     f'paths look like {"/".join(next(iter(labels)))!r}')
  return traverse_util.unflatten_dict(labels)


OPTIMIZERS = ('adamw', 'adam', 'sgd')


def optimizer(name: str = 'adamw', lr=1e-3, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, grad_clip: float = 0.0, momentum: float | None = None
              ) -> optax.GradientTransformation:
  """The one optimizer factory. Every phase's config block names its optimizer with these keys (a block sets
  the ones it needs; `lr` may be an optax schedule). Global-norm clipping is chained in front iff `grad_clip`,
  so the optimizer-state tree (what checkpoints hold) is chain(clip, opt) with clipping and opt without."""
  if name in ('adamw', 'adam'):
    opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay) if name == 'adamw' else \
        optax.adam(lr, b1=b1, b2=b2, eps=eps)
  elif name == 'sgd':
    opt = optax.sgd(lr, momentum=momentum or None)
  else:
    raise ValueError(f'optimizer {name!r} is not one of {OPTIMIZERS}')
  return optax.chain(optax.clip_by_global_norm(grad_clip), opt) if grad_clip else opt


def make_optimizer(cfg, params) -> optax.GradientTransformation:
  """`config.optim` as an optimizer: `optimizer(...)` with a warmup-cosine LR and the trainable mask."""
  lr = cfg.lr
  if cfg.get('warmup_steps', 0) or cfg.get('decay_steps', 0):
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.get('warmup_steps', 0), 1),
                                            max(cfg.get('decay_steps', 0), cfg.get('warmup_steps', 0) + 1),
                                            end_value=cfg.lr * cfg.get('end_lr_frac', 0.1))
  name = cfg.get('name', 'adamw')
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} is not one of {OPTIMIZERS}")
  opt = optimizer(name, lr, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.95), eps=cfg.get('eps', 1e-8),
                  weight_decay=cfg.get('weight_decay', 0.0), grad_clip=cfg.get('grad_clip', 0.0),
                  momentum=cfg.get('momentum', None))
  return optax.multi_transform({'train': opt, 'freeze': optax.set_to_zero()}, optimizer_labels(cfg, params))


def optimizer_labels(cfg, params) -> Any:
  """The 'train' / 'freeze' label tree `make_optimizer(cfg, params)` uses (pass it to `make_train_step`)."""
  return trainable_labels(params, cfg.get('trainable', '.*'), cfg.get('frozen', ''))


def trainable_value_and_grad(fun: Callable, params, labels=None):
  """`jax.value_and_grad(fun, has_aux=True)(params)`, differentiating only the leaves labelled 'train'.

  Frozen leaves get zero gradients that are never computed: no weight-gradient matmuls for a frozen base
  (an expert-only step on SmolLM2 skips them; see experiments/benchmarks/suite.py). `labels=None` trains all.
  """
  if labels is None:
    return jax.value_and_grad(fun, has_aux=True)(params)
  flat, flat_l = traverse_util.flatten_dict(params), traverse_util.flatten_dict(labels)
  if set(flat) != set(flat_l):
    raise ValueError('trainable labels do not match the parameter tree; build them from these params '
                     '(train.optimizer_labels(cfg, params))')
  trained = {k: v for k, v in flat.items() if flat_l[k] == 'train'}
  frozen = {k: v for k, v in flat.items() if flat_l[k] != 'train'}
  out, g = jax.value_and_grad(lambda t: fun(traverse_util.unflatten_dict({**frozen, **t})), has_aux=True)(trained)
  return out, traverse_util.unflatten_dict({**g, **{k: jnp.zeros_like(v) for k, v in frozen.items()}})


def init_state(params, tx, cms=None) -> dict:
  """{'step', 'params', 'opt_state'} (+ 'cms', the expert active masks, for a CMS model; never trained)."""
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  return dict(state, cms=cms) if cms else state


def state_shardings(state, param_shardings, mesh) -> Any:
  """Optimizer slots mirroring a parameter (same path suffix and rank) take its sharding; the rest replicate."""
  flat_p = traverse_util.flatten_dict(param_shardings)
  rep = sharding.replicated(mesh)

  def for_leaf(path, x):
    keys = tuple(str(getattr(p, 'key', getattr(p, 'name', getattr(p, 'idx', p)))) for p in path)
    for n in range(len(keys)):
      s = flat_p.get(keys[n:])
      if s is not None and len(s.spec) <= getattr(x, 'ndim', 0):
        return s
    return rep

  opt_sh = jax.tree_util.tree_map_with_path(for_leaf, state['opt_state'])
  out = {'step': rep, 'params': param_shardings, 'opt_state': opt_sh}
  if 'cms' in state:
    out['cms'] = jax.tree.map(lambda _: rep, state['cms'])
  if 'loss_state' in state:   # e.g. ewc_state: its params-shaped trees are sharded like the params
    out['loss_state'] = jax.tree_util.tree_map_with_path(for_leaf, state['loss_state'])
  return out


def lm_loss(model: nn.Module, params, batch, cms=None):
  """Next-token CE; packed rows (with 'segment_ids' and 'positions') attend within their own segment."""
  mask_BLL = batch.get('mask')
  if mask_BLL is None and 'segment_ids' in batch:
    mask_BLL = causal_mask(batch['segment_ids'])
  logits_BLV, _ = model.apply(variables(params, cms), batch['inputs'], batch.get('positions'), mask_BLL)
  loss, ntok = losses.cross_entropy(logits_BLV, batch['targets'], batch['weights'])
  return loss, {'loss': loss, 'tokens': ntok}


def ewc_loss(base: Callable = lm_loss) -> Callable:
  """Elastic weight consolidation (Kirkpatrick et al. 2017) as a loss plug-in for `make_train_step`:
  base + lam/2 * sum_i F_i (theta_i - theta*_i)^2. The anchor theta*, the diagonal Fisher F and lam are read from
  `state['loss_state'] = ewc_state(...)`, so one compiled step serves every anchor and lambda. Metrics: the base's
  ('loss' stays the base loss) plus 'ewc', the unweighted penalty sum."""

  def loss_fn(model, params, batch, cms, ewc):
    loss, metrics = base(model, params, batch, cms)
    pen = sum(jnp.sum(f * (x - x0) ** 2) for f, x, x0 in zip(
        jax.tree.leaves(ewc['fisher']), jax.tree.leaves(params), jax.tree.leaves(ewc['params'])))
    return loss + 0.5 * ewc['lam'] * pen, dict(metrics, ewc=pen)
  return loss_fn


def ewc_state(anchor, fisher, lam: float) -> dict:
  """`state['loss_state']` for `ewc_loss`: the anchor params, their diagonal Fisher (same tree) and lambda.
  The train step donates its state: pass copies of trees the caller uses again."""
  return {'params': anchor, 'fisher': fisher, 'lam': jnp.float32(lam)}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, shardings: Any, batch_sh,
                    loss_fn: Callable = lm_loss, labels=None, skip_nonfinite: bool = False):
  """Jitted `step(state, batch) -> (state, metrics)` with the state donated. `loss_fn(model, params, batch, cms)`
  returns (loss, metrics); with `state['loss_state']` present it gets that as a 5th argument (e.g. `ewc_loss`),
  and the step carries it through unchanged. `labels`
  (`optimizer_labels(cfg, params)`): differentiate only the trained leaves; 'grad_norm' is over those.
  `skip_nonfinite`: a step with a non-finite loss or gradient keeps params and optimizer state (the step
  counter still advances: it counts batches read); metrics 'finite' says which (sleep_jax/guard.py)."""

  def step(state, batch):
    extra = (state['loss_state'],) if 'loss_state' in state else ()
    (loss, metrics), grads = trainable_value_and_grad(lambda p: loss_fn(model, p, batch, state.get('cms'), *extra),
                                                      state['params'], labels)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    grad_norm = optax.tree.norm(grads)
    ok = guard.finite(loss, grad_norm)
    if skip_nonfinite:
      params, opt_state = guard.keep_if(ok, (params, opt_state), (state['params'], state['opt_state']))
    metrics = dict(metrics, grad_norm=grad_norm, finite=ok)
    return dict(state, step=state['step'] + 1, params=params, opt_state=opt_state), metrics

  rep = sharding.replicated(batch_sh.mesh)
  return jax.jit(step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, rep), donate_argnums=0)
