"""The performance suite: sleep_jax against Hugging Face transformers / PyTorch and against this machine's limits.

  make bench                                   # = python -m experiments.benchmarks.suite (table + JSON)
  python -m experiments.benchmarks.suite --models=tiny --reps=1 --skip_hf      # seconds: checks the script
  python -m experiments.benchmarks.suite --sections=compile                    # only the recompilation check

One process, both stacks side by side on the same CPU threads, the same architecture and the same weights (ours
exported by `sleep_jax.io.save_hf`, loaded by `LlamaForCausalLM.from_pretrained`), float32 on CPU. Every time is
the median of --reps timed repetitions after one untimed warm-up (which holds our compilation; compile times are
reported separately). Sections (--sections):

  limits    this machine's float32 matmul peak (a 2048^3 matmul, JAX and torch) and gemv bandwidth
  sampler   tokens/s, batch 1 and 8, 64-token prompts, exactly 128 new greedy tokens, vs HF `generate`
  train     train-step tokens/s (batch 8 x 256, AdamW): all parameters, and expert-only (a new rank-16 expert in
            every layer, base frozen; ours also without skipping the frozen gradients, the before/after of
            `train.trainable_value_and_grad`), vs the HF model with the same optimizer (frozen base +
            the same expert modules in PyTorch); model FLOP/s and their fraction of the matmul peak
  ks        one Knowledge Seeding step (student sampling of G completions + the jitted update: teacher scoring,
            student forward/backward, AdamW on the new experts) vs the same computation written plainly in
            PyTorch (HF generate + teacher forward + student JSD/policy-gradient backward + AdamW)
  dream     Dreaming's inner loop (8 isolated LoRA copies, vmapped) vs the sequential Python loop
            (experiments/benchmarks/dreaming.py; PyTorch has no peer of one vmapped program)
  compile   compilations (jax.monitoring) and compile time per jitted function over a wake stream of 10 vs 100
            steps and a cycle with 1 vs 2 sleeps (tiny model: counts depend on shapes, not sizes); must be equal
  gpu       only with a GPU backend: bfloat16 train step of a 1B-class Llama and its model FLOPs utilisation

Models (--models): 'smollm2' (SmolLM2-135M-Instruct, the package's GGUF) and 'tiny' (configs/base.tiny_model).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import platform
import tempfile
import time

from absl import app, flags, logging

from experiments.benchmarks import timing

SECTIONS = ('limits', 'sampler', 'train', 'ks', 'dream', 'compile', 'gpu')


def define_flags():
  """The command-line flags, defined only when run as a program (tests import this module)."""
  flags.DEFINE_integer('reps', 3, 'Timed repetitions per measurement (median reported).')
  flags.DEFINE_list('models', ['tiny', 'smollm2'], "'tiny' and/or 'smollm2'.")
  flags.DEFINE_list('sections', list(SECTIONS), f'Any of {SECTIONS}.')
  flags.DEFINE_string('out', 'runs/bench_suite.json', 'Where the JSON results go.')
  flags.DEFINE_bool('skip_hf', False, 'Measure only sleep_jax (no torch / transformers needed).')
  flags.DEFINE_enum('gpu_size', '1b', list(GPU_SIZES), "The 'gpu' section's model and batch: '1b' = Llama-3.2-1B "
                    "shapes, batch 8 x 2048; 'tiny' = seconds on CPU (checks the code path, e.g. gpu_check.sh --tiny).")
  flags.DEFINE_bool('gpu_any_backend', False, "Run the 'gpu' section on any backend (default: only on a GPU).")


SAMPLE_P, SAMPLE_N, TRAIN_B, TRAIN_L, EXPERT_RANK = 64, 128, 8, 256, 16
_med = lambda fn, reps: timing.median_time(fn, reps)[0]


# ---- models --------------------------------------------------------------------------------------------------


def load_model(name: str):
  """(ModelConfig, host params) of a plain Llama: the package's SmolLM2-135M or the tiny test architecture."""
  import jax
  from sleep_jax import io as sio
  if name == 'smollm2':
    return sio.load_gguf(sio.default_model_path())
  if name != 'tiny':
    raise ValueError(f"--models: {name!r} is not one of 'tiny', 'smollm2'")
  from configs import base
  from sleep_jax.build import model_config_from
  from sleep_jax.models.llama import Transformer
  cfg = model_config_from(base.tiny_model())
  params = Transformer(cfg).init(jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32))['params']
  import flax.linen as nn
  return cfg, jax.device_get(nn.meta.unbox(params))


