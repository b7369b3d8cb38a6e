"""The `sleep` job (the main job): read documents while awake, sleep on them, and measure no-context question
answering before and after, with the with-context answers as the ceiling and the retention probe."""
from __future__ import annotations

import json
import os
import time

import jax

from sleep_jax import evals
from sleep_jax.cycle import Cycle
from sleep_jax.data import documents
from sleep_jax.phases import dream
from sleep_jax.results import run_info, write_json
from sleep_jax.runtime import Runtime


def _qa(tag, sampler, params, cms, tok, docs, config, with_context=False):
  if not any(d.get('questions') for d in docs):
    return None
  return evals.qa_eval(sampler, params, cms, tok, docs, with_context=with_context,
                       max_new_tokens=config.knowledge.answer_tokens, batch_size=config.knowledge.eval_batch, desc=tag)


def _score_line(name, r):
  return f"| {name} | {r['recall']:.1f} | {r['exact_match']:.1f} | {r['token_f1']:.1f} | {r['n']} |"


def sleep(config, workdir: str) -> dict:
  """Read documents while awake, sleep on them, and measure no-context QA before and after the sleep(s),
  with the teacher's with-context accuracy as the ceiling and the retention probe before and after."""
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  rt = Runtime(config)
  b = rt.b
  docs = documents.load_docs(config.knowledge, config.seed)
  cyc = Cycle(rt, workdir)
  sampler, tok = rt.sampler, b.tokenizer
  before_path = os.path.join(workdir, 'before.json')
  if os.path.exists(before_path):        # a resumed run: "before" was measured on the pre-sleep model
    with open(before_path) as f:
      before = json.load(f)
  else:
    before = {'no_context': _qa('qa before', sampler, b.params, b.cms, tok, docs, config),
              'with_context': _qa('qa+context (ceiling)', sampler, b.params, b.cms, tok, docs, config, True)
              if config.knowledge.with_context_eval else None,
              'probe_nll': cyc.rt.probe(b.params, b.cms)}
    write_json(before_path, before)
  events = cyc.run(docs)
  st, sampler = cyc.state, cyc.runtime.sampler   # the cycle's own: rebuilt when a sleep grew the expert pools
  after = {'no_context': _qa('qa after', sampler, st['params'], st['cms'], tok, docs, config),
           'probe_nll': cyc.rt.probe(st['params'], st['cms'])}
  sleeps = [e for e in events if e.get('event') == 'sleep']
  res = {'job': 'sleep', 'docs': [d['id'] for d in docs], 'n_questions': sum(len(d.get('questions', [])) for d in docs),
         'before': before, 'after': after, 'sleeps': sleeps,
         'ks_steps': [e for e in events if e.get('event') == 'ks_step'],
         'dream_rounds': [e for e in events if e.get('event') == 'dream_round'],
         **({'growth': cyc.lineage} if cyc.lineage else {}),   # pools grown when a sleep found them full
         'ks': dict(config.sleep.ks), 'nonfinite_skips': dict(cyc.guard.skipped),
         'seconds': time.perf_counter() - t_start, **run_info(config)}
  write_json(os.path.join(workdir, 'results.json'), res)
  lines = ['| model | answer recall % | exact match % | token F1 % | questions |', '|---|---:|---:|---:|---:|']
  if before['no_context']:
    lines.append(_score_line('before sleep (no context)', before['no_context']))
    lines.append(_score_line('after sleep (no context)', after['no_context']))
  if before.get('with_context'):
    lines.append(_score_line('teacher with context (ceiling)', before['with_context']))
  print('\n' + '\n'.join(lines))
  if res['dream_rounds'] and jax.process_index() == 0:
    png = os.path.join(workdir, 'dream_rewards.png')
    dream.plot_reward_rates({'this run': [[e['reward_rate'] for e in res['dream_rounds'] if e['sleep'] == s]
                                          for s in sorted({e['sleep'] for e in res['dream_rounds']})]}, png,
                            title='Dreaming: ReST-EM reward rate per round (one line per sleep)')
    print('dreaming reward rate per round: ' + ', '.join(
        f"sleep {e['sleep']} round {e['round']}: {e['reward_rate']:.2f}" for e in res['dream_rounds']) + f' ({png})')
  print(f"retention probe NLL {before['probe_nll']:.4f} -> {after['probe_nll']:.4f}; "
        f"{sum(e['committed'] for e in sleeps)}/{len(sleeps)} sleeps committed; {res['seconds']:.0f}s in all; "
        f"results in {os.path.join(workdir, 'results.json')}")
  return res
