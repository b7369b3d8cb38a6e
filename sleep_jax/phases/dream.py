"""Sleep, stage 2: Dreaming (PAPER sec. 4), after Memory Consolidation in every sleep that enables it.

For a task (C, tau) with context C and a metric tau, one ReST-EM round is:

  1. generate  m dreams y_i ~ LM(. | C, instruction_i); with `random_expert` every router of every dream row
               also switches on one random inactive expert (its random B is the novelty; cms.py);
  2. select    by gradient importance: g_i = grad_delta L_SFT(y_i); score = cos(g_i, grad_delta tau) (default),
               or |g_i| ('norm', also the fallback without a probe), or none ('random'); keep the top-k plus
               b random others;
  3. apply     each kept dream fine-tunes an isolated copy of the trainable `delta` for `inner_steps` steps:
               one jitted function, vmapped over dreams (rows sharded over the mesh), the shared weights frozen;
  4. reward    r_i = 1 if tau(copy_i) < tau(original) - reward_margin, else 0;
  5. M-step    SFT `delta` on the reward-1 dreams (ReST-EM): in the generator format (C + instruction -> y,
               weight `generator_weight`: the dream generator learns which dreams help) and in the memory format
               (instruction without C -> y, weight `memory_weight`: the model keeps what the dream says).

Decisions (PAPER is silent):
- `delta` is the sleep's new expert in each receiver layer (the one Knowledge Seeding just trained; a
  `consolidate.View`), so the inner-loop copies are "new-expert copies" rather than LoRA adapters on other weights:
  an inner copy then tests exactly the update the M-step would make, nothing outside the grown parameters ever
  moves, and no second adapter type is needed. The dream generator is the model itself (as in ReST-EM/SEAL).
- tau for knowledge is a *cloze probe made from the context itself*: mean NLL, without C, of the second half of
  sentences of C given "Complete the sentence: <first half>". The QA questions are never read during sleep
  (they are the evaluation). ARC: leave-one-out demonstrations; languages: the book's example translations.
- Each round's dreams and rewards are measured against the current model; the next round samples from the
  model the M-step produced, so the reward rate per round shows whether the generator learns to dream better.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sleep_jax import guard as guard_lib
from sleep_jax import losses, sharding, train
from sleep_jax.data.arc import grid_to_text
from sleep_jax.data.text import sentences
from sleep_jax.metrics import progress
from sleep_jax.phases import consolidate as ks
from sleep_jax.sampling import bucket, left_pad

SELECTIONS = ('cosine', 'norm', 'random')


@dataclasses.dataclass(frozen=True)
class DreamConfig:
  """Dreaming hyper-parameters. These defaults ARE `config.sleep.dream` (configs/sleep.py builds the block from
  them; tests/test_configs.py checks it). Sizes chosen for 2 CPU cores (one round on one passage: ~1-1.5 min
  with SmolLM2-135M; benchmarks/dreaming.py), not tuned on test."""
  enabled: bool = True
  n_dreams: int = 6               # m dreams per context per round
  top_k: int = 2                  # kept by gradient importance
  n_random: int = 1               # b kept at random from the rest
  selection: str = 'cosine'       # 'cosine' (to the probe gradient) | 'norm' | 'random' (no gradient selection)
  random_expert: bool = True      # each dream row switches on one random inactive expert per block
  # The random experts' B is scaled by this while dreaming; at its init scale (1) it barely moves SmolLM2
  # (docs/experiments.md); > 1 not yet measured.
  expert_scale: float = 1.0
  rounds: int = 2                 # ReST-EM outer rounds
  max_new_tokens: int = 48
  temperature: float = 1.0
  inner_steps: int = 2            # fine-tuning steps of each isolated copy
  inner_lr: float = 1e-2
  mstep_steps: int = 2            # SFT updates on the reward-1 dreams per round and context
  lr: float = 5e-3
  grad_clip: float = 1.0
  generator_weight: float = 1.0   # M-step: C + instruction -> dream (the generator learns what helps)
  memory_weight: float = 1.0      # M-step: instruction alone -> dream (the knowledge the dream carries)
  reward_margin: float = 0.0      # reward 1 iff tau(copy) < tau(original) - margin
  probe_rows: int = 6             # tau probe pairs per context

  def __post_init__(self):
    if self.selection not in SELECTIONS:
      raise ValueError(f'sleep.dream.selection={self.selection!r} is not one of {SELECTIONS}')
    for f in ('n_dreams', 'rounds', 'max_new_tokens', 'inner_steps', 'probe_rows'):
      if getattr(self, f) < 1:
        raise ValueError(f'sleep.dream.{f}={getattr(self, f)} must be >= 1')
    for f in ('top_k', 'n_random', 'mstep_steps'):
      if getattr(self, f) < 0:
        raise ValueError(f'sleep.dream.{f}={getattr(self, f)} must be >= 0')
    if not 1 <= self.top_k + self.n_random <= self.n_dreams:
      raise ValueError(f'sleep.dream.top_k + n_random = {self.top_k + self.n_random} must be in '
                       f'[1, n_dreams={self.n_dreams}]')
    if self.expert_scale <= 0:
      raise ValueError(f'sleep.dream.expert_scale={self.expert_scale} must be > 0')
    if self.generator_weight < 0 or self.memory_weight < 0 or self.generator_weight + self.memory_weight == 0:
      raise ValueError('sleep.dream.generator_weight and memory_weight must be >= 0, not both 0')

  @property
  def n_kept(self) -> int:
    return self.top_k + self.n_random

  @classmethod
  def from_config(cls, c) -> 'DreamConfig':
    d = dict(c)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'sleep.dream.{unknown[0]} is not a Dreaming field; fields: {sorted(names)}')
    return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Tasks: context, dream instructions (with / without the context), and the tau probe


@dataclasses.dataclass
class DreamTask:
  """One context C: `gen_prompts[i]` (user messages that hold C) and `mem_prompts[i]` (the same request without
  C) are parallel; `probe` holds (user message without C, target) pairs whose mean target NLL is tau."""
  name: str
  gen_prompts: list[str]
  mem_prompts: list[str]
  probe: list[tuple[str, str]]

  def __post_init__(self):
    if not self.gen_prompts or len(self.gen_prompts) != len(self.mem_prompts):
      raise ValueError(f'dream task {self.name!r}: gen_prompts and mem_prompts must be parallel and non-empty')


KNOWLEDGE_REQUESTS = (  # (with the passage, without it)
    ('List several implications of the passage above, one per line.',
     'List several implications of what you know about {title}, one per line.'),
    ('Restate the passage above in your own words.', 'Tell me everything you know about {title}.'),
    ("Write question and answer pairs about the passage above, each as 'Q: ... A: ...'.",
     "Write question and answer pairs about {title}, each as 'Q: ... A: ...'."),
)


def knowledge_task(doc: dict, n_probe: int, seed: int = 0) -> DreamTask:
  """Implications, restatements and QA pairs of a passage; tau = cloze NLL of its own sentences without it."""
  title = doc.get('title') or 'the passage you read'
  gen = [f"{doc['text']}\n\n{g}" for g, _ in KNOWLEDGE_REQUESTS]
  mem = [m.format(title=title) for _, m in KNOWLEDGE_REQUESTS]
  sents = sentences(doc['text'])
  order = np.random.default_rng([seed, 0xd4ea]).permutation(len(sents))[:n_probe]
  probe = []
  for j in sorted(order):
    words = sents[j].split()
    h = max(2, len(words) // 2)
    probe.append((f"Complete the sentence: {' '.join(words[:h])}", ' '.join(words[h:])))
  return DreamTask(doc.get('id', title), gen, mem, probe)


def arc_task(task: dict, name: str = 'arc') -> DreamTask:
  """ARC: transformed and augmented demonstrations; tau = NLL of each demonstration's output given the others
  and its input (leave-one-out)."""
  demos = task['train']
  show = lambda ds: '\n\n'.join(f"Input:\n{grid_to_text(d['input'])}\nOutput:\n{grid_to_text(d['output'])}"
                                for d in ds)
  ctx = f'Demonstrations of one grid transformation:\n\n{show(demos)}'
  asks = ('Write a new input grid and its output under the same transformation.',
          'Write one of the demonstrations again, rotated by 90 degrees (input and output).',
          'Write one of the demonstrations again with two colours swapped (input and output).')
  gen = [f'{ctx}\n\n{a}' for a in asks]
  mem = [a.replace('the same transformation', 'the transformation you learned').replace(
      'one of the demonstrations', 'a demonstration of the transformation you learned') for a in asks]
  probe = []
  for i, d in enumerate(demos):
    others = [x for j, x in enumerate(demos) if j != i]
    probe.append((f"{show(others)}\n\nInput:\n{grid_to_text(d['input'])}\nOutput:", grid_to_text(d['output'])))
  return DreamTask(name, gen, mem, probe)


def language_task(book: str, examples: Sequence[tuple[str, str]], language: str) -> DreamTask:
  """New languages: example sentences and their translations; tau = translation NLL of the book's examples."""
  asks = (f'Write a new example sentence in {language} and its English translation.',
          f'Write an English sentence and its translation into {language}.')
  gen = [f'{book}\n\n{a}' for a in asks]
  mem = list(asks)
  probe = [(f'Translate into English: {x}', y) for x, y in examples]
  return DreamTask(language, gen, mem, probe)