def with_experts(cfg, params):
  """The same model with one active rank-16 expert per layer (B random, so every term is live)."""
  import jax
  from sleep_jax import growth
  from sleep_jax.models import cms
  cfg2, p, c, _, _ = growth.grow_pool(cfg, params, {}, jax.random.key(1), n_experts=1, expert_rank=EXPERT_RANK)
  for i in range(cfg.n_layers):
    p, c, _ = cms.activate_expert(p, c, i, 0)
    mlp = p[f'layers_{i}']['mlp']
    b = 0.02 * jax.random.normal(jax.random.key(100 + i), mlp['expert_b'].shape)
    r = 0.1 * jax.random.normal(jax.random.key(200 + i), mlp['router'].shape)
    p = {**p, f'layers_{i}': {**p[f'layers_{i}'], 'mlp': {**mlp, 'expert_b': b, 'router': r}}}
  return cfg2, jax.device_get(p), c


def strip_experts(params):
  return {k: ({**v, 'mlp': {n: w for n, w in v['mlp'].items() if n in ('w_gate', 'w_up', 'w_down')}}
              if k.startswith('layers_') else v) for k, v in params.items()}


def train_flops(cfg, B, L, expert_only=False) -> float:
  """Model FLOPs of one train step: 6 x params x tokens + attention scores/values (fwd + bwd). Expert-only:
  forward 2N + activation gradients 2N through the whole model, weight gradients (2 x expert params) only."""
  attn = 6 * 2 * cfg.n_layers * B * L * L * cfg.n_heads * cfg.head_dim
  if not expert_only:
    return 6 * cfg.num_params() * B * L + attn
  n_exp = cfg.n_layers * cfg.n_experts * (2 * cfg.d_model * cfg.expert_rank + cfg.d_model)
  return (4 * cfg.num_params() + 2 * n_exp) * B * L + attn


# ---- ours ----------------------------------------------------------------------------------------------------


def _mesh_and_put(model, params):
  from sleep_jax import sharding
  from sleep_jax.build import abstract_params
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  sh = sharding.logical_shardings(abstract_params(model), mesh, sharding.DEFAULT_RULES)
  return mesh, sh, sharding.put_tree(params, sh)


def ours_sampler(cfg, params, prompts_BP, reps):
  import jax
  from sleep_jax.models.llama import Transformer
  from sleep_jax.sampling import Sampler
  model = Transformer(cfg)
  mesh, sh, p = _mesh_and_put(model, params)
  sampler = Sampler(model, cfg, pad_id=0, eos_ids=[-1], prompt_buckets=(prompts_BP.shape[1],),
                    gen_buckets=(SAMPLE_N,), mesh=mesh, param_shardings=sh)
  out = {}

  def sample():
    o = sampler(p, [list(r) for r in prompts_BP], max_new_tokens=SAMPLE_N, rng=jax.random.key(0), temperature=0.0)
    assert o.mask.all()
    out['tokens'] = o.tokens
  return _med(sample, reps), out['tokens']


def ours_train(cfg, params, cms, reps, trainable='.*', skip_frozen=True, B=TRAIN_B, L=TRAIN_L):
  """(seconds per AdamW train step on a B x L batch, XLA's FLOP count of the compiled step, the first loss)."""
  import jax
  import ml_collections as mlc
  import numpy as np
  from sleep_jax import sharding, train
  from sleep_jax.models.llama import Transformer
  model = Transformer(cfg)
  mesh, sh, p = _mesh_and_put(model, params)
  ocfg = mlc.ConfigDict(dict(name='adamw', lr=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                             trainable=trainable))
  tx = train.make_optimizer(ocfg, p)
  state = train.init_state(p, tx, jax.device_get(cms) if cms else None)   # the step donates its state
  st_sh = train.state_shardings(state, sh, mesh)
  state = {'s': jax.device_put(state, st_sh)}
  bsh = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
  step = train.make_train_step(model, tx, st_sh, bsh, labels=train.optimizer_labels(ocfg, p) if skip_frozen else None)
  seq = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, L + 1)).astype(np.int32)
  batch = jax.device_put({'inputs': seq[:, :-1], 'targets': seq[:, 1:], 'weights': np.ones((B, L), np.float32)}, bsh)
  xla_flops = timing.compiled_flops(step, state['s'], batch) * mesh.size   # XLA counts one device's share

  losses = []

  def step_once():
    state['s'], m = step(state['s'], batch)
    losses.append(float(m['loss']))
  return _med(step_once, reps), xla_flops, losses[0]


