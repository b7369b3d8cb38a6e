"""TokenizerVocabulary: seqio's Python and TF encode/decode agree with the wrapped tokenizer."""
import numpy as np
import pytest
import tensorflow as tf

from sleep_jax.data.vocab import TokenizerVocabulary
from sleep_jax.io.byte_tokenizer import ByteTokenizer

TEXTS = ['hello world', '', 'Ünïcödé → 東京 🙂', 'numbers 12345 and\nnew lines\t tabs']


def _check_agrees(vocab: TokenizerVocabulary, tok) -> None:
  for text in TEXTS:
    ids = tok.encode(text)
    assert list(vocab.encode(text)) == ids
    np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), np.asarray(ids, np.int32))
    assert vocab.decode(ids) == tok.decode(ids) == text
    assert vocab.decode_tf(tf.constant(ids + [vocab.eos_id], tf.int32)).numpy().decode() == text
  # A padded batch decodes row by row, each cut at its first EOS (what follows EOS is dropped).
  rows = [tok.encode(t) + [vocab.eos_id] for t in TEXTS]
  rows[0] += tok.encode(' after eos')
  width = max(len(r) for r in rows)
  batch_bl = np.full((len(rows), width), vocab.pad_id, np.int32)
  for i, r in enumerate(rows):
    batch_bl[i, :len(r)] = r
  out_b = vocab.decode_tf(tf.constant(batch_bl))
  assert out_b.shape == (len(TEXTS),) and out_b.dtype == tf.string
  assert [s.decode() for s in out_b.numpy()] == TEXTS
  assert vocab.decode(batch_bl[0].tolist()) == TEXTS[0]


def test_byte_vocab_agrees_with_tokenizer():
  tok = ByteTokenizer()
  vocab = TokenizerVocabulary(tok)
  assert (vocab.eos_id, vocab.pad_id, vocab.bos_id, vocab.unk_id) == (2, 0, 1, None)
  assert vocab.vocab_size == tok.vocab_size and vocab.extra_ids == 0
  _check_agrees(vocab, tok)


def test_encode_tf_in_graph_mode_and_batched():
  tok = ByteTokenizer()
  vocab = TokenizerVocabulary(tok)
  ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)   # traced: static shapes matter here
  assert ds.element_spec == tf.TensorSpec([None], tf.int32)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == [tok.encode(t) for t in TEXTS]
  ragged = vocab.encode_tf(tf.constant(TEXTS))
  assert isinstance(ragged, tf.RaggedTensor) and ragged.shape[0] == len(TEXTS)
  assert ragged.to_list() == [tok.encode(t) for t in TEXTS]

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
  def decode(ids):
    return vocab.decode_tf(ids)
  assert decode.get_concrete_function().structured_outputs.shape.as_list() == [None]


def test_equality():
  a, b = TokenizerVocabulary(ByteTokenizer()), TokenizerVocabulary(ByteTokenizer())
  assert a == b and hash(a) == hash(b)


@pytest.mark.slow
def test_smollm2_vocab_agrees_with_tokenizer():
  from sleep_jax.io import Tokenizer, default_model_path
  tok = Tokenizer.from_gguf(default_model_path())
  vocab = TokenizerVocabulary(tok)
  assert vocab.vocab_size == 49152 and vocab.unk_id is None
  _check_agrees(vocab, tok)
