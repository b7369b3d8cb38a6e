"""The `chat` job: chat-generate answers to `config.chat.prompts` with the configured model and report tokens/s."""
from __future__ import annotations

import dataclasses
import os
import time

import jax

from sleep_jax.results import run_info, write_json
from sleep_jax.runtime import Runtime


def chat(config, workdir: str) -> dict:
  """Chat-generate answers to `config.chat.prompts` with the configured model; report tokens/s."""
  os.makedirs(workdir, exist_ok=True)
  rt = Runtime(config)
  b, sampler = rt.b, rt.sampler
  msgs = lambda p: ([{'role': 'system', 'content': config.chat.system}] if config.chat.system else []) + \
      [{'role': 'user', 'content': p}]
  prompts = [b.tokenizer.chat_tokens(msgs(p)) for p in config.chat.prompts]
  s = config.sampling
  kw = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
  t0 = time.perf_counter()
  sampler(b.params, prompts, rng=jax.random.key(config.seed), cms=b.cms, **kw)   # compile + warm up
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = sampler(b.params, prompts, rng=jax.random.key(config.seed), cms=b.cms, **kw)
  dt = time.perf_counter() - t0
  n_new = int(out.mask.sum())
  answers = [b.tokenizer.decode(t[m]) for t, m in zip(out.tokens, out.mask)]
  for p, a in zip(config.chat.prompts, answers):
    print(f'\n>>> {p}\n{a.strip()}')
  res = {'job': 'chat', 'model': dataclasses.asdict(b.cfg), 'prompts': list(config.chat.prompts),
         'answers': answers, 'new_tokens': n_new, 'seconds': dt, 'tokens_per_s': n_new / dt,
         'first_call_seconds_incl_compile': compile_s, 'batch': len(prompts), **run_info(config)}
  print(f'\n{n_new} new tokens for {len(prompts)} prompts in {dt:.2f}s = {n_new / dt:.1f} tokens/s '
        f'(batch {len(prompts)}, {jax.default_backend()}, first call incl. compile {compile_s:.1f}s)')
  write_json(os.path.join(workdir, 'results.json'), res)
  return res
