"""grain input pipelines for training: packed language-model rows and padded prompt/answer rows.

Both read any random-access source of dict records (`tfds.data_source(...)` or `tfds_builders.load(...)` in
production, a plain list in tests) through `grain.MapDataset`: shard by process (`source[i::n]`), shuffle by
seed (a fresh permutation each epoch: grain reseeds with seed + epoch), repeat, tokenise (in grain's reader
threads), then batch on the `IterDataset` side. Every batch is a dict of numpy arrays, B = batch_size,
L = seq_len (or max_len):

  inputs       int32   [B, L]  token ids fed to the model (pad_id where there is no token)
  targets      int32   [B, L]  the next token of each input position
  weights      float32 [B, L]  1 where the target is a token to learn, 0 elsewhere
  segment_ids  int32   [B, L]  1, 2, ... per document within the row (0 = padding); attend within equal ids
  positions    int32   [B, L]  position within the segment, starting at 0 (0 on padding)

Packing (`lm_dataset`) is grain's `ConcatThenSplitIterDataset`: each document is tokenised with EOS appended,
documents are concatenated in shuffled order and cut into rows of L + 1 tokens (inputs = row[:-1], targets =
row[1:]); a document longer than the space left is split and continues at the start of the next row, where its
positions restart at 0 (with rotary embeddings only relative positions matter, and the continuation cannot see
the earlier part anyway). Every token appears exactly once per epoch, in order. Boundary rule: a target gets
weight 0 when it belongs to a different segment than its input, i.e. the first token of the next document is
never predicted from the previous document's EOS, and padding (only in the last row of a finite epoch) has
weight 0. The transition from a row's last token to the next row's first token is not trained on (one target
per row, the usual price of L + 1 rows without overlap).

Checkpointing: `get_state(iterator)` is a JSON string (grain's state dict, with tuples and numpy scalars tagged
so they survive JSON), stored in `Checkpointer.save(..., extra={'data': ...})`; `set_state(iterator, s)` on a
fresh iterator of the same pipeline config continues with exactly the batches an uninterrupted run would give.
Tokenisation runs in grain's reader threads (`read_options`). For worker processes, `ds.mp_prefetch(...)`
works too (the transforms pickle; its state goes through `get_state` as well), but it changes the batch order
relative to no workers, and grain 0.2.18 needs absl flags parsed first (`absl.app.run` or
`flags.FLAGS.mark_as_parsed()`).
"""
from __future__ import annotations

import base64
import json
import logging
import threading
from typing import Any, Callable

import grain
import numpy as np

log = logging.getLogger(__name__)

Key = str | Callable[[dict], Any]


# ---- records ---------------------------------------------------------------------------------------

def _text(record: dict, key: Key) -> str:
  """A text field of a record: `record[key]`, or `key(record)` for nested records; bytes are UTF-8."""
  x = key(record) if callable(key) else record[key]
  if isinstance(x, np.ndarray) and x.ndim == 0:
    x = x.item()
  if isinstance(x, (list, tuple)):  # a list of aliases: train on the first
    if not x:
      raise ValueError(f'record field {key!r} is an empty list')
    x = x[0]
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _sharded_shuffled(source, *, seed: int, shard_index: int | None, shard_count: int | None,
                      num_epochs: int | None) -> grain.MapDataset:
  """MapDataset over this process's shard, shuffled per epoch by `seed`, repeated num_epochs (None: forever)."""
  if shard_index is None or shard_count is None:
    import jax
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} is not in [0, shard_count={shard_count})')
  if len(source) < shard_count:
    raise ValueError(f'source has {len(source)} records, fewer than shard_count={shard_count}')
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  return ds.shuffle(seed=int(seed)).repeat(num_epochs)


def _resolve_read_options(read_options: grain.ReadOptions | None) -> grain.ReadOptions:
  return read_options or grain.ReadOptions(num_threads=8, prefetch_buffer_size=128)


# ---- language modelling: packed rows ----------------------------------------------------------------