# ---- Hugging Face / PyTorch peers ----------------------------------------------------------------------------


def hf_model(folder, experts=None):
  """HF LlamaForCausalLM from `folder`; `experts` {layer: expert index j} adds our CMS expert j of that layer
  (from `experts['params']`) to the layer's MLP, in PyTorch."""
  import torch
  from transformers import LlamaForCausalLM
  model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
  for i, j in (experts or {}).get('index', {}).items():
    m, layer = experts['params'][f'layers_{i}']['mlp'], model.model.layers[i]
    layer.mlp = torch_expert(layer.mlp, m['expert_a'][j], m['expert_b'][j], m['router'][:, j])
  return model


@functools.cache
def _torch_expert_class():
  import numpy as np
  import torch

  class TorchExpertMLP(torch.nn.Module):
    """base(x) + sigmoid(x . r) * ((x @ A) @ B): the CMS block with one active expert, written plainly."""

    def __init__(self, base, a, b, router):
      super().__init__()
      t = lambda x: torch.nn.Parameter(torch.tensor(np.array(x), dtype=torch.float32))
      self.base, self.a, self.b, self.router, self.enabled = base, t(a), t(b), t(router), True

    def forward(self, x):
      y = self.base(x)
      if not self.enabled:   # the teacher's pass in the KS step: the plain model
        return y
      return y + torch.sigmoid(x @ self.router)[..., None] * ((x @ self.a) @ self.b)
  return TorchExpertMLP


def torch_expert(base, a, b, router):
  """A PyTorch MLP wrapper holding our expert (A [D,R], B [R,D], router column [D]); torch imported lazily."""
  return _torch_expert_class()(base, a, b, router)


def hf_sampler(model, prompts_BP, reps):
  import torch
  ids = torch.as_tensor(prompts_BP, dtype=torch.long)
  out = {}

  def sample():
    with torch.inference_mode():
      o = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=SAMPLE_N,
                         min_new_tokens=SAMPLE_N, do_sample=False, pad_token_id=0)
    out['tokens'] = o[:, ids.shape[1]:].numpy()
  model.eval()
  return _med(sample, reps), out['tokens']


def hf_train(model, vocab, reps, expert_only=False):
  import numpy as np
  import torch
  model.train()
  if expert_only:
    for n, p in model.named_parameters():
      p.requires_grad_(n.endswith(('.a', '.b', '.router')))
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  seq = torch.as_tensor(np.random.default_rng(0).integers(0, vocab, (TRAIN_B, TRAIN_L + 1)), dtype=torch.long)

  losses = []

  def step_once():
    logits = model(seq[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss))
  t = _med(step_once, reps)
  for p in model.parameters():
    p.requires_grad_(True)
  return t, losses[0]   # the first step's loss (initial weights): must equal ours (same computation)


# ---- sections ------------------------------------------------------------------------------------------------


def limits(reps):
  import jax
  import jax.numpy as jnp
  out = {'jax_matmul_gflops': timing.matmul_peak_gflops(reps)}
  for B in (1, 8):   # a decode step reads every weight once: 30 distinct 576 x 1536 matrices times B rows
    ws = [jax.random.normal(jax.random.key(i), (576, 1536)) for i in range(30)]
    x = jnp.ones((B, 576))
    gemv = jax.jit(lambda x, ws: [x @ w for w in ws])
    t = _med(lambda: jax.block_until_ready(gemv(x, ws)), max(reps, 3))
    out[f'jax_gemv_b{B}_gb_s'] = 30 * 576 * 1536 * 4 / t / 1e9
  with contextlib.suppress(ImportError):
    import torch
    a = torch.randn(2048, 2048)
    out['torch_matmul_gflops'] = 2 * 2048 ** 3 / _med(lambda: a @ a, max(reps, 3)) / 1e9
    out['torch_threads'] = torch.get_num_threads()
  return out


