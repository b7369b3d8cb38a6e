"""Sleep, stage 1: Memory Consolidation = expansion + Knowledge Seeding (PAPER secs. 2-3).

Teacher and student are views of parameter trees that are never copied or trained as a whole:

  teacher  = (params, cms) frozen: the pre-update model, which may also see a privileged context in its prompt
  student  = frozen (params, cms) with a small trainable `delta` merged in by a `View`:
             expand=True  -> the A, B of one newly activated expert in each receiver layer (the paper's method)
             expand=False -> the receivers' base MLP weights (the "without expansion" ablation)

Gradients exist only for `delta`, so nothing else can move (tested). One update step minimises

  L = alpha * [ (1 - lam) * D(T||S) on teacher samples + lam * D(T||S) on student samples ]
      - (1 - alpha) * REINFORCE( r = gamma * r_sem + (1 - gamma) * r_abs ),  group-normalised advantages

which is -L_KS of PAPER sec. 3 with the GKD mixture made explicit. The data are sampled from the teacher
(generative replay) on prompts made from the memory buffer; for Learning-to-Imitate a random prefix of a teacher
sample d is given to the student, which completes it G times, and each completion is scored against the rest
of d. A row of a batch is [left-padded prompt block | completion block]; teacher and student have their own
prompt blocks (the teacher's may hold the context), and share the completion block, so their next-token
distributions over the completion line up position by position.

The level -> level protocol (compute the sender's update, consolidate, apply and prune) is `protocol_*` below;
the context -> MLP case is the same machinery with the context in the teacher's prompt and the pre-sleep model
as teacher.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from sleep_jax import guard as guard_lib
from sleep_jax import losses, rewards, train
from sleep_jax.data.text import buffer_prompts
from sleep_jax.metrics import progress
from sleep_jax.models import cms as cms_lib
from sleep_jax.models.cms import variables
from sleep_jax.phases import wake as wake_lib
from sleep_jax.sampling import bucket

Params = Any
DIVERGENCES = ('jsd', 'fkl', 'rkl')


@dataclasses.dataclass(frozen=True)
class KSConfig:
  """Knowledge Seeding hyper-parameters. These defaults ARE `config.sleep.ks` (configs/sleep.py builds the block
  from them, tests/test_configs.py checks it): one source, so the config and the typed config cannot disagree."""
  # A sleep is short on 2 CPU cores (one update of 1 prompt x (1 teacher + 4 student) rows took ~15-25 s with
  # SmolLM2-135M), so few updates at an adapter-sized lr (chosen a priori, not tuned on test).
  steps: int = 10                 # updates per sleep
  prompts_per_step: int = 1       # memory-buffer prompts per update
  group_size: int = 4             # G student completions per prompt (GRPO-style group baseline)
  alpha: float = 0.5              # weight of the divergence term; 1 - alpha weighs the LTI policy gradient
  lam: float = 0.5                # GKD lambda: share of the divergence measured on student (on-policy) samples
  divergence: str = 'jsd'         # 'jsd' (generalised JSD(beta)) | 'fkl' | 'rkl'
  beta: float = 0.5
  # r = gamma * r_sem + (1 - gamma) * r_abs. The default judge (frozen SmolLM2-135M) gives a paraphrase and an
  # unrelated sentence the same P(yes) (~0.2, every prompt tried; docs/judge.md, tests/test_smollm2.py), so
  # r_sem carries no signal with it: 0, and no judge forward passes are paid for. Set > 0 with a stronger judge.
  gamma: float = 0.0
  z0_frac: float = 0.5            # r_abs threshold: lev <= z0_frac * max length, else 0
  reward_unit: str = 'token'      # Levenshtein over 'token's or 'char's
  judge_hard: bool = False        # r_sem = 1[p_yes > 0.5] instead of p_yes
  lr: float = 5e-3                # optimizer keys as in every phase's block (train.optimizer)
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  max_new_tokens: int = 32
  temperature: float = 1.0        # student sampling (on-policy data, LTI completions)
  teacher_temperature: float = 1.0
  prefix_max_frac: float = 0.5    # LTI cuts d after k ~ U{0..floor(prefix_max_frac*|d|)} tokens
  expand: bool = True             # False: train the receivers' base MLPs instead of a new expert (ablation)
  # Teacher completions (the generative-replay set) sampled per sampler call: one batch of prompts, rows padded to
  # the mesh's batch shards and split over them. Larger = fewer calls (at 8B: a multiple of the batch shards);
  # changing it changes the sampled set (each batch draws its own key), not its distribution.
  sample_batch: int = 16

  def __post_init__(self):
    for f in ('alpha', 'lam', 'gamma'):
      v = getattr(self, f)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f'sleep.ks.{f}={v} must be in [0, 1]')
    if self.divergence not in DIVERGENCES:
      raise ValueError(f'sleep.ks.divergence={self.divergence!r} is not one of {DIVERGENCES}')
    if self.divergence == 'jsd' and not 0.0 < self.beta < 1.0:
      raise ValueError(f"sleep.ks.beta={self.beta} must be in (0, 1) for 'jsd'; use 'fkl' / 'rkl' for the limits")
    if not 0.0 < self.z0_frac <= 1.0:
      raise ValueError(f'sleep.ks.z0_frac={self.z0_frac} must be in (0, 1]')
    if self.reward_unit not in ('token', 'char'):
      raise ValueError(f"sleep.ks.reward_unit={self.reward_unit!r} is not one of 'token', 'char'")
    for f in ('steps', 'prompts_per_step', 'group_size', 'max_new_tokens', 'sample_batch'):
      if getattr(self, f) < (0 if f == 'steps' else 1):
        raise ValueError(f'sleep.ks.{f}={getattr(self, f)} must be positive')
    if self.group_size < 2 and self.alpha < 1.0:
      raise ValueError(f'sleep.ks.group_size={self.group_size}: the group baseline needs >= 2 samples per prompt '
                       '(or alpha=1, no policy gradient)')
    if not 0.0 <= self.prefix_max_frac < 1.0:
      raise ValueError(f'sleep.ks.prefix_max_frac={self.prefix_max_frac} must be in [0, 1)')

  @property
  def needs_judge(self) -> bool:   # r_sem has weight in the reward and the reward has weight in the loss
    return self.gamma > 0 and self.alpha < 1

  @property
  def off_policy_rows(self) -> bool:   # teacher samples scored by the divergence
    return self.alpha > 0 and self.lam < 1

  @property
  def on_policy_rows(self) -> bool:    # student completions, for the PG term and/or on-policy divergence
    return self.alpha < 1 or self.lam > 0

  @classmethod
  def from_config(cls, c) -> 'KSConfig':
    d = dict(c)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'sleep.ks.{unknown[0]} is not a Knowledge Seeding field; fields: {sorted(names)}')
    return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Views: which small tree is trained, and how it merges into the frozen student tree


@dataclasses.dataclass(frozen=True)
class View:
  """`extract(params, index) -> delta` and `merge(params, delta, index) -> params` for receiver `layers`.

  expand=True: delta = {'layers_i': {'a': A_j [D,R], 'b': B_j [R,D]}} of the expert j = index['layers_i']
  (a traced int, so a new expert index does not recompile); expand=False: delta = the base MLP weights.
  """
  layers: tuple[int, ...]
  expand: bool

  def extract(self, params, index) -> dict:
    out = {}
    for i in self.layers:
      m = params[f'layers_{i}']['mlp']
      if self.expand:
        j = index[f'layers_{i}']
        out[f'layers_{i}'] = {'a': m['expert_a'][j], 'b': m['expert_b'][j]}
      else:
        out[f'layers_{i}'] = {k: m[k] for k in ('w_gate', 'w_up', 'w_down')}
    return out

  def merge(self, params, delta, index) -> dict:
    params = dict(params)
    for i in self.layers:
      lk = f'layers_{i}'
      m = dict(params[lk]['mlp'])
      if self.expand:
        j = index[lk]
        m['expert_a'] = m['expert_a'].at[j].set(delta[lk]['a'].astype(m['expert_a'].dtype))
        m['expert_b'] = m['expert_b'].at[j].set(delta[lk]['b'].astype(m['expert_b'].dtype))
      else:
        m.update(delta[lk])
      params[lk] = {**params[lk], 'mlp': m}
    return params


def expand_student(params, cms, layers: Sequence[int]) -> tuple[Params, Any, dict]:
  """Activate one new expert (first free slot, B = 0: function-preserving) in each receiver layer."""
  index = {}
  for i in layers:
    params, cms, j = cms_lib.activate_expert(params, cms, i)
    index[f'layers_{i}'] = j
  return params, cms, index


def make_optimizer(kcfg: KSConfig) -> optax.GradientTransformation:
  return train.optimizer('adamw', kcfg.lr, b1=kcfg.b1, b2=kcfg.b2, grad_clip=kcfg.grad_clip)


def state_tree(params, index, view: View, tx) -> dict:
  """{'step', 'delta' (float32 trainable copy), 'opt_state'}: the only state a sleep trains (pure; works
  under `jax.eval_shape`, which is how a resumed sleep builds its restore target)."""
  # A real copy: the state is donated to the update, the frozen tree it came from must survive.
  delta = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), view.extract(params, _index_arrays(index)))
  return {'step': jnp.zeros((), jnp.int32), 'delta': delta, 'opt_state': tx.init(delta)}


def init_state(params, index, view: View, tx) -> dict:
  """`state_tree` placed for the update."""
  state = state_tree(params, index, view, tx)
  delta = state['delta']
  # Commit the scalars (step, Adam's count) where the update's outputs will live: an uncommitted input and a
  # committed output are different jit signatures, which would compile the update a second time.
  ref = jax.tree.leaves(delta)[0].sharding
  rep = jax.sharding.NamedSharding(ref.mesh, jax.sharding.PartitionSpec()) \
      if isinstance(ref, jax.sharding.NamedSharding) else ref
  return jax.tree.map(lambda x: x if x.committed else jax.device_put(x, rep), state)


def _index_arrays(index: dict) -> dict:
  return {k: jnp.asarray(v, jnp.int32) for k, v in index.items()}


# ---------------------------------------------------------------------------------------------------
# The pure update step


def _forward_tail(model, params, cms, tokens_BL, valid_BL, n_tail: int):
  """Logits of the last `n_tail` positions of left-padded rows (positions count real tokens only)."""
  L = tokens_BL.shape[1]
  pos_BL = jnp.maximum(jnp.cumsum(valid_BL, axis=1) - 1, 0)
  mask_BLL = valid_BL[:, None, :] & jnp.tril(jnp.ones((L, L), bool))[None]
  logits, _ = model.apply(variables(params, cms), tokens_BL, pos_BL, mask_BLL, tail=n_tail)
  return logits


def ks_loss(delta, frozen, batch, *, model, kcfg: KSConfig, view: View):
  """(loss, metrics) of one batch; see the module docstring. `frozen` = teacher/student trees + expert index."""
  N = batch['targets'].shape[1]
  sp = view.merge(frozen['student']['params'], delta, frozen['index'])
  s_logits = _forward_tail(model, sp, frozen['student']['cms'], batch['s_tokens'], batch['s_valid'], N + 1)[:, :N]
  w_BN = batch['weights']
  n_tok_B = jnp.maximum(w_BN.sum(axis=1), 1.0)
  metrics = {}
  loss = jnp.zeros((), jnp.float32)
  if kcfg.alpha > 0:
    t_logits = _forward_tail(model, frozen['teacher']['params'], frozen['teacher']['cms'], batch['t_tokens'],
                             batch['t_valid'], N + 1)[:, :N]
    d_BN = losses.divergence_per_token(jax.lax.stop_gradient(t_logits), s_logits, kcfg.divergence, kcfg.beta)
    d_B = (d_BN * w_BN).sum(axis=1) / n_tok_B
    div = jnp.sum(d_B * batch['div_w'])
    loss = loss + kcfg.alpha * div
    metrics['divergence'] = div
  if kcfg.alpha < 1:
    lp_BN = losses.token_logprobs(s_logits, batch['targets'])
    lp_B = (lp_BN * w_BN).sum(axis=1) / n_tok_B          # per-token mean log-prob of each completion
    pg = -jnp.sum(batch['adv'] * lp_B * batch['pg_w'])
    loss = loss + (1 - kcfg.alpha) * pg
    metrics['pg_loss'] = pg
  metrics['loss'] = loss
  return loss, metrics


def make_update(model, kcfg: KSConfig, view: View, tx, batch_sharding=None, skip_nonfinite: bool = False) -> Callable:
  """Jitted pure `update(state, frozen, batch) -> (state, metrics)`; the (small) state is donated.
  `skip_nonfinite`: a non-finite loss or gradient leaves delta and moments unchanged (guard.py)."""

  def update(state, frozen, batch):
    (loss, metrics), grads = jax.value_and_grad(
        functools.partial(ks_loss, model=model, kcfg=kcfg, view=view), has_aux=True)(state['delta'], frozen, batch)
    updates, opt_state = tx.update(grads, state['opt_state'], state['delta'])
    delta = optax.apply_updates(state['delta'], updates)
    grad_norm = optax.tree.norm(grads)
    if skip_nonfinite:
      delta, opt_state = guard_lib.keep_if(guard_lib.finite(loss, grad_norm), (delta, opt_state),
                                           (state['delta'], state['opt_state']))
    metrics = dict(metrics, grad_norm=grad_norm)
    return {'step': state['step'] + 1, 'delta': delta, 'opt_state': opt_state}, metrics

  return jax.jit(update, donate_argnums=0)


def commit(frozen_student_params, state, index, view: View) -> Params:
  """The student's full parameter tree with the trained delta merged in."""
  return _merge_jit(view)(frozen_student_params, state['delta'], _index_arrays(index))