# ---------------------------------------------------------------------------------------------------
# Rows: [left-padded prompt | completion], the memory ('s') and generator ('t') formats side by side


def completion_rows(mem: Sequence[Sequence[int]], gen: Sequence[Sequence[int]], ys: Sequence[Sequence[int]], *,
                    pad_id: int, n_rows: int, buckets: Sequence[int], n_gen: int, row_w=None) -> dict:
  """Arrays [n_rows, P + n_gen]: s_* hold mem prompt + y, t_* gen prompt + y; targets/weights over y.
  Rows beyond len(ys) are padding (weight 0); `row_w` scales each row's weights (0 drops a row)."""
  Ps = bucket(max(len(p) for p in mem), buckets, 'dream memory prompt', 'prompt')
  Pt = bucket(max(len(p) for p in gen), buckets, 'dream generator prompt', 'prompt')
  out = {}
  for key, prompts, P in (('s', mem, Ps), ('t', gen, Pt)):
    toks, valid = left_pad(prompts, P, pad_id, n_rows)
    out[f'{key}_tokens'] = np.concatenate([toks, np.full((n_rows, n_gen), pad_id, np.int32)], 1)
    out[f'{key}_valid'] = np.concatenate([valid, np.zeros((n_rows, n_gen), bool)], 1)
  out['targets'] = np.full((n_rows, n_gen), pad_id, np.int32)
  out['weights'] = np.zeros((n_rows, n_gen), np.float32)
  for b, y in enumerate(ys):
    y = list(y)[:n_gen]
    for key, P in (('s', Ps), ('t', Pt)):
      out[f'{key}_tokens'][b, P:P + len(y)] = y
      out[f'{key}_valid'][b, P:P + len(y)] = True
    out['targets'][b, :len(y)] = y
    out['weights'][b, :len(y)] = 1.0 if row_w is None else float(row_w[b])
  return out