def model_sections(name, sections, reps, skip_hf):
  import numpy as np
  cfg, params = load_model(name)
  rec = {'model': name, 'params_m': cfg.num_params() / 1e6}
  hf_dir = None
  stack = contextlib.ExitStack()
  if not skip_hf:
    from sleep_jax.io import save_hf
    hf_dir = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), 'm')
    save_hf(hf_dir, cfg, params)
  with stack:
    if 'sampler' in sections:
      for B in (1, 8):
        prompts = np.random.default_rng(B).integers(100, cfg.vocab_size, (B, SAMPLE_P)).astype(np.int32)
        t, toks = ours_sampler(cfg, params, prompts, reps)
        r = {'ours_tok_s': B * SAMPLE_N / t}
        if hf_dir:
          th, htoks = hf_sampler(hf_model(hf_dir), prompts, reps)
          r.update(hf_tok_s=B * SAMPLE_N / th, greedy_agreement=float((toks == htoks).mean()))
        rec[f'sampler_b{B}'] = r
        logging.warning('%s sampler B=%d: %s', name, B, r)
    if 'train' in sections:
      t, fl, loss = ours_train(cfg, params, None, reps)
      r = {'ours_s': t, 'ours_tok_s': TRAIN_B * TRAIN_L / t, 'model_flops': train_flops(cfg, TRAIN_B, TRAIN_L),
           'xla_flops': fl, 'ours_loss': loss}
      if hf_dir:
        r['hf_s'], r['hf_loss'] = hf_train(hf_model(hf_dir), cfg.vocab_size, reps)
      rec['train_full'] = r
      logging.warning('%s train full: %s', name, r)
      ecfg, eparams, ecms = with_experts(cfg, params)
      pat = 'expert_a|expert_b|router'
      t, fl, loss = ours_train(ecfg, eparams, ecms, reps, trainable=pat)
      t0, fl0, _ = ours_train(ecfg, eparams, ecms, reps, trainable=pat, skip_frozen=False)
      r = {'ours_s': t, 'ours_tok_s': TRAIN_B * TRAIN_L / t, 'ours_all_grads_s': t0, 'xla_flops': fl, 'ours_loss': loss,
           'xla_flops_all_grads': fl0, 'model_flops': train_flops(ecfg, TRAIN_B, TRAIN_L, expert_only=True)}
      if hf_dir:
        r['hf_s'], r['hf_loss'] = hf_train(hf_model(hf_dir, {'params': eparams, 'index': dict.fromkeys(
            range(cfg.n_layers), 0)}), cfg.vocab_size, reps, expert_only=True)
      rec['train_expert'] = r
      logging.warning('%s train expert-only: %s', name, r)
    if 'ks' in sections:
      rec['ks'] = ks_section(name, reps, skip_hf)
    if 'dream' in sections:
      from experiments.benchmarks import dreaming
      rec['dream'] = dreaming.bench_model(name, reps, 8, split_round=False)
      logging.warning('%s dream inner loop: vmapped %.3f s, loop %.3f s', name, rec['dream']['vmapped_s'],
                      rec['dream']['loop_s'])
  return rec


def ks_section(name, reps, skip_hf):
  """One Knowledge Seeding step, ours vs plain PyTorch on the same batch shapes, weights and expert."""
  import jax
  from experiments.benchmarks import consolidation
  S = consolidation.setup(name == 'tiny', eos_ids=[-1])
  kcfg, sampler, batch, prompts = S['kcfg'], S['sampler'], S['batch'], S['prompts']
  update = S['seeder'].update_fn(S['view'])
  st = {'s': S['state']}

  def ours_sample():
    o = sampler(S['merged'], prompts, max_new_tokens=kcfg.max_new_tokens, rng=jax.random.key(2),
                temperature=kcfg.temperature, cms=S['cms'])
    assert o.mask.all()

  losses = []

  def ours_update():
    st['s'], m = update(st['s'], S['frozen'], batch)
    losses.append(float(m['loss']))
  rec = {'rows': {k: list(v.shape) for k, v in batch.items() if k in ('s_tokens', 't_tokens')},
         'completions': len(prompts), 'new_tokens': kcfg.max_new_tokens, 'receiver_layers': len(S['layers']),
         'ours_sample_s': _med(ours_sample, reps), 'ours_update_s': _med(ours_update, reps), 'ours_loss': losses[0]}
  if not skip_hf:
    rec.update(torch_ks(S, reps))
  logging.warning('%s KS step: %s', name, rec)
  return rec