@functools.lru_cache(maxsize=None)
def _merge_jit(view: View):
  return jax.jit(view.merge)


# ---------------------------------------------------------------------------------------------------
# Host side: prompts, teacher samples, LTI rewards, batches


@dataclasses.dataclass
class Item:
  """One memory-buffer prompt: the student's prompt tokens and the teacher's (which may hold a context)."""
  student: list[int]
  teacher: list[int]
  source: str = ''


def _pad_rows(rows: list[dict], *, pad_id: int, n_rows: int, buckets: Sequence[int], n_gen: int) -> dict:
  """Rows -> arrays [n_rows, P + n_gen] with left-padded prompts and right-padded completions."""
  Ps = bucket(max(len(r['s']) for r in rows), buckets, 'student prompt', 'prompt')
  Pt = bucket(max(len(r['t']) for r in rows), buckets, 'teacher prompt', 'prompt')
  out = {'s_tokens': np.full((n_rows, Ps + n_gen), pad_id, np.int32), 's_valid': np.zeros((n_rows, Ps + n_gen), bool),
         't_tokens': np.full((n_rows, Pt + n_gen), pad_id, np.int32), 't_valid': np.zeros((n_rows, Pt + n_gen), bool),
         'targets': np.full((n_rows, n_gen), pad_id, np.int32), 'weights': np.zeros((n_rows, n_gen), np.float32),
         'div_w': np.zeros((n_rows,), np.float32), 'pg_w': np.zeros((n_rows,), np.float32),
         'adv': np.zeros((n_rows,), np.float32)}
  for b, r in enumerate(rows):
    y = list(r['y'])[:n_gen]
    for key, P in (('s', Ps), ('t', Pt)):
      p = r[key]
      out[f'{key}_tokens'][b, P - len(p):P] = p
      out[f'{key}_tokens'][b, P:P + len(y)] = y
      out[f'{key}_valid'][b, P - len(p):P + len(y)] = True
    out['targets'][b, :len(y)] = y
    out['weights'][b, :len(y)] = 1.0
    for k in ('div_w', 'pg_w', 'adv'):
      out[k][b] = r[k]
  return out