# ---------------------------------------------------------------------------------------------------
# Pure functions: per-token NLL of rows, gradient scores, the inner loop, the M-step


def nll(delta, frozen, rows, fmt: str = 's', *, model, view: ks.View):
  """Mean NLL of the weighted completion tokens of `rows` in format 's' (memory) or 't' (generator)."""
  p = view.merge(frozen['params'], delta, frozen['index'])
  N = rows['targets'].shape[-1]
  logits = ks._forward_tail(model, p, frozen['cms'], rows[f'{fmt}_tokens'], rows[f'{fmt}_valid'], N + 1)[:, :N]
  lp_BN = losses.token_logprobs(logits, rows['targets'])
  w = rows['weights']
  return -jnp.sum(lp_BN * w) / jnp.maximum(jnp.sum(w), 1.0)


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def grad_scores(delta, frozen, rows, probe, *, model, view):
  """(cosine [M], norm [M]) of each row's SFT gradient, cosine against the gradient of tau (the probe NLL)."""
  loss = functools.partial(nll, model=model, view=view)
  g_p = _flat(jax.grad(loss)(delta, frozen, probe))
  one = lambda r: _flat(jax.grad(loss)(delta, frozen, jax.tree.map(lambda x: x[None], r)))
  g_MN = jax.vmap(one)(rows)
  norm_M = jnp.linalg.norm(g_MN, axis=1)
  cos_M = g_MN @ g_p / jnp.maximum(norm_M * jnp.linalg.norm(g_p), 1e-20)
  return cos_M, norm_M