def torch_ks(S, reps):
  """The same step in PyTorch: HF generate of the G completions with the student, then teacher forward, student
  forward/backward of alpha * JSD(beta) + (1 - alpha) * policy gradient over the completion tokens, AdamW."""
  import math
  import jax
  import numpy as np
  import torch
  from sleep_jax.io import save_hf
  b, kcfg, layers, index = S['b'], S['kcfg'], S['layers'], S['index']
  plain_cfg = __import__('dataclasses').replace(b.cfg, n_experts=0, expert_rank=0)
  sp = jax.device_get(S['merged'])
  with tempfile.TemporaryDirectory() as d:
    save_hf(os.path.join(d, 'm'), plain_cfg, strip_experts(sp))
    model = hf_model(os.path.join(d, 'm'), {'params': sp, 'index': {i: int(index[f'layers_{i}']) for i in layers}})
  experts = [model.model.layers[i].mlp for i in layers]
  for n, p in model.named_parameters():
    p.requires_grad_(n.endswith(('.a', '.b', '.router')))
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=kcfg.lr, betas=(kcfg.b1, kcfg.b2))
  bt = {k: torch.as_tensor(np.asarray(v)) for k, v in S['batch'].items()}
  N = bt['targets'].shape[1]
  P = max(len(p) for p in S['prompts'])
  ids = torch.zeros((len(S['prompts']), P), dtype=torch.long)
  am = torch.zeros_like(ids)
  for r, p in enumerate(S['prompts']):
    ids[r, P - len(p):], am[r, P - len(p):] = torch.as_tensor(p), 1

  def sample():
    model.eval()
    with torch.inference_mode():
      model.generate(ids, attention_mask=am, max_new_tokens=kcfg.max_new_tokens, min_new_tokens=kcfg.max_new_tokens,
                     do_sample=True, temperature=kcfg.temperature, top_k=0, pad_token_id=0)

  def tail_logits(tokens, valid):
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    return model(tokens, attention_mask=valid.long(), position_ids=pos, logits_to_keep=N + 1).logits[:, :N]

  losses = []

  def update():
    model.train()
    with torch.no_grad():
      for e in experts:
        e.enabled = False
      t_logits = tail_logits(bt['t_tokens'], bt['t_valid'])
      for e in experts:
        e.enabled = True
    s_logits = tail_logits(bt['s_tokens'], bt['s_valid'])
    w, n_tok = bt['weights'], bt['weights'].sum(1).clamp(min=1.0)
    lt, ls = torch.log_softmax(t_logits, -1), torch.log_softmax(s_logits, -1)
    beta = kcfg.beta
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    d = beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    div = ((d * w).sum(1) / n_tok * bt['div_w']).sum()
    lp = ls.gather(-1, bt['targets'].long()[..., None])[..., 0]
    pg = -(bt['adv'] * ((lp * w).sum(1) / n_tok) * bt['pg_w']).sum()
    loss = kcfg.alpha * div + (1 - kcfg.alpha) * pg
    losses.append(float(loss))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], kcfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
  return {'torch_sample_s': _med(sample, reps), 'torch_update_s': _med(update, reps), 'torch_loss': losses[0]}


class CompileCounter:
  """Backend compilations (jax.monitoring '/jax/core/compile/backend_compile_duration'), per function name."""

  def __init__(self):
    from jax import monitoring
    self.events, self.on = [], False
    monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, name, secs, **kw):
    if self.on and name == '/jax/core/compile/backend_compile_duration':
      self.events.append((kw.get('fun_name', '?'), secs))

  @contextlib.contextmanager
  def count(self):
    start = len(self.events)
    self.on = True
    box = {}
    try:
      yield box
    finally:
      self.on = False
      ev = self.events[start:]
      per = collections.defaultdict(lambda: [0, 0.0])
      for n, s in ev:
        per[n][0] += 1
        per[n][1] += s
      box.update(n=len(ev), secs=sum(s for _, s in ev), per_fn={k: tuple(v) for k, v in per.items()})


