"""Learning-to-Imitate rewards (PAPER Sec. 3) and GRPO group advantages.

    r(d^; d) = gamma r_sem(d^; d) + (1 - gamma) r_abs(d^; d)

r_abs is a thresholded normalised Levenshtein similarity; r_sem is a frozen judge model's probability that
the two texts mean the same thing. Rewards are host-side numpy float32: they score decoded samples.
Character or token level is the caller's choice: pass strings or token-id lists.
"""
from __future__ import annotations

from typing import Sequence

import editdistance
import jax
import jax.numpy as jnp
import numpy as np

from sleep_jax import sharding
from sleep_jax.models.cms import variables
from sleep_jax.sampling import left_pad

YES = ('yes', 'Yes', ' yes', ' Yes')
NO = ('no', 'No', ' no', ' No')
QUESTION = 'Do these two texts mean the same thing? Answer yes or no.\n\nText A: {a}\n\nText B: {b}'


def _seq(x):
  return x.tolist() if isinstance(x, np.ndarray) else x


def levenshtein(a, b) -> int:
  """Edit distance (insertions, deletions, substitutions) between two strings or two lists of token ids."""
  return int(editdistance.eval(_seq(a), _seq(b)))


def r_abs(pred, ref, z0_frac: float) -> float:
  """1 - lev / max(|pred|, |ref|) if lev <= z0, else 0; both empty -> 1.

  The paper's absolute threshold z0 is expressed relative to length, z0 = z0_frac * max(|pred|, |ref|),
  because completions vary in length; z0_frac = 1 means no threshold. Strings score characters, id lists
  tokens.
  """
  if not 0.0 < z0_frac <= 1.0:
    raise ValueError(f'z0_frac={z0_frac} must be in (0, 1] (a fraction of the longer length; 1 = no threshold)')
  n = max(len(pred), len(ref))
  if n == 0:
    return 1.0
  lev = levenshtein(pred, ref)
  return 1.0 - lev / n if lev <= z0_frac * n + 1e-9 else 0.0   # 1e-9: 0.29 * 100 is 28.999...


def r_abs_batch(preds: Sequence, refs: Sequence, z0_frac: float) -> np.ndarray:
  """`r_abs` for aligned lists of predictions and references, float32 [N]."""
  if len(preds) != len(refs):
    raise ValueError(f'r_abs_batch got {len(preds)} preds and {len(refs)} refs; pass one ref per pred')
  return np.asarray([r_abs(p, r, z0_frac) for p, r in zip(preds, refs)], np.float32)


def lti_reward(r_sem, r_abs, gamma: float) -> np.ndarray:
  """gamma r_sem + (1 - gamma) r_abs, float32."""
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f'gamma={gamma} must be in [0, 1] (weight of the semantic reward)')
  r_sem, r_abs = np.asarray(r_sem, np.float32), np.asarray(r_abs, np.float32)
  if r_sem.shape != r_abs.shape:
    raise ValueError(f'r_sem has shape {r_sem.shape} but r_abs has {r_abs.shape}; score the same samples')
  return (gamma * r_sem + (1.0 - gamma) * r_abs).astype(np.float32)


def group_advantages(rewards_N, group_size: int) -> np.ndarray:
  """GRPO advantages, float32 [N]: consecutive groups of `group_size` samples of one prompt, each reward
  minus its group's mean over the group's (population) std + 1e-6; an all-equal group gets exactly 0."""
  r = np.asarray(rewards_N, np.float64).reshape(-1)
  if group_size < 1 or r.size % group_size:
    raise ValueError(f'len(rewards)={r.size} is not a multiple of group_size={group_size}; sample '
                     f'group_size completions per prompt')
  r_GK = r.reshape(-1, group_size)
  adv = (r_GK - r_GK.mean(1, keepdims=True)) / (r_GK.std(1, keepdims=True) + 1e-6)
  flat = (r_GK.max(1) == r_GK.min(1))[:, None]
  return np.where(flat, 0.0, adv).reshape(-1).astype(np.float32)


def answer_ids(tokenizer, yes: Sequence[str] = YES, no: Sequence[str] = NO) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """First token id of each 'yes' / 'no' variant, deduplicated. An id both sides start with (the byte
  tokenizer's ' ' for ' yes' and ' no') says nothing about the answer and is dropped from both."""
  first = lambda words: list(dict.fromkeys(tokenizer.encode(w)[0] for w in words))
  y, n = first(yes), first(no)
  shared = set(y) & set(n)
  y, n = tuple(i for i in y if i not in shared), tuple(i for i in n if i not in shared)
  if not y or not n:
    raise ValueError(f'the tokenizer gives the yes variants {yes} and the no variants {no} the same first '
                     f'tokens {sorted(shared)}; pass variants that start with different tokens')
  return y, n