def inner_copy(delta0, frozen, row, *, model, view, tx, steps: int, unroll: bool | int = True):
  """One isolated copy of delta0 fine-tuned `steps` SFT steps on one dream row [1, L]: (copy, losses[steps]).
  Unrolled by default: a handful of steps; straight-line code lets XLA fuse across steps and count FLOPs
  exactly (few_shot_arc's test-time training keeps a rolled loop: `unroll=1`)."""
  loss = functools.partial(nll, model=model, view=view)

  def body(carry, _):
    d, o = carry
    l, g = jax.value_and_grad(loss)(d, frozen, row)
    u, o = tx.update(g, o, d)
    return (optax.apply_updates(d, u), o), l

  (d, _), ls = jax.lax.scan(body, (delta0, tx.init(delta0)), None, length=steps, unroll=unroll)
  return d, ls


def inner_one(delta0, frozen, row, probe, *, model, view, tx, steps: int):
  """One isolated copy (`inner_copy`), scored: (tau(copy), losses[steps])."""
  d, ls = inner_copy(delta0, frozen, row, model=model, view=view, tx=tx, steps=steps)
  return nll(d, frozen, probe, model=model, view=view), ls


def inner_vmapped(delta0, frozen, rows_K, probe, *, model, view, tx, steps: int):
  """All copies at once: `inner_one` vmapped over the K kept dreams (rows_K leaves [K, 1, L]); also tau(original)."""
  f = functools.partial(inner_one, model=model, view=view, tx=tx, steps=steps)
  tau_K, loss_KS = jax.vmap(f, in_axes=(None, None, 0, None))(delta0, frozen, rows_K, probe)
  tau0 = nll(delta0, frozen, probe, model=model, view=view)
  return tau_K, tau0, loss_KS


def mstep_update(state, frozen, rows, *, model, view, tx, gw: float, mw: float, skip_nonfinite: bool = False):
  """One ReST-EM M-step update of `delta` on reward-weighted dream rows (generator and memory formats).
  `skip_nonfinite`: a non-finite loss or gradient leaves delta and moments unchanged (guard.py)."""
  def loss(delta):
    l = jnp.zeros((), jnp.float32)
    if gw:
      l = l + gw * nll(delta, frozen, rows, 't', model=model, view=view)
    if mw:
      l = l + mw * nll(delta, frozen, rows, 's', model=model, view=view)
    return l
  l, g = jax.value_and_grad(loss)(state['delta'])
  u, opt = tx.update(g, state['opt_state'], state['delta'])
  delta = optax.apply_updates(state['delta'], u)
  g_norm = optax.tree.norm(g)
  if skip_nonfinite:
    delta, opt = guard_lib.keep_if(guard_lib.finite(l, g_norm), (delta, opt), (state['delta'], state['opt_state']))
  return {'step': state['step'] + 1, 'delta': delta, 'opt_state': opt}, {'loss': l, 'grad_norm': g_norm}


@jax.jit
def _scale_b(b_SRD, active_S, scale):
  return jnp.where(active_S[:, None, None], b_SRD, b_SRD * scale)


def scale_inactive_experts(params, cms, scale: float):
  """Params with every *inactive* expert's B multiplied by `scale` (active experts untouched), so the random
  experts switched on while dreaming perturb more (or less); the function without a 'dream' rng is unchanged."""
  out = dict(params)
  for lk, c in cms.items():
    mlp = dict(params[lk]['mlp'])
    mlp['expert_b'] = _scale_b(mlp['expert_b'], c['mlp']['active'], jnp.float32(scale))
    out[lk] = {**params[lk], 'mlp': mlp}
  return out


def inner_optimizer(dcfg: DreamConfig):
  """Each isolated copy's fine-tune (Adam at inner_lr)."""
  return train.optimizer('adam', dcfg.inner_lr, grad_clip=dcfg.grad_clip)


def make_optimizer(dcfg: DreamConfig):
  """The M-step's (AdamW at lr, no decay)."""
  return train.optimizer('adamw', dcfg.lr, grad_clip=dcfg.grad_clip)


# ---------------------------------------------------------------------------------------------------
# Host side