def compile_section(wake_steps=(10, 100), sleep_steps=((2, 2), (6, 4)), two_sleeps=True):
  """Backend compilations of tiny runs whose only difference is the number of steps: a wake stream of 10 vs 100
  steps, and a wake/sleep cycle whose sleep runs (Knowledge Seeding steps, Dreaming rounds) = (2, 2) vs (6, 4).
  Equal counts = no recompilation as a run gets longer. The caches are cleared before each run, so each counts
  everything it compiles from scratch. `two_sleeps` adds a cycle over twice the documents (two sleeps): its
  extra compilations are the new documents' prompt/row length buckets (each bucket compiles once)."""
  import jax
  from configs import sleep as sleep_config
  from configs import wake as wake_config
  from sleep_jax import jobs
  counter = CompileCounter()
  out = {}

  def measure(key, job, c, d):
    jax.clear_caches()
    t0 = time.perf_counter()
    with counter.count() as box:
      res = job(c, os.path.join(d, key))
    out[key] = dict(box, wall_s=time.perf_counter() - t0)
    return res

  with tempfile.TemporaryDirectory() as d:
    for steps in wake_steps:
      c = wake_config.get_config('smoke')
      with c.unlocked():
        c.train.steps, c.checkpoint.every = steps, 10 ** 6
      measure(f'wake, {steps} steps', jobs.wake, c, d)
    runs = [(f'wake + sleep, {k} KS steps + {r} dream rounds', k, r, 2) for k, r in sleep_steps]
    runs += [(f'wake + 2 sleeps ({sleep_steps[0][0]} + {sleep_steps[0][1]} each), twice the documents',
              *sleep_steps[0], 4)] if two_sleeps else []
    for key, k, r, n_docs in runs:
      c = sleep_config.get_config('smoke')
      with c.unlocked():
        c.sleep.ks.steps, c.sleep.dream.rounds, c.knowledge.n_docs = k, r, n_docs
      res = measure(key, jobs.run, c, d)
      out[key]['sleeps'] = len(res['sleeps'])
  return out


LLAMA_1B = dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, d_ff=8192,
                rope_base=500000.0, max_seq_len=4096)   # Llama-3.2-1B's shapes (random weights)


GPU_SIZES = {'1b': dict(model=LLAMA_1B, B=8, L=2048, peak_n=8192),
             'tiny': dict(model=dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                                     d_ff=128), B=8, L=16, peak_n=128)}
# Dense bfloat16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity), matched on device_kind.
SPEC_BF16_TFLOPS = (('H100 PCIe', 756.0), ('H100', 989.4), ('H200', 989.4), ('GH200', 989.4), ('B200', 2250.0),
                    ('A100', 312.0), ('L40S', 362.0), ('L4', 121.0), ('A10G', 70.0),
                    ('TPU v5 lite', 197.0), ('TPU v5e', 197.0), ('TPU v5p', 459.0), ('TPU v4', 275.0))


def spec_peak_tflops(device_kind: str) -> float | None:
  """The data-sheet dense bf16 peak of a device (by its `device_kind`), or None when it is not in the table."""
  for name, tf in SPEC_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tf
  return None