class Judge:
  """r_sem: a frozen model's P(yes) / (P(yes) + P(no)) for 'do texts A and B mean the same thing?'.

  `Judge(model, tokenizer)(params, [(a, b), ...], cms=None)` -> float32 [N]. The prompt is one chat user
  turn; P(.) is the next-token distribution after the generation prompt, summed over the first tokens of
  'yes', 'Yes', ' yes', ' Yes' (resp. no). Texts longer than `max_chars` characters are truncated to their
  first `max_chars`. Prompts are left-padded to a length bucket and the batch to a power of two (positions
  count real tokens, pads are masked out of attention, as in `Sampler`), so one compiled program serves
  every batch in a bucket; `num_compiles` counts traces.
  """

  def __init__(self, model, tokenizer, *, prompt_buckets: Sequence[int] = (64, 128, 256, 512),
               max_chars: int = 600):
    if max_chars < 1:
      raise ValueError(f'max_chars={max_chars} must be >= 1')
    self.model, self.tokenizer = model, tokenizer
    self.prompt_buckets, self.max_chars = tuple(sorted(prompt_buckets)), int(max_chars)
    self.pad_id = int(tokenizer.pad_id)
    self.yes_ids, self.no_ids = answer_ids(tokenizer)
    self.num_compiles = 0
    self._fn = jax.jit(self._p_yes)

  def _p_yes(self, params, cms, tokens_BP, mask_BP):
    self.num_compiles += 1  # runs once per trace, i.e. per compilation
    P = tokens_BP.shape[1]
    pos_BP = jnp.maximum(jnp.cumsum(mask_BP, axis=1) - 1, 0)
    causal_PP = jnp.tril(jnp.ones((P, P), bool))
    mask_BPP = mask_BP[:, None, :] & causal_PP[None]
    logits_B1V, _ = self.model.apply(variables(params, cms), tokens_BP, pos_BP, mask_BPP, last_only=True)
    logp_BV = jax.nn.log_softmax(logits_B1V[:, 0].astype(jnp.float32), axis=-1)
    lyes_B = jax.nn.logsumexp(logp_BV[:, jnp.asarray(self.yes_ids)], axis=-1)
    lno_B = jax.nn.logsumexp(logp_BV[:, jnp.asarray(self.no_ids)], axis=-1)
    return jax.nn.sigmoid(lyes_B - lno_B)   # P(yes) / (P(yes) + P(no))

  def prompt(self, a: str, b: str) -> list[int]:
    """The judge's prompt token ids for the pair (a, b)."""
    text = QUESTION.format(a=a[: self.max_chars], b=b[: self.max_chars])
    return list(self.tokenizer.chat_tokens([{'role': 'user', 'content': text}]))

  def _pad(self, prompts: list[list[int]]):
    n = max(len(p) for p in prompts)
    fits = [b for b in self.prompt_buckets if b >= n]
    if not fits:
      raise ValueError(f'a judge prompt has {n} tokens, more than the largest of prompt_buckets='
                       f'{self.prompt_buckets}; add a larger bucket or lower max_chars={self.max_chars}')
    P = fits[0]
    max_len = getattr(getattr(self.model, 'cfg', None), 'max_seq_len', P)
    if P > max_len:
      raise ValueError(f'judge prompt bucket {P} exceeds model.max_seq_len={max_len}; lower max_chars or '
                       f'prompt_buckets')
    return left_pad(prompts, P, self.pad_id, 1 << (len(prompts) - 1).bit_length())

  def __call__(self, params, pairs: Sequence[tuple[str, str]], cms=None, *, hard: bool = False) -> np.ndarray:
    """P(same meaning) per pair, float32 [N]; `hard` gives 1.0 where it exceeds 0.5, else 0.0."""
    if not pairs:
      return np.zeros((0,), np.float32)
    toks, mask = self._pad([self.prompt(a, b) for a, b in pairs])
    p = sharding.to_host(self._fn(params, cms or {}, toks, mask))[: len(pairs)].astype(np.float32)
    return (p > 0.5).astype(np.float32) if hard else p
