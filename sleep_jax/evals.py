"""Evaluations the sleep cycle and the experiments share: no-context / with-context QA, and the retention probe.

QA answers are generated greedily with the one Sampler and scored against the answer aliases with three numbers:
`recall` (some normalised alias occurs in the normalised answer; the primary number, because a 135M chat model
answers in sentences: "The main export of Zoarvok is xaivine."), SQuAD `exact_match` and `token_f1`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax.data import metrics
from sleep_jax.metrics import progress
from sleep_jax.models.cms import variables

QA_INSTRUCTION = 'Answer with a short phrase.\nQuestion: {question}\nAnswer:'


def qa_prompt(tokenizer, question: str, context: str | None = None) -> list[int]:
  """Chat prompt for a question, optionally with the passage before it (the teacher's privileged view)."""
  user = (f'{context}\n\n' if context else '') + QA_INSTRUCTION.format(question=question)
  return tokenizer.chat_tokens([{'role': 'user', 'content': user}])


def recall(targets: Sequence, predictions: Sequence) -> float:
  """% of predictions that contain some alias (SQuAD-normalised, as a whole-word substring)."""
  hits = [any(f' {metrics.normalize_answer(a)} ' in f' {metrics.normalize_answer(p)} '
              for a in (t if isinstance(t, (list, tuple)) else [t])) for t, p in zip(targets, predictions)]
  return 100.0 * float(np.mean(hits)) if hits else float('nan')


def qa_eval(sampler, params, cms, tokenizer, passages: Sequence[dict], *, with_context: bool = False,
            max_new_tokens: int = 24, batch_size: int = 16, desc: str = '') -> dict:
  """Greedy answers to every question of `passages`; returns scores (percent) and the per-question answers."""
  qs = [(p, q) for p in passages for q in p.get('questions', [])]
  if not qs:
    raise ValueError('qa_eval: the passages have no questions to ask')
  prompts = [qa_prompt(tokenizer, q['question'], p['text'] if with_context else None) for p, q in qs]
  answers = []
  for s in progress(range(0, len(prompts), batch_size), desc=desc or ('qa+context' if with_context else 'qa')):
    o = sampler(params, prompts[s:s + batch_size], max_new_tokens=max_new_tokens, rng=jax.random.key(0),
                temperature=0.0, cms=cms)
    answers += [tokenizer.decode(t[m]).strip() for t, m in zip(o.tokens, o.mask)]
  targets = [[q['answer'], *q.get('aliases', [])] for _, q in qs]
  out = {'recall': recall(targets, answers), 'n': len(qs),
         **metrics.exact_match(targets, answers), **metrics.token_f1(targets, answers)}
  out['answers'] = [{'id': q['id'], 'question': q['question'], 'answer': q['answer'], 'prediction': a}
                    for (_, q), a in zip(qs, answers)]
  return out


class Probe:
  """Retention probe: mean next-token NLL of the model on fixed held-out texts of what it knew before the
  sleep (default: validation essays), in fixed [n, L] rows so one compilation serves every call."""

  def __init__(self, model, tokenizer, texts: Sequence[str], *, seq_len: int = 128, n_rows: int = 8):
    ids = []
    for t in texts:
      ids += tokenizer.encode(t) + [tokenizer.eos_id]
      if len(ids) >= n_rows * (seq_len + 1):
        break
    if len(ids) < n_rows * (seq_len + 1):
      raise ValueError(f'probe texts hold {len(ids)} tokens; {n_rows} rows of {seq_len + 1} need more text')
    seq = np.asarray(ids[:n_rows * (seq_len + 1)], np.int32).reshape(n_rows, seq_len + 1)
    self.inputs, self.targets = seq[:, :-1], seq[:, 1:]

    def nll(params, cms, inputs, targets):
      logits, _ = model.apply(variables(params, cms), inputs)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    self._nll = jax.jit(nll)

  def __call__(self, params, cms) -> float:
    v = float(self._nll(params, cms or {}, self.inputs, self.targets))
    if not np.isfinite(v):
      raise FloatingPointError(f'retention probe NLL is {v}')
    return v