class Seeder:
  """Runs Knowledge Seeding for one sleep: `Seeder(...).run(teacher, student, items, ...)`.

  `sampler` is the project's one Sampler; `judge` a `rewards.Judge` (needed when gamma > 0) scored with
  `judge_vars` (default: the teacher's frozen pre-sleep tree without context, PAPER's default judge).
  """

  def __init__(self, model, kcfg: KSConfig, tokenizer, sampler, *, judge=None, batch_multiple: int = 1,
               batch_sharding=None, guard: guard_lib.NonFiniteGuard | None = None):
    self.model, self.kcfg, self.tok, self.sampler, self.judge = model, kcfg, tokenizer, sampler, judge
    self.batch_multiple, self.batch_sharding = batch_multiple, batch_sharding
    self.guard = guard or guard_lib.NonFiniteGuard()
    if kcfg.needs_judge and judge is None:
      raise ValueError('sleep.ks.gamma > 0 needs a judge model for r_sem (rewards.Judge); set gamma=0 to use r_abs only')
    self.tx = make_optimizer(kcfg)
    self._updates = {}

  def with_steps(self, steps: int) -> 'Seeder':
    """This seeder running `steps` updates per sleep, sharing its compiled updates (they do not depend on it)."""
    if steps == self.kcfg.steps:
      return self
    other = copy.copy(self)
    other.kcfg = dataclasses.replace(self.kcfg, steps=steps)
    return other

  def update_fn(self, view: View):
    if view not in self._updates:
      self._updates[view] = make_update(self.model, self.kcfg, view, self.tx, skip_nonfinite=self.guard.skip)
    return self._updates[view]

  @property
  def rows_per_step(self) -> int:
    k = self.kcfg
    n = k.prompts_per_step * ((1 if k.off_policy_rows else 0) + (k.group_size if k.on_policy_rows else 0))
    return -(-n // self.batch_multiple) * self.batch_multiple

  def teacher_samples(self, teacher, items: list[Item], rng) -> list[list[int]]:
    """One teacher completion per item (sampled once per sleep: the generative-replay dataset D)."""
    out, n = [], self.kcfg.sample_batch
    for s in range(0, len(items), n):
      chunk = items[s:s + n]
      o = self.sampler(teacher['params'], [it.teacher for it in chunk], max_new_tokens=self.kcfg.max_new_tokens,
                       rng=jax.random.fold_in(rng, s), temperature=self.kcfg.teacher_temperature,
                       cms=teacher['cms'])
      out += [list(t[m]) for t, m in zip(o.tokens, o.mask)]
    return out

  def _rewards(self, ys, refs, judge_vars) -> tuple[np.ndarray, dict]:
    k = self.kcfg
    if k.reward_unit == 'char':
      a, b = [self.tok.decode(y) for y in ys], [self.tok.decode(r) for r in refs]
    else:
      a, b = [list(map(int, y)) for y in ys], [list(map(int, r)) for r in refs]
    r_abs = rewards.r_abs_batch(a, b, k.z0_frac)
    r_sem = np.zeros_like(r_abs)
    if k.gamma > 0:
      pairs = [(self.tok.decode(y), self.tok.decode(r)) for y, r in zip(ys, refs)]
      r_sem = np.asarray(self.judge(judge_vars['params'], pairs, cms=judge_vars['cms'], hard=k.judge_hard),
                         np.float32)
    r = rewards.lti_reward(r_sem, r_abs, k.gamma)
    return r, {'reward': float(r.mean()), 'r_abs': float(r_abs.mean()), 'r_sem': float(r_sem.mean())}

  def step_batch(self, items: list[Item], samples: list[list[int]], student_params, student_cms, judge_vars,
                 rng) -> tuple[dict, dict]:
    """Host work of one update: LTI cuts, student completions, rewards, advantages -> padded batch."""
    k = self.kcfg
    n = len(items)
    r_np = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    rows, info = [], {}
    if k.off_policy_rows:
      rows += [{'s': it.student, 't': it.teacher, 'y': d, 'div_w': (1 - k.lam) / n, 'pg_w': 0.0, 'adv': 0.0}
               for it, d in zip(items, samples)]
    if k.on_policy_rows:
      cuts = [int(r_np.integers(0, int(k.prefix_max_frac * len(d)) + 1)) for d in samples]
      prompts = [it.student + d[:c] for it, d, c in zip(items, samples, cuts) for _ in range(k.group_size)]
      o = self.sampler(student_params, prompts, max_new_tokens=k.max_new_tokens, rng=rng,
                       temperature=k.temperature, cms=student_cms)
      ys = [list(t[m]) for t, m in zip(o.tokens, o.mask)]
      refs = [d[c:] for d, c in zip(samples, cuts) for _ in range(k.group_size)]
      if k.alpha < 1:
        r, info = self._rewards(ys, refs, judge_vars)
        adv = rewards.group_advantages(r, k.group_size)
      else:
        adv = np.zeros(len(ys), np.float32)
      m = len(ys)
      for g, (y, a) in enumerate(zip(ys, adv)):
        it, d, c = items[g // k.group_size], samples[g // k.group_size], cuts[g // k.group_size]
        rows.append({'s': it.student + d[:c], 't': it.teacher + d[:c], 'y': y, 'div_w': k.lam / m,
                     'pg_w': 1.0 / m, 'adv': float(a)})
      info['completion_tokens'] = float(np.mean([len(y) for y in ys]))
    batch = _pad_rows(rows, pad_id=self.sampler.pad_id, n_rows=self.rows_per_step,
                      buckets=self.sampler.prompt_buckets, n_gen=bucket(k.max_new_tokens, self.sampler.gen_buckets,
                                                                        'completion', 'gen'))
    return batch, info

  def run(self, teacher: dict, student: dict, index: dict, view: View, items: list[Item], rng, *,
          state: dict | None = None, judge_vars: dict | None = None, on_step: Callable | None = None,
          progress_desc: str = 'sleep/ks', log_every: int = 1,
          sync_at: Callable[[int], bool] | None = None) -> tuple[dict, list[dict]]:
    """Train `delta` for kcfg.steps updates (from `state`, e.g. a resumed one). teacher/student are
    {'params', 'cms'} (the student's with the new experts active). Returns (state, per-step metrics).

    The updates' metrics stay on device and are fetched (one transfer), checked by the guard and handed to
    `on_step(step, state, metrics)` every `log_every` updates, at the last one, and at every step where
    `sync_at(step)` (where the caller checkpoints: `state` is then that step's state, checked before it is
    saved). Earlier steps of a fetch get `state=None`. With on-policy rows every update samples from the student
    first, which waits for the previous update anyway; off-policy-only seeding (lam=0) runs ahead."""
    k = self.kcfg
    if not items:
      raise ValueError('Knowledge Seeding got no prompts: the memory buffer is empty')
    judge_vars = judge_vars or teacher
    update = self.update_fn(view)
    index_a = _index_arrays(index)
    if state is None:
      state = init_state(student['params'], index, view, self.tx)
    if int(state['step']) >= k.steps:   # a resumed sleep past this stage: nothing to sample or train
      return state, []
    frozen = {'teacher': teacher, 'student': student, 'index': index_a}
    t0 = time.perf_counter()
    samples = self.teacher_samples(teacher, items, jax.random.fold_in(rng, 0))
    t_teacher = time.perf_counter() - t0
    order = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(rng, 1))).ravel().tolist())
    schedule = [order.permutation(len(items)) for _ in range(-(-k.steps * k.prompts_per_step // len(items)) + 1)]
    schedule = np.concatenate(schedule)
    history = []
    bar = progress(range(int(state['step']), k.steps), desc=progress_desc)
    merge = _merge_jit(view)
    phase, pending = 'sleep/knowledge-seeding', []

    def flush(state):
      host = jax.device_get([m for m, _ in pending])
      for i, (m, (info, s, t)) in enumerate(zip(host, [x for _, x in pending])):
        if m is None:
          m = {'skipped': 1.0}   # a non-finite reward: no update from this batch (checked on the host already)
        else:
          m = {key: float(v) for key, v in m.items()}
          m['skipped'] = float(not self.guard.check(phase, s + 1, m))
        m.update(info, step=s + 1, **t)
        history.append(m)
        if on_step is not None:
          on_step(s + 1, state if i == len(pending) - 1 else None, m)
      bar.set_metrics({key: history[-1][key] for key in ('loss', 'reward') if key in history[-1]})
      pending.clear()

    for s in bar:
      ids = schedule[s * k.prompts_per_step:(s + 1) * k.prompts_per_step]
      t1 = time.perf_counter()
      sp = merge(student['params'], state['delta'], index_a) if k.on_policy_rows else None
      batch, info = self.step_batch([items[i] for i in ids], [samples[i] for i in ids], sp, student['cms'],
                                    judge_vars, jax.random.fold_in(rng, 1000 + s))
      del sp
      t2 = time.perf_counter()
      if self.batch_sharding is not None:   # rows split over the batch mesh axes, whatever each leaf's rank
        sh = self.batch_sharding
        row_sh = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(sh.spec[0]))
        batch = jax.device_put(batch, jax.tree.map(lambda _: row_sh, batch))
      if self.guard.check(phase, s + 1, {k: v for k, v in info.items() if k.startswith('r')}):
        state, m = update(state, frozen, batch)
      else:                 # a non-finite reward: no update from this batch
        state, m = dict(state, step=state['step'] + 1), None
      t3 = time.perf_counter()   # update_s: dispatch only, the update itself overlaps the next step's host work
      pending.append((m, (info, s, {'sample_s': t2 - t1, 'update_s': t3 - t2})))
      if len(pending) >= log_every or s + 1 == k.steps or (sync_at is not None and sync_at(s + 1)):
        flush(state)
    if history:
      history[0]['teacher_sample_s'] = t_teacher
    return state, history


# ---------------------------------------------------------------------------------------------------
# Level -> level protocol (PAPER sec. 2): compute, consolidate, update


def sender_update(wake_state: dict, wcfg, level: int) -> tuple[Params, Any]:
  """Step 1 ("compute"): the sender level's base update from its accumulated gradient, not applied.

  Returns (updates tree over the level's leaves, the level's new optimizer state), exactly what the wake
  step would apply at the level's boundary (PAPER Eq. 2; SGD: -lr * sum of gradients).
  """
  groups = wake_lib._group_keys(wake_state['params'], wcfg)
  keys = groups[level]
  if not keys or wcfg.periods[level] == 0:
    raise ValueError(f'level {level} has no layers or is frozen (period 0): nothing to consolidate')
  flat = traverse_util.flatten_dict(wake_state['params'])
  sub = wake_lib._sub(flat, keys)
  acc = wake_state['acc'][level]
  if not acc:
    raise ValueError(f'level {level} has period {wcfg.periods[level]}: it keeps no accumulator to consolidate '
                     '(the sender must be a level with C >= 2)')
  tx = wake_lib.make_level_optimizer(wcfg, wcfg.lrs[level])
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), acc, sub)
  return tx.update(grads, wake_state['opt_state'][level], sub)