class _Tokenize:
  """record -> {'tokens': int32 [n + 1]}: the text's ids followed by EOS."""

  def __init__(self, tokenizer, text_key: Key):
    self.tokenizer, self.text_key = tokenizer, text_key

  def __call__(self, record: dict) -> dict:
    ids = self.tokenizer.encode(_text(record, self.text_key))
    return {'tokens': np.asarray(list(ids) + [self.tokenizer.eos_id], dtype=np.int32)}


class _PackedToBatchRow:
  """A packed row of L + 1 tokens -> the model's [L] inputs/targets/weights/segment_ids/positions."""

  def __init__(self, pad_id: int):
    self.pad_id = pad_id

  def __call__(self, row: dict) -> dict:
    tokens_r, seg_r, pos_r = row['tokens'], row['tokens_segment_ids'], row['tokens_positions']
    tokens_r = np.where(seg_r > 0, tokens_r, self.pad_id).astype(np.int32)
    same_doc_l = (seg_r[1:] == seg_r[:-1]) & (seg_r[1:] > 0)
    return {'inputs': tokens_r[:-1], 'targets': tokens_r[1:], 'weights': same_doc_l.astype(np.float32),
            'segment_ids': seg_r[:-1].astype(np.int32), 'positions': pos_r[:-1].astype(np.int32)}


