"""seqio vocabulary adapter around the project's tokenizers (SmolLM2 BPE `Tokenizer`, `ByteTokenizer`).

seqio tasks need a `seqio.Vocabulary` with Python and TensorFlow encode/decode. The TF versions call the same
Python tokenizer through `tf.numpy_function`, so both paths give identical ids by construction (at the cost of
running under the GIL inside tf.data, which is fine for evaluation-sized tasks). No extra ids; a byte-level
BPE has no unknown token, so `unk_id` is None unless the tokenizer defines one.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf


def _fingerprint(tokenizer) -> str:
  """Stable identity of a tokenizer's vocabulary, so two adapters of the same model compare equal."""
  tk = getattr(tokenizer, 'tk', None)
  body = tk.to_str() if tk is not None else f'{type(tokenizer).__module__}.{type(tokenizer).__qualname__}'
  ids = (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id, getattr(tokenizer, 'bos_id', None))
  return hashlib.sha256(f'{ids}:{body}'.encode()).hexdigest()


class TokenizerVocabulary(seqio.Vocabulary):
  """`seqio.Vocabulary` over any object with encode/decode, eos_id, pad_id and vocab_size."""

  def __init__(self, tokenizer):
    super().__init__(extra_ids=0)
    self.tokenizer = tokenizer
    self._fp: str | None = None

  # ---- ids -----------------------------------------------------------------------------------
  @property
  def eos_id(self) -> int:
    return int(self.tokenizer.eos_id)

  @property
  def pad_id(self) -> int:
    return int(self.tokenizer.pad_id)

  @property
  def bos_id(self) -> int | None:
    return getattr(self.tokenizer, 'bos_id', None)

  @property
  def unk_id(self) -> int | None:
    return getattr(self.tokenizer, 'unk_id', None)

  @property
  def _base_vocab_size(self) -> int:
    return int(self.tokenizer.vocab_size)

  # ---- python --------------------------------------------------------------------------------
  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` with pad and special tokens dropped (seqio has already cut after the first EOS)."""
    pad = self.pad_id
    return self.tokenizer.decode([int(i) for i in ids if int(i) != pad])

  # ---- tensorflow ----------------------------------------------------------------------------
  def _encode_np(self, s) -> np.ndarray:
    s = s.item() if isinstance(s, np.ndarray) else s   # numpy_function passes a 0-d object array
    s = s.decode('utf-8') if isinstance(s, bytes) else str(s)
    return np.asarray(self.tokenizer.encode(s), dtype=np.int32)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [n]; a 1-D batch of strings -> int32 RaggedTensor [batch, None]."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank == 0:
      ids_n = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
      ids_n.set_shape([None])
      return ids_n
    if s.shape.rank == 1:
      return tf.map_fn(self._encode_tf, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))
    raise ValueError(f'encode_tf takes a scalar or 1-D string tensor, got shape {s.shape}')

  def _decode_np(self, ids) -> np.ndarray:
    ids_bl = np.asarray(ids)
    flat_bl = ids_bl.reshape(-1, ids_bl.shape[-1]) if ids_bl.ndim else ids_bl.reshape(1, 1)
    out = np.array([self._decode(row).encode('utf-8') for row in flat_bl], dtype=object)
    return out.reshape(ids_bl.shape[:-1]) if ids_bl.ndim else out.reshape(())

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int [..., n] -> string [...] (a batch decodes row by row)."""
    ids = tf.convert_to_tensor(ids)
    text = tf.numpy_function(self._decode_np, [ids], tf.string, stateful=False)
    if ids.shape.rank is not None:
      text.set_shape(ids.shape[:-1] if ids.shape.rank else [])
    return text

  # ---- identity ------------------------------------------------------------------------------
  @property
  def fingerprint(self) -> str:
    if self._fp is None:
      self._fp = _fingerprint(self.tokenizer)
    return self._fp

  def __eq__(self, other) -> bool:
    if not isinstance(other, TokenizerVocabulary):
      return NotImplemented
    return self.tokenizer is other.tokenizer or self.fingerprint == other.fingerprint

  def __hash__(self) -> int:
    return hash(self.fingerprint)

  def __repr__(self) -> str:
    return f'TokenizerVocabulary({self.tokenizer!r})'