class Dreamer:
  """Runs Dreaming for one sleep: `Dreamer(model, dcfg, tok, sampler).run(params, cms, index, view, tasks, rng)`.

  The jitted functions are built once per View (`self.fns(view)`), so every sleep and round of a run reuses them.
  """

  def __init__(self, model, dcfg: DreamConfig, tokenizer, sampler, *, batch_multiple: int = 1,
               batch_sharding=None, guard: guard_lib.NonFiniteGuard | None = None):
    self.model, self.dcfg, self.tok, self.sampler = model, dcfg, tokenizer, sampler
    self.guard = guard or guard_lib.NonFiniteGuard()
    self.batch_multiple, self.batch_sharding = batch_multiple, batch_sharding
    self.tx, self.inner_tx = make_optimizer(dcfg), inner_optimizer(dcfg)
    self._fns = {}

  def _rows(self, n: int) -> int:
    return -(-n // self.batch_multiple) * self.batch_multiple

  @property
  def n_gen(self) -> int:
    return bucket(self.dcfg.max_new_tokens, self.sampler.gen_buckets, 'dream', 'gen')

  def fns(self, view: ks.View) -> dict:
    if view not in self._fns:
      d, kw = self.dcfg, dict(model=self.model, view=view)
      self._fns[view] = {
          'scores': jax.jit(functools.partial(grad_scores, **kw)),
          'inner': jax.jit(functools.partial(inner_vmapped, tx=self.inner_tx, steps=d.inner_steps, **kw)),
          'inner_one': jax.jit(functools.partial(inner_one, tx=self.inner_tx, steps=d.inner_steps, **kw)),
          'tau': jax.jit(functools.partial(nll, **kw)),
          'mstep': jax.jit(functools.partial(mstep_update, tx=self.tx, gw=d.generator_weight,
                                             mw=d.memory_weight, skip_nonfinite=self.guard.skip, **kw),
                             donate_argnums=0),
          'merge': ks._merge_jit(view)}   # the one jitted merge Knowledge Seeding also uses: one compilation
    return self._fns[view]

  def init_state(self, params, index, view) -> dict:
    return ks.init_state(params, index, view, self.tx)

  def state_tree(self, params, index, view) -> dict:
    return ks.state_tree(params, index, view, self.tx)

  def _put(self, rows: dict, lead: int = 0) -> dict:
    """Rows onto the mesh: axis `lead` (the dream/row axis) split over the batch axes."""
    if self.batch_sharding is None:
      return rows
    sh = self.batch_sharding
    spec = [None] * lead + [sh.spec[0]]
    s = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.device_put(rows, jax.tree.map(lambda _: s, rows))

  def _chat(self, text: str) -> list[int]:
    return self.tok.chat_tokens([{'role': 'user', 'content': text}])

  def probe_rows(self, task: DreamTask) -> dict:
    prompts = [self._chat(p) for p, _ in task.probe]
    ys = [self.tok.encode(' ' + t.strip()) + [self.tok.eos_id] for _, t in task.probe]
    # probe targets are given text, not generated: bucketed like prompts
    n_gen = bucket(max(len(y) for y in ys), self.sampler.prompt_buckets, 'dream probe target', 'prompt')
    return completion_rows(prompts, prompts, ys, pad_id=self.sampler.pad_id, n_rows=self._rows(len(ys)),
                           buckets=self.sampler.prompt_buckets, n_gen=n_gen)

  def generate(self, params, cms, task: DreamTask, rng, random_expert: bool | None = None):
    """m dreams for one context: (list of token lists, per-dream request index)."""
    d = self.dcfg
    which = [i % len(task.gen_prompts) for i in range(d.n_dreams)]
    prompts = [self._chat(task.gen_prompts[w]) for w in which]
    use_re = d.random_expert if random_expert is None else random_expert
    k_sample, k_dream = jax.random.split(rng)
    if use_re and d.expert_scale != 1.0:
      params = scale_inactive_experts(params, cms, d.expert_scale)
    o = self.sampler(params, prompts, max_new_tokens=d.max_new_tokens, rng=k_sample, temperature=d.temperature,
                     cms=cms, dream_key=k_dream if use_re else None)
    return [list(map(int, t[m])) for t, m in zip(o.tokens, o.mask)], which

  def dream_rows(self, task: DreamTask, ys, which, n_rows: int, row_w=None) -> dict:
    return completion_rows([self._chat(task.mem_prompts[w]) for w in which],
                           [self._chat(task.gen_prompts[w]) for w in which], ys, pad_id=self.sampler.pad_id,
                           n_rows=n_rows, buckets=self.sampler.prompt_buckets, n_gen=self.n_gen, row_w=row_w)

  def select(self, cos, norm, valid, r_np) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, scores): top-k by score among valid dreams, plus b random others."""
    d = self.dcfg
    ok = np.flatnonzero(valid)
    score = {'cosine': cos, 'norm': norm, 'random': np.zeros(len(valid))}[d.selection]
    if d.selection == 'random':
      kept = r_np.permutation(ok)[:d.n_kept]
    else:
      top = ok[np.argsort(-score[ok], kind='stable')][:d.top_k]
      rest = np.setdiff1d(ok, top)
      kept = np.concatenate([top, r_np.permutation(rest)[:d.n_random]])
    return kept.astype(int), score

  def round(self, state, params, cms, index, view, task: DreamTask, rng, probe=None) -> tuple[dict, dict]:
    """One ReST-EM round on one context: generate, select, test in isolated copies, reward, M-step."""
    d, f = self.dcfg, self.fns(view)
    index_a = ks._index_arrays(index)
    frozen = {'params': params, 'cms': cms, 'index': index_a}
    probe = self._put(probe if probe is not None else self.probe_rows(task))
    t0 = time.perf_counter()
    gen_params = f['merge'](params, state['delta'], index_a)
    ys, which = self.generate(gen_params, cms, task, jax.random.fold_in(rng, 0))
    del gen_params
    valid = np.array([len(y) > 0 for y in ys])
    t1 = time.perf_counter()
    r_np = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(rng, 1))).ravel().tolist())
    cos = norm = np.zeros(len(ys), np.float32)
    if d.selection != 'random':
      rows = self._put(self.dream_rows(task, ys, which, self._rows(len(ys))))
      cos, norm = (sharding.to_host(x)[:len(ys)] for x in f['scores'](state['delta'], frozen, rows, probe))
    kept, score = self.select(cos, norm, valid, r_np)
    t2 = time.perf_counter()
    K = self._rows(d.n_kept)
    info = {'n_dreams': len(ys), 'n_valid': int(valid.sum()), 'kept': kept.tolist(),
            'cos': cos.tolist(), 'norm': norm.tolist(), 'dream_tokens': float(np.mean([len(y) for y in ys]))}
    if len(kept) == 0:
      return state, dict(info, reward_rate=0.0, rewards=[], gen_s=t1 - t0, select_s=t2 - t1)
    kr_host = self.dream_rows(task, [ys[i] for i in kept], [which[i] for i in kept], K)
    kr = self._put(jax.tree.map(lambda x: x[:, None], kr_host))
    tau_K, tau0, loss_KS = f['inner'](state['delta'], frozen, kr, probe)
    tau_K, tau0, loss_KS = sharding.to_host(tau_K)[:len(kept)], float(tau0), sharding.to_host(loss_KS)
    phase, where = 'sleep/dreaming', f'{int(state["step"])} M-steps done (context {task.name!r})'
    # A dream whose isolated fine-tune is not finite is not rewarded (NaN < x is False) when skipping.
    self.guard.check(phase, where, {'probe NLL tau_orig': tau0, 'probe NLL of the fine-tuned copies': tau_K})
    reward = (tau_K < tau0 - d.reward_margin).astype(np.float32)
    t3 = time.perf_counter()
    m_loss = []
    if reward.any() and d.mstep_steps:
      row_w = np.zeros((K, 1), np.float32)
      row_w[:len(kept), 0] = reward
      mr = self._put(dict(kr_host, weights=kr_host['weights'] * row_w))   # the same rows, reward-weighted
      for j in range(d.mstep_steps):
        state, m = f['mstep'](state, frozen, mr)
        m = {k: float(v) for k, v in m.items()}
        self.guard.check(phase, f'M-step {j + 1} of {where}', {'M-step loss': m['loss'],
                                                                'M-step grad_norm': m['grad_norm']})
        m_loss.append(m['loss'])
    t4 = time.perf_counter()
    info.update(reward_rate=float(reward.mean()), rewards=reward.tolist(), tau_orig=tau0, tau_copies=tau_K.tolist(),
                inner_loss=np.asarray(loss_KS)[:len(kept)].tolist(), mstep_loss=m_loss,
                gen_s=t1 - t0, select_s=t2 - t1, inner_s=t3 - t2, mstep_s=t4 - t3,
                examples=[self.tok.decode(ys[i]) for i in kept[:2]])
    return state, info

  def run(self, params, cms, index, view: ks.View, tasks: Sequence[DreamTask], rng, *, state: dict | None = None,
          on_round: Callable | None = None, progress_desc: str = 'sleep/dream') -> tuple[dict, list[dict]]:
    """`dcfg.rounds` ReST-EM rounds over every context (from `state`, e.g. a resumed one, whose 'round' counts
    completed rounds). Returns (state, per-round records with the reward rate)."""
    if not tasks:
      raise ValueError('Dreaming got no contexts: the memory buffer is empty')
    state = self.init_state(params, index, view) if state is None else state
    state = dict(state)
    start = int(state.pop('round', 0))
    probes = [self.probe_rows(t) for t in tasks]
    history = []
    bar = progress(range(start, self.dcfg.rounds), desc=progress_desc)
    for r in bar:
      recs = []
      for t_i, task in enumerate(tasks):
        state, info = self.round(state, params, cms, index, view, task, jax.random.fold_in(rng, r * 1000 + t_i),
                                 probes[t_i])
        recs.append(dict(info, context=task.name))
      rewards = [x for rec in recs for x in rec['rewards']]
      h = {'round': r + 1, 'reward_rate': float(np.mean(rewards)) if rewards else 0.0, 'contexts': recs}
      history.append(h)
      bar.set_metrics({'reward_rate': h['reward_rate']})
      if on_round is not None:
        on_round(r + 1, dict(state, round=jnp.int32(r + 1)), h)
    return dict(state, round=jnp.int32(self.dcfg.rounds)), history

  def commit(self, params, state, index, view) -> Any:
    return self.fns(view)['merge'](params, state['delta'], ks._index_arrays(index))

  def self_edit_finetune(self, params, cms, index, view, tasks: Sequence[DreamTask], rng, *, steps: int | None = None):
    """SEAL-style baseline: self-generated edits (no random expert, no selection, no reward) applied by SFT in
    the memory format to `delta`; no consolidation, no ReST-EM. Returns (params, history)."""
    d, f = self.dcfg, self.fns(view)
    index_a = ks._index_arrays(index)
    frozen = {'params': params, 'cms': cms, 'index': index_a}
    state = self.init_state(params, index, view)
    hist = []
    for t_i, task in enumerate(tasks):
      ys, which = self.generate(params, cms, task, jax.random.fold_in(rng, t_i), random_expert=False)
      rows = self._put(self.dream_rows(task, ys, which, self._rows(len(ys))))
      rows_mem = dict(rows, t_tokens=rows['s_tokens'], t_valid=rows['s_valid'])   # memory format only
      for j in range(steps or d.mstep_steps * d.rounds):
        state, m = f['mstep'](state, frozen, rows_mem)
        m = {k: float(v) for k, v in m.items()}
        self.guard.check('self-edit fine-tune', f'{j + 1} (context {task.name!r})', m)
        hist.append(m['loss'])
    return self.commit(params, state, index, view), hist


def plot_reward_rates(curves: dict, path: str, title: str = 'Dreaming: ReST-EM reward rate per round') -> None:
  """`curves`: name -> list of runs (seeds or sleeps), each a list of per-round reward rates. Mean line with
  the runs' min-max band per name."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, runs in curves.items():
    runs = [r for r in runs if r]
    if not runs:
      continue
    n = min(len(r) for r in runs)
    a = np.asarray([r[:n] for r in runs], float)
    x = np.arange(1, n + 1)
    ax.plot(x, a.mean(0), marker='o', label=f'{name} (n={len(runs)})')
    if len(runs) > 1:
      ax.fill_between(x, a.min(0), a.max(0), alpha=0.2)
  ax.set_xlabel('ReST-EM round')
  ax.set_ylabel('reward rate (kept dreams that helped)')
  ax.set_ylim(-0.05, 1.05)
  ax.set_xticks(range(1, max([len(r) for rs in curves.values() for r in rs] + [1]) + 1))
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