def lm_dataset(source, tokenizer, *, text_key: Key, seq_len: int, batch_size: int, seed: int,
               shard_index: int | None = None, shard_count: int | None = None, num_epochs: int | None = None,
               drop_remainder: bool = True, read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Packed LM batches (see the module docstring for the format) from documents `record[text_key]`.

  shard_index/shard_count default to jax.process_index()/process_count(). With a finite `num_epochs` the
  number of rows per process depends on its documents' lengths, so multi-process runs should count steps.
  """
  if seq_len < 1 or batch_size < 1:
    raise ValueError(f'seq_len={seq_len} and batch_size={batch_size} must be positive')
  ds = _sharded_shuffled(source, seed=seed, shard_index=shard_index, shard_count=shard_count,
                         num_epochs=num_epochs)
  it = ds.map(_Tokenize(tokenizer, text_key)).to_iter_dataset(_resolve_read_options(read_options))
  it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct={'tokens': seq_len + 1})
  return it.map(_PackedToBatchRow(int(tokenizer.pad_id))).batch(batch_size, drop_remainder=drop_remainder)


# ---- prompt -> answer: padded rows -------------------------------------------------------------------

class _PromptAnswerRow:
  """record -> one padded row; prompts too long are cut from the left, answers too long from the right.

  The row holds prompt + answer + EOS (at most max_len + 1 tokens; inputs/targets are its first/last max_len).
  Truncations are counted (`counts`) and logged at the 1st, 2nd, 4th, 8th, ... occurrence, so a run whose
  prompts do not fit says so without flooding the log. Counts are per process (grain reader threads share
  this object; a lock keeps the counts exact).
  """

  def __init__(self, tokenizer, prompt_key: Key, answer_key: Key, max_len: int):
    self.tokenizer, self.prompt_key, self.answer_key, self.max_len = tokenizer, prompt_key, answer_key, max_len
    self.pad_id, self.eos_id = int(tokenizer.pad_id), int(tokenizer.eos_id)
    self.counts = {'examples': 0, 'prompt_truncated': 0, 'answer_truncated': 0}
    self._lock = threading.Lock()

  def __getstate__(self) -> dict:  # picklable for grain's multiprocess prefetch (each worker counts its own)
    return {k: v for k, v in self.__dict__.items() if k != '_lock'}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _count(self, what: str, detail: str) -> None:
    with self._lock:
      self.counts[what] += 1
      n, total = self.counts[what], self.counts['examples']
    if n & (n - 1) == 0:
      log.warning('prompt_answer_dataset: %s (%d of %d examples so far, max_len=%d): %s',
                  what.replace('_', ' '), n, total, self.max_len, detail)

  def __call__(self, record: dict) -> dict:
    L = self.max_len
    with self._lock:
      self.counts['examples'] += 1
    prompt = list(self.tokenizer.encode(_text(record, self.prompt_key)))
    answer = list(self.tokenizer.encode(_text(record, self.answer_key))) + [self.eos_id]
    if len(answer) > L:  # keep at least one prompt token to predict the answer's first token from
      self._count('answer_truncated', f'answer+EOS of {len(answer)} tokens cut to {L}')
      answer = answer[:L]
    room = L + 1 - len(answer)
    if len(prompt) > room:
      self._count('prompt_truncated', f'prompt of {len(prompt)} tokens cut from the left to {room}')
      prompt = prompt[len(prompt) - room:]
    n, p = len(prompt) + len(answer), len(prompt)
    tokens_r = np.full(L + 1, self.pad_id, np.int32)
    tokens_r[:n] = prompt + answer
    target_index_l = np.arange(1, L + 1)   # row index of each target token
    real_l = np.arange(L) < n              # input positions holding a token (as in lm_dataset: seg > 0)
    return {'inputs': tokens_r[:-1], 'targets': tokens_r[1:],
            'weights': ((target_index_l >= p) & (target_index_l < n)).astype(np.float32),
            'segment_ids': real_l.astype(np.int32),
            'positions': np.where(real_l, np.arange(L), 0).astype(np.int32)}


def prompt_answer_dataset(source, tokenizer, *, prompt_key: Key, answer_key: Key, max_len: int, batch_size: int,
                          seed: int, shard_index: int | None = None, shard_count: int | None = None,
                          num_epochs: int | None = None, drop_remainder: bool = True,
                          read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Padded batches of prompt + answer + EOS, loss weights only on the answer tokens and EOS.

  Prompt and answer are tokenised separately (so the boundary is exact) and concatenated as is: any
  separator or chat formatting belongs in the record's text. An answer given as a list of aliases trains on
  the first. Same batch format as `lm_dataset` with L = max_len (one segment per row).
  """
  if max_len < 1 or batch_size < 1:
    raise ValueError(f'max_len={max_len} and batch_size={batch_size} must be positive')
  ds = _sharded_shuffled(source, seed=seed, shard_index=shard_index, shard_count=shard_count,
                         num_epochs=num_epochs)
  ds = ds.map(_PromptAnswerRow(tokenizer, prompt_key, answer_key, max_len))
  return ds.to_iter_dataset(_resolve_read_options(read_options)).batch(batch_size, drop_remainder=drop_remainder)


# ---- iterator state ------------------------------------------------------------------------------------

def _to_json(x):
  """grain state -> JSON-able: tuples and bytes are tagged so `_from_json` restores them exactly."""
  if isinstance(x, dict):
    if not all(isinstance(k, str) for k in x):
      raise TypeError(f'grain state has a non-string key in {x!r}')
    return {k: _to_json(v) for k, v in x.items()}
  if isinstance(x, tuple):
    return {'__tuple__': [_to_json(v) for v in x]}
  if isinstance(x, list):
    return [_to_json(v) for v in x]
  if isinstance(x, bytes):
    return {'__bytes__': base64.b64encode(x).decode('ascii')}
  if isinstance(x, np.generic):
    return x.item()
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  raise TypeError(f'cannot store grain state value of type {type(x).__name__}: {x!r}')


def _from_json_hook(d: dict):
  if d.keys() == {'__tuple__'}:
    return tuple(d['__tuple__'])
  if d.keys() == {'__bytes__'}:
    return base64.b64decode(d['__bytes__'])
  return d


def get_state(iterator) -> str:
  """The iterator's position as a JSON string (for `Checkpointer.save(..., extra=...)`)."""
  return json.dumps(_to_json(iterator.get_state()), sort_keys=True)


def set_state(iterator, state: str) -> None:
  """Move `iterator` (of a pipeline built with the same config) to the position `get_state` recorded."""
  iterator.set_state(json.loads(state, object_hook=_from_json_hook))