def gpu_section(reps, model=LLAMA_1B, B=8, L=2048, peak_n=8192):
  """bfloat16-compute train step (float32 master weights, AdamW) of a 1B-class Llama and its model FLOPs
  utilisation against this device's measured bfloat16 matmul peak (a peak_n^3 matmul)."""
  import dataclasses
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from sleep_jax.models.llama import ModelConfig, Transformer
  cfg = ModelConfig(**model, dtype='bfloat16', param_dtype='float32')
  params = jax.jit(lambda k: nn.meta.unbox(Transformer(cfg).init(k, jnp.zeros((1, 8), jnp.int32))['params']))(
      jax.random.key(0))
  a = jax.random.normal(jax.random.key(0), (peak_n, peak_n), jnp.bfloat16)
  mm = jax.jit(lambda a: a @ a)
  peak = 2 * peak_n ** 3 / _med(lambda: jax.block_until_ready(mm(a)), max(reps, 3)) / 1e12
  t, _, _ = ours_train(cfg, jax.device_get(params), None, reps, B=B, L=L)
  fl = train_flops(cfg, B, L)
  kind = str(jax.devices()[0].device_kind)
  spec = spec_peak_tflops(kind)
  return {'model': dataclasses.asdict(cfg), 'params_b': cfg.num_params() / 1e9, 'batch': [B, L], 'step_s': t,
          'tflops': fl / t / 1e12, 'bf16_matmul_peak_tflops': peak, 'mfu': fl / t / 1e12 / peak,
          'device': kind, 'backend': jax.default_backend(), 'spec_bf16_tflops': spec,
          'mfu_spec': fl / t / 1e12 / spec if spec else None}


# ---- report --------------------------------------------------------------------------------------------------