def protocol_student(wake_state: dict, wcfg, sender: int, receiver_layers: Sequence[int], updates) -> tuple:
  """Step 2's student: sender base weights updated, the sender's experts pruned (inactive), one new expert
  active in each receiver layer. Returns (params, cms, index)."""
  params, cms = wake_state['params'], wake_state['cms']
  flat = traverse_util.flatten_dict(params)
  for k, u in traverse_util.flatten_dict(updates).items():
    if k[-1] in ('w_gate', 'w_up', 'w_down'):   # base weights only: the sender's experts are reset below
      flat[k] = flat[k] + u.astype(flat[k].dtype)
  params = traverse_util.unflatten_dict(flat)
  params, cms = prune_level(params, cms, wcfg, sender)
  return expand_student(params, cms, receiver_layers)


def prune_level(params, cms, wcfg, level: int) -> tuple[Params, Any]:
  """Deactivate every active expert of `level`'s layers ("synaptic pruning")."""
  for i, l in enumerate(wcfg.level_of_layer):
    if l != level or f'layers_{i}' not in cms:
      continue
    active = np.asarray(jax.device_get(cms[f'layers_{i}']['mlp']['active']))
    for j in np.flatnonzero(active):
      params, cms = cms_lib.deactivate_expert(params, cms, i, int(j))
  return params, cms