def table(res) -> str:
  lim = res.get('limits', {})
  peak = lim.get('jax_matmul_gflops')
  lines = ['| model | measurement | sleep_jax | HF / PyTorch (or loop) | ratio |', '|---|---|---:|---:|---:|']

  def row(model, what, ours, peer, unit='', higher=True):
    ratio = '' if not peer else f'{(ours / peer if higher else peer / ours):.2f}x'
    f = lambda v: '-' if v is None else f'{v:,.1f}{unit}' if v >= 10 else f'{v:,.3f}{unit}'
    lines.append(f'| {model} | {what} | {f(ours)} | {f(peer)} | {ratio} |')
  for m in res.get('models', []):
    n = m['model']
    for B in (1, 8):
      s = m.get(f'sampler_b{B}')
      if s:
        row(n, f'sampler tokens/s, batch {B} ({SAMPLE_P}+{SAMPLE_N} greedy)', s['ours_tok_s'], s.get('hf_tok_s'))
    for key, what in (('train_full', 'train step tokens/s (8x256, AdamW, all params)'),
                      ('train_expert', 'expert-only train step tokens/s (rank-16 expert/layer, base frozen)')):
      t = m.get(key)
      if t:
        tok = TRAIN_B * TRAIN_L
        row(n, what, tok / t['ours_s'], tok / t['hf_s'] if 'hf_s' in t else None)
        gf = t['model_flops'] / t['ours_s'] / 1e9
        hgf = t['model_flops'] / t['hf_s'] / 1e9 if 'hf_s' in t else None
        row(n, f'{what.split(" tokens")[0]} model GFLOP/s' + (f' ({100 * gf / peak:.0f}% of matmul peak)'
                                                              if peak else ''), gf, hgf)
        if 'ours_all_grads_s' in t:
          row(n, 'expert-only step: skipping frozen gradients vs computing them (tokens/s)', tok / t['ours_s'],
              tok / t['ours_all_grads_s'])
    k = m.get('ks')
    if k:
      row(n, f"KS step: student sampling ({k['completions']} x {k['new_tokens']} tokens), s", k['ours_sample_s'],
          k.get('torch_sample_s'), ' s', higher=False)
      row(n, 'KS step: update (teacher fwd + student fwd/bwd + AdamW), s', k['ours_update_s'],
          k.get('torch_update_s'), ' s', higher=False)
      tot, ptot = k['ours_sample_s'] + k['ours_update_s'], k.get('torch_sample_s', 0) + k.get('torch_update_s', 0)
      row(n, 'KS step in all, s', tot, ptot or None, ' s', higher=False)
    d = m.get('dream')
    if d:
      row(n, f"Dreaming inner loop, {d['dreams']} dreams x {d['inner_steps']} steps: vmapped vs loop, s",
          d['vmapped_s'], d['loop_s'], ' s', higher=False)
  out = '\n'.join(lines)
  checks = []
  for m in res.get('models', []):
    for key, what in (('train_full', 'train step'), ('train_expert', 'expert-only step'), ('ks', 'KS step')):
      r = m.get(key, {})
      peer = r.get('hf_loss', r.get('torch_loss'))
      if peer is not None:
        checks.append(f"{m['model']} {what} {r['ours_loss']:.5f} / {peer:.5f}")
  if checks:
    out += '\n\nsame computation, first-step loss sleep_jax / peer: ' + '; '.join(checks)
  if lim:
    out += (f"\n\nthis machine: float32 matmul peak {lim['jax_matmul_gflops']:.0f} GFLOP/s (JAX)"
            + (f", {lim['torch_matmul_gflops']:.0f} (torch, {lim['torch_threads']} threads)"
               if 'torch_matmul_gflops' in lim else '')
            + f"; 30 x (576x1536) matvec rate {lim['jax_gemv_b1_gb_s']:.1f} GB/s at batch 1, "
              f"{lim['jax_gemv_b8_gb_s']:.1f} GB/s at batch 8")
  c = res.get('compile')
  if c:
    out += '\n\n| run | backend compilations | compile s | wall s |\n|---|---:|---:|---:|\n'
    out += '\n'.join(f"| {k} | {v['n']} | {v['secs']:.1f} | {v['wall_s']:.1f} |"
                     for k, v in c.items())
    top = collections.Counter()
    for v in c.values():
      for fn, (n_c, s) in v['per_fn'].items():
        top[fn] = max(top[fn], s)
    out += '\n\nslowest compilations (seconds, largest over the runs): ' + ', '.join(
        f'{fn} {s:.2f}' for fn, s in top.most_common(8))
  g = res.get('gpu')
  if g:
    out += (f"\n\nGPU ({g['device']}): 1B-class Llama ({g['params_b']:.2f}B params) bfloat16 train step "
            f"{g['batch'][0]}x{g['batch'][1]}: {g['step_s']:.3f} s, {g['tflops']:.1f} TFLOP/s, MFU "
            f"{100 * g['mfu']:.0f}% of the measured bf16 matmul peak {g['bf16_matmul_peak_tflops']:.0f} TFLOP/s"
            + (f", MFU {100 * g['mfu_spec']:.0f}% of the data-sheet dense bf16 peak {g['spec_bf16_tflops']:.0f} TFLOP/s"
               if g.get('spec_bf16_tflops') else ' (no data-sheet peak known for this device)'))
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  F = flags.FLAGS
  bad = sorted(set(F.sections) - set(SECTIONS))
  if bad:
    raise app.UsageError(f'--sections: {bad} not in {SECTIONS}')
  skip_hf = F.skip_hf or jax.default_backend() != 'cpu'   # the peers are the CPU PyTorch build
  if not skip_hf:
    try:
      import torch  # noqa: F401
      import transformers  # noqa: F401
    except ImportError as e:
      raise SystemExit(f'{e}: the PyTorch peers are not installed; run `make bench-setup` or pass --skip_hf')
  secs, reps = set(F.sections), F.reps
  res = {'machine': f'{platform.machine()} {platform.processor() or ""} cpus={os.cpu_count()}'.strip(),
         'backend': jax.default_backend(), 'devices': jax.device_count(), 'jax': jax.__version__, 'reps': reps,
         'command': 'python -m experiments.benchmarks.suite ' + ' '.join(
             f'--{f}={flags.FLAGS[f].value if not isinstance(flags.FLAGS[f].value, list) else ",".join(flags.FLAGS[f].value)}'
             for f in ('models', 'sections', 'reps', 'skip_hf'))}
  print(f"{res['machine']}, {res['backend']} x{res['devices']}, jax {res['jax']}; median of {reps} after a warm-up")
  if 'limits' in secs:
    res['limits'] = limits(reps)
  per_model = secs & {'sampler', 'train', 'ks', 'dream'}
  if per_model:
    res['models'] = [model_sections(m, per_model, reps, skip_hf) for m in F.models]
  if 'compile' in secs:
    res['compile'] = compile_section()
  if 'gpu' in secs:
    if jax.default_backend() == 'gpu' or F.gpu_any_backend:
      res['gpu'] = gpu_section(reps, **GPU_SIZES[F.gpu_size])
    else:
      print('gpu: skipped (no GPU backend here)')
  print('\n' + table(res))
  from sleep_jax.results import write_json
  write_json(F.out, res)
  print(f'\nwrote {F.out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