def protocol_apply(wake_state: dict, wcfg, sender: int, student_params, cms, new_opt_state) -> dict:
  """Step 3 ("update"): the consolidated student becomes the wake state; the sender's accumulator restarts
  and its optimizer state advances as if the boundary update had been applied."""
  acc = list(wake_state['acc'])
  acc[sender] = jax.tree.map(jnp.zeros_like, acc[sender])
  opt = list(wake_state['opt_state'])
  opt[sender] = new_opt_state
  return dict(wake_state, params=student_params, cms=cms, acc=acc, opt_state=opt)


def layers_of_level(wcfg, level: int) -> tuple[int, ...]:
  layers = tuple(i for i, l in enumerate(wcfg.level_of_layer) if l == level)
  if not layers:
    raise ValueError(f'CMS level {level} has no layers (wake.level_of_layer={wcfg.level_of_layer})')
  return layers


# ---------------------------------------------------------------------------------------------------
# Items from the memory buffer


def context_items(tokenizer, docs: list[dict], templates, seed: int, n_prefix: int) -> list[Item]:
  """Student: the instruction alone; teacher: the document, then the instruction (privileged context)."""
  rng = np.random.default_rng(seed)
  items = []
  for d in docs:
    for instr in buffer_prompts(d, templates, rng, n_prefix):
      items.append(Item(tokenizer.chat_tokens([{'role': 'user', 'content': instr}]),
                           tokenizer.chat_tokens([{'role': 'user', 'content': f"{d['text']}\n\n{instr}"}]),
                           d['id']))
  return items


def plain_items(tokenizer, docs: list[dict], templates, seed: int, n_prefix: int) -> list[Item]:
  """Protocol sleeps: teacher and student get the same prompt (the knowledge is in the sender's weights)."""
  return [Item(it.student, it.student, it.source) for it in context_items(tokenizer, docs, templates, seed,
                                                                             n_prefix)]
